//! The accept/read/write/close syscall family on tracked connections.
//!
//! Enter programs decide whether a syscall concerns a tracked connection and remember its
//! buffer; exit programs see how many bytes moved and emit one event. The head of a request (or
//! response) is copied only on the first read (or write) of a phase, so a request costs two
//! bounded copies however many syscalls it takes.
//!
//! Syscall tracepoint records have a layout fixed by the syscall ABI: arguments at 16 + 8*i,
//! the return value at 16 (see /sys/kernel/tracing/events/syscalls/*/format; userspace checks it
//! before loading).
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user, bpf_probe_read_user_buf},
    macros::tracepoint,
    programs::TracePointContext,
};
use introspect_common::{
    AcceptEvent, CloseEvent, ConnKey, ConnState, DataEvent, DataPayloadEvent, PAYLOAD_MAX, PeerKey,
    CLIENT_CONN, SysCtx, SyscallEvent, counter, data_flag, kind, phase,
};

use crate::{
    field,
    emit::{SUBMIT_FLAGS, header},
    maps::{ARRIVALS, CONNS, EVENTS, PENDING, Pending, buf_kind, count, is_tracked, set_thread_bits, thread, thread_bits, upsert},
};

// Syscalls whose arguments need decoding.
use introspect_common::nr::{FUTEX as NR_FUTEX, POLL as NR_POLL, PPOLL as NR_PPOLL, PSELECT6 as NR_PSELECT6, SELECT as NR_SELECT};

const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

#[inline(always)]
fn arg(ctx: &TracePointContext, i: usize) -> u64 {
    // The record has six u64 arguments after its 16-byte header.
    field::fixed::<u64>(ctx, 16 + 8 * i)
}

/// An argument some of the program's syscalls may not have: the kernel refuses to attach a
/// program whose context loads reach past a record's end, so these go through the helper.
#[inline(always)]
fn arg_any(ctx: &TracePointContext, i: usize) -> u64 {
    // SAFETY: reads the record within its buffer; a short record reads a neighbour's bytes,
    // which only syscalls that do not have the argument would see (and they ignore it).
    unsafe { ctx.read_at::<u64>(16 + 8 * i) }.unwrap_or(0)
}

#[inline(always)]
fn nr(ctx: &TracePointContext) -> u32 {
    // sys_enter records carry `int __syscall_nr` at offset 8.
    field::fixed::<i32>(ctx, 8) as u32
}

#[inline(always)]
fn ret(ctx: &TracePointContext) -> i64 {
    // sys_exit records carry `long ret` at offset 16.
    field::fixed::<i64>(ctx, 16)
}

/// Remembers a syscall of interest until its exit.
#[inline(always)]
fn remember(tid: u32, pending: Pending) {
    upsert(&PENDING, tid, pending);
    set_thread_bits(tid, thread::PENDING, 0);
}

/// The syscall this thread is returning from, if it was remembered; forgets it.
#[inline(always)]
fn recall(tid: u32) -> Option<Pending> {
    if thread_bits(tid) & thread::PENDING == 0 {
        return None;
    }
    set_thread_bits(tid, 0, thread::PENDING);
    // SAFETY: the entry belongs to this thread, which is here and not in another syscall.
    PENDING.get_ptr(tid).map(|p| unsafe { *p })
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
        fd,
        buf: arg(&ctx, 1),
        // SAFETY: no preconditions.
        enter_ts: unsafe { bpf_ktime_get_ns() },
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
        _pad: [0; 6],
    };
    let key = ConnKey { tgid: (pid_tgid >> 32) as u32, fd: fd as i32 };
    match CONNS.get_ptr_mut(&key) {
        // The entry of this fd's previous connection (see `phase::CLOSED`).
        // SAFETY: map value pointer from a successful lookup; the fd is this process's.
        Some(slot) => unsafe { *slot = state },
        None => {
            if CONNS.insert(&key, &state, 0).is_err() {
                count(counter::MAP_FULL);
            }
        }
    }
    let Some(mut entry) = EVENTS.reserve::<AcceptEvent>(0) else {
        count(counter::RINGBUF_FULL);
        return 0;
    };
    entry.write(AcceptEvent {
        hdr: header(kind::ACCEPT, 0, pid_tgid),
        fd: fd as i32,
        listen_fd: p.fd,
        family,
        _pad: [0; 6],
        peer,
        enter_ts: p.enter_ts,
    });
    entry.submit(SUBMIT_FLAGS);
    0
}

