//! The heaviest query shapes across routes: what the summary's `query_shapes` and `top`'s query
//! view show. A shape's executions from every request are added up, with the routes that ran it.
use std::{collections::HashMap, sync::Arc};

use serde::Serialize;

use crate::sql::{Statement, stats::ShapeUse};

/// Shapes followed across the run: an app has tens to a few hundred; beyond this, executions
/// of new shapes are counted in `other_shapes`, not itemised.
const MAX_SHAPES: usize = 4096;
/// Routes remembered per shape (the first ones seen; later ones are counted together).
const MAX_ROUTES: usize = 64;
/// Routes listed per shape in a row.
const ROUTES_LISTED: usize = 3;

#[derive(Debug)]
struct ShapeStats {
    statement: Arc<Statement>,
    count: u64,
    time_ns: u64,
    max_ns: u64,
    errors: u64,
    /// Requests that ran it, and those where it ran as an N+1 pattern.
    requests: u64,
    n_plus_one: u64,
    /// By "METHOD route": executions and time.
    routes: HashMap<String, (u64, u64)>,
    /// Time of executions from routes beyond [`MAX_ROUTES`].
    other_routes_ns: u64,
}

#[derive(Debug, Default)]
pub struct Shapes {
    by_fingerprint: HashMap<u64, ShapeStats>,
    /// Executions and time of shapes beyond [`MAX_SHAPES`].
    other_count: u64,
    other_ns: u64,
}

/// A route's part of a shape.
#[derive(Serialize)]
pub struct ShapeRoute {
    pub route: String,
    pub count: u64,
    pub time_ms: f64,
}

/// A shape in the summary, over all requests.
#[derive(Serialize)]
pub struct ShapeRow {
    pub shape: String,
    pub fingerprint: String,
    pub summary: String,
    pub count: u64,
    pub time_ms: f64,
    pub mean_ms: f64,
    pub max_ms: f64,
    /// Of all queries' time.
    pub share: f64,
    pub requests: u64,
    /// Requests where it ran as an N+1 pattern.
    pub n_plus_one: u64,
    pub errors: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// The routes that spent most time in it.
    pub routes: Vec<ShapeRoute>,
}

fn ms(ns: u64) -> f64 {
    (ns as f64 / 1e3).round() / 1e3
}

impl Shapes {
    /// The shapes one request (of `route`, "METHOD route") ran.
    pub fn record<'a>(&mut self, route: &str, used: impl Iterator<Item = ShapeUse<'a>>) {
        for u in used {
            let len = self.by_fingerprint.len();
            let s = match self.by_fingerprint.get_mut(&u.statement.fingerprint) {
                Some(s) => s,
                None if len < MAX_SHAPES => self.by_fingerprint.entry(u.statement.fingerprint).or_insert_with(|| ShapeStats {
                    statement: Arc::clone(u.statement),
                    count: 0,
                    time_ns: 0,
                    max_ns: 0,
                    errors: 0,
                    requests: 0,
                    n_plus_one: 0,
                    routes: HashMap::new(),
                    other_routes_ns: 0,
                }),
                None => {
                    self.other_count += u.count;
                    self.other_ns += u.time_ns;
                    continue;
                }
            };
            s.count += u.count;
            s.time_ns += u.time_ns;
            s.max_ns = s.max_ns.max(u.max_ns);
            s.errors += u.errors;
            s.requests += 1;
            s.n_plus_one += u64::from(u.n_plus_one);
            let routes = s.routes.len();
            match s.routes.get_mut(route) {
                Some(r) => *r = (r.0 + u.count, r.1 + u.time_ns),
                None if routes < MAX_ROUTES => {
                    s.routes.insert(route.to_string(), (u.count, u.time_ns));
                }
                None => s.other_routes_ns += u.time_ns,
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_fingerprint.is_empty()
    }

    /// The `limit` shapes that took the most time, heaviest first.
    pub fn rows(&self, limit: usize) -> Vec<ShapeRow> {
        let all_ns: u64 = self.by_fingerprint.values().map(|s| s.time_ns).sum::<u64>() + self.other_ns;
        let mut shapes: Vec<&ShapeStats> = self.by_fingerprint.values().collect();
        shapes.sort_by(|a, b| b.time_ns.cmp(&a.time_ns).then(b.count.cmp(&a.count)).then_with(|| a.statement.shape.cmp(&b.statement.shape)));
        shapes
            .into_iter()
            .take(limit)
            .map(|s| {
                let mut routes: Vec<(&String, &(u64, u64))> = s.routes.iter().collect();
                routes.sort_by(|a, b| b.1.1.cmp(&a.1.1).then_with(|| a.0.cmp(b.0)));
                ShapeRow {
                    shape: s.statement.shape.clone(),
                    fingerprint: format!("{:016x}", s.statement.fingerprint),
                    summary: s.statement.summary.clone(),
                    count: s.count,
                    time_ms: ms(s.time_ns),
                    mean_ms: ms(s.time_ns / s.count.max(1)),
                    max_ms: ms(s.max_ns),
                    share: if all_ns == 0 { 0.0 } else { (s.time_ns as f64 / all_ns as f64 * 1e4).round() / 1e4 },
                    requests: s.requests,
                    n_plus_one: s.n_plus_one,
                    errors: s.errors,
                    truncated: s.statement.truncated,
                    routes: routes
                        .into_iter()
                        .take(ROUTES_LISTED)
                        .map(|(route, &(count, ns))| ShapeRoute { route: route.clone(), count, time_ms: ms(ns) })
                        .collect(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::{Dialect, InstanceKey, statement};

    fn used(st: &Arc<Statement>, count: u64, time_ns: u64, n_plus_one: bool) -> ShapeUse<'_> {
        ShapeUse { statement: st, count, time_ns, max_ns: time_ns / count.max(1), errors: 0, n_plus_one }
    }

    #[test]
    fn adds_up_shapes_across_requests_and_routes() {
        let key = InstanceKey::default();
        let lookup = Arc::new(statement(b"SELECT name FROM customers WHERE id = 7", false, Dialect::Postgres, &key, false));
        let list = Arc::new(statement(b"SELECT id FROM orders ORDER BY id DESC LIMIT 20", false, Dialect::Postgres, &key, false));
        let mut s = Shapes::default();
        for _ in 0..3 {
            s.record("GET /orders/{id}", [used(&lookup, 20, 4_000_000, true), used(&list, 1, 500_000, false)].into_iter());
        }
        s.record("GET /customer/{id}", [used(&lookup, 1, 200_000, false)].into_iter());
        let rows = s.rows(10);
        assert_eq!(rows.len(), 2);
        let top = &rows[0];
        assert_eq!(top.shape, "SELECT name FROM customers WHERE id = ?");
        assert_eq!((top.count, top.requests, top.n_plus_one), (61, 4, 3));
        assert_eq!(top.time_ms, 12.2);
        assert_eq!(top.routes[0].route, "GET /orders/{id}");
        assert_eq!((top.routes[0].count, top.routes[1].count), (60, 1));
        assert_eq!(top.share, (12.2 / 13.7 * 1e4_f64).round() / 1e4);
        assert_eq!(rows[1].count, 3);
        assert_eq!(s.rows(1).len(), 1);
    }
}
