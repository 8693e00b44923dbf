//! `cargo xtask demo`: a real gunicorn + Flask app with endpoints of known behaviour, real load,
//! and introspect watching it; slow requests are shown as they arrive. Ends by itself.
use std::{
    fs,
    io::Write as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use introspect_tests::{
    client::Client,
    guard::Guard,
    introspect::Watch,
    introspect_bin,
    nginx::{Nginx, Upstream},
    postgres::Postgres,
    server::Gunicorn,
    uwsgi::{Listen, Uwsgi},
};
use serde_json::Value;

use crate::{prepare, root};

const LOAD_SECONDS: u64 = 40;
const CLIENTS: usize = 4;

/// A fixed mix of endpoints: mostly fast, some sleepy, some CPU-bound, some waiting on the
/// database, some failing.
fn path_for(n: u64) -> String {
    // A small LCG so the demo is the same every run.
    let r = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) >> 33;
    match r % 100 {
        0..=61 => format!("/fast/{n}"),
        62..=75 => format!("/sleep/{}", 100 + (r / 100) % 8 * 100),
        76..=84 => format!("/cpu/{}", 50 + (r / 100) % 8 * 50),
        85..=89 => format!("/db/sleep/{}", 200 + (r / 100) % 4 * 100),
        90..=94 => "/fail".to_string(),
        _ => format!("/status/404/{n}"),
    }
}

/// "mostly sleep 499 ms" for the largest part of a breakdown ("on 127.0.0.1:5432" for network).
fn dominant(line: &Value) -> String {
    let Some(parts) = line["breakdown_ms"].as_object() else { return String::new() };
    let Some((k, v)) = parts.iter().filter_map(|(k, v)| Some((k, v.as_f64()?))).max_by(|a, b| a.1.total_cmp(&b.1)) else { return String::new() };
    match line["net_peers"][0]["peer"].as_str() {
        Some(peer) if k == "net_io" => format!("mostly {k} {v:.0} ms on {peer}"),
        _ => format!("mostly {k} {v:.0} ms"),
    }
}

/// The innermost Python frame of a stack: where the request was.
fn where_(line: &Value) -> String {
    line["stack"]
        .as_array()
        .and_then(|s| s.iter().find(|f| f["kind"] == "python"))
        .map(|f| {
            let file = f["file"].as_str().unwrap_or("").rsplit('/').next().unwrap_or("").to_string();
            format!(" in {} ({file}:{})", f["function"].as_str().unwrap_or("?"), f["line"])
        })
        .unwrap_or_default()
}

fn show(line: &Value) {
    let s = |k: &str| line[k].as_str().unwrap_or("?").to_string();
    match line["type"].as_str() {
        Some("inflight") => eprintln!(
            "  STILL RUNNING  {:>8.1} ms  {} {}{}  (pid {} tid {})",
            line["elapsed_ms"].as_f64().unwrap_or(0.0),
            s("method"),
            s("path"),
            where_(line),
            line["pid"],
            line["tid"]
        ),
        Some("request") => eprintln!(
            "  SLOW REQUEST   {:>8.1} ms  {} {} -> {}  ({}, queued {:.1} ms)",
            line["duration_ms"].as_f64().unwrap_or(0.0),
            s("method"),
            s("path"),
            line["status"],
            dominant(line),
            line["queue_ms"].as_f64().unwrap_or(0.0),
        ),
        Some("killed") => eprintln!(
            "  KILLED         {:>8.1} ms  {} {} -> {}  ({} by {} pid {}{}; the client got {})",
            line["elapsed_ms"].as_f64().unwrap_or(0.0),
            s("method"),
            s("path"),
            line["status"],
            s("reason"),
            line["signal"].as_str().unwrap_or("no signal"),
            line["sender_pid"],
            where_(line),
            match line["status"].as_u64() {
                Some(code) => format!("a {code}"),
                None => "no response".to_string(),
            }
        ),
        Some("interrupted") => eprintln!(
            "  INTERRUPTED    {:>8.1} ms  {} {} -> {}  ({} {:.0} ms before the {} kill{})",
            line["elapsed_ms"].as_f64().unwrap_or(0.0),
            s("method"),
            s("path"),
            line["status"],
            match s("outcome").as_str() {
                "raised" => "TimeoutError raised".to_string(),
                o => o.to_string(),
            },
            line["before_kill_ms"].as_f64().unwrap_or(0.0),
            line["kill_by"].as_str().unwrap_or("predicted"),
            line["why"].as_str().map(|w| format!(": {w}")).unwrap_or_default()
        ),
        Some("warning") => eprintln!("  WARNING        {}", s("message")),
        _ => {}
    }
}

