//! The userspace pipeline, free of aya: decoded events in, JSON lines out. `watch` feeds it from
//! the ring buffer, `replay` from a recording; both produce the same output for the same events.
use std::io::{self, Write};

use crate::{
    assemble::{Assembler, Inflight, Request},
    breakdown::{OffCpu, Timeline},
    event::Event,
    sink::{JsonSink, SummaryCounts},
    summary::Summary,
};

#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub threshold_ns: u64,
    /// Report every request, not only slow ones.
    pub all: bool,
}

pub struct Pipeline<W: Write> {
    cfg: Config,
    asm: Assembler,
    summary: Summary,
    sink: JsonSink<W>,
    recorder: Option<Box<dyn Write>>,
    timeline: Timeline,
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

    pub fn assembler(&mut self) -> &mut Assembler {
        &mut self.asm
    }

    pub fn event(&mut self, ev: &Event) -> io::Result<()> {
        if let Some(rec) = self.recorder.as_mut() {
            serde_json::to_writer(&mut *rec, ev).map_err(io::Error::other)?;
            rec.write_all(b"\n")?;
        }
        if let Event::Fork { .. } = ev {
            self.counts.processes_followed += 1;
        }
        self.timeline.observe(ev);
        self.asm.observe(ev, &mut self.requests);
        for r in self.requests.drain(..) {
            let slow = r.duration_ns() >= self.cfg.threshold_ns;
            self.summary.record(&r, slow);
            self.counts.requests += 1;
            if slow || self.cfg.all {
                self.counts.reported += 1;
                let detail = self.timeline.detail(r.tid, r.start_ns + r.queue_ns, r.end_ns, r.queue_ns, None);
                self.sink.request(&r, &detail)?;
            }
            self.timeline.forget_before(r.tid, r.end_ns);
        }
        Ok(())
    }

    /// Time passes: requests that crossed the threshold while running are reported now, with
    /// what their time went to so far. `open_wait` tells a wait still going on (from the kernel).
    pub fn tick(&mut self, now_ns: u64, open_wait: &mut dyn FnMut(u32) -> Option<OffCpu>) -> io::Result<()> {
        self.asm.tick(now_ns, &mut self.inflight);
        for i in self.inflight.drain(..) {
            self.counts.inflight += 1;
            let open = open_wait(i.tid);
            let detail = self.timeline.detail(i.tid, i.start_ns + i.queue_ns, now_ns, i.queue_ns, open.as_ref());
            self.sink.inflight(&i, &detail)?;
        }
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

    pub fn warning(&mut self, now_ns: u64, message: &str) -> io::Result<()> {
        eprintln!("introspect: warning: {message}");
        self.sink.warning(now_ns, message)
    }

    pub fn finish(&mut self, now_ns: u64) -> io::Result<()> {
        self.asm.close();
        self.counts.open_at_exit = self.asm.stats.open_at_exit;
        self.counts.non_http = self.asm.stats.non_http_phases;
        let rows = self.summary.rows();
        self.sink.summary(now_ns, &self.counts, &rows)?;
        self.sink.flush()?;
        if let Some(rec) = self.recorder.as_mut() {
            rec.flush()?;
        }
        Ok(())
    }
}
