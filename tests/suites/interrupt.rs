//! `--interrupt-before`: a runaway request raises TimeoutError inside Python before the server
//! kills its worker, the app cleans up and answers itself, the worker lives; a C call that never
//! returns to the evaluation loop is reported uninterruptible and killed; no exception lands in
//! another request; and without the flag introspect cannot write to the process at all.
use std::{thread, time::Duration};

use introspect_tests::{
    can_trace,
    client::Client,
    introspect::{Line, Watch},
    postgres::Postgres,
    server::Gunicorn,
    uwsgi::Uwsgi,
    venv_named,
};
use serde_json::Value;

fn of_type<'a>(lines: &'a [Line], ty: &str, path: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l.ty() == ty && l.json["path"] == path).map(|l| &l.json).collect()
}

/// The thread that served an exchange (the Flask app's X-Tid; a sync worker's only thread).
fn served_by(ex: &introspect_tests::client::Exchange) -> u32 {
    ex.header("X-Tid").and_then(|t| t.parse().ok()).unwrap_or(0)
}

#[test]
fn a_runaway_request_is_interrupted_and_the_worker_lives() {
    if !can_trace("a_runaway_request_is_interrupted_and_the_worker_lives") {
        return;
    }
    let server = Gunicorn::start("flaskapp:app", 1, &["--timeout", "3"]);
    let pid = server.master_pid().to_string();
    let mut watch = Watch::start(&["--pid", &pid, "--threshold", "500ms", "--interrupt-before", "1s"]);
    let mut c = Client::new(server.port, false);
    let before = c.request("GET", "/fast/before").expect("a first request");
    // Pure Python: it raises TimeoutError a second before gunicorn's timeout; Flask answers its
    // own 500 (the exception is not caught).
    let spin = c.request("GET", "/chain/cpu/20000/i1").expect("the spinning request gets an answer");
    assert_eq!(spin.status, 500, "Flask's own error page: {}", spin.head);
    assert!(spin.duration_ms() < 2_900.0, "answered before the 3 s timeout: {:.0} ms", spin.duration_ms());
    // The same worker serves the next request.
    let after = c.request("GET", "/fast/after").expect("the next request");
    assert_eq!(after.status, 200);
    assert_eq!(served_by(&before), served_by(&after), "the same worker (thread) served before and after");
    // 7 ** (7 ** 9) runs in one C call that never reaches the evaluation loop's check: reported
    // uninterruptible, and gunicorn's own kill goes ahead and is reported.
    let bigint = c.request("GET", "/bigint/i2");
    eprintln!("bigint: {:?}", bigint.as_ref().map(|e| e.status));
    watch.wait_for(Duration::from_secs(10), |l| l.ty() == "killed").expect("the big-integer request's worker is killed");
    thread::sleep(Duration::from_millis(300));
    let lines = watch.stop();
    let i = of_type(&lines, "interrupted", "/chain/cpu/20000/i1");
    assert_eq!(i.len(), 1, "one interrupted line for the spin");
    let i = i[0];
    eprintln!("spin: {i}");
    assert_eq!((i["outcome"].as_str(), i["status"].as_u64(), i["exception"].as_str()), (Some("raised"), Some(500), Some("TimeoutError")), "{i}");
    let before_kill = i["before_kill_ms"].as_f64().unwrap();
    assert!((900.0..1_100.0).contains(&before_kill), "interrupted a second before the predicted kill: {i}");
    assert!(of_type(&lines, "killed", "/chain/cpu/20000/i1").is_empty(), "the spin was not killed");
    let b = of_type(&lines, "interrupted", "/bigint/i2");
    assert_eq!(b.len(), 1, "one interrupted line for the big integer");
    assert_eq!(b[0]["outcome"], "uninterruptible", "{}", b[0]);
    let k = of_type(&lines, "killed", "/bigint/i2");
    assert_eq!((k.len(), k[0]["reason"].as_str()), (1, Some("gunicorn_timeout")), "{k:?}");
    // gunicorn's log: one WORKER TIMEOUT, the big integer's.
    let log = std::fs::read_to_string(&server.log).unwrap_or_default();
    assert_eq!(log.matches("WORKER TIMEOUT").count(), 1, "gunicorn's log:\n{log}");
    let s = &lines.iter().find(|l| l.ty() == "summary").expect("summary").json;
    assert_eq!((s["interrupted"].as_u64(), s["killed"].as_u64()), (Some(1), Some(1)), "{s}");
}

