//! Where the time went: each endpoint of the test app spends a known time on one cause, and the
//! breakdown must put it in the right category, with the parts adding up to the duration.
use std::{
    fs,
    io::Write,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use introspect_tests::{
    can_trace,
    checks::{check_against_client, drive, requests},
    client::{self, Client, Exchange},
    guard::Guard,
    introspect::{self, Line, Watch},
    nginx::{Nginx, Upstream},
    postgres::Postgres,
    server::Gunicorn,
    uwsgi::{Listen, Uwsgi},
};
use serde_json::Value;

const PARTS: [&str; 9] = ["queue", "on_cpu", "runqueue", "disk_io", "net_io", "lock", "gil", "sleep", "other"];
/// Categories a request waits in (on_cpu, runqueue and queue are checked separately).
const WAITS: [&str; 6] = ["disk_io", "net_io", "lock", "gil", "sleep", "other"];

fn part(r: &Value, name: &str) -> f64 {
    r["breakdown_ms"][name].as_f64().unwrap_or_else(|| panic!("breakdown_ms.{name} missing: {r}"))
}

/// The parts add up to duration_ms within 1%.
fn check_sum(r: &Value) {
    let sum: f64 = PARTS.iter().map(|p| part(r, p)).sum();
    let duration = r["duration_ms"].as_f64().unwrap();
    assert!((sum - duration).abs() <= duration * 0.01 + 0.01, "parts sum to {sum}, duration {duration}: {r}");
}

fn within(got: f64, want: f64) -> bool {
    (got - want).abs() <= (want * 0.10).max(5.0)
}

/// `dominant` holds `want_ms` (max(5 ms, 10%)), the other waits are near zero, the thread's CPU
/// matches what the app measured, and the parts add up. `stolen` is the hypervisor's steal time
/// during the request (both CPUs' worth): it may stand in the app's truth but not in ours.
fn check_cause(r: &Value, ex: &Exchange, dominant: &str, want_ms: f64, stolen: f64) {
    check_sum(r);
    let got = part(r, dominant);
    let ok = (got - want_ms).abs() <= (want_ms * 0.10).max(5.0) + stolen;
    assert!(ok, "{}: {dominant} = {got} ms, the app spent {want_ms:.1} ms ({stolen:.0} ms stolen by the hypervisor meanwhile): {r}", ex.path);
    for w in WAITS.iter().filter(|w| **w != dominant) {
        let v = part(r, w);
        assert!(v <= 5.0, "{}: unrelated {w} = {v} ms: {r}", ex.path);
    }
    if dominant != "on_cpu" {
        let cpu = ex.header_f64("X-Cpu-Ms").expect("X-Cpu-Ms");
        // The handler's own CPU plus the server's per-request work (parsing, routing, logging).
        let on_cpu = part(r, "on_cpu");
        assert!(on_cpu >= cpu - 1.0 && on_cpu <= cpu + 15.0 + stolen, "{}: on_cpu {on_cpu} ms, the handler used {cpu:.1} ms: {r}", ex.path);
    }
    eprintln!("{:<24} {dominant:>8} {got:>8.1} ms (truth {want_ms:>6.1})  {}", ex.path, r["breakdown_ms"]);
}

/// A 64 MiB file on a real disk for the O_DIRECT endpoint.
fn disk_file() -> std::path::PathBuf {
    let path = introspect_tests::repo_root().join("target/introspect-disk-64M.bin");
    if fs::metadata(&path).map(|m| m.len()).ok() != Some(64 << 20) {
        let mut f = fs::File::create(&path).expect("create disk file");
        let block: Vec<u8> = (0..1 << 20).map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        for _ in 0..64 {
            f.write_all(&block).expect("write disk file");
        }
        f.sync_all().expect("sync disk file");
    }
    path
}

fn by_path<'a>(lines: &'a [Line], path: &str) -> &'a Value {
    requests(lines).into_iter().find(|r| r["path"] == path).unwrap_or_else(|| panic!("{path} not reported"))
}

