//! `introspect record`: a watch for a fixed time whose outputs land in a directory: the JSON
//! lines, the summary, and flame graphs of the slow requests (all, on-CPU, off-CPU, per route).
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

pub fn run(args: RecordArgs) -> anyhow::Result<()> {
    fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    // Every output is opened now: the watch forbids opening files for writing once it runs.
    let dir = OutDir::open(&args.out)?;
    let events = dir.create("events.jsonl")?;
    let summary = dir.create("summary.json")?;
    let flames = FlameOut::dir(dir)?;
    let mut session = Session::new(args.target, args.reporting, Some(args.duration));
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
