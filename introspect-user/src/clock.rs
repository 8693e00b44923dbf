//! Clocks: the kernel stamps events with CLOCK_MONOTONIC; reports use wall-clock time.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_MONOTONIC now, in the kernel's bpf_ktime_get_ns units.
pub fn monotonic_ns() -> u64 {
    now(libc::CLOCK_MONOTONIC)
}

/// Converts monotonic timestamps to wall-clock time with one offset taken at start, so every
/// timestamp of a run is consistent with the others (a wall-clock step mid-run moves none).
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    realtime_minus_mono: i128,
}

impl Clock {
    pub fn new() -> Self {
        // Take the tightest of a few samples.
        let mut best = (u64::MAX, 0i128);
        for _ in 0..5 {
            let a = now(libc::CLOCK_MONOTONIC);
            let r = now(libc::CLOCK_REALTIME);
            let b = now(libc::CLOCK_MONOTONIC);
            if b - a < best.0 {
                best = (b - a, r as i128 - ((a + b) / 2) as i128);
            }
        }
        Self { realtime_minus_mono: best.1 }
    }

    /// A fixed offset, for replays and tests.
    pub fn with_offset(realtime_minus_mono: i128) -> Self {
        Self { realtime_minus_mono }
    }

    /// Wall-clock minus monotonic time, in ns (what recordings store to be replayed in wall time).
    pub fn realtime_minus_mono(&self) -> i128 {
        self.realtime_minus_mono
    }

    pub fn wall(&self, mono_ns: u64) -> SystemTime {
        let ns = (mono_ns as i128 + self.realtime_minus_mono).max(0) as u64;
        UNIX_EPOCH + Duration::from_nanos(ns)
    }

    /// RFC 3339, UTC, microseconds.
    pub fn rfc3339(&self, mono_ns: u64) -> String {
        humantime::format_rfc3339_micros(self.wall(mono_ns)).to_string()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
