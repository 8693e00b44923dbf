//! PostgreSQL's frontend/backend protocol 3.0, as seen in bounded copies of a client's writes
//! and reads: which statements it sent (simple `Query`; `Parse`/`Bind`/`Execute`/`Sync` of the
//! extended protocol) and what the server answered (errors with their SQLSTATE, command tags
//! with row counts, ReadyForQuery with the transaction state, which ends each round trip).
//!
//! Hand-written rather than a crate's (`postgres-protocol` parses complete messages only): a
//! copy is cut at a few hundred bytes to a few KiB, a long read arrives as its start and its
//! end, and a read may begin mid-message; the parser walks what it has and says what it saw.
//! Bind parameters (values) are never kept, only hashed with the run's secret key.
use introspect_common::data_flag;

use super::{Answer, Ask, Database, Options, Reply, Tx};
use crate::sql::{self, Dialect, InstanceKey};

const PROTOCOL_3: u32 = 0x0003_0000;
const CANCEL: u32 = 80_877_102;
const SSL: u32 = 80_877_103;
const GSSENC: u32 = 80_877_104;

/// Replies kept from one read (a read of many rows has many messages and nothing to say about
/// each).
const MAX_REPLIES: usize = 64;

pub struct Postgres {
    key: InstanceKey,
}

impl Postgres {
    pub fn new() -> Self {
        Self { key: InstanceKey::default() }
    }
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// A NUL-terminated string at the start of `b`, and what follows it (None: no NUL in `b`).
fn cstr(b: &[u8]) -> (&[u8], Option<&[u8]>) {
    match b.iter().position(|&c| c == 0) {
        Some(i) => (&b[..i], Some(&b[i + 1..])),
        None => (b, None),
    }
}

fn name(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Database for Postgres {
    fn flag(&self) -> u16 {
        data_flag::WIRE_POSTGRES
    }

    fn asks(&self, bytes: &[u8], total: u64, opts: &Options) -> Vec<Ask> {
        // Start-up packets have no type byte: a length, then a protocol version or request code.
        if let (Some(len), Some(code)) = (be32(bytes, 0), be32(bytes, 4))
            && len >= 8
            && matches!(code, PROTOCOL_3 | CANCEL | SSL | GSSENC)
        {
            return vec![Ask::Startup];
        }
        let mut asks = Vec::new();
        let mut i = 0usize;
        while let (Some(&ty), Some(len)) = (bytes.get(i), be32(bytes, i + 1)) {
            let len = len as usize;
            if len < 4 {
                break;
            }
            let end = i + 1 + len;
            // The copy (or the write itself) ended inside this message.
            let cut = end > bytes.len();
            let body = &bytes[(i + 5).min(bytes.len())..end.min(bytes.len())];
            match ty {
                b'Q' => {
                    let (text, rest) = cstr(body);
                    asks.push(Ask::Query(sql::statement(text, cut || rest.is_none(), Dialect::Postgres, &self.key, opts.sql_literals)));
                }
                b'P' => {
                    let (stmt, rest) = cstr(body);
                    let (text, after) = cstr(rest.unwrap_or_default());
                    let statement = sql::statement(text, cut || after.is_none(), Dialect::Postgres, &self.key, opts.sql_literals);
                    asks.push(Ask::Prepare { name: name(stmt), statement });
                }
                b'B' => {
                    let (portal, rest) = cstr(body);
                    let (stmt, values) = cstr(rest.unwrap_or_default());
                    // Formats and values follow: hashed (with what is known of their length),
                    // never kept.
                    let values = self.key.hash(&[values.unwrap_or_default(), &(len as u64).to_le_bytes()]);
                    asks.push(Ask::Bind { portal: name(portal), name: name(stmt), values });
                }
                b'E' => asks.push(Ask::Execute { portal: name(cstr(body).0) }),
                b'S' => asks.push(Ask::Sync),
                b'C' if body.first() == Some(&b'S') => asks.push(Ask::Close { name: name(cstr(&body[1..]).0) }),
                b'C' | b'D' | b'H' | b'F' | b'X' | b'p' | b'd' | b'c' | b'f' => asks.push(Ask::Other),
                // Not a frontend message: the rest is not what it seemed.
                _ => break,
            }
            if cut || end as u64 >= total {
                break;
            }
            i = end;
        }
        asks
    }

    fn answer(&self, bytes: &[u8], tail_at: Option<usize>, total: u64) -> Answer {
        // The one-byte answer to an SSLRequest or GSSENCRequest: `S` / `G` accept encryption.
        if total == 1 {
            return Answer { encrypted: matches!(bytes.first(), Some(b'S' | b'G')), ..Answer::default() };
        }
        let copy = Copy::new(bytes, tail_at, total);
        let (from_start, walked_all) = walk(&copy);
        Answer { from_start, walked_all, at_end: at_end(&copy), encrypted: false }
    }
}

/// A read's copy: its first bytes, and, for a long read, its last ones.
struct Copy<'a> {
    head: &'a [u8],
    tail: &'a [u8],
    total: u64,
}

impl<'a> Copy<'a> {
    fn new(bytes: &'a [u8], tail_at: Option<usize>, total: u64) -> Self {
        match tail_at.filter(|&t| t <= bytes.len()) {
            Some(t) => Self { head: &bytes[..t], tail: &bytes[t..], total },
            None => Self { head: bytes, tail: &[], total },
        }
    }

