//! `cargo xtask bench`: what introspect costs, measured against a baseline in the same run.
//!
//! wrk against gunicorn (sync, 2 workers) + Flask on a hello-world and a 5 ms endpoint, under no
//! tracer, `introspect watch` with default probes, `introspect watch` with ~10% of requests slow
//! (stacks captured), and `py-spy record --rate 100 --nonblocking`. Runs alternate between
//! configurations and each number is the median of several, so drift on a shared machine
//! cancels out. Then alert latency, the tracer's CPU with no requests and at a fixed 2k
//! requests/s, and a burst.
use std::{
    fs,
    io::{BufRead, BufReader, Read},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use introspect_tests::{
    client::{self, Client},
    guard::Guard,
    introspect::Watch,
    server::Gunicorn,
};
use serde_json::{Value, json};

use crate::{prepare, root};

mod burst;
mod serial;

use burst::burst_server;
pub use burst::serve_burst;
use serial::serial_and_unrelated;

const ROUNDS: usize = 5;
const RUN_SECONDS: u64 = 5;

/// CPU time of all of a process's threads, in seconds, from the scheduler's own accounting
/// (/proc/PID/task/*/schedstat, ns): exact, where the tick-sampled /proc/PID/stat figures are
/// biased for a process that wakes on a timer.
fn exec_s(pid: u32) -> f64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return 0.0 };
    let ns: u64 = tasks
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    ns as f64 / 1e9
}

fn peak_rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// Waits for a child and returns its CPU time (user + system), from wait4's rusage.
fn wait_cpu(child: &mut Child) -> anyhow::Result<f64> {
    let mut status = 0;
    // SAFETY: rusage is filled by the kernel.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    if pid < 0 {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(tv(ru.ru_utime) + tv(ru.ru_stime))
}

struct WrkResult {
    rps: f64,
    requests: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    cpu_s: f64,
}

fn parse_ms(v: &str) -> Option<f64> {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1e3,
        "ms" => n,
        "s" => n * 1e3,
        "m" => n * 60e3,
        _ => return None,
    })
}

fn wrk(url: &str, threads: u32, conns: u32, seconds: u64) -> anyhow::Result<WrkResult> {
    wrk_on(None, url, threads, conns, seconds)
}

/// Pins a process (all its threads) to one CPU.
fn pin(pid: u32, cpu: usize) {
    let tids: Vec<u32> =
        fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()).unwrap_or_default();
    for tid in tids {
        pin_thread(tid, cpu);
    }
}

/// Pins one thread (0: the calling one) to one CPU.
fn pin_thread(tid: u32, cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the kernel reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(tid as i32, size_of::<libc::cpu_set_t>(), &set);
    }
}

fn wrk_on(cpu: Option<usize>, url: &str, threads: u32, conns: u32, seconds: u64) -> anyhow::Result<WrkResult> {
    let mut cmd = Command::new("wrk");
    if let Some(cpu) = cpu {
        use std::os::unix::process::CommandExt as _;
        // SAFETY: sched_setaffinity is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                pin_thread(0, cpu);
                Ok(())
            });
        }
    }
    let mut child = cmd
        .args(["-t", &threads.to_string(), "-c", &conns.to_string(), "-d", &format!("{seconds}s"), "--latency", url])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("running wrk")?;
    let mut out = String::new();
    child.stdout.take().context("wrk stdout")?.read_to_string(&mut out)?;
    let cpu = wait_cpu(&mut child)?;
    let find = |prefix: &str| out.lines().map(str::trim).find(|l| l.starts_with(prefix)).map(|l| l.to_string());
    let pct = |p: &str| find(p).and_then(|l| parse_ms(l.split_whitespace().nth(1)?)).unwrap_or(f64::NAN);
    let rps: f64 = find("Requests/sec:").and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).context(format!("wrk output: {out}"))?;
    let requests: f64 = out.lines().find(|l| l.contains("requests in")).and_then(|l| l.split_whitespace().next()?.parse().ok()).unwrap_or(0.0);
    Ok(WrkResult { rps, requests, p50_ms: pct("50%"), p90_ms: pct("90%"), p99_ms: pct("99%"), cpu_s: cpu })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Config {
    Baseline,
    Default,
    Slow10,
    PySpy,
    /// The all-traffic profiler on a watch (slow-only reporting): what sampling costs.
    ProfileAll,
    /// `record` as a user runs it: every request profiled and written to events.jsonl.
    Record,
}

