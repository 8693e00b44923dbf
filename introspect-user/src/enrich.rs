//! Enrich: facts about waits that only the live host can tell — what an fd is (socket and its
//! peer, file, pipe) and whether a futex is the GIL — attached to events before the pipeline, so
//! the pipeline stays pure and recordings replay without /proc.
use std::{collections::HashMap, fs};

use crate::{
    event::{Event, FdKind, WaitFacts},
    python, target,
};

const TABLE_REFRESH: std::time::Duration = std::time::Duration::from_millis(200);
/// Forget remembered sockets past this many (connections come and go).
const MAX_PEERS: usize = 65536;

#[derive(Default)]
pub struct Enricher {
    /// GIL address range per process; `None` once discovery failed (not CPython, unknown build).
    gil: HashMap<u32, Option<(u64, u64)>>,
    /// Remote endpoint of sockets by inode ("ip:port" for TCP, "unix:PATH" or "unix"); `None`
    /// for a socket that was in no table when looked for.
    peers: HashMap<u64, Option<String>>,
    /// When the socket tables were last read: a busy server has thousands of sockets (TIME_WAIT
    /// included), so they are re-read at most every `TABLE_REFRESH`.
    tables_read: Option<std::time::Instant>,
    /// Warnings for the user, drained by the caller.
    pub warnings: Vec<String>,
}

impl Enricher {
    /// The GIL's address range in `pid`, found once from the runtime the host's Python reader
    /// located (`None` when it could not read the process).
    fn gil_of(&mut self, pid: u32, runtime: Option<&python::Runtime>) -> Option<(u64, u64)> {
        if let Some(g) = self.gil.get(&pid) {
            return *g;
        }
        let found = match runtime {
            Some(rt) => python::gil_range(pid, rt).map_err(|e| e.to_string()),
            None => Err("its interpreter could not be read".to_string()),
        };
        let g = match found {
            Ok(range) => Some(range),
            Err(e) => {
                self.warnings.push(format!("process {pid}: GIL waits cannot be told from other lock waits: {e}"));
                None
            }
        };
        self.gil.insert(pid, g);
        g
    }

    /// Whether enriching `ev` needs the process's Python runtime (a futex wait not yet
    /// classified for that process).
    pub fn needs_runtime(&self, ev: &Event) -> Option<u32> {
        match ev {
            Event::OffCpu { hdr, sys: Some(sys), .. }
                if sys.arg != introspect_common::CLIENT_CONN && sys.nr == crate::breakdown::nr::FUTEX && !self.gil.contains_key(&hdr.tgid) =>
            {
                Some(hdr.tgid)
            }
            _ => None,
        }
    }

    fn fd_kind(&mut self, pid: u32, fd: i32) -> Option<FdKind> {
        if fd < 0 {
            return None;
        }
        let link = fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
        let link = link.to_string_lossy();
        Some(if let Some(inode) = link.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')).and_then(|i| i.parse::<u64>().ok()) {
            if !self.peers.contains_key(&inode) && self.tables_read.is_none_or(|t| t.elapsed() >= TABLE_REFRESH) {
                // A socket not seen before: refresh the tables (the process's network namespace).
                self.tables_read = Some(std::time::Instant::now());
                if self.peers.len() > MAX_PEERS {
                    self.peers.clear();
                }
                for s in target::tcp_sockets(pid) {
                    self.peers.insert(s.inode, Some(s.remote.to_string()));
                }
                for (ino, path) in target::unix_sockets(pid) {
                    self.peers.insert(ino, Some(if path.is_empty() { "unix".to_string() } else { format!("unix:{path}") }));
                }
                self.peers.entry(inode).or_insert(None);
            }
            FdKind::Socket { peer: self.peers.get(&inode).cloned().flatten() }
        } else if link.starts_with("pipe:[") {
            FdKind::Pipe
        } else if link.starts_with('/') {
            FdKind::File
        } else {
            FdKind::Other
        })
    }

    /// `runtime`: the Python runtime of the event's process, when `needs_runtime` asked for it.
    pub fn enrich(&mut self, ev: &mut Event, runtime: Option<&python::Runtime>) {
        match ev {
            Event::OffCpu { hdr, sys: Some(sys), facts, .. } => {
                *facts = if sys.arg == introspect_common::CLIENT_CONN {
                    // The request's own connection: the kernel already knows it is a socket.
                    WaitFacts { fd: Some(FdKind::Socket { peer: Some("client".into()) }), gil: false }
                } else if sys.nr == crate::breakdown::nr::FUTEX {
                    let gil = self.gil_of(hdr.tgid, runtime).is_some_and(|(lo, hi)| (lo..hi).contains(&sys.arg));
                    WaitFacts { fd: None, gil }
                } else {
                    WaitFacts { fd: self.fd_kind(hdr.tgid, sys.fd), gil: false }
                };
            }
            // A forked worker has its parent's address space: the same GIL address.
            Event::Fork { hdr, child } => {
                if let Some(g) = self.gil.get(&hdr.tgid).copied() {
                    self.gil.insert(*child, g);
                }
            }
            Event::Exit { pid, .. } => {
                self.gil.remove(pid);
            }
            _ => {}
        }
    }
}
