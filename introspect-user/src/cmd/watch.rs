//! `introspect watch`: a live watch whose JSON lines go to stdout, warnings to stderr, and, when
//! asked, every event to a recording and the slow requests' profiles to a flame graph.
use std::{
    fs::File,
    io::{self, BufWriter},
};

use anyhow::Context as _;

use crate::{
    cli::WatchArgs,
    event::recording,
    output::{
        Sink, Stderr,
        flame::{FlameOut, FlameSink},
        json::JsonLines,
    },
    run::live::{self, Session},
};

pub fn run(args: WatchArgs) -> anyhow::Result<()> {
    let mut session = Session::new(args.target, args.reporting, args.duration);
    session.keep_query = args.keep_query;
    session.bpf_stats = args.bpf_stats;
    session.without = args.without;
    session.poll_interval = args.poll_interval;
    session.kill_timeout = args.servers.kill_timeout;
    session.interrupt_before = args.servers.interrupt_before;
    session.interrupt_dry_run = args.servers.interrupt_dry_run;
    session.try_write = args.servers.try_write;
    session.sql_capture = args.sql.sql_capture_bytes;
    session.sql_literals = args.sql.sql_literals;
    session.pg_dsn = args.sql.pg_dsn.clone();
    let mut sinks: Vec<Box<dyn Sink>> = vec![Box::new(Stderr), Box::new(JsonLines::new(BufWriter::new(io::stdout().lock()), session.clock))];
    if let Some(path) = &args.record {
        let file = BufWriter::new(File::create(path).with_context(|| format!("creating {}", path.display()))?);
        sinks.push(Box::new(recording::Writer::new(Box::new(file), session.clock.realtime_minus_mono())?));
    }
    if let Some(path) = &args.flamegraph {
        sinks.push(Box::new(FlameSink::new(FlameOut::svg(path)?)));
    }
    live::watch(&session, sinks)
}
