//! Flame graphs and hotspots: `record` against a real app under load, the graphs rendered by a
//! real browser, the per-route table against the client's own log, `flamegraph` offline, and
//! `top` in a real terminal.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use introspect_tests::{
    can_trace,
    checks::drive,
    client::Exchange,
    guard::Guard,
    introspect::{self},
    introspect_bin,
    server::Gunicorn,
};
use serde_json::Value;

/// The DOM headless Chromium builds from a file (scripts run, as a user's browser would).
fn rendered_dom(file: &Path) -> String {
    let profile = std::env::temp_dir().join(format!("introspect-chromium-{}", std::process::id()));
    let out = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", file.display()))
        .stderr(Stdio::null())
        .output()
        .expect("run chromium (installed by `cargo xtask setup`)");
    let _ = fs::remove_dir_all(&profile);
    assert!(out.status.success(), "chromium failed on {}", file.display());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Frames drawn in a rendered flame graph: (title, width in %) of every `<g><title>…<rect width>`.
fn drawn_frames(dom: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for part in dom.split("<title>").skip(1) {
        let Some((title, rest)) = part.split_once("</title>") else { continue };
        let Some(rect) = rest.strip_prefix("<rect").and_then(|r| r.split_once('>').map(|(a, _)| a)) else { continue };
        let width = rect.split("width=\"").nth(1).and_then(|w| w.split('%').next()).and_then(|w| w.parse().ok()).unwrap_or(0.0);
        out.push((title.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"), width));
    }
    out
}

/// The graph is real: a browser draws `function` as a titled frame of visible width.
fn assert_draws(file: &Path, function: &str) {
    let dom = rendered_dom(file);
    let frames = drawn_frames(&dom);
    let hit = frames.iter().find(|(t, w)| t.starts_with(&format!("{function} (")) && *w > 0.5);
    assert!(hit.is_some(), "{}: no visible frame for {function} among {} frames", file.display(), frames.len());
}

/// Nearest-rank percentile, as the summary's histogram ranks.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn route_of(path: &str) -> String {
    // The client's own grouping: numeric segments are ids.
    path.split('/').map(|s| if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) { "{id}" } else { s }).collect::<Vec<_>>().join("/")
}

#[test]
fn record_writes_real_graphs_and_a_table_that_matches_the_client() {
    if !can_trace("record_writes_real_graphs_and_a_table_that_matches_the_client") {
        return;
    }
    let server = Gunicorn::start("flaskapp:app", 2, &[]);
    let out = std::env::temp_dir().join(format!("introspect-record-{}", server.port));
    let _ = fs::remove_dir_all(&out);
    let mut cmd = Command::new(introspect_bin());
    // Today's slow-only profile (the all-traffic one has its own tests below).
    cmd.args(["record", "--slow-only", "--port", &server.port.to_string(), "--threshold", "100ms", "--duration", "12s", "--out"])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut record = Guard::spawn("introspect record", &mut cmd).expect("spawn record");
    thread::sleep(Duration::from_secs(2));
    // The client's log: a known mix, ids in the paths.
    let paths: Vec<String> = (0..60)
        .map(|i| match i % 6 {
            0 | 1 => format!("/sleep/20/{i}"),
            2 => format!("/chain/cpu/150/{i}"),
            3 => format!("/chain/sleep/250/{i}"),
            4 => format!("/sleep/60/{i}"),
            _ => format!("/fail/{i}"),
        })
        .collect();
    let exchanges: Vec<Exchange> = drive(server.port, paths, 2, false, false);
    wait_for_record(&mut record);
    for f in ["events.jsonl", "summary.json", "slow.folded", "slow.svg", "cpu.svg", "offcpu.svg"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    // Real graphs: the browser draws the known slow functions.
    assert_draws(&out.join("slow.svg"), "helper_cpu");
    assert_draws(&out.join("slow.svg"), "helper_sleep");
    assert_draws(&out.join("cpu.svg"), "helper_cpu");
    assert_draws(&out.join("offcpu.svg"), "helper_sleep");
    let route_svgs: Vec<PathBuf> = fs::read_dir(out.join("routes")).unwrap().map(|e| e.unwrap().path()).collect();
    let cpu_route = route_svgs.iter().find(|p| p.to_string_lossy().contains("chain_cpu")).expect("a graph for the CPU route");
    assert_draws(cpu_route, "helper_cpu");
    let sleep_route = route_svgs.iter().find(|p| p.to_string_lossy().contains("chain_sleep")).expect("a graph for the sleep route");
    assert_draws(sleep_route, "helper_sleep");

    // The per-route table against the client's own log.
    let summary: Value = serde_json::from_str(&fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let mut client: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for ex in &exchanges {
        client.entry(route_of(&ex.path)).or_default().push(ex.duration_ms());
    }
    let rows = summary["endpoints"].as_array().unwrap();
    let ours: BTreeSet<String> = rows.iter().map(|r| r["route"].as_str().unwrap().to_string()).collect();
    assert_eq!(ours, client.keys().cloned().collect::<BTreeSet<_>>(), "routes");
    for (route, durations) in &mut client {
        durations.sort_by(f64::total_cmp);
        let row = rows.iter().find(|r| r["route"] == route.as_str()).unwrap();
        assert_eq!(row["count"].as_u64().unwrap() as usize, durations.len(), "{route}: count");
        // Percentiles of routes long enough that the client's own overhead (a few tens of µs)
        // is not a percent of them.
        if percentile(durations, 0.5) >= 10.0 {
            for (q, key) in [(0.5, "p50_ms"), (0.95, "p95_ms"), (0.99, "p99_ms")] {
                let (theirs, ours) = (percentile(durations, q), row[key].as_f64().unwrap());
                assert!((ours - theirs).abs() <= theirs * 0.05, "{route} {key}: {ours} vs the client's {theirs}");
            }
        }
    }
    let fail = rows.iter().find(|r| r["route"] == "/fail/{id}").unwrap();
    assert_eq!(fail["errors_5xx"], fail["count"]);
    let share: f64 = rows.iter().map(|r| r["share_time"].as_f64().unwrap()).sum();
    assert!((share - 1.0).abs() < 0.01, "time shares add up to {share}");

    // The folded file is valid input for inferno's flame graph tool.
    let mut svg = Vec::new();
    inferno::flamegraph::from_files(&mut inferno::flamegraph::Options::default(), &[out.join("slow.folded")], &mut svg)
        .expect("inferno reads slow.folded");
    assert!(String::from_utf8_lossy(&svg).contains("helper_cpu"));

    // Offline, from events.jsonl, without root: the same stacks, the same frames.
    let rebuilt = out.join("rebuilt.folded");
    let res = introspect::run(&["flamegraph", out.join("events.jsonl").to_str().unwrap(), "--folded", "-o", rebuilt.to_str().unwrap()]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    assert_eq!(fs::read_to_string(&rebuilt).unwrap(), fs::read_to_string(out.join("slow.folded")).unwrap());
    let rebuilt_svg = out.join("rebuilt.svg");
    let res = introspect::run(&["flamegraph", out.join("events.jsonl").to_str().unwrap(), "-o", rebuilt_svg.to_str().unwrap()]);
    assert!(res.status.success());
    let titles = |p: &Path| drawn_frames(&rendered_dom(p)).into_iter().map(|(t, _)| t).collect::<BTreeSet<_>>();
    assert_eq!(titles(&rebuilt_svg), titles(&out.join("slow.svg")), "rebuilt graph draws other frames");
    let res = introspect::run(&["flamegraph", out.join("events.jsonl").to_str().unwrap(), "--route", "/nope", "-o", "/dev/null"]);
    assert_eq!(res.status.code(), Some(2), "an unknown route is a usage error");
    let _ = fs::remove_dir_all(&out);
}

/// Waits (a minute at most) for `record` to end by itself, successfully.
fn wait_for_record(record: &mut Guard) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = record.try_wait() {
            break s;
        }
        assert!(Instant::now() < deadline, "record did not finish");
        thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "record failed");
}

/// The line `def NAME(` is on in an app's source (what `hot` must call its line).
fn def_line(app_file: &str, name: &str) -> u64 {
    let src = fs::read_to_string(introspect_tests::repo_root().join("tests/apps").join(app_file)).unwrap();
    src.lines().position(|l| l.starts_with(&format!("def {name}("))).map(|i| i as u64 + 1).expect("function in the app")
}

/// The innermost Python frame's function of a folded line (`root;outer;...;inner weight`).
fn innermost_python(line: &str) -> Option<String> {
    let (stack, _) = line.rsplit_once(' ')?;
    // Python frames are labelled `function (file:line)`.
    stack.split(';').skip(1).filter(|f| f.ends_with(')') && f.contains(" (")).last().map(|f| f.split(" (").next().unwrap().to_string())
}

/// Weight per root frame (route, or `(no request)`) of a folded file, heaviest first.
fn roots(folded: &str) -> Vec<(String, u64)> {
    let mut by: BTreeMap<String, u64> = BTreeMap::new();
    for l in folded.lines() {
        let (stack, w) = l.rsplit_once(' ').unwrap();
        *by.entry(stack.split(';').next().unwrap().to_string()).or_default() += w.parse::<u64>().unwrap();
    }
    let mut v: Vec<(String, u64)> = by.into_iter().collect();
    v.sort_by_key(|r| std::cmp::Reverse(r.1));
    v
}

/// `record` with no threshold against a real app: a 150 ms CPU page called 20 times as often as
/// a 1.5 s page (a third CPU, the rest asleep). What the site spent its CPU on must come out
/// first, in the table and the graph, in the proportion the app measured with its own thread
/// CPU clock; the slow page must lead the slow-only view; every request must be in
/// events.jsonl. `app_file`: the source holding `price_catalog`; `background`: the app has
/// `/later/MS` (CPU on a thread serving no request).
/// The two pages' routes (a trailing tag makes every path unique).
const CATALOG: &str = "/catalog/{id}/{id}";
const REPORT: &str = "/report/{id}/{id}";

fn record_profiles_all_traffic(app: &str, app_file: &str, background: bool, server_args: &[&str]) {
    let server = Gunicorn::start(app, 2, server_args);
    let out = std::env::temp_dir().join(format!("introspect-record-all-{}", server.port));
    let _ = fs::remove_dir_all(&out);
    let mut cmd = Command::new(introspect_bin());
    cmd.args(["record", "--port", &server.port.to_string(), "--duration", "14s", "--out"]).arg(&out).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut record = Guard::spawn("introspect record", &mut cmd).expect("spawn record");
    thread::sleep(Duration::from_secs(2));
    let mut paths: Vec<String> = (0..63).map(|i| if i % 21 == 10 { format!("/report/1500/{i}") } else { format!("/catalog/150/{i}") }).collect();
    if background {
        paths.insert(5, "/later/400".to_string());
    }
    let exchanges: Vec<Exchange> = drive(server.port, paths, 2, false, false);
    assert!(exchanges.iter().all(|e| e.status == 200), "every request answered");
    wait_for_record(&mut record);
    let summary: Value = serde_json::from_str(&fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();

    // Every request, counted per route as the client sent them.
    let mut client: BTreeMap<String, u64> = BTreeMap::new();
    for ex in &exchanges {
        *client.entry(route_of(&ex.path)).or_default() += 1;
    }
    let events = fs::read_to_string(out.join("events.jsonl")).unwrap();
    let mut logged: BTreeMap<String, u64> = BTreeMap::new();
    for l in events.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        if v["type"] == "request" {
            *logged.entry(route_of(v["path"].as_str().unwrap())).or_default() += 1;
            assert!(v["profile"].is_array(), "every request has its profile: {l}");
        }
    }
    assert_eq!(logged, client, "requests in events.jsonl");
    let rows = summary["endpoints"].as_array().unwrap();
    let counted: BTreeMap<String, u64> = rows.iter().map(|r| (r["route"].as_str().unwrap().to_string(), r["count"].as_u64().unwrap())).collect();
    assert_eq!(counted, client, "per-route counts");

    // The hot table: the often-called page's function first, its line, its share.
    let hot = summary["hot"].as_array().expect("a hot table");
    assert!(!hot.is_empty() && hot.len() <= 50);
    let top = &hot[0];
    assert_eq!(top["function"], "price_catalog", "hottest function: {top}");
    assert_eq!(top["line"].as_u64(), Some(def_line(app_file, "price_catalog")), "its line of definition");
    assert!(top["file"].as_str().unwrap().ends_with(app_file));
    assert_eq!(top["routes"][0]["route"], CATALOG);
    let cpu_of = |route: &str| exchanges.iter().filter(|e| route_of(&e.path) == route).map(|e| e.header_f64("X-Cpu-Ms").unwrap()).sum::<f64>();
    let theirs = cpu_of(CATALOG) / (cpu_of(CATALOG) + cpu_of(REPORT));
    let ours = top["share_cpu"].as_f64().unwrap();
    eprintln!("{app}: price_catalog's CPU share {ours} vs the app's own {theirs:.4}");
    assert!((ours - theirs).abs() <= 0.10 * theirs, "price_catalog's CPU share: {ours} vs the app's own {theirs:.4}");
    let catalog_requests = client[CATALOG];
    let seen_in = top["requests"].as_u64().unwrap();
    assert!(seen_in * 10 >= catalog_requests * 9 && seen_in <= catalog_requests, "seen in {seen_in} of {catalog_requests} catalog requests");
    let crunch = hot.iter().find(|r| r["function"] == "crunch_report").expect("the slow page's CPU function in the table");
    assert!(crunch["self_cpu_ms"].as_f64().unwrap() < top["self_cpu_ms"].as_f64().unwrap());

    // all.svg: the widest innermost Python frame under the routes is the same function.
    let all = fs::read_to_string(out.join("all.folded")).unwrap();
    let mut leaves: BTreeMap<String, u64> = BTreeMap::new();
    for l in all.lines().filter(|l| !l.starts_with("(no request)")) {
        if let Some(f) = innermost_python(l) {
            *leaves.entry(f).or_default() += l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap();
        }
    }
    let widest = leaves.iter().max_by_key(|(_, w)| **w).unwrap();
    assert_eq!(widest.0, "price_catalog", "widest leaf of all.svg: {leaves:?}");
    // The slow-only view: led by the 1.5 s page.
    let slow = roots(&fs::read_to_string(out.join("slow.folded")).unwrap());
    assert_eq!(slow.first().map(|r| r.0.as_str()), Some(format!("GET {REPORT}").as_str()), "slow.svg's heaviest route: {slow:?}");

    // Samples outside requests: under `(no request)`, counted in the summary.
    let no_request = &summary["no_request"];
    assert_eq!(no_request["samples"], summary["stacks"]["sampled"]["no_request_samples"]);
    if background {
        // 400 ms of a background thread's CPU at 49 Hz: about 20 samples.
        let n = no_request["samples"].as_u64().unwrap();
        eprintln!("{app}: {n} samples outside requests (400 ms of a background thread's CPU)");
        assert!((10..=40).contains(&n), "{n} samples outside requests");
        assert!(all.lines().any(|l| l.starts_with("(no request);") && l.contains("housekeeping (")), "housekeeping under (no request)");
        assert!(no_request["stacks"].to_string().contains("housekeeping"));
    }

    // A browser draws them, with the known functions as titled frames.
    assert_draws(&out.join("all.svg"), "price_catalog");
    assert_draws(&out.join("cpu.svg"), "price_catalog");
    assert_draws(&out.join("slow.svg"), "crunch_report");
    let route_svgs: Vec<PathBuf> = fs::read_dir(out.join("routes")).unwrap().map(|e| e.unwrap().path()).collect();
    let catalog = route_svgs.iter().find(|p| p.to_string_lossy().contains("catalog")).expect("a graph for the catalog route");
    assert_draws(catalog, "price_catalog");
    assert!(!route_svgs.iter().any(|p| p.to_string_lossy().contains("no_request")), "no route graph for (no request)");

    // Offline: events.jsonl rebuilds the requests' part of all.folded.
    let rebuilt = out.join("rebuilt.folded");
    let res = introspect::run(&["flamegraph", out.join("events.jsonl").to_str().unwrap(), "--folded", "-o", rebuilt.to_str().unwrap()]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let requests_part: String = all.lines().filter(|l| !l.starts_with("(no request)")).map(|l| format!("{l}\n")).collect();
    assert_eq!(fs::read_to_string(&rebuilt).unwrap(), requests_part);
    let _ = fs::remove_dir_all(&out);
}

#[test]
fn record_profiles_all_traffic_of_flask() {
    if !can_trace("record_profiles_all_traffic_of_flask") {
        return;
    }
    record_profiles_all_traffic("flaskapp:app", "flaskapp.py", true, &[]);
}

/// Django on gthread workers (2 x 2 threads).
#[test]
fn record_profiles_all_traffic_of_django() {
    if !can_trace("record_profiles_all_traffic_of_django") {
        return;
    }
    // Threads of a worker: samples go by thread to the request each one serves.
    record_profiles_all_traffic("djangoapp.wsgi:application", "djangoapp/views.py", false, &["--worker-class", "gthread", "--threads", "2"]);
}

/// A tmux session, killed when dropped.
struct Tmux(String);

impl Tmux {
    fn start(name: &str, command: &str) -> Self {
        let st = Command::new("tmux").args(["new-session", "-d", "-s", name, "-x", "160", "-y", "40", command]).status().expect("tmux");
        assert!(st.success(), "tmux new-session failed");
        Tmux(name.to_string())
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux").args(["capture-pane", "-p", "-t", &self.0]).output().expect("capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &str) {
        Command::new("tmux").args(["send-keys", "-t", &self.0, keys]).status().expect("send-keys");
    }

    fn alive(&self) -> bool {
        Command::new("tmux").args(["has-session", "-t", &self.0]).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    }

    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.screen();
            if pred(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "top never showed {what}; screen:\n{s}");
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["kill-session", "-t", &self.0]).stderr(Stdio::null()).status();
    }
}

fn requests_shown(screen: &str) -> u64 {
    screen.split("introspect top — ").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse().ok()).unwrap_or(0)
}

