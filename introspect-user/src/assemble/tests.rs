//! The assembler on hand-made event streams: HTTP framing, keep-alive, deaths, calls on
//! outbound connections, and a protocol defined here to show that a protocol is one file.
use super::*;
use crate::proto::{BodyLen, RequestHead};

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
        outbound: false,
        wire: None,
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
        outbound: false,
        wire: None,
    }
}

fn write(tid: u32, fd: i32, ts: u64, bytes: u64) -> Event {
    Event::Data {
        hdr: h(tid, ts),
        dir: Dir::Write,
        fd,
        bytes,
        enter_ts: ts - 5,
        arrival_ts: None,
        head: None,
        comm: None,
        nr: 1,
        outbound: false,
        wire: None,
    }
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
    let (out, a) = run(&[accept(7, 1_000), req(101, 7, 2_000, None, "POST", "/slow"), accept(8, 2_500), Event::Exit { hdr: h(T, 50_000), pid: T }]);
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
        outbound: false,
        wire: None,
    };
    let (out, a) = run(&[accept(7, 1_000), other, Event::Close { hdr: h(101, 3_000), fd: 7 }]);
    assert!(out.is_empty());
    assert_eq!(a.stats().non_http_phases, 1);
}

fn outbound(tid: u32, dir: Dir, fd: i32, ts: u64, bytes: u64) -> Event {
    Event::Data { hdr: h(tid, ts), dir, fd, bytes, enter_ts: ts - 10, arrival_ts: None, head: None, comm: None, nr: 44, outbound: true, wire: None }
}

#[test]
fn calls_on_outbound_connections_join_the_request_their_thread_serves() {
    let db = Some("127.0.0.1:5432".to_string());
    let (out, a) = run(&[
        accept(7, 1_000),
        req(101, 7, 2_000, None, "GET", "/users"),
        Event::Fd { hdr: h(101, 2_100), fd: 9, origin: FdOrigin::Socket { family: 2 } },
        Event::Connect { hdr: h(101, 2_200), fd: 9, peer: db.clone() },
        // Two round trips: a write, then the response in two reads; then the next query.
        outbound(101, Dir::Write, 9, 3_000, 40),
        outbound(101, Dir::Read, 9, 4_000, 100),
        outbound(101, Dir::Read, 9, 4_500, 20),
        outbound(101, Dir::Write, 9, 5_000, 30),
        outbound(101, Dir::Read, 9, 6_000, 10),
        // Django's default closes the connection at the request's end.
        Event::Close { hdr: h(101, 6_500), fd: 9 },
        resp(101, 7, 7_000, 200, 100, BodyLen::Length(0), 100),
        // A call after the response: no request of that thread is open.
        outbound(101, Dir::Write, 10, 8_000, 5),
        Event::Close { hdr: h(101, 8_100), fd: 10 },
    ]);
    assert_eq!(out.len(), 1);
    let calls = &out[0].calls;
    assert_eq!(out[0].calls_total, 2);
    assert_eq!((calls[0].start_ns, calls[0].end_ns, calls[0].bytes_out, calls[0].bytes_in), (2_990, 4_500, 40, 120));
    assert_eq!((calls[1].start_ns, calls[1].end_ns, calls[1].bytes_in), (4_990, 6_000, 10));
    assert!(calls.iter().all(|c| c.peer == db && c.tid == 101));
    assert_eq!((a.stats().calls, a.stats().calls_outside_requests), (3, 1));
    assert_eq!(a.fds().get(T, 9), None, "closed fds are forgotten");
}

#[test]
fn a_call_on_a_kept_connection_ends_with_its_request_and_never_joins_a_later_one() {
    let (out, a) = run(&[
        accept(7, 1_000),
        Event::Connect { hdr: h(101, 1_100), fd: 9, peer: Some("10.0.0.5:6379".into()) },
        req(101, 7, 2_000, None, "GET", "/a"),
        outbound(101, Dir::Write, 9, 3_000, 40),
        outbound(101, Dir::Read, 9, 4_000, 100),
        resp(101, 7, 5_000, 200, 100, BodyLen::Length(0), 100),
        // After the response, before the next request: the thread's own business.
        outbound(101, Dir::Write, 9, 6_000, 40),
        outbound(101, Dir::Read, 9, 6_500, 10),
        req(101, 7, 7_000, None, "GET", "/b"),
        outbound(101, Dir::Write, 9, 8_000, 40),
        outbound(101, Dir::Read, 9, 9_000, 100),
        resp(101, 7, 10_000, 200, 100, BodyLen::Length(0), 100),
    ]);
    let calls: Vec<_> = out.iter().map(|r| r.calls.iter().map(|c| (c.start_ns, c.end_ns)).collect::<Vec<_>>()).collect();
    assert_eq!(calls, vec![vec![(2_990, 4_000)], vec![(7_990, 9_000)]]);
    assert_eq!((a.stats().calls, a.stats().calls_outside_requests), (3, 1));
}

