//! On-CPU samples. Of armed threads (`sample_oncpu`): userspace opens a CPU-clock perf event per
//! thread of a slow request and closes it when the request ends. Of all traffic
//! (`sample_all`): one CPU-clock event per CPU, so the cost is per CPU-second, not per request
//! or thread; the program keeps the samples that land on a thread of a watched process.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::perf_event,
    programs::PerfEventContext,
};
use introspect_common::stack_flag;

use crate::{
    maps::is_tracked,
    python::{capture, capture_sampled},
};

#[perf_event]
pub fn sample_oncpu(ctx: PerfEventContext) -> u32 {
    // SAFETY: no preconditions.
    capture(&ctx, stack_flag::ON_CPU, unsafe { bpf_ktime_get_ns() });
    0
}

#[perf_event]
pub fn sample_all(ctx: PerfEventContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // The idle task (0) and every process not watched: one array load.
    if pid_tgid as u32 == 0 || !is_tracked((pid_tgid >> 32) as u32) {
        return 0;
    }
    // SAFETY: no preconditions.
    capture_sampled(&ctx, stack_flag::ON_CPU, unsafe { bpf_ktime_get_ns() }, pid_tgid, 0);
    0
}
