//! `--pg-dsn`: a PostgreSQL server on another host, where its backends cannot be followed through
//! the scheduler. Every [`INTERVAL`] one query reads what each client session is doing from
//! `pg_stat_activity` (and, for sessions waiting on a lock, `pg_blocking_pids()`), and the
//! sessions are matched to the app's connections by their client address and port (the app's
//! side of the socket). Each sample stands for the interval before it: a lock wait is measured
//! to within one interval, and who held the lock comes from the blocking session's client.
use std::{net::IpAddr, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::clock;

/// How often the server is asked. One index-free scan of the server's shared process array per
/// sample (`pg_blocking_pids()` only for sessions waiting on a lock, as its documentation asks).
pub const INTERVAL: Duration = Duration::from_millis(10);

/// Set in the numbers of backends seen through `pg_stat_activity`, so they never meet the pids
/// of this host's backends (a remote server's pids are its own host's).
pub const REMOTE: u32 = 1 << 31;

/// One client session of the server at a sample.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Its backend's pid on the server, with [`REMOTE`] set.
    pub backend: u32,
    /// Running a statement (`state = 'active'`).
    pub active: bool,
    /// `wait_event_type` and `wait_event` (`Lock`, `transactionid`), when it waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_event: Option<String>,
    /// For a lock wait, the backends holding it up (with [`REMOTE`] set).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked_by: Vec<u32>,
}

/// A sample: when it was taken (monotonic ns, the middle of the query's round trip) and each
/// session with its client's address.
pub struct Sample {
    pub ts: u64,
    pub sessions: Vec<(Session, Option<(IpAddr, u16)>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ActivityError {
    #[error("--pg-dsn: {0}")]
    Dsn(String),
    #[error("--pg-dsn: connecting to the server: {}", with_cause(.0))]
    Connect(tokio_postgres::Error),
    #[error("--pg-dsn: reading pg_stat_activity: {} (the role needs pg_monitor or pg_read_all_stats)", with_cause(.0))]
    Query(tokio_postgres::Error),
}

/// The client's error with what caused it (its own text alone says only "error connecting").
fn with_cause(e: &tokio_postgres::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

const SQL: &str = "SELECT pid, host(client_addr), client_port, state = 'active', wait_event_type, wait_event, \
    CASE WHEN wait_event_type = 'Lock' THEN pg_blocking_pids(pid) END \
    FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()";

/// The server's port, for matching the app's sockets (5432 when the DSN does not say).
pub fn server_port(dsn: &str) -> Result<u16, ActivityError> {
    let config: tokio_postgres::Config = dsn.parse().map_err(|e: tokio_postgres::Error| ActivityError::Dsn(e.to_string()))?;
    Ok(config.get_ports().first().copied().unwrap_or(5432))
}

/// Connects (inside the runtime) and checks the role can see other sessions; then samples every
/// [`INTERVAL`] into the returned channel until the receiver is dropped. A failure after the
/// start ends the channel with its message.
pub async fn start(dsn: &str) -> Result<mpsc::UnboundedReceiver<Result<Sample, String>>, ActivityError> {
    let mut config: tokio_postgres::Config = dsn.parse().map_err(|e: tokio_postgres::Error| ActivityError::Dsn(e.to_string()))?;
    // A password kept out of the command line (where `ps` shows it), as libpq reads it.
    if config.get_password().is_none()
        && let Ok(p) = std::env::var("PGPASSWORD")
    {
        config.password(p);
    }
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(ActivityError::Connect)?;
    tokio::spawn(async move {
        // Ends when the client is dropped or the server goes away; the sampler reports that.
        let _ = connection.await;
    });
    let statement = client.prepare(SQL).await.map_err(ActivityError::Query)?;
    client.query(&statement, &[]).await.map_err(ActivityError::Query)?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let t0 = clock::monotonic_ns();
            let sample = match client.query(&statement, &[]).await {
                Ok(rows) => Ok(Sample { ts: t0 + (clock::monotonic_ns() - t0) / 2, sessions: rows.iter().filter_map(session).collect() }),
                Err(e) => Err(format!("--pg-dsn: sampling pg_stat_activity stopped: {}", with_cause(&e))),
            };
            let failed = sample.is_err();
            if tx.send(sample).is_err() || failed {
                return;
            }
        }
    });
    Ok(rx)
}

fn session(row: &tokio_postgres::Row) -> Option<(Session, Option<(IpAddr, u16)>)> {
    let pid: i32 = row.try_get(0).ok()?;
    let addr: Option<String> = row.try_get(1).ok()?;
    let port: Option<i32> = row.try_get(2).ok()?;
    let client = addr.and_then(|a| a.parse().ok()).zip(port.and_then(|p| u16::try_from(p).ok()));
    let blocked_by: Option<Vec<i32>> = row.try_get(6).ok()?;
    let s = Session {
        backend: pid as u32 | REMOTE,
        active: row.try_get::<_, Option<bool>>(3).ok()?.unwrap_or(false),
        wait_type: row.try_get(4).ok()?,
        wait_event: row.try_get(5).ok()?,
        blocked_by: blocked_by.unwrap_or_default().into_iter().map(|p| p as u32 | REMOTE).collect(),
    };
    Some((s, client))
}
