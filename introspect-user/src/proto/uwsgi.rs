//! The uwsgi binary protocol, as nginx's `uwsgi_pass` (and uWSGI's own router) speak it to a
//! uWSGI `--socket`: one request per connection, a 4-byte header (modifier1, the size of the
//! variables as a little-endian u16, modifier2), then the CGI-style variables, each a
//! little-endian u16 key length, the key, a u16 value length and the value; the body follows.
//! The worker answers with an HTTP/1.x status line and headers, so the response is parsed as
//! HTTP's.
//!
//! Only `REQUEST_METHOD`, `REQUEST_URI`, `PATH_INFO` and (with `--keep-query`) `QUERY_STRING`
//! are read: the other variables carry cookies and authorization headers (`HTTP_COOKIE`,
//! `HTTP_AUTHORIZATION`) and are skipped unread. nginx's `uwsgi_params` sends `QUERY_STRING`
//! first, so a very long query string can push the method and path past the bounded copy; the
//! request is then still reported, as method `?` and target `…`.
use introspect_common::PAYLOAD_MAX;

use super::{Options, Protocol, RequestHead, ResponseHead, Side, http1};

/// Requests in the uwsgi protocol, served.
pub struct Uwsgi;

impl Protocol for Uwsgi {
    fn side(&self) -> Side {
        Side::Served
    }

    fn request(&self, prefix: &[u8], opts: &Options) -> Option<RequestHead> {
        parse_request(prefix, opts.keep_query)
    }

    fn response(&self, prefix: &[u8]) -> Option<ResponseHead> {
        http1::parse_response(prefix)
    }
}

fn le16(b: &[u8], at: usize) -> Option<usize> {
    Some(usize::from(u16::from_le_bytes([*b.get(at)?, *b.get(at + 1)?])))
}

/// A variable's name: CGI and HTTP_* names, as nginx and uWSGI write them.
fn is_key(k: &[u8]) -> bool {
    !k.is_empty() && k.iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
}

/// A value as reported, and whether the copy held all of it.
struct Value<'a> {
    bytes: &'a [u8],
    whole: bool,
}

