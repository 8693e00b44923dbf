//! Assemble: connection events into requests.
//!
//! A request starts when its first bytes reach the socket (tcp_probe's arrival; the first read
//! when that was not seen) and ends when the last byte of its response is written: known from the
//! response's framing (Content-Length, bodiless statuses), or else at the next request on the
//! connection, end of stream or close. Keep-alive connections carry many requests; a worker that
//! dies mid-request ends its requests with no status.
use std::{collections::HashMap, net::SocketAddr};

use crate::{
    event::{Dir, Event, Hdr, Head},
    http::ResponseHead,
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
}

impl Request {
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }
}

/// How the end of a request was recognised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// The response's framing says its last byte was written.
    Complete,
    /// Found later: the next request on the connection, end of stream or close.
    Delimited,
    /// The worker process exited before finishing the response.
    ProcessExit,
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
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AssemblerStats {
    /// Requests completed (all of them, reported or not).
    pub requests: u64,
    /// Connections whose bytes were not HTTP/1 (TLS, HTTP/2, another protocol).
    pub non_http_phases: u64,
    /// Requests still open when the watch ended.
    pub open_at_exit: u64,
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
}

#[derive(Debug, Default)]
struct Conn {
    peer: Option<SocketAddr>,
    /// End of the previous request on this connection: arrivals before it belong to it.
    last_end_ns: u64,
    /// An HTTP request was seen here: later unparsable bytes are a body (drained after an early
    /// response, say), not another protocol.
    http: bool,
    open: Option<Open>,
}

pub struct Assembler {
    conns: HashMap<(u32, i32), Conn>,
    threshold_ns: u64,
    pub stats: AssemblerStats,
}

impl Assembler {
    pub fn new(threshold_ns: u64) -> Self {
        Self { conns: HashMap::new(), threshold_ns, stats: AssemblerStats::default() }
    }

    /// A connection that was already open when watching started.
    pub fn seed_conn(&mut self, tgid: u32, fd: i32, peer: Option<SocketAddr>) {
        self.conns.insert((tgid, fd), Conn { peer, ..Conn::default() });
    }

    pub fn open_requests(&self) -> usize {
        self.conns.values().filter(|c| c.open.is_some()).count()
    }

