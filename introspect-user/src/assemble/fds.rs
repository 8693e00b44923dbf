//! What every fd of the watched processes is, kept from the syscalls that make and close them
//! (accept, connect, socket, openat, dup*, close), inherited at fork, dropped at exit; and from
//! /proc for fds those did not show (open before the watch, or made by an unhooked syscall),
//! which arrive as `Fd { origin: Proc }` events.
//!
//! Every close of a watched process is seen, so an fd number in the table is never stale: an fd
//! made by a syscall that is not hooked has a number no entry has, and is looked up in /proc.
use std::collections::HashMap;

use introspect_common::syscalls::nr;

use crate::event::{Event, FdKind, FdOrigin};

/// epoll_ctl's operations.
const EPOLL_CTL_ADD: u64 = 1;
const EPOLL_CTL_DEL: u64 = 2;

#[derive(Default)]
pub struct FdTable {
    procs: HashMap<u32, HashMap<i32, FdKind>>,
    /// The fds each epoll set holds, in the order they were added, per process.
    epoll: HashMap<u32, HashMap<i32, Vec<i32>>>,
}

impl FdTable {
    pub fn get(&self, pid: u32, fd: i32) -> Option<&FdKind> {
        self.procs.get(&pid)?.get(&fd)
    }

    /// The peer of a socket fd, when known.
    pub fn peer(&self, pid: u32, fd: i32) -> Option<String> {
        match self.get(pid, fd)? {
            FdKind::Socket { peer } => peer.clone(),
            _ => None,
        }
    }

    /// The fd an epoll wait on `epfd` is for: the first socket its set holds, else its first fd.
    pub fn epoll_member(&self, pid: u32, epfd: i32) -> Option<i32> {
        let members = self.epoll.get(&pid)?.get(&epfd)?;
        members.iter().copied().find(|&fd| matches!(self.get(pid, fd), Some(FdKind::Socket { .. }))).or_else(|| members.first().copied())
    }