/// Parses a uwsgi request packet's header and variables from the copy of a read's first bytes.
/// `None` when it is not one: a header whose modifier2 is not 0, a size too small for one
/// variable, a malformed name, a variable that runs past the size the header declared, or a
/// read shorter than the [`PAYLOAD_MAX`] copy that ends before the declared size (a packet
/// shorter than it says; a sender that splits its packet below 512 bytes would be counted so
/// too, which neither nginx nor uWSGI's router does).
pub fn parse_request(prefix: &[u8], keep_query: bool) -> Option<RequestHead> {
    let &[_modifier1, _, _, modifier2] = prefix.first_chunk::<4>()?;
    let vars = &prefix[4..];
    let size = le16(prefix, 1)?;
    // The smallest variable: two lengths and a one-byte name.
    if modifier2 != 0 || size < 5 {
        return None;
    }
    let (mut method, mut uri, mut path, mut query) = (None, None, None, None);
    let mut i = 0;
    let mut cut = false;
    while i < size {
        if i + 2 > size {
            return None;
        }
        let Some(klen) = le16(vars, i) else {
            cut = true;
            break;
        };
        let key_end = i + 2 + klen;
        // A name, and its value's length, must fit in the packet.
        if key_end + 2 > size {
            return None;
        }
        let Some(key) = vars.get(i + 2..key_end) else {
            cut = true;
            break;
        };
        if !is_key(key) {
            return None;
        }
        let Some(vlen) = le16(vars, key_end) else {
            cut = true;
            break;
        };
        let end = key_end + 2 + vlen;
        if end > size {
            return None;
        }
        let start = (key_end + 2).min(vars.len());
        let value = Value { bytes: &vars[start..end.min(vars.len())], whole: end <= vars.len() };
        let slot = match key {
            b"REQUEST_METHOD" => &mut method,
            b"REQUEST_URI" => &mut uri,
            b"PATH_INFO" => &mut path,
            b"QUERY_STRING" => &mut query,
            _ => &mut None,
        };
        if slot.is_none() {
            *slot = Some(value);
        }
        if end > vars.len() {
            cut = true;
            break;
        }
        i = end;
    }
    if cut && prefix.len() < PAYLOAD_MAX {
        // The copy held the whole read, and the read ended inside the packet.
        return None;
    }
    let method = match method {
        Some(m) if m.whole && !m.bytes.is_empty() && m.bytes.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_')) => {
            String::from_utf8_lossy(m.bytes).into_owned()
        }
        // A method cut by the copy, or not reached before it ended.
        Some(m) if !m.whole => "?".to_string(),
        None if cut => "?".to_string(),
        _ => return None,
    };
    let (mut target, whole) = match (uri, path) {
        (Some(u), _) if !u.bytes.is_empty() => (String::from_utf8_lossy(u.bytes).into_owned(), u.whole),
        (_, Some(p)) if !p.bytes.is_empty() => {
            let mut t = String::from_utf8_lossy(p.bytes).into_owned();
            if let Some(q) = query.filter(|q| !q.bytes.is_empty())
                && keep_query
            {
                t.push('?');
                t.push_str(&String::from_utf8_lossy(q.bytes));
            }
            (t, p.whole)
        }
        _ if cut => (String::new(), false),
        _ => return None,
    };
    if !keep_query && let Some(q) = target.find('?') {
        target.truncate(q);
    }
    if !whole && !target.contains('?') {
        target.push('…');
    }
    Some(RequestHead { method, target })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A packet as nginx's uwsgi_params would send it, with `vars` in order.
    fn packet(vars: &[(&str, &str)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (k, v) in vars {
            body.extend((k.len() as u16).to_le_bytes());
            body.extend(k.as_bytes());
            body.extend((v.len() as u16).to_le_bytes());
            body.extend(v.as_bytes());
        }
        let mut p = vec![0];
        p.extend((body.len() as u16).to_le_bytes());
        p.push(0);
        p.extend(body);
        p
    }

    fn nginx(query: &str, uri: &str, path: &str) -> Vec<u8> {
        packet(&[
            ("QUERY_STRING", query),
            ("REQUEST_METHOD", "POST"),
            ("CONTENT_TYPE", ""),
            ("CONTENT_LENGTH", "0"),
            ("REQUEST_URI", uri),
            ("PATH_INFO", path),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
            ("HTTP_COOKIE", "session=s3cr3t"),
            ("HTTP_AUTHORIZATION", "Bearer t0ken"),
        ])
    }

    fn head(method: &str, target: &str) -> Option<RequestHead> {
        Some(RequestHead { method: method.into(), target: target.into() })
    }

    #[test]
    fn method_and_uri_without_the_query() {
        let p = nginx("a=1&b=2", "/cart/items?a=1&b=2", "/cart/items");
        assert_eq!(parse_request(&p, false), head("POST", "/cart/items"));
        assert_eq!(parse_request(&p, true), head("POST", "/cart/items?a=1&b=2"));
        // Nothing else of the packet is kept.
        let got = format!("{:?}", parse_request(&p, true));
        assert!(!got.contains("s3cr3t") && !got.contains("t0ken"), "{got}");
    }

    #[test]
    fn path_info_when_there_is_no_request_uri() {
        let p = packet(&[("REQUEST_METHOD", "GET"), ("PATH_INFO", "/a/b"), ("QUERY_STRING", "x=1")]);
        assert_eq!(parse_request(&p, false), head("GET", "/a/b"));
        assert_eq!(parse_request(&p, true), head("GET", "/a/b?x=1"));
    }

    #[test]
    fn a_copy_cut_anywhere_reports_what_it_saw() {
        // Query strings of every length put every variable across the copy's end in turn.
        for n in 0..600 {
            let query = "q=".to_string() + &"x".repeat(n);
            let p = nginx(&query, &format!("/reports/yearly?{query}"), "/reports/yearly");
            let copy = &p[..PAYLOAD_MAX.min(p.len())];
            let got = parse_request(copy, false).unwrap_or_else(|| panic!("query of {n}: not a request"));
            assert!(got.method == "POST" || got.method == "?", "query of {n}: {got:?}");
            assert!("/reports/yearly".starts_with(got.target.trim_end_matches('…')), "query of {n}: {got:?}");
            assert!(got.target == "/reports/yearly" || got.target.ends_with('…'), "query of {n}: {got:?}");
        }
        // A query string long enough to push the method past the copy.
        let long = "q=".to_string() + &"x".repeat(600);
        let p = nginx(&long, &format!("/search?{long}"), "/search");
        assert_eq!(parse_request(&p[..PAYLOAD_MAX], false), head("?", "…"));
    }

    #[test]
    fn a_read_shorter_than_its_declared_packet_is_not_a_request() {
        let p = nginx("", "/x", "/x");
        for n in 4..p.len() {
            assert_eq!(parse_request(&p[..n], false), None, "read of {n} of {}", p.len());
        }
        // The declared size larger than what follows.
        let mut big = p.clone();
        big[1..3].copy_from_slice(&((p.len() + 40) as u16).to_le_bytes());
        assert_eq!(parse_request(&big, false), None);
    }

    #[test]
    fn malformed_packets_are_not_requests() {
        let good = nginx("", "/x", "/x");
        // modifier2 other than 0.
        let mut m = good.clone();
        m[3] = 1;
        assert_eq!(parse_request(&m, false), None);
        // A declared size smaller than its first variable: that variable runs past the packet.
        let mut small = good.clone();
        small[1..3].copy_from_slice(&10u16.to_le_bytes());
        assert_eq!(parse_request(&small, false), None);
        // A value length past the declared size.
        let mut past = packet(&[("REQUEST_METHOD", "GET"), ("REQUEST_URI", "/x")]);
        let at = past.len() - 4;
        past[at..at + 2].copy_from_slice(&500u16.to_le_bytes());
        assert_eq!(parse_request(&past, false), None);
        // A name that is not one.
        let mut bad_key = packet(&[("REQUEST_METHOD", "GET"), ("REQUEST_URI", "/x")]);
        bad_key[6] = b'\n';
        assert_eq!(parse_request(&bad_key, false), None);
        // Complete, but neither a method nor a path.
        assert_eq!(parse_request(&packet(&[("SERVER_NAME", "x")]), false), None);
        // Too short for a header, or an HTTP request, or nothing.
        assert_eq!(parse_request(&[0, 1], false), None);
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\n\r\n", false), None);
        assert_eq!(parse_request(&[0, 0, 0, 0], false), None);
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        // A deterministic spray of short byte strings, with a valid header in front of some.
        let mut x: u32 = 0x9e37_79b9;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let len = (x % 64) as usize;
            let mut b: Vec<u8> = (0..len).map(|i| (x.rotate_left(i as u32) & 0xff) as u8).collect();
            if x & 1 == 0 && b.len() >= 4 {
                b[0] = 0;
                b[3] = 0;
            }
            let _ = parse_request(&b, x & 2 == 0);
        }
    }
}
