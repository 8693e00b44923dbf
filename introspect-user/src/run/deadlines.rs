//! Deadlines: for each request running past the threshold, when its server is going to kill its
//! worker — a warning when that is a second away, and a burst of stacks until then, so the
//! report holds where it was and not only where it died.
use std::collections::HashMap;

use crate::{
    kills::{Kills, Reason},
    stacks::Frame,
};

/// Warn and start taking stacks this long before the predicted kill.
pub const WARN_BEFORE_NS: u64 = 1_000_000_000;
/// Stacks taken before a kill: at most this many, this far apart.
const MAX_SNAPSHOTS: usize = 10;
const SNAPSHOT_EVERY_NS: u64 = 100_000_000;

/// What is being watched of one running request (by thread).
#[derive(Default)]
pub struct Watch {
    /// (when, stack) taken as the kill neared.
    pub snapshots: Vec<(u64, Vec<Frame>)>,
    warned: bool,
}

/// A request running past the threshold, as shown by `top`.
#[derive(Clone, Debug, PartialEq)]
pub struct Running {
    pub pid: u32,
    pub tid: u32,
    pub method: String,
    pub path: String,
    pub elapsed_ms: f64,
    /// Time left before the server kills its worker (negative: overdue), and who will.
    pub kill_in_ms: Option<f64>,
    pub kill_by: Option<Reason>,
}

/// What to do for a running request now.
pub struct Due {
    /// The warning to give, once.
    pub warning: Option<String>,
    /// A stack should be taken now.
    pub snapshot: bool,
}

#[derive(Default)]
pub struct Deadlines {
    watches: HashMap<u32, Watch>,
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

impl Deadlines {
    /// A running request of `pid`'s thread `tid` (started at `start_ns`) at `now_ns`, whose kill
    /// is predicted at `kill_at` by `reason`.
    pub fn check(&mut self, tid: u32, kill_at: u64, reason: Reason, now_ns: u64, what: impl FnOnce() -> String) -> Due {
        let w = self.watches.entry(tid).or_default();
        if now_ns.saturating_add(WARN_BEFORE_NS) < kill_at {
            return Due { warning: None, snapshot: false };
        }
        let warning = (!w.warned).then(|| {
            w.warned = true;
            let left = kill_at.saturating_sub(now_ns);
            let who = match reason {
                Reason::GunicornTimeout => "gunicorn's worker timeout",
                Reason::UwsgiHarakiri => "uWSGI's harakiri",
                _ => "the server's kill",
            };
            format!("{} is {:.1} s from {who}: its worker is about to be killed", what(), secs(left))
        });
        let snapshot = w.snapshots.len() < MAX_SNAPSHOTS && w.snapshots.last().is_none_or(|(t, _)| now_ns >= t + SNAPSHOT_EVERY_NS);
        Due { warning, snapshot }
    }

    pub fn add_snapshot(&mut self, tid: u32, ts: u64, stack: Vec<Frame>) {
        let w = self.watches.entry(tid).or_default();
        if w.snapshots.len() < MAX_SNAPSHOTS {
            w.snapshots.push((ts, stack));
        }
    }

    /// The request on `tid` ended: what was gathered for it.
    pub fn done(&mut self, tid: u32) -> Vec<(u64, Vec<Frame>)> {
        self.watches.remove(&tid).map(|w| w.snapshots).unwrap_or_default()
    }
}

/// Time left before the kill of a request started at `start_ns` of `pid`, if one is predicted.
pub fn kill_in(kills: &Kills, pid: u32, start_ns: u64, now_ns: u64) -> Option<(f64, Reason, u64)> {
    let (at, reason) = kills.deadline(pid, start_ns)?;
    Some(((at as f64 - now_ns as f64) / 1e6, reason, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_once_a_second_before_and_takes_spaced_stacks() {
        let mut d = Deadlines::default();
        let at = 10_000_000_000;
        let due = d.check(7, at, Reason::GunicornTimeout, at - 2_000_000_000, || "GET /x".into());
        assert!(due.warning.is_none() && !due.snapshot);
        let due = d.check(7, at, Reason::GunicornTimeout, at - 900_000_000, || "GET /x".into());
        assert_eq!(due.warning.as_deref(), Some("GET /x is 0.9 s from gunicorn's worker timeout: its worker is about to be killed"));
        assert!(due.snapshot);
        d.add_snapshot(7, at - 900_000_000, Vec::new());
        let due = d.check(7, at, Reason::GunicornTimeout, at - 850_000_000, || unreachable!("warned once"));
        assert!(due.warning.is_none() && !due.snapshot, "50 ms after the last stack");
        assert!(d.check(7, at, Reason::GunicornTimeout, at - 800_000_000, String::new).snapshot);
        assert_eq!(d.done(7).len(), 1);
        assert!(d.done(7).is_empty());
    }
}
