//! Queries on database connections: the parsers' asks and answers, per connection, into round
//! trips and the queries they ran, each with its statement, time, error and the transaction
//! state the server reported after it.
//!
//! A round trip starts at the write that completes its request (a simple query, or an
//! extended-protocol `Sync`) and ends at the read that carries the server's ReadyForQuery;
//! statements prepared by name and the portals bound to them are kept per connection, so an
//! `Execute` of a statement prepared earlier still has its text.
use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use super::EndReason;
use crate::{
    event::Hdr,
    proto::{Answer, Ask, Reply, Tx},
    sql::Statement,
};

/// One query that ran, in monotonic nanoseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub pid: u32,
    pub tid: u32,
    /// Its connection's fd.
    pub fd: i32,
    /// The request its thread was serving when it was sent.
    pub request_seq: Option<u64>,
    /// `None`: a statement prepared before the watch began.
    pub statement: Option<Arc<Statement>>,
    /// Equal for exact repeats (same statement, same values).
    pub instance: u64,
    /// The entry of the write that sent it.
    pub start_ns: u64,
    /// The return of the first read of its response.
    pub first_byte_ns: Option<u64>,
    /// The return of the read that ended its round trip.
    pub end_ns: u64,
    /// Queries in that round trip (pipelined executions share its time).
    pub shared_by: u32,
    /// Time of round trips that ran no query but prepared this one (psycopg 3 prepares a
    /// statement in a round trip of its own before it first executes it).
    pub extra_ns: u64,
    pub error: Option<String>,
    pub rows: Option<u64>,
    pub tx_after: Option<Tx>,
    pub end: EndReason,
}

#[derive(Clone, Debug)]
struct Draft {
    statement: Option<Arc<Statement>>,
    instance: u64,
    error: Option<String>,
    rows: Option<u64>,
}

#[derive(Debug)]
struct Trip {
    pid: u32,
    tid: u32,
    fd: i32,
    request_seq: Option<u64>,
    start_ns: u64,
    first_byte_ns: Option<u64>,
    drafts: Vec<Draft>,
    /// The draft the next CommandComplete or error belongs to.
    next: usize,
    /// Where an error stopped the round trip: the server skips the rest until `Sync`.
    failed_at: Option<usize>,
    /// A session's start-up: no query.
    connect: bool,
}

#[derive(Debug, Default)]
struct Db {
    statements: HashMap<String, Arc<Statement>>,
    portals: HashMap<String, (Option<Arc<Statement>>, u64)>,
    /// Executions since the last `Sync`.
    building: Vec<Draft>,
    waiting: VecDeque<Trip>,
    /// The last read did not end a response: the next one begins mid-message.
    mid_response: bool,
    /// The return of the last read.
    last_read_ns: u64,
    /// The thread that wrote last.
    last_tid: u32,
    /// Time of round trips that only prepared, owed to the next query.
    carry_ns: u64,
}

/// Counts of what was seen on database connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DbStats {
    pub queries: u64,
    /// Queries made while their thread served no request.
    pub outside_requests: u64,
    /// Round trips that opened a session (start-up and authentication).
    pub connects: u64,
    /// Connections that switched to TLS or GSS encryption: their statements cannot be seen.
    pub encrypted: u64,
}

#[derive(Default)]
pub struct Queries {
    conns: HashMap<(u32, i32), Db>,
    pub stats: DbStats,
}

/// The instance of an execution of a prepared statement: its statement and its bound values.
fn bound_instance(statement: Option<&Statement>, values: u64) -> u64 {
    statement.map_or(0, |s| s.fingerprint).rotate_left(29) ^ values
}

