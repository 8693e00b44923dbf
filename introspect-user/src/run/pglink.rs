//! The link between an app's connection and the PostgreSQL backend serving it, found through
//! /proc when the kernel did not see it. The kernel links a connection the first time a write on
//! it wakes its backend in the writer's context; on a busy host the loopback delivery can be
//! deferred to ksoftirqd for every message of a short-lived connection, and then none of its
//! queries would have their server-side waits. So a connection to this host's server that is
//! still unlinked shortly after its connect is looked up by its address pair: the backend is the
//! child of the server that holds the socket whose local and remote ends are the app's reversed.
//! TCP only (a Unix socket's peer is not in /proc); a lookup is done at most twice per
//! connection and only for unlinked ones, so a host where the kernel links them pays nothing.
use std::{
    collections::{BTreeSet, HashMap},
    fs,
    net::SocketAddr,
    time::{Duration, Instant},
};

use crate::{
    event::{Event, Hdr},
    proc::{
        postgres::PgServer,
        sockets::{self, TCP_ESTABLISHED, TCP_LISTEN, TcpSocket},
    },
};

/// How long after its connect a connection is left to the kernel: its startup exchange is a few
/// round trips, each a chance for the kernel to link it.
const GRACE_NS: u64 = 5_000_000;
/// Searches at most this often (each reads the TCP table and the backends' fd tables).
const EVERY: Duration = Duration::from_millis(20);
/// Lookups per connection: its backend is forked by the time the app's connect returns, so a
/// second look is only for a search that ran in between.
const TRIES: u8 = 2;

struct Pending {
    since_ns: u64,
    tries: u8,
}

pub struct Linker {
    servers: Vec<u32>,
    /// The servers' listening TCP ports.
    ports: BTreeSet<u16>,
    pending: HashMap<(u32, i32), Pending>,
    last_search: Option<Instant>,
}

impl Linker {
    /// `None` when no server on this host listens on TCP.
    pub fn new(servers: &[PgServer]) -> Option<Self> {
        let mut ports = BTreeSet::new();
        for s in servers {
            let inodes: BTreeSet<u64> = sockets::socket_fds(s.pid).into_iter().map(|(_, i)| i).collect();
            ports.extend(
                sockets::tcp_sockets(s.pid).into_iter().filter(|t| t.state == TCP_LISTEN && inodes.contains(&t.inode)).map(|t| t.local.port()),
            );
        }
        (!ports.is_empty()).then(|| Self { servers: servers.iter().map(|s| s.pid).collect(), ports, pending: HashMap::new(), last_search: None })
    }

    /// Follows the connects to the servers' ports and the links and closes of those connections.
    pub fn observe(&mut self, ev: &Event) {
        match ev {
            Event::Connect { hdr, fd, peer: Some(peer) } if peer.parse::<SocketAddr>().is_ok_and(|a| self.ports.contains(&a.port())) => {
                self.pending.insert((hdr.tgid, *fd), Pending { since_ns: hdr.ts, tries: 0 });
            }
            Event::DbLink { hdr, fd, .. } | Event::Close { hdr, fd } => {
                self.pending.remove(&(hdr.tgid, *fd));
            }
            Event::Exit { pid, .. } => self.pending.retain(|&(tgid, _), _| tgid != *pid),
            _ => {}
        }
    }

