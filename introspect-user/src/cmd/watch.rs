//! `introspect watch`: load, attach, follow the process tree, drain the ring buffer into the
//! pipeline every few milliseconds, and stop on Ctrl-C, SIGTERM, --duration or when every
//! watched process is gone.
use std::{
    collections::BTreeSet,
    fs::File,
    io::{self, BufWriter},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    UsageError,
    cli::WatchArgs,
    clock::{self, Clock},
    cmd::replay::Meta,
    event::{self, Event},
    flame::{self, Flames},
    host::Host,
    loader::{KernelLosses, Probes},
    pipeline::{Config, Pipeline},
    sink::{AgentCost, BpfProgram, JsonSink, Losses},
    target,
    tracefs::{self, Tracefs},
};

fn require_root() -> Result<(), UsageError> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(UsageError(
            "watch must run as root: it loads eBPF programs (CAP_BPF, CAP_PERFMON) and reads other processes' /proc entries; try `sudo introspect watch ...`".into(),
        ));
    }
    Ok(())
}

fn roots(args: &WatchArgs) -> Result<Vec<u32>, UsageError> {
    match (args.target.pid, args.target.port) {
        (Some(pid), _) if target::exists(pid) => Ok(vec![pid]),
        (Some(pid), _) => Err(UsageError(format!("no process with pid {pid}"))),
        (None, Some(port)) => target::listeners(port).map_err(|e| UsageError(e.to_string())),
        (None, None) => Err(UsageError("give --pid or --port".into())),
    }
}

pub fn run(args: WatchArgs) -> anyhow::Result<()> {
    let flames = watch(&args, Box::new(BufWriter::new(io::stdout().lock())), args.flamegraph.is_some())?;
    if let (Some(path), Some(flames)) = (&args.flamegraph, flames) {
        let svg = flame::svg(&flames.folded(flame::Kind::Wall, None), "slow requests: on-CPU and off-CPU [off-cpu]")?;
        std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("introspect: flame graph of slow requests written to {}", path.display());
    }
    Ok(())
}

/// Runs a watch, writing JSON lines to `out`; returns the slow requests' profiles when
/// `collect_flames`.
pub fn watch(args: &WatchArgs, out: Box<dyn io::Write>, collect_flames: bool) -> anyhow::Result<Option<Flames>> {
    watch_with(args, out, collect_flames, None)
}

/// A live view driven by the watch loop (`introspect top`).
pub trait Ui {
    /// Called after every drain; returns true to stop.
    fn tick(&mut self, summary: &crate::summary::Summary, counts: &crate::sink::SummaryCounts) -> io::Result<bool>;
}

