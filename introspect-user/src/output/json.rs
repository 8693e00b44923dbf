//! The v1 JSON-lines contract (one object per line, `type` first): `request`, `inflight`,
//! `warning` and, at the end, `summary`. Field names are stable and documented in the README.
use std::io::{self, Write};

use serde::Serialize;

use super::{Completed, Counts, Crossed, KillReport, Sink, State, shapes::ShapeRow, summary::EndpointRow};
use crate::{
    assemble::{EndReason, backends::Holder},
    breakdown::{Breakdown, Detail, PeerWait, SyscallStat},
    clock::Clock,
    sql::stats::Report,
    stacks::{
        Frame,
        hot::{HOT_ROWS, HotRow},
        profile::ProfileEntry,
    },
};

/// Query shapes listed in the summary.
const SUMMARY_SHAPES: usize = 20;

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
    /// Its worker was killed with it in flight (a `killed` line says how).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    killed: bool,
    /// Its queries on database connections.
    #[serde(skip_serializing_if = "Option::is_none")]
    sql: Option<SqlLine<'a>>,
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
    /// Time left before the server kills its worker (negative: overdue), when it will.
    #[serde(skip_serializing_if = "Option::is_none")]
    kill_in_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kill_by: Option<&'static str>,
    /// Its queries so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    sql: Option<SqlLine<'a>>,
}

/// A request's `sql`: the report, and who held the locks it waited for.
#[derive(Serialize)]
struct SqlLine<'a> {
    #[serde(flatten)]
    report: &'a Report,
    #[serde(skip_serializing_if = "Option::is_none")]
    blocked_by: Option<BlockedBy>,
}

/// `"outside"` when every holder was a session outside the watched requests, else the
/// requests (and `"outside"` among them if some holder was).
#[derive(Serialize)]
#[serde(untagged)]
enum BlockedBy {
    Outside(&'static str),
    Some(Vec<BlockedEntry>),
}

#[derive(Serialize)]
#[serde(untagged)]
enum BlockedEntry {
    Request { pid: u32, tid: u32, method: String, path: String, start_ts: String },
    Outside(&'static str),
}

impl<'a> SqlLine<'a> {
    fn of(report: &'a Report, clock: &Clock) -> Self {
        let holders = &report.blocked_by;
        let blocked_by = if holders.is_empty() {
            None
        } else if holders.iter().all(|h| *h == Holder::Outside) {
            Some(BlockedBy::Outside("outside"))
        } else {
            Some(BlockedBy::Some(
                holders
                    .iter()
                    .map(|h| match h {
                        Holder::Outside => BlockedEntry::Outside("outside"),
                        Holder::Request(r) => BlockedEntry::Request {
                            pid: r.pid,
                            tid: r.tid,
                            method: r.method.clone(),
                            path: r.path.clone(),
                            start_ts: clock.rfc3339(r.start_ns),
                        },
                    })
                    .collect(),
            ))
        };
        Self { report, blocked_by }
    }
}

/// What a killed request's queries left behind.
#[derive(Serialize)]
struct KilledSql<'a> {
    #[serde(flatten)]
    report: SqlLine<'a>,
    /// A transaction was open on one of its connections when its worker died (the server rolls
    /// it back when it notices the connection is gone).
    transaction_open: bool,
    last_statement: Option<LastStatement<'a>>,
}

#[derive(Serialize)]
struct LastStatement<'a> {
    shape: Option<&'a str>,
    summary: Option<&'a str>,
    fingerprint: Option<String>,
    /// "complete", or "cut_off" when the worker died waiting for its answer.
    ended: &'static str,
    error: Option<&'a str>,
}

#[derive(Serialize)]
struct SignalLine<'a> {
    signal: &'a str,
    signal_number: i32,
    sender_pid: u32,
    sender_comm: &'a str,
    /// When it was sent, from the request's start.
    at_ms: f64,
}

#[derive(Serialize)]
struct Snapshot<'a> {
    /// When it was taken, from the request's start.
    at_ms: f64,
    stack: &'a [Frame],
}

