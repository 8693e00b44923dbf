//! Assemble: connection events into requests (on connections the process serves) and calls (on
//! connections it made itself, attached to the request its thread is serving), whatever the
//! protocol: the parsers have already turned heads into `RequestHead`/`ResponseHead`.
//!
//! A request starts when its first bytes reach the socket (tcp_probe's arrival; the first read
//! when that was not seen) and ends when the last byte of its response is written: known from the
//! response's framing (Content-Length, bodiless statuses), or else at the next request on the
//! connection, end of stream or close. Keep-alive connections carry many requests; a worker that
//! dies mid-request ends its requests with no status.
//!
//! The assembler also keeps what every fd of a watched process is ([`fds::FdTable`]), from the
//! syscalls that made them, so a wait is classified by what its fd was at that moment.
pub mod backends;
pub mod calls;
mod db;
pub mod fds;
mod listeners;
pub mod queries;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
};

use backends::{Backends, HolderRequest};
pub use calls::Call;
use calls::Calls;
use fds::FdTable;
pub use queries::Query;
use queries::{DbStats, Queries};

use crate::{
    event::{Dir, Event, FdOrigin, Hdr, Head, Wire},
    proto::ResponseHead,
    sql::stats::Tally,
    stacks::{Frame, FrameKind},
};

/// A completed request, in monotonic nanoseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub pid: u32,
    /// The thread that wrote the response (the one that read the request if none was written).
    pub tid: u32,
    pub comm: String,
    pub method: String,
    pub path: String,
    pub status: Option<u16>,
    pub start_ns: u64,
    pub end_ns: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub peer: Option<SocketAddr>,
    /// Time the request's bytes waited before a worker thread asked for them.
    pub queue_ns: u64,
    pub end: EndReason,
    /// The calls its thread made on outbound connections while serving it (at most
    /// [`MAX_CALLS`]; `calls_total` counts them all).
    pub calls: Vec<Call>,
    pub calls_total: u64,
    /// Its queries on database connections, counted (None: it made none).
    pub sql: Option<Box<Tally>>,
}

impl Request {
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }
}

/// Calls kept per request (an N+1 loop can make hundreds of thousands).
pub const MAX_CALLS: usize = 1000;

/// How the end of a request (or call) was recognised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// The response's framing says its last byte was written.
    Complete,
    /// Found later: the next request on the connection, end of stream or close.
    Delimited,
    /// The worker process exited before finishing the response.
    ProcessExit,
}

/// A request running past the threshold, borrowed from the assembler.
pub struct RunningRequest<'a> {
    pub pid: u32,
    pub tid: u32,
    /// The served connection's fd.
    pub fd: i32,
    pub start_ns: u64,
    pub method: &'a str,
    pub path: &'a str,
}

/// A request still running past the threshold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inflight {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub method: String,
    pub path: String,
    pub start_ns: u64,
    pub now_ns: u64,
    pub peer: Option<SocketAddr>,
    pub queue_ns: u64,
    pub bytes_in: u64,
    /// Its queries so far.
    pub sql: Option<Box<Tally>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AssemblerStats {
    /// Requests completed (all of them, reported or not).
    pub requests: u64,
    /// Connections whose bytes no parser recognised (TLS, HTTP/2, another protocol).
    pub non_http_phases: u64,
    /// Requests still open when the watch ended.
    pub open_at_exit: u64,
    /// Calls on outbound connections completed.
    pub calls: u64,
    /// ... of which no request of their thread was open (made between requests).
    pub calls_outside_requests: u64,
    /// Queries on database connections.
    pub db: DbStats,
    /// Requests a watched process forwarded to another watched one (uWSGI's `--http` router
    /// connecting to its workers' socket): not reported, the hop that served them is.
    pub proxied: u64,
}

#[derive(Debug)]
struct Open {
    reader_tid: u32,
    writer_tid: Option<u32>,
    comm: String,
    method: String,
    path: String,
    start_ns: u64,
    queue_ns: u64,
    /// When its first read was called (the end of its wait in the queue).
    read_enter_ns: u64,
    bytes_in: u64,
    bytes_out: u64,
    /// The final (non-1xx) response, once its head was written.
    response: Option<ResponseHead>,
    /// Bytes written since the final response's head began.
    response_bytes: u64,
    /// Whether a write of any kind happened (a response whose head could not be parsed counts).
    wrote: bool,
    last_write_ns: u64,
    inflight_sent: bool,
    /// Which request this is, among all the assembler has seen (calls are matched by it).
    seq: u64,
    calls: Vec<Call>,
    calls_total: u64,
    sql: Option<Box<Tally>>,
}

