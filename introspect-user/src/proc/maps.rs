//! A process's memory mappings (/proc/PID/maps).
use std::fs;

/// One mapping from /proc/PID/maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    /// The file as the process names it, `[vdso]`, `[stack]`..., or empty when anonymous.
    pub path: String,
}

pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (range, _perms, offset, _dev, _inode) = (it.next()?, it.next()?, it.next()?, it.next()?, it.next()?);
            let path = it.collect::<Vec<_>>().join(" ");
            let (s, e) = range.split_once('-')?;
            Some(Mapping {
                start: u64::from_str_radix(s, 16).ok()?,
                end: u64::from_str_radix(e, 16).ok()?,
                offset: u64::from_str_radix(offset, 16).ok()?,
                path,
            })
        })
        .collect()
}

/// Where an ELF file's link-time addresses sit in a process: 0 for a non-PIE executable, else
/// where its first segment (link-time `first_vaddr`, page-aligned) was mapped minus that
/// address. `None` when the file is not mapped.
pub fn load_bias(maps: &[Mapping], path: &str, executable: bool, first_vaddr: u64) -> Option<u64> {
    if executable {
        return Some(0);
    }
    let base = maps.iter().filter(|m| m.path == path && m.offset == 0).map(|m| m.start).min()?;
    Some(base.wrapping_sub(first_vaddr))
}

/// The mappings of process `pid`.
pub fn read(pid: u32) -> std::io::Result<Vec<Mapping>> {
    Ok(parse_maps(&fs::read_to_string(format!("/proc/{pid}/maps"))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_maps() {
        let m = parse_maps(
            "7f0000000000-7f0000001000 r--p 00000000 fd:01 123 /root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0\n\
             7f0000001000-7f0000002000 r-xp 00001000 fd:01 123 /root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0\n\
             7ffd00000000-7ffd00001000 rw-p 00000000 00:00 0 [stack]\n",
        );
        assert_eq!(m.len(), 3);
        assert_eq!((m[1].start, m[1].offset), (0x7f0000001000, 0x1000));
        assert_eq!(m[2].path, "[stack]");
    }
}
