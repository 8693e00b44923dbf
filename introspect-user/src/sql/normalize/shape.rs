//! The shape of a statement: its tokens with every literal replaced and lists collapsed, built
//! from the lexer's tokens (tolerant of a statement cut anywhere).
use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
};

use super::{Fnv, keywords::*, lex::*};

// ---------------------------------------------------------------------------------------------
// Shape

/// A token of the shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Nt {
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
pub(super) enum FrameKind {
    /// `IN (…)`: collapses to `(?+)`.
    In,
    /// `ARRAY[…]` and the `[…]` nested in it: collapses to `?`.
    Array,
    Other,
}

/// How far the current list item is a constant: `?`, `-?`, `?::type`, `(?, ?)`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Item {
    Empty,
    Sign,
    Const,
    ConstCast,
    Bad,
}

/// What just happened inside the innermost list, for its [`Item`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Ev {
    Lit,
    Sign,
    Cast,
    TypeWord,
    ChildConst,
    ChildEmpty,
    Other,
}

/// An open `(` or `[`.
pub(super) struct Frame {
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
pub(super) enum Phase {
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
pub(super) struct Values {
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
pub(super) struct Builder<'a> {
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

pub(super) fn is_kw(t: Option<&Nt>, word: &str) -> bool {
    matches!(t, Some(Nt::Word { text, kw: true }) if text == word)
}

impl<'a> Builder<'a> {
    pub(super) fn new(text: &'a [u8]) -> Self {
        Builder { text, out: Vec::new(), frames: Vec::new(), values: None, cast: 0, stmt_start: 0, last_cut: false }
    }

    pub(super) fn token(&mut self, tok: Tok, masked: bool) {
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
    pub(super) fn finish(mut self) -> Vec<Nt> {
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
pub(super) fn cut_prefix(whole: &[Nt], part: &[Nt], last_cut: bool) -> bool {
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
pub(super) fn unary_before(prev: Option<&Nt>) -> bool {
    match prev {
        None | Some(Nt::Op(_) | Nt::Open { .. } | Nt::Comma | Nt::Semi) => true,
        Some(Nt::Word { text, kw: true }) => !VALUE_KEYWORDS.contains(&text.as_str()),
        Some(_) => false,
    }
}

/// A token's text as valid UTF-8: case-folded (`Some(true)`: upper, `Some(false)`: lower), an
/// incomplete character at the end of the capture dropped.
pub(super) fn display(raw: &[u8], at_end: bool, upper: Option<bool>) -> String {
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
pub(super) fn drop_partial_char(bytes: &mut Vec<u8>) {
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

pub(super) fn render(out: &[Nt]) -> String {
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
