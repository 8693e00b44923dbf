//! What one request's queries cost: counted as they complete ([`Tally`]), then reported with
//! the heaviest shapes, N+1 patterns and exact duplicates ([`Report`]).
use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use serde::Serialize;

use super::{
    NPlusOne, Statement,
    waits::{DbWait, DbWaitReport},
};
use crate::{
    assemble::{
        EndReason, Query,
        backends::{Holder, QueryWait},
    },
    proto::Tx,
    stacks::Frame,
};

/// Distinct value sets remembered per shape (an N+1 loop over a big table runs one shape with
/// many thousands): enough to tell a pattern, bounded in memory.
const MAX_INSTANCES: usize = 4096;
/// Shapes kept per request; executions of shapes beyond it are counted, not itemised.
const MAX_SHAPES: usize = 512;
/// Shapes listed in a report's `top`.
const TOP: usize = 5;
/// Lock holders named per request.
const MAX_HOLDERS: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Shape {
    statement: Arc<Statement>,
    count: u64,
    time_ns: u64,
    max_ns: u64,
    /// Executions by value set (`Statement::instance`).
    instances: HashMap<u64, u32>,
    /// Failed executions by error code.
    errors: BTreeMap<String, u64>,
}

impl Shape {
    /// Run with enough different value sets, costing enough together, to be an N+1 pattern.
    fn is_n_plus_one(&self, rule: NPlusOne) -> bool {
        self.instances.len() as u64 >= u64::from(rule.count) && self.time_ns >= rule.min_total_ns
    }
}

/// How a request's last query ended, and on which connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Last {
    pub statement: Option<Arc<Statement>>,
    pub end: EndReason,
    pub error: Option<String>,
}

/// A request's queries, counted as they complete.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub queries: u64,
    pub time_ns: u64,
    /// Of `time_ns`, from each response's first byte to its end (the rest is the server's time
    /// and the network's).
    pub transfer_ns: u64,
    pub errors: u64,
    /// Executions of statements prepared before the watch began (their text was not seen).
    pub unknown: u64,
    shapes: Vec<Shape>,
    index: HashMap<u64, usize>,
    /// Executions of shapes beyond [`MAX_SHAPES`].
    pub overflow: u64,
    /// Each connection's transaction state after the request's last round trip on it.
    tx: Vec<(i32, Tx)>,
    pub last: Option<Last>,
    /// Its queries' server time, when their backends are followed (a PostgreSQL server on
    /// this host).
    pub db_wait: Option<DbWait>,
    /// Who held the locks its queries waited for.
    pub holders: Vec<Holder>,
    /// Where in the app each shape was asked from, when its thread's stacks were taken.
    frames: HashMap<u64, Frame>,
}

impl Tally {
    /// A query that ended.
    pub fn add(&mut self, q: &Query) {
        let fd = q.fd;
        let ns = q.end_ns.saturating_sub(q.start_ns) / u64::from(q.shared_by.max(1)) + q.extra_ns;
        self.queries += 1;
        self.time_ns += ns;
        self.transfer_ns += q.first_byte_ns.map_or(0, |f| q.end_ns.saturating_sub(f)) / u64::from(q.shared_by.max(1));
        self.errors += u64::from(q.error.is_some());
        if let Some(tx) = q.tx_after {
            match self.tx.iter_mut().find(|(f, _)| *f == fd) {
                Some(slot) => slot.1 = tx,
                None => self.tx.push((fd, tx)),
            }
        }
        self.last = Some(Last { statement: q.statement.clone(), end: q.end, error: q.error.clone() });
        let Some(st) = &q.statement else {
            self.unknown += 1;
            return;
        };
        let i = match self.index.get(&st.fingerprint) {
            Some(&i) => i,
            None if self.shapes.len() < MAX_SHAPES => {
                self.shapes.push(Shape {
                    statement: Arc::clone(st),
                    count: 0,
                    time_ns: 0,
                    max_ns: 0,
                    instances: HashMap::new(),
                    errors: BTreeMap::new(),
                });
                self.index.insert(st.fingerprint, self.shapes.len() - 1);
                self.shapes.len() - 1
            }
            None => {
                self.overflow += 1;
                return;
            }
        };
        let s = &mut self.shapes[i];
        s.count += 1;
        s.time_ns += ns;
        s.max_ns = s.max_ns.max(ns);
        if let Some(code) = &q.error {
            *s.errors.entry(code.clone()).or_default() += 1;
        }
        let len = s.instances.len();
        match s.instances.get_mut(&q.instance) {
            Some(n) => *n += 1,
            None if len < MAX_INSTANCES => {
                s.instances.insert(q.instance, 1);
            }
            None => {}
        }
    }