impl Config {
    fn name(self) -> &'static str {
        match self {
            Config::Baseline => "no tracer",
            Config::Default => "introspect (default probes)",
            Config::Slow10 => "introspect (~10% slow, stacks)",
            Config::PySpy => "py-spy record 100 Hz",
            Config::ProfileAll => "watch --profile-all (49 Hz)",
            Config::Record => "record (all traffic, 49 Hz)",
        }
    }
}

/// One measured run.
#[derive(Clone, Debug, Default)]
struct Run {
    rps: f64,
    p50: f64,
    p99: f64,
    /// CPU µs per request: workers + wrk + tracer, and each of them.
    cpu_per_req_us: f64,
    workers_us: f64,
    wrk_us: f64,
    tracer_us: f64,
    tracer_cpu_pct: f64,
    tracer_rss_kib: u64,
    events_per_s: f64,
    dropped: f64,
}

struct Tracer {
    guard: Guard,
    pid: u32,
    stdout: Option<thread::JoinHandle<String>>,
}

fn start_tracer(
    cfg: Config,
    master: u32,
    threshold: &str,
    bin: &std::path::Path,
    venv: &std::path::Path,
    extra: &[&str],
) -> anyhow::Result<Option<Tracer>> {
    let mut cmd = match cfg {
        Config::Baseline => return Ok(None),
        Config::Default | Config::Slow10 | Config::ProfileAll => {
            let mut c = Command::new(bin);
            c.args(["watch", "--pid", &master.to_string()]);
            if cfg == Config::Slow10 {
                c.args(["--threshold", threshold]);
            }
            if cfg == Config::ProfileAll {
                c.arg("--profile-all");
            }
            c.args(extra);
            c
        }
        Config::Record => {
            let mut c = Command::new(bin);
            c.args(["record", "--pid", &master.to_string(), "--duration", "1h", "--out"]).arg(record_dir());
            c
        }
        Config::PySpy => {
            let mut c = Command::new(venv.join("bin/py-spy"));
            c.args([
                "record",
                "--rate",
                "100",
                "--nonblocking",
                "--subprocesses",
                "--format",
                "raw",
                "-o",
                "/dev/null",
                "--pid",
                &master.to_string(),
            ]);
            c
        }
    };
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null());
    let mut guard = Guard::spawn(cfg.name(), &mut cmd)?;
    let pid = guard.pid();
    let stdout = guard.child_mut().stdout.take().context("tracer stdout")?;
    let stderr = guard.child_mut().stderr.take().context("tracer stderr")?;
    let out = thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(stdout).read_to_string(&mut s);
        s
    });
    // Ready: introspect says "watching"; py-spy gets a second to attach to every process.
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("watching") {
                let _ = tx.send(());
            }
        }
    });
    if cfg == Config::PySpy {
        thread::sleep(Duration::from_secs(2));
    } else {
        rx.recv_timeout(Duration::from_secs(30)).context("introspect did not start")?;
    }
    Ok(Some(Tracer { guard, pid, stdout: Some(out) }))
}

/// A BPF program's runs and run time (µs) per request.
type ProgramCost = (String, f64, f64);

/// Where the bench's `record` runs write.
fn record_dir() -> std::path::PathBuf {
    root().join("bench-out/record")
}

