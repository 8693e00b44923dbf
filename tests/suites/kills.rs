//! Killed workers: every request in flight when a real server kills its worker (gunicorn's
//! timeout, uWSGI's harakiri, the OOM killer) gets a `killed` line saying who killed it, why, what
//! the client got and where the code was — checked against the server's own log and what the
//! client received.
use std::{fs, thread, time::Duration};

use introspect_tests::{
    apps::line,
    can_trace,
    cgroup::MemoryLimit,
    client::{Client, Exchange},
    introspect::{Line, Watch},
    server::Gunicorn,
    uwsgi::Uwsgi,
};
use serde_json::Value;

/// What the client got: the exchange, or the error (an empty reply when the worker died).
fn request_in_thread(port: u16, path: &str) -> thread::JoinHandle<Result<Exchange, String>> {
    let path = path.to_string();
    thread::spawn(move || Client::new(port, false).request("GET", &path).map_err(|e| e.to_string()))
}

fn killed<'a>(lines: &'a [Line], path: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l.ty() == "killed" && l.json["path"] == path).map(|l| &l.json).collect()
}

/// A killed line without its stacks and profile, for messages.
fn brief(k: &Value) -> Value {
    let mut k = k.clone();
    for f in ["profile", "stack", "stacks_before_kill", "syscalls", "net_peers"] {
        if let Some(o) = k.as_object_mut() {
            o.remove(f);
        }
    }
    k
}

/// (function, line) of the Python frames of a stack.
fn python_frames(stack: &Value) -> Vec<(String, u64)> {
    stack
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["kind"] == "python")
        .map(|f| (f["function"].as_str().unwrap_or("").to_string(), f["line"].as_u64().unwrap_or(0)))
        .collect()
}

/// The `killed` line of `path` matches what the client got, and its stack holds `function` at
/// the app's line marker `marker`.
fn check_killed(k: &Value, got: &Result<Exchange, String>, function: &str, marker: &str) {
    match got {
        Ok(ex) => {
            assert_eq!(k["status"], ex.status, "the status the client got: {}", brief(k));
            assert_eq!(k["response"], "complete", "{}", brief(k));
        }
        Err(e) => {
            assert!(k["status"].is_null(), "the client got no response ({e}): {}", brief(k));
            assert_eq!(k["response"], "none", "{}", brief(k));
        }
    }
    let frames = python_frames(&k["stack"]);
    let want = (function.to_string(), line(marker));
    assert!(frames.contains(&want), "the stack at the kill holds {want:?}: {frames:?}");
    for f in ["pid", "tid", "elapsed_ms", "exit_code", "breakdown_ms", "start_ts"] {
        assert!(k.get(f).is_some(), "killed lines carry {f}: {}", brief(k));
    }
}

