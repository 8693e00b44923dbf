//! Per-route aggregates for the `summary` event.
use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::route;
use crate::{assemble::Request, kills::Reason};

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
}

#[derive(Default)]
pub struct Summary {
    /// By "METHOD route" (methods have no spaces), so a lookup needs no allocation.
    routes: HashMap<String, RouteStats>,
    /// The key being looked up, reused from request to request.
    key: String,
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

impl Summary {
    /// `cpu_ns`: the request's on-CPU time (from its breakdown); `killed`: why its worker was
    /// killed with it in flight; `interrupted`: `--interrupt-before` made it raise.
    pub fn record(&mut self, r: &Request, slow: bool, cpu_ns: u64, killed: Option<Reason>, interrupted: bool) {
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
