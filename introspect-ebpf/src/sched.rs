//! The scheduler, for threads serving a request only: when they leave the CPU (blocked or
//! preempted), when they become runnable again, and when they run. One hash lookup per switch
//! and per wakeup is all that unrelated threads pay.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use introspect_common::{NO_SYSCALL, OffCpuEvent, OffCpuState, SysCtx, counter, kind, stack_flag};

use crate::{
    emit::{SUBMIT_FLAGS, header},
    maps::{EVENTS, OFFCPU, OFFSETS, PENDING, count, is_serving},
    python::capture,
};

/// sched_switch prev_state: the low byte is the task state (0 = runnable, i.e. preempted);
/// TASK_REPORT_MAX (0x100) marks preemption (include/trace/events/sched.h).
const STATE_MASK: u64 = 0xff;

#[tracepoint]
pub fn sched_sched_switch(ctx: TracePointContext) -> u32 {
    let off = OFFSETS.load();
    // SAFETY: offsets come from this kernel's sched_switch format file.
    let prev = unsafe { ctx.read_at::<i32>(off.switch_prev_pid as usize) }.unwrap_or(0) as u32;
    let next = unsafe { ctx.read_at::<i32>(off.switch_next_pid as usize) }.unwrap_or(0) as u32;
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if prev != 0 && is_serving(prev) {
        let state = unsafe { ctx.read_at::<i64>(off.switch_prev_state as usize) }.unwrap_or(0) as u64 & STATE_MASK;
        // The syscall it is blocking in, if it is one we hooked.
        let sys = match PENDING.get_ptr(prev) {
            // SAFETY: map value pointer from a successful lookup.
            Some(p) => unsafe { (*p).sys },
            None => SysCtx { nr: NO_SYSCALL, fd: -1, arg: 0 },
        };
        let st = OffCpuState {
            out_ts: now,
            wake_ts: if state == 0 { now } else { 0 },
            // sched_switch runs in the context of the task leaving the CPU.
            tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
            state: state as u32,
            sys,
        };
        if OFFCPU.insert(prev, st, 0).is_err() {
            count(counter::MAP_FULL);
        }
        // A thread of a slow request: its stack as it leaves the CPU, weighted later by how long
        // it stays off.
        capture(&ctx, stack_flag::OFF_CPU, now);
    }
    if let Some(st) = OFFCPU.get_ptr(next) {
        // SAFETY: map value pointer from a successful lookup.
        let st = unsafe { *st };
        let _ = OFFCPU.remove(next);
        let Some(mut entry) = EVENTS.reserve::<OffCpuEvent>(0) else {
            count(counter::RINGBUF_FULL);
            return 0;
        };
        let mut hdr = header(kind::OFF_CPU, 0, ((st.tgid as u64) << 32) | next as u64);
        hdr.ts = now;
        entry.write(OffCpuEvent {
            hdr,
            out_ts: st.out_ts,
            wake_ts: if st.wake_ts == 0 { now } else { st.wake_ts },
            state: st.state,
            _pad: 0,
            sys: st.sys,
        });
        entry.submit(SUBMIT_FLAGS);
    }
    0
}

/// A blocked serving thread became runnable: from here until it runs is run-queue time.
#[tracepoint]
pub fn sched_sched_wakeup(ctx: TracePointContext) -> u32 {
    let off = OFFSETS.load();
    // SAFETY: offset from this kernel's sched_wakeup format file.
    let pid = unsafe { ctx.read_at::<i32>(off.wakeup_pid as usize) }.unwrap_or(0) as u32;
    if let Some(st) = OFFCPU.get_ptr_mut(pid) {
        // SAFETY: map value pointer from a successful lookup; a racing wakeup writes the same.
        unsafe {
            if (*st).wake_ts == 0 {
                (*st).wake_ts = bpf_ktime_get_ns();
            }
        }
    }
    0
}
