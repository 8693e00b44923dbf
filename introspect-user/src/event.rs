//! Decode: raw ring-buffer records into typed events.
//!
//! The request and response heads are parsed here, so no raw bytes travel further down the
//! pipeline (or into recordings): only method, target (query stripped unless asked for), status
//! and framing survive.
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use introspect_common::{
    AcceptEvent, CloseEvent, DataEvent, DataPayloadEvent, EventHeader, NO_SYSCALL, OffCpuEvent,
    PAYLOAD_MAX, PY_FRAMES_MAX, PeerKey, ProcEvent, StackEvent, SysCtx, SyscallEvent, data_flag, kind,
    stack_flag,
};
use serde::{Deserialize, Serialize};

use crate::{
    http::{self, RequestHead, ResponseHead},
    pystack::{Frame, RawFrame},
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event of {len} bytes is shorter than its kind {kind} needs")]
    Short { kind: u16, len: usize },
    #[error("unknown event kind {0}")]
    UnknownKind(u16),
}

/// Identity and time of every event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hdr {
    pub tgid: u32,
    pub tid: u32,
    /// CLOCK_MONOTONIC ns.
    pub ts: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dir {
    Read,
    Write,
}

/// What the head of a phase turned out to be.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Head {
    Request(RequestHead),
    Response(ResponseHead),
    /// Bytes that are not an HTTP/1 head (a body, another protocol), or none could be read.
    Other,
}

/// A hooked syscall: number (x86_64), the fd it concerns (-1 if none) and its telling argument
/// (futex address, number of polled fds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sys {
    pub nr: u32,
    pub fd: i32,
    pub arg: u64,
}

impl Sys {
    fn from_ctx(c: &SysCtx) -> Option<Self> {
        (c.nr != NO_SYSCALL).then_some(Sys { nr: c.nr, fd: c.fd, arg: c.arg })
    }
}

/// What an fd was when a wait on it was seen (resolved in /proc by the live agent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FdKind {
    /// A socket, with its remote endpoint when it is TCP.
    Socket { peer: Option<String> },
    File,
    Pipe,
    Other,
}

/// Facts about a wait that only the live process can tell, attached before the pipeline so that
/// recordings replay without /proc.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitFacts {
    pub fd: Option<FdKind>,
    /// The futex address lies inside the interpreter's GIL.
    pub gil: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Event {
    Accept { hdr: Hdr, fd: i32, listen_fd: i32, peer: Option<SocketAddr>, enter_ts: u64 },
    Data {
        hdr: Hdr,
        dir: Dir,
        fd: i32,
        /// Bytes moved; 0 is end of stream (reads only).
        bytes: u64,
        enter_ts: u64,
        /// First bytes of this request reached the socket (first reads only, when seen).
        arrival_ts: Option<u64>,
        /// The first read of a request or first write of a response carries its parsed head.
        head: Option<Head>,
        comm: Option<String>,
        #[serde(default)]
        nr: u32,
    },
    Close { hdr: Hdr, fd: i32 },
    /// A serving thread was off the CPU: blocked from `out_ts` to `wake_ts`, runnable until
    /// `hdr.ts`.
    OffCpu {
        hdr: Hdr,
        out_ts: u64,
        wake_ts: u64,
        /// Task state when it left: 0 preempted, 1 interruptible sleep, 2 uninterruptible (D).
        state: u32,
        sys: Option<Sys>,
        #[serde(default)]
        facts: WaitFacts,
    },
    /// A hooked syscall of a serving thread; `hdr.ts` is its return.
    Syscall { hdr: Hdr, sys: Sys, enter_ts: u64, ret: i64 },
    /// A stack of a thread serving a slow request: a CPU-clock sample (`on_cpu`), or taken as it
    /// left the CPU (`hdr.ts` is then that off-CPU interval's `out_ts`). The kernel's ids and raw
    /// Python frames are symbolized into `frames` by the live agent (and not recorded).
    Stack {
        hdr: Hdr,
        on_cpu: bool,
        #[serde(skip)]
        kstack: i32,
        #[serde(skip)]
        ustack: i32,
        #[serde(skip)]
        raw: Vec<RawFrame>,
        frames: Vec<Frame>,
    },
    /// A request on `hdr.tid` crossed the threshold and its stacks started being captured: the
    /// stack then, and since when it was off the CPU if it was. Written to recordings by the
    /// live agent, so replays reproduce stacks and profiles.
    Slow { hdr: Hdr, stack: Vec<Frame>, off_cpu_since: Option<u64> },
    Fork { hdr: Hdr, child: u32 },
    Exit { hdr: Hdr, pid: u32 },
}

