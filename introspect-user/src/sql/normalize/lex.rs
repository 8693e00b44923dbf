//! The lexer: bytes to tokens, tolerant of a cut anywhere.

/// When `#` starts a comment.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum HashComment {
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
pub(super) struct Rules {
    /// Backslash escapes in ordinary quoted strings (always in `E'…'`).
    pub(super) backslash: bool,
    /// `"…"` is a string, not an identifier.
    pub(super) dquote_string: bool,
    pub(super) hash: HashComment,
    /// `--` starts a comment only before whitespace or a control character (MySQL).
    pub(super) dash_needs_space: bool,
    /// `/* /* */ */` nests (PostgreSQL).
    pub(super) nested: bool,
    /// `/*! … */` content is SQL (MySQL).
    pub(super) exec: bool,
}

pub(super) const PG: Rules =
    Rules { backslash: false, dquote_string: false, hash: HashComment::Never, dash_needs_space: false, nested: true, exec: false };
/// PostgreSQL with `standard_conforming_strings` off.
pub(super) const PG_LEGACY: Rules = Rules { backslash: true, ..PG };
pub(super) const PG_AUTO: Rules = Rules { hash: HashComment::Heuristic, ..PG };
pub(super) const MYSQL: Rules =
    Rules { backslash: true, dquote_string: true, hash: HashComment::Always, dash_needs_space: true, nested: false, exec: true };
/// MySQL with `NO_BACKSLASH_ESCAPES`.
pub(super) const MYSQL_NBE: Rules = Rules { backslash: false, ..MYSQL };
/// MySQL with `"…"` as an identifier, for [`Dialect::Auto`] (see the module doc).
pub(super) const MYSQL_AUTO: Rules = Rules { dquote_string: false, ..MYSQL };
pub(super) const MYSQL_AUTO_NBE: Rules = Rules { backslash: false, ..MYSQL_AUTO };
pub(super) const PG_AUTO_LEGACY: Rules = Rules { backslash: true, ..PG_AUTO };

/// A token's kind; its text is `text[s..e]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum K {
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
pub(super) struct Tok {
    pub(super) k: K,
    pub(super) s: usize,
    pub(super) e: usize,
}

pub(super) struct Lexed {
    pub(super) toks: Vec<Tok>,
    /// The text ended inside a string, quoted identifier, comment or dollar-quote.
    pub(super) open_end: bool,
    /// A string literal is immediately followed by a letter or digit: what a wrong reading of
    /// another dialect's escapes looks like (`'O\'` `Brien'`).
    pub(super) anomaly: bool,
    /// Signs of a dialect, to break ties in [`Dialect::Auto`]: backticks and `/*!` for MySQL;
    /// `"…"`, `::`, `$1`, dollar-quotes and `E'…'` for PostgreSQL.
    pub(super) mysql_marks: u32,
    pub(super) pg_marks: u32,
}

/// The byte at `i`, or 0 past the end (0 is never a character the lexer looks for).
pub(super) fn at(b: &[u8], i: usize) -> u8 {
    b.get(i).copied().unwrap_or(0)
}

pub(super) fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

pub(super) fn is_ident(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

pub(super) fn is_op(c: u8) -> bool {
    matches!(c, b'+' | b'-' | b'*' | b'/' | b'<' | b'>' | b'=' | b'~' | b'!' | b'@' | b'#' | b'%' | b'^' | b'&' | b'|' | b'?')
}

pub(super) fn lex(b: &[u8], r: Rules) -> Lexed {
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

pub(super) fn dash_comment(b: &[u8], i: usize, r: Rules) -> bool {
    let d = at(b, i + 2);
    !r.dash_needs_space || d <= b' ' || d == 0x7f
}

pub(super) fn hash_comment(b: &[u8], i: usize, r: Rules, line_blank: bool) -> bool {
    match r.hash {
        HashComment::Never => false,
        HashComment::Always => true,
        HashComment::Heuristic => line_blank || at(b, i + 1) <= b' ',
    }
}

/// Where the line holding `i` ends (its `\n` is left for the caller).
pub(super) fn line_end(b: &[u8], i: usize) -> usize {
    b[i..].iter().position(|&c| c == b'\n').map_or(b.len(), |p| i + p)
}

/// The end of a block comment whose body starts at `from`; `None` if it runs off the end.
pub(super) fn block_end(b: &[u8], from: usize, nested: bool) -> Option<usize> {
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
pub(super) fn quoted_end(b: &[u8], from: usize, q: u8, backslash: bool) -> Option<usize> {
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

pub(super) fn string_tok(lx: &mut Lexed, b: &[u8], from: usize, q: u8, backslash: bool) -> (K, usize) {
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

pub(super) fn ident_tok(lx: &mut Lexed, b: &[u8], from: usize, q: u8) -> (K, usize) {
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
pub(super) fn word(lx: &mut Lexed, b: &[u8], i: usize, r: Rules) -> (K, usize) {
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
pub(super) fn number_end(b: &[u8], i: usize) -> usize {
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
pub(super) fn dollar(lx: &mut Lexed, b: &[u8], i: usize) -> (K, usize) {
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
pub(super) fn pyformat(b: &[u8], i: usize) -> Option<usize> {
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
pub(super) fn op_end(b: &[u8], i: usize, r: Rules, in_exec: bool) -> usize {
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