#[test]
fn a_django_atomic_block_rolls_back_when_interrupted() {
    if !can_trace("a_django_atomic_block_rolls_back_when_interrupted") {
        return;
    }
    let pg = Postgres::start();
    let dsn = pg.dsn();
    let server = Gunicorn::start_with_env("djangoapp.wsgi:application", 1, &["--timeout", "3"], &[("INTROSPECT_PG_DSN", &dsn)]);
    let pid = server.master_pid().to_string();
    let watch = Watch::start(&["--pid", &pid, "--threshold", "500ms", "--interrupt-before", "1s"]);
    let mut c = Client::new(server.port, false);
    let worker = c.request("GET", "/pid").expect("pid").header("X-Pid").map(str::to_string);
    let got = c.request("GET", "/db/atomic-spin/4242/10000/d1").expect("an answer");
    assert_eq!(got.status, 500, "Django's own error page: {}", got.head);
    assert!(got.duration_ms() < 2_900.0, "answered before the 3 s timeout: {:.0} ms", got.duration_ms());
    assert_eq!(pg.query("SELECT count(*) FROM items WHERE id = 4242"), "0", "the insert was rolled back");
    let again = c.request("GET", "/pid").expect("pid again").header("X-Pid").map(str::to_string);
    assert!(worker.is_some() && worker == again, "the same worker answers: {worker:?} then {again:?}");
    thread::sleep(Duration::from_millis(300));
    let lines = watch.stop();
    let i = of_type(&lines, "interrupted", "/db/atomic-spin/4242/10000/d1");
    assert_eq!((i.len(), i.first().and_then(|i| i["outcome"].as_str())), (1, Some("raised")), "{i:?}");
    assert!(!std::fs::read_to_string(&server.log).unwrap_or_default().contains("WORKER TIMEOUT"));
}

/// Where no bytecode runs there is nothing to raise in: a catastrophic regex (one C call in
/// _sre) and a long sleep (a blocking syscall) are reported uninterruptible, and gunicorn's kill
/// goes ahead (its SIGABRT handler does run in both: _sre checks for signals, the sleep is
/// interrupted by it).
#[test]
fn native_code_and_blocking_calls_are_uninterruptible() {
    if !can_trace("native_code_and_blocking_calls_are_uninterruptible") {
        return;
    }
    let server = Gunicorn::start("flaskapp:app", 2, &["--timeout", "3"]);
    let pid = server.master_pid().to_string();
    let mut watch = Watch::start(&["--pid", &pid, "--threshold", "500ms", "--interrupt-before", "1s"]);
    let port = server.port;
    let paths = ["/chain/regex/40/n1", "/chain/sleep/20000/n2"];
    let clients: Vec<_> = paths.into_iter().map(|p| thread::spawn(move || Client::new(port, false).request("GET", p).map(|e| e.status))).collect();
    let got: Vec<_> = clients.into_iter().map(|c| c.join().expect("client")).collect();
    eprintln!("clients: {got:?}");
    for path in paths {
        watch.wait_for(Duration::from_secs(10), |l| l.ty() == "killed" && l.json["path"] == path).unwrap_or_else(|| panic!("{path} is killed"));
    }
    let lines = watch.stop();
    for path in paths {
        let i = of_type(&lines, "interrupted", path);
        eprintln!("{path}: {:?}", i.first().map(|i| (&i["outcome"], &i["why"])));
        assert_eq!((i.len(), i.first().and_then(|i| i["outcome"].as_str())), (1, Some("uninterruptible")), "{path}: {i:?}");
        let k = of_type(&lines, "killed", path);
        assert_eq!((k.len(), k[0]["reason"].as_str()), (1, Some("gunicorn_timeout")), "{path}: {k:?}");
    }
    let log = std::fs::read_to_string(&server.log).unwrap_or_default();
    assert_eq!(log.matches("WORKER TIMEOUT").count(), 2, "gunicorn's log:\n{log}");
}

