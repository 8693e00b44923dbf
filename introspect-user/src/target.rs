//! Targets: which processes to watch, found in /proc: a pid and its descendants, or the
//! processes listening on a TCP port; plus the server ports and the connections already open.
use std::{
    collections::{BTreeSet, HashMap, HashSet},
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("no process is listening on TCP port {0}")]
    NoListener(u16),
}

/// Parent pid from /proc/PID/stat (the comm field may contain spaces and parentheses).
fn ppid_of(stat: &str) -> Option<u32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
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
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|f| fs::read_to_string(format!("/proc/{pid}/net/{f}")).ok())
        .flat_map(|t| parse_proc_net_tcp(&t))
        .collect()
}

/// Unix sockets of the process's namespace: (inode, bound path or "").
pub fn unix_sockets(pid: u32) -> Vec<(u64, String)> {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/unix")) else { return Vec::new() };
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            Some((cols.get(6)?.parse().ok()?, cols.get(7).map_or(String::new(), |p| p.to_string())))
        })
        .collect()
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

/// The processes holding a socket listening on `port`.
pub fn listeners(port: u16) -> Result<Vec<u32>, TargetError> {
    let inodes: HashSet<u64> = tcp_sockets(std::process::id())
        .into_iter()
        .filter(|s| s.state == TCP_LISTEN && s.local.port() == port)
        .map(|s| s.inode)
        .collect();
    let pids: Vec<u32> = all_pids()
        .into_iter()
        .filter(|&pid| socket_fds(pid).iter().any(|(_, ino)| inodes.contains(ino)))
        .collect();
    if pids.is_empty() {
        return Err(TargetError::NoListener(port));
    }
    Ok(pids)
}

/// What the watched processes serve: their listening ports, and the accepted connections they
/// already hold (keep-alive connections opened before the watch began).
pub struct Served {
    pub ports: BTreeSet<u16>,
    pub conns: Vec<(u32, i32, SocketAddr)>,
}

pub fn served(pids: &BTreeSet<u32>) -> Served {
    let Some(&any) = pids.iter().next() else { return Served { ports: BTreeSet::new(), conns: Vec::new() } };
    let sockets = tcp_sockets(any);
    let by_inode: HashMap<u64, &TcpSocket> = sockets.iter().map(|s| (s.inode, s)).collect();
    let held: Vec<(u32, i32, &TcpSocket)> = pids
        .iter()
        .flat_map(|&pid| socket_fds(pid).into_iter().map(move |(fd, ino)| (pid, fd, ino)))
        .filter_map(|(pid, fd, ino)| by_inode.get(&ino).map(|s| (pid, fd, *s)))
        .collect();
    let ports: BTreeSet<u16> = held.iter().filter(|(_, _, s)| s.state == TCP_LISTEN).map(|(_, _, s)| s.local.port()).collect();
    let conns = held
        .iter()
        .filter(|(_, _, s)| s.state == TCP_ESTABLISHED && ports.contains(&s.local.port()))
        .map(|(pid, fd, s)| (*pid, *fd, s.remote))
        .collect();
    Served { ports, conns }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn ppid_survives_odd_comms() {
        assert_eq!(ppid_of("123 (gunicorn: worker [a b)]) S 77 123 123 0"), Some(77));
    }

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
