//! Event headers, the ring-buffer submit policy, and the one way whole events are sent.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use introspect_common::{EventHeader, counter};

use crate::maps::{EVENTS, count};

/// Events are submitted without waking the reader: userspace drains the ring every few
/// milliseconds, which bounds alert latency and spares the traced threads a wakeup per event.
pub const SUBMIT_FLAGS: u64 = aya_ebpf::bindings::BPF_RB_NO_WAKEUP as u64;

#[inline(always)]
pub fn header(kind: u16, flags: u16, pid_tgid: u64) -> EventHeader {
    EventHeader {
        kind,
        flags,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        _pad: 0,
        // SAFETY: no preconditions.
        ts: unsafe { bpf_ktime_get_ns() },
    }
}

/// Sends an event, or counts it lost when the ring buffer is full.
#[inline(always)]
pub fn send<T: 'static>(ev: T) {
    match EVENTS.reserve::<T>(0) {
        Some(mut entry) => {
            entry.write(ev);
            entry.submit(SUBMIT_FLAGS);
        }
        None => count(counter::RINGBUF_FULL),
    }
}
