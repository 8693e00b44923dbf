//! Profiles of requests: the stacks their thread was sampled in while running (CPU-clock
//! samples, each worth one sampling period) and the stacks it left the CPU in, weighted by how
//! long it stayed off. [`Profiles`]: of slow requests, from arming their thread at the
//! threshold. [`Sampled`]: of every request, from the all-traffic profiler.
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::{
    event::{Event, SampleWeight},
    stacks::Frame,
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfileEntry {
    pub stack: Vec<Frame>,
    pub on_cpu_ms: f64,
    pub off_cpu_ms: f64,
    pub samples: u64,
}

#[derive(Default)]
struct Acc {
    by_stack: ByStack,
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
            Event::Stack { hdr, on_cpu, frames, at_signal: false, sampled: None, .. } => {
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
        let mut out = entries(acc.by_stack);
        out.truncate(MAX_STACKS);
        Some(out)
    }
}

/// The (on-CPU ns, off-CPU ns, samples) of each stack (a fast hash: every sample hashes its
/// whole stack).
type ByStack = foldhash::HashMap<Vec<Frame>, (u64, u64, u64)>;

fn entries(by_stack: ByStack) -> Vec<ProfileEntry> {
    let mut out: Vec<ProfileEntry> =
        by_stack.into_iter().map(|(stack, (on, off, samples))| ProfileEntry { stack, on_cpu_ms: ms(on), off_cpu_ms: ms(off), samples }).collect();
    out.sort_by(|a, b| (b.on_cpu_ms + b.off_cpu_ms).total_cmp(&(a.on_cpu_ms + a.off_cpu_ms)).then_with(|| a.stack.cmp(&b.stack)));
    out
}

/// Which request a thread is serving as one of its samples arrives (by its start), if any.
pub type Serving = Option<u64>;

/// An off-CPU stack taken as its thread left the CPU, until its interval ends.
struct Leaving {
    out_ts: u64,
    every: u32,
    frames: Vec<Frame>,
    serving: Serving,
}

/// What the all-traffic profiler saw, in counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SampledCounts {
    /// On-CPU samples of threads serving a request.
    pub request_samples: u64,
    /// On-CPU samples of the watched processes' threads serving none (idle loops, masters,
    /// background threads): the `(no request)` profile.
    pub no_request_samples: u64,
    /// Off-CPU stacks captured (each standing for one wait, or for `every` of them).
    pub offcpu_stacks: u64,
}

/// Every request's profile from the all-traffic profiler: samples of a thread go to the
/// request it is serving at that instant, or to `(no request)`.
pub struct Sampled {
    period_ns: u64,
    /// By thread: the request (its start) its stacks so far belong to.
    threads: HashMap<u32, (u64, ByStack)>,
    leaving: HashMap<u32, Leaving>,
    no_request: ByStack,
    pub counts: SampledCounts,
}

impl Sampled {
    pub fn new(hz: u64) -> Self {
        Self {
            period_ns: 1_000_000_000 / hz.max(1),
            threads: HashMap::new(),
            leaving: HashMap::new(),
            no_request: ByStack::default(),
            counts: SampledCounts::default(),
        }
    }

    fn add(&mut self, tid: u32, serving: Serving, frames: &[Frame], on: u64, off: u64, samples: u64) {
        let acc = match serving {
            Some(start) => {
                let t = self.threads.entry(tid).or_insert_with(|| (start, ByStack::default()));
                if t.0 != start {
                    // A request whose end was never seen (or a sample raced its start).
                    *t = (start, ByStack::default());
                }
                &mut t.1
            }
            None => &mut self.no_request,
        };
        // A stack seen before (the usual case) is not copied.
        let e = match acc.get_mut(frames) {
            Some(e) => e,
            None => acc.entry(frames.to_vec()).or_default(),
        };
        e.0 += on;
        e.1 += off;
        e.2 += samples;
    }

    /// `ev` with the request its thread serves now (`serving`, for samples and off-CPU ends).
    pub fn observe(&mut self, ev: &Event, serving: Serving) {
        match ev {
            Event::Stack { hdr, on_cpu, frames, at_signal: false, sampled: Some(w), .. } => self.stack(hdr.tid, hdr.ts, *on_cpu, frames, *w, serving),
            Event::OffCpu { hdr, out_ts, .. } => {
                if let Some(l) = self.leaving.remove(&hdr.tid)
                    && l.out_ts == *out_ts
                {
                    let off = hdr.ts.saturating_sub(*out_ts) * u64::from(l.every);
                    self.add(hdr.tid, l.serving, &l.frames, 0, off, 0);
                }
            }
            _ => {}
        }
    }

