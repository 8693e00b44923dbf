//! The read/write syscall family on tracked connections, and the exit program every hooked
//! syscall but accept shares.
//!
//! Enter programs decide whether a syscall concerns a tracked connection and remember its
//! buffer; the exit sees how many bytes moved and emits one event. The head of a request (or
//! response) is copied only on the first read (or write) of a phase, so a request costs two
//! bounded copies however many syscalls it takes. On outbound connections (the process's own
//! calls) the roles turn around: its writes are the requests, its reads the responses; their
//! heads are copied only when a parser for them is loaded (`Settings::outbound_heads`).
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_probe_read_user, bpf_probe_read_user_buf},
    macros::tracepoint,
    programs::TracePointContext,
};
use introspect_common::{
    CLIENT_CONN, ConnKey, DataEvent, DataPayloadEvent, LONG_WAIT_NS, PAYLOAD_MAX, SysCtx, counter, data_flag, kind, phase, role, stack_flag,
};

use crate::{
    emit::{SUBMIT_FLAGS, header, send},
    fd,
    maps::{ARRIVALS, CONNS, EVENTS, Pending, SETTINGS, buf_kind, count, is_tracked, set_thread_bits, thread, thread_bits},
    python::capture_sampled,
    syscall::{arg, emit_syscall, now, nr, recall, remember, ret},
    wire,
};

// ---- enter -------------------------------------------------------------------------------------

/// Common enter path: is `fd` a tracked connection? Remember the buffer, and whether this syscall
/// opens a new phase (the first read of a request, the first write of a response). Reads and
/// writes of a serving thread on other fds (files, sockets opened before the watch) are
/// remembered too: a wait inside them is disk or network time of the request.
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
    let serving = thread_bits(tid) & thread::SERVING != 0;
    let conn = CONNS
        .get_ptr(ConnKey { tgid, fd })
        // SAFETY: map value pointer from a successful lookup.
        .map(|c| unsafe { ((*c).phase, (*c).role) })
        .filter(|&(p, _)| p != phase::CLOSED);
    let pending = match conn {
        // Outbound connections matter inside a request only.
        Some((conn_phase, conn_role)) if conn_role == role::SERVED || serving => {
            let want = if dir == kind::READ { phase::READING } else { phase::WRITING };
            let first = conn_phase != want;
            if first && dir == kind::READ && conn_role == role::SERVED {
                set_thread_bits(tid, thread::SERVING, 0);
            }
            let buf = if buf_kind == buf_kind::NONE { 0 } else { arg(ctx, 1) };
            let sys = if conn_role == role::SERVED { SysCtx { arg: CLIENT_CONN, ..sys } } else { sys };
            Pending { kind: dir, buf_kind, first: first as u8, role: conn_role, also_syscall: 0, _pad: [0; 2], fd, buf, enter_ts: now(), sys }
        }
        _ if serving => Pending::syscall(sys, now()),
        _ => return 0,
    };
    remember(tid, pending);
    0
}

/// read(fd, buf, count), recvfrom(fd, ubuf, size, ...), pread64(fd, buf, count, pos)
#[tracepoint]
pub fn syscalls_enter_read(ctx: TracePointContext) -> u32 {
    data_enter(&ctx, buf_kind::PLAIN, kind::READ)
}

/// readv(fd, vec, vlen), preadv(fd, vec, vlen, pos_l, pos_h)
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

/// writev(fd, vec, vlen), pwritev(fd, vec, vlen, pos_l, pos_h)
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

// ---- exit --------------------------------------------------------------------------------------

/// The first buffer of a pending syscall: (address, length limit).
#[inline(always)]
pub fn first_buffer(p: &Pending) -> Option<(u64, u64)> {
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
    if thread_bits(pid_tgid as u32) & thread::WAITED != 0 {
        sampled_wait(&ctx, &p, pid_tgid);
    }
    match p.kind {
        kind::SYSCALL => emit_syscall(&p, n, pid_tgid),
        kind::UNIX_CONNECT => crate::conn::exit_unix_connect(&p, n, pid_tgid),
        kind::OPEN | kind::SOCKET | kind::DUP => fd::exit(&p, n, pid_tgid),
        kind::READ | kind::WRITE => data_exit(&p, n, pid_tgid),
        _ => {}
    }
    0
}