/// `--interrupt-dry-run` says what it would have done and does nothing: the kill goes ahead.
#[test]
fn a_dry_run_reports_and_leaves_the_kill_alone() {
    if !can_trace("a_dry_run_reports_and_leaves_the_kill_alone") {
        return;
    }
    let server = Gunicorn::start("flaskapp:app", 1, &["--timeout", "3"]);
    let pid = server.master_pid().to_string();
    let mut watch = Watch::start(&["--pid", &pid, "--threshold", "500ms", "--interrupt-before", "1s", "--interrupt-dry-run"]);
    let got = Client::new(server.port, false).request("GET", "/interruptible/20000/y1").expect("an answer");
    // Not interrupted: the app would have answered 504; gunicorn's SIGABRT made it a 500.
    assert_eq!(got.status, 500, "gunicorn's 500 after its kill: {}", got.head);
    watch.wait_for(Duration::from_secs(10), |l| l.ty() == "killed").expect("the worker is killed");
    let lines = watch.stop();
    let i = of_type(&lines, "interrupted", "/interruptible/20000/y1");
    assert_eq!((i.len(), i.first().and_then(|i| i["outcome"].as_str())), (1, Some("dry_run")), "{i:?}");
    let before = i[0]["before_kill_ms"].as_f64().unwrap();
    assert!((900.0..1_100.0).contains(&before), "{}", i[0]);
    let s = &lines.iter().find(|l| l.ty() == "summary").expect("summary").json;
    assert_eq!((s["interrupted"].as_u64(), s["killed"].as_u64()), (None, Some(1)), "{s}");
    let log = std::fs::read_to_string(&server.log).unwrap_or_default();
    assert_eq!(log.matches("WORKER TIMEOUT").count(), 1, "gunicorn's log:\n{log}");
}

/// uWSGI's harakiri kills a request by its start time, not a heartbeat: the interruption comes a
/// second before it, uWSGI's worker answers Flask's 500 and serves the next request.
#[test]
fn a_uwsgi_harakiri_is_interrupted_too() {
    if !can_trace("a_uwsgi_harakiri_is_interrupted_too") {
        return;
    }
    let server = Uwsgi::start(&["--harakiri", "3"]);
    let pid = server.master_pid().to_string();
    let mut watch = Watch::start(&["--pid", &pid, "--threshold", "500ms", "--interrupt-before", "1s"]);
    let mut c = Client::new(server.port, false);
    let before = c.request("GET", "/pid").expect("pid").header("X-Pid").map(str::to_string);
    let spin = c.request("GET", "/chain/cpu/20000/w1").expect("the spinning request gets an answer");
    assert_eq!(spin.status, 500, "Flask's own error page: {}", spin.head);
    let after = c.request("GET", "/pid").expect("pid after").header("X-Pid").map(str::to_string);
    assert!(before.is_some() && before == after, "the same worker answers: {before:?} then {after:?}");
    let line = watch.wait_for(Duration::from_secs(5), |l| l.ty() == "interrupted").expect("an interrupted line");
    eprintln!("uwsgi: {}", line.json);
    assert_eq!((line.json["outcome"].as_str(), line.json["kill_by"].as_str()), (Some("raised"), Some("uwsgi_harakiri")), "{}", line.json);
    // uWSGI's deadline is the request's start plus --harakiri (it checks with second resolution).
    let at = line.json["elapsed_ms"].as_f64().unwrap();
    assert!((1_900.0..2_300.0).contains(&at), "interrupted {at} ms in (harakiri 3 s, a second before): {}", line.json);
    thread::sleep(Duration::from_millis(300));
    let lines = watch.stop();
    assert!(lines.iter().all(|l| l.ty() != "killed"), "nothing was killed");
    assert!(!server.log_text().contains("HARAKIRI"), "no harakiri in uWSGI's log:\n{}", server.log_text());
}