#[derive(Debug, Default)]
struct Conn {
    peer: Option<SocketAddr>,
    /// End of the previous request on this connection: arrivals before it belong to it.
    last_end_ns: u64,
    /// A request was recognised here: later unparsable bytes are a body (drained after an early
    /// response, say), not another protocol.
    recognised: bool,
    open: Option<Open>,
    /// Of a connection accepted from a Unix listener: when its client called connect.
    unix_arrival: Option<u64>,
}

/// The request a thread is serving: its connection and sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Serving {
    key: (u32, i32),
    seq: u64,
}

/// What finishing a request touches besides its connection (kept apart from `conns` so both can
/// be borrowed at once).
#[derive(Default)]
struct Parts {
    /// The request each thread is serving.
    serving: HashMap<u32, Serving>,
    calls: Calls,
    queries: Queries,
    backends: Backends,
    /// The last request each thread finished, until its next one: a lock it held may be
    /// reported released after it ended.
    recent: HashMap<u32, (HolderRequest, u64)>,
    next_seq: u64,
    stats: AssemblerStats,
    listeners: listeners::Listeners,
}

pub struct Assembler {
    /// Served connections by (tgid, fd).
    conns: HashMap<(u32, i32), Conn>,
    parts: Parts,
    fds: FdTable,
    threshold_ns: u64,
}

impl Assembler {
    pub fn new(threshold_ns: u64) -> Self {
        Self { conns: HashMap::new(), parts: Parts::default(), fds: FdTable::default(), threshold_ns }
    }

    pub fn stats(&self) -> AssemblerStats {
        AssemblerStats { db: self.parts.queries.stats, ..self.parts.stats }
    }

    /// The watched servers' listening ports and Unix socket paths: a watched process that
    /// connects to one of them forwards its requests (a router in front of the workers).
    pub fn set_listeners(&mut self, ports: &BTreeSet<u16>, unix: &BTreeSet<String>) {
        self.parts.listeners.set(ports, unix);
    }

    /// A connection that was already open when watching started.
    pub fn seed_conn(&mut self, tgid: u32, fd: i32, peer: Option<SocketAddr>) {
        self.conns.insert((tgid, fd), Conn { peer, ..Conn::default() });
    }

    /// What each fd of the watched processes is, as of the events seen so far.
    pub fn fds(&self) -> &FdTable {
        &self.fds
    }

    /// What was seen of the watched listeners' backlogs.
    pub fn listeners(&self) -> Vec<listeners::ListenerStats> {
        self.parts.listeners.stats()
    }

    /// The host's TCP ListenOverflows over the sampled part of the watch.
    pub fn listen_overflows(&self) -> Option<u64> {
        self.parts.listeners.listen_overflows()
    }

    pub fn open_requests(&self) -> usize {
        self.conns.values().filter(|c| c.open.is_some()).count()
    }