#[inline(always)]
fn data_exit(p: &Pending, n: i64, pid_tgid: u64) {
    // Errors (EAGAIN on a non-blocking socket, EINTR) move no data and change nothing; on an
    // outbound connection they are still syscalls of the serving thread.
    if n < 0 || (n == 0 && p.kind == kind::WRITE) {
        if p.role == role::OUTBOUND {
            emit_syscall(p, n, pid_tgid);
        }
        return;
    }
    let key = ConnKey { tgid: (pid_tgid >> 32) as u32, fd: p.fd };
    let Some(conn) = CONNS.get_ptr_mut(key) else { return };
    // SAFETY: map value pointer from a successful lookup; only this thread's syscall on this fd
    // updates the phase here, and a racing update is harmless (one extra or missing payload).
    let conn = unsafe { &mut *conn };
    if conn.phase == phase::CLOSED {
        return;
    }
    let mut arrival_ts = 0u64;
    if p.kind == kind::READ && n > 0 {
        if conn.has_peer != 0 {
            // Whatever had arrived is consumed now: the next request's arrival is a later segment.
            if let Some(a) = ARRIVALS.get_ptr_mut(conn.peer) {
                // SAFETY: map value pointer from a successful lookup.
                unsafe {
                    if p.first != 0 {
                        arrival_ts = *a & !introspect_common::ARRIVAL_HANDSHAKE;
                    }
                    *a = 0;
                }
            }
        }
        conn.phase = phase::READING;
    } else if p.kind == kind::WRITE {
        conn.phase = phase::WRITING;
    }

    let mut flags = if p.buf_kind == buf_kind::NONE { data_flag::NO_BUFFER } else { 0 };
    if p.role == role::OUTBOUND {
        flags |= data_flag::OUTBOUND;
    }
    let base = DataEvent {
        hdr: header(p.kind, flags, pid_tgid),
        fd: p.fd,
        payload_len: 0,
        ret: n,
        enter_ts: p.enter_ts,
        arrival_ts,
        nr: p.sys.nr,
        tail_at: 0,
    };
    // A database connection: its bytes, bounded, for the SQL parsers.
    if p.role == role::OUTBOUND && n > 0 && wire::is_database(conn, p, n as u64) {
        wire::emit(p, base, n as u64, conn.wire);
        return;
    }
    let served = p.role == role::SERVED;
    let heads = served || SETTINGS.load().outbound_heads != 0;
    // A response that follows an interim one (100 Continue) is written while the connection is
    // already in its writing phase: recognise its status line by its first bytes.
    let first = heads && (p.first != 0 || (served && p.kind == kind::WRITE && starts_response(p)));
    if !first || n == 0 {
        send(base);
        return;
    }
    emit_with_payload(p, base, n as u64);
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

/// All-traffic profiling: the thread left the CPU inside this syscall. Here, not at the
/// switch-out, because only now is the wait's length known; the user and Python frames are
/// still those the thread blocked with (it ran no user code since). Every wait of at least
/// `LONG_WAIT_NS` is captured and weighs its length; a shorter one is captured with probability
/// length / `LONG_WAIT_NS` and then weighs `LONG_WAIT_NS`: right on average, and at most one
/// stack walk per millisecond of waiting whatever the waits' lengths (a hello-world request's
/// waits of a few microseconds almost never pay one).
#[inline(always)]
fn sampled_wait(ctx: &TracePointContext, p: &Pending, pid_tgid: u64) {
    set_thread_bits(pid_tgid as u32, 0, thread::WAITED);
    let now = now();
    let dur = now.saturating_sub(p.enter_ts);
    let (flags, weight) = if dur >= LONG_WAIT_NS {
        (stack_flag::OFF_CPU | stack_flag::AT_EXIT, dur)
    } else {
        // SAFETY: no preconditions.
        let draw = unsafe { bpf_get_prandom_u32() } as u64 % LONG_WAIT_NS;
        if draw >= dur {
            return;
        }
        (stack_flag::OFF_CPU | stack_flag::AT_EXIT | stack_flag::SCALED, LONG_WAIT_NS)
    };
    capture_sampled(ctx, flags, now, pid_tgid, (weight / 1000).min(u32::MAX as u64) as u32);
}
