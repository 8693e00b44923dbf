//! Targets: which processes to watch, found in /proc: a pid and its descendants, or the
//! processes listening on a TCP port or a Unix socket; plus the server ports, the Unix sockets
//! and the connections already open.
use std::{
    collections::{BTreeSet, HashMap, HashSet},
    fs,
    net::SocketAddr,
    path::Path,
};

use super::{
    cmdline::ppid_of,
    sockets::{TCP_ESTABLISHED, TCP_LISTEN, TcpSocket, socket_fds, tcp_sockets, unix_sockets},
};

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("no process is listening on TCP port {0}")]
    NoListener(u16),
    #[error("no process is listening on the Unix socket {0}")]
    NoUnixListener(String),
}

fn all_pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

pub fn exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// `roots` and every process descended from them (processes, not threads).
pub fn with_descendants(roots: &[u32]) -> BTreeSet<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for pid in all_pids() {
        if let Some(ppid) = fs::read_to_string(format!("/proc/{pid}/stat")).ok().as_deref().and_then(ppid_of) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut out = BTreeSet::new();
    let mut stack: Vec<u32> = roots.to_vec();
    while let Some(p) = stack.pop() {
        if out.insert(p)
            && let Some(c) = children.get(&p)
        {
            stack.extend(c);
        }
    }
    out
}

/// The processes holding one of the sockets `inodes`.
fn holders(inodes: &HashSet<u64>) -> Vec<u32> {
    all_pids().into_iter().filter(|&pid| socket_fds(pid).iter().any(|(_, ino)| inodes.contains(ino))).collect()
}

/// The processes holding a socket listening on `port`.
pub fn listeners(port: u16) -> Result<Vec<u32>, TargetError> {
    let inodes: HashSet<u64> =
        tcp_sockets(std::process::id()).into_iter().filter(|s| s.state == TCP_LISTEN && s.local.port() == port).map(|s| s.inode).collect();
    let pids = holders(&inodes);
    if pids.is_empty() {
        return Err(TargetError::NoListener(port));
    }
    Ok(pids)
}

/// The processes holding a Unix socket listening at `path` (as bound, or the same file reached
/// another way: a relative bind, a symlinked directory).
pub fn unix_listeners(path: &Path) -> Result<Vec<u32>, TargetError> {
    let wanted = path.canonicalize().ok();
    let same = |bound: &str| Path::new(bound) == path || (wanted.is_some() && Path::new(bound).canonicalize().ok() == wanted);
    let inodes: HashSet<u64> =
        unix_sockets(std::process::id()).into_iter().filter(|u| u.listening && !u.path.is_empty() && same(&u.path)).map(|u| u.inode).collect();
    let pids = holders(&inodes);
    if pids.is_empty() {
        return Err(TargetError::NoUnixListener(path.display().to_string()));
    }
    Ok(pids)
}

/// What the watched processes serve: their listening ports, and the TCP connections they already
/// hold: accepted ones (keep-alive connections opened before the watch began) and their own
/// (a database connection a worker keeps open).
pub struct Served {
    pub ports: BTreeSet<u16>,
    /// Paths of the listening Unix sockets they hold ("@name": abstract; "" unnamed).
    pub unix: BTreeSet<String>,
    /// Their listening sockets' inodes, each named as the summary names it (`ADDR:PORT`,
    /// `unix:PATH`).
    pub listen_inodes: Vec<(u64, String)>,
    pub conns: Vec<(u32, i32, SocketAddr)>,
    /// (pid, fd) of established connections whose local port is not a served one.
    pub outbound: Vec<(u32, i32)>,
}

pub fn served(pids: &BTreeSet<u32>) -> Served {
    let Some(&any) = pids.iter().next() else {
        return Served { ports: BTreeSet::new(), unix: BTreeSet::new(), listen_inodes: Vec::new(), conns: Vec::new(), outbound: Vec::new() };
    };
    let sockets = tcp_sockets(any);
    let listening_unix: HashMap<u64, String> = unix_sockets(any).into_iter().filter(|u| u.listening).map(|u| (u.inode, u.path)).collect();
    let held_unix: BTreeSet<(u64, String)> =
        pids.iter().flat_map(|&pid| socket_fds(pid)).filter_map(|(_, ino)| Some((ino, listening_unix.get(&ino)?.clone()))).collect();
    let unix = held_unix.iter().map(|(_, path)| path.clone()).collect();
    let by_inode: HashMap<u64, &TcpSocket> = sockets.iter().map(|s| (s.inode, s)).collect();
    let held: Vec<(u32, i32, &TcpSocket)> = pids
        .iter()
        .flat_map(|&pid| socket_fds(pid).into_iter().map(move |(fd, ino)| (pid, fd, ino)))
        .filter_map(|(pid, fd, ino)| by_inode.get(&ino).map(|s| (pid, fd, *s)))
        .collect();
    let ports: BTreeSet<u16> = held.iter().filter(|(_, _, s)| s.state == TCP_LISTEN).map(|(_, _, s)| s.local.port()).collect();
    let established = || held.iter().filter(|(_, _, s)| s.state == TCP_ESTABLISHED);
    let conns = established().filter(|(_, _, s)| ports.contains(&s.local.port())).map(|(pid, fd, s)| (*pid, *fd, s.remote)).collect();
    let outbound = established().filter(|(_, _, s)| !ports.contains(&s.local.port())).map(|(pid, fd, _)| (*pid, *fd)).collect();
    let mut listen_inodes: Vec<(u64, String)> =
        held.iter().filter(|(_, _, s)| s.state == TCP_LISTEN).map(|(_, _, s)| (s.inode, s.local.to_string())).collect();
    listen_inodes.extend(held_unix.into_iter().filter(|(_, p)| !p.is_empty()).map(|(ino, p)| (ino, format!("unix:{p}"))));
    listen_inodes.sort();
    listen_inodes.dedup();
    Served { ports, unix, listen_inodes, conns, outbound }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_own_descendants() {
        let me = std::process::id();
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let set = with_descendants(&[me]);
        let _ = child.kill();
        let _ = child.wait();
        assert!(set.contains(&me) && set.contains(&child.id()), "{set:?}");
    }
}
