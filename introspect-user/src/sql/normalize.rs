//! SQL normalization: the stage that turns a statement captured on the wire into its shape
//! (literals replaced by `?`, lists collapsed, comments and extra whitespace gone), a stable
//! fingerprint of that shape and an OpenTelemetry-style summary (`db.query.summary`).
//!
//! # Why a hand-written lexer
//! The kernel gives us a bounded prefix (1–8 KiB) of what the client sent: it may stop in the
//! middle of a string, an identifier, a comment or a UTF-8 character, and it may be any of
//! PostgreSQL's or MySQL/MariaDB's dialects. A parser such as the `sqlparser` crate refuses half a
//! statement (and a statement of the other dialect), which is exactly what we have most of the
//! time; it also builds a tree we don't need. What we need is a tolerant lexer that never fails,
//! runs in linear time without recursion, and knows every way a literal can be written, because
//! the one thing this stage must guarantee is that no literal value reaches its output.
//!
//! # The security property, and how dialects are handled
//! No literal value (string content, number, placeholder value) may appear in `shape` or
//! `summary`. Where a literal ends depends on the server's rules, which the text alone does not
//! tell: `'C:\' AND b = 'x'` is two strings for PostgreSQL (`standard_conforming_strings` on) but
//! one string and garbage for MySQL (backslash escapes), and `'O\'Brien'` is the reverse; `#`,
//! `--x`, `/*!…*/` and nested comments differ too. So every statement is lexed several times, once
//! per set of rules its server may follow (see [`Dialect`]: two for a known server, four for
//! `Auto`). The first *plausible* reading in the dialect's order gives the shape, and every token of
//! it that any other plausible reading calls a literal becomes `?` too, so the output leaks nothing
//! under any of them. A reading is implausible when it ends inside a string or comment although the
//! capture was not cut (the server would have rejected the statement), or when it has a string
//! literal immediately followed by a letter or digit (`'O\'Brien` read without escapes), which no
//! client library produces; if no reading is plausible, all of them mask. Hence the guarantee holds
//! for every statement (or prefix of one) that its server accepts and whose literals are not glued to
//! a following word. It assumes an ASCII-compatible client encoding; with GBK, Big5 or Shift-JIS a
//! second byte can be `\`, which the no-backslash reading covers. With [`Dialect::Auto`], `"…"` is an
//! identifier (see below), so MySQL's `"…"` strings are only hidden with [`Dialect::MySql`]. A
//! statement whose readings differ and are all plausible gets a coarser shape (a longer run replaced
//! by one `?`): safety wins over detail there.
//!
//! # Normalization choices
//! * Strings → `?`: `'…'` (with `''`), `E'…'` (always backslash escapes), `B'…'`, `X'…'`, `N'…'`,
//!   `U&'…'`, `$$…$$`, `$tag$…$tag$`, MySQL `_charset'…'`; backslash escapes in plain strings per
//!   dialect (both readings are tried, see above).
//! * `"…"` is a quoted identifier (PostgreSQL, and MySQL with `ANSI_QUOTES`) and kept verbatim,
//!   except with [`Dialect::MySql`], where it is a string (MySQL's default) and becomes `?`.
//!   Backtick identifiers are kept verbatim with their backticks (turning them into `"…"` would mean
//!   a string to MySQL).
//! * Numbers → `?`: integers, decimals, `.5`, exponents, `0x1F`, `0b1`, `0o7`, `1_000`; a number
//!   token runs greedily over letters and digits (`5abc` is one `?`), so no digit can escape as an
//!   identifier. Digits inside identifiers (`t1`, `col_2`, `"x1"`) are kept.
//! * Placeholders → `?`: `$1`, `?`, `%s`, `%(name)s`, so client-bound and server-bound executions
//!   of one query share a shape and fingerprint.
//! * A `-` or `+` right before a literal, after an operator, `(`, `,`, `;`, the start or a keyword
//!   other than a value keyword (`NULL`, `CURRENT_DATE`, …), is folded into the `?` (`= -5` →
//!   `= ?`); otherwise it is binary and spaced like any operator: `a-1` → `a - ?`.
//! * `TRUE`, `FALSE` and `NULL` stay keywords (as pg_stat_statements does): they change plans.
//! * Comments are removed: `--` to end of line (MySQL: only before whitespace), `/* … */` (nested
//!   under PostgreSQL's rules), sqlcommenter tags among them. `#` starts a comment under MySQL's
//!   rules; it is an operator under PostgreSQL's (`#>>`), and with [`Dialect::Auto`] the PostgreSQL
//!   reading treats it as a comment only when it is followed by whitespace or first on its line.
//!   MySQL's executable comments `/*!40101 … */` (and MariaDB's `/*M! … */`) run on MySQL, so under
//!   MySQL's rules their content is kept as SQL; under PostgreSQL's they are plain comments.
//! * Lists: an `IN (…)` list whose items are all constants (literals, possibly cast, or tuples of
//!   them) becomes `IN (?+)`, whatever its length (`IN (1)`, `IN (1,2,3)`, `IN ($1, $2)` alike); an
//!   `ARRAY[…]` of constants becomes a single `?` (so `= ANY(ARRAY[1,2])` matches the server-bound
//!   `= ANY($1)`); `VALUES` keeps one copy of each distinct tuple (`VALUES (?, ?), (?, ?)` →
//!   `VALUES (?, ?)`). At the end of a cut capture, a half list still collapses and a half `VALUES`
//!   tuple that matches the first one is dropped, so a cut bulk insert keeps its full shape.
//! * Whitespace: one space between tokens, none inside `(…)`/`[…]` edges, before `,`/`;`, around
//!   `.` and `::`, or between a function name and its `(`; statements are joined by `; ` and a
//!   trailing `;` is dropped.
//! * Case: keywords upper-cased; unquoted identifiers (function names included) ASCII-lower-cased,
//!   as PostgreSQL folds them (MySQL table names are case-sensitive on Linux: `Users` and `users`
//!   then share a shape); quoted identifiers kept verbatim. Casts (`::timestamp with time zone`)
//!   are kept, their type names in lower case.
//! * Savepoint names (`SAVEPOINT "s140_x1"`, `RELEASE`, `ROLLBACK TO`) → `?`: Django makes a new one
//!   per call, and grouping by them would split one operation into thousands.
//! * Output is valid UTF-8: an incomplete character at the end of the capture is dropped, other
//!   invalid bytes become U+FFFD; non-ASCII identifiers survive.
//!
//! # Fingerprint
//! FNV-1a 64 over the UTF-8 bytes of `shape` (offset basis `0xcbf29ce484222325`, prime
//! `0x100000001b3`): written out here, so it is the same on every run, machine and version unless the
//! shape rules change. A cut statement has the fingerprint of its cut shape: two captures cut at the
//! same place share it when they differ only after the cut or only in literals, and a cut one shares
//! it with its full version only when the cut falls in what the shape drops anyway (the last literal,
//! a later `VALUES` tuple).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// A statement's shape, for reporting and grouping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Normalized {
    /// Literals replaced by `?`, lists collapsed, whitespace collapsed, comments removed.
    pub shape: String,
    /// Stable 64-bit fingerprint of the shape: FNV-1a 64 of its UTF-8 bytes (see [`fingerprint`]).
    pub fingerprint: u64,
    /// OpenTelemetry-style query summary (`db.query.summary`): the operation and the main
    /// collection(s), e.g. `SELECT orders customers`; at most [`SUMMARY_MAX`] bytes.
    pub summary: String,
    /// The input was cut before the statement ended (passed in, or seen: an unterminated
    /// string/quoted identifier/comment/dollar-quote at the end).
    pub truncated: bool,
}

