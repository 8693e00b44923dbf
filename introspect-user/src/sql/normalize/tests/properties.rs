//! Properties of the normalizer over generated statements (proptest, a bounded run in CI).
use proptest::{prelude::*, test_runner::Config};

use super::*;

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
    "S3CR3T", " S3CR3T", "S3CR3T ", "'", "''", "\\", "\\'", "\"", "`", " ", "$", "$$", "$1", "--", "/*", "*/", "#", "\n", "é", "%s", "?", ";", "(",
    ")", ",", "1234567", "e'", ":", "::", "ARRAY[", "IN (",
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