    /// Where the tail begins in the read.
    fn tail_start(&self) -> u64 {
        self.total.saturating_sub(self.tail.len() as u64)
    }

    /// The copied bytes at read offset `at`, up to the end of the part that holds it.
    fn at(&self, at: u64) -> Option<&'a [u8]> {
        if (at as usize) < self.head.len() {
            return Some(&self.head[at as usize..]);
        }
        let t = self.tail_start();
        if !self.tail.is_empty() && at >= t && at < self.total {
            return Some(&self.tail[(at - t) as usize..]);
        }
        None
    }

    /// Whether the copy holds the read's last bytes.
    fn has_end(&self) -> bool {
        !self.tail.is_empty() || self.head.len() as u64 == self.total
    }

    fn end(&self) -> &'a [u8] {
        if self.tail.is_empty() { self.head } else { self.tail }
    }
}

/// Backend message types of protocol 3.
fn backend_type(b: u8) -> bool {
    matches!(
        b,
        b'1' | b'2'
            | b'3'
            | b'A'
            | b'C'
            | b'D'
            | b'E'
            | b'G'
            | b'H'
            | b'I'
            | b'K'
            | b'N'
            | b'R'
            | b'S'
            | b'T'
            | b'V'
            | b'W'
            | b'Z'
            | b'c'
            | b'd'
            | b'n'
            | b's'
            | b't'
            | b'v'
    )
}

fn tx(status: u8) -> Option<Tx> {
    match status {
        b'I' => Some(Tx::Idle),
        b'T' => Some(Tx::InTransaction),
        b'E' => Some(Tx::Failed),
        _ => None,
    }
}

/// Rows in a command tag (`SELECT 20`, `INSERT 0 1`, `UPDATE 3`): its last word when a number.
fn tag_rows(tag: &[u8]) -> Option<u64> {
    let tag = cstr(tag).0;
    let last = tag.rsplit(|&b| b == b' ').next()?;
    if tag.len() == last.len() {
        return None;
    }
    std::str::from_utf8(last).ok()?.parse().ok()
}

/// The SQLSTATE of an ErrorResponse body (fields: a type byte and a string each; `C` is the code).
fn error_code(body: &[u8]) -> Option<String> {
    let mut rest = body;
    while let Some((&field, after)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let (value, next) = cstr(after);
        if field == b'C' {
            return Some(name(value)).filter(|c| c.len() == 5 && c.bytes().all(|b| b.is_ascii_alphanumeric()));
        }
        rest = next?;
    }
    None
}

fn reply(ty: u8, body: &[u8]) -> Option<Reply> {
    match ty {
        b'C' => Some(Reply::Done { rows: tag_rows(body) }),
        b'E' => Some(Reply::Error { code: error_code(body).unwrap_or_else(|| "?????".into()) }),
        b'Z' => Some(Reply::Ready { tx: tx(*body.first()?)? }),
        _ => None,
    }
}

