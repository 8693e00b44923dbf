//! Wire protocols: one parser per protocol behind one small trait. The kernel copies a bounded
//! prefix of the first bytes of each request and response (the head); a parser turns such a
//! prefix into the few fields that are reported (never header values, bodies or literals) and
//! says how the response is framed, so the assembler knows where it ends. A new protocol is one
//! file here and one line in [`Protocols::standard`].
//!
//! Parsers are hand-written rather than a crate's: they must accept a head cut anywhere by the
//! kernel's bounded copy and say what they could not see, where strict parsers reject.
pub mod http1;
pub mod mysql;
pub mod postgres;
pub mod uwsgi;

use serde::{Deserialize, Serialize};

use crate::sql::Statement;

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
    /// Keep SQL statements' text with its literals (`--sql-literals`).
    pub sql_literals: bool,
}

/// One message of a database client, from a captured write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ask {
    /// The connection's start (PostgreSQL's start-up packet; MySQL's handshake response).
    Startup,
    /// A statement sent whole, answered in one round trip (PostgreSQL's simple query `Q`, MySQL's
    /// `COM_QUERY`).
    Query(Statement),
    /// A statement prepared under a name ("" is PostgreSQL's unnamed one): `Parse`.
    Prepare { name: String, statement: Statement },
    /// A prepared statement bound to a portal: `Bind`. Its values are never kept; `values` is
    /// their keyed hash (like [`Statement::instance`]), to tell exact repeats.
    Bind { portal: String, name: String, values: u64 },
    /// Run a portal: `Execute`. Each is one query.
    Execute { portal: String },
    /// The end of an extended-protocol round trip: the server answers with ReadyForQuery.
    Sync,
    /// A statement closed (`Close 'S'`): its name is free again.
    Close { name: String },
    /// Anything else (Describe, Flush, Terminate, a ping): no query.
    Other,
}

/// The transaction state a database server reports after a round trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Tx {
    Idle,
    InTransaction,
    /// In a transaction that failed: it can only be rolled back.
    Failed,
}

/// One message of a database server, from a captured read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// A statement finished (PostgreSQL's CommandComplete), with its row count when it says one.
    Done { rows: Option<u64> },
    /// An error response: PostgreSQL's SQLSTATE, MySQL's error number.
    Error { code: String },
    /// The server is ready for the next round trip, in this transaction state: the end of a
    /// response.
    Ready { tx: Tx },
    /// The end of a response that does not say the transaction state (MySQL's error packet).
    End,
    /// Parse or bind done, rows described or sent, a notice: nothing to report by itself.
    Other,
}

/// What a captured read on a database connection carried.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The replies walked from the read's first byte, as if a response began there (true for the
    /// first read after a request; later reads of a long response begin mid-message).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_start: Vec<Reply>,
    /// That walk reached the read's last byte (every message boundary was in the copy).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub walked_all: bool,
    /// The replies found at the read's end, whatever came before them: where a response ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub at_end: Vec<Reply>,
    /// The server accepted encryption: nothing more of this connection can be read.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
}

/// What a captured write or read on a database connection said.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Wire {
    Asks(Vec<Ask>),
    Answer(Answer),
}

/// A database's wire protocol, for the connections the kernel recognised as speaking it. Like
/// [`Protocol`], parsers see bounded copies cut anywhere and say what they could not see.
pub trait Database: Send + Sync {
    /// The kernel's mark on the data events of its connections (`data_flag::WIRE_*`).
    fn flag(&self) -> u16;
    /// What a write asked: `bytes` is the copy of its first bytes, `total` how many it wrote.
    fn asks(&self, bytes: &[u8], total: u64, opts: &Options) -> Vec<Ask>;
    /// What a read carried: `bytes` its copy (the read's start, then from `tail_at` its last
    /// bytes when it was too long to copy whole), `total` how many it read.
    fn answer(&self, bytes: &[u8], tail_at: Option<usize>, total: u64) -> Answer;
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
    databases: Vec<Box<dyn Database>>,
    pub opts: Options,
}

impl Protocols {
    /// Every protocol introspect ships.
    pub fn standard(opts: Options) -> Self {
        let mut p = Self::with(vec![Box::new(http1::Http1), Box::new(uwsgi::Uwsgi)], opts);
        p.databases = vec![Box::new(postgres::Postgres::new()), Box::new(mysql::Mysql::new())];
        p
    }

    pub fn with(list: Vec<Box<dyn Protocol>>, opts: Options) -> Self {
        Self { list, databases: Vec::new(), opts }
    }

    /// The parser of a database connection's bytes, from its data event's flags.
    pub fn database(&self, flags: u16) -> Option<&dyn Database> {
        self.databases.iter().find(|d| flags & d.flag() != 0).map(|d| d.as_ref())
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