pub fn watch_with(args: &WatchArgs, out: Box<dyn io::Write>, collect_flames: bool, mut ui: Option<&mut dyn Ui>) -> anyhow::Result<Option<Flames>> {
    require_root()?;
    let roots = roots(args)?;
    let (root, mounted) = tracefs::ensure_mounted()?;
    if mounted {
        eprintln!("introspect: mounted tracefs at {}", root.display());
    }
    let tracefs = Tracefs::new(root);

    let mut probes = Probes::load(&tracefs).context("loading eBPF programs")?;
    probes.without(&args.without);
    // Roots first, then fork tracking, then the scan: a child born at any point is either seen by
    // the scan or tracked by the fork probe.
    probes.track(&roots.iter().copied().collect())?;
    probes.attach_process_tracking().context("attaching process tracking")?;
    let pids = target::with_descendants(&roots);
    probes.track(&pids)?;
    let served = target::served(&pids);
    probes.watch_ports(&served.ports)?;
    probes.seed_conns(&served.conns)?;
    probes.attach_request_tracking().context("attaching request tracking")?;
    if args.bpf_stats {
        probes.enable_stats()?;
    }
    let mut ring = probes.take_events()?;

    let clock = Clock::new();
    let threshold_ns = args.reporting.threshold.as_nanos() as u64;
    let sink = JsonSink::new(out, clock);
    let cfg = Config { threshold_ns, all: args.reporting.all, sample_hz: args.reporting.sample_hz };
    let mut pipeline = Pipeline::new(cfg, sink);
    if collect_flames {
        pipeline.collect_flames();
    }
    // A full-screen view owns the terminal: warnings go to the (discarded) sink only.
    pipeline.set_quiet(ui.is_some());
    if let Some(path) = &args.record {
        let mut f = BufWriter::new(File::create(path).with_context(|| format!("creating {}", path.display()))?);
        let meta = Meta {
            introspect_recording: 1,
            realtime_minus_mono_ns: clock.wall(0).duration_since(std::time::UNIX_EPOCH)?.as_nanos() as i128,
        };
        serde_json::to_writer(&mut f, &meta)?;
        io::Write::write_all(&mut f, b"\n")?;
        pipeline.record_to(Box::new(f));
    }
    for (pid, fd, peer) in &served.conns {
        pipeline.assembler().seed_conn(*pid, *fd, Some(*peer));
    }
    let ports: Vec<String> = served.ports.iter().map(u16::to_string).collect();
    eprintln!(
        "introspect: watching {} process(es) [{}] serving TCP port(s) [{}]; threshold {}{}",
        pids.len(),
        pids.iter().map(u32::to_string).collect::<Vec<_>>().join(" "),
        ports.join(" "),
        humantime::format_duration(args.reporting.threshold),
        if args.reporting.all { ", reporting all requests" } else { "" },
    );
    if served.ports.is_empty() {
        pipeline.warning(
            clock::monotonic_ns(),
            "no listening TCP socket found in the watched processes: requests are still measured, but without their backlog wait (queue_ms is 0)",
        )?;
    }

    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut live = pids;
    let mut host = Host::new(probes, args.reporting.sample_hz);
    host.warm(live.iter().copied());
    rt.block_on(async {
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let pace = Pace::new(args.poll_interval, args.reporting.threshold);
        let mut wake = tokio::time::Instant::now() + pace.busy;
        let mut last_drain = Instant::now();
        let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
        let mut reported_losses = KernelLosses::default();
        let mut decode_errors = 0u64;
        let mut events = 0u64;
        let mut warned = std::collections::HashSet::new();
        let mut last_loss_check = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
                _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if deadline.is_some() => break,
            }
            host.set_now(clock::monotonic_ns());
            let drained = drain(&mut ring, &mut pipeline, &mut host, args.keep_query, &mut decode_errors, &mut live)?;
            events += drained;
            let now = clock::monotonic_ns();
            host.set_now(now);
            pipeline.tick(now, &mut host)?;
            let until_crossing = pipeline.next_crossing().map(|c| Duration::from_nanos(c.saturating_sub(now)));
            wake = tokio::time::Instant::now() + pace.wait(drained, last_drain.elapsed(), until_crossing, host.probes.any_armed());
            last_drain = Instant::now();
            let warnings: Vec<String> = host.warnings.drain(..).chain(host.enricher.warnings.drain(..)).collect();
            for w in warnings {
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
            if let Some(ui) = ui.as_deref_mut()
                && ui.tick(pipeline.summary(), &pipeline.counts)?
            {
                break;
            }
            if live.is_empty() {
                pipeline.warning(clock::monotonic_ns(), "every watched process has exited")?;
                break;
            }
        }
        events += drain(&mut ring, &mut pipeline, &mut host, args.keep_query, &mut decode_errors, &mut live)?;
        let losses = host.probes.losses()?;
        pipeline.counts.losses = Losses {
            ringbuf_full: losses.ringbuf_full,
            map_full: losses.map_full,
            decode_errors,
            unreadable_heads: losses.read_failed,
        };
        pipeline.counts.dropped_events = losses.ringbuf_full + losses.map_full + decode_errors;
        pipeline.counts.stacks.threads_armed = host.threads_armed;
        pipeline.counts.events = events;
        pipeline.counts.agent = agent_cost(&host.probes);
        pipeline.counts.duration_s = (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
        pipeline.finish(clock::monotonic_ns())?;
        anyhow::Ok(pipeline.take_flames())
    })
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

/// When to drain the ring buffer next. Every wake-up costs a context switch and a timer (tens of
/// µs on a VM), so a quiet watch wakes seldom; a request is then still seen before it can cross
/// the threshold (the interval is at most a quarter of it), and the wake-up for the crossing
/// itself is timed to it. Events arriving fast enough to fill a few MiB of the ring buffer in
/// the long interval bring the short one back, and so does a thread whose stacks are being
/// captured: the kernel goes on capturing them until its request's end has been drained and
/// the thread disarmed.
struct Pace {
    busy: Duration,
    quiet: Duration,
}

impl Pace {
    /// Events per second above which the short interval is used: 100 ms of them is ~0.5 MiB of
    /// the 8 MiB ring buffer; a burst of 450k events/s (64k requests/s) fills ~4.5 MiB before
    /// the first drain that sees it switches.
    const BUSY_RATE: f64 = 50_000.0;

    /// `fixed` (the hidden --poll-interval) pins the interval; else a quarter of the threshold,
    /// between 10 and 100 ms.
    fn new(fixed: Option<Duration>, threshold: Duration) -> Self {
        let busy = Duration::from_millis(10);
        match fixed {
            Some(d) => Self { busy: d, quiet: d },
            None => Self { busy, quiet: (threshold / 4).clamp(busy, Duration::from_millis(100)) },
        }
    }

    /// How long to wait after a drain that found `drained` events `since` the one before, with
    /// the next threshold crossing `until_crossing` away and threads `armed` or not.
    fn wait(&self, drained: u64, since: Duration, until_crossing: Option<Duration>, armed: bool) -> Duration {
        let busy = armed || drained as f64 > Self::BUSY_RATE * since.as_secs_f64().max(1e-3);
        let wait = if busy { self.busy } else { self.quiet };
        until_crossing.map_or(wait, |c| wait.min(c))
    }
}

fn drain<W: io::Write>(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    pipeline: &mut Pipeline<W>,
    host: &mut Host,
    keep_query: bool,
    decode_errors: &mut u64,
    live: &mut BTreeSet<u32>,
) -> io::Result<u64> {
    let mut n = 0;
    while let Some(item) = ring.next() {
        n += 1;
        let decoded = event::decode(&item, keep_query);
        drop(item);
        match decoded {
            Ok(mut ev) => {
                host.enrich(&mut ev);
                match &ev {
                    Event::Fork { child, .. } => {
                        live.insert(*child);
                    }
                    Event::Exit { pid, .. } => {
                        live.remove(pid);
                    }
                    _ => {}
                }
                pipeline.event(&ev, host)?;
            }
            Err(e) => {
                *decode_errors += 1;
                if *decode_errors == 1 {
                    eprintln!("introspect: warning: undecodable event ({e}); counting them in the summary");
                }
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_quiet_watch_waits_a_quarter_of_the_threshold_within_10_to_100_ms() {
        assert_eq!(Pace::new(None, 500 * MS).wait(0, 100 * MS, None, false), 100 * MS);
        assert_eq!(Pace::new(None, 200 * MS).wait(10, 50 * MS, None, false), 50 * MS);
        assert_eq!(Pace::new(None, 2 * MS).wait(0, 10 * MS, None, false), 10 * MS);
        // 2k requests/s at ~7 events each is quiet.
        assert_eq!(Pace::new(None, 500 * MS).wait(1_400, 100 * MS, None, false), 100 * MS);
    }

    #[test]
    fn a_fast_stream_of_events_brings_the_short_interval_back() {
        let p = Pace::new(None, 500 * MS);
        assert_eq!(p.wait(45_000, 100 * MS, None, false), 10 * MS);
        assert_eq!(p.wait(600, 10 * MS, None, false), 10 * MS);
        assert_eq!(p.wait(400, 10 * MS, None, false), 100 * MS);
        // A thread being captured: its disarm must not wait for the long interval.
        assert_eq!(p.wait(0, 100 * MS, None, true), 10 * MS);
    }

    #[test]
    fn a_coming_crossing_shortens_the_wait_and_a_fixed_interval_is_kept() {
        assert_eq!(Pace::new(None, 500 * MS).wait(0, 100 * MS, Some(3 * MS), false), 3 * MS);
        assert_eq!(Pace::new(None, 500 * MS).wait(0, 100 * MS, Some(Duration::ZERO), false), Duration::ZERO);
        let fixed = Pace::new(Some(20 * MS), 500 * MS);
        assert_eq!(fixed.wait(0, 20 * MS, None, false), 20 * MS);
        assert_eq!(fixed.wait(1_000_000, 20 * MS, None, false), 20 * MS);
    }
}