/// Which server the text was sent to; see the module doc for why several readings are tried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Dialect {
    /// Unknown: PostgreSQL's rules (`#` a comment only before whitespace or first on its line) and
    /// MySQL's (with `"…"` as an identifier), each with and without backslash escapes, in the order
    /// PostgreSQL, MySQL, MySQL without escapes, PostgreSQL with them; MySQL's first when the text
    /// has more backticks and `/*!` than PostgreSQL marks (`"…"`, `::`, `$1`, `$$`, `E'`).
    #[default]
    Auto,
    /// PostgreSQL, with `standard_conforming_strings` on, then off (backslash escapes everywhere).
    Postgres,
    /// MySQL or MariaDB, default `sql_mode` (backslash escapes, `"…"` strings), then with
    /// `NO_BACKSLASH_ESCAPES`.
    MySql,
}

/// Parses `auto`, `postgres` (`postgresql`, `pg`) or `mysql` (`mariadb`), in any case: for an option
/// or a config value that names the server.
impl std::str::FromStr for Dialect {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Dialect::Auto),
            "postgres" | "postgresql" | "pg" => Ok(Dialect::Postgres),
            "mysql" | "mariadb" => Ok(Dialect::MySql),
            _ => Err(format!("unknown SQL dialect {s:?} (expected auto, postgres or mysql)")),
        }
    }
}

