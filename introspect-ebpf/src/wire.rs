//! Database connections: which outbound connections speak PostgreSQL or MySQL, told from the
//! first bytes of their first write (or of the server's greeting), and a bounded copy of every
//! write and read on those — only those: an API call or a cache lookup copies nothing. The bytes
//! are parsed in userspace.
//!
//! Recognised, on a connection the serving thread uses:
//! - PostgreSQL's start-up packet (length, then protocol 3.0 `00 03 00 00`), its SSLRequest and
//!   GSSENCRequest (codes 80877103, 80877104; the server's one-byte answer `S`/`G` means the rest
//!   is encrypted and nothing more is copied), CancelRequest (80877102); or, on a connection
//!   opened before the watch, a frontend message: a type byte of the protocol (`Q` query, `P`
//!   parse, `B` bind, `E` execute, `S` sync, …) and a big-endian length that fits the write.
//! - MySQL and MariaDB: the server's greeting (protocol version 10, sequence 0), or a command
//!   packet (a 3-byte little-endian length that is the whole write, sequence 0, a command byte
//!   such as `COM_QUERY` 0x03).
use aya_ebpf::{
    helpers::{bpf_probe_read_user, bpf_probe_read_user_buf},
    macros::map,
    maps::PerCpuArray,
};
use introspect_common::{ConnState, DataEvent, WIRE_MAX, WIRE_READ_PART, WirePayloadEvent, counter, data_flag, kind, wire};

use crate::{
    data::first_buffer,
    maps::{EVENTS, Pending, SETTINGS, buf_kind, count},
};

/// Where a variable-sized wire record is built before it is copied to the ring buffer (eBPF
/// stacks are 512 bytes; a ring-buffer reservation must have a constant size).
#[map(name = "WIRE_SCRATCH")]
static WIRE_SCRATCH: PerCpuArray<WirePayloadEvent> = PerCpuArray::with_max_entries(1, 0);

const PG_PROTOCOL_3: u32 = 0x0003_0000;
const PG_CANCEL: u32 = 80_877_102;
const PG_SSL: u32 = 80_877_103;
const PG_GSSENC: u32 = 80_877_104;

/// Frontend message types of PostgreSQL's protocol 3.
#[inline(always)]
fn pg_frontend_type(b: u8) -> bool {
    matches!(b, b'Q' | b'P' | b'B' | b'E' | b'S' | b'D' | b'C' | b'H' | b'F' | b'X' | b'p' | b'd' | b'c' | b'f')
}

/// MySQL client commands that start a round trip (`COM_*`).
#[inline(always)]
fn mysql_command(b: u8) -> bool {
    // COM_QUIT 1, INIT_DB 2, QUERY 3, FIELD_LIST 4, STATISTICS 9, PING 0x0e, CHANGE_USER 0x11,
    // STMT_PREPARE 0x16, STMT_EXECUTE 0x17, STMT_SEND_LONG_DATA 0x18, STMT_CLOSE 0x19,
    // STMT_RESET 0x1a, SET_OPTION 0x1b, STMT_FETCH 0x1c, RESET_CONNECTION 0x1f.
    matches!(b, 0x01..=0x04 | 0x09 | 0x0e | 0x11 | 0x16..=0x1c | 0x1f)
}

/// What a first write says the connection speaks, or `UNKNOWN` to look again at the next one.
#[inline(always)]
fn classify_write(b: &[u8; 8], n: u64) -> u8 {
    let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    if n >= 8 && be(0) >= 8 && be(0) as u64 <= n {
        match be(4) {
            PG_PROTOCOL_3 | PG_CANCEL => return wire::POSTGRES,
            PG_SSL | PG_GSSENC => return wire::POSTGRES_ASKED_TLS,
            _ => {}
        }
    }
    // A whole MySQL packet: checked before PostgreSQL's framing, which it can resemble.
    let mysql_len = u32::from_le_bytes([b[0], b[1], b[2], 0]) as u64;
    if n >= 5 && mysql_len + 4 == n && b[3] == 0 && mysql_command(b[4]) {
        return wire::MYSQL;
    }
    if n >= 5 && pg_frontend_type(b[0]) {
        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as u64;
        if (4..1 << 30).contains(&len) {
            // A message longer than this write (a big statement sent in pieces): decide on a
            // later, whole one.
            return if len < n { wire::POSTGRES } else { wire::UNKNOWN };
        }
    }
    wire::NONE
}

