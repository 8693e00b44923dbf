//! tcp:tcp_probe: when the first bytes of a request reach a watched server socket.
//!
//! A request waiting in the listen backlog (or for a free thread) is latency the client sees but
//! no worker syscall shows; the segment's arrival does. tcp_probe fires in softirq context for
//! every segment a TCP socket receives (tcp_rcv_established), so the filter is by local port, one
//! hash lookup, and the record carries the peer address to join with the accepted connection.
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use introspect_common::PeerKey;

use crate::{
    field,
    maps::{ARRIVALS, OFFSETS, PORTS},
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// Only insert when absent: the first segment of a request is its arrival.
const BPF_NOEXIST: u64 = 1;

/// Where tcp_probe records have had these fields since Linux 5.x (checked field by field against
/// the format file: see `field::at`).
const USUAL_DADDR: u16 = 36;
const USUAL_SPORT: u16 = 64;
const USUAL_DPORT: u16 = 66;
const USUAL_FAMILY: u16 = 68;
const USUAL_DATA_LEN: u16 = 76;

#[tracepoint]
pub fn tcp_tcp_probe(ctx: TracePointContext) -> u32 {
    let off = OFFSETS.load();
    // Pure ACKs first: most segments carry no data, and this test is cheaper than the port's.
    if field::at::<u16>(&ctx, off.tcp_probe_data_len, USUAL_DATA_LEN) == 0 {
        return 0;
    }
    let sport = field::at::<u16>(&ctx, off.tcp_probe_sport, USUAL_SPORT);
    if PORTS.get(sport as u32).is_none_or(|p| *p == 0) {
        return 0;
    }
    let family = field::at::<u16>(&ctx, off.tcp_probe_family, USUAL_FAMILY);
    let dport = field::at::<u16>(&ctx, off.tcp_probe_dport, USUAL_DPORT);
    let mut peer = PeerKey { port: dport, ..PeerKey::default() };
    // daddr is a struct sockaddr_in (address at offset 4) or sockaddr_in6 (address at offset 8);
    // read as aligned u32 words, in memory order.
    let word = |i: u16| field::at::<u32>(&ctx, off.tcp_probe_daddr + i, USUAL_DADDR + i).to_ne_bytes();
    match family {
        AF_INET => {
            peer.addr[10] = 0xff;
            peer.addr[11] = 0xff;
            peer.addr[12..16].copy_from_slice(&word(4));
        }
        AF_INET6 => {
            for k in 0..4u16 {
                let b = word(8 + 4 * k);
                let at = 4 * k as usize;
                peer.addr[at..at + 4].copy_from_slice(&b);
            }
        }
        _ => return 0,
    }
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    match ARRIVALS.get_ptr_mut(peer) {
        // SAFETY: map value pointer from a successful lookup; a racing segment of the same
        // connection writes a time just as good.
        Some(a) => unsafe {
            if *a == 0 {
                *a = now;
            }
        },
        None => {
            let _ = ARRIVALS.insert(peer, now, BPF_NOEXIST);
        }
    }
    0
}
