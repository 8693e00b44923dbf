//! A live watch: load and attach the probes, follow the process tree, drain the ring buffer into
//! the pipeline, and stop on Ctrl-C, SIGTERM, the session's duration, an output's request, or
//! when every watched process is gone. `watch`, `record` and `top` are this with other outputs.
use std::{
    collections::BTreeSet,
    io,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use super::{
    activity::Sampler,
    forbid,
    host::Host,
    pace::Pace,
    pglink,
    pipeline::{Config, Interrupting, Pipeline},
};
use crate::{
    UsageError,
    cli::{Reporting, Target},
    clock::{self, Clock},
    event::{
        Event, FdOrigin, Hdr,
        decode::{DecodeError, Decoder},
    },
    kills::server,
    output::{AgentCost, BpfProgram, Losses, Sink},
    probe::{EventRing, KernelLosses, Probes, tracefs},
    proc::{cmdline, targets},
    proto::{Options, Protocols},
    sql::activity,
};

/// What a live run watches and how: resolved once from the command line and shared by
/// `watch`, `record` and `top` (each picks its own outputs).
pub struct Session {
    pub target: Target,
    pub reporting: Reporting,
    pub duration: Option<Duration>,
    pub keep_query: bool,
    pub bpf_stats: bool,
    /// Programs left unattached (overhead diagnosis).
    pub without: Vec<String>,
    pub poll_interval: Option<Duration>,
    /// The servers' worker timeout, when it cannot be read (`--kill-timeout`).
    pub kill_timeout: Option<Duration>,
    /// `--interrupt-before`: the one thing that writes to a watched process.
    pub interrupt_before: Option<Duration>,
    pub interrupt_dry_run: bool,
    /// Directories files may still be created in once the watch runs (opened by the command).
    pub writable_dirs: Vec<std::os::fd::RawFd>,
    /// (hidden) Try writing to the watched process once the filter is on, and say what happened.
    pub try_write: bool,
    /// Bytes of each write to a database copied (`--sql-capture-bytes`; 0: none).
    pub sql_capture: u16,
    /// `--sql-literals`: statements keep their values.
    pub sql_literals: bool,
    /// `--pg-dsn`: a PostgreSQL server followed through `pg_stat_activity`.
    pub pg_dsn: Option<String>,
    /// Monotonic to wall-clock time, taken once for the whole run (outputs and recordings).
    pub clock: Clock,
    /// The all-traffic profiler (`record`, `watch --profile-all`): every request gets a profile.
    pub profile_all: bool,
}

impl Session {
    pub fn new(target: Target, reporting: Reporting, duration: Option<Duration>) -> Self {
        let profile_all = reporting.profile_all;
        Self {
            target,
            reporting,
            duration,
            keep_query: false,
            bpf_stats: false,
            without: Vec::new(),
            poll_interval: None,
            kill_timeout: None,
            interrupt_before: None,
            interrupt_dry_run: false,
            writable_dirs: Vec::new(),
            try_write: false,
            sql_capture: 1024,
            sql_literals: false,
            pg_dsn: None,
            profile_all,
            clock: Clock::new(),
        }
    }

    /// On-CPU samples per second: of every thread of the watched processes when profiling all
    /// traffic, else of a slow request's thread.
    pub fn sample_hz(&self) -> u64 {
        self.reporting.sample_hz(self.profile_all)
    }

    pub fn config(&self) -> Config {
        Config {
            threshold_ns: self.reporting.threshold().as_nanos() as u64,
            all: self.reporting.all,
            sample_hz: self.sample_hz(),
            profile_all: self.profile_all,
            interrupt: self.interrupt_before.map(|d| Interrupting { before_ns: d.as_nanos() as u64, dry_run: self.interrupt_dry_run }),
            n_plus_one: self.reporting.n_plus_one,
        }
    }
}

fn require_root() -> Result<(), UsageError> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(UsageError(
            "watch must run as root: it loads eBPF programs (CAP_BPF, CAP_PERFMON) and reads other processes' /proc entries; try `sudo introspect watch ...`".into(),
        ));
    }
    Ok(())
}