    /// The links found for connections the kernel left unlinked past their grace.
    pub fn search(&mut self, now_ns: u64) -> Vec<Event> {
        let due = |p: &Pending| p.tries < TRIES && now_ns.saturating_sub(p.since_ns) >= GRACE_NS;
        if !self.pending.values().any(due) || self.last_search.is_some_and(|t| t.elapsed() < EVERY) {
            return Vec::new();
        }
        self.last_search = Some(Instant::now());
        let mut out = Vec::new();
        let Some(&server) = self.servers.first() else { return out };
        let tcp: Vec<TcpSocket> = sockets::tcp_sockets(server).into_iter().filter(|t| t.state == TCP_ESTABLISHED).collect();
        let backends: Vec<u32> = self.servers.iter().flat_map(|&s| children(s)).collect();
        let mut backend_socks: Option<HashMap<u64, u32>> = None;
        let mut app_fds: HashMap<u32, HashMap<i32, u64>> = HashMap::new();
        for (&(tgid, fd), p) in self.pending.iter_mut().filter(|(_, p)| due(p)) {
            p.tries += 1;
            let fds = app_fds.entry(tgid).or_insert_with(|| sockets::socket_fds(tgid).into_iter().collect());
            let Some(peer) = fds.get(&fd).and_then(|&inode| peer_inode(&tcp, inode)) else { continue };
            let socks = backend_socks
                .get_or_insert_with(|| backends.iter().flat_map(|&b| sockets::socket_fds(b).into_iter().map(move |(_, i)| (i, b))).collect());
            if let Some(&backend) = socks.get(&peer) {
                out.push(Event::DbLink { hdr: Hdr { tgid, tid: 0, ts: now_ns }, fd, backend });
            }
        }
        for ev in &out {
            self.observe(ev);
        }
        self.pending.retain(|_, p| p.tries < TRIES);
        out
    }
}

/// The inode of the other end of TCP socket `inode` when both ends are in `tcp` (this host).
fn peer_inode(tcp: &[TcpSocket], inode: u64) -> Option<u64> {
    let me = tcp.iter().find(|t| t.inode == inode)?;
    tcp.iter().find(|t| t.local == me.remote && t.remote == me.local && t.inode != 0).map(|t| t.inode)
}

/// A server's children now: its backends (and auxiliary processes, which hold no client socket).
/// Read from the kernel's own list, not `targets::with_descendants`'s scan of every process:
/// this runs while connections wait for a link, and backends are never grandchildren.
fn children(pid: u32) -> Vec<u32> {
    match fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        Ok(text) => text.split_whitespace().filter_map(|c| c.parse().ok()).collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(local: &str, remote: &str, inode: u64) -> TcpSocket {
        TcpSocket { local: local.parse().unwrap(), remote: remote.parse().unwrap(), state: TCP_ESTABLISHED, inode }
    }

    #[test]
    fn the_other_end_of_a_loopback_connection_is_the_reversed_address_pair() {
        let tcp = [
            sock("127.0.0.1:41000", "127.0.0.1:5432", 10),
            sock("127.0.0.1:5432", "127.0.0.1:41000", 20),
            // Another client of the same server, and a connection elsewhere.
            sock("127.0.0.1:41001", "127.0.0.1:5432", 11),
            sock("127.0.0.1:5432", "127.0.0.1:41001", 21),
            sock("127.0.0.1:41002", "10.0.0.9:5432", 12),
        ];
        assert_eq!(peer_inode(&tcp, 10), Some(20));
        assert_eq!(peer_inode(&tcp, 11), Some(21));
        // Its server is on another host: no end here.
        assert_eq!(peer_inode(&tcp, 12), None);
        assert_eq!(peer_inode(&tcp, 99), None);
    }

    #[test]
    fn only_connects_to_the_servers_ports_wait_for_a_link_and_a_link_ends_the_wait() {
        let mut l = Linker { servers: vec![1], ports: [5432].into(), pending: HashMap::new(), last_search: None };
        let hdr = |ts| Hdr { tgid: 7, tid: 7, ts };
        l.observe(&Event::Connect { hdr: hdr(0), fd: 5, peer: Some("127.0.0.1:5432".into()) });
        l.observe(&Event::Connect { hdr: hdr(0), fd: 6, peer: Some("127.0.0.1:6379".into()) });
        l.observe(&Event::Connect { hdr: hdr(0), fd: 8, peer: Some("[::1]:5432".into()) });
        assert_eq!(l.pending.keys().copied().collect::<BTreeSet<_>>(), [(7, 5), (7, 8)].into());
        l.observe(&Event::DbLink { hdr: hdr(1), fd: 5, backend: 900 });
        l.observe(&Event::Close { hdr: hdr(2), fd: 8 });
        assert!(l.pending.is_empty());
        // Within its grace a connection is not searched for.
        l.observe(&Event::Connect { hdr: hdr(10), fd: 5, peer: Some("127.0.0.1:5432".into()) });
        assert!(l.search(10 + GRACE_NS - 1).is_empty() && l.last_search.is_none());
    }
}
