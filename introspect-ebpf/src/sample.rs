//! On-CPU samples of armed threads only: userspace opens a CPU-clock perf event per thread of a
//! slow request and closes it when the request ends, so fast requests are never sampled.
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::perf_event, programs::PerfEventContext};
use introspect_common::stack_flag;

use crate::python::capture;

#[perf_event]
pub fn sample_oncpu(ctx: PerfEventContext) -> u32 {
    // SAFETY: no preconditions.
    capture(&ctx, stack_flag::ON_CPU, unsafe { bpf_ktime_get_ns() });
    0
}
