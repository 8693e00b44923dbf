//! tcp:tcp_probe: when the first bytes of a request reach a watched server socket.
//!
//! A request waiting in the listen backlog (or for a free thread) is latency the client sees but
//! no worker syscall shows; the segment's arrival does. tcp_probe fires in softirq context for
//! every segment a TCP socket receives (tcp_rcv_established), so the filter is by local port, one
//! hash lookup, and the record carries the peer address to join with the accepted connection.
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use introspect_common::PeerKey;

use crate::maps::{ARRIVALS, OFFSETS, PORTS};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// Only insert when absent: the first segment of a request is its arrival.
const BPF_NOEXIST: u64 = 1;

#[tracepoint]
pub fn tcp_tcp_probe(ctx: TracePointContext) -> u32 {
    let off = OFFSETS.load();
    // Pure ACKs first: most segments carry no data, and this test is cheaper than the map lookup.
    // SAFETY: offsets come from this kernel's tcp_probe format file.
    let data_len = unsafe { ctx.read_at::<u16>(off.tcp_probe_data_len as usize) }.unwrap_or(0);
    if data_len == 0 {
        return 0;
    }
    let Ok(sport) = (unsafe { ctx.read_at::<u16>(off.tcp_probe_sport as usize) }) else { return 0 };
    if PORTS.get_ptr(sport).is_none() {
        return 0;
    }
    let family = unsafe { ctx.read_at::<u16>(off.tcp_probe_family as usize) }.unwrap_or(0);
    let dport = unsafe { ctx.read_at::<u16>(off.tcp_probe_dport as usize) }.unwrap_or(0);
    let daddr = off.tcp_probe_daddr as usize;
    let mut peer = PeerKey { port: dport, ..PeerKey::default() };
    match family {
        // daddr is a struct sockaddr_in: address at offset 4.
        AF_INET => {
            let a = unsafe { ctx.read_at::<[u8; 4]>(daddr + 4) }.unwrap_or([0; 4]);
            peer.addr[10] = 0xff;
            peer.addr[11] = 0xff;
            peer.addr[12] = a[0];
            peer.addr[13] = a[1];
            peer.addr[14] = a[2];
            peer.addr[15] = a[3];
        }
        // daddr is a struct sockaddr_in6: address at offset 8.
        AF_INET6 => peer.addr = unsafe { ctx.read_at::<[u8; 16]>(daddr + 8) }.unwrap_or([0; 16]),
        _ => return 0,
    }
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let _ = ARRIVALS.insert(peer, now, BPF_NOEXIST);
    0
}
