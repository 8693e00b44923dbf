//! The OpenTelemetry-style summary of a shape: its operations and tables.
use super::*;

/// One summary per statement, distinct ones joined by `; ` while they fit in [`SUMMARY_MAX`].
pub(super) fn summary(out: &[Nt]) -> String {
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
pub(super) fn clip(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

pub(super) fn word_is(t: Option<&Nt>, w: &str) -> bool {
    matches!(t, Some(Nt::Word { text, .. }) if text.eq_ignore_ascii_case(w))
}

/// A collection name's part: an identifier (not a keyword), de-quoted.
pub(super) fn name_part(t: Option<&Nt>, allow_kw: bool) -> Option<String> {
    match t? {
        Nt::Word { text, kw } if allow_kw || !kw => Some(text.to_ascii_lowercase()),
        Nt::Quoted(q) => Some(dequote(q)),
        _ => None,
    }
}

pub(super) fn dequote(q: &str) -> String {
    let q = q.strip_prefix("U&").or_else(|| q.strip_prefix("u&")).unwrap_or(q);
    let Some(quote) = q.chars().next() else { return String::new() };
    let body = &q[quote.len_utf8()..];
    let body = body.strip_suffix(quote).unwrap_or(body);
    body.replace(&format!("{quote}{quote}"), &quote.to_string())
}

/// A possibly qualified name at `j` (`schema.table`), and the index after it.
pub(super) fn qualified_name(stmt: &[Nt], j: usize) -> Option<(String, usize)> {
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
pub(super) const MAIN_OPS: &[&str] = &["DELETE", "INSERT", "MERGE", "SELECT", "TABLE", "UPDATE", "VALUES"];

/// Modifiers between a table-introducing keyword and the table.
pub(super) const NAME_SKIP: &[&str] =
    &["CONCURRENTLY", "DELAYED", "EXISTS", "HIGH_PRIORITY", "IF", "IGNORE", "LATERAL", "LOW_PRIORITY", "NOT", "ONLY", "QUICK", "TABLE"];

pub(super) fn summarize(stmt: &[Nt]) -> String {
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
pub(super) fn read_names(stmt: &[Nt], mut j: usize, list: bool, ctes: &[String], names: &mut Vec<String>) {
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