    pub fn observe(&mut self, ev: &Event, out: &mut Vec<Request>) {
        let mut done = Vec::new();
        let mut queries = Vec::new();
        match ev {
            Event::Accept { hdr, fd, listen_fd, peer, .. } => {
                let key = (hdr.tgid, *fd);
                if let Some(old) = self.conns.remove(&key) {
                    // The fd was reused without a close we saw: whatever was open there ended.
                    self.end(key, old, hdr.ts, EndReason::Delimited, out);
                }
                let unix_arrival = if peer.is_none() { self.unix_accept(key, *listen_fd, hdr.ts) } else { None };
                self.conns.insert(key, Conn { peer: *peer, unix_arrival, ..Conn::default() });
            }
            Event::Backlog { socket, queued, max, listen_overflows, .. } => self.parts.listeners.sampled(socket, *queued, *max, *listen_overflows),
            Event::UnixConnect { path, enter_ts, refused, .. } => self.on_unix_connect(path, *enter_ts, *refused),
            Event::Data { hdr, fd, enter_ts, wire: Some(wire), .. } => match wire {
                Wire::Asks(asks) => {
                    let serving = self.parts.serving.get(&hdr.tid).map(|s| s.seq);
                    self.parts.queries.write(hdr, *fd, *enter_ts, asks, serving, &mut queries);
                }
                Wire::Answer(answer) => self.parts.queries.read(hdr, *fd, answer, &mut queries),
            },
            Event::Data { hdr, dir, fd, bytes, enter_ts, head, outbound: true, .. } => {
                let peer = self.fds.peer(hdr.tgid, *fd);
                let serving = self.parts.serving.get(&hdr.tid).map(|s| s.seq);
                self.parts.calls.data(hdr, *dir, *fd, *bytes, *enter_ts, head.as_ref(), peer, serving, &mut done);
            }
            Event::Data { hdr, dir: Dir::Read, fd, bytes, enter_ts, arrival_ts, head, comm, .. } => {
                self.on_read(hdr, *fd, *bytes, *enter_ts, *arrival_ts, head.as_ref(), comm.as_deref(), out)
            }
            Event::Data { hdr, dir: Dir::Write, fd, bytes, head, .. } => self.on_write(hdr, *fd, *bytes, head.as_ref(), out),
            Event::Close { hdr, fd } => self.closed(hdr, *fd, out, &mut done, &mut queries),
            // dup2/dup3 onto an open fd closed it.
            Event::Fd { hdr, fd, origin: FdOrigin::Dup { from } } if from != fd => self.closed(hdr, *fd, out, &mut done, &mut queries),
            Event::Exit { hdr, pid } => {
                self.parts.calls.exit(*pid, hdr.ts, &mut done);
                // Its queries end with it, before its requests do (a kill mid-query).
                self.parts.queries.exit(*pid, hdr.ts, &mut queries);
                for q in queries.drain(..) {
                    self.attach_query(q);
                }
                let keys: Vec<_> = self.conns.keys().filter(|(tgid, _)| tgid == pid).copied().collect();
                for key in keys {
                    if let Some(conn) = self.conns.remove(&key) {
                        self.end(key, conn, hdr.ts, EndReason::ProcessExit, out);
                    }
                }
            }
            // A slow request's thread left the CPU waiting for a query: where in the app it
            // was asked from (N+1 patterns name it).
            Event::Stack { hdr, on_cpu: false, at_signal: false, frames, .. } => {
                if let Some(st) = self.parts.queries.waiting_on(hdr.tgid, hdr.tid, hdr.ts)
                    && let Some(frame) = app_frame(frames)
                    && let Some(open) = self.parts.serving.get(&hdr.tid).and_then(|s| self.conns.get_mut(&s.key)).and_then(|c| c.open.as_mut())
                {
                    open.sql.get_or_insert_default().frame_of(st.fingerprint, frame);
                }
            }
            Event::DbLink { hdr, fd, backend } => self.parts.backends.link(hdr.tgid, hdr.tid, *fd, *backend, hdr.ts),
            Event::DbSwitch { hdr, out_ts, wake_ts, wait_event, state, waker, waker_is_backend } => {
                self.on_db_switch(hdr, *out_ts, *wake_ts, *wait_event, *state, *waker, *waker_is_backend)
            }
            Event::PgActivity { hdr, interval_ns, sessions } => self.on_pg_activity(hdr, *interval_ns, sessions),
            Event::Connect { hdr, peer: Some(peer), .. } => self.parts.listeners.connect_out(hdr.tgid, peer),
            Event::Connect { peer: None, .. }
            | Event::Fd { .. }
            | Event::Fork { .. }
            | Event::OffCpu { .. }
            | Event::Syscall { .. }
            | Event::Stack { .. }
            | Event::Slow { .. }
            | Event::Signal { .. }
            | Event::Oom { .. }
            | Event::ExitCall { .. }
            | Event::Proc { .. }
            | Event::Server { .. }
            | Event::Heartbeat { .. }
            | Event::Snapshot { .. }
            | Event::Interrupt { .. } => {}
        }
        // After the connections: a close must see what the fd was before it is forgotten.
        self.fds.observe(ev);
        for call in done {
            self.attach(call);
        }
        for q in queries {
            self.attach_query(q);
        }
    }

    fn closed(&mut self, hdr: &Hdr, fd: i32, out: &mut Vec<Request>, done: &mut Vec<Call>, queries: &mut Vec<Query>) {
        self.parts.calls.close(hdr.tgid, fd, done);
        self.parts.queries.close(hdr.tgid, fd, hdr.ts, EndReason::Delimited, queries);
        // Its queries were counted above, with their backend still known.
        for q in queries.drain(..) {
            self.attach_query(q);
        }
        self.parts.backends.closed(hdr.tgid, fd, hdr.ts);
        if let Some(conn) = self.conns.remove(&(hdr.tgid, fd)) {
            self.end((hdr.tgid, fd), conn, hdr.ts, EndReason::Delimited, out);
        }
    }

    /// A completed call joins the request its thread was serving when the call began, if that
    /// request is still open.
    fn attach(&mut self, call: Call) {
        let serving = self.parts.serving.get(&call.tid).copied().filter(|s| Some(s.seq) == call.request_seq);
        match serving.and_then(|s| self.conns.get_mut(&s.key)).and_then(|c| c.open.as_mut()) {
            Some(open) => keep_call(open, call, &mut self.parts.stats),
            None => {
                self.parts.stats.calls += 1;
                self.parts.stats.calls_outside_requests += 1;
            }
        }
    }

