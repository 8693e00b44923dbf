//! Syscalls that make file descriptors (openat, socket, dup, dup2, dup3): each new fd of a
//! watched process is reported, so userspace knows what an fd was when a thread waited on it,
//! even once it is closed.
use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext};
use introspect_common::{
    ConnKey, FdEvent, SysCtx, kind,
    nr::{DUP as NR_DUP, OPENAT as NR_OPENAT, SOCKET as NR_SOCKET},
    role,
};

use crate::{
    conn,
    emit::{header, send},
    maps::{Pending, buf_kind, is_tracked, thread, thread_bits},
    syscall::{arg, arg_any, emit_syscall, now, nr, remember},
};

#[tracepoint]
pub fn syscalls_enter_fd(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_tracked((pid_tgid >> 32) as u32) {
        return 0;
    }
    let tid = pid_tgid as u32;
    let nr = nr(&ctx);
    let a0 = arg(&ctx, 0);
    // Only argument 0 is common to all of them: the others go through the helper.
    let (kind, buf, sys_arg) = match nr {
        // openat(dfd, filename, flags, mode)
        NR_OPENAT => (kind::OPEN, 0, arg_any(&ctx, 3)),
        // socket(family, type, protocol)
        NR_SOCKET => (kind::SOCKET, arg_any(&ctx, 1), 0),
        // dup(fildes)
        NR_DUP => (kind::DUP, 0, 0),
        // dup2(oldfd, newfd), dup3(oldfd, newfd, flags)
        _ => (kind::DUP, arg_any(&ctx, 1), 0),
    };
    let serving = thread_bits(tid) & thread::SERVING != 0;
    let pending = Pending {
        kind,
        buf_kind: buf_kind::NONE,
        first: 0,
        role: role::SERVED,
        also_syscall: (serving && nr == NR_OPENAT) as u8,
        _pad: [0; 2],
        fd: a0 as i32,
        buf,
        enter_ts: now(),
        sys: SysCtx { nr, fd: a0 as i32, arg: sys_arg },
    };
    remember(tid, pending);
    0
}

/// The exit of an fd-making syscall (called from the shared exit program).
#[inline(always)]
pub fn exit(p: &Pending, ret: i64, pid_tgid: u64) {
    if ret >= 0 {
        let fd = ret as i32;
        // dup2/dup3 onto an open fd close it first (and dup2(fd, fd) changes nothing).
        if p.kind == kind::DUP && p.sys.nr != NR_DUP && fd != p.fd {
            conn::closed(ConnKey { tgid: (pid_tgid >> 32) as u32, fd }, pid_tgid as u32);
        }
        send(FdEvent { hdr: header(p.kind, 0, pid_tgid), fd, from: p.fd, detail: p.buf as u32, _pad: 0 });
    }
    if p.also_syscall != 0 {
        emit_syscall(p, ret, pid_tgid);
    }
}