pub fn run() -> anyhow::Result<()> {
    prepare()?;
    let out_dir = root().join("demo-out");
    fs::create_dir_all(&out_dir)?;

    eprintln!("demo: starting PostgreSQL, then gunicorn (gthread: 2 workers x 4 threads) with tests/apps/flaskapp.py");
    let pg = Postgres::start();
    // A new database connection for every request, closed when it ends: Django's default.
    let dsn = pg.dsn();
    let env = [("INTROSPECT_PG_DSN", dsn.as_str()), ("INTROSPECT_PG_PERSISTENT", "0")];
    let server = Gunicorn::start_with_env("flaskapp:app", 2, &["--worker-class", "gthread", "--threads", "4"], &env);
    let port = server.port.to_string();
    let recording = out_dir.join("events.recording");
    let flamegraph = out_dir.join("slow.svg");
    let mut watch = Watch::start(&[
        "--port",
        &port,
        "--threshold",
        "300ms",
        "--record",
        recording.to_str().unwrap_or("events.recording"),
        "--flamegraph",
        flamegraph.to_str().unwrap_or("slow.svg"),
    ]);
    eprintln!("demo: introspect watch --port {port} --threshold 300ms   ({CLIENTS} clients for {LOAD_SECONDS} s)\n");

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
            let port = server.port;
            thread::spawn(move || {
                let mut client = Client::new(port, c % 2 == 0);
                while !stop.load(Ordering::Relaxed) {
                    let n = sent.fetch_add(1, Ordering::Relaxed);
                    if client.request("GET", &path_for(n)).is_err() {
                        client = Client::new(port, c % 2 == 0);
                    }
                }
            })
        })
        .collect();

    let mut events = fs::File::create(out_dir.join("events.jsonl"))?;
    let until = Instant::now() + Duration::from_secs(LOAD_SECONDS);
    let mut shown = 0;
    while Instant::now() < until {
        if let Some(line) = watch.next_line(Duration::from_millis(200)) {
            writeln!(events, "{}", line.raw)?;
            show(&line.json);
            shown += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    let stderr = watch.stderr();
    let lines = watch.stop();
    let mut summary = None;
    // Lines printed after the load stopped: the last requests and the summary.
    for l in lines.iter().skip(shown) {
        writeln!(events, "{}", l.raw)?;
        show(&l.json);
        if l.ty() == "summary" {
            summary = Some(l.json.clone());
        }
    }
    fs::write(out_dir.join("introspect.stderr"), stderr)?;
    let sql_lines = sql_part(server.port, &out_dir)?;
    let hot_lines = hotspots_part(server.port, &out_dir)?;
    drop(server);
    drop(pg);

    if let Some(s) = summary {
        eprintln!(
            "\ndemo: {} requests seen ({} sent), {} reported slow, {} dropped events in {} s",
            s["requests"],
            sent.load(Ordering::Relaxed),
            s["reported"],
            s["dropped_events"],
            s["duration_s"]
        );
        eprintln!(
            "\n  {:<7} {:<18} {:>7} {:>6} {:>5} {:>10} {:>10} {:>10}",
            "method", "route", "count", "slow", "5xx", "total ms", "p50 ms", "p99 ms"
        );
        for e in s["endpoints"].as_array().into_iter().flatten() {
            eprintln!(
                "  {:<7} {:<18} {:>7} {:>6} {:>5} {:>10.1} {:>10.2} {:>10.2}",
                e["method"].as_str().unwrap_or(""),
                e["route"].as_str().unwrap_or(""),
                e["count"].as_u64().unwrap_or(0),
                e["slow"].as_u64().unwrap_or(0),
                e["errors_5xx"].as_u64().unwrap_or(0),
                e["total_ms"].as_f64().unwrap_or(0.0),
                e["p50_ms"].as_f64().unwrap_or(0.0),
                e["p99_ms"].as_f64().unwrap_or(0.0)
            );
        }
    }
    for line in sql_lines.iter().chain(&hot_lines) {
        eprintln!("{line}");
    }
    runaway(&out_dir)?;
    uwsgi_part(&out_dir)?;

    eprintln!("\ndemo: outputs in {}:", out_dir.display());
    eprintln!("  events.jsonl       the JSON lines introspect printed (slow requests with their breakdown, stack and profile;");
    eprintln!("                     inflight alerts; summary)");
    eprintln!("  slow.svg           flame graph of the slow requests, on-CPU and off-CPU (open it in a browser)");
    eprintln!("  events.recording   every kernel event, for `introspect replay demo-out/events.recording --all`");
    eprintln!("  sql.jsonl          the N+1 page and its JOIN twin, every request with its `sql`");
    eprintln!("  record/            `introspect record` of the hotspot mix: all.svg (where all requests' time went),");
    eprintln!("                     slow.svg, cpu.svg, offcpu.svg, routes/*.svg, events.jsonl, summary.json (with `hot`)");
    eprintln!("  runaway.jsonl      part 2: the interrupted and the killed request (runaway.recording: its kernel events)");
    eprintln!("  uwsgi.jsonl        part 3: uWSGI behind nginx on a Unix socket, every request with its queue_ms");
    eprintln!("  introspect.stderr  introspect's diagnostics");
    Ok(())
}

/// uWSGI (2 workers) on a Unix socket behind nginx's `uwsgi_pass`, watched by the socket's
/// path: a burst of six 300 ms requests waits in the socket's backlog, which no segment
/// shows; the arrivals come from nginx's connects.
fn uwsgi_part(out_dir: &std::path::Path) -> anyhow::Result<()> {
    eprintln!("\ndemo: part 3: uWSGI (2 workers) on a Unix socket, nginx in front (uwsgi_pass), six 300 ms requests at once");
    let server = Uwsgi::start_on(Listen::UwsgiUnix, 2, 1, &[]);
    let nginx = Nginx::start(Upstream::Uwsgi(server.upstream()));
    let socket = server.socket.clone().unwrap_or_default();
    let socket = socket.to_str().unwrap_or_default();
    let watch = Watch::start(&["--socket", socket, "--all"]);
    eprintln!("demo: introspect watch --socket {socket} --all\n");
    thread::sleep(Duration::from_millis(300));
    let port = nginx.port;
    let clients: Vec<_> = (0..6)
        .map(|i| thread::spawn(move || Client::new(port, false).request("GET", &format!("/sleep/300/u{i}")).map(|e| e.duration_ms())))
        .collect();
    let client_ms: Vec<f64> = clients.into_iter().filter_map(|c| c.join().ok()?.ok()).collect();
    thread::sleep(Duration::from_millis(300));
    let lines = watch.stop();
    let mut events = fs::File::create(out_dir.join("uwsgi.jsonl"))?;
    for l in &lines {
        writeln!(events, "{}", l.raw)?;
        let j = &l.json;
        match l.ty() {
            "request" => eprintln!(
                "  {:<6} {:<16} {:>3}  duration {:>7.1} ms, of which queued in the socket's backlog {:>6.1} ms  (worker {})",
                j["method"].as_str().unwrap_or(""),
                j["path"].as_str().unwrap_or(""),
                j["status"],
                j["duration_ms"].as_f64().unwrap_or(0.0),
                j["queue_ms"].as_f64().unwrap_or(0.0),
                j["pid"]
            ),
            "summary" => {
                for s in j["listeners"].as_array().into_iter().flatten() {
                    eprintln!(
                        "  summary: {}: {} connects, {} accepted, at most {} waiting at once, {} refused",
                        s["socket"].as_str().unwrap_or(""),
                        s["connects"],
                        s["accepts"],
                        s["backlog_peak"],
                        s["refused"]
                    );
                }
            }
            _ => {}
        }
    }
    let mut sorted = client_ms;
    sorted.sort_by(f64::total_cmp);
    eprintln!("  the clients measured (through nginx): {}", sorted.iter().map(|ms| format!("{ms:.0}")).collect::<Vec<_>>().join(", ") + " ms");
    Ok(())
}

/// The same server, watched with `--all`: an N+1 page (the last 30 orders, then each one's
/// customer in a query of its own) and its twin with the page's orders fetched in one query.
/// Returns what to print after the table of part 1.
fn sql_part(port: u16, out_dir: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let port_arg = port.to_string();
    let watch = Watch::start(&["--port", &port_arg, "--all"]);
    let mut out = vec![format!("\ndemo: SQL of one page, seen on the wire (introspect watch --port {port} --all)\n")];
    let mut client = Client::new(port, false);
    let n1 = client.request("GET", "/db/orders/30/n1")?;
    let one = client.request("GET", "/db/orders-joined/30/join")?;
    // A row lock: one request holds row 1 for 300 ms, another waits for it.
    let holder = thread::spawn(move || Client::new(port, false).request("GET", "/db/hold/300/holder"));
    thread::sleep(Duration::from_millis(100));
    let waiter = client.request("GET", "/db/forupdate/waiter")?;
    let _ = holder.join();
    thread::sleep(Duration::from_millis(300));
    let lines = watch.stop();
    let mut events = fs::File::create(out_dir.join("sql.jsonl"))?;
    for l in &lines {
        writeln!(events, "{}", l.raw)?;
    }
    for ex in [&n1, &one] {
        let Some(r) = lines.iter().find(|l| l.ty() == "request" && l.json["path"] == ex.path.as_str()) else {
            out.push(format!("  GET {}: not reported", ex.path));
            continue;
        };
        let sql = &r.json["sql"];
        out.push(format!(
            "  GET {:<28} {:>3} queries ({} by the app's own count), {:.1} ms of {:.1} ms in the database",
            ex.path,
            sql["queries"],
            ex.header("X-Queries").unwrap_or("?"),
            sql["time_ms"].as_f64().unwrap_or(0.0),
            r.json["duration_ms"].as_f64().unwrap_or(0.0)
        ));
        for p in sql["n_plus_one"].as_array().into_iter().flatten() {
            out.push(format!(
                "      N+1: {} x `{}` ({} distinct values, {:.1} ms)",
                p["count"],
                p["shape"].as_str().unwrap_or("?"),
                p["distinct"],
                p["time_ms"].as_f64().unwrap_or(0.0)
            ));
        }
    }
    match lines.iter().find(|l| l.ty() == "request" && l.json["path"] == waiter.path.as_str()) {
        Some(r) => {
            let (sql, w) = (&r.json["sql"], &r.json["sql"]["db_wait_ms"]);
            let by = &sql["blocked_by"][0];
            out.push(format!(
                "  GET {:<28} {:.1} ms: {:.1} ms waiting for a row lock ({}), held by pid {} serving {} {}",
                waiter.path,
                r.json["duration_ms"].as_f64().unwrap_or(0.0),
                w["lock"].as_f64().unwrap_or(0.0),
                w["events"][0]["event"].as_str().unwrap_or("?"),
                by["pid"],
                by["method"].as_str().unwrap_or("?"),
                by["path"].as_str().unwrap_or("?"),
            ));
        }
        None => out.push(format!("  GET {}: not reported", waiter.path)),
    }
    Ok(out)
}

/// The same server under `introspect record` (every request profiled at 49 Hz): a 120 ms CPU
/// page called often and a 1.5 s page called rarely. The first costs the site the most and
/// leads the hot-function table; the second leads the slow-only view.
fn hotspots_part(port: u16, out_dir: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let dir = out_dir.join("record");
    let _ = fs::remove_dir_all(&dir);
    let mut cmd = std::process::Command::new(introspect_bin());
    cmd.args(["record", "--port", &port.to_string(), "--duration", "10s", "--out"])
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut record = Guard::spawn("introspect record", &mut cmd)?;
    let mut out = vec![format!("\ndemo: hotspots of all traffic (introspect record --port {port} --duration 10s --out demo-out/record)\n")];
    thread::sleep(Duration::from_secs(2));
    let clients: Vec<_> = (0..2)
        .map(|c| {
            thread::spawn(move || {
                let mut client = Client::new(port, false);
                for i in 0..30 {
                    let path = if c == 0 && i % 15 == 7 { format!("/report/1500/{i}") } else { format!("/catalog/120/{}", c * 100 + i) };
                    let _ = client.request("GET", &path);
                }
            })
        })
        .collect();
    for c in clients {
        let _ = c.join();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while record.try_wait().is_none() {
        if Instant::now() > deadline {
            out.push("  record did not finish".into());
            return Ok(out);
        }
        thread::sleep(Duration::from_millis(100));
    }
    let summary: Value = serde_json::from_str(&fs::read_to_string(dir.join("summary.json"))?)?;
    out.push(format!("  {:<34} {:>10} {:>10} {:>6} {:>6}  top route", "hot function (file:line)", "self ms", "total ms", "CPU%", "reqs"));
    for h in summary["hot"].as_array().into_iter().flatten().filter(|h| h["self_cpu_ms"].as_f64().unwrap_or(0.0) > 0.0).take(5) {
        let file = h["file"].as_str().unwrap_or("?").rsplit('/').next().unwrap_or("?");
        out.push(format!(
            "  {:<34} {:>10.1} {:>10.1} {:>5.1}% {:>6}  {}",
            format!("{} ({file}:{})", h["function"].as_str().unwrap_or("?"), h["line"]),
            h["self_cpu_ms"].as_f64().unwrap_or(0.0),
            h["total_cpu_ms"].as_f64().unwrap_or(0.0),
            h["share_cpu"].as_f64().unwrap_or(0.0) * 100.0,
            h["requests"],
            h["routes"][0]["route"].as_str().unwrap_or("")
        ));
    }
    let slow = fs::read_to_string(dir.join("slow.folded")).unwrap_or_default();
    let slow_routes: std::collections::BTreeSet<&str> = slow.lines().filter_map(|l| l.split(';').next()).collect();
    out.push(format!(
        "  {} samples outside any request; the slow-only view (slow.svg) holds: {}",
        summary["no_request"]["samples"],
        slow_routes.into_iter().collect::<Vec<_>>().join(", ")
    ));
    Ok(out)
}

/// Part 2: runaway requests on a sync gunicorn with a 3 s `--timeout`, watched with
/// `--interrupt-before 1s`. A Python loop gets a TimeoutError a second before gunicorn would kill
/// its worker: Flask answers its own 500 and the worker lives. `7 ** (7 ** 9)` is one C call that
/// never returns to the evaluation loop, so the exception cannot land: gunicorn kills the worker,
/// and introspect says who killed it, with what, and where it was.
fn runaway(out_dir: &std::path::Path) -> anyhow::Result<()> {
    eprintln!("\ndemo: part 2: gunicorn (sync, 2 workers, --timeout 3) and two runaway requests");
    let server = Gunicorn::start("flaskapp:app", 2, &["--timeout", "3"]);
    let port = server.port.to_string();
    let recording = out_dir.join("runaway.recording");
    let recording = recording.to_str().unwrap_or("runaway.recording");
    let mut watch = Watch::start(&["--port", &port, "--threshold", "1s", "--interrupt-before", "1s", "--record", recording]);
    eprintln!("demo: introspect watch --port {port} --threshold 1s --interrupt-before 1s\n");
    let port = server.port;
    let clients: Vec<_> = ["/chain/cpu/20000", "/bigint"]
        .into_iter()
        .map(|path| thread::spawn(move || Client::new(port, false).request("GET", path).map(|e| (path, e.status, e.duration_ms()))))
        .collect();
    let mut events = fs::File::create(out_dir.join("runaway.jsonl"))?;
    let (mut killed, mut shown, until) = (false, 0, Instant::now() + Duration::from_secs(15));
    while !killed && Instant::now() < until {
        if let Some(line) = watch.next_line(Duration::from_millis(200)) {
            writeln!(events, "{}", line.raw)?;
            show(&line.json);
            killed |= line.ty() == "killed";
            shown += 1;
        }
    }
    for c in clients {
        match c.join() {
            Ok(Ok((path, status, ms))) => eprintln!("  client: GET {path} -> {status} after {ms:.0} ms"),
            Ok(Err(e)) => eprintln!("  client: {e}"),
            Err(_) => eprintln!("  client: the client thread panicked"),
        }
    }
    let log = fs::read_to_string(&server.log).unwrap_or_default();
    eprintln!("  gunicorn's log: {} WORKER TIMEOUT", log.matches("WORKER TIMEOUT").count());
    for l in watch.stop().iter().skip(shown) {
        writeln!(events, "{}", l.raw)?;
        show(&l.json);
        if l.ty() == "summary" {
            eprintln!("  summary: {} interrupted, {} killed", l.json["interrupted"], l.json["killed"]);
        }
    }
    Ok(())
}
