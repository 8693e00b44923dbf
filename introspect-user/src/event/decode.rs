//! Decode: raw ring-buffer records into typed events.
//!
//! The heads of requests and responses are parsed here by the protocol parsers, so no raw bytes
//! travel further down the pipeline (or into recordings): only method, target (query stripped
//! unless asked for), status and framing survive. Socket addresses are parsed here too.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use introspect_common::{
    AcceptEvent, CloseEvent, ConnectEvent, DataEvent, DataPayloadEvent, DbLinkEvent, DbSwitchEvent, EventHeader, FdEvent, OffCpuEvent, OomEvent,
    PAYLOAD_MAX, PREEMPT_EVERY, PY_FRAMES_MAX, PeerKey, ProcEvent, SAMPLE_EVERY, SOCKADDR_MAX, SignalEvent, StackEvent, SyscallEvent, UNIX_REFUSED,
    UnixConnectEvent, WIRE_MAX, data_flag, kind, stack_flag,
};

use super::{Dir, Event, FdOrigin, Hdr, SampleWeight, Sys, WaitFacts};
use crate::{
    kills::OomRss,
    proto::{Protocols, Side, Wire},
    stacks::RawFrame,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event of {len} bytes is shorter than its kind {kind} needs")]
    Short { kind: u16, len: usize },
    #[error("unknown event kind {0}")]
    UnknownKind(u16),
    #[error("connect to Unix listener {0}, which was never watched")]
    UnknownListener(u32),
}

const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

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

/// A `struct sockaddr` as a process passed it: `ip:port` (IPv4-mapped IPv6 as IPv4),
/// `unix:PATH` (`unix:@NAME` for the abstract namespace), `unix` for an unnamed one; `None` for
/// families without a peer (AF_UNSPEC dissolves a UDP association).
pub fn sockaddr(raw: &[u8]) -> Option<String> {
    let family = u16::from_ne_bytes([*raw.first()?, *raw.get(1)?]);
    let port = || Some(u16::from_be_bytes([*raw.get(2)?, *raw.get(3)?]));
    match family {
        AF_INET => {
            let a: [u8; 4] = raw.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), port()?).to_string())
        }
        AF_INET6 => {
            let a: [u8; 16] = raw.get(8..24)?.try_into().ok()?;
            let v6 = Ipv6Addr::from(a);
            let ip = v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4);
            Some(SocketAddr::new(ip, port()?).to_string())
        }
        AF_UNIX => {
            let path = raw.get(2..).unwrap_or_default();
            Some(match path.split_first() {
                None => "unix".to_string(),
                // Abstract: a leading NUL, then a name that is not NUL-terminated.
                Some((0, name)) if !name.is_empty() => format!("unix:@{}", String::from_utf8_lossy(name)),
                Some(_) => {
                    let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
                    if end == 0 { "unix".to_string() } else { format!("unix:{}", String::from_utf8_lossy(&path[..end])) }
                }
            })
        }
        _ => None,
    }
}

fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// Turns ring-buffer records into events, parsing heads with the run's protocols.
pub struct Decoder {
    pub protocols: Protocols,
    /// The watched Unix listeners' paths, by the id the kernel reports them with.
    pub unix_listeners: std::collections::HashMap<u32, String>,
}

impl Decoder {
    pub fn new(protocols: Protocols) -> Self {
        Self { protocols, unix_listeners: Default::default() }
    }

