//! The Python frame chain of the current thread, walked in the kernel: only code-object pointers
//! and position fields are copied (names, files and lines are resolved in userspace, once per code
//! object). Runs in the thread's own context (a CPU-clock sample, or sched_switch as it leaves the
//! CPU), so its user memory is the current one.
use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    programs::tracing::StackIdContext,
};
use introspect_common::{Armed, NO_OFFSET, PREEMPT_EVERY, PY_FRAMES_MAX, PyRawFrame, PyWalk, SAMPLE_EVERY, StackEvent, counter, kind, stack_flag};

use crate::{
    emit::{SUBMIT_FLAGS, header},
    maps::{ARMED, ARMED_ANY, EVENTS, PY_THREADS, PY_WALK, SETTINGS, STACKS, WAIT_TICKS, count},
};

/// bpf_get_stackid flags (include/uapi/linux/bpf.h).
const BPF_F_USER_STACK: u64 = 1 << 8;
/// A hash collision replaces the older stack instead of failing: ids are read within
/// milliseconds.
const BPF_F_REUSE_STACKID: u64 = 1 << 10;

#[inline(always)]
fn read_ptr(addr: u64) -> u64 {
    // SAFETY: user memory, fault-tolerant read; a stale pointer reads garbage or fails.
    unsafe { bpf_probe_read_user(addr as *const u64) }.unwrap_or(0)
}

/// How to walk the current thread's Python frames, if it is armed.
#[inline(always)]
fn armed_walk(tid: u32) -> Option<(u64, PyWalk)> {
    if ARMED_ANY.get(0).is_none_or(|any| *any == 0) {
        return None;
    }
    // SAFETY: map value pointers from successful lookups.
    let armed: Armed = unsafe { *ARMED.get_ptr(tid)? };
    let walk = unsafe { *PY_WALK.get_ptr(armed.tgid)? };
    Some((armed.tstate, walk))
}

/// If the current thread is armed, emits its stacks with `flags` and time `ts`.
#[inline(always)]
pub fn capture<C: EbpfContext + StackIdContext>(ctx: &C, flags: u16, ts: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if let Some(walk) = armed_walk(pid_tgid as u32) {
        emit(ctx, flags, ts, pid_tgid, Some(walk), 0);
    }
}

/// Whether the all-traffic profiler is on.
#[inline(always)]
pub fn profiling_all() -> bool {
    SETTINGS.load().profile_all != 0
}

/// For the all-traffic profiler: true for one switch-out in `SAMPLE_EVERY` on this CPU, or
/// with `preempted` one preemption in `PREEMPT_EVERY`.
#[inline(always)]
pub fn switch_sampled(preempted: bool) -> bool {
    let (slot, every) = if preempted { (1, PREEMPT_EVERY) } else { (0, SAMPLE_EVERY) };
    let Some(t) = WAIT_TICKS.get_ptr_mut(slot) else { return false };
    // SAFETY: per-CPU slot, and BPF programs do not preempt each other on one CPU.
    unsafe {
        *t += 1;
        if *t >= every as u32 {
            *t = 0;
            return true;
        }
    }
    false
}

/// How to walk the thread's Python frames for the all-traffic profiler, if userspace has found
/// its thread state.
#[inline(always)]
fn profiled_walk(tid: u32) -> Option<(u64, PyWalk)> {
    // SAFETY: map value pointers from successful lookups.
    unsafe { PY_THREADS.get_ptr(tid).and_then(|a| Some(((*a).tstate, *PY_WALK.get_ptr((*a).tgid)?))) }
}

/// The all-traffic profiler: emits the current thread's stacks with `flags | SAMPLED`.
#[inline(always)]
pub fn capture_sampled<C: EbpfContext + StackIdContext>(ctx: &C, flags: u16, ts: u64, pid_tgid: u64, wait_us: u32) {
    emit(ctx, flags | stack_flag::SAMPLED, ts, pid_tgid, profiled_walk(pid_tgid as u32), wait_us);
}

/// The current thread, serving a request, is taking a fatal signal: its kernel and native
/// stacks, and its Python frames when it is armed (its request is slow).
#[inline(always)]
pub fn capture_dying<C: EbpfContext + StackIdContext>(ctx: &C, ts: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    emit(ctx, stack_flag::SIGNAL, ts, pid_tgid, armed_walk(tid).or_else(|| profiled_walk(tid)), 0);
}

#[inline(always)]
fn emit<C: EbpfContext + StackIdContext>(ctx: &C, flags: u16, ts: u64, pid_tgid: u64, walk: Option<(u64, PyWalk)>, wait_us: u32) {
    let Some(mut entry) = EVENTS.reserve::<StackEvent>(0) else {
        count(counter::RINGBUF_FULL);
        return;
    };
    let ev = entry.as_mut_ptr();
    let mut hdr = header(kind::STACK, flags, pid_tgid);
    hdr.ts = ts;
    let kstack = ctx.get_stackid(&STACKS, BPF_F_REUSE_STACKID).map_or(-1, |id| id as i32);
    let ustack = ctx.get_stackid(&STACKS, BPF_F_USER_STACK | BPF_F_REUSE_STACKID).map_or(-1, |id| id as i32);
    let (mut frame, walk) = match walk {
        Some((tstate, walk)) => {
            let mut frame = read_ptr(tstate + walk.tstate_frame as u64);
            if walk.cframe_frame != NO_OFFSET && frame != 0 {
                frame = read_ptr(frame + walk.cframe_frame as u64);
            }
            (frame, walk)
        }
        None => (0, PyWalk::default()),
    };
    let mut n = 0u32;
    // SAFETY: `ev` points at reserved ring-buffer memory of the right size; every field that
    // userspace reads (hdr, ids, nframes and frames[..nframes]) is written before submit.
    unsafe {
        let frames = &mut (*ev).frames;
        for i in 0..PY_FRAMES_MAX {
            if frame == 0 {
                break;
            }
            let Some(slot) = frames.get_mut(i) else { break };
            *slot = PyRawFrame { code: read_ptr(frame + walk.frame_code as u64), lasti: read_ptr(frame + walk.frame_lasti as u64) };
            n += 1;
            frame = read_ptr(frame + walk.frame_back as u64);
        }
        (*ev).hdr = hdr;
        (*ev).kstack = kstack;
        (*ev).ustack = ustack;
        (*ev).nframes = n;
        (*ev).wait_us = wait_us;
    }
    entry.submit(SUBMIT_FLAGS);
}
