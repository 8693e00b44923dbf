//! Syscalls a serving thread may wait in besides reads, writes and connects: futex (locks, the
//! GIL), sleeps, poll/select/epoll (sockets with a timeout, database clients), fsync. Only the fd or
//! address that tells what the wait was for is kept.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use introspect_common::{
    SysCtx,
    nr::{EPOLL_CTL as NR_EPOLL_CTL, FUTEX as NR_FUTEX, POLL as NR_POLL, PPOLL as NR_PPOLL, PSELECT6 as NR_PSELECT6, SELECT as NR_SELECT},
};

use crate::{
    maps::{Pending, thread, thread_bits},
    syscall::{arg, arg_any, now, nr, remember},
};

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
        // epoll_ctl(epfd, op, fd, event): userspace keeps what each epoll set holds.
        NR_EPOLL_CTL => SysCtx { nr, fd: a0 as i32, arg: (arg_any(&ctx, 1) << 32) | (arg_any(&ctx, 2) & 0xffff_ffff) },
        _ => SysCtx { nr, fd: a0 as i32, arg: arg_any(&ctx, 3) },
    };
    remember(tid, Pending::syscall(sys, now()));
    0
}
