//! uWSGI: its workers speaking HTTP (`--http-socket`), and the uwsgi binary protocol
//! (`--socket`, TCP and Unix) behind a real nginx's `uwsgi_pass` — every request once, with the
//! right identity, status and thread, timed against the client and against what nginx logged of
//! its upstream; malformed packets counted, never reported as requests.
use std::{
    collections::BTreeMap,
    fs,
    io::{Read, Write},
    net::TcpStream,
    thread,
    time::Duration,
};

use introspect_tests::{
    can_trace,
    checks::{check_against_client, check_against_client_with, drive, mixed_paths, requests, summary},
    client::Exchange,
    introspect::{Line, Watch},
    nginx::{Nginx, Upstream},
    server::Gunicorn,
    uwsgi::{Listen, Uwsgi},
};

const DELAYS_MS: [u32; 9] = [0, 1, 2, 5, 10, 20, 50, 100, 200];

/// The kernel's cap on every listen() backlog.
fn somaxconn() -> u64 {
    fs::read_to_string("/proc/sys/net/core/somaxconn").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(4096)
}

#[test]
fn http_socket_workers_every_request_once_with_client_timing() {
    if !can_trace("http_socket_workers_every_request_once_with_client_timing") {
        return;
    }
    let server = Uwsgi::start_on(Listen::HttpSocket, 2, 1, &[]);
    let pid = server.master_pid().to_string();
    let watch = Watch::start(&["--pid", &pid, "--all"]);
    let paths = mixed_paths(160, "r", &DELAYS_MS);
    let exchanges = drive(server.port, paths, 2, false, false);
    assert!(exchanges.iter().any(|e| e.status == 404) && exchanges.iter().any(|e| e.status == 500));
    let workers: std::collections::BTreeSet<u64> = exchanges.iter().filter_map(|e| e.header("X-Pid")?.parse().ok()).collect();
    assert_eq!(workers.len(), 2, "both workers served: {workers:?}");
    thread::sleep(Duration::from_millis(200));
    let lines = watch.stop();
    check_against_client(&exchanges, &lines, true);
    // Each request under the worker process that served it.
    for ex in &exchanges {
        let r = requests(&lines).into_iter().find(|r| r["path"] == ex.path.as_str()).expect("reported");
        assert_eq!(r["pid"].as_u64().map(|p| p.to_string()).as_deref(), ex.header("X-Pid"), "{}: {r}", ex.path);
    }
}

#[test]
fn the_http_router_is_a_hop_and_each_request_is_reported_once() {
    if !can_trace("the_http_router_is_a_hop_and_each_request_is_reported_once") {
        return;
    }
    let server = Uwsgi::start_on(Listen::HttpRouter, 2, 1, &[]);
    let pid = server.master_pid().to_string();
    drive(server.port, (0..12).map(|i| format!("/fast/warm{i}")).collect(), 4, false, false);
    let watch = Watch::start(&["--pid", &pid, "--all"]);
    thread::sleep(Duration::from_millis(500));
    let paths: Vec<String> = (0..60).map(|i| format!("/sleep/{}/h{i}", DELAYS_MS[i % DELAYS_MS.len()])).collect();
    let exchanges = drive(server.port, paths, 2, false, false);
    thread::sleep(Duration::from_millis(300));
    let lines = watch.stop();
    // Once each, by the worker that served it (its pid and thread), timed against the client
    // (whose time also holds the router's hop).
    check_against_client(&exchanges, &lines, true);
    for ex in &exchanges {
        let r = requests(&lines).into_iter().find(|r| r["path"] == ex.path.as_str()).expect("reported");
        assert_eq!(r["pid"].as_u64().map(|p| p.to_string()).as_deref(), ex.header("X-Pid"), "{}: {r}", ex.path);
    }
    assert_eq!(summary(&lines)["proxied"], exchanges.len(), "the router's hops: {}", summary(&lines));
}