    /// What a query's backend did meanwhile (its share, when `shared_by` queries were pipelined
    /// in one round trip).
    pub fn add_wait(&mut self, w: &QueryWait, shared_by: u32) {
        let n = u64::from(shared_by.max(1));
        let mut share = w.wait.clone();
        for v in [&mut share.lock_ns, &mut share.io_ns, &mut share.cpu_ns, &mut share.other_ns].into_iter().chain(share.events.values_mut()) {
            *v /= n;
        }
        self.db_wait.get_or_insert_default().add(&share);
        for h in &w.holders {
            if !self.holders.contains(h) && self.holders.len() < MAX_HOLDERS {
                self.holders.push(h.clone());
            }
        }
    }

    /// A transaction is open (or failed, waiting for its rollback) on a connection the request
    /// used, as of its last round trip there.
    pub fn transaction_open(&self) -> bool {
        self.tx.iter().any(|(_, tx)| *tx != Tx::Idle)
    }

    /// A query of shape `fingerprint` was waited on in `frame` (the first one seen is kept).
    pub fn frame_of(&mut self, fingerprint: u64, frame: &Frame) {
        if self.frames.len() < MAX_SHAPES && !self.frames.contains_key(&fingerprint) {
            self.frames.insert(fingerprint, frame.clone());
        }
    }

    /// Whether some shape ran as an N+1 pattern under `rule`.
    pub fn has_n_plus_one(&self, rule: NPlusOne) -> bool {
        self.shapes.iter().any(|s| s.is_n_plus_one(rule))
    }

    /// Each shape the request ran, with what it cost there (for the summary's totals across
    /// requests).
    pub fn shapes(&self, rule: NPlusOne) -> impl Iterator<Item = ShapeUse<'_>> {
        self.shapes.iter().map(move |s| ShapeUse {
            statement: &s.statement,
            count: s.count,
            time_ns: s.time_ns,
            max_ns: s.max_ns,
            errors: s.errors.values().sum(),
            n_plus_one: s.is_n_plus_one(rule),
        })
    }

    pub fn report(&self, rule: NPlusOne) -> Report {
        let ms = |ns: u64| (ns as f64 / 1e3).round() / 1e3;
        let entry = |s: &Shape| ShapeLine {
            shape: s.statement.shape.clone(),
            fingerprint: format!("{:016x}", s.statement.fingerprint),
            summary: s.statement.summary.clone(),
            count: s.count,
            time_ms: ms(s.time_ns),
            max_ms: ms(s.max_ns),
            truncated: s.statement.truncated,
            text: s.statement.text.clone(),
        };
        let mut by_time: Vec<&Shape> = self.shapes.iter().collect();
        by_time.sort_by(|a, b| b.time_ns.cmp(&a.time_ns).then(b.count.cmp(&a.count)));
        let n_plus_one = by_time
            .iter()
            .filter(|s| s.is_n_plus_one(rule))
            .map(|s| Pattern {
                distinct: s.instances.len() as u64,
                frame: self.frames.get(&s.statement.fingerprint).map(|f| FrameLine {
                    function: f.function.clone(),
                    file: f.file.clone(),
                    line: f.line,
                }),
                ..Pattern::of(entry(s))
            })
            .collect();
        let duplicates = by_time
            .iter()
            .filter_map(|s| {
                let repeated: u64 = s.instances.values().filter(|&&n| n > 1).map(|&n| u64::from(n)).sum();
                (repeated > 0).then(|| Duplicate {
                    shape: s.statement.shape.clone(),
                    fingerprint: format!("{:016x}", s.statement.fingerprint),
                    count: repeated,
                })
            })
            .collect();
        let failed = by_time
            .iter()
            .flat_map(|s| {
                s.errors.iter().map(|(code, n)| Failed {
                    shape: s.statement.shape.clone(),
                    fingerprint: format!("{:016x}", s.statement.fingerprint),
                    code: code.clone(),
                    count: *n,
                })
            })
            .collect();
        Report {
            queries: self.queries,
            time_ms: ms(self.time_ns),
            transfer_ms: ms(self.transfer_ns),
            errors: self.errors,
            unknown_statements: self.unknown,
            top: by_time.iter().take(TOP).map(|s| entry(s)).collect(),
            n_plus_one,
            duplicates,
            failed,
            transaction_open_at_end: self.transaction_open(),
            db_wait_ms: self.db_wait.as_ref().map(DbWait::report),
            blocked_by: self.holders.clone(),
        }
    }
}

/// One shape's executions in one request.
pub struct ShapeUse<'a> {
    pub statement: &'a Arc<Statement>,
    pub count: u64,
    pub time_ns: u64,
    pub max_ns: u64,
    pub errors: u64,
    /// It ran as an N+1 pattern there.
    pub n_plus_one: bool,
}