/// 200 alternations of a request that spins until interrupted and a fast one: every spinning
/// one catches the TimeoutError itself (504), no fast one ever gets it (they would answer 500).
#[test]
fn interruptions_land_only_in_the_targeted_request() {
    if !can_trace("interruptions_land_only_in_the_targeted_request") {
        return;
    }
    const ROUNDS: usize = 200;
    for version in ["py38", "py311", "py312", "py313"] {
        // gunicorn's shortest timeout (1 s): interrupted 200 ms into each spin.
        let server = Gunicorn::start_in(&venv_named(version), "flaskapp:app", 1, &["--timeout", "1"], &[]);
        let pid = server.master_pid().to_string();
        let watch = Watch::start(&["--pid", &pid, "--threshold", "50ms", "--interrupt-before", "800ms"]);
        let mut c = Client::new(server.port, true);
        let (mut spins, mut fasts) = (Vec::new(), Vec::new());
        for i in 0..ROUNDS {
            spins.push(c.request("GET", &format!("/interruptible/5000/{version}-{i}")).expect("spin").status);
            fasts.push(c.request("GET", &format!("/fast/{version}-{i}")).expect("fast").status);
        }
        thread::sleep(Duration::from_millis(300));
        let lines = watch.stop();
        let interrupted = lines.iter().filter(|l| l.ty() == "interrupted").collect::<Vec<_>>();
        let raised = interrupted.iter().filter(|l| l.json["outcome"] == "raised" && l.json["status"] == 504).count();
        eprintln!(
            "{version}: {} of {ROUNDS} spins interrupted (504), fast ones {:?}, interrupted lines {}",
            spins.iter().filter(|s| **s == 504).count(),
            fasts.iter().filter(|s| **s != 200).count(),
            interrupted.len()
        );
        assert!(fasts.iter().all(|s| *s == 200), "{version}: a fast request got an exception: {fasts:?}");
        assert!(spins.iter().all(|s| *s == 504), "{version}: every spin was interrupted inside itself: {spins:?}");
        assert_eq!(raised, ROUNDS, "{version}: one raised interrupted line per spin");
        assert!(
            interrupted.iter().all(|l| l.json["path"].as_str().unwrap_or("").starts_with("/interruptible/")),
            "{version}: only spins were interrupted"
        );
        assert!(!std::fs::read_to_string(&server.log).unwrap_or_default().contains("WORKER TIMEOUT"), "{version}: no kill");
    }
}

#[test]
fn without_the_flag_introspect_cannot_write_to_the_process() {
    if !can_trace("without_the_flag_introspect_cannot_write_to_the_process") {
        return;
    }
    let server = Gunicorn::start("flaskapp:app", 1, &[]);
    let pid = server.master_pid().to_string();
    let denied = "process_vm_writev denied (Operation not permitted";
    for (flags, vm) in [
        (vec![], denied),
        (vec!["--interrupt-before", "1s", "--interrupt-dry-run"], denied),
        (vec!["--interrupt-before", "1s"], "process_vm_writev allowed"),
    ] {
        let mut args = vec!["--pid", pid.as_str(), "--try-write"];
        args.extend(flags.iter().copied());
        let mut watch = Watch::start(&args);
        let line = watch
            .wait_for(Duration::from_secs(5), |l| l.ty() == "warning" && l.json["message"].as_str().unwrap_or("").starts_with("write check"))
            .expect("the write check");
        let said = line.json["message"].as_str().unwrap().to_string();
        eprintln!("{flags:?}: {said}");
        assert!(said.contains(vm), "{said}");
        assert!(said.contains("for writing denied (Operation not permitted"), "opening its memory for writing is always refused: {said}");
        watch.stop();
    }
}
