//! Wire protocols: one parser per protocol behind one small trait. The kernel copies a bounded
//! prefix of the first bytes of each request and response (the head); a parser turns such a
//! prefix into the few fields that are reported (never header values, bodies or literals) and
//! says how the response is framed, so the assembler knows where it ends. A new protocol is one
//! file here and one line in [`Protocols::standard`].
//!
//! Parsers are hand-written rather than a crate's: they must accept a head cut anywhere by the
//! kernel's bounded copy and say what they could not see, where strict parsers reject.
pub mod http1;

use serde::{Deserialize, Serialize};

/// Which side of a connection the watched process is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// It accepted the connection: requests come in, it writes the responses.
    Served,
    /// It connected (a database, a cache, an API): it writes the requests.
    Outbound,
}

/// The parts of a request's head that are reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestHead {
    pub method: String,
    /// What the request is for (an HTTP target, with the query string removed unless asked for).
    pub target: String,
}

/// How a response's end can be recognised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BodyLen {
    /// The body's length: the response ends that many bytes after its head.
    Length(u64),
    /// Chunked: ends at a terminator the write stream alone cannot show; the end is found at
    /// the next request or close.
    Chunked,
    /// Not known from the head: the response runs until the next request or close.
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseHead {
    pub status: u16,
    /// Bytes of the head, when it fits in the prefix.
    pub head_len: Option<u64>,
    pub body: BodyLen,
}

impl ResponseHead {
    /// Bytes the whole response takes, when known. `head_request`: the request was HTTP HEAD.
    pub fn total_len(&self, head_request: bool) -> Option<u64> {
        let head = self.head_len?;
        if head_request || self.status < 200 || self.status == 204 || self.status == 304 {
            return Some(head);
        }
        match self.body {
            BodyLen::Length(n) => Some(head + n),
            BodyLen::Chunked | BodyLen::Unknown => None,
        }
    }
}

/// What the head of a phase (its first bytes) turned out to be.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Head {
    Request(RequestHead),
    Response(ResponseHead),
    /// Bytes no parser recognises (a body, another protocol), or none could be read.
    Other,
}

/// How parsers report what they see.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Keep query strings in HTTP targets (they may carry tokens).
    pub keep_query: bool,
}

/// A wire protocol.
pub trait Protocol: Send + Sync {
    /// The side of the connection the watched process is on when this protocol is spoken.
    fn side(&self) -> Side;
    /// The head of a request, if `prefix` starts one in this protocol.
    fn request(&self, prefix: &[u8], opts: &Options) -> Option<RequestHead>;
    /// The head of a response, if `prefix` starts one in this protocol.
    fn response(&self, prefix: &[u8]) -> Option<ResponseHead>;
}

/// The protocols a run understands, tried in order on each head.
pub struct Protocols {
    list: Vec<Box<dyn Protocol>>,
    pub opts: Options,
}

impl Protocols {
    /// Every protocol introspect ships.
    pub fn standard(opts: Options) -> Self {
        Self::with(vec![Box::new(http1::Http1)], opts)
    }

    pub fn with(list: Vec<Box<dyn Protocol>>, opts: Options) -> Self {
        Self { list, opts }
    }

    /// Whether a parser exists for outbound connections (else the kernel need not copy their
    /// heads).
    pub fn any_outbound(&self) -> bool {
        self.list.iter().any(|p| p.side() == Side::Outbound)
    }

    /// The head of a phase on a connection of `side`: a request's when `request`, else a
    /// response's.
    pub fn head(&self, side: Side, request: bool, prefix: &[u8]) -> Head {
        if prefix.is_empty() {
            return Head::Other;
        }
        let mut parsers = self.list.iter().filter(|p| p.side() == side);
        let found = if request {
            parsers.find_map(|p| p.request(prefix, &self.opts)).map(Head::Request)
        } else {
            parsers.find_map(|p| p.response(prefix)).map(Head::Response)
        };
        found.unwrap_or(Head::Other)
    }
}
