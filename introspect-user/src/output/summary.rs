//! Per-route aggregates for the `summary` event.
use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::{
    route,
    shapes::{ShapeRow, Shapes},
};
use crate::{
    assemble::Request,
    kills::Reason,
    sql::NPlusOne,
    stacks::{hot::Hot, profile::ProfileEntry},
};

/// Log-bucketed histogram of durations: 1% relative precision from 1 µs to ~3 h in a few
/// thousand counters, whatever the request count.
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    /// By bucket index (grown on demand: a few thousand at most).
    counts: Vec<u64>,
    total: u64,
}

const GROWTH: f64 = 1.01;
/// ln(GROWTH), spelled out so the bucket of a duration costs one logarithm, not two.
const LN_GROWTH: f64 = 0.009_950_330_853_168_092;

impl Histogram {
    pub fn record(&mut self, ns: u64) {
        let us = (ns as f64 / 1e3).max(1.0);
        let bucket = (us.ln() / LN_GROWTH).floor() as usize;
        if self.counts.len() <= bucket {
            self.counts.resize(bucket + 1, 0);
        }
        self.counts[bucket] += 1;
        self.total += 1;
    }

    /// The `q` quantile (0..=1) in milliseconds, as the geometric middle of its bucket.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (b, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let lo = GROWTH.powi(b as i32);
                return Some(lo * GROWTH.sqrt() / 1e3);
            }
        }
        None
    }
}

#[derive(Clone, Debug, Default)]
pub struct RouteStats {
    pub count: u64,
    pub slow: u64,
    pub errors_5xx: u64,
    pub no_status: u64,
    /// Its worker was killed with it in flight (a server timeout's kill, a crash, the OOM
    /// killer), by reason.
    pub killed: u64,
    pub killed_by: BTreeMap<&'static str, u64>,
    /// Interrupted before the server's kill (`--interrupt-before`).
    pub interrupted: u64,
    pub total_ns: u64,
    pub cpu_ns: u64,
    pub hist: Histogram,
    pub sql: Option<RouteSql>,
}

/// A route's queries, over its requests that made any.
#[derive(Clone, Debug, Default)]
pub struct RouteSql {
    pub requests: u64,
    /// Requests by their number of queries (exact: few distinct counts per route).
    pub per_request: BTreeMap<u64, u64>,
    pub queries: u64,
    pub time_ns: u64,
    /// Requests with an N+1 pattern.
    pub n_plus_one: u64,
    pub lock_ns: u64,
    /// Of those requests' time, in ns (the base of `db_share`).
    pub request_ns: u64,
}

impl RouteSql {
    fn quantile(&self, q: f64) -> u64 {
        let rank = ((q * self.requests as f64).ceil() as u64).clamp(1, self.requests.max(1));
        let mut seen = 0;
        for (&n, &count) in &self.per_request {
            seen += count;
            if seen >= rank {
                return n;
            }
        }
        0
    }
}

/// A route's `sql` in the summary.
#[derive(Serialize)]
pub struct RouteSqlRow {
    /// Its requests that ran queries.
    pub requests: u64,
    pub queries: u64,
    pub queries_p50: u64,
    pub queries_p99: u64,
    pub time_ms: f64,
    /// Of those requests' time, the part spent in their queries.
    pub db_share: f64,
    /// Requests with an N+1 pattern.
    pub n_plus_one: u64,
    /// Time their queries' backends waited for locks (PostgreSQL on this host).
    pub lock_wait_ms: f64,
}

#[derive(Serialize)]
pub struct EndpointRow {
    pub method: String,
    pub route: String,
    pub count: u64,
    pub slow: u64,
    pub errors_5xx: u64,
    pub no_status: u64,
    pub killed: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub killed_by: BTreeMap<&'static str, u64>,
    #[serde(skip_serializing_if = "is_zero")]
    pub interrupted: u64,
    pub total_ms: f64,
    /// This route's part of all requests' time.
    pub share_time: f64,
    /// ... and of their on-CPU time.
    pub share_cpu: f64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Its queries, when any of its requests ran some.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sql: Option<RouteSqlRow>,
}