#[test]
fn gunicorn_sync_timeouts() {
    if !can_trace("gunicorn_sync_timeouts") {
        return;
    }
    let server = Gunicorn::start("flaskapp:app", 1, &["--timeout", "3"]);
    let master = server.master_pid();
    let pid = master.to_string();
    let mut watch = Watch::start(&["--pid", &pid, "--all"]);
    let mut workers = Vec::new();
    // Pure Python: gunicorn's SIGABRT handler raises SystemExit in the view; gunicorn answers 500.
    // A C loop that never checks for signals: the handler cannot run, SIGKILL follows a second
    // later. 7 ** (7 ** 9): a C call that does check for signals (longobject.c), so the handler
    // runs in it.
    // A catastrophic regex runs in one C call too (_sre); a sleep is a blocking syscall, which
    // the signal interrupts.
    let cases = [
        ("/chain/cpu/20000/k1", "helper_cpu", "helper_cpu"),
        ("/sum/3000000000/k2", "csum", "sum"),
        ("/bigint/k3", "bigint", "bigint"),
        ("/chain/regex/40/k4", "helper_regex", "helper_regex"),
        ("/chain/sleep/20000/k5", "helper_sleep", "helper_sleep"),
    ];
    for (path, function, marker) in cases {
        workers.push(server.workers());
        let got = request_in_thread(server.port, path).join().expect("client");
        let line = watch
            .wait_for(Duration::from_secs(10), |l| l.ty() == "killed" && l.json["path"] == path)
            .unwrap_or_else(|| panic!("no killed line for {path}"));
        let k = &line.json;
        eprintln!(
            "{path}: {} {} by {} ({}), {} signals, status {}, exit {}, after {} ms",
            k["reason"],
            k["signal"],
            k["sender_pid"],
            k["sender_comm"],
            k["signals"].as_array().map_or(0, Vec::len),
            k["status"],
            k["exit_code"],
            k["elapsed_ms"]
        );
        assert_eq!(k["reason"], "gunicorn_timeout", "{k}");
        assert_eq!(k["sender_pid"], master, "the arbiter sent it: {k}");
        assert_eq!(k["signals"][0]["signal"], "SIGABRT", "{k}");
        let elapsed = k["elapsed_ms"].as_f64().unwrap();
        assert!((2_900.0..5_500.0).contains(&elapsed), "killed {elapsed} ms in, with --timeout 3: {k}");
        check_killed(k, &got, function, marker);
        if got.is_err() {
            // The handler never ran: SIGKILL on the arbiter's next tick, about a second later.
            assert_eq!(k["signal"], "SIGKILL", "{k}");
            let gap = k["signals"][1]["at_ms"].as_f64().unwrap() - k["signals"][0]["at_ms"].as_f64().unwrap();
            assert!((500.0..2_500.0).contains(&gap), "SIGKILL {gap} ms after SIGABRT: {k}");
        } else {
            assert_eq!(k["signal"], "SIGABRT", "{k}");
        }
        assert!(k["stacks_before_kill"].as_array().is_some_and(|s| !s.is_empty()), "stacks taken before the kill: {k}");
        // Wait for the arbiter's replacement worker.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while server.workers() == *workers.last().unwrap() || server.workers().is_empty() {
            assert!(std::time::Instant::now() < deadline, "no new worker");
            thread::sleep(Duration::from_millis(50));
        }
        thread::sleep(Duration::from_millis(500));
    }
    // The new worker is followed: its requests are reported.
    let after = Client::new(server.port, false).request("GET", "/fast/after").expect("after the kills");
    assert_eq!(after.status, 200);
    thread::sleep(Duration::from_millis(300));
    let lines = watch.stop();
    let served = lines.iter().find(|l| l.ty() == "request" && l.json["path"] == "/fast/after").expect("the request after the kills is reported");
    assert!(!workers.iter().flatten().any(|w| served.json["pid"] == *w), "served by a worker born after the kills: {}", served.json);
    // One WORKER TIMEOUT in gunicorn's own log per killed line, one killed line per kill.
    let log = fs::read_to_string(&server.log).unwrap_or_default();
    let all_killed = lines.iter().filter(|l| l.ty() == "killed").count();
    assert_eq!(log.matches("WORKER TIMEOUT").count(), all_killed, "gunicorn's log:\n{log}");
    assert_eq!(all_killed, cases.len());
    for (path, _, _) in cases {
        assert_eq!(killed(&lines, path).len(), 1, "{path}: one killed line");
        let r = lines.iter().filter(|l| l.ty() == "request" && l.json["path"] == path).collect::<Vec<_>>();
        assert!(r.iter().all(|l| l.json["killed"] == true), "{path}: a request line says it was killed");
    }
    let s = &lines.iter().find(|l| l.ty() == "summary").expect("summary").json;
    assert_eq!(s["killed"], cases.len(), "{s}");
}

#[test]
fn gthread_timeouts_come_from_a_starved_heartbeat() {
    if !can_trace("gthread_timeouts_come_from_a_starved_heartbeat") {
        return;
    }
    let server = Gunicorn::start("flaskapp:app", 1, &["--worker-class", "gthread", "--threads", "2", "--timeout", "3"]);
    let pid = server.master_pid().to_string();
    let mut watch = Watch::start(&["--pid", &pid, "--threshold", "500ms"]);
    // A slow request alone: the main thread goes on beating; gunicorn kills nothing.
    let slow = Client::new(server.port, false).request("GET", "/sleep/5000/g1").expect("a 5 s request");
    assert_eq!(slow.status, 200);
    // A C call holding the GIL in a request thread starves the main thread's heartbeat.
    let got = request_in_thread(server.port, "/bigint/g2").join().expect("client");
    assert!(got.is_err(), "the worker died without answering: {got:?}");
    let line = watch.wait_for(Duration::from_secs(10), |l| l.ty() == "killed").expect("a killed line");
    let k = &line.json;
    eprintln!("gthread: {} {} after {} ms: {}", k["path"], k["reason"], k["elapsed_ms"], k["signals"]);
    assert_eq!(
        (k["path"].as_str(), k["reason"].as_str(), k["signal"].as_str()),
        (Some("/bigint/g2"), Some("gunicorn_timeout"), Some("SIGKILL")),
        "{k}"
    );
    check_killed(k, &got, "bigint", "bigint");
    let lines = watch.stop();
    assert_eq!(lines.iter().filter(|l| l.ty() == "killed").count(), 1, "the slow request alone was not killed");
    let log = fs::read_to_string(&server.log).unwrap_or_default();
    assert_eq!(log.matches("WORKER TIMEOUT").count(), 1, "gunicorn's log:\n{log}");
}