/// The longest `summary`, in bytes (OpenTelemetry asks for a bounded low-cardinality string).
pub const SUMMARY_MAX: usize = 255;

/// `text`: the captured bytes (not necessarily valid UTF-8, may end mid-character). `cut`: the
/// capture is known to have ended before the statement did. The dialect is [`Dialect::Auto`].
pub fn normalize(text: &[u8], cut: bool) -> Normalized {
    normalize_readings(text, cut, Dialect::Auto)
}

/// [`normalize`] when the wire protocol tells which server the text is for.
pub fn normalize_as(text: &[u8], cut: bool, dialect: Dialect) -> Normalized {
    // One way in per dialect: `Auto` is exactly `normalize`.
    match dialect {
        Dialect::Auto => normalize(text, cut),
        Dialect::Postgres | Dialect::MySql => normalize_readings(text, cut, dialect),
    }
}

fn normalize_readings(text: &[u8], cut: bool, dialect: Dialect) -> Normalized {
    let readings: &[Rules] = match dialect {
        Dialect::Auto => &[PG_AUTO, MYSQL_AUTO, MYSQL_AUTO_NBE, PG_AUTO_LEGACY],
        Dialect::Postgres => &[PG, PG_LEGACY],
        Dialect::MySql => &[MYSQL, MYSQL_NBE],
    };
    let lexed: Vec<Lexed> = readings.iter().map(|r| lex(text, *r)).collect();
    let plausible: Vec<bool> = lexed.iter().map(|l| !l.anomaly && (cut || !l.open_end)).collect();
    // The shape comes from the first plausible reading, in the dialect's order of likelihood; with
    // `Auto`, MySQL's readings come first when the text has more MySQL marks (backticks, `/*!`) than
    // PostgreSQL ones.
    let order: &[usize] = match dialect {
        Dialect::Auto if lexed[0].mysql_marks > lexed[0].pg_marks => &[1, 2, 0, 3],
        Dialect::Auto => &[0, 1, 2, 3],
        Dialect::Postgres | Dialect::MySql => &[0, 1],
    };
    let primary = order.iter().copied().find(|&r| plausible[r]).unwrap_or(order[0]);
    // Every other plausible reading (every other one, if none is) masks its literals.
    let mut masked = vec![false; text.len()];
    for (r, l) in lexed.iter().enumerate() {
        if r != primary && (plausible[r] || !plausible[primary]) {
            for t in l.toks.iter().filter(|t| t.k == K::Lit) {
                masked[t.s..t.e].fill(true);
            }
        }
    }

    let mut builder = Builder::new(text);
    for tok in &lexed[primary].toks {
        builder.token(*tok, masked[tok.s..tok.e].contains(&true));
    }
    let out = builder.finish();
    let shape = render(&out);
    Normalized { fingerprint: fingerprint(shape.as_bytes()), summary: summary(&out), shape, truncated: cut || lexed[primary].open_end }
}

/// FNV-1a 64 of `bytes`: the fingerprint of a shape. Written out (rather than taken from a hashing
/// crate) so that it cannot change under us: offset basis `0xcbf29ce484222325`, and for each byte
/// `h = (h ^ byte) * 0x100000001b3` (wrapping).
pub fn fingerprint(bytes: &[u8]) -> u64 {
    let mut h = Fnv::default();
    h.write(bytes);
    h.0
}

/// FNV-1a 64 as a `Hasher`: also hashes tokens for the `VALUES` dedup, deterministically.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

mod keywords;
mod lex;
mod summary;
#[cfg(test)]
mod tests;

use keywords::*;
use lex::*;
use summary::*;

// ---------------------------------------------------------------------------------------------
// Shape

