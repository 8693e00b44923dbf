//! Breakdown: where a request's time went, from its serving thread's off-CPU intervals and
//! syscalls.
//!
//! A request's time is its `queue` (waiting before a worker read it) plus its window on the
//! serving thread. Inside the window, every interval the kernel saw the thread off the CPU is
//! split into a blocked part, classified by what it was blocked in, and a runnable part (run
//! queue). Everything else in the window the thread was running: on-CPU. So the parts add up to
//! the duration by construction; the measurement is in the intervals.
use std::collections::{BTreeMap, HashMap, VecDeque};

pub mod classify;

use serde::Serialize;

use crate::event::Event;
pub use classify::{Category, OffCpu};
use classify::{STATE_RUNNING, classify};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SysRec {
    nr: u32,
    enter_ts: u64,
    exit_ts: u64,
    ret: i64,
}

#[derive(Default, Debug)]
struct ThreadLog {
    offcpu: VecDeque<OffCpu>,
    syscalls: VecDeque<SysRec>,
}

/// At most this many intervals or syscalls are kept per thread: a request that never ends cannot
/// grow the agent without bound (older entries are dropped, and counted).
const MAX_PER_THREAD: usize = 50_000;

/// Per-thread logs of off-CPU intervals and syscalls, kept until the requests they belong to end.
#[derive(Default)]
pub struct Timeline {
    threads: HashMap<u32, ThreadLog>,
    pub truncated: u64,
}

fn overlap(a0: u64, a1: u64, b0: u64, b1: u64) -> u64 {
    a1.min(b1).saturating_sub(a0.max(b0))
}

/// Milliseconds per category. `queue` is the listen-backlog wait before the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Breakdown {
    pub queue: f64,
    pub on_cpu: f64,
    pub runqueue: f64,
    pub disk_io: f64,
    pub net_io: f64,
    pub lock: f64,
    pub gil: f64,
    pub sleep: f64,
    pub other: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PeerWait {
    pub peer: String,
    pub ms: f64,
    /// Waits on this peer (one per blocking syscall on its socket).
    pub round_trips: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SyscallStat {
    pub name: String,
    pub count: u64,
    pub ms: f64,
}

/// Where one request's time went.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Detail {
    pub breakdown: Breakdown,
    pub net_peers: Vec<PeerWait>,
    pub syscalls: Vec<SyscallStat>,
}

fn ms(ns: u64) -> f64 {
    (ns as f64 / 1e3).round() / 1e3
}

/// How many syscalls the `syscalls` list shows.
const TOP_SYSCALLS: usize = 8;

impl Timeline {
    pub fn observe(&mut self, ev: &Event) {
        let (tid, entry) = match ev {
            Event::OffCpu { hdr, out_ts, wake_ts, state, sys, facts } => {
                let off = OffCpu { out_ts: *out_ts, wake_ts: *wake_ts, in_ts: hdr.ts, state: *state, sys: *sys, facts: facts.clone() };
                let log = self.threads.entry(hdr.tid).or_default();
                log.offcpu.push_back(off);
                (hdr.tid, log.offcpu.len())
            }
            Event::Syscall { hdr, sys, enter_ts, ret } => {
                let log = self.threads.entry(hdr.tid).or_default();
                log.syscalls.push_back(SysRec { nr: sys.nr, enter_ts: *enter_ts, exit_ts: hdr.ts, ret: *ret });
                (hdr.tid, log.syscalls.len())
            }
            // Reads and writes on the client connection are syscalls of the request too.
            Event::Data { hdr, enter_ts, bytes, nr, .. } => {
                let log = self.threads.entry(hdr.tid).or_default();
                log.syscalls.push_back(SysRec { nr: *nr, enter_ts: *enter_ts, exit_ts: hdr.ts, ret: *bytes as i64 });
                (hdr.tid, log.syscalls.len())
            }
            Event::Exit { .. }
            | Event::Accept { .. }
            | Event::Close { .. }
            | Event::Connect { .. }
            | Event::Fd { .. }
            | Event::Fork { .. }
            | Event::Stack { .. }
            | Event::Slow { .. }
            | Event::Signal { .. }
            | Event::Oom { .. }
            | Event::ExitCall { .. }
            | Event::Proc { .. }
            | Event::Server { .. }
            | Event::Heartbeat { .. }
            | Event::Snapshot { .. }
            | Event::Interrupt { .. }
            | Event::DbSwitch { .. }
            | Event::DbLink { .. }
            | Event::UnixConnect { .. }
            | Event::Backlog { .. }
            | Event::PgActivity { .. } => return,
        };
        if entry > MAX_PER_THREAD
            && let Some(log) = self.threads.get_mut(&tid)
        {
            let excess = log.offcpu.len().saturating_sub(MAX_PER_THREAD);
            log.offcpu.drain(..excess);
            let excess = log.syscalls.len().saturating_sub(MAX_PER_THREAD);
            log.syscalls.drain(..excess);
            self.truncated += 1;
        }
    }