/// What a read says, on a connection not classified yet (a server that speaks first: MySQL's
/// greeting) or after a TLS request.
#[inline(always)]
fn classify_read(b: &[u8; 8], n: u64, was: u8) -> u8 {
    if was == wire::POSTGRES_ASKED_TLS {
        return match (n, b[0]) {
            (1, b'N') => wire::POSTGRES,
            // `S` (TLS) or `G` (GSS encryption) follows: the rest cannot be read.
            _ => wire::NONE,
        };
    }
    let len = u32::from_le_bytes([b[0], b[1], b[2], 0]) as u64;
    if n >= 5 && b[3] == 0 && b[4] == 10 && len + 4 <= n && len >= 20 {
        return wire::MYSQL;
    }
    was
}

/// On an outbound connection of a serving thread: what it speaks, learnt from this syscall's
/// bytes if not known yet. True when its bytes are to be copied.
#[inline(always)]
pub fn is_database(conn: &mut ConnState, p: &Pending, n: u64) -> bool {
    if conn.wire == wire::POSTGRES || conn.wire == wire::MYSQL {
        return true;
    }
    if conn.wire == wire::NONE || p.buf_kind == buf_kind::NONE || SETTINGS.load().sql_capture == 0 {
        return false;
    }
    let Some((addr, _)) = first_buffer(p) else { return false };
    // SAFETY: user memory, fault-tolerant read; the syscall moved `n` bytes, so only the first
    // `n` of these 8 are meaningful (the checks never look past `n`).
    let b = unsafe { bpf_probe_read_user(addr as *const [u8; 8]) }.unwrap_or([0; 8]);
    let mut small = [0u8; 8];
    let b = if n >= 8 {
        b
    } else {
        let mut i = 0;
        while i < 8 {
            if (i as u64) < n {
                small[i] = b[i];
            }
            i += 1;
        }
        small
    };
    conn.wire = if p.kind == kind::WRITE { classify_write(&b, n) } else { classify_read(&b, n, conn.wire) };
    // The TLS answer itself is not copied; the first bytes after a plain `N` are.
    conn.wire == wire::POSTGRES || conn.wire == wire::MYSQL
}

/// Emits `base` with a bounded copy of the bytes moved: up to `Settings::sql_capture` of a
/// write; a read whole up to `PAYLOAD_MAX` bytes, else its first and last `WIRE_READ_PART`.
#[inline(always)]
pub fn emit(p: &Pending, mut base: DataEvent, n: u64, conn_wire: u8) {
    let Some(ev) = WIRE_SCRATCH.get_ptr_mut(0) else { return };
    base.hdr.flags |= if conn_wire == wire::MYSQL { data_flag::WIRE_MYSQL } else { data_flag::WIRE_POSTGRES };
    let mut len: usize = 0;
    // SAFETY: `ev` is this CPU's scratch slot (programs do not preempt each other on one CPU);
    // every copy is bounded by the payload's size.
    unsafe {
        if let Some((addr, limit)) = first_buffer(p) {
            let avail = if n < limit { n } else { limit };
            let payload = &mut (*ev).payload;
            if p.kind == kind::WRITE {
                let cap = SETTINGS.load().sql_capture as u64;
                let mut want = (if avail < cap { avail } else { cap }) as usize;
                if want > WIRE_MAX {
                    want = WIRE_MAX;
                }
                if let Some(dst) = payload.get_mut(..want)
                    && bpf_probe_read_user_buf(addr as *const u8, dst).is_ok()
                {
                    len = want;
                }
            } else if avail <= (2 * WIRE_READ_PART) as u64 {
                let want = avail as usize;
                if let Some(dst) = payload.get_mut(..want)
                    && bpf_probe_read_user_buf(addr as *const u8, dst).is_ok()
                {
                    len = want;
                }
            } else if let Some(head) = payload.get_mut(..WIRE_READ_PART)
                && bpf_probe_read_user_buf(addr as *const u8, head).is_ok()
            {
                len = WIRE_READ_PART;
                // The end is only where it is when the first buffer holds all of the read.
                if avail == n
                    && let Some(tail) = payload.get_mut(WIRE_READ_PART..2 * WIRE_READ_PART)
                    && bpf_probe_read_user_buf((addr + n - WIRE_READ_PART as u64) as *const u8, tail).is_ok()
                {
                    len = 2 * WIRE_READ_PART;
                    base.tail_at = WIRE_READ_PART as u32;
                }
            }
            if len == 0 && avail > 0 {
                count(counter::READ_FAILED);
            }
        }
        base.payload_len = len as u32;
        (*ev).data = base;
        let mut size = size_of::<DataEvent>() + len;
        if size > size_of::<WirePayloadEvent>() {
            size = size_of::<WirePayloadEvent>();
        }
        let bytes = core::slice::from_raw_parts(ev as *const u8, size);
        if EVENTS.output::<[u8]>(bytes, crate::emit::SUBMIT_FLAGS).is_err() {
            count(counter::RINGBUF_FULL);
        }
    }
}
