//! Kills: why a worker died with requests in flight — who signalled it and what the server's
//! deadline was, what the OOM killer said, how the process left — and when a running request's
//! worker is going to be killed. Pure: it learns everything from events (the live host adds
//! what servers are and their heartbeats as events of their own, so replays know them too).
pub mod server;

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};
pub use server::{Deadline, Kind, Server};

use crate::{event::Event, stacks::Frame};

pub const SIGHUP: i32 = 1;
pub const SIGINT: i32 = 2;
pub const SIGQUIT: i32 = 3;
pub const SIGABRT: i32 = 6;
#[cfg(test)]
pub const SIGKILL: i32 = 9;
pub const SIGTERM: i32 = 15;

/// The signal's name (signal(7), x86_64).
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        31 => "SIGSYS",
        n => return format!("SIG{n}"),
    };
    name.to_string()
}

/// Signals that can end a request in flight: the servers' kill and stop signals, faults,
/// resource limits. SIGHUP, SIGUSR1/2 are what servers use to reload or reopen logs: a worker
/// they kill is still reported when it dies.
fn ends_requests(sig: i32) -> bool {
    matches!(sig, 2 | 3 | 4 | 6 | 7 | 8 | 9 | 11 | 14 | 15 | 24 | 25 | 31)
}

/// Why a worker was killed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// gunicorn's arbiter: the worker's heartbeat was older than --timeout (SIGABRT, then
    /// SIGKILL a second later if it still lived).
    GunicornTimeout,
    /// uWSGI's master: the request ran past --harakiri.
    UwsgiHarakiri,
    /// The kernel's OOM killer.
    Oom,
    /// The server stopping or reloading its workers.
    GracefulStop,
    /// Someone outside the server's process tree.
    External,
    /// The worker itself: a fault (SIGSEGV, SIGBUS, ...), abort(), an exit with a request open.
    Crash,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::GunicornTimeout => "gunicorn_timeout",
            Reason::UwsgiHarakiri => "uwsgi_harakiri",
            Reason::Oom => "oom",
            Reason::GracefulStop => "graceful_stop",
            Reason::External => "external",
            Reason::Crash => "crash",
        }
    }
}

/// A fatal signal sent to a watched process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SignalRec {
    #[serde(skip)]
    pub ts: u64,
    pub signal: String,
    pub signal_number: i32,
    pub sender_pid: u32,
    pub sender_comm: String,
    #[serde(skip)]
    pub code: i32,
}

/// The victim's memory when the OOM killer chose it, in kB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OomRss {
    pub total_vm_kb: u64,
    pub anon_rss_kb: u64,
    pub file_rss_kb: u64,
    pub shmem_rss_kb: u64,
}

/// What is known about a request's kill besides the request itself.
#[derive(Clone, Debug, PartialEq)]
pub struct Kill {
    pub reason: Reason,
    /// The fatal signal that ended it (the last one); `None` when the process left on its own.
    pub signal: Option<SignalRec>,
    /// Every fatal signal its process got while it ran (SIGABRT then SIGKILL, say).
    pub signals: Vec<SignalRec>,
    pub exit_code: Option<i32>,
    pub oom: Option<OomRss>,
    /// Its thread's stack as the fatal signal reached it.
    pub stack: Option<Vec<Frame>>,
}

/// Signals kept per process (the last ones).
const MAX_SIGNALS: usize = 16;

#[derive(Default)]
pub struct Kills {
    parents: HashMap<u32, u32>,
    servers: HashMap<u32, Server>,
    signals: HashMap<u32, VecDeque<SignalRec>>,
    /// Masters told to stop or reload (TERM, INT, QUIT, HUP), and when.
    stopping: HashMap<u32, u64>,
    oom: HashMap<u32, OomRss>,
    exit_codes: HashMap<u32, i32>,
    heartbeats: HashMap<u32, u64>,
    death_stacks: HashMap<u32, Vec<Frame>>,
    /// Which process each serving thread belongs to (signals to one thread name only it).
    thread_pid: HashMap<u32, u32>,
}

impl Kills {
    pub fn observe(&mut self, ev: &Event) {
        match ev {
            Event::Proc { pid, ppid, .. } => {
                self.parents.insert(*pid, *ppid);
            }
            Event::Fork { hdr, child } => {
                self.parents.insert(*child, hdr.tgid);
            }
            Event::Server { pid, server, .. } => {
                self.servers.insert(*pid, server.clone());
            }
            Event::Data { hdr, head: Some(crate::event::Head::Request(_)), .. } => {
                self.thread_pid.insert(hdr.tid, hdr.tgid);
            }
            Event::Signal { hdr, target, sig, code, sender_comm, .. } => {
                let victim = if self.parents.contains_key(target) || self.servers.contains_key(target) {
                    *target
                } else if *target == hdr.tid {
                    hdr.tgid
                } else {
                    match self.thread_pid.get(target) {
                        Some(&pid) => pid,
                        None => *target,
                    }
                };
                if self.servers.contains_key(&victim) && matches!(*sig, SIGTERM | SIGINT | SIGQUIT | SIGHUP) {
                    self.stopping.entry(victim).or_insert(hdr.ts);
                }
                let rec = SignalRec {
                    ts: hdr.ts,
                    signal: signal_name(*sig),
                    signal_number: *sig,
                    sender_pid: hdr.tgid,
                    sender_comm: sender_comm.clone(),
                    code: *code,
                };
                let list = self.signals.entry(victim).or_default();
                if list.len() == MAX_SIGNALS {
                    list.pop_front();
                }
                list.push_back(rec);
            }
            Event::Oom { pid, rss, .. } => {
                self.oom.insert(*pid, *rss);
            }
            Event::ExitCall { hdr, code } => {
                self.exit_codes.insert(hdr.tgid, *code);
            }
            Event::Heartbeat { pid, at, .. } => {
                self.heartbeats.insert(*pid, *at);
            }
            Event::Stack { hdr, at_signal: true, frames, .. } => {
                self.death_stacks.insert(hdr.tid, frames.clone());
            }
            _ => {}
        }
    }