#[test]
fn recycled_and_cheaper_spawned_workers_are_followed() {
    if !can_trace("recycled_and_cheaper_spawned_workers_are_followed") {
        return;
    }
    // --max-requests 20: each worker is replaced after 20 requests (forked by the master).
    // uWSGI 2.0.21+ also wants a worker to have lived --min-worker-lifetime (60 s by default)
    // first.
    let born =
        born_during_the_watch(2, &["--max-requests", "20", "--min-worker-lifetime", "0"], (0..120).map(|i| format!("/fast/m{i}")).collect(), 2);
    assert!(born >= 3, "--max-requests: requests of {born} workers born during the watch");
    // --cheaper 1 of 4: one worker at first, more spawned when all are busy.
    let born = born_during_the_watch(
        4,
        &["--cheaper", "1", "--cheaper-initial", "1", "--cheaper-overload", "1"],
        (0..60).map(|i| format!("/sleep/100/c{i}")).collect(),
        4,
    );
    assert!(born >= 1, "--cheaper: no requests of workers spawned during the watch");
    eprintln!("--cheaper: requests served by {born} workers spawned during the watch");
}

/// uWSGI `--http-socket` with `processes` and `extra`, watched while `clients` send `paths`:
/// every request exact, and how many workers that did not exist at the start served some.
fn born_during_the_watch(processes: u32, extra: &[&str], paths: Vec<String>, clients: usize) -> usize {
    let server = Uwsgi::start_on(Listen::HttpSocket, processes, 1, extra);
    let first: std::collections::BTreeSet<u64> = server.workers().into_iter().map(u64::from).collect();
    let pid = server.master_pid().to_string();
    let watch = Watch::start(&["--pid", &pid, "--all"]);
    let exchanges = drive(server.port, paths, clients, false, false);
    thread::sleep(Duration::from_millis(300));
    let lines = watch.stop();
    check_against_client(&exchanges, &lines, true);
    let serving: std::collections::BTreeSet<u64> = requests(&lines).iter().filter_map(|r| r["pid"].as_u64()).collect();
    eprintln!("{extra:?}: {} workers at first ({first:?}), requests served by {serving:?}", first.len());
    serving.difference(&first).count()
}

/// Four times more concurrent 300 ms requests than workers, through nginx to a Unix socket:
/// the backlog wait comes from nginx's connects (there is no segment to time) and grows in
/// 300 ms steps, the duration agrees with nginx's upstream time, and the summary reports how
/// deep the backlog got.
#[test]
fn a_burst_on_a_unix_socket_queues_in_steps() {
    if !can_trace("a_burst_on_a_unix_socket_queues_in_steps") {
        return;
    }
    let server = Uwsgi::start_on(Listen::UwsgiUnix, 2, 1, &[]);
    let nginx = Nginx::start(Upstream::Uwsgi(server.upstream()));
    drive(nginx.port, (0..8).map(|i| format!("/fast/warm{i}")).collect(), 2, false, false);
    let socket = server.socket.clone().unwrap();
    let watch = Watch::start(&["--socket", socket.to_str().unwrap(), "--all"]);
    thread::sleep(Duration::from_millis(500));
    let paths: Vec<String> = (0..8).map(|i| format!("/sleep/300/b{i}")).collect();
    let exchanges = drive(nginx.port, paths, 8, false, false);
    thread::sleep(Duration::from_millis(300));
    let lines = watch.stop();
    check_against_client_with(&exchanges, &lines, true, Exchange::duration_ms);
    check_against_nginx(&exchanges, &lines, &nginx);
    let mut queues: Vec<(f64, f64)> =
        requests(&lines).iter().map(|r| (r["queue_ms"].as_f64().unwrap(), r["duration_ms"].as_f64().unwrap())).collect();
    queues.sort_by(|a, b| a.0.total_cmp(&b.0));
    eprintln!("(queue_ms, duration_ms): {queues:?}");
    // Two at a time: the k-th pair waited for k requests before it on each worker. A step is
    // what a request takes after its wait (300 ms and the app's own few ms).
    let step = queues.iter().map(|(q, d)| d - q).sum::<f64>() / queues.len() as f64;
    for (i, (queue, _)) in queues.iter().enumerate() {
        let want = (i / 2) as f64 * step;
        assert!(
            (queue - want).abs() <= 10.0 + (i / 2) as f64 * 2.0,
            "request {i}: queued {queue} ms, want {want:.1} (steps of {step:.1}): {queues:?}"
        );
    }
    let s = summary(&lines);
    let listener = &s["listeners"][0];
    assert_eq!(listener["socket"], format!("unix:{}", socket.display()).as_str(), "{s}");
    assert_eq!((listener["connects"].as_u64(), listener["accepts"].as_u64()), (Some(8), Some(8)), "{s}");
    assert!(listener["backlog_peak"].as_u64().unwrap() >= 5, "8 connections for 2 workers: {s}");
    assert_eq!(listener["backlog_max"].as_u64(), Some(somaxconn().min(100)), "uWSGI's default --listen: {s}");
}