    /// Forgets what a thread did before `ts` (its request ended there).
    pub fn forget_before(&mut self, tid: u32, ts: u64) {
        if let Some(log) = self.threads.get_mut(&tid) {
            while log.offcpu.front().is_some_and(|o| o.in_ts <= ts) {
                log.offcpu.pop_front();
            }
            while log.syscalls.front().is_some_and(|s| s.exit_ts <= ts) {
                log.syscalls.pop_front();
            }
            if log.offcpu.is_empty() && log.syscalls.is_empty() {
                self.threads.remove(&tid);
            }
        }
    }

    /// Forgets everything that ended before `ts`, for threads whose requests never completed.
    pub fn forget_all_before(&mut self, ts: u64) {
        let tids: Vec<u32> = self.threads.keys().copied().collect();
        for tid in tids {
            self.forget_before(tid, ts);
        }
    }

    /// On-CPU milliseconds of `tid` in `[start, end]`: `detail(..).breakdown.on_cpu` without
    /// classifying anything or allocating, for the summary of every request (most are never
    /// reported, so their full breakdown would be built for nothing).
    pub fn on_cpu_ms(&self, tid: u32, start: u64, end: u64) -> f64 {
        let mut off_total = 0;
        if let Some(log) = self.threads.get(&tid) {
            for off in &log.offcpu {
                if off.in_ts <= start || off.out_ts >= end {
                    continue;
                }
                off_total += overlap(off.wake_ts, off.in_ts, start, end);
                if off.state != STATE_RUNNING {
                    off_total += overlap(off.out_ts, off.wake_ts, start, end);
                }
            }
        }
        ms(end.saturating_sub(start).saturating_sub(off_total))
    }

    /// The breakdown of a request served by `tid` in `[start, end]` after `queue_ns` in the
    /// backlog. `open` is a wait still going on at `end` (for requests still running).
    pub fn detail(&self, tid: u32, start: u64, end: u64, queue_ns: u64, open: Option<&OffCpu>) -> Detail {
        let empty = ThreadLog::default();
        let log = self.threads.get(&tid).unwrap_or(&empty);
        let mut ns: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut peers: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for off in log.offcpu.iter().chain(open) {
            if off.in_ts <= start || off.out_ts >= end {
                continue;
            }
            let runq = overlap(off.wake_ts, off.in_ts, start, end);
            *ns.entry("runqueue").or_default() += runq;
            if off.state == STATE_RUNNING {
                continue;
            }
            let blocked = overlap(off.out_ts, off.wake_ts, start, end);
            if blocked == 0 {
                continue;
            }
            let ret = off
                .sys
                .and_then(|sys| log.syscalls.iter().find(|s| s.nr == sys.nr && s.enter_ts <= off.out_ts && s.exit_ts >= off.in_ts).map(|s| s.ret));
            let key = match classify(off, ret) {
                Category::Disk => "disk_io",
                Category::Net { peer } => {
                    let p = peers.entry(peer.unwrap_or_else(|| "unknown".into())).or_default();
                    p.0 += blocked;
                    p.1 += 1;
                    "net_io"
                }
                Category::Lock => "lock",
                Category::Gil => "gil",
                Category::Sleep => "sleep",
                Category::Other => "other",
            };
            *ns.entry(key).or_default() += blocked;
        }
        let window = end.saturating_sub(start);
        let off_total: u64 = ns.values().sum();
        let get = |k: &str| ms(ns.get(k).copied().unwrap_or(0));
        let breakdown = Breakdown {
            queue: ms(queue_ns),
            on_cpu: ms(window.saturating_sub(off_total)),
            runqueue: get("runqueue"),
            disk_io: get("disk_io"),
            net_io: get("net_io"),
            lock: get("lock"),
            gil: get("gil"),
            sleep: get("sleep"),
            other: get("other"),
        };
        let mut net_peers: Vec<PeerWait> = peers.into_iter().map(|(peer, (t, n))| PeerWait { peer, ms: ms(t), round_trips: n }).collect();
        net_peers.sort_by(|a, b| b.ms.total_cmp(&a.ms));

        let mut by_nr: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
        for s in &log.syscalls {
            let t = overlap(s.enter_ts, s.exit_ts, start, end);
            if t > 0 || (s.enter_ts >= start && s.exit_ts <= end) {
                let e = by_nr.entry(s.nr).or_default();
                e.0 += 1;
                e.1 += t;
            }
        }
        let mut syscalls: Vec<SyscallStat> =
            by_nr.into_iter().map(|(n, (count, t))| SyscallStat { name: classify::syscall_name(n), count, ms: ms(t) }).collect();
        syscalls.sort_by(|a, b| b.ms.total_cmp(&a.ms).then(b.count.cmp(&a.count)));
        syscalls.truncate(TOP_SYSCALLS);
        Detail { breakdown, net_peers, syscalls }
    }
}