fn roots(target: &Target) -> Result<Vec<u32>, UsageError> {
    match (target.pid, target.port, &target.socket) {
        (Some(pid), ..) if targets::exists(pid) => Ok(vec![pid]),
        (Some(pid), ..) => Err(UsageError(format!("no process with pid {pid}"))),
        (None, Some(port), _) => targets::listeners(port).map_err(|e| UsageError(e.to_string())),
        (None, None, Some(path)) => targets::unix_listeners(path).map_err(|e| UsageError(e.to_string())),
        (None, None, None) => Err(UsageError("give --pid, --port or --socket".into())),
    }
}

/// Runs a live watch into `sinks` until it ends.
pub fn watch(session: &Session, sinks: Vec<Box<dyn Sink>>) -> anyhow::Result<()> {
    require_root()?;
    let roots = roots(&session.target)?;
    let (root, mounted) = tracefs::ensure_mounted()?;
    if mounted {
        eprintln!("introspect: mounted tracefs at {}", root.display());
    }
    let tracefs = tracefs::Tracefs::new(root);
    let mut decoder = Decoder::new(Protocols::standard(Options { keep_query: session.keep_query, sql_literals: session.sql_literals }));

    let mut probes =
        Probes::load(&tracefs, decoder.protocols.any_outbound(), session.sql_capture, session.profile_all).context("loading eBPF programs")?;
    probes.without(&session.without);
    // Roots first, then fork tracking, then the scan: a child born at any point is either seen by
    // the scan or tracked by the fork probe.
    probes.track(&roots.iter().copied().collect())?;
    probes.attach_process_tracking().context("attaching process tracking")?;
    // PostgreSQL servers on this host: their backends' waits explain the requests' queries.
    // With --pg-dsn the server is followed through pg_stat_activity instead.
    let (pg_servers, pg_problems) = if session.pg_dsn.is_some() { Default::default() } else { crate::proc::postgres::servers() };
    probes.watch_postgres(&pg_servers)?;
    let mut linker = pglink::Linker::new(&pg_servers);
    let pg_port = session.pg_dsn.as_deref().map(activity::server_port).transpose()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // Connected before anything is reported: a DSN that does not work is an error, not a watch
    // without what was asked for. Its sampler runs once the watch loop does.
    let mut pg = match (&session.pg_dsn, pg_port) {
        (Some(dsn), Some(port)) => Some((rt.block_on(activity::start(dsn))?, Sampler::new(port))),
        _ => None,
    };
    let pids = targets::with_descendants(&roots);
    probes.track(&pids)?;
    let served = targets::served(&pids);
    probes.watch_ports(&served.ports)?;
    decoder.unix_listeners = probes.watch_unix(&served.unix)?;
    probes.seed_conns(&served.conns, &served.outbound)?;
    let missing = probes.attach_request_tracking().context("attaching request tracking")?;
    if session.profile_all && session.sample_hz() > 0 {
        probes.profile_all(session.sample_hz()).context("attaching the all-traffic profiler")?;
    }
    if session.bpf_stats {
        probes.enable_stats()?;
    }
    let mut ring = probes.take_events()?;
    // From here on nothing writes to another process unless the user asked for interrupts.
    forbid::forbid_writes(&session.writable_dirs, session.interrupt_before.is_some() && !session.interrupt_dry_run)?;

    let mut pipeline = Pipeline::new(session.config(), sinks);
    for (pid, fd, peer) in &served.conns {
        pipeline.assembler().seed_conn(*pid, *fd, Some(*peer));
    }
    pipeline.assembler().set_listeners(&served.ports, &served.unix);
    // Readers and symbols are loaded before the watch says it is watching.
    let mut host = Host::new(probes, session.sample_hz(), session.profile_all);
    host.warm(pids.iter().copied());
    let ports: Vec<String> = served.ports.iter().map(u16::to_string).collect();
    eprintln!(
        "introspect: watching {} process(es) [{}] serving TCP port(s) [{}]{}; threshold {}{}",
        pids.len(),
        pids.iter().map(u32::to_string).collect::<Vec<_>>().join(" "),
        ports.join(" "),
        if served.unix.is_empty() {
            String::new()
        } else {
            format!(" and Unix socket(s) [{}]", served.unix.iter().cloned().collect::<Vec<_>>().join(" "))
        },
        humantime::format_duration(session.reporting.threshold()),
        if session.reporting.all { ", reporting all requests" } else { "" },
    );
    for m in missing.into_iter().chain(pg_problems) {
        pipeline.warning(clock::monotonic_ns(), &m)?;
    }
    if served.ports.is_empty() && served.unix.is_empty() {
        pipeline.warning(
            clock::monotonic_ns(),
            "no listening TCP socket found in the watched processes: requests are still measured, but without their backlog wait (queue_ms is 0)",
        )?;
    }
    if !served.unix.is_empty() {
        // Their arrivals come from the clients' connects, paired with accepts in backlog order.
        pipeline.warning(
            clock::monotonic_ns(),
            "requests on Unix sockets already waiting in a backlog when the watch began have no arrival (queue_ms 0 for them)",
        )?;
    }

    let mut backlogs = super::backlog::BacklogSampler::new(&served.listen_inodes);
    let started = Instant::now();
    let mut live = pids;
    // What the fds open before the watch are (the syscalls tell the rest): read now, after the
    // fd probes were attached, so any change since is an event that comes after these.
    let now = clock::monotonic_ns();
    for &pid in &live {
        for (fd, kind) in host.fds_of(pid) {
            pipeline.event(Event::Fd { hdr: Hdr { tgid: pid, tid: pid, ts: now }, fd, origin: FdOrigin::Proc { kind } }, &mut host)?;
        }
    }
    describe_processes(&live, session.kill_timeout, &mut pipeline, &mut host)?;
    if session.try_write {
        for &pid in &roots {
            let said = host.try_write(pid);
            pipeline.warning(clock::monotonic_ns(), &said)?;
        }
    }
    rt.block_on(async {
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let pace = Pace::new(session.poll_interval, session.reporting.threshold());
        let mut wake = tokio::time::Instant::now() + pace.busy;
        let mut last_drain = Instant::now();
        let deadline = session.duration.map(|d| tokio::time::Instant::now() + d);
        let mut reported_losses = KernelLosses::default();
        let mut decode_errors = 0u64;
        let mut events = 0u64;
        let mut warned = std::collections::HashSet::new();
        let mut backlogs_sampled = false;
        let mut last_loss_check = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
                _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if deadline.is_some() => break,
            }
            host.set_now(clock::monotonic_ns());
            // Samples before the ring: a query that ended since is attached with the samples
            // that cover it.
            if let Some((rx, sampler)) = &mut pg {
                while let Ok(sample) = rx.try_recv() {
                    match sample {
                        Ok(sample) => {
                            for ev in sampler.events(sample, &live) {
                                pipeline.event(ev, &mut host)?;
                            }
                        }
                        Err(e) => {
                            pipeline.warning(clock::monotonic_ns(), &e)?;
                            pg = None;
                            break;
                        }
                    }
                }
            }
            let drained = drain(&mut ring, &decoder, &mut pipeline, &mut host, &mut decode_errors, &mut live, linker.as_mut())?;
            events += drained;
            let now = clock::monotonic_ns();
            host.set_now(now);
            if let Some(l) = &mut linker {
                for ev in l.search(now) {
                    pipeline.event(ev, &mut host)?;
                }
            }
            if backlogs.due() {
                let first = !backlogs_sampled;
                backlogs_sampled = true;
                match backlogs.sample(now, first) {
                    Ok(evs) => {
                        for ev in evs {
                            pipeline.event(ev, &mut host)?;
                        }
                    }
                    Err(e) => pipeline.warning(now, &e)?,
                }
            }
            let stop = pipeline.tick(now, &mut host)?;
            let until_crossing = pipeline.next_crossing().map(|c| Duration::from_nanos(c.saturating_sub(now)));
            wake = tokio::time::Instant::now() + pace.wait(drained, last_drain.elapsed(), until_crossing, host.probes.any_armed());
            last_drain = Instant::now();
            for w in host.take_warnings() {
                // Once per kind: 32 workers of a server that is not CPython say the same thing.
                if warned.insert(w.chars().filter(|c| !c.is_ascii_digit()).collect::<String>()) {
                    pipeline.warning(now, &w)?;
                }
            }
            if last_loss_check.elapsed() >= Duration::from_secs(1) {
                last_loss_check = Instant::now();
                let now = host.probes.losses()?;
                if now.ringbuf_full > reported_losses.ringbuf_full || now.map_full > reported_losses.map_full {
                    pipeline.warning(
                        clock::monotonic_ns(),
                        &format!(
                            "dropped events: {} (ring buffer full) and {} (tracking map full) so far; requests in that window may be missing or incomplete",
                            now.ringbuf_full, now.map_full
                        ),
                    )?;
                }
                reported_losses = now;
            }
            if stop {
                break;
            }
            if live.is_empty() {
                pipeline.warning(clock::monotonic_ns(), "every watched process has exited")?;
                break;
            }
        }
        events += drain(&mut ring, &decoder, &mut pipeline, &mut host, &mut decode_errors, &mut live, linker.as_mut())?;
        if backlogs_sampled && let Ok(evs) = backlogs.sample(clock::monotonic_ns(), true) {
            for ev in evs {
                pipeline.event(ev, &mut host)?;
            }
        }
        let losses = host.probes.losses()?;
        pipeline.counts.losses = Losses { ringbuf_full: losses.ringbuf_full, map_full: losses.map_full, decode_errors, unreadable_heads: losses.read_failed };
        pipeline.counts.dropped_events = losses.ringbuf_full + losses.map_full + decode_errors;
        pipeline.counts.stacks.threads_armed = host.threads_armed;
        pipeline.counts.events = events;
        pipeline.counts.agent = agent_cost(&host.probes);
        pipeline.counts.duration_s = (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
        pipeline.finish(clock::monotonic_ns())?;
        anyhow::Ok(())
    })
}

