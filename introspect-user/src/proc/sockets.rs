//! Sockets seen through /proc: the host's TCP tables (/proc/PID/net/tcp{,6}, in the process's
//! network namespace), its Unix sockets, and the socket inodes a process holds.
use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

/// One row of /proc/net/tcp{,6}.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpSocket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// TCP state as in include/net/tcp_states.h (1 = ESTABLISHED, 10 = LISTEN).
    pub state: u8,
    pub inode: u64,
}

pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_LISTEN: u8 = 10;

fn parse_addr(hex: &str) -> Option<SocketAddr> {
    let (ip, port) = hex.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    // /proc/net/tcp prints each 32-bit word of the address in host (little-endian) order.
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?.swap_bytes())),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                let word = u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).ok()?;
                chunk.copy_from_slice(&word.to_le_bytes());
            }
            let v6 = Ipv6Addr::from(bytes);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

pub fn parse_proc_net_tcp(text: &str) -> Vec<TcpSocket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            Some(TcpSocket {
                local: parse_addr(cols.get(1)?)?,
                remote: parse_addr(cols.get(2)?)?,
                state: u8::from_str_radix(cols.get(3)?, 16).ok()?,
                inode: cols.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

/// All TCP sockets of the host's network namespace (as seen by `pid`).
pub fn tcp_sockets(pid: u32) -> Vec<TcpSocket> {
    ["tcp", "tcp6"].iter().filter_map(|f| fs::read_to_string(format!("/proc/{pid}/net/{f}")).ok()).flat_map(|t| parse_proc_net_tcp(&t)).collect()
}

/// One row of /proc/net/unix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnixSocket {
    pub inode: u64,
    /// The bound path ("@name" for the abstract namespace), or "".
    pub path: String,
    /// Listening (`__SO_ACCEPTCON` in its flags).
    pub listening: bool,
}

/// The flag /proc/net/unix shows on listening sockets (include/linux/net.h `__SO_ACCEPTCON`).
const SO_ACCEPTCON: u32 = 1 << 16;

pub fn parse_proc_net_unix(text: &str) -> Vec<UnixSocket> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            Some(UnixSocket {
                inode: cols.get(6)?.parse().ok()?,
                path: cols.get(7).map_or(String::new(), |p| p.to_string()),
                listening: u32::from_str_radix(cols.get(3)?, 16).ok()? & SO_ACCEPTCON != 0,
            })
        })
        .collect()
}

/// Unix sockets of the process's namespace.
pub fn unix_sockets(pid: u32) -> Vec<UnixSocket> {
    fs::read_to_string(format!("/proc/{pid}/net/unix")).map(|t| parse_proc_net_unix(&t)).unwrap_or_default()
}

/// Socket inodes held by a process, by fd.
pub fn socket_fds(pid: u32) -> Vec<(i32, u64)> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let fd: i32 = e.file_name().to_str()?.parse().ok()?;
        let link = fs::read_link(e.path()).ok()?;
        let inode = link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()?;
        Some((fd, inode))
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_unix() {
        let text = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 41234 /tmp/app.sock\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 41240 /tmp/app.sock\n\
            0000000000000000: 00000002 00000000 00000000 0002 01 41250\n";
        let s = parse_proc_net_unix(text);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0], UnixSocket { inode: 41234, path: "/tmp/app.sock".into(), listening: true });
        assert!(!s[1].listening && s[2].path.is_empty());
    }

    #[test]
    fn parses_proc_net_tcp() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
            0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0 100 0 0 10 0\n   \
            1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 12346 1 0 20 4 30 10 -1";
        let s = parse_proc_net_tcp(v4);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!((s[0].state, s[0].inode), (TCP_LISTEN, 12345));
        assert_eq!(s[1].remote, "127.0.0.1:54321".parse().unwrap());
        let v6 = "header\n   0: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000100007F:D431 01 0:0 0:0 0 0 0 777 1";
        let s = parse_proc_net_tcp(v6);
        assert_eq!(s[0].remote, "127.0.0.1:54321".parse().unwrap());
        assert_eq!(s[0].inode, 777);
    }
}
