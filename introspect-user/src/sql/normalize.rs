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

// ---------------------------------------------------------------------------------------------
// Lexer

/// When `#` starts a comment.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HashComment {
    /// PostgreSQL: `#` is an operator (XOR, `#>`, `#>>`, `#-`).
    Never,
    /// Unknown dialect, PostgreSQL reading: only before whitespace or first on its line, where
    /// PostgreSQL's operators practically never are.
    Heuristic,
    /// MySQL.
    Always,
}

/// One server's lexical rules, as far as they move token boundaries.
#[derive(Clone, Copy)]
struct Rules {
    /// Backslash escapes in ordinary quoted strings (always in `E'…'`).
    backslash: bool,
    /// `"…"` is a string, not an identifier.
    dquote_string: bool,
    hash: HashComment,
    /// `--` starts a comment only before whitespace or a control character (MySQL).
    dash_needs_space: bool,
    /// `/* /* */ */` nests (PostgreSQL).
    nested: bool,
    /// `/*! … */` content is SQL (MySQL).
    exec: bool,
}

const PG: Rules = Rules { backslash: false, dquote_string: false, hash: HashComment::Never, dash_needs_space: false, nested: true, exec: false };
/// PostgreSQL with `standard_conforming_strings` off.
const PG_LEGACY: Rules = Rules { backslash: true, ..PG };
const PG_AUTO: Rules = Rules { hash: HashComment::Heuristic, ..PG };
const MYSQL: Rules = Rules { backslash: true, dquote_string: true, hash: HashComment::Always, dash_needs_space: true, nested: false, exec: true };
/// MySQL with `NO_BACKSLASH_ESCAPES`.
const MYSQL_NBE: Rules = Rules { backslash: false, ..MYSQL };
/// MySQL with `"…"` as an identifier, for [`Dialect::Auto`] (see the module doc).
const MYSQL_AUTO: Rules = Rules { dquote_string: false, ..MYSQL };
const MYSQL_AUTO_NBE: Rules = Rules { backslash: false, ..MYSQL_AUTO };
const PG_AUTO_LEGACY: Rules = Rules { backslash: true, ..PG_AUTO };

/// A token's kind; its text is `text[s..e]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum K {
    /// Keyword or unquoted identifier.
    Word,
    /// `"…"`, `` `…` `` or `U&"…"`.
    Quoted,
    /// String, number or placeholder.
    Lit,
    /// Operator, or any other single punctuation byte.
    Op,
    Open(u8),
    Close(u8),
    Comma,
    Semi,
    Dot,
    Cast,
}

#[derive(Clone, Copy, Debug)]
struct Tok {
    k: K,
    s: usize,
    e: usize,
}

struct Lexed {
    toks: Vec<Tok>,
    /// The text ended inside a string, quoted identifier, comment or dollar-quote.
    open_end: bool,
    /// A string literal is immediately followed by a letter or digit: what a wrong reading of
    /// another dialect's escapes looks like (`'O\'` `Brien'`).
    anomaly: bool,
    /// Signs of a dialect, to break ties in [`Dialect::Auto`]: backticks and `/*!` for MySQL;
    /// `"…"`, `::`, `$1`, dollar-quotes and `E'…'` for PostgreSQL.
    mysql_marks: u32,
    pg_marks: u32,
}

