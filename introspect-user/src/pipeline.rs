//! The userspace pipeline, free of aya: decoded events in, JSON lines out. `watch` feeds it from
//! the ring buffer, `replay` from a recording; both produce the same output for the same events.
use std::io::{self, Write};

use std::collections::HashMap;

use crate::{
    assemble::{Assembler, Inflight, Request},
    breakdown::{OffCpu, Timeline},
    flame::Flames,
    route,
    profile::Profiles,
    pystack::Frame,
    event::{Event, Hdr},
    sink::{JsonSink, SummaryCounts},
    summary::Summary,
};

#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub threshold_ns: u64,
    /// Report every request, not only slow ones.
    pub all: bool,
    /// On-CPU sampling frequency of slow requests' threads.
    pub sample_hz: u64,
}

/// What only the live host can do for the pipeline.
pub trait Live {
    /// A serving thread's wait still in progress (from the kernel).
    fn open_wait(&mut self, tid: u32) -> Option<OffCpu>;
    /// A request just crossed the threshold: start capturing its thread's stacks, and return its
    /// stack right now.
    fn slow(&mut self, request: &Inflight) -> Option<SlowStart>;
    /// A slow request ended: stop capturing its thread.
    fn done(&mut self, pid: u32, tid: u32);
}

/// A slow request's thread when capture started.
pub struct SlowStart {
    pub stack: Vec<Frame>,
    /// The thread is off the CPU since then (so its stack is that wait's stack).
    pub off_cpu_since: Option<u64>,
}

/// For replays: nothing is live.
pub struct NotLive;

impl Live for NotLive {
    fn open_wait(&mut self, _tid: u32) -> Option<OffCpu> {
        None
    }
    fn slow(&mut self, _request: &Inflight) -> Option<SlowStart> {
        None
    }
    fn done(&mut self, _pid: u32, _tid: u32) {}
}

pub struct Pipeline<W: Write> {
    cfg: Config,
    asm: Assembler,
    summary: Summary,
    sink: JsonSink<W>,
    recorder: Option<Box<dyn Write>>,
    timeline: Timeline,
    profiles: Profiles,
    /// Profiles of slow requests for flame graphs, when asked for.
    flames: Option<Flames>,
    /// Warnings go to the sink only (not stderr).
    quiet: bool,
    /// Threads of requests that crossed the threshold, and their stack at that moment.
    slow: HashMap<u32, Option<Vec<Frame>>>,
    last_forget_ns: u64,
    pub counts: SummaryCounts,
    requests: Vec<Request>,
    inflight: Vec<Inflight>,
}

impl<W: Write> Pipeline<W> {
    pub fn new(cfg: Config, sink: JsonSink<W>) -> Self {
        Self {
            cfg,
            asm: Assembler::new(cfg.threshold_ns),
            summary: Summary::default(),
            sink,
            recorder: None,
            timeline: Timeline::default(),
            profiles: Profiles::new(cfg.sample_hz),
            flames: None,
            quiet: false,
            slow: HashMap::new(),
            last_forget_ns: 0,
            counts: SummaryCounts::default(),
            requests: Vec::new(),
            inflight: Vec::new(),
        }
    }

    /// Writes every event it sees, as JSON lines, for `introspect replay`.
    pub fn record_to(&mut self, w: Box<dyn Write>) {
        self.recorder = Some(w);
    }

    /// Collect slow requests' profiles for flame graphs.
    pub fn collect_flames(&mut self) {
        self.flames = Some(Flames::default());
    }

    pub fn take_flames(&mut self) -> Option<Flames> {
        self.flames.take()
    }

