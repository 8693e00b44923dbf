//! Profiles of slow requests: the stacks their thread was sampled in while running (CPU-clock
//! samples, each worth one sampling period) and the stacks it left the CPU in, weighted by how
//! long it stayed off.
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::{event::Event, stacks::Frame};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfileEntry {
    pub stack: Vec<Frame>,
    pub on_cpu_ms: f64,
    pub off_cpu_ms: f64,
    pub samples: u64,
}

#[derive(Default)]
struct Acc {
    by_stack: HashMap<Vec<Frame>, (u64, u64, u64)>,
    /// The stack of the thread's current off-CPU interval, by its start.
    off: Option<(u64, Vec<Frame>)>,
}

/// How many stacks a profile lists (the heaviest).
const MAX_STACKS: usize = 50;

pub struct Profiles {
    threads: HashMap<u32, Acc>,
    period_ns: u64,
    pub oncpu_samples: u64,
    pub offcpu_stacks: u64,
}

fn ms(ns: u64) -> f64 {
    (ns as f64 / 1e3).round() / 1e3
}

impl Profiles {
    /// `hz`: the CPU-clock sampling frequency (each on-CPU sample stands for 1/hz seconds).
    pub fn new(hz: u64) -> Self {
        Self { threads: HashMap::new(), period_ns: 1_000_000_000 / hz.max(1), oncpu_samples: 0, offcpu_stacks: 0 }
    }

    /// A request on `tid` turned slow: its stacks count from now.
    pub fn start(&mut self, tid: u32) {
        self.threads.entry(tid).or_default();
    }

    /// The thread has been off the CPU since `out_ts`, in `stack`.
    pub fn off_cpu_from(&mut self, tid: u32, out_ts: u64, stack: Vec<Frame>) {
        if let Some(acc) = self.threads.get_mut(&tid) {
            acc.off = Some((out_ts, stack));
        }
    }

    pub fn observe(&mut self, ev: &Event) {
        match ev {
            // A stack at a fatal signal belongs to the kill, not to the profile.
            Event::Stack { hdr, on_cpu, frames, at_signal: false, .. } => {
                let Some(acc) = self.threads.get_mut(&hdr.tid) else { return };
                if *on_cpu {
                    self.oncpu_samples += 1;
                    let e = acc.by_stack.entry(frames.clone()).or_default();
                    e.0 += self.period_ns;
                    e.2 += 1;
                } else {
                    self.offcpu_stacks += 1;
                    acc.off = Some((hdr.ts, frames.clone()));
                }
            }
            Event::OffCpu { hdr, out_ts, .. } => {
                let Some(acc) = self.threads.get_mut(&hdr.tid) else { return };
                if let Some((ts, frames)) = acc.off.take()
                    && ts == *out_ts
                {
                    acc.by_stack.entry(frames).or_default().1 += hdr.ts.saturating_sub(*out_ts);
                }
            }
            _ => {}
        }
    }

    /// The request on `tid` ended: its profile, heaviest stacks first.
    pub fn finish(&mut self, tid: u32) -> Option<Vec<ProfileEntry>> {
        let acc = self.threads.remove(&tid)?;
        let mut out: Vec<ProfileEntry> = acc
            .by_stack
            .into_iter()
            .map(|(stack, (on, off, samples))| ProfileEntry { stack, on_cpu_ms: ms(on), off_cpu_ms: ms(off), samples })
            .collect();
        out.sort_by(|a, b| (b.on_cpu_ms + b.off_cpu_ms).total_cmp(&(a.on_cpu_ms + a.off_cpu_ms)));
        out.truncate(MAX_STACKS);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        event::{Hdr, WaitFacts},
        stacks::FrameKind,
    };

    fn frame(f: &str) -> Vec<Frame> {
        vec![Frame { function: f.into(), file: "app.py".into(), line: Some(1), kind: FrameKind::Python }]
    }

    fn stack(tid: u32, ts: u64, on_cpu: bool, f: &str) -> Event {
        Event::Stack { hdr: Hdr { tgid: 1, tid, ts }, on_cpu, at_signal: false, kstack: -1, ustack: -1, raw: Vec::new(), frames: frame(f) }
    }

    #[test]
    fn weights_samples_and_off_cpu_time() {
        let mut p = Profiles::new(100);
        // Not started: ignored.
        p.observe(&stack(7, 1, true, "early"));
        p.start(7);
        for i in 0..30 {
            p.observe(&stack(7, 10 + i, true, "burn"));
        }
        p.observe(&stack(7, 1_000, false, "sleep"));
        p.observe(&Event::OffCpu {
            hdr: Hdr { tgid: 1, tid: 7, ts: 301_001_000 },
            out_ts: 1_000,
            wake_ts: 301_000_000,
            state: 1,
            sys: None,
            facts: WaitFacts::default(),
        });
        let prof = p.finish(7).unwrap();
        assert_eq!(prof.len(), 2);
        assert_eq!((prof[0].stack[0].function.as_str(), prof[0].off_cpu_ms), ("sleep", 301.0));
        assert_eq!((prof[1].stack[0].function.as_str(), prof[1].on_cpu_ms, prof[1].samples), ("burn", 300.0, 30));
        assert!(p.finish(7).is_none());
    }
}