#[test]
fn each_cause_lands_in_its_category() {
    if !can_trace("each_cause_lands_in_its_category") {
        return;
    }
    let pg = Postgres::start();
    let dsn = pg.dsn();
    let disk = disk_file();
    let disk = disk.to_str().unwrap();
    let server = Gunicorn::start_with_env(
        "flaskapp:app",
        1,
        &["--worker-class", "gthread", "--threads", "4"],
        &[("INTROSPECT_PG_DSN", &dsn), ("INTROSPECT_DISK_FILE", disk)],
    );
    let pid = server.master_pid().to_string();
    let watch = Watch::start(&["--pid", &pid, "--all"]);
    client::measure_precisely();
    let mut c = Client::new(server.port, false);
    let mut get = |p: &str| c.request("GET", p).unwrap_or_else(|e| panic!("GET {p}: {e}"));
    // Warm-up: the first database request imports psycopg2 and connects (disk and network
    // time of its own), which would blur the measured ones.
    get("/db/sleep/1/warm");
    let cpu = get("/cpu/200/c");
    let sleep = get("/sleep/200/s");
    let disk_ex = get("/disk/d");
    let db = get("/db/sleep/200/p");
    // Another transaction holds the row for 450 ms; the request waits for what is left of it.
    let _holder = pg.hold_row_lock(Duration::from_millis(450));
    let rowlock = get("/db/forupdate/r");
    let lock = get("/lock/200/l");
    let gil = get("/gil/150/g");
    let mixed = get("/mixed/m");
    for ex in [&cpu, &sleep, &disk_ex, &db, &rowlock, &lock, &gil, &mixed] {
        assert_eq!(ex.status, 200, "{}: {}", ex.path, ex.head);
    }
    thread::sleep(Duration::from_millis(200));
    let lines = watch.stop();
    let spent = |ex: &Exchange| ex.header_f64("X-Spent-Ms").expect("X-Spent-Ms");

    let st = |ex: &Exchange| ex.stolen_ms;
    check_cause(by_path(&lines, &cpu.path), &cpu, "on_cpu", cpu.header_f64("X-Cpu-Ms").unwrap(), st(&cpu));
    check_cause(by_path(&lines, &sleep.path), &sleep, "sleep", spent(&sleep), st(&sleep));
    // The app's off-CPU time in its reads also includes waking up after each IO (run queue).
    let d = by_path(&lines, &disk_ex.path);
    check_cause(d, &disk_ex, "disk_io", spent(&disk_ex) - part(d, "runqueue"), st(&disk_ex));
    check_cause(by_path(&lines, &lock.path), &lock, "lock", spent(&lock), st(&lock));
    // The app's "spent" for the GIL is wall minus CPU: GIL wait and run-queue wait together.
    let g = by_path(&lines, &gil.path);
    check_cause(g, &gil, "gil", spent(&gil) - part(g, "runqueue"), st(&gil));

    let pg_peer = format!("127.0.0.1:{}", pg.port);
    assert!(spent(&rowlock) >= 200.0, "the row lock was not waited for: {}", rowlock.head);
    for ex in [&db, &rowlock] {
        let r = by_path(&lines, &ex.path);
        check_cause(r, ex, "net_io", spent(ex), st(ex));
        let peers = r["net_peers"].as_array().expect("net_peers");
        assert_eq!(peers.first().map(|p| &p["peer"]), Some(&Value::from(pg_peer.clone())), "{}: {r}", ex.path);
        assert!(within(peers[0]["ms"].as_f64().unwrap(), spent(ex)), "{}: {r}", ex.path);
        assert!(peers[0]["round_trips"].as_u64().unwrap() >= 1);
        let syscalls = r["syscalls"].as_array().expect("syscalls");
        assert_eq!(syscalls[0]["name"], "poll", "libpq waits in poll(): {r}");
    }

    // Mixed: 100 ms each of sleep, CPU and database.
    let r = by_path(&lines, &mixed.path);
    check_sum(r);
    assert!(within(part(r, "sleep"), 100.0), "{r}");
    assert!(within(part(r, "net_io"), 100.0), "{r}");
    assert!(part(r, "on_cpu") >= 95.0 && part(r, "on_cpu") <= 120.0, "{r}");
    assert_eq!(r["net_peers"][0]["peer"], pg_peer.as_str(), "{r}");
}