#[derive(Default)]
pub struct Summary {
    /// By "METHOD route" (methods have no spaces), so a lookup needs no allocation.
    routes: HashMap<String, RouteStats>,
    /// The key being looked up, reused from request to request.
    key: String,
    /// Query shapes across routes.
    shapes: Shapes,
    /// Profiling all traffic: the hot-function table, and what was sampled outside requests.
    pub hot: Hot,
    pub no_request: Vec<ProfileEntry>,
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

impl Summary {
    /// `cpu_ns`: the request's on-CPU time (from its breakdown); `killed`: why its worker was
    /// killed with it in flight; `interrupted`: `--interrupt-before` made it raise.
    pub fn record(&mut self, r: &Request, slow: bool, cpu_ns: u64, killed: Option<Reason>, interrupted: bool, rule: NPlusOne) {
        self.key.clear();
        self.key.push_str(&r.method);
        self.key.push(' ');
        route::normalize_into(&r.path, &mut self.key);
        if !self.routes.contains_key(self.key.as_str()) {
            self.routes.insert(self.key.clone(), RouteStats::default());
        }
        let Some(s) = self.routes.get_mut(self.key.as_str()) else { return };
        s.count += 1;
        s.slow += u64::from(slow);
        s.errors_5xx += u64::from(r.status.is_some_and(|c| c >= 500));
        s.no_status += u64::from(r.status.is_none());
        s.interrupted += u64::from(interrupted);
        if let Some(reason) = killed {
            s.killed += 1;
            *s.killed_by.entry(reason.name()).or_default() += 1;
        }
        s.total_ns += r.duration_ns();
        s.cpu_ns += cpu_ns;
        s.hist.record(r.duration_ns());
        if let Some(t) = r.sql.as_deref().filter(|t| t.queries > 0) {
            let q = s.sql.get_or_insert_default();
            q.requests += 1;
            *q.per_request.entry(t.queries).or_default() += 1;
            q.queries += t.queries;
            q.time_ns += t.time_ns;
            q.n_plus_one += u64::from(t.has_n_plus_one(rule));
            q.lock_ns += t.db_wait.as_ref().map_or(0, |w| w.lock_ns);
            q.request_ns += r.duration_ns();
            self.shapes.record(&self.key, t.shapes(rule));
        }
    }

    /// A request's all-traffic profile, for the hot-function table.
    pub fn profile(&mut self, r: &Request, profile: &[ProfileEntry]) {
        if !profile.is_empty() {
            self.hot.add(&r.method, &route::normalize(&r.path), profile);
        }
    }

    /// The `limit` query shapes that took the most time across routes.
    pub fn query_shapes(&self, limit: usize) -> Vec<ShapeRow> {
        if self.shapes.is_empty() { Vec::new() } else { self.shapes.rows(limit) }
    }

    /// Routes ranked by total time consumed.
    pub fn rows(&self) -> Vec<EndpointRow> {
        let all_time: u64 = self.routes.values().map(|s| s.total_ns).sum();
        let all_cpu: u64 = self.routes.values().map(|s| s.cpu_ns).sum();
        let share = |part: u64, whole: u64| if whole == 0 { 0.0 } else { (part as f64 / whole as f64 * 1e4).round() / 1e4 };
        let mut rows: Vec<_> = self
            .routes
            .iter()
            .map(|(key, s)| {
                let (method, route) = key.split_once(' ').unwrap_or((key.as_str(), ""));
                (method, route, s)
            })
            .map(|(method, route, s)| EndpointRow {
                method: method.to_string(),
                route: route.to_string(),
                count: s.count,
                slow: s.slow,
                errors_5xx: s.errors_5xx,
                no_status: s.no_status,
                killed: s.killed,
                killed_by: s.killed_by.clone(),
                interrupted: s.interrupted,
                total_ms: round3(s.total_ns as f64 / 1e6),
                share_time: share(s.total_ns, all_time),
                share_cpu: share(s.cpu_ns, all_cpu),
                p50_ms: s.hist.quantile_ms(0.50).map(round3),
                p95_ms: s.hist.quantile_ms(0.95).map(round3),
                p99_ms: s.hist.quantile_ms(0.99).map(round3),
                sql: s.sql.as_ref().map(|q| RouteSqlRow {
                    requests: q.requests,
                    queries: q.queries,
                    queries_p50: q.quantile(0.50),
                    queries_p99: q.quantile(0.99),
                    time_ms: round3(q.time_ns as f64 / 1e6),
                    db_share: share(q.time_ns.min(q.request_ns), q.request_ns),
                    n_plus_one: q.n_plus_one,
                    lock_wait_ms: round3(q.lock_ns as f64 / 1e6),
                }),
            })
            .collect();
        rows.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms).then_with(|| a.route.cmp(&b.route)).then_with(|| a.method.cmp(&b.method)));
        rows
    }
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_within_one_percent() {
        let mut h = Histogram::default();
        for ms in 1..=1000u64 {
            h.record(ms * 1_000_000);
        }
        for (q, want) in [(0.5, 500.0), (0.95, 950.0), (0.99, 990.0)] {
            let got = h.quantile_ms(q).unwrap();
            assert!((got - want).abs() / want < 0.01, "q{q}: {got} vs {want}");
        }
        assert_eq!(Histogram::default().quantile_ms(0.5), None);
        assert_eq!(LN_GROWTH, GROWTH.ln());
    }
}