/// Reads the peer address `accept` wrote into the caller's buffer. IPv4 is stored IPv4-mapped.
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
            peer.addr = unsafe { bpf_probe_read_user(base.wrapping_add(8) as *const [u8; 16]) }.unwrap_or([0; 16]);
        }
        AF_UNIX => peer.port = 0,
        _ => {}
    }
    (family, peer)
}

// ---- read / write: enter -----------------------------------------------------------------------

/// Common enter path: is `fd` a tracked connection? Remember the buffer, and whether this syscall
/// opens a new phase (the first read of a request, the first write of a response). Reads and
/// writes of a serving thread on other fds (files, the database's socket) are remembered too:
/// a wait inside them is disk or network time of the request.
#[inline(always)]
fn data_enter(ctx: &TracePointContext, buf_kind: u8, dir: u16) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_tracked(tgid) {
        return 0;
    }
    let tid = pid_tgid as u32;
    let fd = arg(ctx, 0) as i32;
    let sys = SysCtx { nr: nr(ctx), fd, arg: 0 };
    // SAFETY: no preconditions.
    let now = || unsafe { bpf_ktime_get_ns() };
    // SAFETY: map value pointer from a successful lookup.
    let conn_phase = CONNS.get_ptr(ConnKey { tgid, fd }).map(|c| unsafe { (*c).phase }).filter(|&p| p != phase::CLOSED);
    let pending = match conn_phase {
        Some(conn_phase) => {
            let want = if dir == kind::READ { phase::READING } else { phase::WRITING };
            let first = conn_phase != want;
            if first && dir == kind::READ {
                set_thread_bits(tid, thread::SERVING, 0);
            }
            let buf = if buf_kind == buf_kind::NONE { 0 } else { arg(ctx, 1) };
            let sys = SysCtx { arg: CLIENT_CONN, ..sys };
            Pending { kind: dir, buf_kind, first: first as u8, fd, buf, enter_ts: now(), sys }
        }
        None if thread_bits(tid) & thread::SERVING != 0 => {
            Pending { kind: kind::SYSCALL, buf_kind: buf_kind::NONE, first: 0, fd, buf: 0, enter_ts: now(), sys }
        }
        None => return 0,
    };
    remember(tid, pending);
    0
}

/// read(fd, buf, count), recvfrom(fd, ubuf, size, ...), pread64(fd, buf, count, pos)
#[tracepoint]
pub fn syscalls_enter_read(ctx: TracePointContext) -> u32 {
    data_enter(&ctx, buf_kind::PLAIN, kind::READ)
}

/// readv(fd, vec, vlen)
#[tracepoint]
pub fn syscalls_enter_readv(ctx: TracePointContext) -> u32 {
    data_enter(&ctx, buf_kind::IOV, kind::READ)
}

/// recvmsg(fd, msg, flags)
#[tracepoint]
pub fn syscalls_enter_recvmsg(ctx: TracePointContext) -> u32 {
    data_enter(&ctx, buf_kind::MSG, kind::READ)
}

/// write(fd, buf, count), sendto(fd, buff, len, ...), pwrite64(fd, buf, count, pos)
#[tracepoint]
pub fn syscalls_enter_write(ctx: TracePointContext) -> u32 {
    data_enter(&ctx, buf_kind::PLAIN, kind::WRITE)
}

/// writev(fd, vec, vlen)
#[tracepoint]
pub fn syscalls_enter_writev(ctx: TracePointContext) -> u32 {
    data_enter(&ctx, buf_kind::IOV, kind::WRITE)
}

/// sendmsg(fd, msg, flags)
#[tracepoint]
pub fn syscalls_enter_sendmsg(ctx: TracePointContext) -> u32 {
    data_enter(&ctx, buf_kind::MSG, kind::WRITE)
}

/// sendfile64(out_fd, in_fd, offset, count): the socket is out_fd; the data never passes through
/// user memory.
#[tracepoint]
pub fn syscalls_enter_sendfile(ctx: TracePointContext) -> u32 {
    data_enter(&ctx, buf_kind::NONE, kind::WRITE)
}