/// The core causes under uWSGI (`--socket`, two threads) behind nginx's `uwsgi_pass`.
#[test]
fn each_cause_under_uwsgi_behind_nginx() {
    if !can_trace("each_cause_under_uwsgi_behind_nginx") {
        return;
    }
    let pg = Postgres::start();
    let dsn = pg.dsn();
    let server = Uwsgi::start_with_env(Listen::UwsgiTcp, 1, 2, &[], &[("INTROSPECT_PG_DSN", &dsn)]);
    let nginx = Nginx::start(Upstream::Uwsgi(server.upstream()));
    let pid = server.master_pid().to_string();
    let watch = Watch::start(&["--pid", &pid, "--all"]);
    client::measure_precisely();
    let mut c = Client::new(nginx.port, true);
    let mut get = |p: &str| c.request("GET", p).unwrap_or_else(|e| panic!("GET {p}: {e}"));
    get("/db/sleep/1/warm");
    let cpu = get("/cpu/200/c");
    let sleep = get("/sleep/200/s");
    let db = get("/db/sleep/200/p");
    let lock = get("/lock/200/l");
    for ex in [&cpu, &sleep, &db, &lock] {
        assert_eq!(ex.status, 200, "{}: {}", ex.path, ex.head);
    }
    thread::sleep(Duration::from_millis(200));
    let lines = watch.stop();
    let spent = |ex: &Exchange| ex.header_f64("X-Spent-Ms").expect("X-Spent-Ms");
    let st = |ex: &Exchange| ex.stolen_ms;
    check_cause(by_path(&lines, &cpu.path), &cpu, "on_cpu", cpu.header_f64("X-Cpu-Ms").unwrap(), st(&cpu));
    check_cause(by_path(&lines, &sleep.path), &sleep, "sleep", spent(&sleep), st(&sleep));
    check_cause(by_path(&lines, &lock.path), &lock, "lock", spent(&lock), st(&lock));
    let r = by_path(&lines, &db.path);
    check_cause(r, &db, "net_io", spent(&db), st(&db));
    assert_eq!(r["net_peers"][0]["peer"], format!("127.0.0.1:{}", pg.port).as_str(), "{r}");
}

#[test]
fn saturated_cpus_show_run_queue_time() {
    if !can_trace("saturated_cpus_show_run_queue_time") {
        return;
    }
    let server = Gunicorn::start("flaskapp:app", 1, &[]);
    let pid = server.master_pid().to_string();
    let watch = Watch::start(&["--pid", &pid, "--all"]);
    // Two busy loops, one per CPU, at normal priority.
    let hogs: Vec<Guard> =
        (0..2).map(|_| Guard::spawn("cpu hog", Command::new("sh").args(["-c", "while :; do :; done"]).stdout(Stdio::null())).expect("hog")).collect();
    thread::sleep(Duration::from_millis(300));
    let mut c = Client::new(server.port, false);
    let exchanges: Vec<Exchange> = (0..4).map(|i| c.request("GET", &format!("/cpu/200/h{i}")).expect("cpu request")).collect();
    drop(hogs);
    thread::sleep(Duration::from_millis(200));
    let lines = watch.stop();
    for ex in &exchanges {
        let r = by_path(&lines, &ex.path);
        check_sum(r);
        let cpu = ex.header_f64("X-Cpu-Ms").unwrap();
        let on_cpu = part(r, "on_cpu");
        let runq = part(r, "runqueue");
        eprintln!("{}: on_cpu {on_cpu} ms (handler CPU {cpu:.1} ms), runqueue {runq} ms, duration {}", ex.path, r["duration_ms"]);
        assert!(runq >= 20.0, "{}: expected run-queue time with both CPUs busy: {r}", ex.path);
        assert!(on_cpu >= cpu - 1.0 && on_cpu <= cpu + 15.0, "{}: on_cpu {on_cpu} vs handler CPU {cpu}: {r}", ex.path);
    }
}

#[test]
fn backlog_wait_is_the_queue_part() {
    if !can_trace("backlog_wait_is_the_queue_part") {
        return;
    }
    // One sync worker, four clients at once: three of them wait in the listen backlog.
    let server = Gunicorn::start("flaskapp:app", 1, &[]);
    let pid = server.master_pid().to_string();
    let watch = Watch::start(&["--pid", &pid, "--all"]);
    let paths: Vec<String> = (0..4).map(|i| format!("/sleep/200/b{i}")).collect();
    let exchanges = drive(server.port, paths, 4, false, false);
    thread::sleep(Duration::from_millis(200));
    let lines = watch.stop();
    // The whole duration still matches what each client measured.
    check_against_client(&exchanges, &lines, true);
    // Ground truth from the clients: one worker serves the connections one after another, so
    // each waits in the backlog from when it was sent until the previous response was received
    // (the worker accepts the next connection right after). The first one waits for nothing.
    // (Not 200 ms per place in line: a fresh worker's first request takes longer than its sleep.)
    let mut served: Vec<_> = exchanges.iter().collect();
    served.sort_by_key(|ex| ex.received);
    let mut queues = Vec::new();
    for (i, ex) in served.iter().enumerate() {
        let r = by_path(&lines, &ex.path);
        check_sum(r);
        assert_eq!(part(r, "queue"), r["queue_ms"].as_f64().unwrap(), "{r}");
        assert!(within(part(r, "sleep"), 200.0), "{r}");
        let want = match i {
            0 => 0.0,
            _ => served[i - 1].received.saturating_duration_since(ex.sent).as_secs_f64() * 1e3,
        };
        let q = part(r, "queue");
        queues.push((q, want));
        assert!((q - want).abs() <= 15.0, "{}: queue {q} ms, but it waited {want:.1} ms behind the previous request: {r}", ex.path);
    }
    eprintln!("queue parts (ours, the clients'): {queues:?}");
    assert!(queues[3].0 >= 500.0, "the last of four 200 ms requests on one worker queued behind three: {queues:?}");
}