    /// Decodes one ring-buffer record.
    pub fn decode(&self, buf: &[u8]) -> Result<Event, DecodeError> {
        let h: EventHeader = read(buf, 0)?;
        Ok(match h.kind {
            kind::ACCEPT => {
                let e: AcceptEvent = read(buf, h.kind)?;
                Event::Accept { hdr: hdr(&e.hdr), fd: e.fd, listen_fd: e.listen_fd, peer: peer_addr(e.family, &e.peer), enter_ts: e.enter_ts }
            }
            kind::READ | kind::WRITE => self.data(buf, &h)?,
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
                Event::Syscall { hdr: hdr(&e.hdr), sys: Sys { nr: e.sys.nr, fd: e.sys.fd, arg: e.sys.arg }, enter_ts: e.enter_ts, ret: e.ret }
            }
            kind::STACK => {
                let e: StackEvent = read(buf, h.kind)?;
                let n = (e.nframes as usize).min(PY_FRAMES_MAX);
                Event::Stack {
                    hdr: hdr(&e.hdr),
                    on_cpu: e.hdr.flags & stack_flag::ON_CPU != 0,
                    at_signal: e.hdr.flags & stack_flag::SIGNAL != 0,
                    kstack: e.kstack,
                    ustack: e.ustack,
                    raw: e.frames[..n].iter().map(|f| RawFrame { code: f.code, lasti: f.lasti }).collect(),
                    frames: Vec::new(),
                    sampled: (e.hdr.flags & stack_flag::SAMPLED != 0).then(|| SampleWeight {
                        wait_ns: (e.hdr.flags & stack_flag::AT_EXIT != 0).then_some(e.wait_us as u64 * 1000),
                        // A sampled wait at its syscall's exit already carries its weight.
                        every: match e.hdr.flags & (stack_flag::SCALED | stack_flag::AT_EXIT | stack_flag::PREEMPTED) {
                            f if f == stack_flag::SCALED => SAMPLE_EVERY as u32,
                            f if f == stack_flag::SCALED | stack_flag::PREEMPTED => PREEMPT_EVERY as u32,
                            _ => 1,
                        },
                    }),
                }
            }
            kind::CLOSE => {
                let e: CloseEvent = read(buf, h.kind)?;
                Event::Close { hdr: hdr(&e.hdr), fd: e.fd }
            }
            kind::CONNECT => {
                let e: ConnectEvent = read(buf, h.kind)?;
                let len = (e.addr_len as usize).min(SOCKADDR_MAX);
                Event::Connect { hdr: hdr(&e.hdr), fd: e.fd, peer: sockaddr(&e.addr[..len]) }
            }
            kind::SOCKET | kind::OPEN | kind::DUP => {
                let e: FdEvent = read(buf, h.kind)?;
                let origin = match h.kind {
                    kind::SOCKET => FdOrigin::Socket { family: e.from as u16 },
                    kind::OPEN => FdOrigin::Open,
                    _ => FdOrigin::Dup { from: e.from },
                };
                Event::Fd { hdr: hdr(&e.hdr), fd: e.fd, origin }
            }
            kind::FORK => {
                let e: ProcEvent = read(buf, h.kind)?;
                Event::Fork { hdr: hdr(&e.hdr), child: e.pid }
            }
            kind::EXIT => {
                let e: ProcEvent = read(buf, h.kind)?;
                Event::Exit { hdr: hdr(&e.hdr), pid: e.pid }
            }
            kind::EXIT_CALL => {
                let e: ProcEvent = read(buf, h.kind)?;
                Event::ExitCall { hdr: hdr(&e.hdr), code: e.code }
            }
            kind::DB_SWITCH => {
                let e: DbSwitchEvent = read(buf, h.kind)?;
                Event::DbSwitch {
                    hdr: hdr(&e.hdr),
                    out_ts: e.out_ts,
                    wake_ts: e.wake_ts,
                    wait_event: e.wait_event,
                    state: e.state,
                    waker: (e.waker_tid != 0).then_some(e.waker_tid),
                    waker_is_backend: e.waker_is_backend != 0,
                }
            }
            kind::UNIX_CONNECT => {
                let e: UnixConnectEvent = read(buf, h.kind)?;
                let path = self.unix_listeners.get(&e.listener).cloned().ok_or(DecodeError::UnknownListener(e.listener))?;
                Event::UnixConnect { hdr: hdr(&e.hdr), path, enter_ts: e.enter_ts, refused: e.hdr.flags & UNIX_REFUSED != 0 }
            }
            kind::DB_LINK => {
                let e: DbLinkEvent = read(buf, h.kind)?;
                Event::DbLink { hdr: hdr(&e.hdr), fd: e.fd, backend: e.backend }
            }
            kind::SIGNAL => {
                let e: SignalEvent = read(buf, h.kind)?;
                Event::Signal { hdr: hdr(&e.hdr), target: e.target, sig: e.sig, code: e.code, group: e.group, sender_comm: comm(&e.comm) }
            }
            kind::OOM => {
                let e: OomEvent = read(buf, h.kind)?;
                let rss = OomRss { total_vm_kb: e.total_vm_kb, anon_rss_kb: e.anon_rss_kb, file_rss_kb: e.file_rss_kb, shmem_rss_kb: e.shmem_rss_kb };
                Event::Oom { hdr: hdr(&e.hdr), pid: e.pid, rss }
            }
            k => return Err(DecodeError::UnknownKind(k)),
        })
    }

    fn data(&self, buf: &[u8], h: &EventHeader) -> Result<Event, DecodeError> {
        let d: DataEvent = read(buf, h.kind)?;
        let dir = if h.kind == kind::READ { Dir::Read } else { Dir::Write };
        let outbound = h.flags & data_flag::OUTBOUND != 0;
        // A database connection's bytes: parsed into what was asked and answered; the bytes go no
        // further.
        let wire = self.protocols.database(h.flags).map(|db| {
            let from = size_of::<DataEvent>();
            let payload = buf.get(from..from + (d.payload_len as usize).min(WIRE_MAX)).unwrap_or(&buf[from.min(buf.len())..]);
            let total = d.ret.max(0) as u64;
            match dir {
                Dir::Write => Wire::Asks(db.asks(payload, total, &self.protocols.opts)),
                Dir::Read => Wire::Answer(db.answer(payload, (d.tail_at != 0).then_some(d.tail_at as usize), total)),
            }
        });
        if wire.is_some() {
            return Ok(Event::Data {
                hdr: hdr(&d.hdr),
                dir,
                fd: d.fd,
                bytes: d.ret.max(0) as u64,
                enter_ts: d.enter_ts,
                arrival_ts: None,
                head: None,
                comm: None,
                nr: d.nr,
                outbound,
                wire,
            });
        }
        let (head, comm) = if h.flags & data_flag::FIRST != 0 {
            let p: DataPayloadEvent = read(buf, h.kind)?;
            let len = (p.data.payload_len as usize).min(PAYLOAD_MAX);
            let side = if outbound { Side::Outbound } else { Side::Served };
            // Served: reads are requests. Outbound: writes are.
            let request = (dir == Dir::Read) != outbound;
            (Some(self.protocols.head(side, request, &p.payload[..len])), Some(comm(&p.comm)))
        } else {
            (None, None)
        };
        Ok(Event::Data {
            hdr: hdr(&d.hdr),
            dir,
            fd: d.fd,
            bytes: d.ret.max(0) as u64,
            enter_ts: d.enter_ts,
            arrival_ts: (d.arrival_ts != 0).then_some(d.arrival_ts),
            head,
            comm,
            nr: d.nr,
            outbound,
            wire: None,
        })
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::{event::Head, proto::Options};

    pub fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a repr(C) value.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    /// The record of a first read or write carrying `head` as its payload.
    pub fn first_data(kind: u16, flags: u16, tid: u32, ts: u64, fd: i32, arrival_ts: u64, head: &[u8]) -> Vec<u8> {
        let mut payload = [0u8; PAYLOAD_MAX];
        payload[..head.len()].copy_from_slice(head);
        let mut comm = [0u8; 16];
        comm[..8].copy_from_slice(b"gunicorn");
        let ev = DataPayloadEvent {
            data: DataEvent {
                hdr: EventHeader { kind, flags: flags | data_flag::FIRST, tgid: 10, tid, _pad: 0, ts },
                fd,
                payload_len: head.len() as u32,
                ret: head.len() as i64,
                enter_ts: ts - 100,
                arrival_ts,
                nr: 45,
                tail_at: 0,
            },
            comm,
            payload,
        };
        bytes_of(&ev)
    }

    fn decoder() -> Decoder {
        Decoder::new(Protocols::standard(Options::default()))
    }

    #[test]
    fn decodes_first_read_with_head_and_drops_the_rest() {
        let raw = first_data(kind::READ, 0, 11, 500, 7, 300, b"GET /sleep/200?secret=1 HTTP/1.1\r\nCookie: session=hunter2\r\n\r\n");
        let e = decoder().decode(&raw).unwrap();
        let Event::Data { head: Some(Head::Request(r)), comm, arrival_ts, bytes, outbound, .. } = &e else { panic!("{e:?}") };
        assert_eq!((r.method.as_str(), r.target.as_str()), ("GET", "/sleep/200"));
        assert_eq!((comm.as_deref(), *arrival_ts, *bytes, *outbound), (Some("gunicorn"), Some(300), 61, false));
        // Nothing of the headers survives decoding.
        assert!(!serde_json::to_string(&e).unwrap().contains("hunter2"));
    }

    #[test]
    fn outbound_writes_are_requests_and_nothing_parses_them_yet() {
        let raw = first_data(kind::WRITE, data_flag::OUTBOUND, 11, 500, 9, 0, b"Q\x00\x00\x00\x1bSELECT pg_sleep(0.3)\x00");
        let e = decoder().decode(&raw).unwrap();
        let Event::Data { head, outbound, dir, .. } = &e else { panic!("{e:?}") };
        assert_eq!((head, *outbound, *dir), (&Some(Head::Other), true, Dir::Write));
        assert!(!serde_json::to_string(&e).unwrap().contains("pg_sleep"));
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        let d = decoder();
        assert_eq!(d.decode(&[1, 0, 0]), Err(DecodeError::Short { kind: 0, len: 3 }));
        let h = EventHeader { kind: 99, ..Default::default() };
        assert_eq!(d.decode(&bytes_of(&h)), Err(DecodeError::UnknownKind(99)));
        let h = EventHeader { kind: kind::ACCEPT, ..Default::default() };
        assert!(matches!(d.decode(&bytes_of(&h)), Err(DecodeError::Short { kind: 1, .. })));
        let h = EventHeader { kind: kind::CONNECT, ..Default::default() };
        assert!(matches!(d.decode(&bytes_of(&h)), Err(DecodeError::Short { kind: 16, .. })));
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

    #[test]
    fn connect_addresses_of_every_family() {
        let mut v4 = vec![2, 0, 0x15, 0x38, 10, 0, 0, 7];
        v4.extend([0; 8]);
        assert_eq!(sockaddr(&v4).as_deref(), Some("10.0.0.7:5432"));
        let mut v6 = vec![10, 0, 0x0c, 0xea, 0, 0, 0, 0];
        v6.extend(Ipv6Addr::LOCALHOST.octets());
        assert_eq!(sockaddr(&v6).as_deref(), Some("[::1]:3306"));
        let mut mapped = vec![10, 0, 0x1f, 0x90, 0, 0, 0, 0];
        mapped.extend(Ipv4Addr::new(192, 168, 1, 2).to_ipv6_mapped().octets());
        assert_eq!(sockaddr(&mapped).as_deref(), Some("192.168.1.2:8080"));
        let mut unix = vec![1, 0];
        unix.extend(b"/var/run/postgresql/.s.PGSQL.5432\0garbage");
        assert_eq!(sockaddr(&unix).as_deref(), Some("unix:/var/run/postgresql/.s.PGSQL.5432"));
        assert_eq!(sockaddr(&[1, 0, 0, b'n', b'a', b'm', b'e']).as_deref(), Some("unix:@name"));
        assert_eq!(sockaddr(&[1, 0]).as_deref(), Some("unix"));
        assert_eq!(sockaddr(&[0, 0, 0, 0]), None);
        assert_eq!(sockaddr(&[2, 0, 1]), None, "a truncated address names no peer");
        // The kernel event: a connect carries its address as passed.
        let mut e = ConnectEvent {
            hdr: EventHeader { kind: kind::CONNECT, tgid: 10, tid: 11, ts: 5, ..Default::default() },
            fd: 9,
            addr_len: 16,
            addr: [0; SOCKADDR_MAX],
        };
        e.addr[..16].copy_from_slice(&v4);
        assert_eq!(
            decoder().decode(&bytes_of(&e)).unwrap(),
            Event::Connect { hdr: Hdr { tgid: 10, tid: 11, ts: 5 }, fd: 9, peer: Some("10.0.0.7:5432".into()) }
        );
    }
}