impl Queries {
    /// A write on a database connection, with what it asked.
    pub fn write(&mut self, hdr: &Hdr, fd: i32, enter_ts: u64, asks: &[Ask], request_seq: Option<u64>, done: &mut Vec<Query>) {
        let db = self.conns.entry((hdr.tgid, fd)).or_default();
        db.last_tid = hdr.tid;
        // The client asks again while a response it was reading has not been seen to end (its end
        // was in bytes the copy did not hold): it ended with the last read.
        if db.mid_response
            && !asks.is_empty()
            && db.waiting.front().is_some_and(|t| t.first_byte_ns.is_some())
            && let Some(trip) = db.waiting.pop_front()
        {
            finish(trip, db.last_read_ns, None, EndReason::Delimited, &mut db.carry_ns, &mut self.stats, done);
            db.mid_response = false;
        }
        let trip = |drafts| Trip {
            pid: hdr.tgid,
            tid: hdr.tid,
            fd,
            request_seq,
            start_ns: enter_ts,
            first_byte_ns: None,
            drafts,
            next: 0,
            failed_at: None,
            connect: false,
        };
        for ask in asks {
            match ask {
                Ask::Startup => {
                    // A new session on this fd: what the old one prepared is gone.
                    *db = Db::default();
                    db.waiting.push_back(Trip { connect: true, ..trip(Vec::new()) });
                    self.stats.connects += 1;
                }
                Ask::Query(st) => {
                    let st = Arc::new(st.clone());
                    db.waiting.push_back(trip(vec![Draft { instance: st.instance, statement: Some(st), error: None, rows: None }]));
                }
                Ask::Prepare { name, statement } => {
                    db.statements.insert(name.clone(), Arc::new(statement.clone()));
                }
                Ask::Bind { portal, name, values } => {
                    let st = db.statements.get(name).cloned();
                    db.portals.insert(portal.clone(), (st, *values));
                }
                Ask::Execute { portal } => {
                    let (statement, values) = db.portals.get(portal).cloned().unwrap_or((None, 0));
                    let instance = bound_instance(statement.as_deref(), values);
                    db.building.push(Draft { statement, instance, error: None, rows: None });
                }
                Ask::Sync => {
                    let drafts = std::mem::take(&mut db.building);
                    db.waiting.push_back(trip(drafts));
                }
                Ask::Close { name } => {
                    db.statements.remove(name);
                }
                Ask::Other => {}
            }
        }
    }

    /// A read on a database connection; the queries it completed go to `done`.
    pub fn read(&mut self, hdr: &Hdr, fd: i32, answer: &Answer, done: &mut Vec<Query>) {
        let Some(db) = self.conns.get_mut(&(hdr.tgid, fd)) else { return };
        if answer.encrypted {
            self.stats.encrypted += 1;
            self.conns.remove(&(hdr.tgid, fd));
            return;
        }
        let Some(front) = db.waiting.front_mut() else {
            // Bytes nobody asked for (a notice between requests).
            return;
        };
        front.first_byte_ns.get_or_insert(hdr.ts);
        db.last_read_ns = hdr.ts;
        // A read that begins a response can be walked from its first byte; one that continues a
        // long response is known by its end only.
        let mut replies: Vec<&Reply> = Vec::new();
        if !db.mid_response {
            replies.extend(answer.from_start.iter().filter(|r| answer.walked_all || !matches!(r, Reply::Ready { .. })));
        }
        if db.mid_response || !answer.walked_all {
            replies.extend(answer.at_end.iter());
        }
        let mut ended = false;
        for reply in replies {
            ended = false;
            let Some(trip) = db.waiting.front_mut() else { break };
            match reply {
                Reply::Error { code } => {
                    let at = trip.next.min(trip.drafts.len().saturating_sub(1));
                    if let Some(d) = trip.drafts.get_mut(at)
                        && d.error.is_none()
                    {
                        d.error = Some(code.clone());
                    }
                    trip.failed_at.get_or_insert(at);
                }
                Reply::Done { rows } => {
                    if let Some(d) = trip.drafts.get_mut(trip.next) {
                        d.rows = *rows;
                    }
                    trip.next += 1;
                }
                Reply::Ready { .. } | Reply::End => {
                    let tx = match reply {
                        Reply::Ready { tx } => Some(*tx),
                        _ => None,
                    };
                    if let Some(trip) = db.waiting.pop_front() {
                        finish(trip, hdr.ts, tx, EndReason::Complete, &mut db.carry_ns, &mut self.stats, done);
                    }
                    ended = true;
                    if let Some(next) = db.waiting.front_mut() {
                        next.first_byte_ns.get_or_insert(hdr.ts);
                    }
                }
                Reply::Other => {}
            }
        }
        db.mid_response = !ended;
    }