#[test]
fn inflight_shows_the_wait_so_far() {
    if !can_trace("inflight_shows_the_wait_so_far") {
        return;
    }
    let pg = Postgres::start();
    let dsn = pg.dsn();
    // One worker, warmed up: its first query imports the driver and connects, tens of ms of CPU
    // on a cold machine, which are no wait.
    let server = Gunicorn::start_with_env("flaskapp:app", 1, &[], &[("INTROSPECT_PG_DSN", &dsn)]);
    Client::new(server.port, false).request("GET", "/db/sleep/1/warm").expect("warm-up");
    let pid = server.master_pid().to_string();
    let mut watch = Watch::start(&["--pid", &pid, "--threshold", "300ms"]);
    let port = server.port;
    // Still blocked when the threshold is crossed: the open wait must be counted.
    for (path, part_name) in [("/sleep/1000/is", "sleep"), ("/db/sleep/1000/id", "net_io")] {
        let client = thread::spawn(move || Client::new(port, false).request("GET", path).expect("request"));
        let line = watch
            .wait_for(Duration::from_secs(5), |l| l.ty() == "inflight" && l.json["path"] == path)
            .unwrap_or_else(|| panic!("no inflight for {path}"));
        client.join().expect("client");
        let r = &line.json;
        check_sum_elapsed(r);
        let got = part(r, part_name);
        let elapsed = r["elapsed_ms"].as_f64().unwrap();
        eprintln!("{path}: inflight at {elapsed} ms: {}", r["breakdown_ms"]);
        assert!(got >= elapsed - 30.0, "{path}: {part_name} so far {got} of {elapsed} ms: {r}");
        if part_name == "net_io" {
            assert_eq!(r["net_peers"][0]["peer"], format!("127.0.0.1:{}", pg.port).as_str(), "{r}");
        }
    }
    watch.stop();
}

/// For inflight events: the parts add up to the time elapsed so far.
fn check_sum_elapsed(r: &Value) {
    let sum: f64 = PARTS.iter().map(|p| part(r, p)).sum();
    let elapsed = r["elapsed_ms"].as_f64().unwrap();
    assert!((sum - elapsed).abs() <= elapsed * 0.01 + 0.01, "parts sum to {sum}, elapsed {elapsed}: {r}");
}

