//! Command-line interface (clap derive). Every flag is documented; long help ends with examples.
use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "introspect", version, about = "Which requests of a Python web app are slow, and why — seen from outside, with eBPF.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Watch a server's requests live and report the slow ones as JSON lines on stdout.
    #[command(after_long_help = WATCH_EXAMPLES)]
    Watch(WatchArgs),
    /// Replay a recording made with `watch --record` through the same pipeline, without root.
    Replay(ReplayArgs),
    /// Print the current stack of every thread of a Python process (like `py-spy dump`).
    #[command(after_long_help = DUMP_EXAMPLES)]
    Dump(DumpArgs),
}

const DUMP_EXAMPLES: &str = "EXAMPLES:
    # Python stacks of every thread of a gunicorn worker:
    introspect dump --pid 4243

    # With kernel and innermost native frames, as JSON:
    introspect dump --pid 4243 --native --json | jq '.threads[].stack[0]'";

#[derive(Args, Debug)]
pub struct DumpArgs {
    /// The Python process.
    #[arg(long)]
    pub pid: u32,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Add kernel frames and the innermost native frame of threads blocked in a syscall.
    #[arg(long)]
    pub native: bool,
}

const WATCH_EXAMPLES: &str = "EXAMPLES:
    # Requests slower than 500 ms of the gunicorn master 4242 and all its workers:
    introspect watch --pid 4242

    # Every request to whatever listens on port 8000, for one minute:
    introspect watch --port 8000 --all --duration 1m

    # Slow requests' paths, live:
    introspect watch --port 8000 --threshold 200ms | jq -r 'select(.type==\"request\") | .path'";

#[derive(Args, Debug, Clone)]
pub struct Target {
    /// Watch this process and all its descendants, including children forked later (recycled
    /// workers).
    #[arg(long, conflicts_with = "port", required_unless_present = "port")]
    pub pid: Option<u32>,
    /// Watch the processes listening on this TCP port, and their descendants.
    #[arg(long)]
    pub port: Option<u16>,
}

#[derive(Args, Debug, Clone)]
pub struct Reporting {
    /// Report completed requests at least this slow, and running requests as they cross it.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub threshold: Duration,
    /// Report every completed request, not only slow ones.
    #[arg(long)]
    pub all: bool,
    /// On-CPU sampling frequency (Hz) of a slow request's thread, from the moment it crosses the
    /// threshold until it ends (0: no on-CPU samples).
    #[arg(long, default_value_t = 99)]
    pub sample_hz: u64,
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub reporting: Reporting,
    /// Stop by itself after this long (e.g. 30s, 5m). Without it, runs until Ctrl-C or SIGTERM.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Keep query strings in reported paths (they are removed by default: they may carry tokens).
    #[arg(long)]
    pub keep_query: bool,
    /// Also write every decoded kernel event to this file, for `introspect replay`.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// How often the ring buffer is drained; bounds the delay of `inflight` alerts.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration, hide = true)]
    pub poll_interval: Duration,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// A recording made with `introspect watch --record FILE`.
    pub file: PathBuf,
    #[command(flatten)]
    pub reporting: Reporting,
}