    #[expect(clippy::too_many_arguments, reason = "the fields of one read event")]
    fn on_read(
        &mut self,
        hdr: &Hdr,
        fd: i32,
        bytes: u64,
        enter_ts: u64,
        arrival_ts: Option<u64>,
        head: Option<&Head>,
        comm: Option<&str>,
        out: &mut Vec<Request>,
    ) {
        let key = (hdr.tgid, fd);
        let conn = self.conns.entry(key).or_default();
        if bytes == 0 {
            // End of stream: the client is done. A request whose response was written is over;
            // one still being served goes on until the server writes or closes.
            if conn.open.as_ref().is_some_and(|o| o.wrote)
                && let Some(open) = conn.open.take()
            {
                Self::finish(key, conn, open, EndReason::Delimited, None, &mut self.parts, out);
            }
            return;
        }
        match head {
            Some(Head::Request(req)) => {
                if let Some(prev) = conn.open.take() {
                    // The next request on a keep-alive connection delimits the previous one.
                    Self::finish(key, conn, prev, EndReason::Delimited, Some(hdr.ts), &mut self.parts, out);
                }
                // The arrival belongs to this request only if it came after the previous one ended.
                let arrival = arrival_ts.or(conn.unix_arrival.take()).filter(|&a| a >= conn.last_end_ns && a <= hdr.ts);
                let start_ns = arrival.unwrap_or(hdr.ts);
                conn.recognised = true;
                conn.open = Some(Open {
                    reader_tid: hdr.tid,
                    writer_tid: None,
                    comm: comm.unwrap_or_default().to_string(),
                    method: req.method.clone(),
                    path: req.target.clone(),
                    start_ns,
                    queue_ns: arrival.map_or(0, |a| enter_ts.saturating_sub(a)),
                    read_enter_ns: enter_ts,
                    bytes_in: bytes,
                    bytes_out: 0,
                    response: None,
                    response_bytes: 0,
                    wrote: false,
                    last_write_ns: 0,
                    inflight_sent: false,
                    seq: self.parts.next_seq,
                    calls: Vec::new(),
                    calls_total: 0,
                    sql: None,
                });
                self.parts.serving.insert(hdr.tid, Serving { key, seq: self.parts.next_seq });
                self.parts.next_seq += 1;
            }
            // A body, or bytes after an interim (1xx) response: part of the open request.
            _ => match conn.open.as_mut() {
                Some(open) => open.bytes_in += bytes,
                None if head.is_some() && !conn.recognised => self.parts.stats.non_http_phases += 1,
                None => {}
            },
        }
    }

    fn on_write(&mut self, hdr: &Hdr, fd: i32, bytes: u64, head: Option<&Head>, out: &mut Vec<Request>) {
        let key = (hdr.tgid, fd);
        let Some(conn) = self.conns.get_mut(&key) else { return };
        let Some(open) = conn.open.as_mut() else { return };
        open.bytes_out += bytes;
        open.last_write_ns = hdr.ts;
        open.wrote = true;
        open.writer_tid.get_or_insert(hdr.tid);
        match head {
            Some(Head::Response(resp)) if resp.status >= 200 => {
                open.response = Some(*resp);
                open.response_bytes = bytes;
                open.writer_tid = Some(hdr.tid);
            }
            // Interim responses (100 Continue) do not start the final response.
            Some(Head::Response(_)) => {}
            _ => open.response_bytes += bytes,
        }
        let head_request = open.method == "HEAD";
        let done = open.response.and_then(|r| r.total_len(head_request)).is_some_and(|total| open.response_bytes >= total);
        if done && let Some(open) = conn.open.take() {
            Self::finish(key, conn, open, EndReason::Complete, None, &mut self.parts, out);
        }
    }

    /// Ends what is open on a connection that is going away at `ts`.
    fn end(&mut self, key: (u32, i32), mut conn: Conn, ts: u64, reason: EndReason, out: &mut Vec<Request>) {
        if let Some(open) = conn.open.take() {
            Self::finish(key, &mut conn, open, reason, Some(ts), &mut self.parts, out);
        }
    }

