//! The hot-function table, like pg_stat_statements for code: per Python function (name, file,
//! line of definition), the CPU its frames were sampled in over all requests and per route,
//! from the requests' all-traffic profiles.
use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::stacks::{FrameKind, profile::ProfileEntry};

/// How many functions the table lists, and routes per function.
pub const HOT_ROWS: usize = 50;
const ROUTES_PER_ROW: usize = 10;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct FnKey {
    function: String,
    file: String,
    line: Option<u32>,
}

/// A function as named by a frame (function, file, line of definition), borrowed.
type FnRef<'a> = (&'a str, &'a str, Option<u32>);

#[derive(Default)]
struct FnAcc {
    self_ms: f64,
    total_ms: f64,
    off_ms: f64,
    requests: u64,
    routes: HashMap<(String, String), f64>,
}

#[derive(Default)]
pub struct Hot {
    fns: foldhash::HashMap<FnKey, FnAcc>,
    /// On-CPU time sampled in requests, all functions together.
    cpu_ms: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HotRoute {
    pub method: String,
    pub route: String,
    pub total_cpu_ms: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HotRow {
    pub function: String,
    pub file: String,
    /// The line the function is defined on.
    pub line: Option<u32>,
    /// On-CPU time with this function innermost among the Python frames (the native and kernel
    /// frames it called count as its own).
    pub self_cpu_ms: f64,
    /// On-CPU time with this function anywhere on the stack.
    pub total_cpu_ms: f64,
    /// Off-CPU time with this function anywhere on the stack (sampled waits, scaled).
    pub off_cpu_ms: f64,
    /// Requests it was seen in.
    pub requests: u64,
    /// `total_cpu_ms` over all the on-CPU time sampled in requests.
    pub share_cpu: f64,
    /// Where its CPU went, heaviest route first.
    pub routes: Vec<HotRoute>,
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

impl Hot {
    /// One request's all-traffic profile.
    pub fn add(&mut self, method: &str, route: &str, profile: &[ProfileEntry]) {
        // This request's functions first, by borrowed name (no allocation per frame), then
        // one update per function.
        let mut mine: foldhash::HashMap<FnRef<'_>, (f64, f64, f64)> = foldhash::HashMap::default();
        let mut in_stack: HashSet<FnRef<'_>, foldhash::fast::RandomState> = HashSet::default();
        for e in profile {
            self.cpu_ms += e.on_cpu_ms;
            in_stack.clear();
            let python = e.stack.iter().filter(|f| f.kind == FrameKind::Python);
            for (i, f) in python.enumerate() {
                let key = (f.function.as_str(), f.file.as_str(), f.def_line);
                // Recursion: a function counts once per stack.
                if !in_stack.insert(key) {
                    continue;
                }
                let acc = mine.entry(key).or_default();
                if i == 0 {
                    acc.0 += e.on_cpu_ms;
                }
                acc.1 += e.on_cpu_ms;
                acc.2 += e.off_cpu_ms;
            }
        }
        for ((function, file, line), (self_ms, total_ms, off_ms)) in mine {
            let acc = self.fns.entry(FnKey { function: function.to_string(), file: file.to_string(), line }).or_default();
            acc.self_ms += self_ms;
            acc.total_ms += total_ms;
            acc.off_ms += off_ms;
            acc.requests += 1;
            if total_ms > 0.0 {
                *acc.routes.entry((method.to_string(), route.to_string())).or_default() += total_ms;
            }
        }
    }

    /// The heaviest functions by their own CPU time (then total, then off-CPU time).
    pub fn rows(&self, limit: usize) -> Vec<HotRow> {
        let mut rows: Vec<HotRow> = self
            .fns
            .iter()
            .map(|(k, a)| {
                let mut routes: Vec<HotRoute> = a
                    .routes
                    .iter()
                    .map(|((method, route), ms)| HotRoute { method: method.clone(), route: route.clone(), total_cpu_ms: round3(*ms) })
                    .collect();
                routes.sort_by(|x, y| y.total_cpu_ms.total_cmp(&x.total_cpu_ms).then_with(|| (&x.method, &x.route).cmp(&(&y.method, &y.route))));
                routes.truncate(ROUTES_PER_ROW);
                HotRow {
                    function: k.function.clone(),
                    file: k.file.clone(),
                    line: k.line,
                    self_cpu_ms: round3(a.self_ms),
                    total_cpu_ms: round3(a.total_ms),
                    off_cpu_ms: round3(a.off_ms),
                    requests: a.requests,
                    share_cpu: if self.cpu_ms > 0.0 { (a.total_ms / self.cpu_ms * 1e4).round() / 1e4 } else { 0.0 },
                    routes,
                }
            })
            .collect();
        rows.sort_by(|x, y| {
            y.self_cpu_ms
                .total_cmp(&x.self_cpu_ms)
                .then(y.total_cpu_ms.total_cmp(&x.total_cpu_ms))
                .then(y.off_cpu_ms.total_cmp(&x.off_cpu_ms))
                .then_with(|| (&x.function, &x.file, x.line).cmp(&(&y.function, &y.file, y.line)))
        });
        rows.truncate(limit);
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stacks::Frame;

    fn py(f: &str, def: u32) -> Frame {
        Frame { function: f.into(), file: "app.py".into(), line: Some(def + 2), kind: FrameKind::Python, def_line: Some(def) }
    }

    fn entry(stack: Vec<Frame>, on: f64, off: f64) -> ProfileEntry {
        ProfileEntry { stack, on_cpu_ms: on, off_cpu_ms: off, samples: 1 }
    }

    #[test]
    fn self_total_requests_and_routes() {
        let native = Frame { function: "PyNumber_Add".into(), file: String::new(), line: None, kind: FrameKind::Native, def_line: None };
        let mut hot = Hot::default();
        // Innermost first: burn called by view; a native frame under burn is burn's own.
        let burning = entry(vec![native, py("burn", 10), py("view", 20)], 80.0, 0.0);
        let waiting = entry(vec![py("fetch", 30), py("view", 20)], 0.0, 50.0);
        hot.add("GET", "/cpu", &[burning.clone(), waiting]);
        hot.add("GET", "/cpu", std::slice::from_ref(&burning));
        // Recursion counts once per stack.
        hot.add("POST", "/other", &[entry(vec![py("view", 20), py("view", 20)], 20.0, 0.0)]);
        let rows = hot.rows(HOT_ROWS);
        let burn = &rows[0];
        assert_eq!((burn.function.as_str(), burn.line, burn.self_cpu_ms, burn.total_cpu_ms, burn.requests), ("burn", Some(10), 160.0, 160.0, 2));
        assert_eq!(burn.share_cpu, 0.8889);
        let view = rows.iter().find(|r| r.function == "view").unwrap();
        assert_eq!((view.self_cpu_ms, view.total_cpu_ms, view.off_cpu_ms, view.requests), (20.0, 180.0, 50.0, 3));
        assert_eq!(
            view.routes,
            vec![
                HotRoute { method: "GET".into(), route: "/cpu".into(), total_cpu_ms: 160.0 },
                HotRoute { method: "POST".into(), route: "/other".into(), total_cpu_ms: 20.0 }
            ]
        );
        let fetch = rows.iter().find(|r| r.function == "fetch").unwrap();
        assert_eq!((fetch.total_cpu_ms, fetch.off_cpu_ms, fetch.share_cpu), (0.0, 50.0, 0.0));
        assert_eq!(hot.rows(1).len(), 1);
    }
}