/// Tells the pipeline each watched process's parent, and which of them (or their parents) are
/// server masters and when those kill workers: what /proc says at the start (forks are followed
/// from then on).
fn describe_processes(pids: &BTreeSet<u32>, kill_timeout: Option<Duration>, pipeline: &mut Pipeline<'_>, host: &mut Host) -> io::Result<()> {
    let now = clock::monotonic_ns();
    let hdr = |pid| Hdr { tgid: pid, tid: pid, ts: now };
    let mut masters = BTreeSet::new();
    for &pid in pids {
        let ppid = cmdline::ppid(pid).unwrap_or(0);
        pipeline.event(Event::Proc { hdr: hdr(pid), pid, ppid }, host)?;
        // The top of the watched tree, and its parent when only workers are watched.
        if !pids.contains(&ppid) {
            masters.insert(pid);
            masters.insert(ppid);
        }
    }
    for pid in masters.into_iter().filter(|&p| p > 1) {
        let (args, env) = (cmdline::args(pid), cmdline::env(pid));
        let read = |path: &str| cmdline::read_as(pid, path);
        let server = server::detect(&server::Master { args: &args, env: &env, read: &read }, kill_timeout);
        if server.kind == server::Kind::Other {
            continue;
        }
        if let server::Deadline::Unknown { why } = &server.deadline {
            pipeline.warning(now, &format!("process {pid}: when the server kills a worker is not known ({why})"))?;
        }
        pipeline.event(Event::Server { hdr: hdr(pid), pid, server }, host)?;
    }
    Ok(())
}

