//! PostgreSQL backends behind the apps' connections: which backend serves which connection
//! (from the kernel's link events), and each backend's recent spells off the CPU (from its
//! scheduling, with the wait event it reported), so a query's time can be split into the
//! server's lock, IO, CPU and other time, and a lock wait named by the request that held it.
use std::collections::{HashMap, VecDeque};

use crate::sql::{
    activity::REMOTE,
    waits::{self, Bucket, DbWait},
};

/// Spells kept per backend: a query's window only ever reaches back over its own spells, and a
/// backend blocks a few times per query.
const MAX_SPELLS: usize = 256;

/// Who held a lock a backend waited for: the request the releasing backend's client was serving
/// when it released it, or a session that is not a watched request (psql, a cron job).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    Outside,
    Request(HolderRequest),
}

/// Who ended a spell's lock wait, as known when the spell was recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeldBy {
    /// Named from the kernel's wakeup, in order with the events of the holder's request.
    Named(Holder),
    /// Seen in a `pg_stat_activity` sample: `backend` held it at `at`. Named when a query's
    /// wait is counted, once the kernel's events up to the sample are in (a sample is read
    /// before the ring, so the events of the holder's request that precede it may not be).
    Sampled { backend: u32, at: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HolderRequest {
    pub pid: u32,
    pub tid: u32,
    pub method: String,
    pub path: String,
    pub start_ns: u64,
}

/// One blocking spell of a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spell {
    pub out_ns: u64,
    pub wake_ns: u64,
    pub in_ns: u64,
    pub wait_event: u32,
    pub state: u32,
    /// For a lock wait ended by another backend: who that was.
    pub holder: Option<HeldBy>,
}

/// The app side of a backend: process, thread and fd of the connection it serves, and when the
/// app closed it (a holder is named only for a release before that).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Client {
    pub tgid: u32,
    pub tid: u32,
    pub fd: i32,
    pub closed_ns: Option<u64>,
}

#[derive(Default)]
pub struct Backends {
    /// By connection: the backends that served it, with when each link was seen, oldest first.
    /// A link can be seen before the close of the connection the fd was before it is processed
    /// (`--pg-dsn` samples arrive apart from the kernel's events), so links are kept by time.
    by_conn: HashMap<(u32, i32), Vec<(u32, u64)>>,
    clients: HashMap<u32, Client>,
    spells: HashMap<u32, VecDeque<Spell>>,
}

/// Links kept per connection: the current one, and the next ones seen early.
const MAX_LINKS: usize = 4;

/// A query's share of its backend's time, and the holders of the locks it waited for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryWait {
    pub wait: DbWait,
    pub holders: Vec<Holder>,
}

impl Backends {
    /// `tid` of `tgid` (0: not known) was seen using `fd` served by `backend` at `at`.
    pub fn link(&mut self, tgid: u32, tid: u32, fd: i32, backend: u32, at: u64) {
        let links = self.by_conn.entry((tgid, fd)).or_default();
        if links.iter().any(|&(b, _)| b == backend) {
            return;
        }
        if links.len() == MAX_LINKS {
            let (old, _) = links.remove(0);
            self.clients.remove(&old);
        }
        links.push((backend, at));
        self.clients.insert(backend, Client { tgid, tid, fd, closed_ns: None });
    }

    /// The app closed `fd` at `ts`: the backends linked to it before then end their sessions.
    pub fn closed(&mut self, tgid: u32, fd: i32, ts: u64) {
        let Some(links) = self.by_conn.get_mut(&(tgid, fd)) else { return };
        for &(b, _) in links.iter().filter(|&&(_, at)| at <= ts) {
            if let Some(c) = self.clients.get_mut(&b) {
                c.closed_ns = Some(ts);
            }
        }
        links.retain(|&(_, at)| at > ts);
        if links.is_empty() {
            self.by_conn.remove(&(tgid, fd));
        }
    }

    /// The app side of `backend` as of `at`, if it is a watched process's connection.
    pub fn client(&self, backend: u32, at: u64) -> Option<Client> {
        self.clients.get(&backend).copied().filter(|c| c.closed_ns.is_none_or(|t| t >= at))
    }

    pub fn spell(&mut self, backend: u32, spell: Spell) {
        let log = self.spells.entry(backend).or_default();
        if log.len() == MAX_SPELLS {
            log.pop_front();
        }
        log.push_back(spell);
    }

    /// The backend serving `(tgid, fd)` at `at`: the latest linked by then (or the first one, for a
    /// query that ended before its link was seen).
    pub fn backend_of(&self, tgid: u32, fd: i32, at: u64) -> Option<u32> {
        let links = self.by_conn.get(&(tgid, fd))?;
        links.iter().rev().find(|&&(_, since)| since <= at).or(links.first()).map(|&(b, _)| b)
    }

