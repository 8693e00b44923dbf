//! SQL seen on the wire: statements made reportable (their literals replaced, a stable
//! fingerprint, a short summary) and, per request, what its queries cost (`stats`).
pub mod activity;
pub mod normalize;
pub mod stats;
pub mod waits;

use std::hash::{BuildHasher, RandomState};

pub use normalize::Dialect;
use serde::{Deserialize, Serialize};

/// A statement as introspect keeps it: its shape, never its literals (unless the user asked for
/// them with `--sql-literals`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    /// The text with every literal replaced by `?`, lists collapsed, whitespace collapsed.
    pub shape: String,
    /// A stable 64-bit hash of the shape: the same statement with other values has the same one.
    pub fingerprint: u64,
    /// OpenTelemetry-style summary: the operation and the tables (`SELECT orders`).
    pub summary: String,
    /// The kernel's bounded copy ended before the statement did.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// A hash of the text as sent, values included, keyed with a secret drawn for each run: equal
    /// for exact repeats (the same values), useless for guessing the values.
    #[serde(default)]
    pub instance: u64,
    /// The text as captured, literals included: only with `--sql-literals`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// The key of [`Statement::instance`] hashes, one per run.
#[derive(Clone, Default)]
pub struct InstanceKey(RandomState);

impl InstanceKey {
    pub fn hash(&self, parts: &[&[u8]]) -> u64 {
        self.0.hash_one(parts)
    }
}

/// A statement from the bytes a client sent to a server of `dialect` (`cut`: the copy ended
/// before the statement did).
pub fn statement(text: &[u8], cut: bool, dialect: Dialect, key: &InstanceKey, literals: bool) -> Statement {
    let n = normalize::normalize_as(text, cut, dialect);
    Statement {
        shape: n.shape,
        fingerprint: n.fingerprint,
        summary: n.summary,
        truncated: n.truncated,
        instance: key.hash(&[text]),
        text: literals.then(|| String::from_utf8_lossy(text).into_owned()),
    }
}

/// When repeated statements of one request are an N+1 pattern (`--n-plus-one COUNT[,MIN]`): at
/// least `count` executions of one shape with different values, taking at least `min_total_ns`
/// together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NPlusOne {
    pub count: u32,
    pub min_total_ns: u64,
}

impl Default for NPlusOne {
    fn default() -> Self {
        // The ORM pattern is flagged whatever it costs today: on a local database 20 lookups take
        // a few milliseconds, on a remote one twenty round trips.
        Self { count: 5, min_total_ns: 0 }
    }
}

impl std::str::FromStr for NPlusOne {
    type Err = String;

    /// `COUNT` or `COUNT,MIN_TOTAL` (`10`, `10,50ms`).
    fn from_str(s: &str) -> Result<Self, String> {
        let (count, min) = match s.split_once(',') {
            Some((c, m)) => (c, Some(m)),
            None => (s, None),
        };
        let count: u32 = count.trim().parse().map_err(|_| format!("{count:?} is not a count of queries"))?;
        if count < 2 {
            return Err("an N+1 pattern takes at least 2 queries".into());
        }
        let min_total_ns = match min {
            Some(m) => humantime::parse_duration(m.trim()).map_err(|e| format!("{m:?}: {e}"))?.as_nanos() as u64,
            None => 0,
        };
        Ok(Self { count, min_total_ns })
    }
}
