//! The v1 JSON-lines contract (one object per line, `type` first): `request`, `inflight`,
//! `warning` and, at the end, `summary`. Field names are stable and documented in the README.
use std::io::{self, Write};

use serde::Serialize;

use super::{Completed, Counts, Crossed, Sink, State, summary::EndpointRow};
use crate::{
    assemble::EndReason,
    breakdown::{Breakdown, PeerWait, SyscallStat},
    clock::Clock,
    stacks::{Frame, profile::ProfileEntry},
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

#[derive(Serialize)]
struct SummaryLine<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    ts: String,
    #[serde(flatten)]
    counts: &'a Counts,
    endpoints: &'a [EndpointRow],
}

/// JSON lines to a writer (stdout, or `record`'s events.jsonl); only reported requests.
pub struct JsonLines<W: Write> {
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

impl<W: Write> JsonLines<W> {
    pub fn new(out: W, clock: Clock) -> Self {
        Self { out, clock }
    }

    fn line<T: Serialize>(&mut self, v: &T) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, v).map_err(io::Error::other)?;
        self.out.write_all(b"\n")
    }
}

impl<W: Write> Sink for JsonLines<W> {
    fn request(&mut self, c: &Completed<'_>) -> io::Result<()> {
        let Some(d) = c.detail else { return Ok(()) };
        let r = c.request;
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
            stack: c.stack,
            profile: c.profile,
        };
        self.line(&line)
    }

    fn inflight(&mut self, c: &Crossed<'_>) -> io::Result<()> {
        let (i, d) = (c.inflight, c.detail);
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
            stack: c.stack,
        };
        self.line(&line)
    }

    fn warning(&mut self, now_ns: u64, message: &str) -> io::Result<()> {
        let line = WarningLine { ty: "warning", ts: self.clock.rfc3339(now_ns), message };
        self.line(&line)
    }

    fn finish(&mut self, state: &State<'_>) -> io::Result<()> {
        let rows = state.summary.rows();
        let line = SummaryLine { ty: "summary", ts: self.clock.rfc3339(state.now_ns), counts: state.counts, endpoints: &rows };
        self.line(&line)?;
        self.out.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// `record`'s summary.json: the summary line, pretty.
pub struct SummaryFile {
    path: std::path::PathBuf,
    clock: Clock,
}

impl SummaryFile {
    pub fn new(path: std::path::PathBuf, clock: Clock) -> Self {
        Self { path, clock }
    }
}

impl Sink for SummaryFile {
    fn finish(&mut self, state: &State<'_>) -> io::Result<()> {
        let rows = state.summary.rows();
        let line = SummaryLine { ty: "summary", ts: self.clock.rfc3339(state.now_ns), counts: state.counts, endpoints: &rows };
        let text = serde_json::to_string_pretty(&line).map_err(io::Error::other)? + "\n";
        std::fs::write(&self.path, text).map_err(|e| io::Error::new(e.kind(), format!("writing {}: {e}", self.path.display())))
    }
}