/// A token of the shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Nt {
    Lit,
    /// A collapsed constant list: `?+`.
    List,
    /// Display text: upper-cased if a keyword, lower-cased otherwise.
    Word {
        text: String,
        kw: bool,
    },
    Quoted(String),
    Op(String),
    /// `tight`: a function call's `(` (no space before it) or any `[`.
    Open {
        c: u8,
        tight: bool,
    },
    Close(u8),
    Comma,
    Semi,
    Dot,
    Cast,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum FrameKind {
    /// `IN (…)`: collapses to `(?+)`.
    In,
    /// `ARRAY[…]` and the `[…]` nested in it: collapses to `?`.
    Array,
    Other,
}

/// How far the current list item is a constant: `?`, `-?`, `?::type`, `(?, ?)`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Item {
    Empty,
    Sign,
    Const,
    ConstCast,
    Bad,
}

/// What just happened inside the innermost list, for its [`Item`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ev {
    Lit,
    Sign,
    Cast,
    TypeWord,
    ChildConst,
    ChildEmpty,
    Other,
}

/// An open `(` or `[`.
struct Frame {
    kind: FrameKind,
    open_c: u8,
    /// Index of the `Open` in the output.
    open: usize,
    /// Where a collapse to one `?` starts (the `ARRAY` keyword, or the `[`).
    start: usize,
    items: usize,
    all_const: bool,
    cur: Item,
}

impl Frame {
    fn finish_item(&mut self, at_close: bool, at_eof: bool) {
        match self.cur {
            Item::Const | Item::ConstCast => self.items += 1,
            Item::Empty if at_close && (self.items == 0 || at_eof) => {}
            Item::Sign if at_eof => {}
            _ => self.all_const = false,
        }
        self.cur = Item::Empty;
    }

    fn is_const(&self) -> bool {
        self.all_const && self.items > 0
    }
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Next is a tuple; `comma` is the index of the `,` before it.
    Expect {
        comma: Option<usize>,
    },
    In {
        start: usize,
        comma: Option<usize>,
    },
    After,
}

/// A `VALUES` list being read at frame depth `depth`.
struct Values {
    depth: usize,
    phase: Phase,
    first: Option<(usize, usize)>,
    kept: HashMap<u64, Vec<(usize, usize)>>,
}

/// Value keywords: a `-` after them is binary (`CURRENT_DATE - 1`).
const VALUE_KEYWORDS: &[&str] = &[
    "CURRENT_DATE",
    "CURRENT_TIME",
    "CURRENT_TIMESTAMP",
    "CURRENT_USER",
    "END",
    "FALSE",
    "LOCALTIME",
    "LOCALTIMESTAMP",
    "NULL",
    "SESSION_USER",
    "TRUE",
];

/// Words that continue a type name after `::` (`timestamp with time zone`, `double precision`).
const TYPE_TAIL: &[&str] = &["precision", "time", "varying", "with", "without", "zone"];

/// Builds the shape's tokens from the primary reading.
struct Builder<'a> {
    text: &'a [u8],
    out: Vec<Nt>,
    frames: Vec<Frame>,
    values: Option<Values>,
    /// 1 right after `::`, 2 after a type word, else 0.
    cast: u8,
    /// Index of the current statement's first token.
    stmt_start: usize,
    /// The last token pushed ended where the text does: it may be cut short.
    last_cut: bool,
}

fn is_kw(t: Option<&Nt>, word: &str) -> bool {
    matches!(t, Some(Nt::Word { text, kw: true }) if text == word)
}

impl<'a> Builder<'a> {
    fn new(text: &'a [u8]) -> Self {
        Builder { text, out: Vec::new(), frames: Vec::new(), values: None, cast: 0, stmt_start: 0, last_cut: false }
    }

    fn token(&mut self, tok: Tok, masked: bool) {
        self.last_cut = tok.e == self.text.len();
        if masked || tok.k == K::Lit {
            self.cast = 0;
            self.lit();
            return;
        }
        let raw = &self.text[tok.s..tok.e];
        let at_end = tok.e == self.text.len();
        match tok.k {
            K::Word => self.word(raw, at_end),
            K::Quoted => {
                let cast = self.cast;
                self.cast = 0;
                if self.savepoint_name() {
                    self.lit();
                    return;
                }
                let text = display(raw, at_end, None);
                self.touch();
                self.out.push(Nt::Quoted(text));
                self.note(if cast == 1 { Ev::TypeWord } else { Ev::Other });
            }
            K::Op => {
                self.cast = 0;
                self.touch();
                let op = String::from_utf8_lossy(raw).into_owned();
                let sign = op == "-" || op == "+";
                self.out.push(Nt::Op(op));
                self.note(if sign { Ev::Sign } else { Ev::Other });
            }
            K::Open(c) => self.open(c),
            K::Close(c) => self.close(c),
            K::Comma => self.comma(),
            K::Semi => self.semi(),
            K::Dot => {
                self.cast = 0;
                self.touch();
                self.out.push(Nt::Dot);
                self.note(Ev::Other);
            }
            K::Cast => {
                self.cast = 1;
                self.touch();
                self.out.push(Nt::Cast);
                self.note(Ev::Cast);
            }
            K::Lit => self.lit(),
        }
    }