    pub fn observe(&mut self, ev: &Event, out: &mut Vec<Request>) {
        match ev {
            Event::Accept { hdr, fd, peer, .. } => {
                if let Some(old) = self.conns.remove(&(hdr.tgid, *fd)) {
                    // The fd was reused without a close we saw: whatever was open there ended.
                    self.end(hdr.tgid, old, hdr.ts, EndReason::Delimited, out);
                }
                self.conns.insert((hdr.tgid, *fd), Conn { peer: *peer, ..Conn::default() });
            }
            Event::Data { hdr, dir: Dir::Read, fd, bytes, enter_ts, arrival_ts, head, comm, .. } => {
                self.on_read(hdr, *fd, *bytes, *enter_ts, *arrival_ts, head.as_ref(), comm.as_deref(), out)
            }
            Event::Data { hdr, dir: Dir::Write, fd, bytes, head, .. } => self.on_write(hdr, *fd, *bytes, head.as_ref(), out),
            Event::Close { hdr, fd } => {
                if let Some(conn) = self.conns.remove(&(hdr.tgid, *fd)) {
                    self.end(hdr.tgid, conn, hdr.ts, EndReason::Delimited, out);
                }
            }
            Event::Exit { hdr, pid } => {
                let keys: Vec<_> = self.conns.keys().filter(|(tgid, _)| tgid == pid).copied().collect();
                for key in keys {
                    if let Some(conn) = self.conns.remove(&key) {
                        self.end(*pid, conn, hdr.ts, EndReason::ProcessExit, out);
                    }
                }
            }
            Event::Fork { .. } | Event::OffCpu { .. } | Event::Syscall { .. } | Event::Stack { .. } | Event::Slow { .. } => {}
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
        let conn = self.conns.entry((hdr.tgid, fd)).or_default();
        if bytes == 0 {
            // End of stream: the client is done. A request whose response was written is over;
            // one still being served goes on until the server writes or closes.
            if conn.open.as_ref().is_some_and(|o| o.wrote)
                && let Some(open) = conn.open.take()
            {
                Self::finish(hdr.tgid, conn, open, EndReason::Delimited, None, &mut self.stats, out);
            }
            return;
        }
        match head {
            Some(Head::Request(req)) => {
                if let Some(prev) = conn.open.take() {
                    // The next request on a keep-alive connection delimits the previous one.
                    Self::finish(hdr.tgid, conn, prev, EndReason::Delimited, Some(hdr.ts), &mut self.stats, out);
                }
                // The arrival belongs to this request only if it came after the previous one ended.
                let arrival = arrival_ts.filter(|&a| a >= conn.last_end_ns && a <= hdr.ts);
                let start_ns = arrival.unwrap_or(hdr.ts);
                conn.http = true;
                conn.open = Some(Open {
                    reader_tid: hdr.tid,
                    writer_tid: None,
                    comm: comm.unwrap_or_default().to_string(),
                    method: req.method.clone(),
                    path: req.target.clone(),
                    start_ns,
                    queue_ns: arrival.map_or(0, |a| enter_ts.saturating_sub(a)),
                    bytes_in: bytes,
                    bytes_out: 0,
                    response: None,
                    response_bytes: 0,
                    wrote: false,
                    last_write_ns: 0,
                    inflight_sent: false,
                });
            }
            // A body, or bytes after an interim (1xx) response: part of the open request.
            _ => match conn.open.as_mut() {
                Some(open) => open.bytes_in += bytes,
                None if head.is_some() && !conn.http => self.stats.non_http_phases += 1,
                None => {}
            },
        }
    }

    fn on_write(&mut self, hdr: &Hdr, fd: i32, bytes: u64, head: Option<&Head>, out: &mut Vec<Request>) {
        let Some(conn) = self.conns.get_mut(&(hdr.tgid, fd)) else { return };
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
        let done = open
            .response
            .and_then(|r| r.total_len(head_request))
            .is_some_and(|total| open.response_bytes >= total);
        if done && let Some(open) = conn.open.take() {
            Self::finish(hdr.tgid, conn, open, EndReason::Complete, None, &mut self.stats, out);
        }
    }

    /// Ends what is open on a connection that is going away at `ts`.
    fn end(&mut self, tgid: u32, mut conn: Conn, ts: u64, reason: EndReason, out: &mut Vec<Request>) {
        if let Some(open) = conn.open.take() {
            Self::finish(tgid, &mut conn, open, reason, Some(ts), &mut self.stats, out);
        }
    }

    fn finish(
        tgid: u32,
        conn: &mut Conn,
        open: Open,
        reason: EndReason,
        end_ns: Option<u64>,
        stats: &mut AssemblerStats,
        out: &mut Vec<Request>,
    ) {
        // A response that was written ended with its last write; one never written (or cut off
        // by the worker's death) ends when its connection or process did.
        let end_ns = match end_ns {
            Some(ts) if !open.wrote || reason == EndReason::ProcessExit => ts,
            _ => open.last_write_ns,
        };
        conn.last_end_ns = end_ns;
        stats.requests += 1;
        out.push(Request {
            pid: tgid,
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
            });
        }
    }

    /// When the first open request still under the threshold will cross it, if any: the
    /// moment to look again rather than polling for it.
    pub fn next_crossing(&self) -> Option<u64> {
        self.conns.values().filter_map(|c| c.open.as_ref()).filter(|o| !o.inflight_sent).map(|o| o.start_ns.saturating_add(self.threshold_ns)).min()
    }