    /// Forgets a process that exited (after its requests were reported).
    pub fn forget(&mut self, pid: u32) {
        self.signals.remove(&pid);
        self.oom.remove(&pid);
        self.exit_codes.remove(&pid);
        self.heartbeats.remove(&pid);
        self.stopping.remove(&pid);
        self.servers.remove(&pid);
        self.parents.remove(&pid);
        self.thread_pid.retain(|_, p| *p != pid);
    }

    /// The last heartbeat of `pid` known, to tell whether a newer one is news.
    pub fn heartbeat(&self, pid: u32) -> Option<u64> {
        self.heartbeats.get(&pid).copied()
    }

    /// The master of a worker and how it kills.
    pub fn server_of(&self, pid: u32) -> Option<(u32, &Server)> {
        let master = *self.parents.get(&pid)?;
        self.servers.get(&master).map(|s| (master, s))
    }

    /// When the server will kill the worker running a request that started at `start_ns`, and
    /// why; `None` when it will not (or it cannot be told).
    pub fn deadline(&self, pid: u32, start_ns: u64) -> Option<(u64, Reason)> {
        let (_, server) = self.server_of(pid)?;
        match server.deadline {
            Deadline::Heartbeat { timeout_ms } => Some((self.heartbeats.get(&pid)? + timeout_ms * 1_000_000, Reason::GunicornTimeout)),
            Deadline::Request { limit_ms, .. } => Some((start_ns + limit_ms * 1_000_000, Reason::UwsgiHarakiri)),
            Deadline::None | Deadline::Unknown { .. } => None,
        }
    }

    /// Whether a signal that ends requests reached `pid` between `from` and `to`.
    pub fn signalled_during(&self, pid: u32, from: u64, to: u64) -> bool {
        self.signals.get(&pid).is_some_and(|l| l.iter().any(|s| ends_requests(s.signal_number) && (from..=to).contains(&s.ts)))
    }

    /// The kill of a request of `pid`'s thread `tid` that ran from `start` to `end`.
    pub fn kill(&mut self, pid: u32, tid: u32, start: u64, end: u64) -> Kill {
        let signals: Vec<SignalRec> =
            self.signals.get(&pid).map(|l| l.iter().filter(|s| s.ts >= start && s.ts <= end).cloned().collect()).unwrap_or_default();
        let last = signals.iter().rev().find(|s| ends_requests(s.signal_number)).or(signals.last()).cloned();
        let oom = self.oom.get(&pid).copied();
        let reason = self.reason(pid, last.as_ref(), &signals, oom.is_some());
        Kill { reason, signal: last, signals, exit_code: self.exit_codes.get(&pid).copied(), oom, stack: self.death_stacks.remove(&tid) }
    }