fn summary_of(stdout: &str) -> Option<Value> {
    stdout.lines().rev().find(|l| l.contains(r#""type":"summary""#)).and_then(|l| serde_json::from_str(l).ok())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn measure(
    cfg: Config,
    server: &Gunicorn,
    url: &str,
    threshold: &str,
    bin: &std::path::Path,
    venv: &std::path::Path,
) -> anyhow::Result<(Run, Option<Value>)> {
    let workers = server.workers();
    let tracer = start_tracer(cfg, server.master_pid(), threshold, bin, venv, &[])?;
    let w0: f64 = workers.iter().map(|&p| exec_s(p)).sum();
    let t0 = tracer.as_ref().map_or(0.0, |t| exec_s(t.pid));
    let start = Instant::now();
    let r = wrk(url, 1, 4, RUN_SECONDS)?;
    let wall = start.elapsed().as_secs_f64();
    let w1: f64 = workers.iter().map(|&p| exec_s(p)).sum();
    let (tracer_cpu, rss, summary) = match tracer {
        Some(mut t) => {
            let cpu = exec_s(t.pid) - t0;
            let rss = peak_rss_kib(t.pid);
            let sig = if cfg == Config::PySpy { libc::SIGINT } else { libc::SIGTERM };
            t.guard.stop_with(sig, Duration::from_secs(20));
            let out = t.stdout.take().and_then(|h| h.join().ok()).unwrap_or_default();
            let summary = if cfg == Config::Record {
                fs::read_to_string(record_dir().join("summary.json")).ok().and_then(|s| serde_json::from_str(&s).ok())
            } else {
                summary_of(&out)
            };
            (cpu, rss, summary)
        }
        None => (0.0, 0, None),
    };
    let total_cpu = (w1 - w0) + r.cpu_s + tracer_cpu;
    let run = Run {
        rps: r.rps,
        p50: r.p50_ms,
        p99: r.p99_ms,
        cpu_per_req_us: total_cpu / r.requests.max(1.0) * 1e6,
        workers_us: (w1 - w0) / r.requests.max(1.0) * 1e6,
        wrk_us: r.cpu_s / r.requests.max(1.0) * 1e6,
        tracer_us: tracer_cpu / r.requests.max(1.0) * 1e6,
        tracer_cpu_pct: tracer_cpu / wall * 100.0,
        tracer_rss_kib: rss,
        events_per_s: summary.as_ref().and_then(|s| s["events"].as_f64()).unwrap_or(0.0) / wall,
        dropped: summary.as_ref().and_then(|s| s["dropped_events"].as_f64()).unwrap_or(0.0),
    };
    Ok((run, summary))
}

fn fmt_ratio(v: f64) -> String {
    if v.is_finite() { format!("{v:.3}") } else { "-".into() }
}

pub fn run() -> anyhow::Result<()> {
    let env = prepare()?;
    let bin = introspect_tests::introspect_bin();
    let out_dir = root().join("bench-out");
    fs::create_dir_all(&out_dir)?;
    let machine = format!(
        "{} vCPU, kernel {}",
        thread::available_parallelism().map_or(0, |n| n.get()),
        fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim()
    );
    let date = String::from_utf8_lossy(&Command::new("date").arg("-u").arg("+%Y-%m-%d").output()?.stdout).trim().to_string();
    eprintln!("bench: {machine}, {date}; {ROUNDS} alternating rounds of {RUN_SECONDS} s per configuration and endpoint");

    let server = Gunicorn::start("flaskapp:app", 2, &[]);
    let configs = [Config::Baseline, Config::Default, Config::Slow10, Config::PySpy, Config::ProfileAll, Config::Record];
    let mut results = Vec::new();
    let mut table = Vec::new();
    for (label, path) in [("hello-world", "/fast"), ("5 ms (half CPU, half sleep)", "/half/5")] {
        let url = format!("http://127.0.0.1:{}{path}", server.port);
        // Warm up, and find the latency that ~10% of requests exceed.
        let warm = wrk(&url, 1, 4, 2)?;
        let threshold = format!("{}us", (warm.p90_ms * 1000.0).round() as u64);
        eprintln!("bench: {label}: threshold for ~10% slow requests: {threshold}");
        let mut runs: Vec<Vec<Run>> = vec![Vec::new(); configs.len()];
        let mut slow_summary = None;
        for round in 0..ROUNDS {
            // Alternate the order so slow drift hits every configuration alike.
            let order: Vec<usize> = if round % 2 == 0 { (0..configs.len()).collect() } else { (0..configs.len()).rev().collect() };
            for i in order {
                let (run, summary) = measure(configs[i], &server, &url, &threshold, &bin, &env.venv)?;
                eprintln!("bench: {label} round {round} {:<32} {:>8.0} req/s  {:>7.1} µs CPU/req", configs[i].name(), run.rps, run.cpu_per_req_us);
                if configs[i] == Config::Slow10 {
                    slow_summary = summary;
                }
                runs[i].push(run);
            }
        }
        let base_rps = median(runs[0].iter().map(|r| r.rps).collect());
        let base_p50 = median(runs[0].iter().map(|r| r.p50).collect());
        let base_p99 = median(runs[0].iter().map(|r| r.p99).collect());
        let base_cpu = median(runs[0].iter().map(|r| r.cpu_per_req_us).collect());
        let base_workers = median(runs[0].iter().map(|r| r.workers_us).collect());
        let base_wrk = median(runs[0].iter().map(|r| r.wrk_us).collect());
        for (i, cfg) in configs.iter().enumerate() {
            let m = |f: fn(&Run) -> f64| median(runs[i].iter().map(f).collect());
            let rps = m(|r| r.rps);
            let row = json!({
                "endpoint": label,
                "config": cfg.name(),
                "rps": rps,
                "rps_ratio": rps / base_rps,
                "p50_ratio": m(|r| r.p50) / base_p50,
                "p99_ratio": m(|r| r.p99) / base_p99,
                "cpu_per_request_us": m(|r| r.cpu_per_req_us),
                "added_cpu_per_request_us": m(|r| r.cpu_per_req_us) - base_cpu,
                "added_cpu_per_request_us_split": {
                    "workers": m(|r| r.workers_us) - base_workers,
                    "wrk": m(|r| r.wrk_us) - base_wrk,
                    "tracer": m(|r| r.tracer_us),
                },
                "tracer_cpu_pct": m(|r| r.tracer_cpu_pct),
                "tracer_peak_rss_kib": runs[i].iter().map(|r| r.tracer_rss_kib).max().unwrap_or(0),
                "events_per_s": m(|r| r.events_per_s),
                "dropped_events": runs[i].iter().map(|r| r.dropped).sum::<f64>(),
            });
            table.push(format!(
                "| {label} | {} | {:.0} | {} | {} | {} | {:+.1} ({:+.1} {:+.1} {:+.1}) | {:.2} | {} | {:.0} | {} |",
                cfg.name(),
                rps,
                fmt_ratio(rps / base_rps),
                fmt_ratio(m(|r| r.p50) / base_p50),
                fmt_ratio(m(|r| r.p99) / base_p99),
                m(|r| r.cpu_per_req_us) - base_cpu,
                m(|r| r.workers_us) - base_workers,
                m(|r| r.wrk_us) - base_wrk,
                m(|r| r.tracer_us),
                m(|r| r.tracer_cpu_pct),
                runs[i].iter().map(|r| r.tracer_rss_kib).max().unwrap_or(0) / 1024,
                m(|r| r.events_per_s),
                runs[i].iter().map(|r| r.dropped).sum::<f64>()
            ));
            results.push(row);
        }
        if let Some(s) = slow_summary {
            eprintln!("bench: {label}: with ~10% slow: {} of {} requests reported slow, stacks {}", s["reported"], s["requests"], s["stacks"]);
        }
    }

    // Where the kernel time goes: per-program run time per request (kernel BPF stats, one run),
    // then the same with the all-traffic profiler on.
    let url = format!("http://127.0.0.1:{}/fast", server.port);
    let stats = |cfg: Config| -> anyhow::Result<(Vec<ProgramCost>, Value, WrkResult)> {
        let tracer = start_tracer(cfg, server.master_pid(), "500ms", &bin, &env.venv, &["--bpf-stats"])?.context("tracer")?;
        let r = wrk(&url, 1, 4, RUN_SECONDS)?;
        let mut t = tracer;
        t.guard.stop_with(libc::SIGTERM, Duration::from_secs(20));
        let out = t.stdout.take().and_then(|h| h.join().ok()).unwrap_or_default();
        let s = summary_of(&out).context("no summary from the stats run")?;
        let mut per_prog: Vec<(String, f64, f64)> = s["agent"]["bpf"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| {
                        (
                            p["program"].as_str().unwrap_or("?").to_string(),
                            p["runs"].as_f64().unwrap_or(0.0) / r.requests,
                            p["run_ms"].as_f64().unwrap_or(0.0) * 1e3 / r.requests,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        per_prog.sort_by(|a, b| b.2.total_cmp(&a.2));
        Ok((per_prog, s, r))
    };
    let (per_prog, _, _) = stats(Config::Default)?;
    let bpf_total_us: f64 = per_prog.iter().map(|p| p.2).sum();
    let (per_prog_all, s_all, r_all) = stats(Config::ProfileAll)?;
    let bpf_all_us: f64 = per_prog_all.iter().map(|p| p.2).sum();
    let sampler = per_prog_all.iter().find(|p| p.0 == "sample_all").cloned().unwrap_or_default();
    let sampler_us_per_run = if sampler.1 > 0.0 { sampler.2 / sampler.1 } else { f64::NAN };
    let sampled = &s_all["stacks"]["sampled"];
    let samples = ["request_samples", "no_request_samples", "offcpu_stacks"].iter().map(|k| sampled[*k].as_f64().unwrap_or(0.0)).sum::<f64>();
    // The tracer's side of a sample: its added CPU per hello-world request (medians of the
    // throughput rows) over the samples per request of the stats run.
    let tracer_us = |name: &str| {
        results
            .iter()
            .find(|r| r["endpoint"] == "hello-world" && r["config"] == name)
            .and_then(|r| r["added_cpu_per_request_us_split"]["tracer"].as_f64())
            .unwrap_or(f64::NAN)
    };
    let samples_per_req = samples / r_all.requests.max(1.0);
    let tracer_per_sample_us = (tracer_us(Config::ProfileAll.name()) - tracer_us(Config::Default.name())) / samples_per_req;
    // Everything the profiler adds per request (kernel programs and tracer), at the stats run's
    // throughput, over the two fully busy workers.
    let added_per_req = (bpf_all_us - bpf_total_us) + (tracer_us(Config::ProfileAll.name()) - tracer_us(Config::Default.name()));
    let per_worker_pct = added_per_req * r_all.rps / 2.0 / 1e6 * 100.0;

    // Alert latency: from crossing the threshold to the inflight line.
    let mut watch = Watch::start(&["--pid", &server.master_pid().to_string(), "--threshold", "50ms"]);
    let mut delays = Vec::new();
    for i in 0..60 {
        let path = format!("/sleep/150/a{i}");
        let port = server.port;
        let p = path.clone();
        let h = thread::spawn(move || {
            client::measure_precisely();
            let mut c = Client::new(port, false);
            let sent = Instant::now();
            let _ = c.request("GET", &p);
            sent
        });
        let line = watch.wait_for(Duration::from_secs(5), |l| l.ty() == "inflight" && l.json["path"] == path.as_str());
        let sent = h.join().map_err(|_| anyhow::anyhow!("client panicked"))?;
        if let Some(l) = line {
            delays.push((l.at - sent).as_secs_f64() * 1e3 - 50.0);
        }
    }
    watch.stop();
    delays.sort_by(f64::total_cmp);
    let alert_p50 = delays.get(delays.len() / 2).copied().unwrap_or(f64::NAN);
    let alert_p99 = delays.get(((delays.len() as f64 * 0.99).ceil() as usize).saturating_sub(1)).copied().unwrap_or(f64::NAN);

    // Serial: one worker and one wrk connection on the same CPU, the tracer on the other. Every
    // request's whole cost (worker, wrk, kernel, our programs) is then on that CPU, one request
    // at a time, so time per request = 1/throughput, repeatable to about 1%: the precise view of
    // the added cost per request. Then a pipe ping-pong in a process nobody watches: what every
    // other process on the host pays for the hooks.
    drop(server);
    let serial = serial_and_unrelated(&bin, &env.venv)?;
    let server = Gunicorn::start("flaskapp:app", 2, &[]);

    // Tracer CPU with no requests at all, then at a fixed 2k requests/s of hello-world.
    let tracer = start_tracer(Config::Default, server.master_pid(), "500ms", &bin, &env.venv, &[])?.context("tracer")?;
    let (i0, idle_start) = (exec_s(tracer.pid), Instant::now());
    thread::sleep(Duration::from_secs(10));
    let tracer_idle_pct = (exec_s(tracer.pid) - i0) / idle_start.elapsed().as_secs_f64() * 100.0;
    let c0 = exec_s(tracer.pid);
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (sent, stop) = (Arc::clone(&sent), Arc::clone(&stop));
            let port = server.port;
            thread::spawn(move || {
                let mut c = Client::new(port, false);
                let begin = Instant::now();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // 500 requests/s per client, paced.
                    let due = begin + Duration::from_micros(n * 2000);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        thread::sleep(wait);
                    }
                    if c.request("GET", "/fast").is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    n += 1;
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_secs(10));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    let wall = start.elapsed().as_secs_f64();
    let tracer_2k_pct = (exec_s(tracer.pid) - c0) / wall * 100.0;
    let rate_2k = sent.load(Ordering::Relaxed) as f64 / wall;
    let mut t = tracer;
    t.guard.stop_with(libc::SIGTERM, Duration::from_secs(20));
    drop(server);

    // Burst: a fast server, many connections, 10 s.
    let (port, server_child) = burst_server()?;
    let mut burst_guard = BurstServer(server_child);
    let mut watch = Watch::start(&["--pid", &burst_guard.0.id().to_string()]);
    let b = wrk(&format!("http://127.0.0.1:{port}/"), 2, 32, 10)?;
    // Afterwards: a slow request must still be seen and reported.
    let mut c = Client::new(port, false);
    let _ = c.request("GET", "/slow");
    let caught_up = watch.wait_for(Duration::from_secs(10), |l| l.ty() == "request" && l.json["path"] == "/slow").is_some();
    let lines = watch.stop();
    let bs = lines.iter().rev().find(|l| l.ty() == "summary").map(|l| l.json.clone()).unwrap_or(Value::Null);
    let _ = burst_guard.0.kill();
    let _ = burst_guard.0.wait();

    let bench = json!({
        "date": date,
        "machine": machine,
        "rounds": ROUNDS,
        "run_seconds": RUN_SECONDS,
        "throughput": results,
        "bpf_per_request": per_prog.iter().map(|(p, runs, us)| json!({"program": p, "runs": runs, "us": us})).collect::<Vec<_>>(),
        "bpf_us_per_request": bpf_total_us,
        "profile_all": {
            "bpf_us_per_request": bpf_all_us,
            "samples_per_request": samples_per_req,
            "sample_all_us_per_run": sampler_us_per_run,
            "tracer_us_per_sample": tracer_per_sample_us,
            "added_us_per_request": added_per_req,
            "pct_of_a_core_per_busy_worker": per_worker_pct,
            "target_pct": 0.5,
        },
        "serial": serial.json(),
        "alert_latency_ms": {"p50": alert_p50, "p99": alert_p99, "samples": delays.len()},
        "tracer_idle_cpu_pct": tracer_idle_pct,
        "tracer_at_2k_rps": {"achieved_rps": rate_2k, "tracer_cpu_pct": tracer_2k_pct},
        "burst": {"wrk_rps": b.rps, "wrk_requests": b.requests, "seen": bs["requests"], "dropped_events": bs["dropped_events"], "losses": bs["losses"], "caught_up": caught_up, "tracer_peak_rss_kib": bs["agent"]["max_rss_kib"]},
    });
    fs::write(out_dir.join("bench.json"), serde_json::to_string_pretty(&bench)? + "\n")?;

    println!(
        "introspect overhead — {machine}, {date} (medians of {ROUNDS} alternating {RUN_SECONDS} s runs; wrk -t1 -c4; gunicorn sync 2 workers + Flask)\n"
    );
    println!(
        "| endpoint | configuration | req/s | req/s ratio | p50 ratio | p99 ratio | added CPU µs/req (workers wrk tracer) | tracer CPU % | tracer peak RSS MiB | events/s | dropped |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for row in &table {
        println!("{row}");
    }
    println!("\nBPF run time per hello-world request (kernel stats): {bpf_total_us:.2} µs");
    for (p, runs, us) in &per_prog {
        println!("  {p:<28} {runs:>6.2} runs/req {us:>7.3} µs/req");
    }
    println!(
        "\nAll-traffic profiler (hello-world, 2 busy workers, {:.0} req/s): BPF {bpf_all_us:.2} µs/request against {bpf_total_us:.2} without; {samples_per_req:.3} stacks per request; one on-CPU sample's kernel walk {sampler_us_per_run:.1} µs, the tracer's part of a stack {tracer_per_sample_us:.1} µs; in all +{added_per_req:.2} µs per request = {per_worker_pct:.2}% of one core per busy worker (target 0.5%)",
        r_all.rps
    );
    serial.print();
    println!("\nAlert latency (threshold crossed → inflight line): p50 {alert_p50:.1} ms, p99 {alert_p99:.1} ms ({} requests)", delays.len());
    println!("Tracer CPU with no requests: {tracer_idle_pct:.2}% of one core; at {rate_2k:.0} hello-world requests/s: {tracer_2k_pct:.2}%");
    println!(
        "Burst (keep-alive server, wrk -t2 -c32, 10 s): {:.0} req/s offered and served, {} requests seen, {} dropped events, caught up afterwards: {caught_up}",
        b.rps, bs["requests"], bs["dropped_events"]
    );
    println!("\nwrote {}", out_dir.join("bench.json").display());
    Ok(())
}

/// Kills the burst server however the bench ends.
struct BurstServer(Child);

impl Drop for BurstServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