    /// At the end of a watch: how many requests were still running.
    pub fn close(&mut self) {
        self.stats.open_at_exit = self.open_requests() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{BodyLen, RequestHead};

    const T: u32 = 100;

    fn h(tid: u32, ts: u64) -> Hdr {
        Hdr { tgid: T, tid, ts }
    }

    fn accept(fd: i32, ts: u64) -> Event {
        Event::Accept { hdr: h(T, ts), fd, listen_fd: 3, peer: Some("10.0.0.9:4242".parse().unwrap()), enter_ts: ts - 1 }
    }

    fn req(tid: u32, fd: i32, ts: u64, arrival: Option<u64>, method: &str, path: &str) -> Event {
        Event::Data {
            hdr: h(tid, ts),
            dir: Dir::Read,
            fd,
            bytes: 80,
            enter_ts: ts - 5,
            arrival_ts: arrival,
            head: Some(Head::Request(RequestHead { method: method.into(), target: path.into() })),
            comm: Some("gunicorn".into()),
            nr: 0,
        }
    }

    fn resp(tid: u32, fd: i32, ts: u64, status: u16, head_len: u64, body: BodyLen, bytes: u64) -> Event {
        Event::Data {
            hdr: h(tid, ts),
            dir: Dir::Write,
            fd,
            bytes,
            enter_ts: ts - 5,
            arrival_ts: None,
            head: Some(Head::Response(ResponseHead { status, head_len: Some(head_len), body })),
            comm: Some("gunicorn".into()),
            nr: 0,
        }
    }

    fn write(tid: u32, fd: i32, ts: u64, bytes: u64) -> Event {
        Event::Data { hdr: h(tid, ts), dir: Dir::Write, fd, bytes, enter_ts: ts - 5, arrival_ts: None, head: None, comm: None, nr: 1 }
    }

    fn run(events: &[Event]) -> (Vec<Request>, Assembler) {
        let mut a = Assembler::new(1_000);
        let mut out = Vec::new();
        for e in events {
            a.observe(e, &mut out);
        }
        (out, a)
    }

    #[test]
    fn content_length_ends_the_request_at_its_last_byte() {
        let (out, _) = run(&[
            accept(7, 1_000),
            req(101, 7, 2_000, Some(1_500), "GET", "/a"),
            resp(102, 7, 3_000, 200, 100, BodyLen::Length(50), 100),
            write(102, 7, 4_000, 50),
            Event::Close { hdr: h(102, 9_000), fd: 7 },
        ]);
        assert_eq!(out.len(), 1);
        let r = &out[0];
        assert_eq!((r.start_ns, r.end_ns, r.queue_ns, r.tid, r.status), (1_500, 4_000, 1_995 - 1_500, 102, Some(200)));
        assert_eq!((r.bytes_in, r.bytes_out, r.end), (80, 150, EndReason::Complete));
    }

    #[test]
    fn chunked_response_is_delimited_by_the_next_request() {
        let (out, a) = run(&[
            accept(7, 1_000),
            req(101, 7, 2_000, Some(1_900), "GET", "/stream"),
            resp(101, 7, 3_000, 200, 100, BodyLen::Chunked, 100),
            write(101, 7, 5_000, 20),
            // An arrival older than the previous response's end belongs to that response.
            req(101, 7, 8_000, Some(4_000), "GET", "/next"),
        ]);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].end_ns, out[0].end), (5_000, EndReason::Delimited));
        assert_eq!(a.open_requests(), 1);
        let mut infl = Vec::new();
        let mut a = a;
        assert_eq!(a.next_crossing(), Some(8_000 + 1_000), "when the open request will cross");
        a.tick(9_100, &mut infl);
        assert_eq!(infl.len(), 1);
        assert_eq!(infl[0].start_ns, 8_000, "stale arrival ignored");
        assert_eq!(a.next_crossing(), None, "nothing left to cross");
        a.tick(9_200, &mut infl);
        assert_eq!(infl.len(), 1, "inflight is reported once");
    }

    #[test]
    fn a_worker_dying_mid_request_ends_it_without_status() {
        let (out, a) = run(&[
            accept(7, 1_000),
            req(101, 7, 2_000, None, "POST", "/slow"),
            accept(8, 2_500),
            Event::Exit { hdr: h(T, 50_000), pid: T },
        ]);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].status, out[0].start_ns, out[0].end_ns, out[0].end), (None, 2_000, 50_000, EndReason::ProcessExit));
        assert_eq!(a.open_requests(), 0);
    }

    #[test]
    fn interim_response_does_not_end_the_request_and_head_requests_have_no_body() {
        let (out, _) = run(&[
            accept(7, 1_000),
            req(101, 7, 2_000, None, "HEAD", "/h"),
            resp(101, 7, 3_000, 100, 25, BodyLen::Unknown, 25),
            resp(101, 7, 4_000, 200, 90, BodyLen::Length(1_000), 90),
        ]);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].status, out[0].end_ns, out[0].bytes_out), (Some(200), 4_000, 115));
    }

    #[test]
    fn bytes_that_are_not_http_are_counted_not_reported() {
        let other = Event::Data {
            hdr: h(101, 2_000),
            dir: Dir::Read,
            fd: 7,
            bytes: 300,
            enter_ts: 1_990,
            arrival_ts: None,
            head: Some(Head::Other),
            comm: None,
            nr: 0,
        };
        let (out, a) = run(&[accept(7, 1_000), other, Event::Close { hdr: h(101, 3_000), fd: 7 }]);
        assert!(out.is_empty());
        assert_eq!(a.stats.non_http_phases, 1);
    }
}
