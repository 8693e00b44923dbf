//! Command-line interface (clap derive). Every flag is documented; long help ends with examples.
use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::sql::NPlusOne;

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
    /// Watch for a while and write events, a summary and flame graphs to a directory.
    #[command(after_long_help = RECORD_EXAMPLES)]
    Record(RecordArgs),
    /// Rebuild a flame graph from recorded events (events.jsonl), without root.
    Flamegraph(FlamegraphArgs),
    /// A live table of routes ranked by the time they consume.
    #[command(after_long_help = TOP_EXAMPLES)]
    Top(TopArgs),
    /// Print the current stack of every thread of a Python process (like `py-spy dump`).
    #[command(after_long_help = DUMP_EXAMPLES)]
    Dump(DumpArgs),
}

const RECORD_EXAMPLES: &str = "EXAMPLES:
    # One minute of a server on port 8000, every request profiled at 49 Hz; then open
    # out/all.svg (where the time went) and out/slow.svg (the requests over 500 ms):
    introspect record --port 8000 --duration 60s --out out

    # Only requests over 200 ms in events.jsonl and slow.svg (the graphs still cover all):
    introspect record --pid 4242 --threshold 200ms --duration 5m --out /tmp/run1

    # Only slow requests sampled and drawn, as `watch` does:
    introspect record --port 8000 --duration 60s --slow-only --out out";

const TOP_EXAMPLES: &str = "EXAMPLES:
    introspect top --port 8000
    # Keys: t total time, n count, c CPU share, p p99, s slow, e 5xx, k killed (routes sorted by);
    # d query shapes; f functions (all requests' CPU by Python function, sampled at 49 Hz); q quits.";

#[derive(Args, Debug)]
pub struct RecordArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub reporting: Reporting,
    #[command(flatten)]
    pub servers: Servers,
    #[command(flatten)]
    pub sql: SqlArgs,
    /// How long to record (e.g. 60s, 5m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Directory for events.jsonl, summary.json, all.svg, cpu.svg, offcpu.svg, slow.svg (with
    /// .folded files) and routes/*.svg (created if needed).
    #[arg(long)]
    pub out: PathBuf,
    /// Keep query strings in reported paths.
    #[arg(long)]
    pub keep_query: bool,
    /// Sample and draw only requests over the threshold (and report only those), as `watch`
    /// does: cheaper, but blind to fast pages that add up.
    #[arg(long)]
    pub slow_only: bool,
}

#[derive(Args, Debug)]
pub struct FlamegraphArgs {
    /// JSON lines written by `introspect watch` or `introspect record` (events.jsonl).
    pub events: PathBuf,
    /// Where to write the SVG.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Only this route (as in the summary: "GET /users/{id}" or "/users/{id}").
    #[arg(long)]
    pub route: Option<String>,
    /// Which time to draw.
    #[arg(long, value_enum, default_value = "wall")]
    pub kind: crate::output::flame::Kind,
    /// Write the folded stacks instead of an SVG.
    #[arg(long)]
    pub folded: bool,
}

#[derive(Args, Debug)]
pub struct TopArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub reporting: Reporting,
    #[command(flatten)]
    pub servers: Servers,
    #[command(flatten)]
    pub sql: SqlArgs,
    /// Refresh period.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Stop by itself after this long.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
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
    #[arg(long, conflicts_with_all = ["port", "socket"], required_unless_present_any = ["port", "socket"])]
    pub pid: Option<u32>,
    /// Watch the processes listening on this TCP port, and their descendants.
    #[arg(long, conflicts_with = "socket")]
    pub port: Option<u16>,
    /// Watch the processes listening on this Unix socket (uWSGI's `--socket PATH`, gunicorn's
    /// `--bind unix:PATH`), and their descendants.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<std::path::PathBuf>,
}

/// How the watched server kills its workers, and what introspect may do about it.
#[derive(Args, Debug, Clone)]
pub struct Servers {
    /// The server's worker timeout (gunicorn --timeout, uWSGI --harakiri), when it cannot be read
    /// from the master's command line (a gunicorn config file sets it).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub kill_timeout: Option<Duration>,
    /// INVASIVE, off by default: this long before the server kills a worker whose request runs
    /// too long, make that request raise TimeoutError inside Python (written into the thread's
    /// state, as PyThreadState_SetAsyncExc does), so the app rolls back and answers with its own
    /// error page, and the worker lives. The only option with which introspect writes to a
    /// watched process; without it, it cannot.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub interrupt_before: Option<Duration>,
    /// With --interrupt-before: report what would be interrupted, write nothing.
    #[arg(long, requires = "interrupt_before")]
    pub interrupt_dry_run: bool,
    /// Check, once the watch runs, whether writing to the watched processes is possible, and say
    /// so in a warning (for tests).
    #[arg(long, hide = true)]
    pub try_write: bool,
}