/// One request mix against a server, watched: the summary's endpoint rows by route, and each
/// route's statuses.
fn route_picture(port: u16, master: u32) -> BTreeMap<String, (u64, f64, Vec<u64>)> {
    let watch = Watch::start(&["--pid", &master.to_string(), "--all"]);
    thread::sleep(Duration::from_millis(300));
    let paths: Vec<String> =
        (0..30).flat_map(|i| [format!("/sleep/20/{i}"), format!("/catalog/10/{i}"), format!("/fast/{i}"), format!("/nope/{i}")]).collect();
    let exchanges = drive(port, paths, 2, false, false);
    thread::sleep(Duration::from_millis(300));
    let lines = watch.stop();
    assert_eq!(requests(&lines).len(), exchanges.len());
    let mut statuses: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in requests(&lines) {
        // As the summary folds it: trailing numeric segments (the tag, the milliseconds) go.
        let mut route = r["path"].as_str().unwrap();
        while let Some((head, last)) = route.rsplit_once('/')
            && !last.is_empty()
            && last.bytes().all(|b| b.is_ascii_digit())
        {
            route = head;
        }
        let route = route.to_string();
        statuses.entry(route).or_default().push(r["status"].as_u64().unwrap());
    }
    summary(&lines)["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| {
            let route = e["route"].as_str().unwrap().trim_end_matches("/{id}").to_string();
            let mut st = statuses.get(&route).cloned().unwrap_or_else(|| panic!("no requests of {route}: {statuses:?}"));
            st.sort();
            (format!("{} {route}", e["method"].as_str().unwrap()), (e["count"].as_u64().unwrap(), e["p50_ms"].as_f64().unwrap(), st))
        })
        .collect()
}

/// uWSGI's classic failure: its listen queue full. One worker with `--listen 1` on a Unix socket,
/// six 400 ms requests at once through nginx: nginx's non-blocking connects past the backlog
/// fail with EAGAIN (its error log says so, and it answers 502). Each of those is counted as
/// `refused`, and the requests that got in are reported.
#[test]
fn a_full_unix_listen_queue_is_counted() {
    if !can_trace("a_full_unix_listen_queue_is_counted") {
        return;
    }
    let server = Uwsgi::start_on(Listen::UwsgiUnix, 1, 1, &["--listen", "1"]);
    let nginx = Nginx::start(Upstream::Uwsgi(server.upstream()));
    let socket = server.socket.clone().unwrap();
    let watch = Watch::start(&["--socket", socket.to_str().unwrap(), "--all"]);
    thread::sleep(Duration::from_millis(500));
    let exchanges = drive(nginx.port, (0..6).map(|i| format!("/sleep/400/f{i}")).collect(), 6, false, false);
    thread::sleep(Duration::from_millis(300));
    let lines = watch.stop();
    let refused_by_nginx = nginx.error_log().matches("(11: Resource temporarily unavailable)").count() as u64;
    let bad_gateway = exchanges.iter().filter(|e| e.status == 502).count() as u64;
    eprintln!("nginx: {refused_by_nginx} EAGAIN connects, {bad_gateway} answered 502");
    assert!(refused_by_nginx >= 1, "the backlog of 1 never filled: {}", nginx.error_log());
    let s = summary(&lines);
    let listener = &s["listeners"][0];
    assert_eq!(listener["refused"].as_u64(), Some(refused_by_nginx), "{s}");
    assert_eq!(listener["backlog_max"].as_u64(), Some(1), "{s}");
    let served: Vec<_> = exchanges.iter().filter(|e| e.status == 200).collect();
    assert_eq!(requests(&lines).len(), served.len(), "every request that got in, once: {s}");
    assert_eq!(listener["accepts"].as_u64(), Some(served.len() as u64), "{s}");
}

