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
use std::collections::{HashMap, VecDeque};

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

/// What was seen of one Unix listener's backlog over the watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnixListenerStats {
    pub path: String,
    pub connects: u64,
    pub accepts: u64,
    pub peak: u64,
    pub refused: u64,
}

#[derive(Default)]
pub struct UnixBacklogs {
    lists: HashMap<String, Backlog>,
}

impl UnixBacklogs {
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

    pub fn stats(&self) -> Vec<UnixListenerStats> {
        let mut v: Vec<_> = self
            .lists
            .iter()
            .map(|(path, b)| UnixListenerStats { path: path.clone(), connects: b.connected, accepts: b.accepted, peak: b.peak, refused: b.refused })
            .collect();
        v.sort_by(|a, b| a.path.cmp(&b.path));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connects_pair_with_accepts_in_order_whatever_the_event_order() {
        let mut u = UnixBacklogs::default();
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
        let s = &u.stats()[0];
        assert_eq!((s.connects, s.accepts, s.peak, s.refused), (5, 5, 3, 1));
    }

    #[test]
    fn connections_older_than_the_watch_get_no_arrival() {
        let mut u = UnixBacklogs::default();
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