#[derive(Args, Debug, Clone)]
pub struct Reporting {
    /// Report completed requests at least this slow, and running requests as they cross it
    /// [default: 500ms]. `record` reports every request unless this is given.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub threshold: Option<Duration>,
    /// Report every completed request, not only slow ones.
    #[arg(long)]
    pub all: bool,
    /// On-CPU sampling frequency (Hz). Profiling all traffic (`record`, `watch --profile-all`):
    /// of every thread of the watched processes, default 49. Otherwise: of a slow request's
    /// thread from the moment it crosses the threshold until it ends, default 99. 0: no
    /// on-CPU samples.
    #[arg(long)]
    pub sample_hz: Option<u64>,
    /// Profile all traffic: sample every thread of the watched processes (on-CPU, and their
    /// waits) and give every reported request its `profile`, not only slow ones. `record` does
    /// this unless `--slow-only`.
    #[arg(long)]
    pub profile_all: bool,
    /// Flag an N+1 pattern when one request runs the same statement shape with different values
    /// at least COUNT times, [and together at least MIN_TOTAL] (e.g. `10,50ms`).
    #[arg(long, default_value = "5", value_name = "COUNT[,MIN_TOTAL]")]
    pub n_plus_one: NPlusOne,
}

impl Reporting {
    /// `--sample-hz`, or its default: 49 profiling all traffic (every thread), else 99 (a slow
    /// request's thread).
    pub fn sample_hz(&self, profile_all: bool) -> u64 {
        self.sample_hz.unwrap_or(if profile_all { 49 } else { 99 })
    }

    /// `--threshold`, or its default.
    pub fn threshold(&self) -> Duration {
        self.threshold.unwrap_or(Duration::from_millis(500))
    }
}

#[derive(Args, Debug, Clone)]
pub struct SqlArgs {
    /// Bytes of each write to a database (PostgreSQL, MySQL, MariaDB) the kernel copies, up to
    /// 8192: longer statements are reported `truncated`. 0: database traffic is not looked at.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u16).range(0..=8192))]
    pub sql_capture_bytes: u16,
    /// Keep SQL statements' literals (the values in them) in outputs and recordings. Off by
    /// default: they may hold personal data and secrets.
    #[arg(long)]
    pub sql_literals: bool,
    /// A PostgreSQL server on another host: follow its sessions through `pg_stat_activity` (a
    /// role with `pg_monitor`; `host=… port=… user=… dbname=…` or a `postgres://` URL). Its
    /// backends' lock waits, who held the locks, and their other waits are sampled every 10 ms
    /// and matched to the app's connections by client address and port. Without it,
    /// PostgreSQL servers on this host are followed through the scheduler (exact, no login).
    #[arg(long, value_name = "DSN")]
    pub pg_dsn: Option<String>,
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub reporting: Reporting,
    #[command(flatten)]
    pub servers: Servers,
    #[command(flatten)]
    pub sql: SqlArgs,
    /// Stop by itself after this long (e.g. 30s, 5m). Without it, runs until Ctrl-C or SIGTERM.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Keep query strings in reported paths (they are removed by default: they may carry tokens).
    #[arg(long)]
    pub keep_query: bool,
    /// Also write every decoded kernel event to this file, for `introspect replay`.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Have the kernel account each eBPF program's run time and report it in the summary
    /// (`agent.bpf`); adds two clock reads per program run.
    #[arg(long)]
    pub bpf_stats: bool,
    /// Leave these eBPF programs unattached (comma-separated names, as in the summary's
    /// agent.bpf): for measuring what each costs. What they measure goes missing.
    #[arg(long, value_delimiter = ',', hide = true)]
    pub without: Vec<String>,
    /// At exit, write a flame graph (SVG) of the slow requests' profiles, on-CPU and off-CPU.
    #[arg(long, value_name = "FILE")]
    pub flamegraph: Option<PathBuf>,
    /// Drain the ring buffer at this fixed interval (default: every 10 ms while busy, up to a
    /// quarter of the threshold or 100 ms while quiet, and right when a request crosses it).
    #[arg(long, value_parser = humantime::parse_duration, hide = true)]
    pub poll_interval: Option<Duration>,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// A recording made with `introspect watch --record FILE`.
    pub file: PathBuf,
    #[command(flatten)]
    pub reporting: Reporting,
}
