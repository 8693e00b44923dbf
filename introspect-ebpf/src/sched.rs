//! The scheduler, for threads serving a request only: when they leave the CPU (blocked or
//! preempted), when they become runnable again, and when they run; and PostgreSQL backends
//! (`backend`). Two array loads per switch and one per wakeup are all that unrelated threads pay.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use introspect_common::{NO_SYSCALL, OffCpuEvent, OffCpuState, SysCtx, kind, stack_flag};

use crate::{
    backend,
    emit::{header, send},
    field,
    maps::{OFFCPU, OFFSETS, PENDING, set_thread_bits, thread, thread_bits, upsert},
    python::{capture, capture_sampled, profiling_all, switch_sampled},
};

/// sched_switch prev_state: the low byte is the task state (0 = runnable, i.e. preempted);
/// TASK_REPORT_MAX (0x100) marks preemption (include/trace/events/sched.h).
const STATE_MASK: u64 = 0xff;

/// Where sched_switch records have had `next_pid`, and sched_waking records `pid`, for years.
const USUAL_SWITCH_NEXT_PID: u16 = 56;
const USUAL_WAKEUP_PID: u16 = 24;

#[tracepoint]
pub fn sched_sched_switch(ctx: TracePointContext) -> u32 {
    // sched_switch runs in the context of the task leaving the CPU.
    let pid_tgid = bpf_get_current_pid_tgid();
    let prev = pid_tgid as u32;
    let off = OFFSETS.load();
    let next = field::at::<i32>(&ctx, off.switch_next_pid, USUAL_SWITCH_NEXT_PID) as u32;
    let prev_bits = if prev != 0 { thread_bits(prev) } else { 0 };
    let next_bits = thread_bits(next);
    // The common case, by far: neither thread is ours.
    if prev_bits & (thread::SERVING | thread::DB_BACKEND) == 0 && next_bits & (thread::OFF_CPU | thread::DB_BACKEND) == 0 {
        return 0;
    }
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: offset from this kernel's sched_switch format file.
    let state = || unsafe { ctx.read_at::<i64>(off.switch_prev_state as usize) }.unwrap_or(0) as u64 & STATE_MASK;
    if prev_bits & thread::DB_BACKEND != 0 {
        backend::switched_out(prev, state() as u32, now);
    }
    if prev_bits & thread::SERVING != 0 {
        let state = state();
        // The syscall it is blocking in, if it is one we hooked.
        let sys = match PENDING.get_ptr(prev) {
            // SAFETY: map value pointer from a successful lookup.
            Some(p) if prev_bits & thread::PENDING != 0 => unsafe { (*p).sys },
            _ => SysCtx { nr: NO_SYSCALL, fd: -1, arg: 0 },
        };
        let st = OffCpuState { out_ts: now, wake_ts: if state == 0 { now } else { 0 }, tgid: (pid_tgid >> 32) as u32, state: state as u32, sys };
        upsert(&OFFCPU, prev, st);
        set_thread_bits(prev, thread::OFF_CPU, 0);
        // A thread of a slow request: its stack as it leaves the CPU, weighted later by how long
        // it stays off.
        capture(&ctx, stack_flag::OFF_CPU, now);
        if profiling_all() {
            if prev_bits & thread::PENDING != 0 {
                // In a hooked syscall: sampled at its exit, when its length is known.
                set_thread_bits(prev, thread::WAITED, 0);
            } else if switch_sampled(state == 0) {
                // Preempted, or blocked outside the hooked syscalls: weighted by the wait that
                // follows, times the sampling.
                let preempted = if state == 0 { stack_flag::PREEMPTED } else { 0 };
                capture_sampled(&ctx, stack_flag::OFF_CPU | stack_flag::SCALED | preempted, now, pid_tgid, 0);
            }
        }
    }
    if next_bits & thread::DB_BACKEND != 0 {
        backend::switched_in(next, now);
    }
    if next_bits & thread::OFF_CPU == 0 {
        return 0;
    }
    set_thread_bits(next, 0, thread::OFF_CPU);
    let Some(st) = OFFCPU.get_ptr_mut(next) else { return 0 };
    // SAFETY: map value pointer from a successful lookup; `next` is not running anywhere now.
    let st = unsafe {
        let copy = *st;
        // On the CPU again: userspace's snapshot of a wait in progress must not see it.
        (*st).out_ts = 0;
        copy
    };
    let mut hdr = header(kind::OFF_CPU, 0, ((st.tgid as u64) << 32) | next as u64);
    hdr.ts = now;
    send(OffCpuEvent { hdr, out_ts: st.out_ts, wake_ts: if st.wake_ts == 0 { now } else { st.wake_ts }, state: st.state, _pad: 0, sys: st.sys });
    0
}

/// A blocked serving thread became runnable: from here until it runs is run-queue time. Also
/// PostgreSQL backends, whose waker matters. sched_waking, not sched_wakeup: it always runs in
/// the waker's context (sched_wakeup may run on the wakee's CPU, for a queued remote wakeup).
#[tracepoint]
pub fn sched_sched_waking(ctx: TracePointContext) -> u32 {
    let pid = field::at::<i32>(&ctx, OFFSETS.load().wakeup_pid, USUAL_WAKEUP_PID) as u32;
    let bits = thread_bits(pid);
    if bits & (thread::OFF_CPU | thread::DB_BACKEND) == 0 {
        return 0;
    }
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if bits & thread::DB_BACKEND != 0 {
        backend::woken(pid, now);
    }
    if bits & thread::OFF_CPU == 0 {
        return 0;
    }
    if let Some(st) = OFFCPU.get_ptr_mut(pid) {
        // SAFETY: map value pointer from a successful lookup; a racing wakeup writes the same.
        unsafe {
            if (*st).wake_ts == 0 {
                (*st).wake_ts = now;
                backend::woke_client((*st).tgid, pid, (*st).sys.fd);
            }
        }
    }
    0
}
