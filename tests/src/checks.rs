//! Checks shared by the suites: drive load with the ground-truth client, pick lines, and
//! compare introspect's reports with what the client measured.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    thread,
};

use serde_json::Value;

use crate::{
    client::{self, Client, Exchange},
    introspect::Line,
};

/// Sends `paths` from `clients` concurrent connections (keep-alive on the even ones when
/// `keep_alive_mix`, on all when `keep_alive`) and returns what each client measured.
pub fn drive(port: u16, paths: Vec<String>, clients: usize, keep_alive: bool, keep_alive_mix: bool) -> Vec<Exchange> {
    let queue = Arc::new(Mutex::new(paths.into_iter().rev().collect::<Vec<_>>()));
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let queue = Arc::clone(&queue);
            let ka = keep_alive || (keep_alive_mix && c % 2 == 0);
            thread::spawn(move || {
                client::measure_precisely();
                let mut client = Client::new(port, ka);
                let mut done = Vec::new();
                loop {
                    let Some(path) = queue.lock().unwrap().pop() else { break };
                    done.push(client.request("GET", &path).unwrap_or_else(|e| panic!("GET {path}: {e}")));
                }
                done
            })
        })
        .collect();
    handles.into_iter().flat_map(|h| h.join().expect("client thread")).collect()
}

/// `n` requests of every kind a server answers: sleeps of `delays_ms` in turn, with a 404 from the
/// router, a 500 and a 404 from the app every 20; each path unique (`tag` and its number).
pub fn mixed_paths(n: usize, tag: &str, delays_ms: &[u32]) -> Vec<String> {
    (0..n)
        .map(|i| match i % 20 {
            7 => format!("/nope/{tag}{i}"),
            13 => format!("/fail/{tag}{i}"),
            17 => format!("/status/404/{tag}{i}"),
            _ => format!("/sleep/{}/{tag}{i}", delays_ms[i % delays_ms.len()]),
        })
        .collect()
}

pub fn requests(lines: &[Line]) -> Vec<&Value> {
    lines.iter().filter(|l| l.ty() == "request").map(|l| &l.json).collect()
}

pub fn summary(lines: &[Line]) -> &Value {
    &lines.iter().find(|l| l.ty() == "summary").expect("a summary line").json
}

/// Every exchange is reported exactly once, nothing else is, and each report matches the
/// client's ground truth: method, path, status, serving thread, and a duration within
/// max(1 ms, 2%) of the client's and never above it.
pub fn check_against_client(exchanges: &[Exchange], lines: &[Line], check_tid: bool) {
    check_against_client_with(exchanges, lines, check_tid, |_| 0.0);
}

/// [`check_against_client`] where something between the client and the server (a proxy) took
/// `between(exchange)` ms of what the client measured, as that proxy measured it.
pub fn check_against_client_with(exchanges: &[Exchange], lines: &[Line], check_tid: bool, between: impl Fn(&Exchange) -> f64) {
    let reqs = requests(lines);
    let mut by_path: HashMap<&str, Vec<&Value>> = HashMap::new();
    for r in &reqs {
        by_path.entry(r["path"].as_str().expect("path")).or_default().push(r);
    }
    assert_eq!(reqs.len(), exchanges.len(), "reported {} requests for {} sent", reqs.len(), exchanges.len());
    let mut worst_ms: f64 = 0.0;
    let mut excess_ms: f64 = 0.0;
    for ex in exchanges {
        let got = by_path.get(ex.path.as_str()).unwrap_or_else(|| panic!("{} was not reported", ex.path));
        assert_eq!(got.len(), 1, "{} reported {} times", ex.path, got.len());
        let r = got[0];
        assert_eq!(r["method"], ex.method.as_str(), "{}", ex.path);
        assert_eq!(r["status"], ex.status, "{}: {r}", ex.path);
        if check_tid {
            assert_eq!(r["tid"].as_u64(), ex.server_tid.map(u64::from), "{}: thread: {r}", ex.path);
        }
        let client_ms = ex.duration_ms();
        let ours = r["duration_ms"].as_f64().expect("duration_ms");
        // Never above the client's time, up to the server's own syscall return: on loopback the
        // last byte reaches the client while the server's write() is still returning (the
        // softirq that delivers it runs first), and a real-time client can read it a few µs
        // before that return is stamped: when it runs on the writer's CPU it preempts the write
        // and stamps its own time first. Seen up to 8 µs here and 13 µs on a slower CI machine;
        // 50 µs bounds it and still catches any real excess (keep-alive idle time, a previous
        // request's tail: milliseconds). duration_ms is printed to the µs. The real-time client
        // that preempts the writer then keeps its CPU while it goes on (its next request), and
        // the write returns only when the writer runs again: time the server's thread spent
        // runnable, which its breakdown holds. (Two excesses of 80 and 240 µs were seen, both
        // while workers were being recycled on two CPUs, before this allowance; the message
        // prints the runnable time so a further one shows whether it is this.) And on loopback
        // the write itself delivers the bytes, in softirq work done inside the syscall for
        // whatever else is queued: a 235-byte response's sendto once took 2.5 ms on the CPU, and
        // the client had read the bytes 0.29 ms before it returned. The time the request spent
        // in its writes bounds that.
        let runnable = r["breakdown_ms"]["runqueue"].as_f64().unwrap_or(0.0);
        let writing: f64 = r["syscalls"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| ["write", "writev", "sendto", "sendmsg", "sendfile64", "pwrite64", "pwritev"].contains(&c["name"].as_str().unwrap_or("")))
            .filter_map(|c| c["ms"].as_f64())
            .sum();
        assert!(
            ours <= client_ms + 0.050 + runnable + writing,
            "{}: {ours} ms reported, above the client's {client_ms:.3} ms (the server's thread waited {runnable} ms for a CPU, spent {writing} ms in writes): {r}",
            ex.path
        );
        // Hypervisor steal while the client waited is time it saw pass that no one ran, and the
        // client's own wait for a CPU (6 clients on 2 vCPUs) is time after the server's last
        // write. The client's time also holds the wait of its bytes before the server read them
        // (gthread's poller handing a keep-alive connection to a pool thread): `queue_ms`.
        // What is left is the loopback delivery and the client's wakeup, which schedstat does
        // not count (it starts at the wakeup): seen up to 1.2 ms on this 2-vCPU VM under the
        // suites' load, hence 2 ms. Under more load the kernel defers that delivery to its
        // softirq threads, which wait behind the real-time clients: their time in the window
        // is added (seen: 3.2 ms unexplained on one request of a CI run).
        let tolerance = (client_ms * 0.02).max(2.0) + ex.stolen_ms + ex.client_runq_ms + ex.softirq_ms + between(ex);
        let queue = r["queue_ms"].as_f64().unwrap_or(0.0);
        assert!(
            client_ms - ours - queue <= tolerance,
            "{}: {ours} ms reported (queued {queue} ms before), client measured {client_ms:.3} ms (it waited {:.3} ms for a CPU, softirq threads {:.3} ms): {r}",
            ex.path,
            ex.client_runq_ms,
            ex.softirq_ms
        );
        worst_ms = worst_ms.max(client_ms - ours - queue);
        excess_ms = excess_ms.max(ours - client_ms);
    }
    eprintln!("{} requests matched; largest shortfall against the client: {worst_ms:.3} ms; largest excess: {excess_ms:.3} ms", exchanges.len());
    let s = summary(lines);
    assert_eq!(s["requests"], exchanges.len(), "summary: {s}");
    assert_eq!(s["dropped_events"], 0, "summary: {s}");
}
