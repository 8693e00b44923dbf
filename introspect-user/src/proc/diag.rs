//! Listen backlogs through sock_diag netlink: for each listening TCP or Unix socket, how many
//! connections wait in its accept queue and how many it may hold (its `listen()` backlog).
//! /proc/net/tcp shows the same for TCP but lists every socket of the host (megabytes on a busy
//! one, read every sample); a sock_diag dump asks the kernel for listening sockets only. It
//! answers for introspect's own network namespace.
//!
//! Hand-written rather than a netlink crate's: one request and one reply layout per family
//! (include/uapi/linux/{netlink,sock_diag,inet_diag,unix_diag}.h), read by offset with every
//! length checked; the crates that cover it bring three crates of generic message machinery
//! for these few fields.
use std::{io, mem::size_of};

/// One listening socket's accept queue, at the moment of the dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenQueue {
    pub inode: u64,
    /// Connections waiting for an accept (`sk_ack_backlog`).
    pub queued: u32,
    /// Most it holds (`sk_max_ack_backlog`, the `listen()` backlog capped by somaxconn).
    pub max: u32,
}

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDR: usize = 16;
const TCP_LISTEN: u32 = 10;
const IPPROTO_TCP: u8 = 6;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, then a 48-byte socket id.
const INET_REQ: usize = 56;
/// `struct inet_diag_msg`: rqueue at 56, wqueue at 60, inode at 68.
const INET_MSG: usize = 72;
/// `struct unix_diag_req`: family, protocol, pad, states, ino, show, cookie.
const UNIX_REQ: usize = 24;
/// `struct unix_diag_msg`: family, type, state, pad, ino, cookie; attributes follow.
const UNIX_MSG: usize = 16;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_RQLEN: u16 = 4;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The listening TCP sockets (IPv4 and IPv6).
pub fn tcp_listeners() -> io::Result<Vec<ListenQueue>> {
    let mut out = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        let mut req = [0u8; INET_REQ];
        req[0] = family;
        req[1] = IPPROTO_TCP;
        req[4..8].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
        for msg in dump(&req)? {
            if let (Some(queued), Some(max), Some(inode)) = (u32_at(&msg, 56), u32_at(&msg, 60), u32_at(&msg, 68))
                && msg.len() >= INET_MSG
            {
                out.push(ListenQueue { inode: u64::from(inode), queued, max });
            }
        }
    }
    Ok(out)
}

/// The listening Unix sockets.
pub fn unix_listeners() -> io::Result<Vec<ListenQueue>> {
    let mut req = [0u8; UNIX_REQ];
    req[0] = libc::AF_UNIX as u8;
    req[4..8].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    req[12..16].copy_from_slice(&UDIAG_SHOW_RQLEN.to_ne_bytes());
    Ok(dump(&req)?.iter().filter_map(|msg| unix_queue(msg)).collect())
}

fn unix_queue(msg: &[u8]) -> Option<ListenQueue> {
    let inode = u32_at(msg, 4)?;
    let mut at = UNIX_MSG;
    // Attributes: a 2-byte length (header included), a 2-byte type, the payload, 4-aligned.
    while let (Some(len), Some(ty)) = (u16_at(msg, at), u16_at(msg, at + 2)) {
        let len = usize::from(len);
        if len < 4 {
            return None;
        }
        if ty == UNIX_DIAG_RQLEN {
            return Some(ListenQueue { inode: u64::from(inode), queued: u32_at(msg, at + 4)?, max: u32_at(msg, at + 8)? });
        }
        at += (len + 3) & !3;
    }
    None
}

/// Sends one sock_diag dump request and returns the payload of each answer.
fn dump(req: &[u8]) -> io::Result<Vec<Vec<u8>>> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, NETLINK_SOCK_DIAG) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd nobody else owns.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let mut msg = Vec::with_capacity(NLMSG_HDR + req.len());
    msg.extend(((NLMSG_HDR + req.len()) as u32).to_ne_bytes());
    msg.extend(SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg.extend((NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    msg.extend(1u32.to_ne_bytes());
    msg.extend(0u32.to_ne_bytes());
    msg.extend(req);
    // SAFETY: sockaddr_nl zeroed is the kernel's address (pid 0).
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: valid buffer and address of the sizes given.
    let sent = unsafe {
        libc::sendto(raw, msg.as_ptr().cast(), msg.len(), 0, (&raw const kernel).cast(), size_of::<libc::sockaddr_nl>() as libc::socklen_t)
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: valid buffer of that length.
        let n = unsafe { libc::recv(raw, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut b = &buf[..n as usize];
        while let (Some(len), Some(ty)) = (u32_at(b, 0), u16_at(b, 4)) {
            let len = len as usize;
            if len < NLMSG_HDR || len > b.len() {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "sock_diag: a message longer than what was read"));
            }
            match ty {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let errno = u32_at(b, NLMSG_HDR).map_or(0, |e| -(e as i32));
                    return Err(io::Error::from_raw_os_error(errno));
                }
                _ => out.push(b[NLMSG_HDR..len].to_vec()),
            }
            b = &b[((len + 3) & !3).min(b.len())..];
        }
        if n == 0 {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inode_of(fd: i32) -> u64 {
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        link.to_str().unwrap().trim_start_matches("socket:[").trim_end_matches(']').parse().unwrap()
    }

    #[test]
    fn a_listening_socket_shows_its_queue_and_its_backlog() {
        // A TCP listener with backlog 7 and two connections nobody accepted.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&l);
        // SAFETY: listen(2) again on our own socket changes its backlog.
        assert_eq!(unsafe { libc::listen(fd, 7) }, 0);
        let port = l.local_addr().unwrap().port();
        let _a = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _b = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let inode = inode_of(fd);
        let found = tcp_listeners().expect("sock_diag").into_iter().find(|q| q.inode == inode).expect("our listener");
        assert_eq!((found.queued, found.max), (2, 7));

        let dir = std::env::temp_dir().join(format!("introspect-diag-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let u = std::os::unix::net::UnixListener::bind(&dir).unwrap();
        let ufd = std::os::fd::AsRawFd::as_raw_fd(&u);
        // SAFETY: as above.
        assert_eq!(unsafe { libc::listen(ufd, 5) }, 0);
        let _c = std::os::unix::net::UnixStream::connect(&dir).unwrap();
        let uinode = inode_of(ufd);
        let found = unix_listeners().expect("sock_diag").into_iter().find(|q| q.inode == uinode).expect("our Unix listener");
        let _ = std::fs::remove_file(&dir);
        assert_eq!((found.queued, found.max), (1, 5));
    }
}