/// A protocol that exists only here: `PING <what>\n` asks, `PONG <status> <len>\n` and `len`
/// bytes answer. Its whole definition is this impl; decode and the assembler need nothing else.
mod ping {
    use crate::proto::{BodyLen, Options, Protocol, RequestHead, ResponseHead, Side};

    pub struct Ping;

    impl Protocol for Ping {
        fn side(&self) -> Side {
            Side::Served
        }

        fn request(&self, prefix: &[u8], _opts: &Options) -> Option<RequestHead> {
            let line = prefix.strip_prefix(b"PING ")?.split(|&b| b == b'\n').next()?;
            Some(RequestHead { method: "PING".into(), target: String::from_utf8_lossy(line).into_owned() })
        }

        fn response(&self, prefix: &[u8]) -> Option<ResponseHead> {
            let rest = prefix.strip_prefix(b"PONG ")?;
            let end = rest.iter().position(|&b| b == b'\n')?;
            let mut words = std::str::from_utf8(&rest[..end]).ok()?.split(' ');
            let status = words.next()?.parse().ok()?;
            let len = words.next()?.parse().ok()?;
            Some(ResponseHead { status, head_len: Some(5 + end as u64 + 1), body: BodyLen::Length(len) })
        }
    }
}

#[test]
fn a_protocol_is_one_impl_of_the_trait() {
    use introspect_common::kind;

    use crate::{
        event::decode::{Decoder, tests::first_data},
        proto::{Options, Protocols},
    };

    let decoder = Decoder::new(Protocols::with(vec![Box::new(ping::Ping)], Options::default()));
    let raw = [
        first_data(kind::READ, 0, 11, 1_000, 7, 900, b"PING /health\n"),
        first_data(kind::WRITE, 0, 11, 3_000, 7, 0, b"PONG 204 0\n"),
        first_data(kind::READ, 0, 11, 4_000, 7, 0, b"PING /slow\n"),
        first_data(kind::WRITE, 0, 11, 9_000, 7, 0, b"PONG 503 4\nbusy"),
        // HTTP is not among this run's protocols: a connection speaking it is not measured.
        first_data(kind::READ, 0, 12, 10_000, 8, 0, b"GET / HTTP/1.1\r\n\r\n"),
    ];
    let events: Vec<Event> = raw.iter().map(|r| decoder.decode(r).expect("decodes")).collect();
    let (out, a) = run(&events);
    let got: Vec<_> = out.iter().map(|r| (r.method.as_str(), r.path.as_str(), r.status, r.start_ns, r.end_ns, r.end)).collect();
    assert_eq!(
        got,
        vec![("PING", "/health", Some(204), 900, 3_000, EndReason::Complete), ("PING", "/slow", Some(503), 4_000, 9_000, EndReason::Complete)]
    );
    assert_eq!(a.stats().non_http_phases, 1);
}

#[test]
fn a_process_that_forwards_to_a_watched_listener_is_a_hop_not_a_second_request() {
    // Process T (a router) accepts on the public port and connects to the workers' socket on
    // loopback port 43989, which a watched process listens on: its request is the worker's.
    let mut a = Assembler::new(1_000);
    a.set_listeners(&BTreeSet::from([8000, 43989]), &BTreeSet::from(["/run/app.sock".to_string()]));
    let mut out = Vec::new();
    for e in [
        accept(7, 1_000),
        req(101, 7, 2_000, None, "GET", "/a"),
        Event::Connect { hdr: h(101, 2_100), fd: 9, peer: Some("127.0.0.1:43989".into()) },
        resp(101, 7, 3_000, 200, 100, BodyLen::Length(0), 100),
    ] {
        a.observe(&e, &mut out);
    }
    assert!(out.is_empty(), "{out:?}");
    assert_eq!((a.stats().proxied, a.stats().requests), (1, 0));
    // The same port on another host, or an unwatched local one, is an ordinary call.
    let mut b = Assembler::new(1_000);
    b.set_listeners(&BTreeSet::from([8000]), &BTreeSet::new());
    let mut out = Vec::new();
    for e in [
        accept(7, 1_000),
        req(101, 7, 2_000, None, "GET", "/a"),
        Event::Connect { hdr: h(101, 2_100), fd: 9, peer: Some("10.0.0.7:8000".into()) },
        Event::Connect { hdr: h(101, 2_200), fd: 10, peer: Some("127.0.0.1:5432".into()) },
        resp(101, 7, 3_000, 200, 100, BodyLen::Length(0), 100),
    ] {
        b.observe(&e, &mut out);
    }
    assert_eq!((out.len(), b.stats().proxied), (1, 0));
}
