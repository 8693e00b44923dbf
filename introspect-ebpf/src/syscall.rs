//! What the syscall programs share: the record layout of syscall tracepoints, remembering a
//! syscall from its entry to its exit, and reporting one as a syscall of a serving thread.
//!
//! Syscall tracepoint records have a layout fixed by the syscall ABI: the number at 8, arguments
//! at 16 + 8*i, the return value at 16 (see /sys/kernel/tracing/events/syscalls/*/format;
//! userspace checks every argument a program reads before loading).
use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TracePointContext};
use introspect_common::{SyscallEvent, kind};

use crate::{
    emit::{header, send},
    field,
    maps::{PENDING, Pending, set_thread_bits, thread, thread_bits, upsert},
};

pub const AF_UNIX: u16 = 1;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

#[inline(always)]
pub fn arg(ctx: &TracePointContext, i: usize) -> u64 {
    // The record has six u64 arguments after its 16-byte header.
    field::fixed::<u64>(ctx, 16 + 8 * i)
}

/// An argument some of the program's syscalls may not have: the kernel refuses to attach a
/// program whose context loads reach past a record's end, so these go through the helper.
#[inline(always)]
pub fn arg_any(ctx: &TracePointContext, i: usize) -> u64 {
    // SAFETY: reads the record within its buffer; a short record reads a neighbour's bytes,
    // which only syscalls that do not have the argument would see (and they ignore it).
    unsafe { ctx.read_at::<u64>(16 + 8 * i) }.unwrap_or(0)
}

#[inline(always)]
pub fn nr(ctx: &TracePointContext) -> u32 {
    // sys_enter records carry `int __syscall_nr` at offset 8.
    field::fixed::<i32>(ctx, 8) as u32
}

#[inline(always)]
pub fn ret(ctx: &TracePointContext) -> i64 {
    // sys_exit records carry `long ret` at offset 16.
    field::fixed::<i64>(ctx, 16)
}

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// Remembers a syscall of interest until its exit.
#[inline(always)]
pub fn remember(tid: u32, pending: Pending) {
    upsert(&PENDING, tid, pending);
    set_thread_bits(tid, thread::PENDING, 0);
}

/// The syscall this thread is returning from, if it was remembered; forgets it.
#[inline(always)]
pub fn recall(tid: u32) -> Option<Pending> {
    if thread_bits(tid) & thread::PENDING == 0 {
        return None;
    }
    set_thread_bits(tid, 0, thread::PENDING);
    // SAFETY: the entry belongs to this thread, which is here and not in another syscall.
    PENDING.get_ptr(tid).map(|p| unsafe { *p })
}

/// Reports a hooked syscall of a serving thread, from its entry to its return.
#[inline(always)]
pub fn emit_syscall(p: &Pending, ret: i64, pid_tgid: u64) {
    send(SyscallEvent { hdr: header(kind::SYSCALL, 0, pid_tgid), sys: p.sys, enter_ts: p.enter_ts, ret });
}