/// A database wait is network time on the database's peer, whether the app keeps its connection
/// or opens one per request and closes it when the request ends (Django's default,
/// CONN_MAX_AGE = 0), when the fd is gone by the time introspect reads the wait. Checked live,
/// on an `inflight` while the query runs, and again on a replay of the recording.
#[test]
fn database_waits_with_and_without_persistent_connections() {
    if !can_trace("database_waits_with_and_without_persistent_connections") {
        return;
    }
    let pg = Postgres::start();
    let dsn = pg.dsn();
    let pg_peer = format!("127.0.0.1:{}", pg.port);
    /// An app, its name, and the environment that sets its connection policy.
    struct DbApp {
        name: &'static str,
        app: &'static str,
        env: &'static [(&'static str, &'static str)],
    }
    let apps = [
        DbApp { name: "Flask, one connection per thread", app: "flaskapp:app", env: &[("INTROSPECT_PG_PERSISTENT", "1")] },
        DbApp { name: "Flask, a connection per request", app: "flaskapp:app", env: &[("INTROSPECT_PG_PERSISTENT", "0")] },
        DbApp { name: "Django, default settings (CONN_MAX_AGE = 0)", app: "djangoapp.wsgi:application", env: &[] },
        DbApp { name: "Django, CONN_MAX_AGE = 60", app: "djangoapp.wsgi:application", env: &[("INTROSPECT_CONN_MAX_AGE", "60")] },
    ];
    for DbApp { name, app, env: extra_env } in apps {
        eprintln!("--- {name}");
        let mut env = vec![("INTROSPECT_PG_DSN", dsn.as_str())];
        env.extend_from_slice(extra_env);
        // Sync workers, the default.
        let server = Gunicorn::start_with_env(app, 1, &[], &env);
        let recording = std::env::temp_dir().join(format!("introspect-db-{}.recording", server.port));
        let pid = server.master_pid().to_string();
        let mut watch = Watch::start(&["--pid", &pid, "--all", "--record", recording.to_str().unwrap()]);
        let mut c = Client::new(server.port, false);
        // Warm-up: imports the database driver (and opens the kept connection, if any).
        c.request("GET", "/db/sleep/1/warm").expect("warm-up");
        let sleep = c.request("GET", "/db/sleep/300/s").expect("pg_sleep");
        let holder = pg.hold_row_lock(Duration::from_millis(450));
        let rowlock = c.request("GET", "/db/forupdate/r").expect("row lock");
        drop(holder);
        // Still waiting on the database when it crosses the (default 500 ms) threshold.
        let port = server.port;
        let slow = thread::spawn(move || Client::new(port, false).request("GET", "/db/sleep/1000/i").expect("slow query"));
        let inflight = watch
            .wait_for(Duration::from_secs(5), |l| l.ty() == "inflight" && l.json["path"] == "/db/sleep/1000/i")
            .unwrap_or_else(|| panic!("{name}: no inflight for the slow query"));
        slow.join().expect("client");
        for ex in [&sleep, &rowlock] {
            assert_eq!(ex.status, 200, "{name} {}: {}", ex.path, ex.head);
        }
        assert!(ex_spent(&rowlock) >= 200.0, "{name}: the row lock was not waited for: {}", rowlock.head);
        thread::sleep(Duration::from_millis(200));
        let lines = watch.stop();
        let r = &inflight.json;
        check_sum_elapsed(r);
        let elapsed = r["elapsed_ms"].as_f64().unwrap();
        assert!(part(r, "net_io") >= elapsed - 30.0, "{name}: net_io so far {} of {elapsed} ms: {r}", part(r, "net_io"));
        assert_eq!(r["net_peers"][0]["peer"], pg_peer.as_str(), "{name}: {r}");

        let replayed = introspect::replay(&recording, &["--all"]);
        let _ = fs::remove_file(&recording);
        for (run, lines) in [("live", &lines), ("replay", &replayed)] {
            for ex in [&sleep, &rowlock] {
                let r = by_path(lines, &ex.path);
                check_database_wait(r, ex, &pg_peer, &format!("{name}, {run}"));
            }
        }
        assert_eq!(
            requests(&lines).iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            requests(&replayed).iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            "{name}: the replay reports what the live run did"
        );
    }
}

fn ex_spent(ex: &Exchange) -> f64 {
    ex.header_f64("X-Spent-Ms").expect("X-Spent-Ms")
}

/// net_io holds the database time the app measured (max(5 ms, 10%)), on the database's peer, and
/// nothing went to `other`.
fn check_database_wait(r: &Value, ex: &Exchange, pg_peer: &str, what: &str) {
    check_sum(r);
    let spent = ex_spent(ex);
    let net = part(r, "net_io");
    assert!((net - spent).abs() <= (spent * 0.10).max(5.0) + ex.stolen_ms, "{what} {}: net_io {net} ms, the app spent {spent:.1} ms: {r}", ex.path);
    assert!(part(r, "other") < 5.0, "{what} {}: other = {} ms: {r}", ex.path, part(r, "other"));
    let peers = r["net_peers"].as_array().expect("net_peers");
    assert_eq!(peers.first().map(|p| &p["peer"]), Some(&Value::from(pg_peer)), "{what} {}: {r}", ex.path);
    assert!(within(peers[0]["ms"].as_f64().unwrap(), spent), "{what} {}: {r}", ex.path);
    eprintln!("{what:<52} {:<18} net_io {net:>7.1} ms (the app: {spent:>6.1})  other {:>5.1}  peer {}", ex.path, part(r, "other"), peers[0]["peer"]);
}