/// The agent's CPU time and peak memory so far, and its programs' run time when accounted.
fn agent_cost(probes: &Probes) -> AgentCost {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    AgentCost {
        cpu_ms: ((tv(ru.ru_utime) + tv(ru.ru_stime)) * 1e3).round() / 1e3,
        max_rss_kib: ru.ru_maxrss as u64,
        bpf: probes
            .program_stats()
            .into_iter()
            .filter(|(_, runs, _)| *runs > 0)
            .map(|(program, runs, ns)| BpfProgram { program, runs, run_ms: (ns as f64 / 1e3).round() / 1e3 })
            .collect(),
    }
}

/// Everything in the ring buffer, through the pipeline; returns how many records there were.
fn drain(
    ring: &mut EventRing,
    decoder: &Decoder,
    pipeline: &mut Pipeline<'_>,
    host: &mut Host,
    decode_errors: &mut u64,
    live: &mut BTreeSet<u32>,
    mut linker: Option<&mut pglink::Linker>,
) -> io::Result<u64> {
    ring.drain(
        |record| decoder.decode(record),
        |decoded: Result<Event, DecodeError>| match decoded {
            Ok(ev) => {
                match &ev {
                    Event::Fork { child, .. } => {
                        live.insert(*child);
                    }
                    Event::Exit { pid, .. } => {
                        live.remove(pid);
                    }
                    _ => {}
                }
                if let Some(l) = linker.as_deref_mut() {
                    l.observe(&ev);
                }
                pipeline.event(ev, host)
            }
            Err(e) => {
                *decode_errors += 1;
                if *decode_errors == 1 {
                    eprintln!("introspect: warning: undecodable event ({e}); counting them in the summary");
                }
                Ok(())
            }
        },
    )
}
