//! Samples of the watched listeners' accept queues, every 250 ms, from sock_diag (cheap: the
//! kernel answers for listening sockets only), as `Backlog` events the pipeline aggregates (and a
//! recording keeps). The first and the last sample also carry the host's TCP ListenOverflows
//! (/proc/net/netstat): the kernel counts full-queue drops for the host, not per socket.
use std::{
    collections::HashMap,
    fs,
    time::{Duration, Instant},
};

use crate::{
    event::{Event, Hdr},
    proc::diag,
};

const EVERY: Duration = Duration::from_millis(250);

pub struct BacklogSampler {
    /// Listening socket inode -> how it is named (`ADDR:PORT`, `unix:PATH`).
    tcp: HashMap<u64, String>,
    unix: HashMap<u64, String>,
    last: Option<Instant>,
    /// sock_diag failed once: said, and not asked again.
    failed: Option<String>,
}

impl BacklogSampler {
    pub fn new(listeners: &[(u64, String)]) -> Self {
        let (unix, tcp): (Vec<_>, Vec<_>) = listeners.iter().cloned().partition(|(_, name)| name.starts_with("unix:"));
        Self { tcp: tcp.into_iter().collect(), unix: unix.into_iter().collect(), last: None, failed: None }
    }

    pub fn due(&self) -> bool {
        self.failed.is_none() && (!self.tcp.is_empty() || !self.unix.is_empty()) && self.last.is_none_or(|l| l.elapsed() >= EVERY)
    }

    /// The samples now; `with_overflows` on the first and the last. An error is returned once
    /// (for a warning), then sampling stops.
    pub fn sample(&mut self, now_ns: u64, with_overflows: bool) -> Result<Vec<Event>, String> {
        self.last = Some(Instant::now());
        let overflows = if with_overflows { listen_overflows() } else { None };
        let mut out = Vec::new();
        for (names, dump) in [(&self.tcp, diag::tcp_listeners as fn() -> std::io::Result<Vec<diag::ListenQueue>>), (&self.unix, diag::unix_listeners)]
        {
            if names.is_empty() {
                continue;
            }
            let queues = dump().map_err(|e| {
                let msg = format!("listen backlogs cannot be sampled (sock_diag: {e}): the summary's listeners lack backlog_max and TCP depth");
                self.failed = Some(msg.clone());
                msg
            })?;
            for q in queues {
                if let Some(name) = names.get(&q.inode) {
                    out.push(Event::Backlog {
                        hdr: Hdr { tgid: 0, tid: 0, ts: now_ns },
                        socket: name.clone(),
                        queued: q.queued,
                        max: q.max,
                        listen_overflows: overflows,
                    });
                }
            }
        }
        Ok(out)
    }
}

/// The host's TcpExt ListenOverflows counter.
fn listen_overflows() -> Option<u64> {
    parse_listen_overflows(&fs::read_to_string("/proc/net/netstat").ok()?)
}

/// /proc/net/netstat: a header line of names and a line of values per group (`TcpExt:` ...).
fn parse_listen_overflows(text: &str) -> Option<u64> {
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if names.starts_with("TcpExt:") && values.starts_with("TcpExt:") {
            let i = names.split_whitespace().position(|n| n == "ListenOverflows")?;
            return values.split_whitespace().nth(i)?.parse().ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_listen_overflows() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 17 19\nIpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(parse_listen_overflows(text), Some(17));
        assert_eq!(parse_listen_overflows("IpExt: A\nIpExt: 1\n"), None);
        assert!(listen_overflows().is_some(), "this kernel's /proc/net/netstat");
    }
}
