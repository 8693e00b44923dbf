//! The drain loop's pace: when to look at the ring buffer next.
use std::time::Duration;

/// When to drain the ring buffer next. Every wake-up costs a context switch and a timer (tens of
/// µs on a VM), so a quiet watch wakes seldom; a request is then still seen before it can cross
/// the threshold (the interval is at most a quarter of it), and the wake-up for the crossing
/// itself is timed to it. Events arriving fast enough to fill a few MiB of the ring buffer in
/// the long interval bring the short one back, and so does a thread whose stacks are being
/// captured: the kernel goes on capturing them until its request's end has been drained and
/// the thread disarmed.
pub struct Pace {
    pub busy: Duration,
    quiet: Duration,
}

impl Pace {
    /// Events per second above which the short interval is used: 100 ms of them is ~0.5 MiB of
    /// the 8 MiB ring buffer; a burst of 450k events/s (64k requests/s) fills ~4.5 MiB before
    /// the first drain that sees it switches.
    const BUSY_RATE: f64 = 50_000.0;

    /// `fixed` (the hidden --poll-interval) pins the interval; else a quarter of the threshold,
    /// between 10 and 100 ms.
    pub fn new(fixed: Option<Duration>, threshold: Duration) -> Self {
        let busy = Duration::from_millis(10);
        match fixed {
            Some(d) => Self { busy: d, quiet: d },
            None => Self { busy, quiet: (threshold / 4).clamp(busy, Duration::from_millis(100)) },
        }
    }

    /// How long to wait after a drain that found `drained` events `since` the one before, with
    /// the next threshold crossing `until_crossing` away and threads `armed` or not.
    pub fn wait(&self, drained: u64, since: Duration, until_crossing: Option<Duration>, armed: bool) -> Duration {
        let busy = armed || drained as f64 > Self::BUSY_RATE * since.as_secs_f64().max(1e-3);
        let wait = if busy { self.busy } else { self.quiet };
        until_crossing.map_or(wait, |c| wait.min(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_quiet_watch_waits_a_quarter_of_the_threshold_within_10_to_100_ms() {
        assert_eq!(Pace::new(None, 500 * MS).wait(0, 100 * MS, None, false), 100 * MS);
        assert_eq!(Pace::new(None, 200 * MS).wait(10, 50 * MS, None, false), 50 * MS);
        assert_eq!(Pace::new(None, 2 * MS).wait(0, 10 * MS, None, false), 10 * MS);
        // 2k requests/s at ~7 events each is quiet.
        assert_eq!(Pace::new(None, 500 * MS).wait(1_400, 100 * MS, None, false), 100 * MS);
    }

    #[test]
    fn a_fast_stream_of_events_brings_the_short_interval_back() {
        let p = Pace::new(None, 500 * MS);
        assert_eq!(p.wait(45_000, 100 * MS, None, false), 10 * MS);
        assert_eq!(p.wait(600, 10 * MS, None, false), 10 * MS);
        assert_eq!(p.wait(400, 10 * MS, None, false), 100 * MS);
        // A thread being captured: its disarm must not wait for the long interval.
        assert_eq!(p.wait(0, 100 * MS, None, true), 10 * MS);
    }

    #[test]
    fn a_coming_crossing_shortens_the_wait_and_a_fixed_interval_is_kept() {
        assert_eq!(Pace::new(None, 500 * MS).wait(0, 100 * MS, Some(3 * MS), false), 3 * MS);
        assert_eq!(Pace::new(None, 500 * MS).wait(0, 100 * MS, Some(Duration::ZERO), false), Duration::ZERO);
        let fixed = Pace::new(Some(20 * MS), 500 * MS);
        assert_eq!(fixed.wait(0, 20 * MS, None, false), 20 * MS);
        assert_eq!(fixed.wait(1_000_000, 20 * MS, None, false), 20 * MS);
    }
}