#[test]
fn top_in_a_real_terminal() {
    if !can_trace("top_in_a_real_terminal") {
        return;
    }
    let server = Gunicorn::start("flaskapp:app", 2, &[]);
    let name = format!("introspect-top-{}", server.port);
    let tmux = Tmux::start(&name, &format!("{} top --port {} --interval 300ms", introspect_bin().display(), server.port));
    tmux.wait_for("its table", |s| s.contains("introspect top") && s.contains("ROUTE"));
    let _ = drive(server.port, (0..30).map(|i| format!("/sleep/{}/{i}", 5 + i % 3 * 20)).collect(), 2, false, false);
    let first = tmux.wait_for("the requests", |s| s.contains("GET /sleep/{id}/{id}") && requests_shown(s) > 0);
    let _ = drive(server.port, (0..20).map(|i| format!("/fast/t{i}")).collect(), 2, false, false);
    // It refreshes by itself.
    tmux.wait_for("a refresh", |s| requests_shown(s) > requests_shown(&first) && s.contains("GET /fast/t"));
    assert!(first.contains("sorted by total time"));
    // Keys re-sort.
    tmux.keys("n");
    let by_count = tmux.wait_for("the count sort", |s| s.contains("sorted by count"));
    let body: Vec<&str> = by_count.lines().skip_while(|l| !l.starts_with("ROUTE")).skip(1).filter(|l| l.starts_with("GET")).collect();
    let counts: Vec<u64> = body.iter().filter_map(|l| l.split_whitespace().nth(2).and_then(|c| c.parse().ok())).collect();
    assert!(counts.windows(2).all(|w| w[0] >= w[1]), "not sorted by count: {body:?}");
    tmux.keys("p");
    tmux.wait_for("the p99 sort", |s| s.contains("sorted by p99"));
    // f: the functions where all requests' CPU went, led by the CPU page's own function.
    let _ = drive(server.port, (0..8).map(|i| format!("/catalog/100/{i}")).collect(), 2, false, false);
    tmux.keys("f");
    let functions = tmux.wait_for("the function view", |s| {
        s.lines().skip_while(|l| !l.starts_with("FUNCTION")).nth(1).is_some_and(|l| l.starts_with("price_catalog (flaskapp.py:"))
    });
    let row = functions.lines().find(|l| l.starts_with("price_catalog (")).unwrap();
    assert!(row.contains("GET /catalog/{id}/{id}"), "its route: {row}");
    // f again: back to the routes.
    tmux.keys("f");
    tmux.wait_for("the routes again", |s| s.contains("ROUTE") && s.contains("sorted by p99"));
    // q quits, and the terminal session ends with it.
    tmux.keys("q");
    let deadline = Instant::now() + Duration::from_secs(10);
    while tmux.alive() {
        assert!(Instant::now() < deadline, "top did not quit on q");
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn top_prints_plain_tables_when_not_on_a_terminal() {
    if !can_trace("top_prints_plain_tables_when_not_on_a_terminal") {
        return;
    }
    let server = Gunicorn::start("flaskapp:app", 1, &[]);
    let mut cmd = Command::new(introspect_bin());
    cmd.args(["top", "--port", &server.port.to_string(), "--interval", "500ms", "--duration", "3s"]).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut top = Guard::spawn("introspect top", &mut cmd).expect("spawn top");
    let stdout = top.child_mut().stdout.take().unwrap();
    let reader = thread::spawn(move || std::io::read_to_string(stdout).unwrap());
    thread::sleep(Duration::from_millis(800));
    let _ = drive(server.port, (0..10).map(|i| format!("/sleep/10/{i}")).collect(), 1, false, false);
    let text = reader.join().unwrap();
    let tables = text.matches("introspect top — ").count();
    assert!(tables >= 3, "expected periodic tables, got {tables}:\n{text}");
    assert!(!text.contains('\x1b'), "escape sequences in plain output");
    assert!(text.contains("GET /sleep/{id}/{id}"), "{text}");
}
