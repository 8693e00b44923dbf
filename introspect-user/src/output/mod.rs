//! Outputs: everything the pipeline produces goes through one [`Sink`] trait, which each output
//! implements: the v1 JSON lines ([`json`]), flame graphs ([`flame`]), the live table of `top`
//! ([`top`]), the summary file of `record` ([`summary`]), warnings on stderr, and the recorder
//! (`event::recording`). A command picks its sinks; the pipeline feeds them all the same way.
pub mod files;
pub mod flame;
pub mod json;
pub mod route;
pub mod shapes;
pub mod summary;
pub mod top;

use std::io;

use serde::Serialize;
pub use summary::Summary;

use crate::{
    assemble::{Inflight, Request},
    breakdown::Detail,
    event::Event,
    kills::{Kill, Reason},
    run::deadlines::Running,
    sql::stats::Report,
    stacks::{Frame, profile::ProfileEntry},
};

/// A request that ended, as the pipeline hands it to the outputs (every one of them).
pub struct Completed<'a> {
    pub request: &'a Request,
    /// It took at least the threshold.
    pub slow: bool,
    /// Where its time went, when it is reported (slow, or every request with `--all`).
    pub detail: Option<&'a Detail>,
    /// Its stack when it crossed the threshold while running.
    pub stack: Option<&'a [Frame]>,
    /// ... and what its thread did from then on, heaviest stacks first; profiling all traffic,
    /// what it did from start to end, from the all-traffic samples (every request has one).
    pub profile: Option<&'a [ProfileEntry]>,
    /// Its worker was killed with it in flight.
    pub kill: Option<KillReport<'a>>,
    /// Its queries on database connections, when it made some and is reported.
    pub sql: Option<&'a Report>,
}

/// A request's kill, with its breakdown (always there, reported or not).
pub struct KillReport<'a> {
    pub kill: &'a Kill,
    pub detail: &'a Detail,
    /// Stacks taken as the predicted kill neared: (when, stack).
    pub before_kill: &'a [(u64, Vec<Frame>)],
}

/// A running request that just crossed the threshold.
pub struct Crossed<'a> {
    pub inflight: &'a Inflight,
    pub detail: &'a Detail,
    pub stack: Option<&'a [Frame]>,
    /// Time left before the server kills its worker (ms, negative when overdue), and who will.
    pub kill: Option<(f64, Reason)>,
    /// Its queries so far.
    pub sql: Option<&'a Report>,
}

/// What `--interrupt-before` did to a request.
pub struct Interrupted<'a> {
    pub pid: u32,
    pub tid: u32,
    pub method: &'a str,
    pub path: &'a str,
    pub start_ns: u64,
    /// When it was interrupted (or would have been).
    pub at_ns: u64,
    /// "raised", "uninterruptible", "not_attempted" or "dry_run".
    pub outcome: &'static str,
    /// Why it was not attempted.
    pub why: Option<&'a str>,
    /// The status the app answered with, once it raised.
    pub status: Option<u16>,
    /// The kill it was meant to prevent: when it was predicted, and whose.
    pub kill_at_ns: u64,
    pub kill_by: Option<Reason>,
}

/// The run so far: the per-route table and the counters.
pub struct State<'a> {
    pub now_ns: u64,
    pub summary: &'a Summary,
    pub counts: &'a Counts,
    /// Requests running past the threshold.
    pub running: &'a [Running],
}

/// An output. Every method has a do-nothing default: a sink implements what it uses.
pub trait Sink {
    /// Every event the pipeline processes, with what the live host added to it (the recorder).
    fn event(&mut self, _ev: &Event) -> io::Result<()> {
        Ok(())
    }

    fn request(&mut self, _r: &Completed<'_>) -> io::Result<()> {
        Ok(())
    }

    fn inflight(&mut self, _c: &Crossed<'_>) -> io::Result<()> {
        Ok(())
    }

    fn interrupted(&mut self, _i: &Interrupted<'_>) -> io::Result<()> {
        Ok(())
    }

    fn warning(&mut self, _now_ns: u64, _message: &str) -> io::Result<()> {
        Ok(())
    }

    /// After each drain of the kernel's events; `true` asks the watch to stop (`top`'s q).
    fn tick(&mut self, _state: &State<'_>) -> io::Result<bool> {
        Ok(false)
    }

    /// The run ended.
    fn finish(&mut self, _state: &State<'_>) -> io::Result<()> {
        Ok(())
    }