    /// The connection's fd was closed (or its process exited, `reason`): round trips still
    /// waiting end now.
    /// The thread that last wrote on `(tgid, fd)`.
    pub fn last_tid(&self, tgid: u32, fd: i32) -> Option<u32> {
        self.conns.get(&(tgid, fd)).map(|db| db.last_tid).filter(|&t| t != 0)
    }

    /// The statement thread `tid` of `tgid` is waiting on at `ts` (its round trip sent, not
    /// answered yet), if any.
    pub fn waiting_on(&self, tgid: u32, tid: u32, ts: u64) -> Option<Arc<Statement>> {
        self.conns.iter().filter(|((pid, _), _)| *pid == tgid).find_map(|(_, db)| {
            let trip = db.waiting.iter().find(|t| t.tid == tid && t.start_ns <= ts && !t.connect)?;
            trip.drafts.get(trip.next.min(trip.drafts.len().saturating_sub(1)))?.statement.clone()
        })
    }

    pub fn close(&mut self, tgid: u32, fd: i32, ts: u64, reason: EndReason, done: &mut Vec<Query>) {
        if let Some(db) = self.conns.remove(&(tgid, fd)) {
            let mut carry = db.carry_ns;
            for trip in db.waiting {
                finish(trip, ts, None, reason, &mut carry, &mut self.stats, done);
            }
        }
    }

    /// The process exited at `ts`.
    pub fn exit(&mut self, pid: u32, ts: u64, done: &mut Vec<Query>) {
        let fds: Vec<i32> = self.conns.keys().filter(|(tgid, _)| *tgid == pid).map(|(_, fd)| *fd).collect();
        for fd in fds {
            self.close(pid, fd, ts, EndReason::ProcessExit, done);
        }
    }
}