/// A request whose worker was killed with it in flight.
#[derive(Serialize)]
struct KilledLine<'a> {
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
    peer: Option<String>,
    queue_ms: f64,
    reason: &'static str,
    /// The fatal signal that ended it (null when the worker left on its own).
    signal: Option<&'a str>,
    signal_number: Option<i32>,
    sender_pid: Option<u32>,
    sender_comm: Option<&'a str>,
    /// Every fatal signal its worker got while it ran.
    signals: Vec<SignalLine<'a>>,
    exit_code: Option<i32>,
    /// What the client got: the status the server wrote (gunicorn's 500 after its SIGABRT), or
    /// null.
    status: Option<u16>,
    /// "complete", "partial" (cut off) or "none".
    response: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    oom: Option<&'a crate::kills::OomRss>,
    breakdown_ms: &'a Breakdown,
    net_peers: &'a [PeerWait],
    syscalls: &'a [SyscallStat],
    /// Its thread's stack as the fatal signal reached it.
    #[serde(skip_serializing_if = "Option::is_none")]
    stack: Option<&'a [Frame]>,
    /// Stacks taken in the last second before the predicted kill.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stacks_before_kill: Vec<Snapshot<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<&'a [ProfileEntry]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sql: Option<KilledSql<'a>>,
}

/// What `--interrupt-before` did to a request.
#[derive(Serialize)]
struct InterruptedLine<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    ts: String,
    pid: u32,
    tid: u32,
    method: &'a str,
    path: &'a str,
    start_ts: String,
    /// When it was interrupted, from the request's start.
    elapsed_ms: f64,
    outcome: &'static str,
    exception: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    why: Option<&'a str>,
    status: Option<u16>,
    /// How long before the predicted kill it was interrupted, and whose kill that was.
    before_kill_ms: f64,
    kill_by: Option<&'static str>,
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
    /// The heaviest query shapes across routes, when requests ran any.
    #[serde(skip_serializing_if = "<[ShapeRow]>::is_empty")]
    query_shapes: &'a [ShapeRow],
    /// Profiling all traffic: the functions that took the most CPU in requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    hot: Option<Vec<HotRow>>,
    /// Profiling all traffic: what the watched processes' threads did outside requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    no_request: Option<NoRequest<'a>>,
}

#[derive(Serialize)]
struct NoRequest<'a> {
    samples: u64,
    cpu_ms: f64,
    /// Its heaviest stacks.
    stacks: &'a [ProfileEntry],
}

/// Stacks listed for `(no request)` in the summary (all of them are in the flame graphs).
const NO_REQUEST_STACKS: usize = 10;

impl<'a> SummaryLine<'a> {
    fn of(clock: &Clock, state: &'a State<'a>, rows: &'a [EndpointRow], shapes: &'a [ShapeRow]) -> Self {
        let sampled = state.counts.stacks.sampled;
        let no_request = &state.summary.no_request;
        SummaryLine {
            ty: "summary",
            ts: clock.rfc3339(state.now_ns),
            counts: state.counts,
            endpoints: rows,
            query_shapes: shapes,
            hot: sampled.map(|_| state.summary.hot.rows(HOT_ROWS)),
            no_request: sampled.map(|c| NoRequest {
                samples: c.no_request_samples,
                cpu_ms: ((no_request.iter().map(|e| e.on_cpu_ms).sum::<f64>() * 1e3).round() / 1e3).max(0.0),
                stacks: &no_request[..no_request.len().min(NO_REQUEST_STACKS)],
            }),
        }
    }
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

impl<W: Write> JsonLines<W> {
    fn killed(&mut self, c: &Completed<'_>, k: &KillReport<'_>) -> io::Result<()> {
        let r = c.request;
        let (kill, d) = (k.kill, k.detail);
        let since = |ts: u64| ms(ts.saturating_sub(r.start_ns));
        let response = match (r.status, r.bytes_out) {
            (Some(_), _) if r.end != EndReason::ProcessExit => "complete",
            (_, 0) => "none",
            _ => "partial",
        };
        let line = KilledLine {
            ty: "killed",
            ts: self.clock.rfc3339(r.end_ns),
            pid: r.pid,
            tid: r.tid,
            comm: &r.comm,
            method: &r.method,
            path: &r.path,
            start_ts: self.clock.rfc3339(r.start_ns),
            elapsed_ms: ms(r.duration_ns()),
            peer: r.peer.map(|p| p.to_string()),
            queue_ms: ms(r.queue_ns),
            reason: kill.reason.name(),
            signal: kill.signal.as_ref().map(|s| s.signal.as_str()),
            signal_number: kill.signal.as_ref().map(|s| s.signal_number),
            sender_pid: kill.signal.as_ref().map(|s| s.sender_pid),
            sender_comm: kill.signal.as_ref().map(|s| s.sender_comm.as_str()),
            signals: kill
                .signals
                .iter()
                .map(|s| SignalLine {
                    signal: &s.signal,
                    signal_number: s.signal_number,
                    sender_pid: s.sender_pid,
                    sender_comm: &s.sender_comm,
                    at_ms: since(s.ts),
                })
                .collect(),
            exit_code: kill.exit_code,
            status: if response == "complete" { r.status } else { None },
            response,
            oom: kill.oom.as_ref(),
            breakdown_ms: &d.breakdown,
            net_peers: &d.net_peers,
            syscalls: &d.syscalls,
            stack: kill.stack.as_deref(),
            stacks_before_kill: k.before_kill.iter().map(|(ts, stack)| Snapshot { at_ms: since(*ts), stack }).collect(),
            profile: c.profile,
            sql: c.sql.zip(r.sql.as_deref()).map(|(report, tally)| KilledSql {
                report: SqlLine::of(report, &self.clock),
                transaction_open: tally.transaction_open(),
                last_statement: tally.last.as_ref().map(|l| LastStatement {
                    shape: l.statement.as_deref().map(|s| s.shape.as_str()),
                    summary: l.statement.as_deref().map(|s| s.summary.as_str()),
                    fingerprint: l.statement.as_deref().map(|s| format!("{:016x}", s.fingerprint)),
                    ended: if l.end == EndReason::ProcessExit { "cut_off" } else { "complete" },
                    error: l.error.as_deref(),
                }),
            }),
        };
        self.line(&line)
    }

