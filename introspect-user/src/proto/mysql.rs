//! MySQL's and MariaDB's client/server protocol (the text protocol PyMySQL and mysqlclient
//! speak), as seen in bounded copies of a client's writes and reads: which statements it sent
//! (`COM_QUERY`) and what the server answered (OK with affected rows, ERR with its error number,
//! result sets ending with their last EOF; the status flags' `SERVER_STATUS_IN_TRANS`).
//!
//! Packets are a 3-byte little-endian length, a sequence number, the payload; a command starts at
//! sequence 0. Without `CLIENT_DEPRECATE_EOF` (PyMySQL does not ask for it) a result set is the
//! column count, the column definitions, an EOF, the rows, an EOF. Facts measured against
//! MariaDB 10.11 and PyMySQL 1.2 are in `docs/mysql.md`. Hand-written for the same reason as
//! the PostgreSQL parser: copies are cut, reads begin anywhere.
use introspect_common::data_flag;

use super::{Answer, Ask, Database, Options, Reply, Tx};
use crate::sql::{self, Dialect, InstanceKey};

const COM_QUIT: u8 = 0x01;
const COM_QUERY: u8 = 0x03;
const OK: u8 = 0x00;
const ERR: u8 = 0xff;
const EOF: u8 = 0xfe;
const SERVER_STATUS_IN_TRANS: u16 = 0x0001;
const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;

pub struct Mysql {
    key: InstanceKey,
}

impl Mysql {
    pub fn new() -> Self {
        Self { key: InstanceKey::default() }
    }
}

/// A packet at `at`: (payload length, sequence, payload as far as copied).
fn packet(b: &[u8], at: usize) -> Option<(usize, u8, &[u8])> {
    let h = b.get(at..at + 4)?;
    let len = u32::from_le_bytes([h[0], h[1], h[2], 0]) as usize;
    let payload = &b[at + 4..(at + 4 + len).min(b.len())];
    Some((len, h[3], payload))
}

/// A length-encoded integer at the start of `b`, and its size.
fn lenenc(b: &[u8]) -> Option<(u64, usize)> {
    let first = *b.first()?;
    let int = |n: usize| -> Option<u64> {
        let mut v = 0u64;
        for (i, &x) in b.get(1..1 + n)?.iter().enumerate() {
            v |= u64::from(x) << (8 * i);
        }
        Some(v)
    };
    match first {
        0..=0xfa => Some((u64::from(first), 1)),
        0xfc => Some((int(2)?, 3)),
        0xfd => Some((int(3)?, 4)),
        0xfe => Some((int(8)?, 9)),
        _ => None,
    }
}

fn tx(status: u16) -> Tx {
    if status & SERVER_STATUS_IN_TRANS != 0 { Tx::InTransaction } else { Tx::Idle }
}

/// An EOF packet (told from a row starting with 0xfe by its size).
fn is_eof(len: usize, payload: &[u8]) -> bool {
    payload.first() == Some(&EOF) && len < 9
}

fn eof_status(payload: &[u8]) -> Option<u16> {
    Some(u16::from_le_bytes([*payload.get(3)?, *payload.get(4)?]))
}

/// An OK packet's affected rows and status.
fn ok(payload: &[u8]) -> Option<(u64, u16)> {
    let (rows, n) = lenenc(payload.get(1..)?)?;
    let (_, m) = lenenc(payload.get(1 + n..)?)?;
    let at = 1 + n + m;
    Some((rows, u16::from_le_bytes([*payload.get(at)?, *payload.get(at + 1)?])))
}

/// An ERR packet's error number.
fn err_code(payload: &[u8]) -> String {
    match payload.get(1..3) {
        Some(c) => u16::from_le_bytes([c[0], c[1]]).to_string(),
        None => "?".into(),
    }
}

impl Database for Mysql {
    fn flag(&self) -> u16 {
        data_flag::WIRE_MYSQL
    }

