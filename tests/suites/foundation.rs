//! Foundation: every request of a real gunicorn + Flask server is measured in the kernel,
//! reported once, with the right identity, status, thread and timing — checked against what the
//! client measured.
use std::{collections::BTreeSet, fs, os::unix::fs::PermissionsExt, process::Command, thread, time::Duration};

use introspect_tests::{
    can_trace,
    checks::{check_against_client, drive, mixed_paths, requests, summary},
    client::{self, Client},
    introspect::{self, Watch},
    introspect_bin,
    server::Gunicorn,
};

const DELAYS_MS: [u32; 11] = [0, 1, 2, 5, 10, 20, 50, 100, 200, 300, 500];

/// The kernel's cap on every listen() backlog.
fn somaxconn() -> u64 {
    fs::read_to_string("/proc/sys/net/core/somaxconn").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(4096)
}

#[test]
fn sync_workers_every_request_once_with_client_timing() {
    if !can_trace("sync_workers_every_request_once_with_client_timing") {
        return;
    }
    let server = Gunicorn::start("flaskapp:app", 2, &[]);
    let pid = server.master_pid().to_string();
    let watch = Watch::start(&["--pid", &pid, "--all"]);
    let paths = mixed_paths(220, "r", &DELAYS_MS);
    let exchanges = drive(server.port, paths, 2, false, true);
    assert!(exchanges.iter().any(|e| e.status == 404) && exchanges.iter().any(|e| e.status == 500));
    thread::sleep(Duration::from_millis(200));
    let lines = watch.stop();
    check_against_client(&exchanges, &lines, true);
}

#[test]
fn gthread_workers_attribute_each_request_to_its_thread() {
    if !can_trace("gthread_workers_attribute_each_request_to_its_thread") {
        return;
    }
    let server = Gunicorn::start("flaskapp:app", 2, &["--worker-class", "gthread", "--threads", "4", "--keep-alive", "5"]);
    let port = server.port.to_string();
    // --port: the watch finds the master and workers from the listening socket.
    let watch = Watch::start(&["--port", &port, "--all"]);
    let paths: Vec<String> = (0..240).map(|i| format!("/sleep/{}/t{i}", DELAYS_MS[i % 9])).collect();
    let exchanges = drive(server.port, paths, 6, true, false);
    let tids: BTreeSet<_> = exchanges.iter().filter_map(|e| e.server_tid).collect();
    assert!(tids.len() > 2, "expected several serving threads, got {tids:?}");
    thread::sleep(Duration::from_millis(200));
    let lines = watch.stop();
    check_against_client(&exchanges, &lines, true);
    // Keep-alive was real: far fewer connections than requests.
    let peers: BTreeSet<_> = requests(&lines).iter().map(|r| r["peer"].as_str().unwrap_or("").to_string()).collect();
    assert!(peers.len() < exchanges.len() / 4, "{} connections for {} requests", peers.len(), exchanges.len());
}

#[test]
fn recycled_workers_are_followed() {
    if !can_trace("recycled_workers_are_followed") {
        return;
    }
    let server = Gunicorn::start("flaskapp:app", 2, &["--max-requests", "20"]);
    let first_workers: BTreeSet<u32> = server.workers().into_iter().collect();
    let pid = server.master_pid().to_string();
    let watch = Watch::start(&["--pid", &pid, "--all"]);
    let paths: Vec<String> = (0..120).map(|i| format!("/fast/m{i}")).collect();
    let exchanges = drive(server.port, paths, 2, false, false);
    thread::sleep(Duration::from_millis(300));
    let lines = watch.stop();
    check_against_client(&exchanges, &lines, true);
    let serving: BTreeSet<u32> = requests(&lines).iter().map(|r| r["pid"].as_u64().unwrap() as u32).collect();
    let new: Vec<_> = serving.difference(&first_workers).collect();
    assert!(new.len() >= 3, "requests served by workers born during the watch: {new:?} (all: {serving:?})");
    assert!(summary(&lines)["processes_followed"].as_u64().unwrap() >= 3);
}

#[test]
fn inflight_arrives_while_the_request_runs() {
    if !can_trace("inflight_arrives_while_the_request_runs") {
        return;
    }
    let server = Gunicorn::start("flaskapp:app", 2, &[]);
    let pid = server.master_pid().to_string();
    let threshold_ms = 300.0;
    let mut watch = Watch::start(&["--pid", &pid, "--threshold", "300ms"]);
    let mut delays = Vec::new();
    for i in 0..6 {
        let path = format!("/sleep/900/i{i}");
        let exchange = {
            let path = path.clone();
            let port = server.port;
            thread::spawn(move || {
                client::measure_precisely();
                Client::new(port, false).request("GET", &path).expect("slow request")
            })
        };
        let line = watch
            .wait_for(Duration::from_secs(5), |l| l.ty() == "inflight" && l.json["path"] == path.as_str())
            .unwrap_or_else(|| panic!("no inflight event for {path}"));
        let ex = exchange.join().expect("client");
        assert!(line.at < ex.received, "inflight for {path} arrived after the response");
        let elapsed = line.json["elapsed_ms"].as_f64().unwrap();
        assert!(elapsed >= threshold_ms, "inflight before the threshold: {}", line.json);
        let delay = (line.at - ex.sent).as_secs_f64() * 1e3 - threshold_ms;
        delays.push(delay);
    }
    delays.sort_by(f64::total_cmp);
    eprintln!("inflight alert delay after crossing the threshold: min {:.1} ms, median {:.1} ms, max {:.1} ms", delays[0], delays[3], delays[5]);
    let lines = watch.stop();
    // Slow requests are also reported when they complete; fast ones are not (no --all).
    assert_eq!(requests(&lines).len(), 6);
}

