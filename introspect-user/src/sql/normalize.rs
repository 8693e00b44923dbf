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

use std::hash::Hasher;

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
mod shape;
mod summary;
#[cfg(test)]
mod tests;

use lex::*;
use shape::*;
use summary::*;