    fn asks(&self, bytes: &[u8], total: u64, opts: &Options) -> Vec<Ask> {
        let Some((len, seq, payload)) = packet(bytes, 0) else { return Vec::new() };
        let cut = len + 4 > bytes.len() || (len + 4) as u64 > total;
        match (seq, payload.first()) {
            (0, Some(&COM_QUERY)) => vec![Ask::Query(sql::statement(&payload[1..], cut, Dialect::MySql, &self.key, opts.sql_literals))],
            (0, Some(&COM_QUIT)) => vec![Ask::Other],
            // The handshake response answers the server's greeting (sequence 1).
            (1, _) if len >= 32 => vec![Ask::Startup],
            _ => vec![Ask::Other],
        }
    }

    fn answer(&self, bytes: &[u8], tail_at: Option<usize>, total: u64) -> Answer {
        let (head, tail) = match tail_at.filter(|&t| t <= bytes.len()) {
            Some(t) => (&bytes[..t], &bytes[t..]),
            None => (bytes, &[][..]),
        };
        let (from_start, walked_all) = walk(head, total);
        let end = if tail.is_empty() { (head.len() as u64 == total).then_some(head) } else { Some(tail) };
        Answer { from_start, walked_all, at_end: end.map(at_end).unwrap_or_default(), encrypted: false }
    }
}

/// Walks a response from its first packet: an OK, an ERR, or result sets (count, definitions,
/// EOF, rows, EOF), each followed by more while the status says so.
fn walk(b: &[u8], total: u64) -> (Vec<Reply>, bool) {
    let mut replies = Vec::new();
    let mut at = 0usize;
    loop {
        if at as u64 >= total {
            return (replies, true);
        }
        let Some((len, _, p)) = packet(b, at) else { return (replies, false) };
        if p.len() < len {
            return (replies, false);
        }
        match p.first() {
            Some(&OK) => {
                let Some((rows, status)) = ok(p) else { return (replies, false) };
                replies.push(Reply::Done { rows: Some(rows) });
                if status & SERVER_MORE_RESULTS_EXISTS == 0 {
                    replies.push(Reply::Ready { tx: tx(status) });
                }
                at += 4 + len;
            }
            Some(&ERR) => {
                replies.push(Reply::Error { code: err_code(p) });
                replies.push(Reply::End);
                at += 4 + len;
            }
            Some(_) => {
                // A result set: its column count, that many definitions and an EOF, then rows
                // up to the last EOF.
                let Some((columns, _)) = lenenc(p) else { return (replies, false) };
                at += 4 + len;
                let mut eofs = 0;
                let mut rows = 0u64;
                let mut seen_columns = 0u64;
                while eofs < 2 {
                    let Some((len, _, p)) = packet(b, at) else { return (replies, false) };
                    if p.len() < len {
                        return (replies, false);
                    }
                    at += 4 + len;
                    if is_eof(len, p) {
                        eofs += 1;
                        if eofs == 2 {
                            let status = eof_status(p).unwrap_or(0);
                            replies.push(Reply::Done { rows: Some(rows) });
                            if status & SERVER_MORE_RESULTS_EXISTS == 0 {
                                replies.push(Reply::Ready { tx: tx(status) });
                            }
                        }
                    } else if p.first() == Some(&ERR) {
                        // A result set cut short by an error.
                        replies.push(Reply::Error { code: err_code(p) });
                        replies.push(Reply::End);
                        break;
                    } else if eofs == 0 {
                        seen_columns += 1;
                    } else {
                        rows += 1;
                    }
                }
                if seen_columns != columns && eofs == 2 {
                    // Not a result set after all (the count did not match): stop trusting it.
                    return (replies, false);
                }
            }
            None => return (replies, false),
        }
        if replies.len() > 64 {
            return (replies, false);
        }
    }
}