#[test]
fn bad_invocations_fail_clearly() {
    if !can_trace("bad_invocations_fail_clearly") {
        return;
    }
    // Unknown pid: pids are always below pid_max.
    let pid_max = fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().to_string();
    let out = introspect::run(&["watch", "--pid", &pid_max]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(err.contains(&format!("no process with pid {pid_max}")), "stderr: {err}");
    assert!(out.stdout.is_empty());

    // Nobody listens on port 1.
    let out = introspect::run(&["watch", "--port", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no process is listening on TCP port 1"));

    // Nobody listens on this Unix socket path (nor is there a file).
    let out = introspect::run(&["watch", "--socket", "/nonexistent/app.sock"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.trim(), "introspect: no process is listening on the Unix socket /nonexistent/app.sock");

    // Not root: one clear line and exit code 2. The binary is copied where an unprivileged user
    // can run it (the checkout may sit under a private home directory).
    let dir = std::env::temp_dir().join(format!("introspect-nonroot-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.join("introspect");
    fs::copy(introspect_bin(), &bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .args(["watch", "--pid", "1"])
        .output()
        .expect("setpriv");
    let _ = fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "stderr: {err}");
    assert!(err.contains("must run as root"), "stderr: {err}");
}

#[test]
fn mounts_tracefs_when_it_is_not_mounted() {
    if !can_trace("mounts_tracefs_when_it_is_not_mounted") {
        return;
    }
    // In a private mount namespace, take tracefs away and check introspect puts it back.
    let script = r#"
        umount /sys/kernel/debug/tracing 2>/dev/null; umount /sys/kernel/tracing 2>/dev/null
        if [ -d /sys/kernel/tracing/events ]; then echo "tracefs still mounted" >&2; exit 99; fi
        exec "$0" watch --pid $$ --duration 1s
    "#;
    let out =
        Command::new("unshare").args(["--mount", "--propagation", "private", "sh", "-c", script]).arg(introspect_bin()).output().expect("unshare");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}; stderr: {err}", out.status);
    assert!(err.contains("mounted tracefs at /sys/kernel/tracing"), "stderr: {err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.lines().any(|l| l.contains(r#""type":"summary""#)), "stdout: {stdout}");
}

#[test]
fn backlog_wait_is_counted_as_queue() {
    if !can_trace("backlog_wait_is_counted_as_queue") {
        return;
    }
    // One sync worker, three clients at once: two of them wait in the listen backlog.
    let server = Gunicorn::start("flaskapp:app", 1, &[]);
    let pid = server.master_pid().to_string();
    let watch = Watch::start(&["--pid", &pid, "--all"]);
    let paths: Vec<String> = (0..3).map(|i| format!("/sleep/300/q{i}")).collect();
    let exchanges = drive(server.port, paths, 3, false, false);
    thread::sleep(Duration::from_millis(200));
    let lines = watch.stop();
    check_against_client(&exchanges, &lines, true);
    let mut queues: Vec<(f64, f64)> =
        requests(&lines).iter().map(|r| (r["queue_ms"].as_f64().unwrap(), r["duration_ms"].as_f64().unwrap())).collect();
    queues.sort_by(|a, b| a.0.total_cmp(&b.0));
    eprintln!("(queue_ms, duration_ms): {queues:?}");
    assert!(queues[0].0 < 5.0, "the first request did not wait: {queues:?}");
    assert!((270.0..400.0).contains(&queues[1].0), "the second waited for one request: {queues:?}");
    assert!((570.0..700.0).contains(&queues[2].0), "the third waited for two: {queues:?}");
    // The listener's backlog, sampled every 250 ms: gunicorn's default --backlog 2048 (under
    // somaxconn), and at least one of the two waiting connections seen.
    let s = summary(&lines);
    let name = format!("127.0.0.1:{}", server.port);
    let listener = s["listeners"].as_array().and_then(|l| l.iter().find(|l| l["socket"] == name.as_str())).unwrap_or_else(|| panic!("{name}: {s}"));
    assert_eq!(listener["backlog_max"].as_u64(), Some(somaxconn().min(2048)), "{s}");
    assert!(listener["backlog_peak"].as_u64().unwrap() >= 1, "{s}");
    for (queue, duration) in &queues {
        let served = duration - queue;
        assert!((295.0..330.0).contains(&served), "time after the backlog should be the 300 ms sleep: {queues:?}");
    }
}