    /// How the backend serving `(tgid, fd)` spent `[start, end]`: blocked time by what it waited
    /// for; the rest it ran or waited for a CPU. `None` when no backend is known for it. For a
    /// backend seen through `pg_stat_activity` the spells are samples: `cpu` is the samples of it
    /// running with no wait event, and what no sample covers (the network, mostly) is `other`.
    /// `name` names a sampled holder: the request `backend`'s client served at a time.
    pub fn wait(&self, tgid: u32, fd: i32, start: u64, end: u64, name: impl Fn(u32, u64) -> Holder) -> Option<QueryWait> {
        let backend = self.backend_of(tgid, fd, end)?;
        let mut out = QueryWait::default();
        let mut blocked = 0;
        let mut running = 0;
        if let Some(log) = self.spells.get(&backend) {
            for s in log.iter().rev().take_while(|s| s.in_ns > start) {
                let ns = s.wake_ns.min(end).saturating_sub(s.out_ns.max(start));
                if ns == 0 {
                    continue;
                }
                if s.state == waits::SAMPLED_RUNNING {
                    running += ns;
                    continue;
                }
                blocked += ns;
                match waits::bucket(s.wait_event, s.state) {
                    Bucket::Lock => out.wait.lock_ns += ns,
                    Bucket::Io => out.wait.io_ns += ns,
                    Bucket::Other => out.wait.other_ns += ns,
                }
                if s.wait_event != 0 {
                    *out.wait.events.entry(s.wait_event).or_default() += ns;
                }
                let holder = match &s.holder {
                    Some(HeldBy::Named(h)) => Some(h.clone()),
                    Some(HeldBy::Sampled { backend, at }) => Some(name(*backend, *at)),
                    None => None,
                };
                if let Some(h) = holder
                    && !out.holders.contains(&h)
                {
                    out.holders.push(h);
                }
            }
        }
        let rest = end.saturating_sub(start).saturating_sub(blocked);
        if backend & REMOTE == 0 {
            out.wait.cpu_ns = rest;
        } else {
            out.wait.cpu_ns = running.min(rest);
            out.wait.other_ns += rest - out.wait.cpu_ns;
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spell(out_ns: u64, wake_ns: u64, in_ns: u64, wait_event: u32, holder: Option<HeldBy>) -> Spell {
        Spell { out_ns, wake_ns, in_ns, wait_event, state: 1, holder }
    }

    fn unnamed(_: u32, _: u64) -> Holder {
        panic!("no sampled holder here")
    }

    #[test]
    fn a_query_window_is_split_by_what_its_backend_waited_for() {
        let mut b = Backends::default();
        b.link(10, 11, 5, 900, 0);
        // Idle in ClientRead before the query, then a 400 µs row lock, 100 µs of IO.
        b.spell(900, spell(0, 1_000, 1_010, 0x0600_0000, None));
        b.spell(900, spell(1_100, 401_100, 401_120, 0x0300_0005, Some(HeldBy::Named(Holder::Outside))));
        b.spell(900, spell(402_000, 402_100, 402_105, 0x0A00_0011, None));
        let w = b.wait(10, 5, 1_000, 500_000, unnamed).expect("a backend");
        assert_eq!((w.wait.lock_ns, w.wait.io_ns, w.wait.other_ns), (400_000, 100, 0));
        assert_eq!(w.wait.cpu_ns, 499_000 - 400_100);
        assert_eq!(w.holders, vec![Holder::Outside]);
        assert_eq!(w.wait.events.get(&0x0300_0005), Some(&400_000));
        // Another connection of the same process has no backend known.
        assert_eq!(b.wait(10, 6, 0, 10, unnamed), None);
        // Once the app closed it, the backend is no one's client for later releases.
        b.closed(10, 5, 600_000);
        assert!(b.client(900, 500_000).is_some() && b.client(900, 700_000).is_none());
    }

    #[test]
    fn sampled_holders_are_named_when_the_wait_is_counted_and_counted_once() {
        let mut b = Backends::default();
        b.link(10, 0, 5, 900, 0);
        // Three 10 ms samples of a lock wait on backend 901, then one on an outsider.
        for (i, holder) in [901, 901, 901, 902].into_iter().enumerate() {
            let at = (i as u64 + 1) * 10;
            b.spell(900, spell(at - 10, at, at, 0x0300_0005, Some(HeldBy::Sampled { backend: holder, at })));
        }
        let name = |backend: u32, _at: u64| match backend {
            901 => Holder::Request(HolderRequest { pid: 10, tid: 12, method: "GET".into(), path: "/hold".into(), start_ns: 5 }),
            _ => Holder::Outside,
        };
        let w = b.wait(10, 5, 0, 40, name).expect("a backend");
        assert_eq!(w.wait.lock_ns, 40);
        assert_eq!(w.holders, vec![Holder::Outside, name(901, 0)]);
    }

    #[test]
    fn a_link_seen_before_the_close_of_the_connection_before_it_waits_its_turn() {
        let mut b = Backends::default();
        b.link(10, 0, 5, 900, 100);
        b.spell(900, spell(200, 900, 900, 0x0300_0005, None));
        // The fd's next connection is linked (at 1_500) before the first one's close (at 1_000)
        // is processed, and before its query ending at 950 is counted.
        b.link(10, 0, 5, 901, 1_500);
        assert_eq!(b.wait(10, 5, 150, 950, unnamed).map(|w| w.wait.lock_ns), Some(700));
        b.closed(10, 5, 1_000);
        assert_eq!(b.backend_of(10, 5, 2_000), Some(901));
        assert!(b.client(900, 1_200).is_none() && b.client(901, 1_200).is_some());
    }
}