    fn request_line(&mut self, c: &Completed<'_>, d: &Detail) -> io::Result<()> {
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
            killed: c.kill.is_some(),
            sql: c.sql.map(|r| SqlLine::of(r, &self.clock)),
        };
        self.line(&line)
    }
}

impl<W: Write> Sink for JsonLines<W> {
    fn request(&mut self, c: &Completed<'_>) -> io::Result<()> {
        if let Some(d) = c.detail {
            self.request_line(c, d)?;
        }
        match &c.kill {
            Some(k) => self.killed(c, k),
            None => Ok(()),
        }
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
            kill_in_ms: c.kill.map(|(ms, _)| (ms * 1e3).round() / 1e3),
            kill_by: c.kill.map(|(_, reason)| reason.name()),
            sql: c.sql.map(|r| SqlLine::of(r, &self.clock)),
        };
        self.line(&line)
    }

    fn interrupted(&mut self, i: &super::Interrupted<'_>) -> io::Result<()> {
        let line = InterruptedLine {
            ty: "interrupted",
            ts: self.clock.rfc3339(i.at_ns),
            pid: i.pid,
            tid: i.tid,
            method: i.method,
            path: i.path,
            start_ts: self.clock.rfc3339(i.start_ns),
            elapsed_ms: ms(i.at_ns.saturating_sub(i.start_ns)),
            outcome: i.outcome,
            exception: "TimeoutError",
            why: i.why,
            status: i.status,
            before_kill_ms: ((i.kill_at_ns as f64 - i.at_ns as f64) / 1e3).round() / 1e3,
            kill_by: i.kill_by.map(|k| k.name()),
        };
        self.line(&line)
    }

    fn warning(&mut self, now_ns: u64, message: &str) -> io::Result<()> {
        let line = WarningLine { ty: "warning", ts: self.clock.rfc3339(now_ns), message };
        self.line(&line)
    }

    fn finish(&mut self, state: &State<'_>) -> io::Result<()> {
        let rows = state.summary.rows();
        let shapes = state.summary.query_shapes(SUMMARY_SHAPES);
        let line = SummaryLine::of(&self.clock, state, &rows, &shapes);
        self.line(&line)?;
        self.out.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// `record`'s summary.json: the summary line, pretty (the file is opened before the watch).
pub struct SummaryFile {
    file: std::fs::File,
    clock: Clock,
}

impl SummaryFile {
    pub fn new(file: std::fs::File, clock: Clock) -> Self {
        Self { file, clock }
    }
}

impl Sink for SummaryFile {
    fn finish(&mut self, state: &State<'_>) -> io::Result<()> {
        let rows = state.summary.rows();
        let shapes = state.summary.query_shapes(SUMMARY_SHAPES);
        let line = SummaryLine::of(&self.clock, state, &rows, &shapes);
        let text = serde_json::to_string_pretty(&line).map_err(io::Error::other)? + "\n";
        self.file.write_all(text.as_bytes())
    }
}