/// The last packet of a read, found from its end: an EOF or OK closing a response (with its
/// status), or an error.
fn at_end(b: &[u8]) -> Vec<Reply> {
    let n = b.len();
    // EOF: 05 00 00 seq fe warnings(2) status(2).
    if n >= 9 {
        let e = &b[n - 9..];
        if e[0] == 5 && e[1] == 0 && e[2] == 0 && e[4] == EOF {
            let status = u16::from_le_bytes([e[7], e[8]]);
            if status & SERVER_MORE_RESULTS_EXISTS == 0 {
                return vec![Reply::Done { rows: None }, Reply::Ready { tx: tx(status) }];
            }
            return Vec::new();
        }
    }
    // The final OK of a multi-result response: 07 00 00 seq 00 affected(1) id(1) status(2) warn(2).
    if n >= 11 {
        let o = &b[n - 11..];
        if o[0] == 7 && o[1] == 0 && o[2] == 0 && o[4] == OK && o[5] < 0xfb && o[6] < 0xfb {
            let status = u16::from_le_bytes([o[7], o[8]]);
            if status & SERVER_MORE_RESULTS_EXISTS == 0 {
                return vec![Reply::Done { rows: Some(u64::from(o[5])) }, Reply::Ready { tx: tx(status) }];
            }
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(seq: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut p = vec![len as u8, (len >> 8) as u8, (len >> 16) as u8, seq];
        p.extend_from_slice(payload);
        p
    }

    fn m() -> Mysql {
        Mysql::new()
    }

    #[test]
    fn a_query_is_its_statement_without_literals() {
        let w = pkt(0, b"\x03SELECT name FROM authors WHERE id = 17 AND name = 'O\\'Brien'");
        let asks = m().asks(&w, w.len() as u64, &Options::default());
        let [Ask::Query(s)] = asks.as_slice() else { panic!("{asks:?}") };
        assert!(!s.shape.contains("17") && !s.shape.contains("Brien"), "{s:?}");
        assert_eq!(m().asks(&pkt(0, b"\x01"), 5, &Options::default()), vec![Ask::Other]);
    }

    /// The measured response of `SELECT name FROM authors WHERE id = 1` (docs/mysql.md).
    fn one_row() -> Vec<u8> {
        let mut r = pkt(1, b"\x01");
        r.extend(pkt(2, b"\x03def\x0aintrospect\x07authors\x07authors\x04name\x04name\x0c\x2d\x00\x00\x01\x00\x00\xfd\x00\x00\x00\x00\x00"));
        r.extend(pkt(3, b"\xfe\x00\x00\x01\x00"));
        r.extend(pkt(4, b"\x08author 1"));
        r.extend(pkt(5, b"\xfe\x00\x00\x01\x00"));
        r
    }

    #[test]
    fn a_result_set_ends_at_its_second_eof() {
        let r = one_row();
        let a = m().answer(&r, None, r.len() as u64);
        assert!(a.walked_all);
        assert_eq!(a.from_start, vec![Reply::Done { rows: Some(1) }, Reply::Ready { tx: Tx::InTransaction }]);
        assert_eq!(a.at_end.last(), Some(&Reply::Ready { tx: Tx::InTransaction }));
        // The column definitions alone (a read that stops before the rows) end nothing.
        let cols = &r[..r.len() - 13 - 9];
        assert!(!m().answer(cols, None, cols.len() as u64).from_start.iter().any(|x| matches!(x, Reply::Ready { .. })));
    }

    #[test]
    fn ok_and_err() {
        let ok = pkt(1, b"\x00\x01\x00\x01\x00\x00\x00");
        let a = m().answer(&ok, None, ok.len() as u64);
        assert_eq!(a.from_start, vec![Reply::Done { rows: Some(1) }, Reply::Ready { tx: Tx::InTransaction }]);
        let err = pkt(1, b"\xff\x26\x04#23000Duplicate entry '1' for key 'PRIMARY'");
        let a = m().answer(&err, None, err.len() as u64);
        assert_eq!(a.from_start, vec![Reply::Error { code: "1062".into() }, Reply::End]);
    }

    #[test]
    fn garbage_never_panics() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for n in 0..2000usize {
            let buf: Vec<u8> = (0..n % 600)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    if x.is_multiple_of(4) { [0u8, 0xfe, 0xff, 5][(x >> 9) as usize % 4] } else { (x >> 24) as u8 }
                })
                .collect();
            let _ = m().asks(&buf, buf.len() as u64, &Options::default());
            let _ = m().answer(&buf, (n % 3 == 0).then_some(buf.len() / 2), buf.len() as u64 + (x % 2));
        }
    }
}