    /// Updates the innermost list's current item.
    fn note(&mut self, ev: Ev) {
        let Some(f) = self.frames.last_mut() else { return };
        f.cur = match (f.cur, ev) {
            (Item::Empty | Item::Sign | Item::Const, Ev::Lit) | (Item::Empty | Item::Sign, Ev::ChildConst) => Item::Const,
            (Item::Empty, Ev::Sign) => Item::Sign,
            (Item::Const | Item::ConstCast, Ev::Cast) | (Item::ConstCast, Ev::TypeWord | Ev::ChildEmpty | Ev::ChildConst) => Item::ConstCast,
            _ => Item::Bad,
        };
    }

    /// A token at the depth of a `VALUES` list that is not part of it ends the list.
    fn touch(&mut self) {
        if self.values.as_ref().is_some_and(|v| v.depth >= self.frames.len()) {
            self.values = None;
        }
    }

    fn lit(&mut self) {
        self.touch();
        let n = self.out.len();
        if n >= 1 && matches!(&self.out[n - 1], Nt::Op(o) if o == "-" || o == "+") && unary_before(n.checked_sub(2).and_then(|p| self.out.get(p))) {
            self.out.pop();
        }
        // Adjacent literals (`'a' 'b'`, a masked run) are one value.
        if !matches!(self.out.last(), Some(Nt::Lit)) {
            self.out.push(Nt::Lit);
        }
        self.note(Ev::Lit);
    }

    /// The identifier being pushed names a savepoint.
    fn savepoint_name(&self) -> bool {
        let last = self.out.last();
        let first = self.out.get(self.stmt_start);
        is_kw(last, "SAVEPOINT") || is_kw(last, "RELEASE") && self.out.len() == self.stmt_start + 1 || is_kw(last, "TO") && is_kw(first, "ROLLBACK")
    }

    fn word(&mut self, raw: &[u8], at_end: bool) {
        let lower = raw.to_ascii_lowercase();
        let is_type = self.cast == 1 || self.cast == 2 && TYPE_TAIL.iter().any(|w| w.as_bytes() == lower.as_slice());
        let kw = !is_type && is_keyword(raw);
        if !kw && self.savepoint_name() {
            self.cast = 0;
            self.lit();
            return;
        }
        let text = display(raw, at_end, Some(kw));
        self.cast = if is_type { 2 } else { 0 };
        if text.is_empty() {
            return;
        }
        self.touch();
        let array = kw && text == "ARRAY";
        let values = kw && text == "VALUES";
        self.out.push(Nt::Word { text, kw });
        if is_type {
            self.note(Ev::TypeWord);
        } else if !array {
            // `ARRAY` leaves the item as it was: its `[…]` decides.
            self.note(Ev::Other);
        }
        if values {
            self.values = Some(Values { depth: self.frames.len(), phase: Phase::Expect { comma: None }, first: None, kept: HashMap::new() });
        }
    }

    /// No space before `(` after a function name; a table's column list keeps its space.
    fn tight_paren(&self) -> bool {
        let n = self.out.len();
        // Function names are unquoted in practice, column lists follow quoted names (Django).
        if !matches!(self.out.last(), Some(Nt::Word { kw: false, .. })) {
            return false;
        }
        let mut i = n - 1;
        while i >= 2 && self.out[i - 1] == Nt::Dot && matches!(self.out[i - 2], Nt::Word { .. } | Nt::Quoted(_)) {
            i -= 2;
        }
        let before = i.checked_sub(1).and_then(|p| self.out.get(p));
        !["COPY", "INTO", "TABLE", "REFERENCES", "EXISTS", "VIEW"].iter().any(|w| is_kw(before, w))
    }