/// One shape of statement in a report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ShapeLine {
    pub shape: String,
    /// 16 hex digits (a JSON number would lose bits in JavaScript).
    pub fingerprint: String,
    pub summary: String,
    pub count: u64,
    pub time_ms: f64,
    pub max_ms: f64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// With `--sql-literals` only: one execution's text, values included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// An N+1 pattern: one shape run with many different values.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Pattern {
    pub shape: String,
    pub fingerprint: String,
    pub summary: String,
    pub count: u64,
    /// Different value sets among them.
    pub distinct: u64,
    pub time_ms: f64,
    /// The innermost frame of the application's own code that issued them, when the request's
    /// stacks were taken (it crossed the threshold while they ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frame: Option<FrameLine>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FrameLine {
    pub function: String,
    pub file: String,
    pub line: Option<u32>,
}

impl Pattern {
    fn of(s: ShapeLine) -> Self {
        Self { shape: s.shape, fingerprint: s.fingerprint, summary: s.summary, count: s.count, distinct: 0, time_ms: s.time_ms, frame: None }
    }
}

/// Executions that repeated another one exactly (same shape, same values).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Duplicate {
    pub shape: String,
    pub fingerprint: String,
    pub count: u64,
}

/// Executions of one shape that failed with one error code.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Failed {
    pub shape: String,
    pub fingerprint: String,
    /// PostgreSQL's SQLSTATE (`23505`), MySQL's error number (`1062`).
    pub code: String,
    pub count: u64,
}

/// A request's `sql`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub queries: u64,
    pub time_ms: f64,
    pub transfer_ms: f64,
    pub errors: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub unknown_statements: u64,
    pub top: Vec<ShapeLine>,
    pub n_plus_one: Vec<Pattern>,
    pub duplicates: Vec<Duplicate>,
    pub failed: Vec<Failed>,
    pub transaction_open_at_end: bool,
    /// The backends' time during its queries (PostgreSQL on this host).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_wait_ms: Option<DbWaitReport>,
    /// Who held the locks its queries waited for (written by the output, which knows the
    /// wall clock for their start times).
    #[serde(skip)]
    pub blocked_by: Vec<Holder>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(shape: &str, fp: u64, instance: u64) -> Arc<Statement> {
        Arc::new(Statement { shape: shape.into(), fingerprint: fp, summary: "SELECT t".into(), truncated: false, instance, text: None })
    }

    fn q(s: Arc<Statement>, start: u64, end: u64, tx: Tx) -> Query {
        Query {
            pid: 1,
            tid: 1,
            fd: 5,
            request_seq: Some(0),
            instance: s.instance,
            statement: Some(s),
            start_ns: start,
            first_byte_ns: Some(end - 10),
            end_ns: end,
            shared_by: 1,
            extra_ns: 0,
            error: None,
            rows: None,
            tx_after: Some(tx),
            end: EndReason::Complete,
        }
    }

    #[test]
    fn twenty_lookups_are_an_n_plus_one_and_four_are_not() {
        let mut t = Tally::default();
        t.add(&q(st("SELECT * FROM book", 1, 100), 0, 1_000_000, Tx::Idle));
        for i in 0..20 {
            t.add(&q(st("SELECT * FROM author WHERE id = ?", 2, 200 + i), 0, 100_000, Tx::Idle));
        }
        for i in 0..4 {
            t.add(&q(st("SELECT * FROM shelf WHERE id = ?", 3, 300 + i), 0, 100_000, Tx::Idle));
        }
        let r = t.report(NPlusOne::default());
        assert_eq!((r.queries, r.time_ms), (25, 3.4));
        assert_eq!(r.n_plus_one.len(), 1, "{r:?}");
        assert_eq!((r.n_plus_one[0].count, r.n_plus_one[0].distinct, r.n_plus_one[0].time_ms), (20, 20, 2.0));
        assert!(r.duplicates.is_empty());
        assert!(!r.transaction_open_at_end);
        // A bar that 2 ms does not reach.
        assert!(t.report(NPlusOne { count: 5, min_total_ns: 50_000_000 }).n_plus_one.is_empty());
    }

    #[test]
    fn exact_repeats_are_duplicates_not_n_plus_one() {
        let mut t = Tally::default();
        for _ in 0..6 {
            t.add(&q(st("SELECT * FROM author WHERE id = ?", 2, 7), 0, 100_000, Tx::InTransaction));
        }
        let r = t.report(NPlusOne::default());
        assert!(r.n_plus_one.is_empty(), "{r:?}");
        assert_eq!(r.duplicates, vec![Duplicate { shape: "SELECT * FROM author WHERE id = ?".into(), fingerprint: format!("{:016x}", 2), count: 6 }]);
        assert!(r.transaction_open_at_end);
    }
}