/// The replies walked message by message from the read's first byte; true when the walk
/// reached its last byte.
fn walk(copy: &Copy<'_>) -> (Vec<Reply>, bool) {
    let mut replies = Vec::new();
    let mut at = 0u64;
    while at < copy.total {
        let Some(b) = copy.at(at) else { return (replies, false) };
        let (Some(&ty), Some(len)) = (b.first(), be32(b, 1)) else { return (replies, false) };
        if !backend_type(ty) || len < 4 {
            return (replies, false);
        }
        let end = at + 1 + len as u64;
        if end > copy.total {
            // A message the next read completes.
            return (replies, false);
        }
        let body = &b[5.min(b.len())..(1 + len as usize).min(b.len())];
        if let Some(r) = reply(ty, body)
            && replies.len() < MAX_REPLIES
        {
            replies.push(r);
        }
        at = end;
    }
    (replies, true)
}

/// What the read's last bytes say, whatever came before: ReadyForQuery at the very end (the end
/// of a response), and the CommandComplete or ErrorResponse right before it.
fn at_end(copy: &Copy<'_>) -> Vec<Reply> {
    if !copy.has_end() {
        return Vec::new();
    }
    let b = copy.end();
    let n = b.len();
    let Some(z) = n.checked_sub(6) else { return Vec::new() };
    if b[z] != b'Z' || be32(b, z + 1) != Some(5) {
        return Vec::new();
    }
    let Some(ready) = tx(b[z + 5]) else { return Vec::new() };
    let mut out = Vec::new();
    // The message before ends at `z`: find its start, a type byte whose length reaches exactly
    // there (looking back at most the copy's size).
    if z >= 6 && b[z - 1] == 0 {
        for start in (0..z.saturating_sub(5)).rev() {
            if be32(b, start + 1).is_some_and(|len| start + 1 + len as usize == z)
                && let Some(r) = reply(b[start], &b[start + 5..z])
            {
                out.push(r);
                break;
            }
        }
    }
    out.push(Reply::Ready { tx: ready });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ty: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![ty];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn pg() -> Postgres {
        Postgres::new()
    }

    fn opts() -> Options {
        Options::default()
    }

    #[test]
    fn a_simple_query_is_one_statement_without_its_literals() {
        let w = msg(b'Q', b"SELECT * FROM t WHERE token = 'S3CR3T'\0");
        let asks = pg().asks(&w, w.len() as u64, &opts());
        let [Ask::Query(s)] = asks.as_slice() else { panic!("{asks:?}") };
        assert!(!s.shape.contains("S3CR3T") && s.text.is_none() && !s.truncated, "{s:?}");
        let with = pg().asks(&w, w.len() as u64, &Options { sql_literals: true, ..opts() });
        let [Ask::Query(s)] = with.as_slice() else { panic!() };
        assert!(s.text.as_deref().is_some_and(|t| t.contains("S3CR3T")));
    }

    #[test]
    fn a_cut_query_is_truncated() {
        let mut w = msg(b'Q', &[b"SELECT 1 FROM t WHERE x IN (".as_slice(), &[b'7'; 9000], b")\0"].concat());
        let total = w.len() as u64;
        w.truncate(1024);
        let asks = pg().asks(&w, total, &opts());
        let [Ask::Query(s)] = asks.as_slice() else { panic!("{asks:?}") };
        assert!(s.truncated, "{s:?}");
    }

    #[test]
    fn the_extended_protocol_in_one_write() {
        let mut w = msg(b'P', b"\0SELECT x FROM t WHERE id = $1\0\0\0");
        w.extend(msg(b'B', b"\0\0\0\0\0\x01\0\0\0\x0242\0\0"));
        w.extend(msg(b'D', b"P\0"));
        w.extend(msg(b'E', b"\0\0\0\0\0"));
        w.extend(msg(b'S', b""));
        let asks = pg().asks(&w, w.len() as u64, &opts());
        assert!(
            matches!(
                asks.as_slice(),
                [Ask::Prepare { name, .. }, Ask::Bind { portal, name: bound, .. }, Ask::Other, Ask::Execute { .. }, Ask::Sync]
                    if name.is_empty() && portal.is_empty() && bound.is_empty()
            ),
            "{asks:?}"
        );
        let p = pg();
        let bind = |v: &[u8]| {
            let b = msg(b'B', &[b"\0_pg3_0\0\0\0\0\x01\0\0\0\x02".as_slice(), v, b"\0\0"].concat());
            match p.asks(&b, b.len() as u64, &opts()).as_slice() {
                [Ask::Bind { values, name, .. }] if name == "_pg3_0" => *values,
                a => panic!("{a:?}"),
            }
        };
        assert_eq!(bind(b"42"), bind(b"42"));
        assert_ne!(bind(b"42"), bind(b"43"));
    }

    #[test]
    fn startup_and_tls_requests() {
        let startup = [&[0, 0, 0, 8][..], &PROTOCOL_3.to_be_bytes()].concat();
        assert_eq!(pg().asks(&startup, 8, &opts()), vec![Ask::Startup]);
        assert!(pg().answer(b"S", None, 1).encrypted);
        assert!(!pg().answer(b"N", None, 1).encrypted);
    }

    #[test]
    fn a_whole_response_walks_to_ready() {
        let mut r = msg(b'T', b"\0\x01id\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0");
        r.extend(msg(b'D', b"\0\x01\0\0\0\x015"));
        r.extend(msg(b'C', b"SELECT 1\0"));
        r.extend(msg(b'Z', b"I"));
        let a = pg().answer(&r, None, r.len() as u64);
        assert!(a.walked_all);
        assert_eq!(a.from_start, vec![Reply::Done { rows: Some(1) }, Reply::Ready { tx: Tx::Idle }]);
        assert_eq!(a.at_end, vec![Reply::Done { rows: Some(1) }, Reply::Ready { tx: Tx::Idle }]);
    }

    #[test]
    fn an_error_after_bind_complete_has_its_sqlstate() {
        let mut r = msg(b'1', b"");
        r.extend(msg(b'2', b""));
        r.extend(msg(b'E', b"SERROR\0VERROR\0C23505\0Mduplicate key value violates unique constraint \"items_pkey\"\0\0"));
        r.extend(msg(b'Z', b"E"));
        let a = pg().answer(&r, None, r.len() as u64);
        assert_eq!(a.from_start, vec![Reply::Error { code: "23505".into() }, Reply::Ready { tx: Tx::Failed }]);
        assert_eq!(a.at_end.first(), Some(&Reply::Error { code: "23505".into() }));
    }

    #[test]
    fn a_long_read_is_known_by_its_ends() {
        // 300 rows: the copy holds the first 256 and the last 256 bytes.
        let mut r = msg(b'T', b"\0\x01v\0\0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0");
        for i in 0..300 {
            r.extend(msg(b'D', format!("\0\x01\0\0\0\x08row{i:05}").as_bytes()));
        }
        r.extend(msg(b'C', b"SELECT 300\0"));
        r.extend(msg(b'Z', b"T"));
        let total = r.len() as u64;
        let copy = [&r[..256], &r[r.len() - 256..]].concat();
        let a = pg().answer(&copy, Some(256), total);
        assert!(!a.walked_all);
        assert_eq!(a.at_end, vec![Reply::Done { rows: Some(300) }, Reply::Ready { tx: Tx::InTransaction }]);
        // A middle piece of the same response: nothing at its end.
        let mid = &r[1000..1400];
        assert!(pg().answer(mid, None, mid.len() as u64).at_end.is_empty());
    }

    #[test]
    fn garbage_never_panics() {
        let p = pg();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for n in 0..2000usize {
            let buf: Vec<u8> = (0..n % 700)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    if x.is_multiple_of(5) { b"QPBESZCE"[(x >> 8) as usize % 8] } else { (x >> 24) as u8 }
                })
                .collect();
            let _ = p.asks(&buf, buf.len() as u64 + (x % 3), &opts());
            let _ = p.answer(&buf, (n % 3 == 0).then_some(buf.len() / 2), buf.len() as u64 + (x % 2));
        }
    }
}
