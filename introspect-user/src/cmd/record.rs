//! `introspect record`: a watch for a fixed time whose outputs land in a directory: the JSON
//! lines, the summary, and flame graphs of the slow requests (all, on-CPU, off-CPU, per route).
use std::{
    fs::{self, File},
    io::BufWriter,
};

use anyhow::Context as _;

use crate::{
    cli::RecordArgs,
    output::{
        Sink, Stderr,
        flame::{FlameOut, FlameSink},
        json::{JsonLines, SummaryFile},
    },
    run::live::{self, Session},
};

pub fn run(args: RecordArgs) -> anyhow::Result<()> {
    fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let events_path = args.out.join("events.jsonl");
    let events = File::create(&events_path).with_context(|| format!("creating {}", events_path.display()))?;
    let mut session = Session::new(args.target, args.reporting, Some(args.duration));
    session.keep_query = args.keep_query;
    session.kill_timeout = args.servers.kill_timeout;
    let sinks: Vec<Box<dyn Sink>> = vec![
        Box::new(Stderr),
        Box::new(JsonLines::new(BufWriter::new(events), session.clock)),
        Box::new(SummaryFile::new(args.out.join("summary.json"), session.clock)),
        Box::new(FlameSink::new(FlameOut::Dir(args.out.clone()))),
    ];
    live::watch(&session, sinks)?;
    eprintln!("introspect: wrote {0}/events.jsonl and {0}/summary.json", args.out.display());
    Ok(())
}
