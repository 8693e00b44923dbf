//! The database side of requests: each PostgreSQL backend's blocking spells (from the scheduler,
//! or from `pg_stat_activity` samples with `--pg-dsn`), who held the locks they waited for, and
//! each completed query counted with its request together with its backend's share of its time.
use super::{
    Assembler, Query,
    backends::{HeldBy, Holder, HolderRequest, Spell},
};
use crate::{event::Hdr, sql::activity::Session, sql::waits};

/// How long after its request ended a holder seen in a `pg_stat_activity` sample is still that
/// request's: one sampling interval (the lock was released at its COMMIT, before the end).
const SAMPLED_HOLDER_GRACE_NS: u64 = 10_000_000;

impl Assembler {
    /// Backend `hdr.tid` ran again after a blocking spell.
    #[expect(clippy::too_many_arguments, reason = "the fields of one scheduler event")]
    pub(super) fn on_db_switch(
        &mut self,
        hdr: &Hdr,
        out_ts: u64,
        wake_ts: u64,
        wait_event: u32,
        state: u32,
        waker: Option<u32>,
        waker_is_backend: bool,
    ) {
        // A lock wait that another backend ended: that backend released the lock.
        let holder = match waker {
            Some(w) if waker_is_backend && waits::is_lock(wait_event) => Some(HeldBy::Named(self.holder(w, wake_ts))),
            _ => None,
        };
        let spell = Spell { out_ns: out_ts, wake_ns: wake_ts, in_ns: hdr.ts, wait_event, state, holder };
        self.parts.backends.spell(hdr.tid, spell);
    }

    /// A `pg_stat_activity` sample: each session running a statement stands for the interval
    /// before it.
    pub(super) fn on_pg_activity(&mut self, hdr: &Hdr, interval_ns: u64, sessions: &[Session]) {
        let from = hdr.ts.saturating_sub(interval_ns);
        for s in sessions.iter().filter(|s| s.active) {
            let (wait_event, state) = match (&s.wait_type, &s.wait_event) {
                (Some(t), Some(e)) => (waits::named(t, e), 1),
                _ => (0, waits::SAMPLED_RUNNING),
            };
            let holder = match s.blocked_by.first() {
                Some(&b) if waits::is_lock(wait_event) => Some(HeldBy::Sampled { backend: b, at: hdr.ts }),
                _ => None,
            };
            let spell = Spell { out_ns: from, wake_ns: hdr.ts, in_ns: hdr.ts, wait_event, state, holder };
            self.parts.backends.spell(s.backend, spell);
        }
    }

    /// A completed query is counted with the request its thread was serving when it was sent,
    /// if that request is still open.
    pub(super) fn attach_query(&mut self, q: Query) {
        let serving = self.parts.serving.get(&q.tid).copied().filter(|s| Some(s.seq) == q.request_seq);
        let Some(s) = serving.filter(|s| self.conns.get(&s.key).is_some_and(|c| c.open.is_some())) else { return };
        let wait = self.parts.backends.wait(q.pid, q.fd, q.start_ns, q.end_ns, |backend, at| self.holder(backend, at));
        if let Some(open) = self.conns.get_mut(&s.key).and_then(|c| c.open.as_mut()) {
            let sql = open.sql.get_or_insert_default();
            sql.add(&q);
            if let Some(w) = wait {
                sql.add_wait(&w, q.shared_by);
            }
        }
    }

    /// Who held a lock that backend `waker` released at `at`: the request its client thread
    /// was serving then, or someone outside the watched requests.
    fn holder(&self, waker: u32, at: u64) -> Holder {
        let Some(mut c) = self.parts.backends.client(waker, at) else { return Holder::Outside };
        // Linked by address (`--pg-dsn`): the thread is the one that used the connection last.
        // And `at` is then a sample's time, taken as the midpoint of its query to the server,
        // which on a loaded host can land after the holder's COMMIT and the end of its request.
        let grace = if c.tid == 0 { SAMPLED_HOLDER_GRACE_NS } else { 0 };
        if c.tid == 0 {
            match self.parts.queries.last_tid(c.tgid, c.fd) {
                Some(tid) => c.tid = tid,
                None => return Holder::Outside,
            }
        }
        let open = self.parts.serving.get(&c.tid).and_then(|s| self.conns.get(&s.key)).and_then(|conn| conn.open.as_ref());
        if let Some(o) = open.filter(|o| o.start_ns <= at) {
            return Holder::Request(HolderRequest { pid: c.tgid, tid: c.tid, method: o.method.clone(), path: o.path.clone(), start_ns: o.start_ns });
        }
        // Released as its request ended, and seen after that.
        match self.parts.recent.get(&c.tid) {
            Some((r, end)) if r.start_ns <= at && at <= end.saturating_add(grace) => Holder::Request(r.clone()),
            _ => Holder::Outside,
        }
    }
}