    /// The per-route table so far.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    pub fn assembler(&mut self) -> &mut Assembler {
        &mut self.asm
    }

    fn record(&mut self, ev: &Event) -> io::Result<()> {
        if let Some(rec) = self.recorder.as_mut() {
            serde_json::to_writer(&mut *rec, ev).map_err(io::Error::other)?;
            rec.write_all(b"\n")?;
        }
        Ok(())
    }

    pub fn event(&mut self, ev: &Event, live: &mut dyn Live) -> io::Result<()> {
        self.record(ev)?;
        // Replays: capture started here in the live run.
        if let Event::Slow { hdr, stack, off_cpu_since } = ev
            && self.slow.get(&hdr.tid).is_none_or(Option::is_none)
        {
            self.profiles.start(hdr.tid);
            if let Some(since) = off_cpu_since {
                self.profiles.off_cpu_from(hdr.tid, *since, stack.clone());
            }
            self.slow.insert(hdr.tid, Some(stack.clone()));
        }
        if let Event::Fork { .. } = ev {
            self.counts.processes_followed += 1;
        }
        self.timeline.observe(ev);
        self.profiles.observe(ev);
        self.asm.observe(ev, &mut self.requests);
        for r in self.requests.drain(..) {
            let slow = r.duration_ns() >= self.cfg.threshold_ns;
            let (from, to) = (r.start_ns + r.queue_ns, r.end_ns);
            // Only reported requests need their whole breakdown; the summary needs on-CPU time.
            let detail = (slow || self.cfg.all).then(|| self.timeline.detail(r.tid, from, to, r.queue_ns, None));
            let on_cpu_ms = match &detail {
                Some(d) => d.breakdown.on_cpu,
                None => self.timeline.on_cpu_ms(r.tid, from, to),
            };
            self.summary.record(&r, slow, (on_cpu_ms * 1e6) as u64);
            self.counts.requests += 1;
            // A request that crossed the threshold while running: its stacks end with it.
            let (stack, profile) = match self.slow.remove(&r.tid) {
                Some(stack) => {
                    live.done(r.pid, r.tid);
                    (stack, self.profiles.finish(r.tid))
                }
                None => (None, None),
            };
            if let (Some(flames), Some(p)) = (self.flames.as_mut(), profile.as_deref()) {
                flames.add(&r.method, &route::normalize(&r.path), p);
            }
            if let Some(detail) = detail {
                self.counts.reported += 1;
                self.sink.request(&r, &detail, stack.as_deref(), profile.as_deref())?;
            }
            self.timeline.forget_before(r.tid, r.end_ns);
        }
        Ok(())
    }

    /// Time passes: requests that crossed the threshold while running are reported now, with
    /// what their time went to so far; `live` tells a wait still going on and captures stacks.
    pub fn tick(&mut self, now_ns: u64, live: &mut dyn Live) -> io::Result<()> {
        self.asm.tick(now_ns, &mut self.inflight);
        let mut crossed = std::mem::take(&mut self.inflight);
        for i in crossed.drain(..) {
            self.counts.inflight += 1;
            let open = live.open_wait(i.tid);
            let detail = self.timeline.detail(i.tid, i.start_ns + i.queue_ns, now_ns, i.queue_ns, open.as_ref());
            self.profiles.start(i.tid);
            let stack = match live.slow(&i) {
                Some(s) => {
                    self.counts.stacks.snapshots += 1;
                    if let Some(since) = s.off_cpu_since {
                        // A wait already in progress: weighted by its whole length when it ends.
                        self.profiles.off_cpu_from(i.tid, since, s.stack.clone());
                    }
                    let hdr = Hdr { tgid: i.pid, tid: i.tid, ts: now_ns };
                    self.record(&Event::Slow { hdr, stack: s.stack.clone(), off_cpu_since: s.off_cpu_since })?;
                    Some(s.stack)
                }
                None => None,
            };
            self.sink.inflight(&i, &detail, stack.as_deref())?;
            self.slow.insert(i.tid, stack);
        }
        // Keep the allocation for the next tick.
        self.inflight = crossed;
        // Waits of threads whose requests never completed are kept for 10 minutes at most.
        if now_ns.saturating_sub(self.last_forget_ns) > 1_000_000_000 {
            self.last_forget_ns = now_ns;
            self.timeline.forget_all_before(now_ns.saturating_sub(600_000_000_000));
        }
        self.sink.flush()?;
        if let Some(rec) = self.recorder.as_mut() {
            rec.flush()?;
        }
        Ok(())
    }

    /// When the next open request will cross the threshold, if one is open.
    pub fn next_crossing(&self) -> Option<u64> {
        self.asm.next_crossing()
    }

    pub fn set_quiet(&mut self, quiet: bool) {
        self.quiet = quiet;
    }

    pub fn warning(&mut self, now_ns: u64, message: &str) -> io::Result<()> {
        if !self.quiet {
            eprintln!("introspect: warning: {message}");
        }
        self.sink.warning(now_ns, message)
    }

    pub fn finish(&mut self, now_ns: u64) -> io::Result<()> {
        self.asm.close();
        self.counts.open_at_exit = self.asm.stats.open_at_exit;
        self.counts.non_http = self.asm.stats.non_http_phases;
        self.counts.stacks.oncpu_samples = self.profiles.oncpu_samples;
        self.counts.stacks.offcpu_stacks = self.profiles.offcpu_stacks;
        let rows = self.summary.rows();
        self.sink.summary(now_ns, &self.counts, &rows)?;
        self.sink.flush()?;
        if let Some(rec) = self.recorder.as_mut() {
            rec.flush()?;
        }
        Ok(())
    }
}