/// Syscalls a serving thread may wait in besides reads and writes: futex (locks, the GIL),
/// sleeps, poll/select/epoll (sockets with a timeout, database clients), fsync, connect, openat.
/// Only the fd or address that tells what the wait was for is kept.
#[tracepoint]
pub fn syscalls_enter_blocking(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    if thread_bits(tid) & thread::SERVING == 0 {
        return 0;
    }
    let nr = nr(&ctx);
    let a0 = arg(&ctx, 0);
    let sys = match nr {
        NR_FUTEX => SysCtx { nr, fd: -1, arg: a0 },
        NR_POLL | NR_PPOLL => {
            let nfds = arg_any(&ctx, 1);
            // struct pollfd { int fd; short events, revents; }: the first fd names the wait.
            // SAFETY: user memory, fault-tolerant read.
            let fd = if nfds > 0 { unsafe { bpf_probe_read_user(a0 as *const i32) }.unwrap_or(-1) } else { -1 };
            SysCtx { nr, fd, arg: nfds }
        }
        NR_SELECT | NR_PSELECT6 => {
            // The lowest fd set in readfds, else writefds (first 64 fds only).
            let mut fd = -1;
            for set in [arg_any(&ctx, 1), arg_any(&ctx, 2)] {
                if fd < 0 && set != 0 {
                    // SAFETY: user memory, fault-tolerant read.
                    let word = unsafe { bpf_probe_read_user(set as *const u64) }.unwrap_or(0);
                    if word != 0 {
                        fd = word.trailing_zeros() as i32;
                    }
                }
            }
            SysCtx { nr, fd, arg: a0 }
        }
        _ => SysCtx { nr, fd: a0 as i32, arg: arg_any(&ctx, 3) },
    };
    let pending = Pending {
        kind: kind::SYSCALL,
        buf_kind: buf_kind::NONE,
        first: 0,
        fd: sys.fd,
        buf: 0,
        // SAFETY: no preconditions.
        enter_ts: unsafe { bpf_ktime_get_ns() },
        sys,
    };
    remember(tid, pending);
    0
}

// ---- read / write: exit ------------------------------------------------------------------------

/// The first buffer of a pending syscall: (address, length limit).
#[inline(always)]
fn first_buffer(p: &Pending) -> Option<(u64, u64)> {
    match p.buf_kind {
        buf_kind::PLAIN => Some((p.buf, u64::MAX)),
        buf_kind::IOV => read_iovec(p.buf),
        buf_kind::MSG => {
            // struct user_msghdr: msg_name, msg_namelen (+pad), msg_iov at 16.
            // SAFETY: user memory, fault-tolerant read.
            let iov = unsafe { bpf_probe_read_user((p.buf + 16) as *const u64) }.ok()?;
            read_iovec(iov)
        }
        _ => None,
    }
}

#[inline(always)]
fn read_iovec(iov: u64) -> Option<(u64, u64)> {
    // SAFETY: user memory, fault-tolerant read of struct iovec { void *base; size_t len; }.
    let pair = unsafe { bpf_probe_read_user(iov as *const [u64; 2]) }.ok()?;
    Some((pair[0], pair[1]))
}

