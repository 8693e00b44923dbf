//! Connections of watched processes: accepted ones (the requests they serve) and the ones they
//! connect themselves (their calls to databases, caches, APIs), and their close.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, bpf_probe_read_user_buf},
    macros::tracepoint,
    programs::TracePointContext,
};
use introspect_common::{
    AcceptEvent, CloseEvent, ConnKey, ConnState, ConnectEvent, PeerKey, SOCKADDR_MAX, SysCtx, UNIX_PATH_MAX, UNIX_REFUSED, UnixConnectEvent, counter,
    kind, phase, role, wire,
};

use crate::{
    emit::{SUBMIT_FLAGS, header, send},
    maps::{CONNS, EVENTS, Pending, UNIX_KEY, UNIX_LISTENERS, buf_kind, count, is_tracked, set_thread_bits, thread, thread_bits},
    syscall::{AF_INET, AF_INET6, AF_UNIX, arg, now, nr, recall, remember, ret},
};

/// Starts tracking a connection on `key`, over the entry of the fd's previous one if any.
#[inline(always)]
fn track(key: ConnKey, state: ConnState) {
    match CONNS.get_ptr_mut(key) {
        // The entry of this fd's previous connection (see `phase::CLOSED`).
        // SAFETY: map value pointer from a successful lookup; the fd is this process's.
        Some(slot) => unsafe { *slot = state },
        None => {
            if CONNS.insert(key, state, 0).is_err() {
                count(counter::MAP_FULL);
            }
        }
    }
}

/// The fd of a tracked connection is closed (by close, or by dup2/dup3 over it) in the context
/// of thread `tid`.
#[inline(always)]
pub fn closed(key: ConnKey, tid: u32) {
    let Some(conn) = CONNS.get_ptr_mut(key) else { return };
    // SAFETY: map value pointer from a successful lookup.
    unsafe {
        if (*conn).phase == phase::CLOSED {
            return;
        }
        (*conn).phase = phase::CLOSED;
        // The thread is done with this connection's request. (Closing one of its own
        // connections, a database's with Django's default CONN_MAX_AGE = 0, ends nothing.)
        if (*conn).role == role::SERVED {
            set_thread_bits(tid, 0, thread::SERVING);
        }
    }
}

// ---- accept ------------------------------------------------------------------------------------

#[tracepoint]
pub fn syscalls_enter_accept(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_tracked((pid_tgid >> 32) as u32) {
        return 0;
    }
    let fd = arg(&ctx, 0) as i32;
    let pending = Pending {
        kind: kind::ACCEPT,
        buf_kind: buf_kind::PLAIN,
        first: 0,
        role: role::SERVED,
        also_syscall: 0,
        _pad: [0; 2],
        fd,
        buf: arg(&ctx, 1),
        enter_ts: now(),
        sys: SysCtx { nr: nr(&ctx), fd, arg: 0 },
    };
    remember(pid_tgid as u32, pending);
    0
}

#[tracepoint]
pub fn syscalls_exit_accept(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(p) = recall(pid_tgid as u32) else { return 0 };
    if p.kind != kind::ACCEPT {
        return 0;
    }
    let fd = ret(&ctx);
    if fd < 0 {
        return 0;
    }
    let (family, peer) = read_sockaddr(p.buf);
    let state = ConnState {
        peer,
        phase: phase::IDLE,
        has_peer: (family == AF_INET || family == AF_INET6) as u8,
        role: role::SERVED,
        wire: wire::UNKNOWN,
        linked: 0,
        _pad: [0; 3],
    };
    track(ConnKey { tgid: (pid_tgid >> 32) as u32, fd: fd as i32 }, state);
    send(AcceptEvent { hdr: header(kind::ACCEPT, 0, pid_tgid), fd: fd as i32, listen_fd: p.fd, family, _pad: [0; 6], peer, enter_ts: p.enter_ts });
    0
}

/// Reads the peer address `accept` wrote into the caller's buffer. IPv4 is stored IPv4-mapped.
/// (Parsed here because tcp_probe's arrivals are joined to the connection by this key.)
#[inline(always)]
fn read_sockaddr(addr: u64) -> (u16, PeerKey) {
    let mut peer = PeerKey::default();
    if addr == 0 {
        return (0, peer);
    }
    let base = addr as *const u8;
    // The first 16 bytes in one read: a sockaddr_in whole, or the start of a sockaddr_in6 (the
    // caller's buffer may be just a sockaddr_in, so no more is read unless the family says so).
    // SAFETY: user memory, read with the fault-tolerant helper.
    let Ok(head) = (unsafe { bpf_probe_read_user(base as *const [u8; 16]) }) else { return (0, peer) };
    let family = u16::from_ne_bytes([head[0], head[1]]);
    // sin_port / sin6_port: big-endian u16 at offset 2 in both layouts.
    peer.port = u16::from_be_bytes([head[2], head[3]]);
    match family {
        AF_INET => {
            peer.addr[10] = 0xff;
            peer.addr[11] = 0xff;
            peer.addr[12..16].copy_from_slice(&head[4..8]);
        }
        AF_INET6 => {
            // SAFETY: as above.
            peer.addr = unsafe { bpf_probe_read_user(base.wrapping_add(8) as *const [u8; 16]) }.unwrap_or([0; 16]);
        }
        AF_UNIX => peer.port = 0,
        _ => {}
    }
    (family, peer)
}

// ---- connect -----------------------------------------------------------------------------------

