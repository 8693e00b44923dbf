//! `introspect record`: a watch for a fixed time whose outputs land in a directory: the JSON
//! lines, the summary, and flame graphs of all traffic (on- and off-CPU, on-CPU, off-CPU, per
//! route) and of the slow requests.
use std::{fs, io::BufWriter};

use anyhow::Context as _;

use crate::{
    cli::RecordArgs,
    output::{
        Sink, Stderr,
        files::OutDir,
        flame::{FlameOut, FlameSink},
        json::{JsonLines, SummaryFile},
    },
    run::live::{self, Session},
};

pub fn run(mut args: RecordArgs) -> anyhow::Result<()> {
    // A profile of what the site did: every request sampled and, unless a threshold says which
    // are worth a line, reported.
    let profile_all = !args.slow_only;
    args.reporting.profile_all |= profile_all;
    args.reporting.all |= profile_all && args.reporting.threshold.is_none();
    fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    // Every output is opened now: the watch forbids opening files for writing once it runs.
    let dir = OutDir::open(&args.out)?;
    let events = dir.create("events.jsonl")?;
    let summary = dir.create("summary.json")?;
    let mut session = Session::new(args.target, args.reporting, Some(args.duration));
    let sampling = session.profile_all.then(|| sampling_note(session.sample_hz()));
    let flames = FlameOut::dir(dir, sampling)?;
    session.keep_query = args.keep_query;
    session.writable_dirs = flames.dirs();
    session.kill_timeout = args.servers.kill_timeout;
    session.interrupt_before = args.servers.interrupt_before;
    session.interrupt_dry_run = args.servers.interrupt_dry_run;
    session.try_write = args.servers.try_write;
    session.sql_capture = args.sql.sql_capture_bytes;
    session.sql_literals = args.sql.sql_literals;
    session.pg_dsn = args.sql.pg_dsn.clone();
    let sinks: Vec<Box<dyn Sink>> = vec![
        Box::new(Stderr),
        Box::new(JsonLines::new(BufWriter::new(events), session.clock)),
        Box::new(SummaryFile::new(summary, session.clock)),
        Box::new(FlameSink::new(flames)),
    ];
    live::watch(&session, sinks)?;
    eprintln!("introspect: wrote {0}/events.jsonl and {0}/summary.json", args.out.display());
    Ok(())
}

/// What the all-traffic graphs are made of, said under their titles.
pub fn sampling_note(hz: u64) -> String {
    format!(
        "on-CPU: every thread sampled at {hz} Hz. off-CPU: waits of {0} ms or more all counted, a shorter one with probability its length / {0} ms (weighing {0} ms), other switch-outs 1 in {1} (x{1}), preemptions 1 in {2} (x{2})",
        introspect_common::LONG_WAIT_NS / 1_000_000,
        introspect_common::SAMPLE_EVERY,
        introspect_common::PREEMPT_EVERY,
    )
}