    fn stack(&mut self, tid: u32, ts: u64, on_cpu: bool, frames: &[Frame], w: SampleWeight, serving: Serving) {
        if on_cpu {
            match serving {
                Some(_) => self.counts.request_samples += 1,
                None => self.counts.no_request_samples += 1,
            }
            self.add(tid, serving, frames, self.period_ns, 0, 1);
            return;
        }
        self.counts.offcpu_stacks += 1;
        match w.wait_ns {
            Some(wait) => self.add(tid, serving, frames, 0, wait * u64::from(w.every), 0),
            None => {
                self.leaving.insert(tid, Leaving { out_ts: ts, every: w.every, frames: frames.to_vec(), serving });
            }
        }
    }

    /// The request on `tid` that started at `start_ns` ended: its whole profile, heaviest stacks
    /// first (empty if no sample landed in it).
    pub fn finish(&mut self, tid: u32, start_ns: u64) -> Vec<ProfileEntry> {
        // Samples of a later request on the thread stay (a request's end can be found late).
        if self.threads.get(&tid).is_none_or(|(start, _)| *start != start_ns) {
            return Vec::new();
        }
        self.threads.remove(&tid).map(|(_, acc)| entries(acc)).unwrap_or_default()
    }

    /// The `(no request)` profile so far, heaviest first.
    pub fn no_request(&self) -> Vec<ProfileEntry> {
        entries(self.no_request.clone())
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
        vec![Frame { function: f.into(), file: "app.py".into(), line: Some(1), kind: FrameKind::Python, def_line: None }]
    }

    fn stack(tid: u32, ts: u64, on_cpu: bool, f: &str) -> Event {
        Event::Stack {
            hdr: Hdr { tgid: 1, tid, ts },
            on_cpu,
            at_signal: false,
            kstack: -1,
            ustack: -1,
            raw: Vec::new(),
            frames: frame(f),
            sampled: None,
        }
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

    fn sampled(tid: u32, ts: u64, on_cpu: bool, f: &str, wait_ns: Option<u64>, every: u32) -> Event {
        match stack(tid, ts, on_cpu, f) {
            Event::Stack { hdr, on_cpu, frames, .. } => Event::Stack {
                hdr,
                on_cpu,
                at_signal: false,
                kstack: -1,
                ustack: -1,
                raw: Vec::new(),
                frames,
                sampled: Some(SampleWeight { wait_ns, every }),
            },
            _ => unreachable!(),
        }
    }

    #[test]
    fn all_traffic_samples_go_to_the_request_served_then() {
        let mut s = Sampled::new(50);
        // Request A (start 100) on thread 7: two on-CPU samples, a 5 ms wait taken at its exit,
        // a sampled switch-out standing for 16 (2 µs each: 32 µs).
        s.observe(&sampled(7, 110, true, "render", None, 1), Some(100));
        s.observe(&sampled(7, 120, true, "render", None, 1), Some(100));
        s.observe(&sampled(7, 130, false, "query", Some(5_000_000), 1), Some(100));
        s.observe(&sampled(7, 140, false, "yield", None, 16), Some(100));
        s.observe(
            &Event::OffCpu { hdr: Hdr { tgid: 1, tid: 7, ts: 2_140 }, out_ts: 140, wake_ts: 2_100, state: 0, sys: None, facts: WaitFacts::default() },
            None,
        );
        // Armed stacks are not the all-traffic profile's.
        s.observe(&stack(7, 150, true, "armed"), Some(100));
        // Between requests, and another thread's.
        s.observe(&sampled(7, 160, true, "idle_loop", None, 1), None);
        s.observe(&sampled(9, 170, true, "other", None, 1), Some(150));
        let a = s.finish(7, 100);
        let got: Vec<(&str, f64, f64, u64)> = a.iter().map(|e| (e.stack[0].function.as_str(), e.on_cpu_ms, e.off_cpu_ms, e.samples)).collect();
        assert_eq!(got, vec![("render", 40.0, 0.0, 2), ("query", 0.0, 5.0, 0), ("yield", 0.0, 0.032, 0)]);
        // Thread 9's request is another one.
        assert!(s.finish(9, 100).is_empty());
        assert_eq!(s.finish(9, 150).len(), 1);
        let idle = s.no_request();
        assert_eq!((idle.len(), idle[0].stack[0].function.as_str(), idle[0].on_cpu_ms), (1, "idle_loop", 20.0));
        assert_eq!(s.counts, SampledCounts { request_samples: 3, no_request_samples: 1, offcpu_stacks: 2 });
    }
}