    /// Writes out what is buffered (after each drain, and at the end).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Warnings on stderr, for a person watching the terminal (stdout is data only).
pub struct Stderr;

impl Sink for Stderr {
    fn warning(&mut self, _now_ns: u64, message: &str) -> io::Result<()> {
        eprintln!("introspect: warning: {message}");
        Ok(())
    }
}

/// Counts that go into the `summary` line.
#[derive(Serialize, Clone, Debug, Default)]
pub struct Counts {
    pub requests: u64,
    pub reported: u64,
    pub inflight: u64,
    /// Requests whose worker was killed with them in flight (`killed` lines).
    #[serde(skip_serializing_if = "is_zero")]
    pub killed: u64,
    /// Requests `--interrupt-before` made raise before the server's kill.
    #[serde(skip_serializing_if = "is_zero")]
    pub interrupted: u64,
    pub dropped_events: u64,
    pub duration_s: f64,
    /// Requests still running when the watch ended (not counted in `requests`).
    pub open_at_exit: u64,
    pub processes_followed: u64,
    pub stacks: StackCounts,
    /// Kernel events processed.
    pub events: u64,
    /// What the agent itself cost.
    pub agent: AgentCost,
    /// Connections whose bytes were not HTTP/1 (TLS, HTTP/2, another protocol): not measured.
    pub non_http: u64,
    /// Requests a watched process forwarded to another watched one (uWSGI's `--http` router):
    /// reported once, by the process that served them, and counted here for the hop in front.
    #[serde(skip_serializing_if = "is_zero")]
    pub proxied: u64,
    /// The watched listeners' backlogs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<ListenerCounts>,
    /// The host's TCP ListenOverflows over the watch (connections a full accept queue dropped,
    /// on any socket of the host: the kernel does not count them per socket).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_listen_overflows: Option<u64>,
    /// Database traffic seen; left out when the watched processes spoke to no database.
    #[serde(skip_serializing_if = "SqlCounts::is_empty")]
    pub sql: SqlCounts,
    pub losses: Losses,
}

/// One listening socket's backlog over the watch.
#[derive(Serialize, Clone, Debug, Default)]
pub struct ListenerCounts {
    /// `unix:PATH`, or a TCP listener's `ADDR:PORT`.
    pub socket: String,
    /// The most connections seen waiting in it at once (Unix: counted from connects and
    /// accepts; TCP: sampled every 250 ms).
    pub backlog_peak: u64,
    /// Its `listen()` backlog (capped by net.core.somaxconn), as the kernel reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlog_max: Option<u32>,
    /// Unix: connections that entered its backlog (successful connects of any process).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connects: Option<u64>,
    /// Unix: connections workers took from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accepts: Option<u64>,
    /// Unix: connects refused because it was full (EAGAIN: uWSGI's "listen queue of socket …
    /// full").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<u64>,
}

/// What was seen on database connections over the whole watch.
#[derive(Serialize, Clone, Copy, Debug, Default)]
pub struct SqlCounts {
    pub queries: u64,
    /// ... made while their thread served no request (start-up, background work).
    pub outside_requests: u64,
    /// Sessions opened (start-up and authentication round trips).
    pub connects: u64,
    /// Connections that switched to TLS or GSS encryption: their statements cannot be seen.
    pub encrypted_connections: u64,
}

impl SqlCounts {
    fn is_empty(&self) -> bool {
        self.queries == 0 && self.connects == 0 && self.encrypted_connections == 0
    }
}

/// The agent's own cost over the whole watch.
#[derive(Serialize, Clone, Debug, Default)]
pub struct AgentCost {
    /// User and system CPU time of the agent process.
    pub cpu_ms: f64,
    pub max_rss_kib: u64,
    /// Per eBPF program (with `--bpf-stats`): runs and run time, in whatever process they ran.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bpf: Vec<BpfProgram>,
}

#[derive(Serialize, Clone, Debug, Default)]
pub struct BpfProgram {
    pub program: String,
    pub runs: u64,
    pub run_ms: f64,
}

/// Stack capture: all zero when no request was slow (fast requests are never sampled).
#[derive(Serialize, Clone, Copy, Debug, Default)]
pub struct StackCounts {
    /// Threads whose stacks were captured (once per slow request).
    pub threads_armed: u64,
    /// Stacks read from userspace as a request crossed the threshold.
    pub snapshots: u64,
    pub oncpu_samples: u64,
    pub offcpu_stacks: u64,
    /// The all-traffic profiler, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampled: Option<crate::stacks::profile::SampledCounts>,
}

/// Where the dropped events were lost.
#[derive(Serialize, Clone, Copy, Debug, Default)]
pub struct Losses {
    pub ringbuf_full: u64,
    pub map_full: u64,
    pub decode_errors: u64,
    /// Heads that could not be copied from user memory (the request is still measured).
    pub unreadable_heads: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}