    fn reason(&self, pid: u32, last: Option<&SignalRec>, signals: &[SignalRec], oom: bool) -> Reason {
        if oom {
            return Reason::Oom;
        }
        // Left on its own (an exit with a request open), or a fault / abort() of its own.
        let Some(sig) = last else { return Reason::Crash };
        if sig.sender_pid == pid {
            return Reason::Crash;
        }
        let master = self.parents.get(&pid).copied();
        let in_tree = |p: u32| Some(p) == master || self.parents.get(&p).is_some_and(|pp| Some(*pp) == master);
        if !in_tree(sig.sender_pid) {
            return Reason::External;
        }
        if master.is_some_and(|m| self.stopping.get(&m).is_some_and(|&t| t <= sig.ts)) {
            return Reason::GracefulStop;
        }
        match self.server_of(pid).map(|(_, s)| s.kind) {
            // gunicorn's arbiter sends SIGABRT only at a timeout, and SIGKILL a tick later.
            Some(Kind::Gunicorn) if sig.signal_number == SIGABRT || signals.iter().any(|s| s.signal_number == SIGABRT) => Reason::GunicornTimeout,
            Some(Kind::Uwsgi) if matches!(self.server_of(pid).map(|(_, s)| &s.deadline), Some(Deadline::Request { .. })) => Reason::UwsgiHarakiri,
            _ => Reason::GracefulStop,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Hdr;

    const MASTER: u32 = 10;
    const WORKER: u32 = 11;

    fn h(tgid: u32, ts: u64) -> Hdr {
        Hdr { tgid, tid: tgid, ts }
    }

    fn setup(kind: Kind, deadline: Deadline) -> Kills {
        let mut k = Kills::default();
        k.observe(&Event::Proc { hdr: h(MASTER, 0), pid: MASTER, ppid: 1 });
        k.observe(&Event::Server { hdr: h(MASTER, 0), pid: MASTER, server: Server { kind, deadline, source: "test".into() } });
        k.observe(&Event::Fork { hdr: h(MASTER, 1), child: WORKER });
        k
    }

    fn signal(from: u32, to: u32, sig: i32, ts: u64) -> Event {
        Event::Signal { hdr: h(from, ts), target: to, sig, code: 0, group: 1, sender_comm: "sender".into() }
    }

    #[test]
    fn gunicorn_timeouts_and_their_deadline() {
        let mut k = setup(Kind::Gunicorn, Deadline::Heartbeat { timeout_ms: 3_000 });
        assert_eq!(k.deadline(WORKER, 100), None, "no heartbeat seen yet");
        k.observe(&Event::Heartbeat { hdr: h(WORKER, 50), pid: WORKER, at: 50 });
        assert_eq!(k.deadline(WORKER, 100), Some((50 + 3_000_000_000, Reason::GunicornTimeout)));
        k.observe(&signal(MASTER, WORKER, SIGABRT, 3_500_000_000));
        k.observe(&signal(MASTER, WORKER, SIGKILL, 4_500_000_000));
        assert!(k.signalled_during(WORKER, 100, 5_000_000_000));
        let kill = k.kill(WORKER, WORKER, 100, 5_000_000_000);
        assert_eq!((kill.reason, kill.signal.as_ref().map(|s| s.signal_number), kill.signals.len()), (Reason::GunicornTimeout, Some(SIGKILL), 2));
        assert_eq!(kill.signals[0].signal, "SIGABRT");
    }

    #[test]
    fn stops_strangers_crashes_and_the_oom_killer() {
        // The master told to stop, then killing its workers.
        let mut k = setup(Kind::Gunicorn, Deadline::Heartbeat { timeout_ms: 30_000 });
        k.observe(&signal(1, MASTER, SIGTERM, 100));
        k.observe(&signal(MASTER, WORKER, SIGTERM, 110));
        k.observe(&signal(MASTER, WORKER, SIGKILL, 200));
        assert_eq!(k.kill(WORKER, WORKER, 50, 300).reason, Reason::GracefulStop);
        // An operator's kill -9.
        let mut k = setup(Kind::Gunicorn, Deadline::Heartbeat { timeout_ms: 30_000 });
        k.observe(&signal(999, WORKER, SIGKILL, 200));
        let kill = k.kill(WORKER, WORKER, 50, 300);
        assert_eq!((kill.reason, kill.signal.unwrap().sender_pid), (Reason::External, 999));
        // A segfault: the kernel signals the faulting thread in its own context.
        let mut k = setup(Kind::Uwsgi, Deadline::Request { limit_ms: 3_000, graceful_ms: None, graceful_signal: None });
        k.observe(&Event::Signal {
            hdr: Hdr { tgid: WORKER, tid: 12, ts: 200 },
            target: 12,
            sig: 11,
            code: 1,
            group: 0,
            sender_comm: "python".into(),
        });
        assert_eq!(k.kill(WORKER, 12, 50, 300).reason, Reason::Crash);
        // The OOM killer: SIGKILL from the kernel, in the context of whoever allocated.
        let mut k = setup(Kind::Uwsgi, Deadline::None);
        k.observe(&Event::Oom { hdr: h(WORKER, 190), pid: WORKER, rss: OomRss { anon_rss_kb: 200_000, ..OomRss::default() } });
        k.observe(&Event::Signal { hdr: h(WORKER, 200), target: WORKER, sig: SIGKILL, code: 128, group: 1, sender_comm: "python".into() });
        let kill = k.kill(WORKER, WORKER, 50, 300);
        assert_eq!((kill.reason, kill.oom.map(|o| o.anon_rss_kb)), (Reason::Oom, Some(200_000)));
        // A harakiri.
        let mut k = setup(Kind::Uwsgi, Deadline::Request { limit_ms: 3_000, graceful_ms: None, graceful_signal: None });
        assert_eq!(k.deadline(WORKER, 1_000), Some((3_000_001_000, Reason::UwsgiHarakiri)));
        k.observe(&signal(MASTER, WORKER, SIGKILL, 3_400_000_000));
        k.observe(&Event::ExitCall { hdr: h(WORKER, 1), code: 0 });
        let kill = k.kill(WORKER, WORKER, 1_000, 3_500_000_000);
        assert_eq!((kill.reason, kill.exit_code), (Reason::UwsgiHarakiri, Some(0)));
        // A worker that left with a request open, no signal.
        let mut k = setup(Kind::Gunicorn, Deadline::None);
        assert_eq!(k.kill(WORKER, WORKER, 1, 2).reason, Reason::Crash);
        assert!(!k.signalled_during(WORKER, 1, 2));
    }
}
