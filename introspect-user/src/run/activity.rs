//! `--pg-dsn` in a live watch: each sample of `pg_stat_activity` becomes an event, and each
//! session whose client is one of the watched processes' connections is linked to that
//! connection's fd once, found through /proc by its port (the app's side of the socket).
use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use crate::{
    event::{Event, Hdr},
    proc::sockets::{self, TCP_ESTABLISHED},
    sql::activity::{INTERVAL, Sample, Session},
};

/// How often /proc may be searched for new clients: a search reads the TCP table and every
/// watched process's fd table.
const RESEARCH: Duration = Duration::from_millis(50);
/// Searches for one client before it is taken for someone else's (another host's app, a psql):
/// its socket exists before its session does, so a second look is only for a search that ran
/// between the two.
const TRIES: u8 = 2;
/// The key of a connection found by its port alone.
const ANY: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// A session's client and, once found, the watched connection it is.
struct Client {
    addr: (IpAddr, u16),
    found: Option<(u32, i32)>,
    tries: u8,
}

pub struct Sampler {
    server_port: u16,
    clients: HashMap<u32, Client>,
    last_search: Option<Instant>,
    last_ts: Option<u64>,
}

impl Sampler {
    pub fn new(server_port: u16) -> Self {
        Self { server_port, clients: HashMap::new(), last_search: None, last_ts: None }
    }

    /// The events of one sample, links first.
    pub fn events(&mut self, sample: Sample, live: &BTreeSet<u32>) -> Vec<Event> {
        let hdr = |tgid, ts| Hdr { tgid, tid: 0, ts };
        let mut out = Vec::new();
        for (s, addr) in &sample.sessions {
            let Some(addr) = *addr else { continue };
            let known = self.clients.get(&s.backend).is_some_and(|c| c.addr == addr);
            if !known {
                self.clients.insert(s.backend, Client { addr, found: None, tries: 0 });
            }
        }
        let live_backends: BTreeSet<u32> = sample.sessions.iter().map(|(s, _)| s.backend).collect();
        self.clients.retain(|b, _| live_backends.contains(b));
        // A session holding up another must be linked before this sample's lock waits are told
        // apart (else its holder is taken for an outsider): its search waits for no one.
        let blockers: BTreeSet<u32> = sample.sessions.iter().flat_map(|(s, _)| s.blocked_by.iter().copied()).collect();
        let unfound = |c: &Client| c.found.is_none() && c.tries < TRIES;
        let searching = self.clients.values().any(unfound);
        let urgent = self.clients.iter().any(|(b, c)| blockers.contains(b) && unfound(c));
        if searching && (urgent || self.last_search.is_none_or(|t| t.elapsed() >= RESEARCH)) {
            self.last_search = Some(Instant::now());
            let found = self.search(live);
            for (backend, c) in self.clients.iter_mut().filter(|(_, c)| unfound(c)) {
                c.tries += 1;
                if let Some(&(pid, fd)) = found.get(&c.addr).or_else(|| found.get(&(ANY, c.addr.1))) {
                    c.found = Some((pid, fd));
                    out.push(Event::DbLink { hdr: hdr(pid, sample.ts), fd, backend: *backend });
                }
            }
        }
        // The sessions that can matter to a watched request: its own, the ones running a
        // statement, and the ones holding others up.
        let sessions: Vec<Session> = sample
            .sessions
            .into_iter()
            .map(|(s, _)| s)
            .filter(|s| s.active || blockers.contains(&s.backend) || self.clients.get(&s.backend).is_some_and(|c| c.found.is_some()))
            .collect();
        let interval_ns = self.last_ts.map_or(INTERVAL.as_nanos() as u64, |t| sample.ts.saturating_sub(t));
        self.last_ts = Some(sample.ts);
        out.push(Event::PgActivity { hdr: hdr(0, sample.ts), interval_ns, sessions });
        out
    }

    /// The watched processes' established connections to the server's port, by their local
    /// address (and by port alone, under the unspecified address, when only one has that port:
    /// the server may see the client through a NAT).
    fn search(&self, live: &BTreeSet<u32>) -> HashMap<(IpAddr, u16), (u32, i32)> {
        let mut out = HashMap::new();
        let mut by_port: HashMap<u16, Vec<(u32, i32)>> = HashMap::new();
        let Some(&first) = live.iter().next() else { return out };
        let tcp: HashMap<u64, sockets::TcpSocket> = sockets::tcp_sockets(first)
            .into_iter()
            .filter(|s| s.state == TCP_ESTABLISHED && s.remote.port() == self.server_port)
            .map(|s| (s.inode, s))
            .collect();
        if tcp.is_empty() {
            return out;
        }
        for &pid in live {
            for (fd, inode) in sockets::socket_fds(pid) {
                if let Some(s) = tcp.get(&inode) {
                    out.insert((s.local.ip(), s.local.port()), (pid, fd));
                    by_port.entry(s.local.port()).or_default().push((pid, fd));
                }
            }
        }
        for (port, conns) in by_port {
            if let [only] = conns[..] {
                out.insert((ANY, port), only);
            }
        }
        out
    }
}
