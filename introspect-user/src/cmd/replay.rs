//! `introspect replay`: a recording through the userspace pipeline, no kernel involved.
use std::{
    fs::File,
    io::{self, BufRead, BufReader},
};

use anyhow::Context as _;

use crate::{
    UsageError,
    cli::ReplayArgs,
    clock::Clock,
    event::Event,
    pipeline::{Config, Pipeline},
    sink::JsonSink,
};

/// First line of a recording: how to turn its monotonic timestamps into wall-clock time.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Meta {
    pub introspect_recording: u32,
    pub realtime_minus_mono_ns: i128,
}

pub fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let file = File::open(&args.file).map_err(|e| UsageError(format!("cannot open {}: {e}", args.file.display())))?;
    let mut lines = BufReader::new(file).lines();
    let first = lines.next().transpose()?.unwrap_or_default();
    let meta: Meta = serde_json::from_str(&first)
        .map_err(|_| UsageError(format!("{} is not an introspect recording (no header line)", args.file.display())))?;
    let cfg = Config { threshold_ns: args.reporting.threshold.as_nanos() as u64, all: args.reporting.all };
    let sink = JsonSink::new(io::BufWriter::new(io::stdout().lock()), Clock::with_offset(meta.realtime_minus_mono_ns));
    let mut pipeline = Pipeline::new(cfg, sink);
    let (mut first_ts, mut last_ts) = (None, 0);
    for (n, line) in lines.enumerate() {
        let line = line?;
        let ev: Event = serde_json::from_str(&line).with_context(|| format!("{}:{}: not an event", args.file.display(), n + 2))?;
        let ts = ev.hdr().ts;
        first_ts.get_or_insert(ts);
        // Time advances with the events, so inflight alerts come out where they would have live.
        pipeline.tick(ts)?;
        pipeline.event(&ev)?;
        last_ts = last_ts.max(ts);
    }
    pipeline.counts.duration_s = (last_ts - first_ts.unwrap_or(last_ts)) as f64 / 1e9;
    pipeline.finish(last_ts)?;
    Ok(())
}
