//! `introspect replay`: a recording through the userspace pipeline, no kernel involved.
use std::{
    fs::File,
    io::{self, BufRead, BufReader, Write},
};

use crate::{
    UsageError,
    cli::ReplayArgs,
    clock::Clock,
    event::recording::{Reader, RecordingError},
    output::json::JsonLines,
    run::pipeline::{Config, NotLive, Pipeline},
};

pub fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let file = File::open(&args.file).map_err(|e| UsageError(format!("cannot open {}: {e}", args.file.display())))?;
    let cfg = Config {
        threshold_ns: args.reporting.threshold().as_nanos() as u64,
        all: args.reporting.all,
        sample_hz: args.reporting.sample_hz(args.reporting.profile_all),
        profile_all: args.reporting.profile_all,
        interrupt: None,
        n_plus_one: args.reporting.n_plus_one,
    };
    replay(BufReader::new(file), &args.file.display().to_string(), cfg, io::BufWriter::new(io::stdout().lock()))
}

/// Feeds a recording through the pipeline, writing what `watch` would have written.
pub fn replay<R: BufRead, W: Write>(input: R, name: &str, cfg: Config, out: W) -> anyhow::Result<()> {
    let reader = Reader::new(input, name).map_err(|e| match e {
        RecordingError::NoHeader(_) | RecordingError::Version { .. } => anyhow::Error::from(UsageError(e.to_string())),
        e => e.into(),
    })?;
    let clock = Clock::with_offset(reader.meta.realtime_minus_mono_ns);
    let mut pipeline = Pipeline::new(cfg, vec![Box::new(JsonLines::new(out, clock))]);
    let (mut first_ts, mut last_ts) = (None, 0);
    for ev in reader {
        let ev = ev?;
        let ts = ev.hdr().ts;
        let first = *first_ts.get_or_insert(ts);
        // Time stops at each threshold crossing before the event, as watch wakes for it live,
        // so inflight alerts come out where they would have.
        let mut now = last_ts.max(first);
        while let Some(c) = pipeline.next_crossing().filter(|&c| c < ts) {
            // Each tick reports every request crossed by then, so this ends.
            now = now.max(c);
            pipeline.tick(now, &mut NotLive)?;
        }
        pipeline.tick(ts, &mut NotLive)?;
        pipeline.event(ev, &mut NotLive)?;
        last_ts = last_ts.max(ts);
    }
    pipeline.counts.duration_s = (last_ts - first_ts.unwrap_or(last_ts)) as f64 / 1e9;
    pipeline.finish(last_ts)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{fs, path::PathBuf};

    use super::*;

    /// Golden replays: recorded kernel event streams from real servers, and the JSON lines they
    /// must produce. `BLESS=1 cargo test` rewrites the expected files after a deliberate change.
    #[test]
    fn recorded_streams_replay_to_their_expected_output() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/replay");
        let mut checked = 0;
        for entry in fs::read_dir(&dir).expect("tests/replay") {
            let path = entry.expect("entry").path();
            if path.extension().is_none_or(|e| e != "recording") {
                continue;
            }
            let cfg =
                Config { threshold_ns: 500_000_000, all: true, sample_hz: 99, profile_all: false, interrupt: None, n_plus_one: Default::default() };
            let mut out = Vec::new();
            replay(BufReader::new(File::open(&path).expect("open")), "fixture", cfg, &mut out).expect("replay");
            let expected_path = path.with_extension("expected.jsonl");
            if std::env::var_os("BLESS").is_some() {
                fs::write(&expected_path, &out).expect("bless");
            }
            let expected = fs::read_to_string(&expected_path).unwrap_or_else(|_| panic!("{} missing; run with BLESS=1", expected_path.display()));
            let got = String::from_utf8_lossy(&out);
            for (n, (g, e)) in got.lines().zip(expected.lines()).enumerate() {
                assert_eq!(g, e, "{} line {}", path.display(), n + 1);
            }
            assert_eq!(got.lines().count(), expected.lines().count(), "{}: line count", path.display());
            checked += 1;
        }
        assert!(checked > 0, "no recordings in {}", dir.display());
    }
}