/// connect(fd, uservaddr, addrlen): reported at entry with the address as passed (so a wait
/// inside the connect, or right after a non-blocking one, already knows its peer), and the socket
/// marked as an outbound connection, whose requests and responses the data programs follow.
#[tracepoint]
pub fn syscalls_enter_connect(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    if !is_tracked(tgid) {
        // Any process (nginx, a client) connecting to a watched Unix listener: the connection's
        // arrival in its backlog.
        unix_arrival(tid, arg(&ctx, 1), arg(&ctx, 2), &ctx);
        return 0;
    }
    let fd = arg(&ctx, 0) as i32;
    let family = emit_connect(pid_tgid, fd, arg(&ctx, 1), arg(&ctx, 2));
    if family == AF_INET || family == AF_INET6 || family == AF_UNIX {
        let state = ConnState {
            peer: PeerKey::default(),
            phase: phase::IDLE,
            has_peer: 0,
            role: role::OUTBOUND,
            wire: wire::UNKNOWN,
            linked: 0,
            _pad: [0; 3],
        };
        track(ConnKey { tgid, fd }, state);
    }
    if thread_bits(tid) & thread::SERVING != 0 {
        // A wait of the request's own (a slow or refused connection).
        remember(tid, Pending::syscall(SysCtx { nr: nr(&ctx), fd, arg: 0 }, now()));
    }
    0
}

/// Remembers a connect to a watched Unix listener, reported at its return if it succeeded
/// ([`exit_unix_connect`]). Every connect of the host comes here: a 2-byte read of the family
/// drops the others; a Unix one costs a bounded copy of its path and one hash lookup.
#[inline(always)]
fn unix_arrival(tid: u32, addr: u64, len: u64, ctx: &TracePointContext) {
    // SAFETY: user memory, fault-tolerant read.
    if unsafe { bpf_probe_read_user(addr as *const u16) }.unwrap_or(0) != AF_UNIX || len <= 2 {
        return;
    }
    let Some(key) = UNIX_KEY.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's scratch slot, used only within this program run.
    let key = unsafe { &mut *key };
    // The path as passed: up to 108 bytes after the family; then zeroed past its end (after
    // the first NUL of a filesystem path, past the address length of an abstract name).
    // SAFETY: user memory, fault-tolerant read.
    if unsafe { bpf_probe_read_user_buf((addr + 2) as *const u8, &mut key.bytes) }.is_err() {
        return;
    }
    let n = (len - 2) as usize;
    let abstract_name = key.bytes[0] == 0;
    let mut ended = false;
    for i in 0..UNIX_PATH_MAX {
        if i >= n || (!abstract_name && key.bytes[i] == 0) {
            ended = true;
        }
        if ended {
            key.bytes[i] = 0;
        }
    }
    // SAFETY: value read from a successful lookup.
    let Some(listener) = (unsafe { UNIX_LISTENERS.get(key) }).copied() else { return };
    let sys = SysCtx { nr: nr(ctx), fd: arg(ctx, 0) as i32, arg: u64::from(listener) };
    remember(tid, Pending { kind: kind::UNIX_CONNECT, ..Pending::syscall(sys, now()) });
}

/// A non-blocking connect to a Unix listener whose backlog is full (nginx's "(11: Resource
/// temporarily unavailable) while connecting to upstream").
const EAGAIN: i64 = -11;

/// The return of a remembered connect to a watched Unix listener: in its backlog if it
/// succeeded, refused if the backlog was full.
#[inline(always)]
pub fn exit_unix_connect(p: &Pending, ret: i64, pid_tgid: u64) {
    let flags = match ret {
        0 => 0,
        EAGAIN => UNIX_REFUSED,
        _ => return,
    };
    send(UnixConnectEvent { hdr: header(kind::UNIX_CONNECT, flags, pid_tgid), listener: p.sys.arg as u32, _pad: 0, enter_ts: p.enter_ts });
}

/// Emits the connect with a bounded copy of its address; returns the address family.
#[inline(always)]
fn emit_connect(pid_tgid: u64, fd: i32, addr: u64, len: u64) -> u16 {
    let Some(mut entry) = EVENTS.reserve::<ConnectEvent>(0) else {
        count(counter::RINGBUF_FULL);
        // SAFETY: user memory, fault-tolerant read.
        return unsafe { bpf_probe_read_user(addr as *const u16) }.unwrap_or(0);
    };
    let ev = entry.as_mut_ptr();
    let mut family = 0;
    // SAFETY: `ev` points at reserved ring-buffer memory of the right size; userspace reads
    // `addr` only up to `addr_len`, and every other field is written before submit.
    unsafe {
        (*ev).hdr = header(kind::CONNECT, 0, pid_tgid);
        (*ev).fd = fd;
        (*ev).addr_len = 0;
        let n = if len > SOCKADDR_MAX as u64 { SOCKADDR_MAX } else { len as usize };
        if n >= 2
            && let Some(dst) = (*ev).addr.get_mut(..n)
        {
            if bpf_probe_read_user_buf(addr as *const u8, dst).is_ok() {
                (*ev).addr_len = n as u32;
                family = u16::from_ne_bytes([(*ev).addr[0], (*ev).addr[1]]);
            } else {
                count(counter::READ_FAILED);
            }
        }
    }
    entry.submit(SUBMIT_FLAGS);
    family
}

// ---- close -------------------------------------------------------------------------------------

/// Every close of a watched process is reported: userspace forgets what the fd was.
#[tracepoint]
pub fn syscalls_enter_close(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_tracked(tgid) {
        return 0;
    }
    let fd = arg(&ctx, 0) as i32;
    closed(ConnKey { tgid, fd }, pid_tgid as u32);
    send(CloseEvent { hdr: header(kind::CLOSE, 0, pid_tgid), fd, _pad: 0 });
    0
}
