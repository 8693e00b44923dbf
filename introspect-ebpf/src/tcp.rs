//! tcp:tcp_probe: when the first bytes of a request reach a watched server socket.
//!
//! A request waiting in the listen backlog (or for a free thread) is latency the client sees but
//! no worker syscall shows; the segment's arrival does. tcp_probe fires in softirq context for
//! every segment a TCP socket receives (tcp_rcv_established), so the filter is by local port, one
//! hash lookup, and the record carries the peer address to join with the accepted connection.
//!
//! A segment that completes the handshake is not one of those: it is processed while the socket
//! is still SYN_RECV. That is every first request on a listener with TCP_DEFER_ACCEPT (uWSGI
//! sets it on its TCP sockets), whose handshake completes only when the data comes, and any
//! client whose final ACK carries its request. sock:inet_sock_set_state's SYN_RECV ->
//! ESTABLISHED records that moment, tagged (lowest bit set) as a handshake: a data segment seen
//! later by tcp_probe replaces it, so a plain listener keeps its first data segment's arrival
//! and a client that connects and waits before sending is not counted as queued.
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
pub use introspect_common::ARRIVAL_HANDSHAKE as HANDSHAKE;

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
    let now = unsafe { bpf_ktime_get_ns() } & !HANDSHAKE;
    match ARRIVALS.get_ptr_mut(peer) {
        // SAFETY: map value pointer from a successful lookup; a racing segment of the same
        // connection writes a time just as good.
        Some(a) => unsafe {
            if *a == 0 || *a & HANDSHAKE != 0 {
                *a = now;
            }
        },
        None => {
            let _ = ARRIVALS.insert(peer, now, BPF_NOEXIST);
        }
    }
    0
}

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_RECV: i32 = 3;
const IPPROTO_TCP: u16 = 6;
const USUAL_OLDSTATE: u16 = 16;
const USUAL_NEWSTATE: u16 = 20;
const USUAL_STATE_SPORT: u16 = 24;
const USUAL_STATE_DPORT: u16 = 26;
const USUAL_STATE_FAMILY: u16 = 28;
const USUAL_STATE_PROTOCOL: u16 = 30;
const USUAL_STATE_DADDR: u16 = 36;
const USUAL_STATE_DADDR_V6: u16 = 56;

#[tracepoint]
pub fn sock_inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let off = OFFSETS.load();
    if field::at::<i32>(&ctx, off.set_state_newstate, USUAL_NEWSTATE) != TCP_ESTABLISHED
        || field::at::<i32>(&ctx, off.set_state_oldstate, USUAL_OLDSTATE) != TCP_SYN_RECV
        || field::at::<u16>(&ctx, off.set_state_protocol, USUAL_STATE_PROTOCOL) != IPPROTO_TCP
    {
        return 0;
    }
    let sport = field::at::<u16>(&ctx, off.set_state_sport, USUAL_STATE_SPORT);
    if PORTS.get(sport as u32).is_none_or(|p| *p == 0) {
        return 0;
    }
    let dport = field::at::<u16>(&ctx, off.set_state_dport, USUAL_STATE_DPORT);
    let mut peer = PeerKey { port: dport, ..PeerKey::default() };
    match field::at::<u16>(&ctx, off.set_state_family, USUAL_STATE_FAMILY) {
        AF_INET => {
            peer.addr[10] = 0xff;
            peer.addr[11] = 0xff;
            peer.addr[12..16].copy_from_slice(&field::at::<u32>(&ctx, off.set_state_daddr, USUAL_STATE_DADDR).to_ne_bytes());
        }
        AF_INET6 => {
            for k in 0..4u16 {
                let b = field::at::<u32>(&ctx, off.set_state_daddr_v6 + 4 * k, USUAL_STATE_DADDR_V6 + 4 * k).to_ne_bytes();
                let at = 4 * k as usize;
                peer.addr[at..at + 4].copy_from_slice(&b);
            }
        }
        _ => return 0,
    }
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() } | HANDSHAKE;
    // A new connection from this peer address: whatever an earlier one left is stale.
    let _ = ARRIVALS.insert(peer, now, 0);
    0
}