/// The byte at `i`, or 0 past the end (0 is never a character the lexer looks for).
fn at(b: &[u8], i: usize) -> u8 {
    b.get(i).copied().unwrap_or(0)
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

fn is_op(c: u8) -> bool {
    matches!(c, b'+' | b'-' | b'*' | b'/' | b'<' | b'>' | b'=' | b'~' | b'!' | b'@' | b'#' | b'%' | b'^' | b'&' | b'|' | b'?')
}

fn lex(b: &[u8], r: Rules) -> Lexed {
    let n = b.len();
    let mut lx = Lexed { toks: Vec::with_capacity(n / 4 + 1), open_end: false, anomaly: false, mysql_marks: 0, pg_marks: 0 };
    let mut i = 0;
    let mut in_exec = false;
    // Only whitespace (or comments) so far on this line: for the `#` heuristic.
    let mut line_blank = true;
    while i < n {
        let c = b[i];
        if c == b'\n' {
            line_blank = true;
            i += 1;
            continue;
        }
        // Control bytes separate tokens like spaces: they're no literal, and dropping them keeps
        // the output printable.
        if c <= b' ' || c == 0x7f {
            i += 1;
            continue;
        }
        // Comments before operators: they start with operator characters.
        if c == b'-' && at(b, i + 1) == b'-' && dash_comment(b, i, r) || c == b'#' && hash_comment(b, i, r, line_blank) {
            i = line_end(b, i);
            continue;
        }
        if c == b'/' && at(b, i + 1) == b'*' {
            if at(b, i + 2) == b'!' || at(b, i + 2) == b'M' && at(b, i + 3) == b'!' {
                lx.mysql_marks += 1;
                if r.exec && !in_exec {
                    i += if at(b, i + 2) == b'!' { 3 } else { 4 };
                    while i < n && b[i].is_ascii_digit() {
                        i += 1;
                    }
                    in_exec = true;
                    continue;
                }
            }
            match block_end(b, i + 2, r.nested) {
                Some(j) => i = j,
                None => {
                    lx.open_end = true;
                    i = n;
                }
            }
            continue;
        }
        if in_exec && c == b'*' && at(b, i + 1) == b'/' {
            in_exec = false;
            i += 2;
            continue;
        }
        line_blank = false;
        let (k, e) = match c {
            b'\'' => string_tok(&mut lx, b, i + 1, b'\'', r.backslash),
            b'"' if r.dquote_string => string_tok(&mut lx, b, i + 1, b'"', r.backslash),
            b'"' | b'`' => {
                if c == b'`' {
                    lx.mysql_marks += 1;
                } else {
                    lx.pg_marks += 1;
                }
                ident_tok(&mut lx, b, i + 1, c)
            }
            b'$' => dollar(&mut lx, b, i),
            b'0'..=b'9' => (K::Lit, number_end(b, i)),
            // `.5` is a number, `t.5` hardly anything: a qualifying dot only right after a name.
            b'.' if at(b, i + 1).is_ascii_digit()
                && !lx.toks.last().is_some_and(|t| t.e == i && matches!(t.k, K::Word | K::Quoted | K::Close(_))) =>
            {
                (K::Lit, number_end(b, i))
            }
            b'.' => (K::Dot, i + 1),
            b'(' | b'[' => (K::Open(c), i + 1),
            b')' | b']' => (K::Close(c), i + 1),
            b',' => (K::Comma, i + 1),
            b';' => (K::Semi, i + 1),
            b':' if at(b, i + 1) == b':' => {
                lx.pg_marks += 1;
                (K::Cast, i + 2)
            }
            b':' if at(b, i + 1) == b'=' => (K::Op, i + 2),
            // `?|` and `?&` are jsonb operators; a lone `?` is a placeholder.
            b'?' if !matches!(at(b, i + 1), b'|' | b'&') => (K::Lit, i + 1),
            b'%' if pyformat(b, i).is_some() => (K::Lit, pyformat(b, i).unwrap_or(i + 1)),
            _ if is_ident_start(c) => word(&mut lx, b, i, r),
            _ if is_op(c) => (K::Op, op_end(b, i, r, in_exec)),
            _ => (K::Op, i + 1),
        };
        lx.toks.push(Tok { k, s: i, e });
        i = e.max(i + 1);
    }
    if in_exec {
        lx.open_end = true;
    }
    lx
}

fn dash_comment(b: &[u8], i: usize, r: Rules) -> bool {
    let d = at(b, i + 2);
    !r.dash_needs_space || d <= b' ' || d == 0x7f
}

fn hash_comment(b: &[u8], i: usize, r: Rules, line_blank: bool) -> bool {
    match r.hash {
        HashComment::Never => false,
        HashComment::Always => true,
        HashComment::Heuristic => line_blank || at(b, i + 1) <= b' ',
    }
}

/// Where the line holding `i` ends (its `\n` is left for the caller).
fn line_end(b: &[u8], i: usize) -> usize {
    b[i..].iter().position(|&c| c == b'\n').map_or(b.len(), |p| i + p)
}

/// The end of a block comment whose body starts at `from`; `None` if it runs off the end.
fn block_end(b: &[u8], from: usize, nested: bool) -> Option<usize> {
    let mut depth = 1usize;
    let mut p = from;
    while p + 1 < b.len() {
        if b[p] == b'*' && b[p + 1] == b'/' {
            depth -= 1;
            p += 2;
            if depth == 0 {
                return Some(p);
            }
        } else if nested && b[p] == b'/' && b[p + 1] == b'*' {
            depth += 1;
            p += 2;
        } else {
            p += 1;
        }
    }
    None
}

/// The end of a `q`-quoted run whose body starts at `from` (`qq` doubles a quote); `None` if it
/// runs off the end.
fn quoted_end(b: &[u8], from: usize, q: u8, backslash: bool) -> Option<usize> {
    let mut p = from;
    while p < b.len() {
        let c = b[p];
        if c == q {
            if at(b, p + 1) == q {
                p += 2;
                continue;
            }
            return Some(p + 1);
        }
        p += if backslash && c == b'\\' { 2 } else { 1 };
    }
    None
}

fn string_tok(lx: &mut Lexed, b: &[u8], from: usize, q: u8, backslash: bool) -> (K, usize) {
    match quoted_end(b, from, q, backslash) {
        Some(e) => {
            let next = at(b, e);
            if is_ident_start(next) || next.is_ascii_digit() {
                lx.anomaly = true;
            }
            (K::Lit, e)
        }
        None => {
            lx.open_end = true;
            (K::Lit, b.len())
        }
    }
}

fn ident_tok(lx: &mut Lexed, b: &[u8], from: usize, q: u8) -> (K, usize) {
    match quoted_end(b, from, q, false) {
        Some(e) => (K::Quoted, e),
        None => {
            lx.open_end = true;
            (K::Quoted, b.len())
        }
    }
}

/// A word, or a literal written with a prefix: `E'…'`, `B'…'`, `X'…'`, `N'…'`, `U&'…'`, `U&"…"`
/// and MySQL's `_charset'…'`.
fn word(lx: &mut Lexed, b: &[u8], i: usize, r: Rules) -> (K, usize) {
    let c = b[i];
    let c1 = at(b, i + 1);
    match c {
        b'e' | b'E' if c1 == b'\'' => {
            lx.pg_marks += 1;
            return string_tok(lx, b, i + 2, b'\'', true);
        }
        b'b' | b'B' | b'x' | b'X' | b'n' | b'N' if c1 == b'\'' => return string_tok(lx, b, i + 2, b'\'', r.backslash),
        b'u' | b'U' if c1 == b'&' && at(b, i + 2) == b'\'' => return string_tok(lx, b, i + 3, b'\'', r.backslash),
        b'u' | b'U' if c1 == b'&' && at(b, i + 2) == b'"' => {
            return if r.dquote_string { string_tok(lx, b, i + 3, b'"', r.backslash) } else { ident_tok(lx, b, i + 3, b'"') };
        }
        _ => {}
    }
    let mut j = i + 1;
    while j < b.len() && is_ident(b[j]) {
        j += 1;
    }
    if c == b'_' && at(b, j) == b'\'' {
        return string_tok(lx, b, j + 1, b'\'', r.backslash);
    }
    if c == b'_' && at(b, j) == b'"' && r.dquote_string {
        return string_tok(lx, b, j + 1, b'"', r.backslash);
    }
    (K::Word, j)
}

/// A number starting at `i`: greedy over letters, digits, `_` and `.` (and an exponent's sign), so
/// that no part of it can pass for an identifier.
fn number_end(b: &[u8], i: usize) -> usize {
    let radix = b[i] == b'0' && matches!(at(b, i + 1), b'x' | b'X' | b'b' | b'B' | b'o' | b'O');
    let mut j = i + 1;
    while j < b.len() {
        let c = b[j];
        if is_ident(c) || c == b'.' || matches!(c, b'+' | b'-') && !radix && matches!(b[j - 1], b'e' | b'E') && at(b, j + 1).is_ascii_digit() {
            j += 1;
        } else {
            break;
        }
    }
    j
}

/// `$1`, `$$…$$`, `$tag$…$tag$`, a MySQL identifier `$x`, or a lone `$`.
fn dollar(lx: &mut Lexed, b: &[u8], i: usize) -> (K, usize) {
    let n = b.len();
    let c1 = at(b, i + 1);
    let name_end = |from: usize| {
        let mut k = from;
        while k < n && is_ident(b[k]) && b[k] != b'$' {
            k += 1;
        }
        k
    };
    if c1.is_ascii_digit() {
        lx.pg_marks += 1;
        return (K::Lit, name_end(i + 1));
    }
    let tag_end = if c1 == b'$' {
        i + 1
    } else if is_ident_start(c1) {
        let k = name_end(i + 1);
        if at(b, k) != b'$' {
            return (K::Word, k);
        }
        k
    } else {
        return (K::Op, i + 1);
    };
    lx.pg_marks += 1;
    let tag = &b[i + 1..tag_end];
    // Each candidate `$` is compared over at most the bytes up to the next `$` (a tag has none), so
    // the search stays linear.
    let mut p = tag_end + 1;
    while let Some(off) = b.get(p..).and_then(|rest| rest.iter().position(|&c| c == b'$')) {
        let q = p + off;
        let after = q + 1 + tag.len();
        if b.get(q + 1..after) == Some(tag) && at(b, after) == b'$' {
            return (K::Lit, after + 1);
        }
        p = q + 1;
    }
    lx.open_end = true;
    (K::Lit, n)
}

/// Python's `%s` and `%(name)s` placeholders (text logged before interpolation).
fn pyformat(b: &[u8], i: usize) -> Option<usize> {
    match at(b, i + 1) {
        b's' if !is_ident(at(b, i + 2)) => Some(i + 2),
        // Only identifier-like keys, at most 64 bytes: `%(%(%(…` must not rescan.
        b'(' => {
            let close = i + 2 + b.get(i + 2..)?.iter().take(65).position(|&c| !(c.is_ascii_alphanumeric() || c == b'_'))?;
            if at(b, close) != b')' {
                return None;
            }
            (at(b, close + 1) == b's' && !is_ident(at(b, close + 2))).then_some(close + 2)
        }
        _ => None,
    }
}

/// The end of an operator starting at `i`, with PostgreSQL's rule that a multi-character operator
/// ends in `+` or `-` only if it holds one of `~ ! @ # % ^ & | ?` (so `=-5` is `=` then `-5`).
/// At most 64 bytes (PostgreSQL's limit is 63), so that no run is rescanned at length.
fn op_end(b: &[u8], i: usize, r: Rules, in_exec: bool) -> usize {
    // A sign chain (`5 - -1` written `5--1` under MySQL's rules) is one byte at a time: PostgreSQL
    // would trim it so anyway, and a long run stays linear.
    if matches!(b[i], b'+' | b'-') && matches!(at(b, i + 1), b'+' | b'-') {
        return i + 1;
    }
    let limit = b.len().min(i + 64);
    let mut j = i;
    while j < limit && is_op(b[j]) {
        let c = b[j];
        let next = at(b, j + 1);
        if j > i
            && (c == b'-' && next == b'-' && dash_comment(b, j, r)
                || c == b'/' && next == b'*'
                || c == b'#' && hash_comment(b, j, r, false)
                || c == b'?' && !matches!(b[j - 1], b'@' | b'?')
                || c == b'%' && pyformat(b, j).is_some())
        {
            break;
        }
        if in_exec && c == b'*' && next == b'/' {
            break;
        }
        j += 1;
    }
    let j = j.max(i + 1);
    let mut end = j;
    if end - i > 1 && !b[i..end].iter().any(|c| b"~!@#%^&|`?".contains(c)) {
        while end > i + 1 && matches!(b[end - 1], b'+' | b'-') {
            end -= 1;
        }
    }
    end
}

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

// ---------------------------------------------------------------------------------------------
// Summary

/// One summary per statement, distinct ones joined by `; ` while they fit in [`SUMMARY_MAX`].
fn summary(out: &[Nt]) -> String {
    let mut parts: Vec<String> = Vec::new();
    for stmt in out.split(|t| *t == Nt::Semi) {
        let s = summarize(stmt);
        if s.is_empty() || parts.contains(&s) {
            continue;
        }
        let len: usize = parts.iter().map(|p| p.len() + 2).sum();
        if parts.is_empty() {
            parts.push(clip(s, SUMMARY_MAX));
        } else if len + s.len() <= SUMMARY_MAX {
            parts.push(s);
        } else {
            break;
        }
        if parts.len() >= 8 {
            break;
        }
    }
    parts.join("; ")
}

/// Cuts `s` to at most `max` bytes, on a character boundary.
fn clip(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

fn word_is(t: Option<&Nt>, w: &str) -> bool {
    matches!(t, Some(Nt::Word { text, .. }) if text.eq_ignore_ascii_case(w))
}

/// A collection name's part: an identifier (not a keyword), de-quoted.
fn name_part(t: Option<&Nt>, allow_kw: bool) -> Option<String> {
    match t? {
        Nt::Word { text, kw } if allow_kw || !kw => Some(text.to_ascii_lowercase()),
        Nt::Quoted(q) => Some(dequote(q)),
        _ => None,
    }
}

fn dequote(q: &str) -> String {
    let q = q.strip_prefix("U&").or_else(|| q.strip_prefix("u&")).unwrap_or(q);
    let Some(quote) = q.chars().next() else { return String::new() };
    let body = &q[quote.len_utf8()..];
    let body = body.strip_suffix(quote).unwrap_or(body);
    body.replace(&format!("{quote}{quote}"), &quote.to_string())
}

/// A possibly qualified name at `j` (`schema.table`), and the index after it.
fn qualified_name(stmt: &[Nt], j: usize) -> Option<(String, usize)> {
    let mut name = name_part(stmt.get(j), false)?;
    let mut k = j + 1;
    while stmt.get(k) == Some(&Nt::Dot) {
        let Some(part) = name_part(stmt.get(k + 1), true) else { break };
        name.push('.');
        name.push_str(&part);
        k += 2;
    }
    Some((clip(name, 128), k))
}

/// Statements that name their operation after the `WITH` list.
const MAIN_OPS: &[&str] = &["DELETE", "INSERT", "MERGE", "SELECT", "TABLE", "UPDATE", "VALUES"];

/// Modifiers between a table-introducing keyword and the table.
const NAME_SKIP: &[&str] =
    &["CONCURRENTLY", "DELAYED", "EXISTS", "HIGH_PRIORITY", "IF", "IGNORE", "LATERAL", "LOW_PRIORITY", "NOT", "ONLY", "QUICK", "TABLE"];

fn summarize(stmt: &[Nt]) -> String {
    let mut i = 0;
    while matches!(stmt.get(i), Some(Nt::Open { .. })) {
        i += 1;
    }
    let Some(Nt::Word { text, .. }) = stmt.get(i) else { return String::new() };
    let first = clip(text.to_ascii_uppercase(), 64);
    let mut op = first.clone();
    let mut names: Vec<String> = Vec::new();
    let mut ctes: Vec<String> = Vec::new();
    match first.as_str() {
        "WITH" => {
            let mut depth = 0usize;
            let mut expect_name = true;
            for t in &stmt[i + 1..] {
                match t {
                    Nt::Open { .. } => depth += 1,
                    Nt::Close(_) => depth = depth.saturating_sub(1),
                    Nt::Comma if depth == 0 => expect_name = true,
                    Nt::Word { text, kw: true } if depth == 0 && MAIN_OPS.contains(&text.as_str()) && !expect_name => {
                        op.clone_from(text);
                        break;
                    }
                    _ if depth == 0 && expect_name => {
                        if let Some(n) = name_part(Some(t), false) {
                            if ctes.len() < 64 {
                                ctes.push(n);
                            }
                            expect_name = false;
                        }
                    }
                    _ => {}
                }
            }
        }
        "START" if word_is(stmt.get(i + 1), "TRANSACTION") => op = "START TRANSACTION".into(),
        "CREATE" | "DROP" | "ALTER" => {
            let mut j = i + 1;
            while ["OR", "REPLACE", "TEMP", "TEMPORARY", "UNLOGGED", "UNIQUE", "GLOBAL", "LOCAL"].iter().any(|w| word_is(stmt.get(j), w)) {
                j += 1;
            }
            if let Some(Nt::Word { text, .. }) = stmt.get(j) {
                let mut kind = clip(text.to_ascii_uppercase(), 32);
                if kind == "MATERIALIZED" && word_is(stmt.get(j + 1), "VIEW") {
                    kind.push_str(" VIEW");
                    j += 1;
                }
                op = format!("{first} {kind}");
                j += 1;
                while NAME_SKIP.iter().any(|w| word_is(stmt.get(j), w)) {
                    j += 1;
                }
                if let Some((name, _)) = qualified_name(stmt, j) {
                    names.push(name);
                }
            }
        }
        _ => {}
    }
    let mut funcs: Vec<bool> = Vec::new();
    for j in i..stmt.len() {
        if names.len() >= 3 {
            break;
        }
        let intro = match &stmt[j] {
            Nt::Open { tight, .. } => {
                funcs.push(*tight);
                false
            }
            Nt::Close(_) => {
                funcs.pop();
                false
            }
            Nt::Word { text, kw: true } => {
                let prev = j.checked_sub(1).and_then(|p| stmt.get(p));
                match text.as_str() {
                    // `EXTRACT(YEAR FROM x)`, `x IS DISTINCT FROM y`: no table.
                    "FROM" => !funcs.last().copied().unwrap_or(false) && !word_is(prev, "DISTINCT"),
                    "JOIN" | "INTO" | "TABLE" | "TABLES" => true,
                    // `ON DUPLICATE KEY UPDATE a = …`, `DO UPDATE SET`, `FOR UPDATE`.
                    "UPDATE" => !["KEY", "DO", "FOR", "ON"].iter().any(|w| word_is(prev, w)),
                    "TRUNCATE" | "COPY" | "DESCRIBE" | "DESC" => j == i,
                    "USING" => op == "DELETE" || op == "MERGE",
                    _ => false,
                }
            }
            _ => false,
        };
        if intro {
            let list = matches!(&stmt[j], Nt::Word { text, .. } if text == "FROM" || text == "UPDATE");
            read_names(stmt, j + 1, list, &ctes, &mut names);
        }
    }
    let mut s = op;
    for n in names {
        s.push(' ');
        s.push_str(&n);
    }
    clip(s, SUMMARY_MAX)
}

/// The table(s) after a table-introducing keyword at `j`: one, or a comma list (`FROM a x, b`).
fn read_names(stmt: &[Nt], mut j: usize, list: bool, ctes: &[String], names: &mut Vec<String>) {
    loop {
        while NAME_SKIP.iter().any(|w| is_kw(stmt.get(j), w)) {
            j += 1;
        }
        let Some((name, next)) = qualified_name(stmt, j) else { return };
        // `FROM generate_series(…)`: a function, not a table.
        if matches!(stmt.get(next), Some(Nt::Open { tight: true, c: b'(' })) {
            return;
        }
        if !ctes.contains(&name) && !names.contains(&name) && names.len() < 3 {
            names.push(name);
        }
        if !list {
            return;
        }
        j = next;
        if is_kw(stmt.get(j), "AS") {
            j += 1;
        }
        if name_part(stmt.get(j), false).is_some() {
            j += 1;
        }
        if stmt.get(j) != Some(&Nt::Comma) {
            return;
        }
        j += 1;
    }
}

// ---------------------------------------------------------------------------------------------
// Keywords

/// Upper-cased in the shape, and not taken for table names. Sorted, for `binary_search`; words that
/// are often column or table names (`user`, `date`, `type`, `status`) are left out on purpose.
const KEYWORDS: &[&str] = &[
    "ABORT",
    "ADD",
    "ALL",
    "ALTER",
    "ANALYZE",
    "AND",
    "ANY",
    "ARRAY",
    "AS",
    "ASC",
    "BEGIN",
    "BETWEEN",
    "BINARY",
    "BOTH",
    "BY",
    "CASCADE",
    "CASE",
    "CAST",
    "CHECK",
    "COLLATE",
    "COLUMN",
    "COMMIT",
    "CONCURRENTLY",
    "CONFLICT",
    "CONSTRAINT",
    "COPY",
    "CREATE",
    "CROSS",
    "CURRENT_DATE",
    "CURRENT_TIME",
    "CURRENT_TIMESTAMP",
    "CURRENT_USER",
    "DATABASE",
    "DEALLOCATE",
    "DECLARE",
    "DEFAULT",
    "DEFERRABLE",
    "DELAYED",
    "DELETE",
    "DESC",
    "DESCRIBE",
    "DISTINCT",
    "DO",
    "DROP",
    "DUPLICATE",
    "ELSE",
    "END",
    "ESCAPE",
    "EXCEPT",
    "EXECUTE",
    "EXISTS",
    "EXPLAIN",
    "FALSE",
    "FETCH",
    "FILTER",
    "FOR",
    "FORCE",
    "FOREIGN",
    "FROM",
    "FULL",
    "FUNCTION",
    "GRANT",
    "GROUP",
    "HAVING",
    "HIGH_PRIORITY",
    "IF",
    "IGNORE",
    "ILIKE",
    "IN",
    "INDEX",
    "INNER",
    "INSERT",
    "INTERSECT",
    "INTERVAL",
    "INTO",
    "IS",
    "ISNULL",
    "JOIN",
    "KEY",
    "LATERAL",
    "LEADING",
    "LEFT",
    "LIKE",
    "LIMIT",
    "LOCALTIME",
    "LOCALTIMESTAMP",
    "LOCK",
    "LOCKED",
    "LOW_PRIORITY",
    "MATCHED",
    "MATERIALIZED",
    "MERGE",
    "NATURAL",
    "NOT",
    "NOTHING",
    "NOTNULL",
    "NOWAIT",
    "NULL",
    "NULLS",
    "OF",
    "OFFSET",
    "ON",
    "ONLY",
    "OR",
    "ORDER",
    "OUTER",
    "OVER",
    "PARTITION",
    "PREPARE",
    "PRIMARY",
    "QUICK",
    "RECURSIVE",
    "REFERENCES",
    "REGEXP",
    "RELEASE",
    "RENAME",
    "REPLACE",
    "RESET",
    "RETURNING",
    "REVOKE",
    "RIGHT",
    "RLIKE",
    "ROLLBACK",
    "ROW",
    "ROWS",
    "SAVEPOINT",
    "SCHEMA",
    "SELECT",
    "SEQUENCE",
    "SESSION_USER",
    "SET",
    "SHARE",
    "SHOW",
    "SIMILAR",
    "SKIP",
    "SOME",
    "START",
    "STDIN",
    "STDOUT",
    "STRAIGHT_JOIN",
    "TABLE",
    "TABLES",
    "TEMP",
    "TEMPORARY",
    "THEN",
    "TO",
    "TRAILING",
    "TRANSACTION",
    "TRIGGER",
    "TRUE",
    "TRUNCATE",
    "UNION",
    "UNIQUE",
    "UNLOGGED",
    "UPDATE",
    "USE",
    "USING",
    "VACUUM",
    "VALUES",
    "VIEW",
    "WHEN",
    "WHERE",
    "WINDOW",
    "WITH",
    "WITHOUT",
    "WORK",
    "XOR",
];

fn is_keyword(raw: &[u8]) -> bool {
    if raw.len() > 20 || !raw.iter().all(|c| c.is_ascii_alphabetic() || *c == b'_') {
        return false;
    }
    let upper = raw.to_ascii_uppercase();
    // All ASCII, so this is the same string.
    let upper = String::from_utf8_lossy(&upper);
    KEYWORDS.binary_search(&upper.as_ref()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::Config;

    fn norm(d: Dialect, s: &str) -> Normalized {
        normalize_as(s.as_bytes(), false, d)
    }

    /// Checks `(input, shape, summary)` rows under `d`, reporting every failing row at once.
    fn check(d: Dialect, rows: &[(&str, &str, &str)]) {
        let mut bad = Vec::new();
        for &(input, shape, summary) in rows {
            let n = norm(d, input);
            if n.shape != shape || n.summary != summary {
                bad.push(format!("{d:?} {input:?}\n   got  {:?} | {:?}\n   want {shape:?} | {summary:?}", n.shape, n.summary));
            }
            assert_eq!(n.fingerprint, fingerprint(n.shape.as_bytes()));
        }
        assert!(bad.is_empty(), "{} of {} rows differ:\n{}", bad.len(), rows.len(), bad.join("\n"));
    }

    /// Real ORM and driver output: Django on psycopg2 (client-bound), psycopg3 (server-bound),
    /// PyMySQL/mysqlclient.
    #[test]
    fn django_and_drivers() {
        check(
            Dialect::Auto,
            &[
                (
                    r#"SELECT "library_book"."id", "library_book"."title", "library_book"."author_id" FROM "library_book" WHERE "library_book"."id" = 17 LIMIT 21"#,
                    r#"SELECT "library_book"."id", "library_book"."title", "library_book"."author_id" FROM "library_book" WHERE "library_book"."id" = ? LIMIT ?"#,
                    "SELECT library_book",
                ),
                ("INSERT INTO items (id, v) VALUES (4242, 'atomic')", "INSERT INTO items (id, v) VALUES (?, ?)", "INSERT items"),
                (
                    r#"SELECT "library_author"."id", "library_author"."name" FROM "library_author" WHERE "library_author"."id" = $1 LIMIT 21"#,
                    r#"SELECT "library_author"."id", "library_author"."name" FROM "library_author" WHERE "library_author"."id" = ? LIMIT ?"#,
                    "SELECT library_author",
                ),
                (
                    r#"SELECT "app_book"."id", "app_author"."name" FROM "app_book" INNER JOIN "app_author" ON ("app_book"."author_id" = "app_author"."id") WHERE "app_author"."name" = 'Le Guin'"#,
                    r#"SELECT "app_book"."id", "app_author"."name" FROM "app_book" INNER JOIN "app_author" ON ("app_book"."author_id" = "app_author"."id") WHERE "app_author"."name" = ?"#,
                    "SELECT app_book app_author",
                ),
                (
                    r#"SELECT "t"."id" FROM "t" /*controller='index',db_driver='psycopg2',framework='django%3A4.2',route='%5Eindex%2F%24',traceparent='00-5bd66ef5095369c7b0d1f8f4bd33716a-c532cb4098ac3dd2-01'*/"#,
                    r#"SELECT "t"."id" FROM "t""#,
                    "SELECT t",
                ),
                (r#"SELECT COUNT(*) AS "__count" FROM "library_book""#, r#"SELECT count(*) AS "__count" FROM "library_book""#, "SELECT library_book"),
                (
                    r#"INSERT INTO "t" ("a", "b") VALUES (1, 'x'), (2, 'y'), (3, 'z') RETURNING "t"."id""#,
                    r#"INSERT INTO "t" ("a", "b") VALUES (?, ?) RETURNING "t"."id""#,
                    "INSERT t",
                ),
                (
                    r#"UPDATE "auth_user" SET "last_login" = '2024-01-01T00:00:00+00:00'::timestamptz WHERE "auth_user"."id" = 1"#,
                    r#"UPDATE "auth_user" SET "last_login" = ?::timestamptz WHERE "auth_user"."id" = ?"#,
                    "UPDATE auth_user",
                ),
                (
                    r#"DELETE FROM "t" WHERE "t"."id" IN (SELECT U0."id" FROM "u" U0 WHERE U0."k" IN (1, 2))"#,
                    r#"DELETE FROM "t" WHERE "t"."id" IN (SELECT u0."id" FROM "u" u0 WHERE u0."k" IN (?+))"#,
                    "DELETE t u",
                ),
                (
                    r#"SELECT DISTINCT "a"."x" FROM "a" WHERE ("a"."id" IN (1, 2, 3) AND "a"."on" = true) ORDER BY "a"."x" ASC"#,
                    r#"SELECT DISTINCT "a"."x" FROM "a" WHERE ("a"."id" IN (?+) AND "a"."on" = TRUE) ORDER BY "a"."x" ASC"#,
                    "SELECT a",
                ),
                (r#"SAVEPOINT "s140234567_x1""#, "SAVEPOINT ?", "SAVEPOINT"),
                (r#"RELEASE SAVEPOINT "s140234567_x1""#, "RELEASE SAVEPOINT ?", "RELEASE"),
                (r#"ROLLBACK TO SAVEPOINT "s140234567_x1""#, "ROLLBACK TO SAVEPOINT ?", "ROLLBACK"),
                ("SAVEPOINT `s1_x2`", "SAVEPOINT ?", "SAVEPOINT"),
                (r"SELECT * FROM t WHERE name = 'O\'Brien' AND x IN (1,2,3)", "SELECT * FROM t WHERE name = ? AND x IN (?+)", "SELECT t"),
                (
                    "SELECT `library_book`.`id` FROM `library_book` WHERE `library_book`.`id` = 17 LIMIT 21",
                    "SELECT `library_book`.`id` FROM `library_book` WHERE `library_book`.`id` = ? LIMIT ?",
                    "SELECT library_book",
                ),
                (
                    r"INSERT INTO `t` (`a`) VALUES (_binary'\x00\'\\'), (x'1F'), (0x1F), (b'101'), (N'y'), (_utf8mb4'z')",
                    "INSERT INTO `t` (`a`) VALUES (?)",
                    "INSERT t",
                ),
                (
                    "INSERT INTO t (a) VALUES (1) ON DUPLICATE KEY UPDATE a = VALUES(a)",
                    "INSERT INTO t (a) VALUES (?) ON DUPLICATE KEY UPDATE a = VALUES (a)",
                    "INSERT t",
                ),
                ("SET TIME ZONE 'UTC'", "SET time zone ?", "SET"),
                ("SET NAMES 'utf8mb4' COLLATE 'utf8mb4_unicode_ci'", "SET names ? COLLATE ?", "SET"),
                ("SET autocommit=0", "SET autocommit = ?", "SET"),
            ],
        );
    }

    #[test]
    fn literals() {
        check(
            Dialect::Auto,
            &[
                (r"SELECT 'it''s', E'\'s3cr', e'\\', B'101', X'1F', U&'d\0061t', N'x' FROM t", "SELECT ?, ?, ?, ?, ?, ?, ? FROM t", "SELECT t"),
                ("SELECT $$a'b$$, $fn$ x $$ y $fn$, $a$ $b$ $a$, $a$$a$ FROM t", "SELECT ?, ?, ?, ? FROM t", "SELECT t"),
                (r"SELECT a FROM t WHERE p = 'C:\' AND q = 'x'", "SELECT a FROM t WHERE p = ? AND q = ?", "SELECT t"),
                (r"SELECT * FROM t WHERE a ~ '^\d+$' AND b = 'x'", "SELECT * FROM t WHERE a ~ ? AND b = ?", "SELECT t"),
                ("SELECT 'a' 'b', 'x'\n'y'", "SELECT ?, ?", "SELECT"),
                ("SELECT 1_000_000, 5abc, 1.5e+10, 1e-3, .5, 0x1F, 0b101, 0o17, 12., 1E5", "SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?", "SELECT"),
                ("SELECT t1, col_2, \"x1\", a1b2, t$1 FROM t1", "SELECT t1, col_2, \"x1\", a1b2, t$1 FROM t1", "SELECT t1"),
                ("SELECT $1, ?, %s, %(name)s, $12, a % b, 5%3", "SELECT ?, ?, ?, ?, ?, a % b, ? % ?", "SELECT"),
                ("SELECT TRUE, false, NULL, null IS NULL", "SELECT TRUE, FALSE, NULL, NULL IS NULL", "SELECT"),
                (
                    "SELECT a-1, a - 1, x = -5, (-1, +2), CURRENT_DATE - 1, x - -1, -y, 3-2",
                    "SELECT a - ?, a - ?, x = ?, (?, ?), CURRENT_DATE - ?, x - ?, - y, ? - ?",
                    "SELECT",
                ),
                ("SELECT * FROM t WHERE a=-1 AND b<>-2 AND c*-3 > 0", "SELECT * FROM t WHERE a = ? AND b <> ? AND c * ? > ?", "SELECT t"),
                ("SELECT INTERVAL '1 day', DATE '2024-01-01', timestamp'2024-01-01'", "SELECT INTERVAL ?, date ?, timestamp ?", "SELECT"),
                (
                    "SELECT x::timestamp with time zone, $1::int, '{1,2}'::int[], y::double precision, z::numeric(10,2) FROM t",
                    "SELECT x::timestamp with time zone, ?::int, ?::int[], y::double precision, z::numeric(?, ?) FROM t",
                    "SELECT t",
                ),
                (
                    "SELECT data #>> '{a,b}', data ?| ARRAY['a'], data @? '$.a', data #- '{a}' FROM t",
                    "SELECT data #>> ?, data ?| ?, data @? ?, data #- ? FROM t",
                    "SELECT t",
                ),
            ],
        );
    }

    #[test]
    fn comments_whitespace_case() {
        check(
            Dialect::Auto,
            &[
                ("-- leading\nSELECT 1 -- trailing", "SELECT ?", "SELECT"),
                ("SELECT a /* x */ FROM t", "SELECT a FROM t", "SELECT t"),
                ("SELECT /* a /* nested */ b */ 1", "SELECT ?", "SELECT"),
                ("SELECT 1 # comment\nFROM t", "SELECT ? FROM t", "SELECT t"),
                ("# leading comment\nSELECT 1", "SELECT ?", "SELECT"),
                ("/*!40101 SET NAMES utf8mb4 */", "SET names utf8mb4", "SET"),
                ("SELECT /*!40001 SQL_NO_CACHE */ * FROM t", "SELECT sql_no_cache * FROM t", "SELECT t"),
                ("SELECT /*+ MAX_EXECUTION_TIME(1000) */ a FROM t", "SELECT a FROM t", "SELECT t"),
                ("select ID from Users where Name = 'x'", "SELECT id FROM users WHERE name = ?", "SELECT users"),
                ("SELECT\n\t a ,b\r\n FROM   t\x0b", "SELECT a, b FROM t", "SELECT t"),
                ("SELECT \"naïve\", ñame, café FROM \"tåble\"", "SELECT \"naïve\", ñame, café FROM \"tåble\"", "SELECT tåble"),
                ("SELECT count ( * ) , lower ( x ) FROM t", "SELECT count(*), lower(x) FROM t", "SELECT t"),
            ],
        );
    }

    #[test]
    fn lists() {
        check(
            Dialect::Auto,
            &[
                (
                    "SELECT * FROM t WHERE a IN (1) AND b IN (1, 2, 3) AND c IN ('a', 'b') AND d NOT IN ($1, $2) AND e IN ((1, 2), (3, 4)) \
                     AND f IN ('2024-01-01'::date, '2024-01-02'::date) AND g IN (-1, 2)",
                    "SELECT * FROM t WHERE a IN (?+) AND b IN (?+) AND c IN (?+) AND d NOT IN (?+) AND e IN (?+) AND f IN (?+) AND g IN (?+)",
                    "SELECT t",
                ),
                (
                    "SELECT * FROM t WHERE g = ANY(ARRAY[1, 2]) AND h = ANY($1) AND i IN (NULL, 1) AND j IN (x, 1) AND k IN (SELECT 1)",
                    "SELECT * FROM t WHERE g = ANY (?) AND h = ANY (?) AND i IN (NULL, ?) AND j IN (x, ?) AND k IN (SELECT ?)",
                    "SELECT t",
                ),
                ("SELECT ARRAY[[1,2],[3,4]], a[1], ARRAY[x, 1], ARRAY[]::int[]", "SELECT ?, a[?], ARRAY[x, ?], ARRAY[]::int[]", "SELECT"),
                ("INSERT INTO t (a, b) VALUES (1, 'x'), (2, NULL), (3, 'z'), (4, NULL)", "INSERT INTO t (a, b) VALUES (?, ?), (?, NULL)", "INSERT t"),
                ("INSERT INTO t VALUES (1, now()), (2, now())", "INSERT INTO t VALUES (?, now())", "INSERT t"),
                ("SELECT * FROM (VALUES (1, 'a'), (2, 'b')) AS v (n, s)", "SELECT * FROM (VALUES (?, ?)) AS v(n, s)", "SELECT"),
            ],
        );
    }

    #[test]
    fn statements_and_summaries() {
        check(
            Dialect::Auto,
            &[
                ("select 1; select 2;", "SELECT ?; SELECT ?", "SELECT"),
                (
                    "SELECT a FROM t WHERE id = 5; COMMIT; SELECT b FROM u",
                    "SELECT a FROM t WHERE id = ?; COMMIT; SELECT b FROM u",
                    "SELECT t; COMMIT; SELECT u",
                ),
                (";; SELECT 1 ;;", "SELECT ?", "SELECT"),
                ("", "", ""),
                ("-- only a comment", "", ""),
                ("BEGIN", "BEGIN", "BEGIN"),
                ("START TRANSACTION ISOLATION LEVEL READ COMMITTED", "START TRANSACTION isolation level read committed", "START TRANSACTION"),
                ("COMMIT", "COMMIT", "COMMIT"),
                ("ROLLBACK", "ROLLBACK", "ROLLBACK"),
                ("SET search_path TO public", "SET search_path TO public", "SET"),
                ("SHOW TABLES", "SHOW TABLES", "SHOW"),
                ("SHOW server_version", "SHOW server_version", "SHOW"),
                (
                    r#"CREATE TABLE IF NOT EXISTS "app_x" ("id" serial NOT NULL PRIMARY KEY)"#,
                    r#"CREATE TABLE IF NOT EXISTS "app_x" ("id" serial NOT NULL PRIMARY KEY)"#,
                    "CREATE TABLE app_x",
                ),
                ("DROP TABLE IF EXISTS a.b CASCADE", "DROP TABLE IF EXISTS a.b CASCADE", "DROP TABLE a.b"),
                (r#"CREATE UNIQUE INDEX CONCURRENTLY "i" ON "t" ("a")"#, r#"CREATE UNIQUE INDEX CONCURRENTLY "i" ON "t" ("a")"#, "CREATE INDEX i"),
                (
                    r#"ALTER TABLE ONLY "t" ADD CONSTRAINT c FOREIGN KEY (x) REFERENCES "u" ("id")"#,
                    r#"ALTER TABLE ONLY "t" ADD CONSTRAINT c FOREIGN KEY (x) REFERENCES "u" ("id")"#,
                    "ALTER TABLE t",
                ),
                ("CREATE MATERIALIZED VIEW mv AS SELECT * FROM t", "CREATE MATERIALIZED VIEW mv AS SELECT * FROM t", "CREATE MATERIALIZED VIEW mv t"),
                ("TRUNCATE TABLE t", "TRUNCATE TABLE t", "TRUNCATE t"),
                ("COPY t (a, b) FROM STDIN", "COPY t (a, b) FROM STDIN", "COPY t"),
                (
                    "WITH x AS (SELECT * FROM orders) SELECT * FROM x JOIN customers c ON c.id = x.cid",
                    "WITH x AS (SELECT * FROM orders) SELECT * FROM x JOIN customers c ON c.id = x.cid",
                    "SELECT orders customers",
                ),
                (
                    "WITH a AS (SELECT 1), b AS (SELECT 2) INSERT INTO t SELECT * FROM a, b",
                    "WITH a AS (SELECT ?), b AS (SELECT ?) INSERT INTO t SELECT * FROM a, b",
                    "INSERT t",
                ),
                (
                    "WITH RECURSIVE t(n) AS (VALUES (1) UNION ALL SELECT n+1 FROM t WHERE n < 100) SELECT sum(n) FROM t",
                    "WITH RECURSIVE t(n) AS (VALUES (?) UNION ALL SELECT n + ? FROM t WHERE n < ?) SELECT sum(n) FROM t",
                    "SELECT",
                ),
                (
                    "SELECT * FROM a, b AS bb, c WHERE x IS DISTINCT FROM y AND EXTRACT(YEAR FROM d) = 2020",
                    "SELECT * FROM a, b AS bb, c WHERE x IS DISTINCT FROM y AND extract(year FROM d) = ?",
                    "SELECT a b c",
                ),
                (
                    "SELECT * FROM generate_series(1, 10) g JOIN \"x\".\"y\" ON true",
                    "SELECT * FROM generate_series(?, ?) g JOIN \"x\".\"y\" ON TRUE",
                    "SELECT x.y",
                ),
                (
                    "SELECT 1 FROM public.orders o LEFT OUTER JOIN \"Sales\".\"Customers\" c ON o.cid = c.id JOIN items i ON TRUE JOIN extra e ON TRUE",
                    "SELECT ? FROM public.orders o LEFT OUTER JOIN \"Sales\".\"Customers\" c ON o.cid = c.id JOIN items i ON TRUE JOIN extra e ON TRUE",
                    "SELECT public.orders Sales.Customers items",
                ),
                ("UPDATE a, b SET a.x = b.y WHERE a.id = b.id", "UPDATE a, b SET a.x = b.y WHERE a.id = b.id", "UPDATE a b"),
                (
                    "INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v",
                    "INSERT INTO t VALUES (?) ON CONFLICT (id) DO UPDATE SET v = excluded.v",
                    "INSERT t",
                ),
                ("SELECT * FROM t FOR UPDATE OF t NOWAIT", "SELECT * FROM t FOR UPDATE OF t NOWAIT", "SELECT t"),
                ("(SELECT a FROM t) UNION (SELECT b FROM u)", "(SELECT a FROM t) UNION (SELECT b FROM u)", "SELECT t u"),
                (
                    "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = 1",
                    "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = ?",
                    "MERGE t s",
                ),
                ("DELETE FROM ONLY t USING u WHERE t.id = u.id", "DELETE FROM ONLY t USING u WHERE t.id = u.id", "DELETE t u"),
                ("EXPLAIN ANALYZE SELECT * FROM t", "EXPLAIN ANALYZE SELECT * FROM t", "EXPLAIN t"),
                ("INSERT IGNORE INTO `db`.`t` (a) VALUES (1)", "INSERT IGNORE INTO `db`.`t` (a) VALUES (?)", "INSERT db.t"),
            ],
        );
    }

    #[test]
    fn postgres_rules() {
        check(
            Dialect::Postgres,
            &[
                ("SELECT 5 # 3, a #> '{x}'", "SELECT ? # ?, a #> ?", "SELECT"),
                (r"SELECT a FROM t WHERE p = 'C:\' AND q = 'x'", "SELECT a FROM t WHERE p = ? AND q = ?", "SELECT t"),
                ("SELECT /*!40101 x */ 1", "SELECT ?", "SELECT"),
                (r#"SELECT "a""b" FROM "t""#, r#"SELECT "a""b" FROM "t""#, r#"SELECT t"#),
                ("SELECT 5--1\n, 2", "SELECT ?, ?", "SELECT"),
            ],
        );
    }

    #[test]
    fn mysql_rules() {
        check(
            Dialect::MySql,
            &[
                (r#"SELECT a FROM t WHERE p = "bob" AND `x` = 'it\'s'"#, "SELECT a FROM t WHERE p = ? AND `x` = ?", "SELECT t"),
                ("SELECT /*!40001 SQL_NO_CACHE */ * FROM t", "SELECT sql_no_cache * FROM t", "SELECT t"),
                ("SELECT 1 #c\nFROM t", "SELECT ? FROM t", "SELECT t"),
                ("SELECT 5--1", "SELECT ? - ?", "SELECT"),
                ("SELECT 5 -- 1\n, 2", "SELECT ?, ?", "SELECT"),
                ("SELECT `a``b` FROM `t`", "SELECT `a``b` FROM `t`", "SELECT t"),
                (r"SELECT * FROM t WHERE name = 'O\'Brien' AND x IN (1,2,3)", "SELECT * FROM t WHERE name = ? AND x IN (?+)", "SELECT t"),
            ],
        );
        // The server may run with NO_BACKSLASH_ESCAPES: the backslash reading can't keep `x`.
        let n = norm(Dialect::MySql, r"SELECT a FROM t WHERE p = 'C:\' AND q = 'x'");
        assert!(!n.shape.contains('x'), "{n:?}");
    }

    #[test]
    fn truncation() {
        for (input, shape) in [
            ("SELECT * FROM t WHERE token = 'S3CR3T", "SELECT * FROM t WHERE token = ?"),
            ("SELECT 1 /* abc", "SELECT ?"),
            ("SELECT $x$abc", "SELECT ?"),
            ("SELECT \"abc", "SELECT \"abc"),
            (r"SELECT E'abc\'", "SELECT ?"),
            ("SELECT /*!40101 SQL_NO_CACHE", "SELECT sql_no_cache"),
        ] {
            let n = normalize(input.as_bytes(), false);
            assert_eq!((n.shape.as_str(), n.truncated), (shape, true), "{input:?}");
        }
        assert!(!normalize(b"SELECT 1", false).truncated);
        assert!(normalize(b"SELECT 1", true).truncated);
        // Cut in a list or a VALUES tuple: the shape of the whole.
        let full = normalize(b"SELECT * FROM t WHERE id IN (1, 2, 3)", false);
        let cut = normalize(b"SELECT * FROM t WHERE id IN (1, 2", true);
        assert_eq!(cut.shape, "SELECT * FROM t WHERE id IN (?+");
        assert_eq!(full.shape, "SELECT * FROM t WHERE id IN (?+)");
        // MySQL-escaped literals cut: the apostrophes don't spoil the shape.
        let n = normalize_as(br"INSERT INTO t (a, b) VALUES ('O\'Brien', 1), ('it\'s', 2), ('x", true, Dialect::MySql);
        assert_eq!(n.shape, "INSERT INTO t (a, b) VALUES (?, ?)");
    }

    #[test]
    fn utf8_at_the_edges() {
        let text = "SELECT café".as_bytes();
        assert_eq!(normalize(&text[..text.len() - 1], true).shape, "SELECT caf");
        let text = "SELECT \"naïve\"".as_bytes();
        assert_eq!(normalize(&text[..11], true).shape, "SELECT \"na");
        let n = normalize(b"SELECT \xff\xfe FROM t WHERE a = '\xff'", false);
        assert_eq!(n.shape, "SELECT \u{fffd}\u{fffd} FROM t WHERE a = ?");
        for cut in 0..="SELECT 'é' FROM ü".len() {
            let _ = normalize(&"SELECT 'é' FROM ü".as_bytes()[..cut], true);
        }
    }

    /// Each group: one shape. Across groups: different ones.
    #[test]
    fn same_and_different_fingerprints() {
        let groups: &[&[&str]] = &[
            &[
                "SELECT * FROM t WHERE id = 5",
                "select * from t where id = $1",
                "SELECT * FROM t WHERE id = %s",
                "SELECT * FROM t WHERE id = ?",
                "SELECT  *\n FROM t WHERE id = -5 -- c",
                "SELECT * FROM t WHERE id = '5'",
                "/*app='x'*/ SELECT * FROM T WHERE ID = 5;",
            ],
            &[
                r#"SELECT "library_author"."id" FROM "library_author" WHERE "library_author"."id" = 3 LIMIT 21"#,
                r#"SELECT "library_author"."id" FROM "library_author" WHERE "library_author"."id" = $1 LIMIT 21"#,
            ],
            &[
                "SELECT * FROM t WHERE id IN (1)",
                "SELECT * FROM t WHERE id IN (1, 2)",
                "SELECT * FROM t WHERE id IN (1,2,3)",
                "SELECT * FROM t WHERE id IN ($1, $2, $3, $4)",
                "SELECT * FROM t WHERE id IN (%s, %s)",
            ],
            &["SELECT * FROM t WHERE id = ANY(ARRAY[1,2,3])", "SELECT * FROM t WHERE id = ANY($1)", "SELECT * FROM t WHERE id = ANY('{1,2}')"],
            &[
                "INSERT INTO t (a, b) VALUES (1, 'x')",
                "INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y'), (3, 'z')",
                "INSERT INTO t (a, b) VALUES ($1, $2)",
            ],
            &["SELECT * FROM t WHERE id > 5"],
            &["SELECT * FROM t WHERE id = 5 AND x IS NULL"],
            &["SELECT * FROM t WHERE id = TRUE"],
            &["SELECT * FROM u WHERE id = 5"],
        ];
        let mut seen = HashMap::new();
        for (g, group) in groups.iter().enumerate() {
            let want = fp(group[0]);
            for s in *group {
                assert_eq!(fp(s), want, "{s:?} vs {:?}: {:?} vs {:?}", group[0], shape(s), shape(group[0]));
            }
            if let Some(other) = seen.insert(want, g) {
                panic!("groups {other} and {g} share a fingerprint");
            }
        }
    }

    fn fp(s: &str) -> u64 {
        normalize(s.as_bytes(), false).fingerprint
    }

    fn shape(s: &str) -> String {
        normalize(s.as_bytes(), false).shape
    }

    #[test]
    fn long_statement_cut_before_its_last_literal() {
        let columns: Vec<String> = (0..300).map(|i| format!("\"t\".\"column_{i}\"")).collect();
        let head = format!("SELECT {} FROM \"t\" WHERE \"t\".\"note\" = '", columns.join(", "));
        let mut fps = Vec::new();
        for secret in ["a", "S3CR3T", "x'y\\z", "0123456789"] {
            let text = format!("{head}{}'", secret.repeat(8000 / secret.len()));
            assert!(text.len() > 9000);
            let n = normalize(&text.as_bytes()[..1024], true);
            assert!(n.truncated);
            fps.push(n.fingerprint);
        }
        assert!(fps.windows(2).all(|w| w[0] == w[1]));
        // Cut inside that literal: the literal is gone too.
        let text = format!("SELECT a FROM t WHERE note = '{}'", "S3CR3T".repeat(2000));
        let n = normalize(&text.as_bytes()[..1024], true);
        assert_eq!((n.shape.as_str(), n.truncated), ("SELECT a FROM t WHERE note = ?", true));
    }

    #[test]
    fn bulk_insert_cut_anywhere_after_the_first_tuple() {
        let rows: Vec<String> = (0..40).map(|i| format!("({i}, 'name {i}', {i}.5, NULL)")).collect();
        let text = format!("INSERT INTO t (a, b, c, d) VALUES {}", rows.join(", "));
        let full = normalize(text.as_bytes(), false);
        assert_eq!(full.shape, "INSERT INTO t (a, b, c, d) VALUES (?, ?, ?, NULL)");
        let first_end = text.find("), (").unwrap_or(0) + 1;
        for cut in first_end..text.len() {
            let n = normalize(&text.as_bytes()[..cut], true);
            assert_eq!(n.fingerprint, full.fingerprint, "cut at {cut}: {:?}", n.shape);
        }
    }

    /// The algorithm is FNV-1a 64 (published vectors for "" "a" "foobar"), and shapes keep their
    /// fingerprints: a change here changes every stored fingerprint.
    #[test]
    fn golden_fingerprints() {
        assert_eq!(fingerprint(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fingerprint(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fingerprint(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(shape("SELECT * FROM t WHERE id = 5"), "SELECT * FROM t WHERE id = ?");
        assert_eq!(fp("SELECT * FROM t WHERE id = 5"), GOLDEN_SELECT);
        assert_eq!(fp("INSERT INTO items (id, v) VALUES (4242, 'atomic')"), GOLDEN_INSERT);
        assert_eq!(fp("BEGIN"), GOLDEN_BEGIN);
    }

    /// FNV-1a 64 of `SELECT * FROM t WHERE id = ?`, `INSERT INTO items (id, v) VALUES (?, ?)`,
    /// `BEGIN` (checked against an independent implementation).
    const GOLDEN_SELECT: u64 = 0x813e_1ea2_c1fb_f511;
    const GOLDEN_INSERT: u64 = 0x591b_7c06_0857_7775;
    const GOLDEN_BEGIN: u64 = 0x1a1a_33b8_39bb_217e;

    #[test]
    fn dialect_names() {
        assert_eq!("PostgreSQL".parse(), Ok(Dialect::Postgres));
        assert_eq!("mariadb".parse(), Ok(Dialect::MySql));
        assert_eq!("auto".parse(), Ok(Dialect::Auto));
        assert!("oracle".parse::<Dialect>().is_err());
    }

    #[test]
    fn keywords_are_sorted() {
        assert!(KEYWORDS.windows(2).all(|w| w[0] < w[1]));
        assert!(KEYWORDS.iter().all(|k| is_keyword(k.as_bytes())));
    }

    /// Linear work on the worst shapes we can think of, at 64 KiB.
    #[test]
    fn adversarial_inputs_stay_fast() {
        let started = std::time::Instant::now();
        let patterns: &[&str] = &[
            "(",
            "[",
            "ARRAY[",
            "ARRAY[1,",
            "IN (",
            "IN (1,",
            "'",
            "\"",
            "/*",
            "*/",
            "$a",
            "$a$",
            "$",
            "a.",
            "VALUES (1), ",
            "WITH a AS (), ",
            "FROM a, ",
            "SELECT 1; ",
            "%(",
            "#",
            "--\n",
            "\\'",
            "E'\\",
            "(1,(",
            "x::",
            "-",
            ";",
        ];
        // `Auto` runs every set of rules but MySQL's `"…"` strings; quadratic work would show at
        // 16 KiB as much as at 64.
        for p in patterns {
            for (d, size) in [(Dialect::Auto, 65536), (Dialect::MySql, 16384)] {
                let n = normalize_as(p.repeat(size / p.len()).as_bytes(), true, d);
                assert!(n.summary.len() <= SUMMARY_MAX);
            }
        }
        // Generous: quadratic behaviour on these would take minutes.
        assert!(started.elapsed().as_secs() < 20, "{:?}", started.elapsed());
    }

    // ---- properties ----

    fn config() -> Config {
        // Modest by default, so `cargo test` stays quick; PROPTEST_CASES overrides (read by
        // `Config::default`). No regression files: this runs from a shared source tree.
        let mut c = Config { failure_persistence: None, ..Config::default() };
        if std::env::var_os("PROPTEST_CASES").is_none() {
            c.cases = 32;
        }
        c
    }

    /// How a string literal is written.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Style {
        /// `'…'`, `''` doubled: PostgreSQL, or MySQL with NO_BACKSLASH_ESCAPES.
        Std,
        /// `E'…'` with backslash escapes.
        PgE,
        /// `$zz$…$zz$`.
        PgDollar,
        /// `'…'` with backslash escapes: MySQL, or PostgreSQL with standard_conforming_strings off.
        Backslash,
        /// `"…"` with backslash escapes: MySQL only.
        MyDouble,
        /// `_utf8mb4'…'`, backslash escapes.
        MyCharset,
    }

    fn backslashed(s: &str, q: char) -> String {
        let mut out = String::new();
        for c in s.chars() {
            if c == '\\' || c == q {
                out.push('\\');
            }
            out.push(c);
        }
        out
    }

    fn quote(style: Style, s: &str) -> String {
        match style {
            Style::Std => format!("'{}'", s.replace('\'', "''")),
            Style::PgE => format!("E'{}'", backslashed(s, '\'')),
            Style::PgDollar => format!("$zz${s}$zz$"),
            Style::Backslash => format!("'{}'", backslashed(s, '\'')),
            Style::MyDouble => format!("\"{}\"", backslashed(s, '"')),
            Style::MyCharset => format!("_utf8mb4'{}'", backslashed(s, '\'')),
        }
    }

    /// Pieces of secret string contents: every marker reads `S3CR3T`, and the rest are the bytes
    /// that make lexers stumble. None has a `z`, so `$zz$` never occurs inside.
    const PIECES: &[&str] = &[
        "S3CR3T", " S3CR3T", "S3CR3T ", "'", "''", "\\", "\\'", "\"", "`", " ", "$", "$$", "$1", "--", "/*", "*/", "#", "\n", "é", "%s", "?", ";",
        "(", ")", ",", "1234567", "e'", ":", "::", "ARRAY[", "IN (",
    ];

    /// Pieces with no quote or backslash: literals whose end every dialect agrees on.
    const CLEAN_PIECES: &[&str] = &["S3CR3T", " ", "é", "%s", "?", ";", "(", ")", ",", "1234567", "#", "--", "/*", "*/", "\n", "`", "$", "e", "IN ("];

    #[derive(Clone, Debug)]
    enum Lit {
        Str(String),
        Num(String),
    }

    fn secret_lit(pieces: &'static [&'static str]) -> impl Strategy<Value = Lit> {
        prop_oneof![
            3 => prop::collection::vec(prop::sample::select(pieces), 0..8).prop_map(|ps| Lit::Str(format!("S3CR3T{}", ps.concat()))),
            1 => (1_000_000u64..u64::MAX / 2, 0..5usize).prop_map(|(n, form)| Lit::Num(match form {
                0 => n.to_string(),
                1 => format!("{n}.5"),
                2 => format!("{n}e-3"),
                3 => format!("0x{n:X}"),
                _ => format!("{n}.{n}"),
            })),
        ]
    }

    /// Statement templates: `{}` is a literal. Common to both dialects.
    const TEMPLATES: &[&str] = &[
        "SELECT a, b FROM t1 WHERE a = {} AND b IN ({}, {}) LIMIT {}",
        "INSERT INTO items (id, v) VALUES ({}, {}), ({}, {})",
        "UPDATE t SET v = {} WHERE id = -{}",
        "DELETE FROM t WHERE id IN ({}) AND x = ANY(ARRAY[{}, {}])",
        "SELECT * FROM t /* c */ WHERE x LIKE {} ESCAPE {}",
        "SELECT {}::int, f({}) FROM t -- tail\n WHERE y = {}",
        "SET x = {}",
        "SELECT {} 'tail', {}",
        "SELECT {};SELECT {}; SELECT * FROM t WHERE a={} AND b=({})",
        "INSERT INTO t VALUES ({}),({}),({}, {})",
        "SELECT {} -- it's\n, {} /* it's */ FROM t WHERE ({}, {}) IN (({}, {}))",
    ];
    const PG_TEMPLATES: &[&str] = &[
        "SELECT /* a /* nested */ b */ {} FROM t WHERE j #>> '{a}' = {}",
        "SELECT ARRAY[[{}, {}], [{}, {}]]",
        "SELECT /* it's /* it's */ */ {}, $q$ it's $q$ FROM t WHERE a = {}::text",
    ];
    const MY_TEMPLATES: &[&str] =
        &["SELECT {} # comment\nFROM t WHERE a = {}", "SELECT /*!40101 {}, */ b FROM t WHERE c = {}", "SELECT {} # it's\n, {}, `x` FROM t"];

    fn render_template(template: &str, lits: &[Lit], styles: &[Style]) -> String {
        let mut out = String::new();
        for (k, part) in template.split("{}").enumerate() {
            if k > 0 {
                let i = (k - 1) % lits.len();
                match &lits[i] {
                    Lit::Str(s) => out.push_str(&quote(styles[i % styles.len()], s)),
                    Lit::Num(n) => out.push_str(n),
                }
            }
            out.push_str(part);
        }
        out
    }

    /// A literal's content in `out`: a marker (`s3`, as identifiers are lower-cased) or a run of
    /// two digits (the templates have no such run outside literals).
    fn leak(out: &str) -> Option<String> {
        let lower = out.to_lowercase();
        if lower.contains("s3") || lower.contains("3cr") || lower.contains("r3t") {
            return Some(out.to_string());
        }
        let b = out.as_bytes();
        b.windows(2).any(|w| w[0].is_ascii_digit() && w[1].is_ascii_digit()).then(|| out.to_string())
    }

    /// Statement families: a dialect setting, the literal styles one server mode reads (a statement
    /// mixes only these) and the templates that are real statements for it.
    fn families() -> Vec<(Dialect, Vec<Style>, Vec<&'static str>)> {
        use Style::{Backslash, MyCharset, MyDouble, PgDollar, PgE, Std};
        let with = |extra: &[&'static str]| TEMPLATES.iter().chain(extra).copied().collect::<Vec<_>>();
        vec![
            (Dialect::Auto, vec![Std, PgE, PgDollar], with(PG_TEMPLATES)),
            (Dialect::Auto, vec![Backslash, MyCharset], with(MY_TEMPLATES)),
            // MySQL with NO_BACKSLASH_ESCAPES.
            (Dialect::Auto, vec![Std], with(MY_TEMPLATES)),
            (Dialect::Postgres, vec![Std, PgE, PgDollar], with(PG_TEMPLATES)),
            // standard_conforming_strings off.
            (Dialect::Postgres, vec![Backslash, PgE, PgDollar], with(PG_TEMPLATES)),
            (Dialect::MySql, vec![Backslash, MyCharset, MyDouble], with(MY_TEMPLATES)),
            (Dialect::MySql, vec![Std], with(MY_TEMPLATES)),
        ]
    }

    proptest! {
        #![proptest_config(config())]

        /// Any bytes, cut anywhere: no panic, bounded summary, consistent fingerprint.
        #[test]
        fn any_bytes_any_cut(bytes in prop::collection::vec(any::<u8>(), 0..400), cut in any::<prop::sample::Index>()) {
            let cut = cut.index(bytes.len() + 1);
            for d in [Dialect::Auto, Dialect::Postgres, Dialect::MySql] {
                let n = normalize_as(&bytes[..cut], cut < bytes.len(), d);
                prop_assert!(n.summary.len() <= SUMMARY_MAX);
                prop_assert_eq!(n.fingerprint, fingerprint(n.shape.as_bytes()));
                prop_assert_eq!(&n, &normalize_as(&bytes[..cut], cut < bytes.len(), d));
            }
        }

        /// SQL-looking bytes (more paths than random ones reach): same checks.
        #[test]
        fn sqlish_bytes(parts in prop::collection::vec(prop::sample::select(&[
            "SELECT", " ", "'", "\"", "`", "$", "$$", "$a$", "(", ")", "[", "]", ",", ";", "--", "\n", "/*", "*/", "/*!", "#", "\\", "E'", "_x'", "U&'", "U&\"",
            "1", "0x", "e-", ".", "::", "?", "%s", "%(", "IN", "ARRAY", "VALUES", "FROM", "t", "-", "+", "é", "\u{fffd}", "WITH", "AS", "SAVEPOINT",
        ][..]), 0..60)) {
            let text = parts.concat();
            for cut in 0..=text.len() {
                for d in [Dialect::Auto, Dialect::Postgres, Dialect::MySql] {
                    let n = normalize_as(&text.as_bytes()[..cut], cut < text.len(), d);
                    prop_assert!(n.summary.len() <= SUMMARY_MAX);
                }
            }
        }

        /// The security property: statements of the dialect with secret literals, cut at every
        /// byte: neither shape nor summary shows any of it.
        #[test]
        fn no_literal_leaks(
            t in any::<prop::sample::Index>(),
            lits in prop::collection::vec(secret_lit(PIECES), 4),
            st in prop::collection::vec(any::<prop::sample::Index>(), 4),
        ) {
            for (d, styles, templates) in families() {
                let styles: Vec<Style> = st.iter().map(|i| styles[i.index(styles.len())]).collect();
                let text = render_template(templates[t.index(templates.len())], &lits, &styles);
                for cut in 0..=text.len() {
                    let n = normalize_as(&text.as_bytes()[..cut], cut < text.len(), d);
                    prop_assert!(leak(&n.shape).is_none() && leak(&n.summary).is_none(), "{:?} {:?} cut at {}: {:?}", d, text, cut, n);
                }
            }
        }

        /// Same statement, other literals (other kinds and quoting too): same fingerprint.
        #[test]
        fn literals_do_not_move_the_fingerprint(
            t in any::<prop::sample::Index>(),
            a in prop::collection::vec(secret_lit(CLEAN_PIECES), 4),
            b in prop::collection::vec(secret_lit(CLEAN_PIECES), 4),
            sa in prop::collection::vec(any::<prop::sample::Index>(), 4),
            sb in prop::collection::vec(any::<prop::sample::Index>(), 4),
        ) {
            for (d, styles, templates) in families() {
                let template = templates[t.index(templates.len())];
                let pick = |ix: &[prop::sample::Index]| ix.iter().map(|i| styles[i.index(styles.len())]).collect::<Vec<_>>();
                let x = normalize_as(render_template(template, &a, &pick(&sa)).as_bytes(), false, d);
                let y = normalize_as(render_template(template, &b, &pick(&sb)).as_bytes(), false, d);
                prop_assert_eq!(&x.shape, &y.shape, "{:?} {:?}", d, template);
                prop_assert_eq!(x.fingerprint, y.fingerprint);
            }
        }
    }
}