#[cfg(test)]
mod tests {
    use introspect_common::nr;

    use super::*;
    use crate::event::{FdKind, Hdr, Sys, WaitFacts};

    fn off(tid: u32, out: u64, wake: u64, inn: u64, state: u32, sys: Option<Sys>, facts: WaitFacts) -> Event {
        Event::OffCpu { hdr: Hdr { tgid: 1, tid, ts: inn }, out_ts: out, wake_ts: wake, state, sys, facts }
    }

    fn sys(nr: u32, fd: i32, arg: u64) -> Option<Sys> {
        Some(Sys { nr, fd, arg })
    }

    fn sock(peer: &str) -> WaitFacts {
        WaitFacts { fd: Some(FdKind::Socket { peer: Some(peer.into()) }), gil: false }
    }

    #[test]
    fn parts_add_up_and_are_classified() {
        let mut t = Timeline::default();
        let ms = 1_000_000;
        // Request window [100 ms, 1000 ms] after 20 ms of queue.
        t.observe(&off(7, 150 * ms, 350 * ms, 352 * ms, 1, sys(nr::CLOCK_NANOSLEEP, -1, 0), WaitFacts::default()));
        t.observe(&off(7, 400 * ms, 600 * ms, 601 * ms, 1, sys(nr::POLL, 9, 1), sock("127.0.0.1:5432")));
        t.observe(&Event::Syscall {
            hdr: Hdr { tgid: 1, tid: 7, ts: 601 * ms },
            sys: Sys { nr: nr::POLL, fd: 9, arg: 1 },
            enter_ts: 399 * ms,
            ret: 1,
        });
        t.observe(&off(7, 650 * ms, 700 * ms, 710 * ms, 1, sys(nr::FUTEX, -1, 0x1000), WaitFacts { fd: None, gil: true }));
        t.observe(&off(7, 720 * ms, 730 * ms, 731 * ms, 1, sys(nr::FUTEX, -1, 0x2000), WaitFacts::default()));
        t.observe(&off(7, 800 * ms, 800 * ms, 850 * ms, 0, None, WaitFacts::default()));
        t.observe(&off(7, 860 * ms, 900 * ms, 900 * ms, 2, None, WaitFacts::default()));
        // Outside the window: ignored.
        t.observe(&off(7, 10 * ms, 50 * ms, 60 * ms, 1, None, WaitFacts::default()));
        let d = t.detail(7, 100 * ms, 1000 * ms, 20 * ms, None);
        let b = d.breakdown;
        assert_eq!((b.queue, b.sleep, b.net_io, b.gil, b.lock, b.disk_io, b.other), (20.0, 200.0, 200.0, 50.0, 10.0, 40.0, 0.0));
        assert_eq!(b.runqueue, 2.0 + 1.0 + 10.0 + 1.0 + 50.0);
        let total = b.queue + b.on_cpu + b.runqueue + b.disk_io + b.net_io + b.lock + b.gil + b.sleep + b.other;
        assert!((total - 920.0).abs() < 1e-6, "{b:?}");
        assert_eq!(d.net_peers, vec![PeerWait { peer: "127.0.0.1:5432".into(), ms: 200.0, round_trips: 1 }]);
        assert_eq!(d.syscalls[0], SyscallStat { name: "poll".into(), count: 1, ms: 202.0 });
    }