#[tracepoint]
pub fn syscalls_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(p) = recall(pid_tgid as u32) else { return 0 };
    let n = ret(&ctx);
    if p.kind == kind::SYSCALL {
        emit_syscall(&p, n, pid_tgid);
        return 0;
    }
    if p.kind != kind::READ && p.kind != kind::WRITE {
        return 0;
    }
    // Errors (EAGAIN on a non-blocking socket, EINTR) move no data and change nothing.
    if n < 0 || (n == 0 && p.kind == kind::WRITE) {
        return 0;
    }
    let key = ConnKey { tgid: (pid_tgid >> 32) as u32, fd: p.fd };
    let Some(conn) = CONNS.get_ptr_mut(key) else { return 0 };
    // SAFETY: map value pointer from a successful lookup; only this thread's syscall on this fd
    // updates the phase here, and a racing update is harmless (one extra or missing payload).
    let conn = unsafe { &mut *conn };
    if conn.phase == phase::CLOSED {
        return 0;
    }
    let mut arrival_ts = 0u64;
    if p.kind == kind::READ && n > 0 {
        if conn.has_peer != 0 {
            // Whatever had arrived is consumed now: the next request's arrival is a later segment.
            if let Some(a) = ARRIVALS.get_ptr_mut(conn.peer) {
                // SAFETY: map value pointer from a successful lookup.
                unsafe {
                    if p.first != 0 {
                        arrival_ts = *a;
                    }
                    *a = 0;
                }
            }
        }
        conn.phase = phase::READING;
    } else if p.kind == kind::WRITE {
        conn.phase = phase::WRITING;
    }

    let base = DataEvent {
        hdr: header(p.kind, if p.buf_kind == buf_kind::NONE { data_flag::NO_BUFFER } else { 0 }, pid_tgid),
        fd: p.fd,
        payload_len: 0,
        ret: n,
        enter_ts: p.enter_ts,
        arrival_ts,
        nr: p.sys.nr,
        _pad: 0,
    };
    // A response that follows an interim one (100 Continue) is written while the connection is
    // already in its writing phase: recognise its status line by its first bytes.
    let first = p.first != 0 || (p.kind == kind::WRITE && starts_response(&p));
    if !first || n == 0 {
        let Some(mut entry) = EVENTS.reserve::<DataEvent>(0) else {
            count(counter::RINGBUF_FULL);
            return 0;
        };
        entry.write(base);
        entry.submit(SUBMIT_FLAGS);
        return 0;
    }
    emit_with_payload(&p, base, n as u64);
    0
}

#[inline(always)]
fn emit_syscall(p: &Pending, ret: i64, pid_tgid: u64) {
    let Some(mut entry) = EVENTS.reserve::<SyscallEvent>(0) else {
        count(counter::RINGBUF_FULL);
        return;
    };
    entry.write(SyscallEvent { hdr: header(kind::SYSCALL, 0, pid_tgid), sys: p.sys, enter_ts: p.enter_ts, ret });
    entry.submit(SUBMIT_FLAGS);
}

#[inline(always)]
fn starts_response(p: &Pending) -> bool {
    let Some((addr, _)) = first_buffer(p) else { return false };
    // SAFETY: user memory, fault-tolerant read.
    unsafe { bpf_probe_read_user(addr as *const [u8; 7]) }.is_ok_and(|b| &b == b"HTTP/1.")
}

#[inline(always)]
fn emit_with_payload(p: &Pending, mut base: DataEvent, n: u64) {
    let Some(mut entry) = EVENTS.reserve::<DataPayloadEvent>(0) else {
        count(counter::RINGBUF_FULL);
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at reserved ring-buffer memory of the right size; every field is
    // written before submit.
    unsafe {
        (*ev).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        base.hdr.flags |= data_flag::FIRST;
        if let Some((addr, limit)) = first_buffer(p) {
            let mut len = if n < limit { n } else { limit };
            if len > PAYLOAD_MAX as u64 {
                len = PAYLOAD_MAX as u64;
            }
            let payload = &mut (*ev).payload;
            if let Some(dst) = payload.get_mut(..len as usize) {
                if bpf_probe_read_user_buf(addr as *const u8, dst).is_ok() {
                    base.payload_len = len as u32;
                } else {
                    count(counter::READ_FAILED);
                }
            }
        }
        (*ev).data = base;
    }
    entry.submit(SUBMIT_FLAGS);
}

// ---- close -------------------------------------------------------------------------------------

#[tracepoint]
pub fn syscalls_enter_close(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_tracked(tgid) {
        return 0;
    }
    let fd = arg(&ctx, 0) as i32;
    let key = ConnKey { tgid, fd };
    let Some(conn) = CONNS.get_ptr_mut(key) else { return 0 };
    // SAFETY: map value pointer from a successful lookup.
    unsafe {
        if (*conn).phase == phase::CLOSED {
            return 0;
        }
        (*conn).phase = phase::CLOSED;
    }
    // The thread is done with this connection's request.
    set_thread_bits(pid_tgid as u32, 0, thread::SERVING);
    let Some(mut entry) = EVENTS.reserve::<CloseEvent>(0) else {
        count(counter::RINGBUF_FULL);
        return 0;
    };
    entry.write(CloseEvent { hdr: header(kind::CLOSE, 0, pid_tgid), fd, _pad: 0 });
    entry.submit(SUBMIT_FLAGS);
    0
}
