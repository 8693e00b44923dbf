//! Routes: paths with their identifiers folded, so /users/17 and /users/42 are one route.

/// Replaces path segments that are identifiers (decimal numbers, UUIDs, long hex strings) by
/// `{id}`.
pub fn normalize(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    normalize_into(path, &mut out);
    out
}

/// [`normalize`], appended to `out` (which callers reuse: this runs for every request).
pub fn normalize_into(path: &str, out: &mut String) {
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(if is_id(seg) { "{id}" } else { seg });
    }
}

fn is_id(seg: &str) -> bool {
    if seg.is_empty() {
        return false;
    }
    let b = seg.as_bytes();
    if b.iter().all(u8::is_ascii_digit) {
        return true;
    }
    // 8-4-4-4-12 UUID.
    if b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
    {
        return true;
    }
    // Hashes, object ids, tokens: long hex with at least one digit (so words like "deadbeef"
    // spelled in letters only stay).
    b.len() >= 16 && b.iter().all(u8::is_ascii_hexdigit) && b.iter().any(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn folds_identifiers() {
        assert_eq!(normalize("/users/17"), "/users/{id}");
        assert_eq!(normalize("/users/42/orders/7"), "/users/{id}/orders/{id}");
        assert_eq!(normalize("/o/3f2504e0-4f89-11d3-9a0c-0305e82c3301"), "/o/{id}");
        assert_eq!(normalize("/blob/5d41402abc4b2a76b9719d911017c592"), "/blob/{id}");
        assert_eq!(normalize("/"), "/");
        assert_eq!(normalize("/v2/items"), "/v2/items");
        assert_eq!(normalize("/facade"), "/facade");
    }
}