/// `introspect top` shows the same backlog: its last table has the socket's row with the
/// backlog's size and the connects nginx saw refused.
#[test]
fn top_shows_the_listen_backlog() {
    if !can_trace("top_shows_the_listen_backlog") {
        return;
    }
    let server = Uwsgi::start_on(Listen::UwsgiUnix, 1, 1, &["--listen", "1"]);
    let nginx = Nginx::start(Upstream::Uwsgi(server.upstream()));
    let socket = server.socket.clone().unwrap().display().to_string();
    let (_top, reader) = introspect_tests::introspect::top(&["--socket", &socket, "--interval", "500ms", "--duration", "4s"]);
    thread::sleep(Duration::from_millis(1000));
    drive(nginx.port, (0..6).map(|i| format!("/sleep/400/t{i}")).collect(), 6, false, false);
    let text = reader.join().unwrap();
    let refused = nginx.error_log().matches("(11: Resource temporarily unavailable)").count();
    assert!(refused >= 1, "the backlog of 1 never filled: {}", nginx.error_log());
    let last = text.rsplit("introspect top — ").next().unwrap_or_default();
    let row = last
        .lines()
        .skip_while(|l| !l.starts_with("LISTEN BACKLOG"))
        .find(|l| l.starts_with(&format!("unix:{socket}")))
        .unwrap_or_else(|| panic!("no backlog row for {socket}:\n{last}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    eprintln!("{row}");
    assert_eq!((cols[2], cols[3]), ("1", refused.to_string().as_str()), "{row}");
}

/// `--lazy-apps`: each worker loads the app itself after the fork (fresh thread states, unlike
/// the default where the master's are inherited): requests and a slow request's Python stack
/// come out the same.
#[test]
fn lazy_apps_workers_are_measured_with_their_stacks() {
    if !can_trace("lazy_apps_workers_are_measured_with_their_stacks") {
        return;
    }
    let server = Uwsgi::start_on(Listen::HttpSocket, 2, 2, &["--lazy-apps"]);
    let pid = server.master_pid().to_string();
    let mut watch = Watch::start(&["--pid", &pid, "--all", "--threshold", "300ms"]);
    let exchanges = drive(server.port, (0..40).map(|i| format!("/sleep/{}/l{i}", DELAYS_MS[i % 6])).collect(), 2, false, false);
    let port = server.port;
    let slow = thread::spawn(move || introspect_tests::client::Client::new(port, false).request("GET", "/chain/cpu/1200/lz").expect("request"));
    let inflight = watch
        .wait_for(Duration::from_secs(10), |l| l.ty() == "inflight" && l.json["path"] == "/chain/cpu/1200/lz")
        .expect("an inflight line for the slow request");
    let frames: Vec<&str> =
        inflight.json["stack"].as_array().expect("a stack").iter().filter(|f| f["kind"] == "python").filter_map(|f| f["function"].as_str()).collect();
    assert!(frames.iter().any(|f| f.ends_with("helper_cpu")) && frames.contains(&"chain_cpu"), "{frames:?}");
    let slow = slow.join().unwrap();
    thread::sleep(Duration::from_millis(300));
    let lines = watch.stop();
    let mut all = exchanges;
    all.push(slow);
    check_against_client(&all, &lines, true);
}

/// The same Django app under gunicorn (sync) and under uWSGI (`--http-socket`), two workers
/// each, the same requests: the same routes with the same counts and statuses, and the same
/// p50 within max(5%, 1 ms) (the servers' own per-request work differs by a fraction of a
/// millisecond: 0.1-0.6 ms more under gunicorn in two runs here).
#[test]
fn the_same_django_app_under_gunicorn_and_uwsgi_looks_the_same() {
    if !can_trace("the_same_django_app_under_gunicorn_and_uwsgi_looks_the_same") {
        return;
    }
    let gunicorn = Gunicorn::start("djangoapp.wsgi:application", 2, &[]);
    let under_gunicorn = route_picture(gunicorn.port, gunicorn.master_pid());
    drop(gunicorn);
    let uwsgi = Uwsgi::start_on(Listen::HttpSocket, 2, 1, &["--module", "djangoapp.wsgi:application"]);
    let under_uwsgi = route_picture(uwsgi.port, uwsgi.master_pid());
    eprintln!("gunicorn: {under_gunicorn:?}\nuWSGI:    {under_uwsgi:?}");
    assert_eq!(under_gunicorn.keys().collect::<Vec<_>>(), under_uwsgi.keys().collect::<Vec<_>>(), "the same routes");
    for (route, (count, p50, statuses)) in &under_gunicorn {
        let (u_count, u_p50, u_statuses) = &under_uwsgi[route];
        assert_eq!((count, statuses), (u_count, u_statuses), "{route}: counts and statuses");
        assert!((p50 - u_p50).abs() <= (p50 * 0.05).max(1.0), "{route}: p50 {p50} ms under gunicorn, {u_p50} ms under uWSGI");
    }
}

/// Each exchange against nginx's own record of its upstream: introspect's duration (from the
/// request's arrival at the worker's socket to the worker's last write) within max(1 ms, 2%) of
/// `$upstream_response_time` (nginx's connect to its last read of the response), plus 2 ms:
/// nginx takes both ends from its millisecond clock (1 ms of resolution), which it refreshes
/// once per pass of its event loop, so a start stamped at a pass's beginning is early by the
/// time that pass took before the connect (seen up to 1 ms on this 2-vCPU VM under the suites'
/// load).
fn check_against_nginx(exchanges: &[Exchange], lines: &[Line], nginx: &Nginx) {
    let access = nginx.access();
    let mut worst: f64 = 0.0;
    for ex in exchanges {
        let logged: Vec<_> = access.iter().filter(|a| a.uri == ex.path).collect();
        assert_eq!(logged.len(), 1, "{}: nginx logged it {} times", ex.path, logged.len());
        let a = logged[0];
        assert_eq!(a.status, ex.status, "{}", ex.path);
        let r = requests(lines).into_iter().find(|r| r["path"] == ex.path.as_str()).expect("reported");
        let ours = r["duration_ms"].as_f64().unwrap();
        let bound = (a.upstream_ms * 0.02).max(1.0) + 2.0;
        assert!((ours - a.upstream_ms).abs() <= bound, "{}: {ours} ms reported, nginx's upstream time {} ms: {r}", ex.path, a.upstream_ms);
        // nginx's own share: what its client waited minus what its upstream took.
        assert!(a.request_ms + 1.0 >= ours, "{}: {ours} ms reported, nginx's whole request {} ms", ex.path, a.request_ms);
        worst = worst.max((ours - a.upstream_ms).abs());
    }
    eprintln!("{} requests against nginx's upstream_response_time: largest difference {worst:.3} ms", exchanges.len());
}

fn behind_nginx(listen: Listen) {
    let server = Uwsgi::start_on(listen, 2, 2, &[]);
    let nginx = Nginx::start(Upstream::Uwsgi(server.upstream()));
    // The Unix socket's listeners found by their path; the TCP one by the master's pid.
    let target = match &server.socket {
        Some(path) => vec!["--socket".to_string(), path.display().to_string()],
        None => vec!["--pid".to_string(), server.master_pid().to_string()],
    };
    let mut args: Vec<&str> = target.iter().map(String::as_str).collect();
    args.push("--all");
    // Every thread's first request (Flask's own set-up, uWSGI's thread start) before the watch:
    // what is measured is the steady state.
    drive(nginx.port, (0..24).map(|i| format!("/fast/warm{i}")).collect(), 8, false, false);
    let watch = Watch::start(&args);
    // The watch's own start-up work goes on for a moment after it says it is watching (it
    // reads the fds of every process): on two CPUs that delays nginx and the first request.
    thread::sleep(Duration::from_millis(500));
    let paths = mixed_paths(160, "n", &DELAYS_MS);
    // On TCP the backlog wait is measured (queue_ms): as many clients as threads, so some
    // connections wait for a thread. On a Unix socket it is not (no segment to time): fewer
    // clients than threads, so a thread is always waiting in accept.
    let clients = if server.socket.is_some() { 2 } else { 4 };
    let exchanges = drive(nginx.port, paths, clients, true, false);
    let tids: std::collections::BTreeSet<_> = exchanges.iter().filter_map(|e| e.server_tid).collect();
    assert!(tids.len() > 2, "several threads served: {tids:?}");
    thread::sleep(Duration::from_millis(300));
    let stderr = watch.stderr();
    let lines = watch.stop();
    if let Some(path) = &server.socket {
        assert!(stderr.contains(&format!("Unix socket(s) [{}]", path.display())), "{stderr}");
    }
    // Against the client: every request once, its method, path, status and thread, and never
    // longer than the client waited. How much shorter is nginx's share, which its log holds
    // only in part (not its accept, nor its wait for a CPU before it read the request): the
    // lower bound is nginx's upstream time, below.
    check_against_client_with(&exchanges, &lines, true, Exchange::duration_ms);
    check_against_nginx(&exchanges, &lines, &nginx);
    assert_eq!(summary(&lines)["non_http"], 0, "{}", nginx.error_log());
    // The worker socket's backlog, as the kernel holds it: uWSGI's default --listen 100.
    let s = summary(&lines);
    let name = server.socket.as_ref().map_or_else(|| format!("127.0.0.1:{}", server.port), |p| format!("unix:{}", p.display()));
    let listener = s["listeners"].as_array().and_then(|l| l.iter().find(|l| l["socket"] == name.as_str())).unwrap_or_else(|| panic!("{name}: {s}"));
    assert_eq!(listener["backlog_max"].as_u64(), Some(somaxconn().min(100)), "{s}");
    // The client's connections to nginx were kept alive.
    let most = nginx.access().iter().map(|a| a.connection_requests).max().unwrap_or(0);
    assert!(most > 10, "keep-alive to nginx: at most {most} requests on one connection");
}

#[test]
fn uwsgi_protocol_behind_nginx_on_tcp() {
    if !can_trace("uwsgi_protocol_behind_nginx_on_tcp") {
        return;
    }
    behind_nginx(Listen::UwsgiTcp);
}

#[test]
fn uwsgi_protocol_behind_nginx_on_a_unix_socket() {
    if !can_trace("uwsgi_protocol_behind_nginx_on_a_unix_socket") {
        return;
    }
    behind_nginx(Listen::UwsgiUnix);
}

/// Sends raw bytes to the worker's socket, waits for it to answer or close, then closes.
fn send_raw(port: u16, bytes: &[u8]) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(bytes).expect("write");
    s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut sink = [0u8; 4096];
    let _ = s.read(&mut sink);
}

fn var(out: &mut Vec<u8>, k: &str, v: &str) {
    out.extend((k.len() as u16).to_le_bytes());
    out.extend(k.as_bytes());
    out.extend((v.len() as u16).to_le_bytes());
    out.extend(v.as_bytes());
}

#[test]
fn malformed_uwsgi_packets_are_counted_not_reported() {
    if !can_trace("malformed_uwsgi_packets_are_counted_not_reported") {
        return;
    }
    let server = Uwsgi::start_on(Listen::UwsgiTcp, 1, 1, &[]);
    let nginx = Nginx::start(Upstream::Uwsgi(server.upstream()));
    let pid = server.master_pid().to_string();
    let watch = Watch::start(&["--pid", &pid, "--all"]);
    let mut vars = Vec::new();
    var(&mut vars, "REQUEST_METHOD", "GET");
    var(&mut vars, "REQUEST_URI", "/fast/bad");
    // A size field larger than what follows.
    let mut short = vec![0u8];
    short.extend(((vars.len() + 100) as u16).to_le_bytes());
    short.push(0);
    short.extend(&vars);
    send_raw(server.port, &short);
    // A variable's length past the packet.
    let mut past = vec![0u8];
    past.extend((vars.len() as u16).to_le_bytes());
    past.push(0);
    let mut bad_vars = vars.clone();
    let at = bad_vars.len() - "/fast/bad".len() - 2;
    bad_vars[at..at + 2].copy_from_slice(&400u16.to_le_bytes());
    past.extend(&bad_vars);
    send_raw(server.port, &past);
    // Not the uwsgi protocol at all.
    send_raw(server.port, b"hello, this is not uwsgi\r\n\r\n");
    // Then real requests through nginx: the worker serves on.
    let exchanges = drive(nginx.port, (0..5).map(|i| format!("/fast/good{i}")).collect(), 1, true, false);
    assert!(exchanges.iter().all(|e| e.status == 200));
    thread::sleep(Duration::from_millis(300));
    let lines = watch.stop();
    check_against_client(&exchanges, &lines, true);
    let s = summary(&lines);
    assert_eq!(s["non_http"], 3, "the three malformed connections: {s}");
    assert!(!requests(&lines).iter().any(|r| r["path"].as_str().is_some_and(|p| p.contains("bad"))), "a malformed packet reported");
}
