//! The watched listeners: which processes forward to them (a router in front of the workers),
//! and their backlogs.
//!
//! A watched process seen connecting to a watched listener on loopback (or to its Unix socket)
//! is a hop in front of the others (uWSGI's `--http` router): its requests are counted as
//! proxied, the worker's are reported.
//!
//! Arrivals on Unix sockets. A connection to a Unix listener has no segment to time: it waits in
//! the listener's backlog from the client's `connect` (seen host-wide by the kernel, for the
//! watched listeners' paths only) until a worker's `accept` takes it. The backlog is a FIFO, so
//! connects and accepts pair in order; their events need not arrive in that order (an accept
//! can return before the connect that queued it does), so whichever comes first waits for the
//! other. A pair is only made when it is possible (the connect began before the accept
//! returned): an accept of a connection queued before the watch began finds no possible
//! connect and is left without an arrival. While such old connections are still ahead in a
//! backlog that never drains, the pairing runs behind by them (arrivals too late: queue_ms too
//! small), until the backlog first empties.
//!
//! Samples of every watched listener's accept queue (TCP and Unix, from sock_diag) give the
//! deepest it was seen and its backlog, for the summary.
use std::{
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    net::SocketAddr,
};

use super::Assembler;

/// Most unpaired connects or accepts remembered per listener (older ones are dropped).
const MAX_UNPAIRED: usize = 65_536;

#[derive(Default)]
struct Backlog {
    /// Connects not yet paired: when each client called connect.
    connects: VecDeque<u64>,
    /// Accepts whose connect had not been seen yet: the connection, and when it was accepted.
    accepts: VecDeque<((u32, i32), u64)>,
    connected: u64,
    accepted: u64,
    /// Deepest the backlog was seen (connects seen minus accepts seen).
    peak: u64,
    /// Connects refused, the backlog full.
    refused: u64,
}

/// What was seen of one listening socket's backlog over the watch: from its clients' connects
/// (Unix), and from samples of its accept queue (TCP and Unix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerStats {
    /// `unix:PATH`, or the TCP listener's `ADDR:PORT`.
    pub socket: String,
    pub connects: Option<u64>,
    pub accepts: Option<u64>,
    /// The most connections seen waiting at once.
    pub peak: u64,
    /// Its `listen()` backlog, when sampled.
    pub max: Option<u32>,
    pub refused: Option<u64>,
}

#[derive(Default)]
pub struct Listeners {
    /// The watched servers' listening TCP ports and Unix socket paths.
    ports: BTreeSet<u16>,
    paths: BTreeSet<String>,
    /// Processes seen connecting to one of those: hops in front of the others.
    gateways: HashSet<u32>,
    /// Unix listeners' backlogs, by path.
    lists: HashMap<String, Backlog>,
    /// Sampled accept queues by socket: (the deepest seen, the backlog).
    samples: HashMap<String, (u32, u32)>,
    /// The host's ListenOverflows counter: first and last seen.
    overflows: Option<(u64, u64)>,
}

impl Listeners {
    pub fn set(&mut self, ports: &BTreeSet<u16>, paths: &BTreeSet<String>) {
        self.ports = ports.clone();
        self.paths = paths.clone();
    }

    /// Process `tgid` connected to `peer` (`ADDR:PORT`, `unix:PATH`).
    pub fn connect_out(&mut self, tgid: u32, peer: &str) {
        // Loopback only: a process may well call the same port on another host.
        let local_listener = match peer.strip_prefix("unix:") {
            Some(path) => self.paths.contains(path),
            None => peer.parse::<SocketAddr>().is_ok_and(|a| a.ip().is_loopback() && self.ports.contains(&a.port())),
        };
        if local_listener {
            self.gateways.insert(tgid);
        }
    }

    /// Whether `tgid` forwards to a watched listener.
    pub fn is_gateway(&self, tgid: u32) -> bool {
        self.gateways.contains(&tgid)
    }

    /// A client's connect into `path`'s backlog, called at `enter_ts` (refused: the backlog was
    /// full). Returns the connection an accept already took it as, with `enter_ts`.
    pub fn connected(&mut self, path: &str, enter_ts: u64, refused: bool) -> Option<((u32, i32), u64)> {
        let b = self.lists.entry(path.to_string()).or_default();
        if refused {
            b.refused += 1;
            return None;
        }
        b.connected += 1;
        b.peak = b.peak.max(b.connected.saturating_sub(b.accepted));
        while let Some(&(key, accepted_at)) = b.accepts.front() {
            b.accepts.pop_front();
            if enter_ts <= accepted_at {
                return Some((key, enter_ts));
            }
            // Accepted before this connect began: a connection older than the watch.
        }
        if b.connects.len() >= MAX_UNPAIRED {
            b.connects.pop_front();
        }
        b.connects.push_back(enter_ts);
        None
    }

    /// A worker accepted connection `key` from `path`'s listener at `ts`: when its client
    /// called connect, if that was seen.
    pub fn accepted(&mut self, path: &str, key: (u32, i32), ts: u64) -> Option<u64> {
        let b = self.lists.entry(path.to_string()).or_default();
        b.accepted += 1;
        match b.connects.front() {
            Some(&at) if at <= ts => {
                b.connects.pop_front();
                Some(at)
            }
            // The oldest connect seen began after this accept: this connection is older than
            // the watch.
            Some(_) => None,
            None => {
                if b.accepts.len() >= MAX_UNPAIRED {
                    b.accepts.pop_front();
                }
                b.accepts.push_back((key, ts));
                None
            }
        }
    }