    fn finish(key: (u32, i32), conn: &mut Conn, mut open: Open, reason: EndReason, end_ns: Option<u64>, parts: &mut Parts, out: &mut Vec<Request>) {
        // A response that was written ended with its last write; one never written (or cut off
        // by the worker's death) ends when its connection or process did.
        let end_ns = match end_ns {
            Some(ts) if !open.wrote || reason == EndReason::ProcessExit => ts,
            _ => open.last_write_ns,
        };
        if parts.serving.get(&open.reader_tid).is_some_and(|s| s.seq == open.seq) {
            parts.serving.remove(&open.reader_tid);
        }
        // Its calls end with it at the latest (without a parser, a call on a kept connection
        // would otherwise end only at the next one, in a later request).
        for call in parts.calls.take_made_in(open.seq) {
            keep_call(&mut open, call, &mut parts.stats);
        }
        conn.last_end_ns = end_ns;
        if parts.listeners.is_gateway(key.0) {
            parts.stats.proxied += 1;
            return;
        }
        parts.stats.requests += 1;
        let holder =
            HolderRequest { pid: key.0, tid: open.reader_tid, method: open.method.clone(), path: open.path.clone(), start_ns: open.start_ns };
        parts.recent.insert(open.reader_tid, (holder, end_ns.max(open.start_ns)));
        out.push(Request {
            pid: key.0,
            tid: open.writer_tid.unwrap_or(open.reader_tid),
            comm: open.comm,
            method: open.method,
            path: open.path,
            status: open.response.map(|r| r.status),
            start_ns: open.start_ns,
            end_ns: end_ns.max(open.start_ns),
            bytes_in: open.bytes_in,
            bytes_out: open.bytes_out,
            peer: conn.peer,
            queue_ns: open.queue_ns,
            end: reason,
            calls: open.calls,
            calls_total: open.calls_total,
            sql: open.sql,
        });
    }

    /// Requests that crossed the threshold since the last tick, once each.
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<Inflight>) {
        for (&(tgid, _), conn) in &mut self.conns {
            let Some(open) = conn.open.as_mut() else { continue };
            if open.inflight_sent || now_ns.saturating_sub(open.start_ns) < self.threshold_ns {
                continue;
            }
            open.inflight_sent = true;
            out.push(Inflight {
                pid: tgid,
                tid: open.writer_tid.unwrap_or(open.reader_tid),
                comm: open.comm.clone(),
                method: open.method.clone(),
                path: open.path.clone(),
                start_ns: open.start_ns,
                now_ns,
                peer: conn.peer,
                queue_ns: open.queue_ns,
                bytes_in: open.bytes_in,
                sql: open.sql.clone(),
            });
        }
    }

    /// The request thread `tid` of `pid` is serving now (its start), if any.
    pub fn serving(&self, pid: u32, tid: u32) -> Option<u64> {
        self.conns
            .iter()
            .filter(|(k, _)| k.0 == pid)
            .filter_map(|(_, c)| c.open.as_ref())
            .filter(|o| o.reader_tid == tid || o.writer_tid == Some(tid))
            .map(|o| o.start_ns)
            .max()
    }

    /// The open requests that crossed the threshold, as of now.
    pub fn running(&self) -> impl Iterator<Item = RunningRequest<'_>> {
        self.conns.iter().filter_map(|(&(pid, fd), c)| {
            let o = c.open.as_ref().filter(|o| o.inflight_sent)?;
            Some(RunningRequest { pid, tid: o.writer_tid.unwrap_or(o.reader_tid), fd, start_ns: o.start_ns, method: &o.method, path: &o.path })
        })
    }

    /// When the first open request still under the threshold will cross it, if any: the
    /// moment to look again rather than polling for it.
    pub fn next_crossing(&self) -> Option<u64> {
        self.conns.values().filter_map(|c| c.open.as_ref()).filter(|o| !o.inflight_sent).map(|o| o.start_ns.saturating_add(self.threshold_ns)).min()
    }

    /// At the end of a watch: how many requests were still running.
    pub fn close(&mut self) {
        self.parts.stats.open_at_exit = self.open_requests() as u64;
    }
}

/// The innermost Python frame of the application's own code: not the standard library, not an
/// installed package (the driver, the ORM, the framework).
fn app_frame(frames: &[Frame]) -> Option<&Frame> {
    frames.iter().filter(|f| f.kind == FrameKind::Python).find(|f| {
        let file = f.file.as_str();
        // Installed scripts (a venv's bin/gunicorn) have no .py: they are not the app either.
        file.ends_with(".py") && !(file.contains("/site-packages/") || file.contains("/dist-packages/") || file.contains("/lib/python3"))
    })
}

fn keep_call(open: &mut Open, call: Call, stats: &mut AssemblerStats) {
    stats.calls += 1;
    open.calls_total += 1;
    if open.calls.len() < MAX_CALLS {
        open.calls.push(call);
    }
}