    fn open(&mut self, c: u8) {
        let depth = self.frames.len();
        if let Some(v) = self.values.as_mut().filter(|v| v.depth >= depth) {
            match v.phase {
                Phase::Expect { comma } if c == b'(' && v.depth == depth => v.phase = Phase::In { start: self.out.len(), comma },
                _ => self.values = None,
            }
        }
        let cast = self.cast;
        self.cast = 0;
        let tight = c == b'[' || self.tight_paren();
        let here = self.out.len();
        let (kind, start) = if c == b'(' {
            if is_kw(self.out.last(), "IN") { (FrameKind::In, here) } else { (FrameKind::Other, here) }
        } else if is_kw(self.out.last(), "ARRAY") {
            (FrameKind::Array, here - 1)
        } else if cast == 0
            && self.frames.last().is_some_and(|f| f.kind == FrameKind::Array)
            && matches!(self.out.last(), Some(Nt::Open { .. } | Nt::Comma))
        {
            (FrameKind::Array, here)
        } else {
            (FrameKind::Other, here)
        };
        self.out.push(Nt::Open { c, tight });
        self.frames.push(Frame { kind, open_c: c, open: here, start, items: 0, all_const: true, cur: Item::Empty });
    }

    fn close(&mut self, c: u8) {
        self.cast = 0;
        let want = if c == b')' { b'(' } else { b'[' };
        if self.frames.last().is_none_or(|f| f.open_c != want) {
            self.touch();
            self.out.push(Nt::Close(c));
            self.note(Ev::Other);
            return;
        }
        let Some(mut f) = self.frames.pop() else { return };
        f.finish_item(true, false);
        let empty = self.out.len() == f.open + 1;
        match f.kind {
            FrameKind::In if f.is_const() => {
                self.out.truncate(f.open + 1);
                self.out.push(Nt::List);
                self.out.push(Nt::Close(c));
                self.note(Ev::ChildConst);
            }
            FrameKind::Array if f.is_const() => {
                self.out.truncate(f.start);
                self.lit();
            }
            _ => {
                self.out.push(Nt::Close(c));
                self.note(if f.is_const() {
                    Ev::ChildConst
                } else if empty {
                    Ev::ChildEmpty
                } else {
                    Ev::Other
                });
            }
        }
        let depth = self.frames.len();
        match self.values.as_ref().map(|v| (v.depth, v.phase)) {
            Some((d, _)) if d > depth => self.values = None,
            Some((d, Phase::In { start, comma })) if d == depth => self.tuple_done(start, comma),
            _ => {}
        }
    }

    /// A `VALUES` tuple just closed: drop it if an identical one is already in the shape.
    fn tuple_done(&mut self, start: usize, comma: Option<usize>) {
        let Some(v) = self.values.as_mut() else { return };
        let end = self.out.len();
        let tuple = &self.out[start..end];
        let mut h = Fnv::default();
        tuple.hash(&mut h);
        let seen = v.kept.get(&h.finish()).is_some_and(|list| list.iter().any(|&(s, e)| self.out.get(s..e) == Some(tuple)));
        match comma {
            Some(c) if seen => self.out.truncate(c),
            _ => {
                v.kept.entry(h.finish()).or_default().push((start, end));
                v.first.get_or_insert((start, end));
            }
        }
        v.phase = Phase::After;
    }

    fn comma(&mut self) {
        self.cast = 0;
        let depth = self.frames.len();
        if let Some(v) = self.values.as_mut().filter(|v| v.depth >= depth) {
            match v.phase {
                Phase::After if v.depth == depth => v.phase = Phase::Expect { comma: Some(self.out.len()) },
                _ => self.values = None,
            }
        }
        if let Some(f) = self.frames.last_mut() {
            f.finish_item(false, false);
        }
        self.out.push(Nt::Comma);
    }

    fn semi(&mut self) {
        self.frames.clear();
        self.values = None;
        self.cast = 0;
        if self.out.len() > self.stmt_start {
            self.out.push(Nt::Semi);
            self.stmt_start = self.out.len();
        }
    }