    /// A sample of `socket`'s accept queue: `queued` waiting, room for `max`; with the host's
    /// ListenOverflows counter on some samples.
    pub fn sampled(&mut self, socket: &str, queued: u32, max: u32, overflows: Option<u64>) {
        let s = self.samples.entry(socket.to_string()).or_default();
        *s = (s.0.max(queued), max);
        if let Some(n) = overflows {
            let first = self.overflows.map_or(n, |(f, _)| f);
            self.overflows = Some((first, n));
        }
    }

    /// The host's TCP ListenOverflows between the first and the last sample that carried it.
    pub fn listen_overflows(&self) -> Option<u64> {
        self.overflows.map(|(first, last)| last.saturating_sub(first))
    }

    pub fn stats(&self) -> Vec<ListenerStats> {
        let mut v: Vec<ListenerStats> = self
            .lists
            .iter()
            .map(|(path, b)| {
                let socket = format!("unix:{path}");
                let sample = self.samples.get(&socket);
                ListenerStats {
                    peak: b.peak.max(sample.map_or(0, |s| u64::from(s.0))),
                    max: sample.map(|s| s.1),
                    socket,
                    connects: Some(b.connected),
                    accepts: Some(b.accepted),
                    refused: Some(b.refused),
                }
            })
            .collect();
        for (socket, &(peak, max)) in &self.samples {
            if !v.iter().any(|l| &l.socket == socket) {
                v.push(ListenerStats { socket: socket.clone(), connects: None, accepts: None, peak: u64::from(peak), max: Some(max), refused: None });
            }
        }
        v.sort_by(|a, b| a.socket.cmp(&b.socket));
        v
    }
}

impl Assembler {
    /// An accept of `key`: from a Unix listener, when its client called connect (if seen).
    pub(super) fn unix_accept(&mut self, key: (u32, i32), listen_fd: i32, ts: u64) -> Option<u64> {
        let peer = self.fds.peer(key.0, listen_fd)?;
        let path = peer.strip_prefix("unix:")?;
        self.parts.listeners.accepted(path, key, ts)
    }

    /// A connect into a watched Unix listener's backlog; its accept may have come first.
    pub(super) fn on_unix_connect(&mut self, path: &str, enter_ts: u64, refused: bool) {
        let Some((key, at)) = self.parts.listeners.connected(path, enter_ts, refused) else { return };
        let Some(conn) = self.conns.get_mut(&key) else { return };
        match conn.open.as_mut() {
            // Its first request began before this connect's event came: it began when the
            // client connected.
            Some(open) if conn.last_end_ns == 0 && at <= open.start_ns => {
                open.queue_ns = open.read_enter_ns.saturating_sub(at);
                open.start_ns = at;
            }
            Some(_) => {}
            None if conn.last_end_ns == 0 => conn.unix_arrival = Some(at),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connects_pair_with_accepts_in_order_whatever_the_event_order() {
        let mut u = Listeners::default();
        assert_eq!(u.connected("/s", 100, false), None);
        assert_eq!(u.accepted("/s", (1, 7), 105), Some(100));
        // Three connects queue; accepts take them in order.
        for t in [200, 210, 220] {
            assert_eq!(u.connected("/s", t, false), None);
        }
        assert_eq!(u.accepted("/s", (1, 8), 300), Some(200));
        assert_eq!(u.accepted("/s", (2, 9), 400), Some(210));
        assert_eq!(u.accepted("/s", (2, 10), 500), Some(220));
        // An accept whose connect event comes after it.
        assert_eq!(u.accepted("/s", (1, 11), 610), None);
        assert_eq!(u.connected("/s", 600, false), Some(((1, 11), 600)));
        assert_eq!(u.connected("/s", 700, true), None);
        u.sampled("unix:/s", 2, 100, Some(40));
        u.sampled("127.0.0.1:8000", 4, 128, None);
        u.sampled("127.0.0.1:8000", 1, 128, Some(43));
        assert_eq!(u.listen_overflows(), Some(3));
        let s = u.stats();
        assert_eq!((s[1].connects, s[1].accepts, s[1].peak, s[1].refused, s[1].max), (Some(5), Some(5), 3, Some(1), Some(100)));
        assert_eq!((s[0].socket.as_str(), s[0].peak, s[0].max, s[0].connects), ("127.0.0.1:8000", 4, Some(128), None));
    }

    #[test]
    fn connections_older_than_the_watch_get_no_arrival() {
        let mut u = Listeners::default();
        // Two connections were queued before the watch: their accepts find nothing, and a
        // connect that began after them is not theirs.
        assert_eq!(u.accepted("/s", (1, 7), 50), None);
        assert_eq!(u.accepted("/s", (1, 8), 60), None);
        assert_eq!(u.connected("/s", 70, false), None);
        assert_eq!(u.accepted("/s", (1, 9), 80), Some(70));
        // Nor does a connect seen first pair with an accept that returned before it began.
        assert_eq!(u.connected("/s", 200, false), None);
        assert_eq!(u.accepted("/s", (1, 10), 150), None);
        assert_eq!(u.accepted("/s", (1, 11), 210), Some(200));
    }
}
