//! Sinks: the v1 JSON-lines contract on stdout (one object per line, `type` first).
use std::io::{self, Write};

use serde::Serialize;

use crate::{
    assemble::{EndReason, Inflight, Request},
    breakdown::{Breakdown, Detail, PeerWait, SyscallStat},
    profile::ProfileEntry,
    pystack::Frame,
    clock::Clock,
    summary::EndpointRow,
};

fn ms(ns: u64) -> f64 {
    (ns as f64 / 1e3).round() / 1e3
}

#[derive(Serialize)]
struct RequestLine<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    ts: String,
    pid: u32,
    tid: u32,
    comm: &'a str,
    method: &'a str,
    path: &'a str,
    status: Option<u16>,
    start_ts: String,
    duration_ms: f64,
    bytes_in: u64,
    bytes_out: u64,
    peer: Option<String>,
    queue_ms: f64,
    /// How the end was found: "complete" (the response's framing), "delimited" (next request,
    /// end of stream or close), "process_exit" (the worker died mid-request).
    end: &'static str,
    breakdown_ms: &'a Breakdown,
    net_peers: &'a [PeerWait],
    syscalls: &'a [SyscallStat],
    /// For requests that crossed the threshold while running: the stack at that moment.
    #[serde(skip_serializing_if = "Option::is_none")]
    stack: Option<&'a [Frame]>,
    /// ... and what their thread did from then on, heaviest stacks first.
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<&'a [ProfileEntry]>,
}

#[derive(Serialize)]
struct InflightLine<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    ts: String,
    pid: u32,
    tid: u32,
    comm: &'a str,
    method: &'a str,
    path: &'a str,
    start_ts: String,
    elapsed_ms: f64,
    bytes_in: u64,
    peer: Option<String>,
    queue_ms: f64,
    breakdown_ms: &'a Breakdown,
    net_peers: &'a [PeerWait],
    syscalls: &'a [SyscallStat],
    #[serde(skip_serializing_if = "Option::is_none")]
    stack: Option<&'a [Frame]>,
}

#[derive(Serialize)]
struct WarningLine<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    ts: String,
    message: &'a str,
}

/// Counts that go into the `summary` line.
#[derive(Serialize, Clone, Debug, Default)]
pub struct SummaryCounts {
    pub requests: u64,
    pub reported: u64,
    pub inflight: u64,
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
    pub losses: Losses,
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

#[derive(Serialize)]
struct SummaryLine<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    ts: String,
    #[serde(flatten)]
    counts: &'a SummaryCounts,
    endpoints: &'a [EndpointRow],
}

pub struct JsonSink<W: Write> {
    out: W,
    clock: Clock,
}

fn end_name(e: EndReason) -> &'static str {
    match e {
        EndReason::Complete => "complete",
        EndReason::Delimited => "delimited",
        EndReason::ProcessExit => "process_exit",
    }
}

impl<W: Write> JsonSink<W> {
    pub fn new(out: W, clock: Clock) -> Self {
        Self { out, clock }
    }

    fn line<T: Serialize>(&mut self, v: &T) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, v).map_err(io::Error::other)?;
        self.out.write_all(b"\n")
    }

    pub fn request(&mut self, r: &Request, d: &Detail, stack: Option<&[Frame]>, profile: Option<&[ProfileEntry]>) -> io::Result<()> {
        let line = RequestLine {
            ty: "request",
            ts: self.clock.rfc3339(r.end_ns),
            pid: r.pid,
            tid: r.tid,
            comm: &r.comm,
            method: &r.method,
            path: &r.path,
            status: r.status,
            start_ts: self.clock.rfc3339(r.start_ns),
            duration_ms: ms(r.duration_ns()),
            bytes_in: r.bytes_in,
            bytes_out: r.bytes_out,
            peer: r.peer.map(|p| p.to_string()),
            queue_ms: ms(r.queue_ns),
            end: end_name(r.end),
            breakdown_ms: &d.breakdown,
            net_peers: &d.net_peers,
            syscalls: &d.syscalls,
            stack,
            profile,
        };
        self.line(&line)
    }

    pub fn inflight(&mut self, i: &Inflight, d: &Detail, stack: Option<&[Frame]>) -> io::Result<()> {
        let line = InflightLine {
            ty: "inflight",
            ts: self.clock.rfc3339(i.now_ns),
            pid: i.pid,
            tid: i.tid,
            comm: &i.comm,
            method: &i.method,
            path: &i.path,
            start_ts: self.clock.rfc3339(i.start_ns),
            elapsed_ms: ms(i.now_ns.saturating_sub(i.start_ns)),
            bytes_in: i.bytes_in,
            peer: i.peer.map(|p| p.to_string()),
            queue_ms: ms(i.queue_ns),
            breakdown_ms: &d.breakdown,
            net_peers: &d.net_peers,
            syscalls: &d.syscalls,
            stack,
        };
        self.line(&line)
    }

    pub fn warning(&mut self, now_ns: u64, message: &str) -> io::Result<()> {
        let line = WarningLine { ty: "warning", ts: self.clock.rfc3339(now_ns), message };
        self.line(&line)
    }

    pub fn summary(&mut self, now_ns: u64, counts: &SummaryCounts, endpoints: &[EndpointRow]) -> io::Result<()> {
        let line = SummaryLine { ty: "summary", ts: self.clock.rfc3339(now_ns), counts, endpoints };
        self.line(&line)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