impl Event {
    pub fn hdr(&self) -> &Hdr {
        match self {
            Event::Accept { hdr, .. }
            | Event::Data { hdr, .. }
            | Event::Close { hdr, .. }
            | Event::OffCpu { hdr, .. }
            | Event::Syscall { hdr, .. }
            | Event::Stack { hdr, .. }
            | Event::Slow { hdr, .. }
            | Event::Fork { hdr, .. }
            | Event::Exit { hdr, .. } => hdr,
        }
    }
}

fn read<T: Copy>(buf: &[u8], kind: u16) -> Result<T, DecodeError> {
    if buf.len() < size_of::<T>() {
        return Err(DecodeError::Short { kind, len: buf.len() });
    }
    // SAFETY: length checked; T is a plain repr(C) type valid for any bit pattern.
    Ok(unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<T>()) })
}

fn hdr(h: &EventHeader) -> Hdr {
    Hdr { tgid: h.tgid, tid: h.tid, ts: h.ts }
}

pub fn peer_addr(family: u16, peer: &PeerKey) -> Option<SocketAddr> {
    const AF_INET: u16 = 2;
    const AF_INET6: u16 = 10;
    if family != AF_INET && family != AF_INET6 {
        return None;
    }
    let v6 = Ipv6Addr::from(peer.addr);
    let ip = match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    };
    Some(SocketAddr::new(ip, peer.port))
}

fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// Decodes one ring-buffer record.
pub fn decode(buf: &[u8], keep_query: bool) -> Result<Event, DecodeError> {
    let h: EventHeader = read(buf, 0)?;
    Ok(match h.kind {
        kind::ACCEPT => {
            let e: AcceptEvent = read(buf, h.kind)?;
            Event::Accept {
                hdr: hdr(&e.hdr),
                fd: e.fd,
                listen_fd: e.listen_fd,
                peer: peer_addr(e.family, &e.peer),
                enter_ts: e.enter_ts,
            }
        }
        kind::READ | kind::WRITE => {
            let d: DataEvent = read(buf, h.kind)?;
            let dir = if h.kind == kind::READ { Dir::Read } else { Dir::Write };
            let (head, comm) = if h.flags & data_flag::FIRST != 0 {
                let p: DataPayloadEvent = read(buf, h.kind)?;
                let len = (p.data.payload_len as usize).min(PAYLOAD_MAX);
                let bytes = &p.payload[..len];
                let head = match dir {
                    _ if len == 0 => Head::Other,
                    Dir::Read => http::parse_request(bytes, keep_query).map_or(Head::Other, Head::Request),
                    Dir::Write => http::parse_response(bytes).map_or(Head::Other, Head::Response),
                };
                (Some(head), Some(self::comm(&p.comm)))
            } else {
                (None, None)
            };
            Event::Data {
                hdr: hdr(&d.hdr),
                dir,
                fd: d.fd,
                bytes: d.ret.max(0) as u64,
                enter_ts: d.enter_ts,
                arrival_ts: (d.arrival_ts != 0).then_some(d.arrival_ts),
                head,
                comm,
                nr: d.nr,
            }
        }
        kind::OFF_CPU => {
            let e: OffCpuEvent = read(buf, h.kind)?;
            Event::OffCpu {
                hdr: hdr(&e.hdr),
                out_ts: e.out_ts,
                wake_ts: e.wake_ts,
                state: e.state,
                sys: Sys::from_ctx(&e.sys),
                facts: WaitFacts::default(),
            }
        }
        kind::SYSCALL => {
            let e: SyscallEvent = read(buf, h.kind)?;
            Event::Syscall {
                hdr: hdr(&e.hdr),
                sys: Sys { nr: e.sys.nr, fd: e.sys.fd, arg: e.sys.arg },
                enter_ts: e.enter_ts,
                ret: e.ret,
            }
        }
        kind::STACK => {
            let e: StackEvent = read(buf, h.kind)?;
            let n = (e.nframes as usize).min(PY_FRAMES_MAX);
            Event::Stack {
                hdr: hdr(&e.hdr),
                on_cpu: e.hdr.flags & stack_flag::ON_CPU != 0,
                kstack: e.kstack,
                ustack: e.ustack,
                raw: e.frames[..n].iter().map(|f| RawFrame { code: f.code, lasti: f.lasti }).collect(),
                frames: Vec::new(),
            }
        }
        kind::CLOSE => {
            let e: CloseEvent = read(buf, h.kind)?;
            Event::Close { hdr: hdr(&e.hdr), fd: e.fd }
        }
        kind::FORK => {
            let e: ProcEvent = read(buf, h.kind)?;
            Event::Fork { hdr: hdr(&e.hdr), child: e.pid }
        }
        kind::EXIT => {
            let e: ProcEvent = read(buf, h.kind)?;
            Event::Exit { hdr: hdr(&e.hdr), pid: e.pid }
        }
        k => return Err(DecodeError::UnknownKind(k)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a repr(C) value.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    #[test]
    fn decodes_first_read_with_head_and_drops_the_rest() {
        let mut payload = [0u8; PAYLOAD_MAX];
        let req = b"GET /sleep/200?secret=1 HTTP/1.1\r\nCookie: session=hunter2\r\n\r\n";
        payload[..req.len()].copy_from_slice(req);
        let mut comm = [0u8; 16];
        comm[..8].copy_from_slice(b"gunicorn");
        let ev = DataPayloadEvent {
            data: DataEvent {
                hdr: EventHeader { kind: kind::READ, flags: data_flag::FIRST, tgid: 10, tid: 11, _pad: 0, ts: 500 },
                fd: 7,
                payload_len: req.len() as u32,
                ret: req.len() as i64,
                enter_ts: 400,
                arrival_ts: 300,
                nr: 45,
                _pad: 0,
            },
            comm,
            payload,
        };
        let e = decode(&bytes_of(&ev), false).unwrap();
        let Event::Data { head: Some(Head::Request(r)), comm, arrival_ts, bytes, .. } = &e else { panic!("{e:?}") };
        assert_eq!((r.method.as_str(), r.target.as_str()), ("GET", "/sleep/200"));
        assert_eq!((comm.as_deref(), *arrival_ts, *bytes), (Some("gunicorn"), Some(300), req.len() as u64));
        // Nothing of the headers survives decoding.
        assert!(!serde_json::to_string(&e).unwrap().contains("hunter2"));
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        assert_eq!(decode(&[1, 0, 0], false), Err(DecodeError::Short { kind: 0, len: 3 }));
        let h = EventHeader { kind: 99, ..Default::default() };
        assert_eq!(decode(&bytes_of(&h), false), Err(DecodeError::UnknownKind(99)));
        let h = EventHeader { kind: kind::ACCEPT, ..Default::default() };
        assert!(matches!(decode(&bytes_of(&h), false), Err(DecodeError::Short { kind: 1, .. })));
    }

    #[test]
    fn ipv4_mapped_peers_print_as_ipv4() {
        let mut p = PeerKey { port: 5432, ..Default::default() };
        p.addr[10] = 0xff;
        p.addr[11] = 0xff;
        p.addr[12..].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(peer_addr(2, &p).unwrap().to_string(), "127.0.0.1:5432");
        assert_eq!(peer_addr(1, &p), None);
    }
}