fn finish(trip: Trip, end_ns: u64, tx_after: Option<Tx>, end: EndReason, carry_ns: &mut u64, stats: &mut DbStats, done: &mut Vec<Query>) {
    if trip.drafts.is_empty() {
        // A round trip that only prepared: its time belongs to the query it prepared for.
        if !trip.connect {
            *carry_ns += end_ns.saturating_sub(trip.start_ns);
        }
        return;
    }
    // After an error the server skipped the rest of the round trip: those never ran.
    let ran = trip.failed_at.map_or(trip.drafts.len(), |at| at + 1).min(trip.drafts.len());
    let shared_by = ran.max(1) as u32;
    let mut extra_ns = std::mem::take(carry_ns);
    for d in trip.drafts.into_iter().take(ran) {
        stats.queries += 1;
        stats.outside_requests += u64::from(trip.request_seq.is_none());
        done.push(Query {
            pid: trip.pid,
            tid: trip.tid,
            fd: trip.fd,
            request_seq: trip.request_seq,
            statement: d.statement,
            instance: d.instance,
            start_ns: trip.start_ns,
            first_byte_ns: trip.first_byte_ns,
            end_ns: end_ns.max(trip.start_ns),
            shared_by,
            extra_ns: std::mem::take(&mut extra_ns),
            error: d.error,
            rows: d.rows,
            tx_after,
            end,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::{Dialect, InstanceKey, statement};

    fn hdr(ts: u64) -> Hdr {
        Hdr { tgid: 10, tid: 11, ts }
    }

    fn st(text: &str) -> Statement {
        statement(text.as_bytes(), false, Dialect::Postgres, &InstanceKey::default(), false)
    }

    fn ready(tx: Tx) -> Answer {
        Answer {
            from_start: vec![Reply::Done { rows: Some(1) }, Reply::Ready { tx }],
            walked_all: true,
            at_end: vec![Reply::Ready { tx }],
            encrypted: false,
        }
    }

    #[test]
    fn a_simple_query_ends_at_ready_for_query() {
        let mut q = Queries::default();
        let mut done = Vec::new();
        q.write(&hdr(100), 7, 90, &[Ask::Query(st("SELECT 1"))], Some(3), &mut done);
        q.read(&hdr(500), 7, &ready(Tx::Idle), &mut done);
        assert_eq!(done.len(), 1);
        let d = &done[0];
        assert_eq!((d.start_ns, d.end_ns, d.request_seq, d.rows, d.tx_after), (90, 500, Some(3), Some(1), Some(Tx::Idle)));
    }

    #[test]
    fn a_long_response_ends_at_its_last_read() {
        let mut q = Queries::default();
        let mut done = Vec::new();
        q.write(&hdr(100), 7, 90, &[Ask::Query(st("SELECT * FROM big"))], Some(3), &mut done);
        // First read: rows, no end.
        q.read(&hdr(300), 7, &Answer { from_start: vec![], walked_all: false, at_end: vec![], encrypted: false }, &mut done);
        // A middle read whose first bytes happen to look like a ReadyForQuery must not end it.
        q.read(
            &hdr(400),
            7,
            &Answer { from_start: vec![Reply::Ready { tx: Tx::Idle }], walked_all: false, at_end: vec![], encrypted: false },
            &mut done,
        );
        assert!(done.is_empty());
        q.read(
            &hdr(600),
            7,
            &Answer {
                from_start: vec![],
                walked_all: false,
                at_end: vec![Reply::Done { rows: Some(900) }, Reply::Ready { tx: Tx::Idle }],
                encrypted: false,
            },
            &mut done,
        );
        assert_eq!((done.len(), done[0].first_byte_ns, done[0].end_ns, done[0].rows), (1, Some(300), 600, Some(900)));
    }

    #[test]
    fn prepared_statements_keep_their_text_and_values_tell_repeats() {
        let mut q = Queries::default();
        let mut done = Vec::new();
        let s = st("SELECT * FROM author WHERE id = $1");
        let exec =
            |values| vec![Ask::Bind { portal: String::new(), name: "_pg3_0".into(), values }, Ask::Execute { portal: String::new() }, Ask::Sync];
        let mut first = vec![Ask::Prepare { name: "_pg3_0".into(), statement: s.clone() }];
        first.extend(exec(1));
        q.write(&hdr(100), 7, 90, &first, Some(1), &mut done);
        q.read(&hdr(200), 7, &ready(Tx::Idle), &mut done);
        for (i, v) in [2, 2, 3].into_iter().enumerate() {
            q.write(&hdr(300 + i as u64 * 100), 7, 290 + i as u64 * 100, &exec(v), Some(1), &mut done);
            q.read(&hdr(350 + i as u64 * 100), 7, &ready(Tx::Idle), &mut done);
        }
        assert_eq!(done.len(), 4);
        assert!(done.iter().all(|d| d.statement.as_ref().is_some_and(|st| st.fingerprint == s.fingerprint)));
        assert_eq!(done[1].instance, done[2].instance);
        assert_ne!(done[0].instance, done[1].instance);
        assert_ne!(done[2].instance, done[3].instance);
    }

    #[test]
    fn an_error_is_on_its_query_and_the_rest_of_the_round_trip_never_ran() {
        let mut q = Queries::default();
        let mut done = Vec::new();
        let asks = vec![
            Ask::Prepare { name: String::new(), statement: st("INSERT INTO items VALUES ($1)") },
            Ask::Bind { portal: String::new(), name: String::new(), values: 1 },
            Ask::Execute { portal: String::new() },
            Ask::Bind { portal: String::new(), name: String::new(), values: 2 },
            Ask::Execute { portal: String::new() },
            Ask::Sync,
        ];
        q.write(&hdr(100), 7, 90, &asks, None, &mut done);
        let a = Answer {
            from_start: vec![Reply::Error { code: "23505".into() }, Reply::Ready { tx: Tx::Failed }],
            walked_all: true,
            ..Answer::default()
        };
        q.read(&hdr(200), 7, &a, &mut done);
        assert_eq!(done.len(), 1, "{done:?}");
        assert_eq!((done[0].error.as_deref(), done[0].tx_after), (Some("23505"), Some(Tx::Failed)));
        assert_eq!(q.stats.outside_requests, 1);
    }

    #[test]
    fn a_worker_killed_mid_query_ends_it_with_the_process() {
        let mut q = Queries::default();
        let mut done = Vec::new();
        q.write(&hdr(100), 7, 90, &[Ask::Query(st("UPDATE items SET v = 1"))], Some(2), &mut done);
        q.exit(10, 900, &mut done);
        assert_eq!((done.len(), done[0].end, done[0].end_ns, done[0].tx_after), (1, EndReason::ProcessExit, 900, None));
    }
}