    #[test]
    fn fdless_selects_are_sleep_and_timed_out_socket_polls_are_the_peers_time() {
        let mut t = Timeline::default();
        let ms = 1_000_000;
        t.observe(&off(3, 10 * ms, 20 * ms, 21 * ms, 1, sys(nr::SELECT, -1, 0), WaitFacts::default()));
        t.observe(&off(3, 30 * ms, 40 * ms, 41 * ms, 1, sys(nr::POLL, 5, 1), sock("10.0.0.1:80")));
        t.observe(&Event::Syscall { hdr: Hdr { tgid: 1, tid: 3, ts: 41 * ms }, sys: Sys { nr: nr::POLL, fd: 5, arg: 1 }, enter_ts: 29 * ms, ret: 0 });
        t.observe(&off(3, 50 * ms, 60 * ms, 61 * ms, 1, sys(nr::POLL, 6, 1), WaitFacts { fd: Some(FdKind::Pipe), gil: false }));
        t.observe(&Event::Syscall { hdr: Hdr { tgid: 1, tid: 3, ts: 61 * ms }, sys: Sys { nr: nr::POLL, fd: 6, arg: 1 }, enter_ts: 49 * ms, ret: 0 });
        let d = t.detail(3, 0, 100 * ms, 0, None);
        assert_eq!(d.breakdown.sleep, 20.0);
        // A driver polling its socket in slices (psycopg 3): a slice that timed out is still
        // the peer's time.
        assert_eq!(d.breakdown.net_io, 10.0);
        assert_eq!(d.net_peers, vec![PeerWait { peer: "10.0.0.1:80".into(), ms: 10.0, round_trips: 1 }]);
    }

    #[test]
    fn open_waits_count_for_requests_still_running() {
        let t = Timeline::default();
        let open = OffCpu {
            out_ts: 500,
            wake_ts: 1_000_000,
            in_ts: 1_000_000,
            state: 2,
            sys: sys(nr::READ, 4, 0),
            facts: WaitFacts { fd: Some(FdKind::File), gil: false },
        };
        let d = t.detail(9, 0, 1_000_000, 0, Some(&open));
        assert_eq!(d.breakdown.disk_io, super::ms(1_000_000 - 500));
    }

    #[test]
    fn forgetting_keeps_later_entries() {
        let mut t = Timeline::default();
        t.observe(&off(3, 10, 20, 21, 1, None, WaitFacts::default()));
        t.observe(&off(3, 30, 40, 41, 1, None, WaitFacts::default()));
        t.forget_before(3, 25);
        assert_eq!(t.threads[&3].offcpu.len(), 1);
        t.forget_before(3, 100);
        assert!(!t.threads.contains_key(&3));
    }
    #[test]
    fn on_cpu_alone_equals_the_breakdowns() {
        let ms = 1_000_000;
        let mut t = Timeline::default();
        t.observe(&off(7, 100 * ms, 150 * ms, 160 * ms, 1, sys(nr::FUTEX, -1, 8), WaitFacts::default()));
        t.observe(&off(7, 200 * ms, 200 * ms, 230 * ms, STATE_RUNNING, None, WaitFacts::default()));
        t.observe(&off(7, 300 * ms, 390 * ms, 391 * ms, 1, sys(nr::POLL, 9, 1), sock("10.0.0.2:5432")));
        t.observe(&off(7, 50 * ms, 60 * ms, 120 * ms, 2, None, WaitFacts::default()));
        for (start, end) in [(0, 500 * ms), (110 * ms, 305 * ms), (155 * ms, 156 * ms), (400 * ms, 450 * ms)] {
            assert_eq!(t.on_cpu_ms(7, start, end), t.detail(7, start, end, 0, None).breakdown.on_cpu, "window {start}..{end}");
        }
        assert_eq!(t.on_cpu_ms(8, 0, 10 * ms), 10.0);
    }
}
