//! HTTP/1.x heads: the request line of a request, the framing of a response.
//!
//! Only the bounded prefix the kernel copied is seen, so every parser here works on a prefix and
//! says when it ran out. Header values other than framing ones are never kept (they may hold
//! cookies or credentials).
use super::{BodyLen, Options, Protocol, RequestHead, ResponseHead, Side};

/// HTTP/1.0 and 1.1 in clear text, served.
pub struct Http1;

impl Protocol for Http1 {
    fn side(&self) -> Side {
        Side::Served
    }

    fn request(&self, prefix: &[u8], opts: &Options) -> Option<RequestHead> {
        parse_request(prefix, opts.keep_query)
    }

    fn response(&self, prefix: &[u8]) -> Option<ResponseHead> {
        parse_response(prefix)
    }
}

fn is_token_byte(b: u8) -> bool {
    // RFC 9110 tchar, restricted to what methods use in practice.
    b.is_ascii_uppercase() || b == b'-' || b == b'_'
}

/// Parses `METHOD SP target SP HTTP/1.x`. `None` when the prefix is not an HTTP/1 request line
/// (a body continuation, TLS, HTTP/2, another protocol).
pub fn parse_request(prefix: &[u8], keep_query: bool) -> Option<RequestHead> {
    let line_end = prefix.iter().position(|&b| b == b'\n').unwrap_or(prefix.len());
    let line = &prefix[..line_end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let sp1 = line.iter().position(|&b| b == b' ')?;
    let method = &line[..sp1];
    if method.is_empty() || method.len() > 20 || !method.iter().all(|&b| is_token_byte(b)) {
        return None;
    }
    let rest = &line[sp1 + 1..];
    let (target, complete) = match rest.iter().rposition(|&b| b == b' ') {
        Some(sp2) if rest[sp2 + 1..].starts_with(b"HTTP/1.") => (&rest[..sp2], true),
        // The line was cut by the prefix limit: keep what there is of the target.
        _ if line_end == prefix.len() => (rest, false),
        _ => return None,
    };
    if target.is_empty() {
        return None;
    }
    let mut target = String::from_utf8_lossy(target).into_owned();
    // absolute-form (proxies): keep the path.
    if let Some(after) = target.strip_prefix("http://").or_else(|| target.strip_prefix("https://")) {
        target = match after.find('/') {
            Some(i) => after[i..].to_string(),
            None => "/".to_string(),
        };
    }
    if !keep_query && let Some(q) = target.find('?') {
        target.truncate(q);
    }
    if !complete && !target.contains('?') {
        target.push('…');
    }
    Some(RequestHead { method: String::from_utf8_lossy(method).into_owned(), target })
}

/// Parses a status line and the framing headers. `None` when the prefix is not an HTTP/1 response.
pub fn parse_response(prefix: &[u8]) -> Option<ResponseHead> {
    let rest = prefix.strip_prefix(b"HTTP/1.")?;
    if rest.len() < 5 || !rest[0].is_ascii_digit() || rest[1] != b' ' {
        return None;
    }
    let code = &rest[2..5];
    if !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let status = code.iter().fold(0u16, |acc, &d| acc * 10 + u16::from(d - b'0'));
    let head_len = find(prefix, b"\r\n\r\n").map(|i| (i + 4) as u64);
    let headers_end = head_len.map_or(prefix.len(), |n| n as usize);
    let mut body = BodyLen::Unknown;
    for line in prefix[..headers_end].split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.eq_ignore_ascii_case(b"content-length") {
            if let Some(n) = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok())
                && body != BodyLen::Chunked
            {
                body = BodyLen::Length(n);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") && value.to_ascii_lowercase().ends_with(b"chunked") {
            // RFC 9112 §6.3: chunked wins over Content-Length.
            body = BodyLen::Chunked;
        }
    }
    if head_len.is_none() {
        // A head longer than the prefix: the framing headers may be in the part not copied.
        body = BodyLen::Unknown;
    }
    Some(ResponseHead { status, head_len, body })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    // Jump from one occurrence of the needle's first byte to the next (a tight byte scan)
    // instead of comparing a window at every offset: this runs on every request and response.
    let (&first, rest) = needle.split_first()?;
    let mut from = 0;
    while let Some(i) = haystack.get(from..)?.iter().position(|&b| b == first) {
        let at = from + i;
        if haystack.get(at + 1..at + needle.len()) == Some(rest) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |i| i + 1);
    &v[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_line() {
        let r = parse_request(b"GET /users/17?token=abc HTTP/1.1\r\nHost: x\r\nCookie: s=1\r\n\r\n", false).unwrap();
        assert_eq!(r, RequestHead { method: "GET".into(), target: "/users/17".into() });
        let r = parse_request(b"POST /a?b=1 HTTP/1.0\r\n", true).unwrap();
        assert_eq!(r.target, "/a?b=1");
        let r = parse_request(b"GET http://example.com/x/y?z HTTP/1.1\r\n", false).unwrap();
        assert_eq!(r.target, "/x/y");
    }

    #[test]
    fn request_line_cut_by_prefix() {
        let r = parse_request(b"GET /very/long/path", false).unwrap();
        assert_eq!(r.target, "/very/long/path…");
    }

    #[test]
    fn not_a_request() {
        assert_eq!(parse_request(b"\x16\x03\x01\x02\x00", false), None);
        assert_eq!(parse_request(b"PRI * HTTP/2.0\r\n", false), None);
        assert_eq!(parse_request(b"{\"json\": \"body\"}\r\n", false), None);
        assert_eq!(parse_request(b"get / HTTP/1.1\r\n", false), None);
    }

    #[test]
    fn response_framing() {
        let head = b"HTTP/1.1 200 OK\r\nServer: gunicorn\r\nContent-Length: 13\r\n\r\nHello, world!";
        let r = parse_response(head).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.head_len, Some(head.len() as u64 - 13));
        assert_eq!(r.total_len(false), Some(head.len() as u64));
        assert_eq!(r.total_len(true), Some(head.len() as u64 - 13));

        let r = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        assert_eq!(r.body, BodyLen::Chunked);
        assert_eq!(r.total_len(false), None);

        let r = parse_response(b"HTTP/1.0 204 No Content\r\n\r\n").unwrap();
        assert_eq!(r.total_len(false), Some(27));

        let r = parse_response(b"HTTP/1.1 500 INTERNAL SERVER ERROR\r\nContent-Length: 1").unwrap();
        assert_eq!((r.status, r.head_len, r.body), (500, None, BodyLen::Unknown));
        assert_eq!(parse_response(b"HTTP/2 200\r\n"), None);
        assert_eq!(parse_response(b"GET / HTTP/1.1\r\n"), None);
    }
}
