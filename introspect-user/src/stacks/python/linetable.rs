//! Line numbers from a code object's line table and a frame's position: `co_lnotab` (≤3.9,
//! Objects/lnotab_notes.txt in CPython), the PEP 626 table (3.10) and the location table (3.11+,
//! Objects/locations.md).

/// ≤3.9 `co_lnotab`: (address increment, signed line increment) pairs (PyCode_Addr2Line).
pub fn lnotab_line(table: &[u8], first: u32, lasti: i32) -> Option<u32> {
    if lasti < 0 {
        return Some(first);
    }
    let (mut line, mut addr) = (first as i64, 0i64);
    for pair in table.chunks_exact(2) {
        addr += i64::from(pair[0]);
        if addr > i64::from(lasti) {
            break;
        }
        line += i64::from(pair[1] as i8);
    }
    u32::try_from(line).ok()
}

/// 3.10 PEP 626 line table: (byte-range length, signed line delta; -128 = no line) pairs.
pub fn pep626_line(table: &[u8], first: u32, addr: i32) -> Option<u32> {
    let (mut line, mut end) = (i64::from(first), 0i64);
    for pair in table.chunks_exact(2) {
        let start = end;
        end += i64::from(pair[0]);
        let delta = pair[1] as i8;
        if delta != -128 {
            line += i64::from(delta);
        }
        if start <= i64::from(addr) && i64::from(addr) < end {
            return if delta == -128 { None } else { u32::try_from(line).ok() };
        }
    }
    None
}

/// 3.11+ location table (Objects/locations.md): entries of (code, length in code units), each
/// moving the line; `unit` is the instruction's index in code units.
pub fn locations_line(table: &[u8], first: u32, unit: u64) -> Option<u32> {
    let mut i = 0;
    let mut line = i64::from(first);
    let mut addr = 0u64;
    let varint = |i: &mut usize| -> Option<u64> {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let b = *table.get(*i)?;
            *i += 1;
            v |= u64::from(b & 63) << shift;
            shift += 6;
            if b & 64 == 0 || shift > 60 {
                return Some(v);
            }
        }
    };
    let svarint = |i: &mut usize| -> Option<i64> {
        let v = varint(i)?;
        Some(if v & 1 == 1 { -((v >> 1) as i64) } else { (v >> 1) as i64 })
    };
    while i < table.len() {
        let b = table[i];
        if b & 0x80 == 0 {
            return None;
        }
        i += 1;
        let code = (b >> 3) & 15;
        let len = u64::from(b & 7) + 1;
        let has_line = match code {
            15 => false,
            14 => {
                line += svarint(&mut i)?;
                varint(&mut i)?;
                varint(&mut i)?;
                varint(&mut i)?;
                true
            }
            13 => {
                line += svarint(&mut i)?;
                true
            }
            10..=12 => {
                line += i64::from(code - 10);
                i += 2;
                true
            }
            _ => {
                i += 1;
                true
            }
        };
        if addr <= unit && unit < addr + len {
            return if has_line { u32::try_from(line).ok() } else { None };
        }
        addr += len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lnotab() {
        // def f():          line 10
        //     a = 1         bytes 0..4   line 11
        //     b = 2         bytes 4..8   line 12
        let t = [0, 1, 4, 1];
        assert_eq!(lnotab_line(&t, 10, 0), Some(11));
        assert_eq!(lnotab_line(&t, 10, 6), Some(12));
    }

    #[test]
    fn pep626() {
        // 2 bytes on line 10 (delta 0), 4 bytes with no line, 6 bytes on line 12.
        let t = [2, 0, 4, 0x80, 6, 2];
        assert_eq!(pep626_line(&t, 10, 0), Some(10));
        assert_eq!(pep626_line(&t, 10, 3), None);
        assert_eq!(pep626_line(&t, 10, 8), Some(12));
    }

    #[test]
    fn locations() {
        // Entry 1: one-line form code 11 (Δline +1), 2 units; entry 2: no-column form (code 13),
        // svarint +4 (= 8), 3 units; entry 3: short form (code 0), 1 unit.
        let t = [0x80 | (11 << 3) | 1, 0, 0, 0x80 | (13 << 3) | 2, 8, 0x80, 5];
        assert_eq!(locations_line(&t, 20, 0), Some(21));
        assert_eq!(locations_line(&t, 20, 1), Some(21));
        assert_eq!(locations_line(&t, 20, 2), Some(25));
        assert_eq!(locations_line(&t, 20, 5), Some(25));
        assert_eq!(locations_line(&t, 20, 6), None);
    }
}
