//! What a process's fds are, as /proc tells it (/proc/PID/fd links, and the socket tables for a
//! socket's peer). Only for fds the syscalls did not tell: those open before the watch began, or
//! made by a syscall that is not hooked (pipe, eventfd, fcntl(F_DUPFD)). /proc answers only while
//! the fd is still open, which is why the syscalls are the first source.
use std::{collections::HashMap, fs, time::Instant};

use super::sockets;
use crate::event::FdKind;

/// The socket tables are re-read at most this often: a busy server has thousands of sockets
/// (TIME_WAIT included).
const TABLE_REFRESH: std::time::Duration = std::time::Duration::from_millis(200);
/// Forget remembered sockets past this many (connections come and go).
const MAX_PEERS: usize = 65536;

#[derive(Default)]
pub struct Resolver {
    /// Remote endpoint of sockets by inode ("ip:port" for TCP, "unix:PATH" or "unix"); `None`
    /// for a socket that was in no table when looked for.
    peers: HashMap<u64, Option<String>>,
    tables_read: Option<Instant>,
}

enum Link {
    Socket(u64),
    Other(FdKind),
}

fn parse_link(link: &str) -> Link {
    if let Some(inode) = link.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')).and_then(|i| i.parse::<u64>().ok()) {
        Link::Socket(inode)
    } else if link.starts_with("pipe:[") {
        Link::Other(FdKind::Pipe)
    } else if link.starts_with('/') {
        Link::Other(FdKind::File)
    } else {
        Link::Other(FdKind::Other)
    }
}

impl Resolver {
    /// Reads the socket tables of `pid`'s network namespace, unless they were read just now.
    fn refresh(&mut self, pid: u32, force: bool) {
        if !force && self.tables_read.is_some_and(|t| t.elapsed() < TABLE_REFRESH) {
            return;
        }
        self.tables_read = Some(Instant::now());
        if self.peers.len() > MAX_PEERS {
            self.peers.clear();
        }
        for s in sockets::tcp_sockets(pid) {
            self.peers.insert(s.inode, Some(s.remote.to_string()));
        }
        for u in sockets::unix_sockets(pid) {
            self.peers.insert(u.inode, Some(if u.path.is_empty() { "unix".to_string() } else { format!("unix:{}", u.path) }));
        }
    }

    fn socket(&mut self, pid: u32, inode: u64) -> FdKind {
        if !self.peers.contains_key(&inode) {
            // A socket not seen before: refresh the tables (rate-limited).
            self.refresh(pid, false);
            self.peers.entry(inode).or_insert(None);
        }
        FdKind::Socket { peer: self.peers.get(&inode).cloned().flatten() }
    }

    /// What fd `fd` of `pid` is now; `None` when it is not open (or the process is gone).
    pub fn describe(&mut self, pid: u32, fd: i32) -> Option<FdKind> {
        if fd < 0 {
            return None;
        }
        let link = fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
        Some(match parse_link(&link.to_string_lossy()) {
            Link::Socket(inode) => self.socket(pid, inode),
            Link::Other(kind) => kind,
        })
    }

    /// Every open fd of `pid` and what it is (the socket tables read once for all of them).
    pub fn all(&mut self, pid: u32) -> Vec<(i32, FdKind)> {
        let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
        let links: Vec<(i32, Link)> = dir
            .filter_map(|e| {
                let e = e.ok()?;
                let fd = e.file_name().to_str()?.parse().ok()?;
                Some((fd, parse_link(&fs::read_link(e.path()).ok()?.to_string_lossy())))
            })
            .collect();
        if links.iter().any(|(_, l)| matches!(l, Link::Socket(ino) if !self.peers.contains_key(ino))) {
            self.refresh(pid, true);
        }
        let mut out: Vec<(i32, FdKind)> = links
            .into_iter()
            .map(|(fd, l)| match l {
                Link::Socket(inode) => (fd, FdKind::Socket { peer: self.peers.get(&inode).cloned().flatten() }),
                Link::Other(kind) => (fd, kind),
            })
            .collect();
        out.sort_by_key(|(fd, _)| *fd);
        out
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Read, net::TcpListener, os::fd::AsRawFd};

    use super::*;

    #[test]
    fn tells_files_pipes_and_sockets_with_their_peer() {
        let me = std::process::id();
        let file = fs::File::open("/proc/self/status").unwrap();
        let (mut r, w) = std::io::pipe().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let mut res = Resolver::default();
        assert_eq!(res.describe(me, file.as_raw_fd()), Some(FdKind::File));
        assert_eq!(res.describe(me, r.as_raw_fd()), Some(FdKind::Pipe));
        let want = FdKind::Socket { peer: Some(listener.local_addr().unwrap().to_string()) };
        assert_eq!(res.describe(me, client.as_raw_fd()), Some(want.clone()));
        let all = res.all(me);
        assert!(all.contains(&(client.as_raw_fd(), want)), "{all:?}");
        assert!(all.contains(&(file.as_raw_fd(), FdKind::File)), "{all:?}");
        drop(w);
        let _ = r.read(&mut [0u8; 1]);
        assert_eq!(res.describe(me, 1 << 20), None);
    }
}