    fn closed(&mut self, pid: u32, fd: i32) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.remove(&fd);
        }
        if let Some(sets) = self.epoll.get_mut(&pid) {
            sets.remove(&fd);
            // The kernel drops a closed fd from every set (when it was the last reference).
            for members in sets.values_mut() {
                members.retain(|&m| m != fd);
            }
        }
    }

    fn set(&mut self, pid: u32, fd: i32, kind: FdKind) {
        self.procs.entry(pid).or_default().insert(fd, kind);
    }

    pub fn observe(&mut self, ev: &Event) {
        match ev {
            Event::Accept { hdr, fd, peer, .. } => self.set(hdr.tgid, *fd, FdKind::Socket { peer: peer.map(|p| p.to_string()) }),
            Event::Connect { hdr, fd, peer } => self.set(hdr.tgid, *fd, FdKind::Socket { peer: peer.clone() }),
            Event::Fd { hdr, fd, origin } => {
                let kind = match origin {
                    FdOrigin::Open => Some(FdKind::File),
                    FdOrigin::Socket { .. } => Some(FdKind::Socket { peer: None }),
                    FdOrigin::Dup { from } => self.get(hdr.tgid, *from).cloned(),
                    FdOrigin::Proc { kind } => Some(kind.clone()),
                };
                match kind {
                    Some(k) => self.set(hdr.tgid, *fd, k),
                    // A copy of an fd not known: not known either (dup2 over a known one).
                    None => {
                        if let Some(p) = self.procs.get_mut(&hdr.tgid) {
                            p.remove(fd);
                        }
                    }
                }
            }
            Event::Close { hdr, fd } => self.closed(hdr.tgid, *fd),
            Event::Syscall { hdr, sys, ret: 0, .. } if sys.nr == nr::EPOLL_CTL => {
                let (op, fd) = (sys.arg >> 32, sys.arg as u32 as i32);
                let members = self.epoll.entry(hdr.tgid).or_default().entry(sys.fd).or_default();
                match op {
                    EPOLL_CTL_ADD if !members.contains(&fd) => members.push(fd),
                    EPOLL_CTL_DEL => members.retain(|&m| m != fd),
                    _ => {}
                }
            }
            // A child starts with a copy of its parent's fds.
            Event::Fork { hdr, child } => {
                if let Some(parent) = self.procs.get(&hdr.tgid) {
                    let copy = parent.clone();
                    self.procs.insert(*child, copy);
                }
                if let Some(sets) = self.epoll.get(&hdr.tgid) {
                    let copy = sets.clone();
                    self.epoll.insert(*child, copy);
                }
            }
            Event::Exit { pid, .. } => {
                self.procs.remove(pid);
                self.epoll.remove(pid);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Hdr;

    fn h(pid: u32) -> Hdr {
        Hdr { tgid: pid, tid: pid, ts: 1 }
    }

    #[test]
    fn fds_are_what_their_syscalls_made_until_closed() {
        let mut t = FdTable::default();
        let db = Some("127.0.0.1:5432".to_string());
        t.observe(&Event::Fd { hdr: h(1), fd: 5, origin: FdOrigin::Socket { family: 2 } });
        assert_eq!(t.get(1, 5), Some(&FdKind::Socket { peer: None }));
        t.observe(&Event::Connect { hdr: h(1), fd: 5, peer: db.clone() });
        assert_eq!(t.peer(1, 5), db);
        t.observe(&Event::Fd { hdr: h(1), fd: 6, origin: FdOrigin::Open });
        t.observe(&Event::Fd { hdr: h(1), fd: 7, origin: FdOrigin::Dup { from: 5 } });
        assert_eq!(t.peer(1, 7), db);
        // dup2 of an unknown fd over a known one: no longer known.
        t.observe(&Event::Fd { hdr: h(1), fd: 6, origin: FdOrigin::Dup { from: 40 } });
        assert_eq!(t.get(1, 6), None);
        t.observe(&Event::Fork { hdr: h(1), child: 2 });
        t.observe(&Event::Close { hdr: h(1), fd: 5 });
        assert_eq!(t.get(1, 5), None);
        assert_eq!(t.peer(2, 5), db, "the child keeps its inherited copy");
        t.observe(&Event::Fd { hdr: h(2), fd: 9, origin: FdOrigin::Proc { kind: FdKind::Pipe } });
        assert_eq!(t.get(2, 9), Some(&FdKind::Pipe));
        t.observe(&Event::Exit { hdr: h(2), pid: 2 });
        assert_eq!(t.get(2, 9), None);
    }

    #[test]
    fn an_epoll_wait_is_for_the_first_socket_its_set_holds() {
        let mut t = FdTable::default();
        let ctl = |op: u64, fd: i32| Event::Syscall {
            hdr: h(1),
            sys: crate::event::Sys { nr: nr::EPOLL_CTL, fd: 9, arg: (op << 32) | fd as u32 as u64 },
            enter_ts: 0,
            ret: 0,
        };
        t.observe(&Event::Fd { hdr: h(1), fd: 6, origin: FdOrigin::Open });
        t.observe(&Event::Connect { hdr: h(1), fd: 5, peer: Some("127.0.0.1:5432".into()) });
        t.observe(&ctl(EPOLL_CTL_ADD, 6));
        t.observe(&ctl(EPOLL_CTL_ADD, 5));
        assert_eq!(t.epoll_member(1, 9), Some(5));
        t.observe(&ctl(EPOLL_CTL_DEL, 5));
        assert_eq!(t.epoll_member(1, 9), Some(6));
        t.observe(&ctl(EPOLL_CTL_ADD, 5));
        t.observe(&Event::Close { hdr: h(1), fd: 5 });
        assert_eq!(t.epoll_member(1, 9), Some(6), "a closed fd leaves every set");
        t.observe(&Event::Close { hdr: h(1), fd: 9 });
        assert_eq!(t.epoll_member(1, 9), None);
    }
}
