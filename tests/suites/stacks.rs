//! Stacks of slow requests on every CPython of this machine kind, against py-spy as the oracle
//! and the known call chains of tests/apps/chains.py.
use std::{collections::HashMap, process::Command, thread, time::Duration};

use introspect_tests::{
    apps::markers,
    can_trace,
    checks::requests,
    client::Client,
    introspect::{self, Line, Watch},
    nginx::{Nginx, Upstream},
    postgres::Postgres,
    server::Gunicorn,
    uwsgi::{Listen, Uwsgi},
    venv_named,
};
use serde_json::Value;

/// (function, file suffix, line) of the Python frames of a stack, innermost first.
fn python_frames(stack: &Value) -> Vec<(String, String, u64)> {
    stack
        .as_array()
        .expect("stack is an array")
        .iter()
        .filter(|f| f["kind"] == "python")
        .map(|f| (f["function"].as_str().unwrap().to_string(), f["file"].as_str().unwrap().to_string(), f["line"].as_u64().unwrap_or(0)))
        .collect()
}

/// A chain, innermost first: (function name without class, file, line marker or None for "any").
type Chain = [(&'static str, &'static str, Option<&'static str>)];

/// The stack holds the chain as consecutive Python frames, innermost first, with the right
/// names (the class prefix 3.11+ adds via co_qualname is accepted), files and lines.
fn has_chain(stack: &Value, chain: &Chain, marks: &HashMap<String, u64>) -> Result<(), String> {
    let frames = python_frames(stack);
    let start =
        frames.iter().position(|(f, _, _)| f.rsplit('.').next() == Some(chain[0].0)).ok_or_else(|| format!("{} not in {frames:?}", chain[0].0))?;
    for (k, (name, file, mark)) in chain.iter().enumerate() {
        let (f, path, line) = frames.get(start + k).ok_or_else(|| format!("chain cut at {name}: {frames:?}"))?;
        if f.rsplit('.').next() != Some(name) || !path.ends_with(file) {
            return Err(format!("expected {name} in {file} at position {k}: {frames:?}"));
        }
        if let Some(m) = mark {
            let want = marks[*m];
            // A loop's position can be its test or its body line.
            if *line != want && !(m.starts_with("helper_cpu") && *line == want + 1) {
                return Err(format!("{name}: line {line}, expected {want}: {frames:?}"));
            }
        }
    }
    Ok(())
}

fn heaviest(r: &Value) -> &Value {
    &r["profile"].as_array().and_then(|p| p.first()).unwrap_or_else(|| panic!("no profile: {r}"))["stack"]
}

/// py-spy's view of thread `tid` of `pid`: (function, file, line), innermost first.
fn py_spy(venv: &str, pid: u32, tid: u32) -> Vec<(String, String, u64)> {
    let out = Command::new(venv_named("py311").join("bin/py-spy")).args(["dump", "--json", "--pid", &pid.to_string()]).output().expect("py-spy");
    assert!(out.status.success(), "{venv}: py-spy dump failed: {}", String::from_utf8_lossy(&out.stderr));
    let threads: Value = serde_json::from_slice(&out.stdout).expect("py-spy json");
    let t = threads
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["os_thread_id"].as_u64() == Some(u64::from(tid)))
        .unwrap_or_else(|| panic!("{venv}: py-spy has no thread {tid}: {threads}"));
    t["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["name"].as_str().unwrap().to_string(), f["filename"].as_str().unwrap().to_string(), f["line"].as_u64().unwrap_or(0)))
        .collect()
}

fn slow_request(watch: &mut Watch, port: u16, path: &'static str) -> (Line, thread::JoinHandle<()>) {
    let client = thread::spawn(move || {
        let ex = Client::new(port, false).request("GET", path).expect("request");
        assert_eq!(ex.status, 200, "{path}: {}", ex.head);
    });
    let line = watch
        .wait_for(Duration::from_secs(10), |l| l.ty() == "inflight" && l.json["path"] == path)
        .unwrap_or_else(|| panic!("no inflight for {path}"));
    (line, client)
}

const SLEEP: &Chain = &[
    ("helper_sleep", "chains.py", Some("helper_sleep")),
    ("sleepy", "chains.py", Some("service_sleepy")),
    ("chain_sleep", "flaskapp.py", Some("view_sleep")),
];
const CPU: &Chain =
    &[("helper_cpu", "chains.py", Some("helper_cpu")), ("busy", "chains.py", Some("service_busy")), ("chain_cpu", "flaskapp.py", Some("view_cpu"))];
const REGEX: &Chain = &[
    ("helper_regex", "chains.py", Some("helper_regex")),
    ("matcher", "chains.py", Some("service_matcher")),
    ("chain_regex", "flaskapp.py", Some("view_regex")),
];
const DB: &Chain =
    &[("helper_db", "chains.py", Some("helper_db")), ("query", "chains.py", Some("service_query")), ("chain_db", "flaskapp.py", Some("view_db"))];

fn chains_on(venv: &str) {
    let marks = markers();
    let pg = Postgres::start();
    let dsn = pg.dsn();
    let server = Gunicorn::start_in(&venv_named(venv), "flaskapp:app", 1, &[], &[("INTROSPECT_PG_DSN", &dsn)]);
    let worker = server.workers()[0];
    let pid = server.master_pid().to_string();
    let mut watch = Watch::start(&["--pid", &pid, "--threshold", "300ms"]);

    // Sleeping: our inflight stack against py-spy's, taken while the request still sleeps.
    let (line, client) = slow_request(&mut watch, server.port, "/chain/sleep/2500/s");
    let tid = line.json["tid"].as_u64().unwrap() as u32;
    let oracle = py_spy(venv, worker, tid);
    let ours = python_frames(&line.json["stack"]);
    assert_eq!(ours, oracle, "{venv}: introspect's inflight stack differs from py-spy's");
    // `introspect dump` reads the same thing.
    let dump = introspect::run(&["dump", "--pid", &worker.to_string(), "--json"]);
    assert!(dump.status.success(), "{venv}: dump failed: {}", String::from_utf8_lossy(&dump.stderr));
    let dump: Value = serde_json::from_slice(&dump.stdout).expect("dump json");
    let thread = dump["threads"].as_array().unwrap().iter().find(|t| t["tid"].as_u64() == Some(u64::from(tid))).expect("thread in dump");
    assert_eq!(python_frames(&thread["stack"]), oracle, "{venv}: introspect dump differs from py-spy");
    has_chain(&line.json["stack"], SLEEP, &marks).unwrap_or_else(|e| panic!("{venv}: inflight: {e}"));
    client.join().unwrap();

    for (path, chain) in [("/chain/cpu/1200/c", CPU), ("/chain/regex/26/r", REGEX), ("/chain/db/1500/d", DB)] {
        let (line, client) = slow_request(&mut watch, server.port, path);
        has_chain(&line.json["stack"], chain, &marks).unwrap_or_else(|e| panic!("{venv} {path}: inflight: {e}"));
        client.join().unwrap();
    }
    thread::sleep(Duration::from_millis(300));
    let lines = watch.stop();
    for (path, chain) in [("/chain/sleep/2500/s", SLEEP), ("/chain/cpu/1200/c", CPU), ("/chain/regex/26/r", REGEX), ("/chain/db/1500/d", DB)] {
        let r = requests(&lines).into_iter().find(|r| r["path"] == path).unwrap_or_else(|| panic!("{venv}: {path} not reported"));
        has_chain(&r["stack"], chain, &marks).unwrap_or_else(|e| panic!("{venv} {path}: request stack: {e}"));
        has_chain(heaviest(r), chain, &marks).unwrap_or_else(|e| panic!("{venv} {path}: heaviest profile stack: {e}"));
    }
    // The regex runs inside C holding the GIL: its samples name the C function too.
    let r = requests(&lines).into_iter().find(|r| r["path"] == "/chain/regex/26/r").unwrap();
    let leaf = &heaviest(r).as_array().unwrap()[0];
    eprintln!("{venv}: regex heaviest leaf: {} ({})", leaf["function"], leaf["kind"]);
    assert_eq!(leaf["kind"], "native", "{venv}: {r}");
}

#[test]
fn chains_py38() {
    if can_trace("chains_py38") {
        chains_on("py38");
    }
}

#[test]
fn chains_py39() {
    if can_trace("chains_py39") {
        chains_on("py39");
    }
}

#[test]
fn chains_py310() {
    if can_trace("chains_py310") {
        chains_on("py310");
    }
}

#[test]
fn chains_py311() {
    if can_trace("chains_py311") {
        chains_on("py311");
    }
}

#[test]
fn chains_py312() {
    if can_trace("chains_py312") {
        chains_on("py312");
    }
}

#[test]
fn chains_py313() {
    if can_trace("chains_py313") {
        chains_on("py313");
    }
}

#[test]
fn chains_debian_python311() {
    if can_trace("chains_debian_python311") {
        chains_on("debian311");
    }
}

/// The same chains under uWSGI (`--socket`, two threads, behind nginx's `uwsgi_pass`): its
/// workers are forked without CPython's after-fork hook, so their thread states keep the
/// master's `native_thread_id` and cannot be matched to kernel threads by it.
#[test]
fn chains_under_uwsgi_behind_nginx() {
    if !can_trace("chains_under_uwsgi_behind_nginx") {
        return;
    }
    let marks = markers();
    let pg = Postgres::start();
    let dsn = pg.dsn();
    let server = Uwsgi::start_with_env(Listen::UwsgiTcp, 1, 2, &[], &[("INTROSPECT_PG_DSN", &dsn)]);
    let nginx = Nginx::start(Upstream::Uwsgi(server.upstream()));
    let pid = server.master_pid().to_string();
    let mut watch = Watch::start(&["--pid", &pid, "--threshold", "300ms"]);
    let paths = [("/chain/sleep/1500/s", SLEEP), ("/chain/cpu/1200/c", CPU), ("/chain/regex/26/r", REGEX), ("/chain/db/1500/d", DB)];
    for (path, chain) in paths {
        let (line, client) = slow_request(&mut watch, nginx.port, path);
        has_chain(&line.json["stack"], chain, &marks).unwrap_or_else(|e| panic!("uwsgi {path}: inflight: {e}"));
        client.join().unwrap();
    }
    thread::sleep(Duration::from_millis(300));
    let lines = watch.stop();
    for (path, chain) in paths {
        let r = requests(&lines).into_iter().find(|r| r["path"] == path).unwrap_or_else(|| panic!("uwsgi: {path} not reported"));
        assert_eq!(r["comm"], "uwsgi", "{r}");
        has_chain(&r["stack"], chain, &marks).unwrap_or_else(|e| panic!("uwsgi {path}: request stack: {e}"));
        has_chain(heaviest(r), chain, &marks).unwrap_or_else(|e| panic!("uwsgi {path}: heaviest profile stack: {e}"));
    }
}

#[test]
fn profile_weights_burn_then_sleep() {
    if !can_trace("profile_weights_burn_then_sleep") {
        return;
    }
    let server = Gunicorn::start("flaskapp:app", 1, &[]);
    let pid = server.master_pid().to_string();
    // A low threshold, checked every 2 ms: the profile covers the request from the moment it
    // crosses the threshold, so the burn is sampled from its first ~12 ms on.
    let watch = Watch::start(&["--pid", &pid, "--threshold", "10ms", "--poll-interval", "2ms"]);
    let ex = Client::new(server.port, false).request("GET", "/chain/burnsleep/300/w").expect("request");
    assert_eq!(ex.status, 200);
    thread::sleep(Duration::from_millis(300));
    let lines = watch.stop();
    let r = requests(&lines).into_iter().find(|r| r["path"] == "/chain/burnsleep/300/w").expect("reported");
    let has = |s: &Value, f: &str| python_frames(s).iter().any(|(name, _, _)| name.rsplit('.').next() == Some(f));
    let (mut burn_on, mut sleep_off, mut other) = (0.0, 0.0, 0.0);
    for p in r["profile"].as_array().expect("profile") {
        let (on, off) = (p["on_cpu_ms"].as_f64().unwrap(), p["off_cpu_ms"].as_f64().unwrap());
        if has(&p["stack"], "helper_cpu") {
            burn_on += on;
            other += off;
        } else if has(&p["stack"], "helper_sleep") {
            sleep_off += off;
            other += on;
        } else {
            other += on + off;
        }
    }
    eprintln!("burn frames on-CPU {burn_on} ms, sleep frames off-CPU {sleep_off} ms, elsewhere {other} ms");
    assert!((255.0..=345.0).contains(&burn_on), "on-CPU on the burn frames: {burn_on} ms (300 ± 15%): {r}");
    assert!((255.0..=345.0).contains(&sleep_off), "off-CPU on the sleep frames: {sleep_off} ms (300 ± 15%): {r}");
}

/// `watch --profile-all`: every reported request has its profile from the all-traffic
/// sampler, fast ones included, weighted as the app measured itself: on-CPU time of the CPU
/// page's function against its own thread CPU clock, off-CPU time of the sleeping page's
/// sleep (waits over 1 ms are all captured) against its own wall clock.
#[test]
fn watch_profile_all_gives_every_request_its_profile() {
    if !can_trace("watch_profile_all_gives_every_request_its_profile") {
        return;
    }
    let server = Gunicorn::start("flaskapp:app", 2, &[]);
    let pid = server.master_pid().to_string();
    let watch = Watch::start(&["--pid", &pid, "--all", "--profile-all"]);
    let mut c = Client::new(server.port, false);
    let mut exchanges = Vec::new();
    for i in 0..10 {
        for path in [format!("/catalog/60/{i}"), format!("/sleep/30/{i}"), format!("/fast/a{i}"), format!("/fast/b{i}")] {
            let ex = c.request("GET", &path).expect("request");
            assert_eq!(ex.status, 200);
            exchanges.push(ex);
        }
    }
    thread::sleep(Duration::from_millis(300));
    let lines = watch.stop();
    let reqs = requests(&lines);
    assert_eq!(reqs.len(), exchanges.len(), "every request reported");
    let weight = |prefix: &str, function: &str, key: &str| -> f64 {
        let has = |s: &Value| python_frames(s).iter().any(|(name, _, _)| name == function);
        reqs.iter()
            .filter(|r| r["path"].as_str().unwrap().starts_with(prefix))
            .flat_map(|r| r["profile"].as_array().unwrap_or_else(|| panic!("no profile: {r}")).iter())
            .filter(|p| has(&p["stack"]))
            .map(|p| p[key].as_f64().unwrap())
            .sum()
    };
    let measured =
        |prefix: &str, header: &str| -> f64 { exchanges.iter().filter(|e| e.path.starts_with(prefix)).map(|e| e.header_f64(header).unwrap()).sum() };
    let (on, cpu) = (weight("/catalog/", "price_catalog", "on_cpu_ms"), measured("/catalog/", "X-Cpu-Ms"));
    let (off, slept) = (weight("/sleep/", "sleep", "off_cpu_ms"), measured("/sleep/", "X-Spent-Ms"));
    eprintln!("price_catalog on-CPU {on} ms vs the app's {cpu:.1} ms; sleep off-CPU {off} ms vs the app's {slept:.1} ms");
    assert!((on - cpu).abs() <= cpu * 0.15, "on-CPU {on} ms vs {cpu} ms");
    assert!((off - slept).abs() <= slept * 0.10, "off-CPU {off} ms vs {slept} ms");
    let s = &lines.iter().find(|l| l.ty() == "summary").expect("summary").json;
    assert_eq!(s["hot"][0]["function"], "price_catalog", "{s}");
    assert!(s["stacks"]["sampled"]["request_samples"].as_u64().unwrap() > 0, "{s}");
}

#[test]
fn fast_requests_are_never_sampled() {
    if !can_trace("fast_requests_are_never_sampled") {
        return;
    }
    let server = Gunicorn::start("flaskapp:app", 2, &[]);
    let pid = server.master_pid().to_string();
    let watch = Watch::start(&["--pid", &pid]);
    let mut c = Client::new(server.port, false);
    for i in 0..400 {
        c.request("GET", &format!("/fast/f{i}")).expect("fast request");
    }
    thread::sleep(Duration::from_millis(200));
    let lines = watch.stop();
    let s = &lines.iter().find(|l| l.ty() == "summary").expect("summary").json;
    assert_eq!(s["requests"], 400, "{s}");
    assert_eq!(s["stacks"], serde_json::json!({"threads_armed": 0, "snapshots": 0, "oncpu_samples": 0, "offcpu_stacks": 0}), "{s}");
}

#[test]
fn unsupported_interpreter_warns_and_requests_still_flow() {
    if !can_trace("unsupported_interpreter_warns_and_requests_still_flow") {
        return;
    }
    let server = Gunicorn::start_in(&venv_named("py37"), "plainapp:app", 1, &[], &[]);
    let pid = server.master_pid().to_string();
    let watch = Watch::start(&["--pid", &pid, "--threshold", "100ms"]);
    let ex = Client::new(server.port, false).request("GET", "/sleep/400").expect("request");
    assert_eq!(ex.status, 200);
    thread::sleep(Duration::from_millis(200));
    let lines = watch.stop();
    let warning = lines.iter().find(|l| l.ty() == "warning").unwrap_or_else(|| panic!("no warning"));
    assert!(warning.json["message"].as_str().unwrap().contains("3.7 is not supported"), "{}", warning.json);
    let r = requests(&lines).into_iter().find(|r| r["path"] == "/sleep/400").expect("request still reported");
    assert!(python_frames(&r["stack"]).is_empty(), "{r}");
    assert!((395.0..450.0).contains(&r["duration_ms"].as_f64().unwrap()), "{r}");
}