    /// End of input: collapse lists the cut left open, drop a cut `VALUES` tail.
    fn finish(mut self) -> Vec<Nt> {
        while let Some(mut f) = self.frames.pop() {
            f.finish_item(true, true);
            match f.kind {
                FrameKind::In if f.is_const() => {
                    self.out.truncate(f.open + 1);
                    self.out.push(Nt::List);
                    self.note(Ev::ChildConst);
                }
                FrameKind::Array if f.is_const() => {
                    self.out.truncate(f.start);
                    self.lit();
                }
                _ => self.note(if f.is_const() { Ev::ChildConst } else { Ev::Other }),
            }
        }
        if let Some(v) = self.values.take() {
            match v.phase {
                Phase::In { start, comma: Some(c) } => {
                    if let Some((s, e)) = v.first
                        && let (Some(first), Some(part)) = (self.out.get(s..e), self.out.get(start..))
                        && cut_prefix(first, part, self.last_cut)
                    {
                        self.out.truncate(c);
                    }
                }
                Phase::Expect { comma: Some(c) } => self.out.truncate(c),
                _ => {}
            }
        }
        if self.out.last() == Some(&Nt::Semi) {
            self.out.pop();
        }
        self.out
    }
}

/// `part` is the start of `whole`, its last token possibly cut short (`NU` of `NULL`).
fn cut_prefix(whole: &[Nt], part: &[Nt], last_cut: bool) -> bool {
    let Some((last, init)) = part.split_last() else { return true };
    if !whole.starts_with(init) {
        return false;
    }
    match (whole.get(init.len()), last) {
        (Some(w), l) if w == l => true,
        (Some(Nt::Word { text: w, .. }), Nt::Word { text: l, .. }) | (Some(Nt::Quoted(w)), Nt::Quoted(l)) => {
            last_cut && w.len() > l.len() && w.get(..l.len()).is_some_and(|p| p.eq_ignore_ascii_case(l))
        }
        _ => false,
    }
}

/// Whether a `-`/`+` after `prev` is a sign rather than a binary operator.
fn unary_before(prev: Option<&Nt>) -> bool {
    match prev {
        None | Some(Nt::Op(_) | Nt::Open { .. } | Nt::Comma | Nt::Semi) => true,
        Some(Nt::Word { text, kw: true }) => !VALUE_KEYWORDS.contains(&text.as_str()),
        Some(_) => false,
    }
}

/// A token's text as valid UTF-8: case-folded (`Some(true)`: upper, `Some(false)`: lower), an
/// incomplete character at the end of the capture dropped.
fn display(raw: &[u8], at_end: bool, upper: Option<bool>) -> String {
    let mut bytes = match upper {
        Some(true) => raw.to_ascii_uppercase(),
        Some(false) => raw.to_ascii_lowercase(),
        None => raw.to_vec(),
    };
    if at_end {
        drop_partial_char(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Drops a UTF-8 lead byte and its continuation bytes at the end if the character is incomplete.
fn drop_partial_char(bytes: &mut Vec<u8>) {
    let n = bytes.len();
    let mut k = n;
    while k > 0 && n - k < 3 && bytes[k - 1] & 0xC0 == 0x80 {
        k -= 1;
    }
    let Some(&lead) = k.checked_sub(1).and_then(|p| bytes.get(p)) else { return };
    let need = match lead {
        0xF0.. => 4,
        0xE0.. => 3,
        0xC0.. => 2,
        _ => return,
    };
    if n - (k - 1) < need {
        bytes.truncate(k - 1);
    }
}

fn render(out: &[Nt]) -> String {
    let mut s = String::new();
    let mut prev: Option<&Nt> = None;
    for t in out {
        if let Some(p) = prev {
            let tight = matches!(p, Nt::Open { .. } | Nt::Dot | Nt::Cast)
                || matches!(t, Nt::Close(_) | Nt::Comma | Nt::Semi | Nt::Dot | Nt::Cast | Nt::Open { tight: true, .. });
            if !tight {
                s.push(' ');
            }
        }
        match t {
            Nt::Lit => s.push('?'),
            Nt::List => s.push_str("?+"),
            Nt::Word { text, .. } | Nt::Quoted(text) | Nt::Op(text) => s.push_str(text),
            Nt::Open { c, .. } | Nt::Close(c) => s.push(char::from(*c)),
            Nt::Comma => s.push(','),
            Nt::Semi => s.push(';'),
            Nt::Dot => s.push('.'),
            Nt::Cast => s.push_str("::"),
        }
        prev = Some(t);
    }
    s
}