#[test]
fn uwsgi_harakiri() {
    if !can_trace("uwsgi_harakiri") {
        return;
    }
    // (extra arguments, the signals the worker gets, when it dies in ms after the start).
    // uWSGI's worker exits on the default graceful signal (SIGTERM) at once; one that survives
    // the graceful signal (SIGUSR1 here) is killed --harakiri-graceful-timeout later.
    let cases: [(&[&str], &[&str], f64); 3] = [
        (&[], &["SIGKILL"], 3_000.0),
        (&["--harakiri-graceful-timeout", "2"], &["SIGTERM"], 3_000.0),
        (&["--harakiri-graceful-timeout", "2", "--harakiri-graceful-signal", "10"], &["SIGUSR1", "SIGKILL"], 5_000.0),
    ];
    for (extra, want_signals, died_at) in cases {
        let mut args = vec!["--harakiri", "3"];
        args.extend_from_slice(extra);
        let server = Uwsgi::start(&args);
        let master = server.master_pid();
        let pid = master.to_string();
        let mut watch = Watch::start(&["--pid", &pid, "--threshold", "500ms"]);
        let got = request_in_thread(server.port, "/chain/cpu/20000/u1");
        let inflight = watch.wait_for(Duration::from_secs(5), |l| l.ty() == "inflight").expect("an inflight line");
        let got = got.join().expect("client");
        let line = watch.wait_for(Duration::from_secs(12), |l| l.ty() == "killed").expect("a killed line");
        let k = &line.json;
        let signals: Vec<&str> = k["signals"].as_array().unwrap().iter().map(|s| s["signal"].as_str().unwrap()).collect();
        eprintln!("uwsgi {extra:?}: {} {} after {} ms, signals {signals:?}, exit {}", k["reason"], k["signal"], k["elapsed_ms"], k["exit_code"]);
        assert_eq!((k["path"].as_str(), k["reason"].as_str()), (Some("/chain/cpu/20000/u1"), Some("uwsgi_harakiri")), "{}", brief(k));
        assert_eq!(k["sender_pid"], master, "uWSGI's master: {}", brief(k));
        assert_eq!(signals, want_signals, "{}", brief(k));
        assert_eq!(k["signal"].as_str(), want_signals.last().copied(), "{}", brief(k));
        check_killed(k, &got, "helper_cpu", "helper_cpu");
        // uWSGI checks once a second, with second resolution: give or take one.
        let elapsed = k["elapsed_ms"].as_f64().unwrap();
        assert!(elapsed > died_at - 1_500.0 && elapsed < died_at + 1_500.0, "died after {elapsed} ms: {}", brief(k));
        if want_signals.len() == 2 {
            let gap = k["signals"][1]["at_ms"].as_f64().unwrap() - k["signals"][0]["at_ms"].as_f64().unwrap();
            assert!((1_500.0..2_600.0).contains(&gap), "SIGKILL {gap} ms after the graceful signal (--harakiri-graceful-timeout 2): {}", brief(k));
        }
        assert_eq!(inflight.json["kill_by"], "uwsgi_harakiri", "{}", inflight.json);
        let kill_in = inflight.json["kill_in_ms"].as_f64().expect("kill_in_ms");
        assert!((2_000.0..3_000.0).contains(&kill_in), "{}", inflight.json);
        watch.stop();
        assert!(server.log_text().contains("HARAKIRI"), "uWSGI's log:\n{}", server.log_text());
    }
}

#[test]
fn oom_kills_carry_the_memory() {
    if !can_trace("oom_kills_carry_the_memory") {
        return;
    }
    let server = Gunicorn::start("flaskapp:app", 1, &[]);
    let worker = server.workers()[0];
    // Memory the worker already has stays charged where it was (cgroup v1 moves no charges), so
    // its resident memory at the kill can be the limit plus that.
    let before_kb: u64 = fs::read_to_string(format!("/proc/{worker}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("RssAnon:"))?.split_whitespace().nth(1)?.parse().ok())
        .expect("RssAnon of the worker");
    let limit = MemoryLimit::new(&format!("introspect-oom-{}", server.port), 256 << 20);
    limit.add(worker);
    let pid = server.master_pid().to_string();
    let mut watch = Watch::start(&["--pid", &pid]);
    let got = request_in_thread(server.port, "/alloc/1024/o1").join().expect("client");
    assert!(got.is_err(), "the worker was killed: {got:?}");
    let line = watch.wait_for(Duration::from_secs(10), |l| l.ty() == "killed").expect("a killed line");
    let k = &line.json;
    eprintln!("oom ({}): {} {}, rss {}", limit.describe(), k["reason"], k["signal"], k["oom"]);
    assert_eq!((k["path"].as_str(), k["reason"].as_str(), k["signal"].as_str()), (Some("/alloc/1024/o1"), Some("oom"), Some("SIGKILL")), "{k}");
    assert_eq!(k["pid"], worker, "{k}");
    let rss = k["oom"]["anon_rss_kb"].as_u64().expect("oom.anon_rss_kb");
    assert!(
        (150_000..=262_144 + before_kb).contains(&rss),
        "the worker's anonymous memory at the kill ({before_kb} kB before it was limited to 256 MiB): {k}"
    );
    assert_eq!(k["response"], "none", "{k}");
    watch.stop();
}
