//! CPython processes seen from outside: which interpreter a process runs, where its runtime
//! state lives, and where its GIL is (a futex wait inside the GIL is a GIL wait).
//!
//! Layout facts per minor version come from ../shared/notes/cpython.md (DWARF of the pyenv builds,
//! checked live); 3.13+ reads `_Py_DebugOffsets` from the runtime itself.
use std::{fs, path::PathBuf};

use object::{Object, ObjectKind, ObjectSegment, ObjectSymbol};

#[derive(Debug, thiserror::Error)]
pub enum PyError {
    #[error("process {0} has no CPython runtime mapped (_PyRuntime not found)")]
    NotPython(u32),
    #[error("reading {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("parsing ELF {path}: {source}")]
    Elf { path: String, source: object::Error },
    #[error("reading {len} bytes at {addr:#x} in process {pid}: {source}")]
    Mem { pid: u32, addr: u64, len: usize, source: std::io::Error },
    #[error("CPython {0}.{1} is not supported (3.8 to 3.13 are)")]
    Unsupported(u32, u32),
    #[error("the runtime of process {0} does not look like CPython {1}.{2} ({3})")]
    Invalid(u32, u32, u32, &'static str),
}

/// One mapping from /proc/PID/maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
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

/// Reads another process's memory (root, or ptrace access to it).
pub fn read_mem(pid: u32, addr: u64, buf: &mut [u8]) -> Result<(), PyError> {
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: the local iovec covers `buf`; the kernel checks the remote one.
    let n = unsafe { libc::process_vm_readv(pid as i32, &local, 1, &remote, 1, 0) };
    if n != buf.len() as isize {
        let source = if n < 0 { std::io::Error::last_os_error() } else { std::io::Error::other("short read") };
        return Err(PyError::Mem { pid, addr, len: buf.len(), source });
    }
    Ok(())
}

pub fn read_u64(pid: u32, addr: u64) -> Result<u64, PyError> {
    let mut b = [0u8; 8];
    read_mem(pid, addr, &mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// Where a process's CPython runtime is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Runtime {
    pub major: u32,
    pub minor: u32,
    /// Address of `_PyRuntime` in the process.
    pub runtime: u64,
    /// Address of `PyCode_Type` (code objects point at it: validates what is read).
    pub code_type: u64,
    /// The ELF file (libpython or the executable) that holds it.
    pub path: String,
}

fn version_from_name(path: &str) -> Option<(u32, u32)> {
    let name = path.rsplit('/').next()?;
    let rest = name.strip_prefix("libpython3.").or_else(|| name.strip_prefix("python3."))?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((3, digits.parse().ok()?))
}

/// What a Python ELF file says about itself (cached by path: every worker of a server maps the
/// same libpython, and reading it is the slow part of attaching).
#[derive(Clone, Debug)]
struct ElfInfo {
    executable: bool,
    first_vaddr: u64,
    runtime: Option<u64>,
    code_type: Option<u64>,
    py_version: Option<u64>,
}

fn elf_info(pid: u32, path: &str) -> Result<ElfInfo, PyError> {
    static CACHE: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, ElfInfo>>> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(info) = cache.lock().ok().and_then(|c| c.get(path).cloned()) {
        return Ok(info);
    }
    // Through /proc/PID/root so paths resolve inside containers too.
    let file = PathBuf::from(format!("/proc/{pid}/root{path}"));
    // Mapped, not read: libpython with debug info is tens of MiB, of which the symbol tables
    // are all that is touched.
    let io_err = |source| PyError::Io { path: file.display().to_string(), source };
    let f = fs::File::open(&file).map_err(io_err)?;
    // SAFETY: a read-only private mapping of a library file; a concurrent truncation could fault,
    // which system libraries are not subject to.
    let data = unsafe { memmap2::Mmap::map(&f) }.map_err(io_err)?;
    let elf = object::File::parse(&*data).map_err(|source| PyError::Elf { path: path.to_string(), source })?;
    // Defined symbols only: extension modules import _PyRuntime (undefined, address 0).
    let sym = |name: &str| elf.dynamic_symbols().chain(elf.symbols()).find(|s| s.is_definition() && s.name() == Ok(name)).map(|s| s.address());
    let info = ElfInfo {
        executable: elf.kind() == ObjectKind::Executable,
        first_vaddr: elf.segments().map(|s| s.address()).min().unwrap_or(0) & !0xfff,
        runtime: sym("_PyRuntime"),
        code_type: sym("PyCode_Type"),
        py_version: sym("Py_Version"),
    };
    if let Ok(mut c) = cache.lock() {
        c.insert(path.to_string(), info.clone());
    }
    Ok(info)
}

/// Finds `_PyRuntime` in the ELF files a process maps, and the interpreter's version.
pub fn find_runtime(pid: u32) -> Result<Runtime, PyError> {
    let maps_path = format!("/proc/{pid}/maps");
    let maps = parse_maps(&fs::read_to_string(&maps_path).map_err(|source| PyError::Io { path: maps_path, source })?);
    let mut seen = Vec::new();
    for m in maps.iter().filter(|m| m.path.starts_with('/') && m.path.contains("python")) {
        if seen.contains(&m.path) {
            continue;
        }
        seen.push(m.path.clone());
        let info = elf_info(pid, &m.path)?;
        let Some(rt_vaddr) = info.runtime else { continue };
        // Load bias: 0 for a non-PIE executable (Debian's python3.11), else where the file's
        // first segment was mapped minus its link-time address.
        let bias = if info.executable {
            0
        } else {
            let Some(base) = maps.iter().filter(|x| x.path == m.path && x.offset == 0).map(|x| x.start).min() else { continue };
            base.wrapping_sub(info.first_vaddr)
        };
        let runtime = rt_vaddr.wrapping_add(bias);
        // Py_Version (3.11+) is exact; older builds carry the version in their file name.
        let (major, minor) = match info.py_version {
            Some(v) => {
                let mut b = [0u8; 4];
                read_mem(pid, v.wrapping_add(bias), &mut b)?;
                let hex = u32::from_le_bytes(b);
                (hex >> 24, (hex >> 16) & 0xff)
            }
            None => version_from_name(&m.path).ok_or(PyError::NotPython(pid))?,
        };
        let code_type = info.code_type.map_or(0, |a| a.wrapping_add(bias));
        return Ok(Runtime { major, minor, runtime, code_type, path: m.path.clone() });
    }
    Err(PyError::NotPython(pid))
}

/// Size of `struct _gil_runtime_state` (interval, last_holder, locked, switch_number, cond,
/// mutex, switch_cond, switch_mutex: Include/internal/pycore_gil.h).
const GIL_SIZE: u64 = 208;

/// The address range of the process's GIL: a thread in `futex()` on an address inside it is
/// waiting for the GIL (its cond, mutex, switch_cond and switch_mutex all live there).
pub fn gil_range(pid: u32, rt: &Runtime) -> Result<(u64, u64), PyError> {
    let gil = match (rt.major, rt.minor) {
        // Embedded in _PyRuntime.ceval.
        (3, 8) => rt.runtime + 1152,
        (3, 9) | (3, 10) => rt.runtime + 352,
        (3, 11) => rt.runtime + 360,
        // Per interpreter since PEP 684: the main interpreter's ceval.gil pointer.
        (3, 12) => {
            let interp = read_u64(pid, rt.runtime + 40)?;
            read_u64(pid, interp + 384)?
        }
        (3, 13..) => {
            // _Py_DebugOffsets: cookie, then runtime_state.interpreters_head at +40 and
            // interpreter_state.ceval_gil at +112.
            let mut cookie = [0u8; 8];
            read_mem(pid, rt.runtime, &mut cookie)?;
            if &cookie != b"xdebugpy" {
                return Err(PyError::Invalid(pid, rt.major, rt.minor, "no _Py_DebugOffsets cookie"));
            }
            let heads_off = read_u64(pid, rt.runtime + 40)?;
            let gil_off = read_u64(pid, rt.runtime + 112)?;
            if heads_off > 1 << 20 || gil_off > 1 << 20 {
                return Err(PyError::Invalid(pid, rt.major, rt.minor, "debug offsets out of range"));
            }
            let interp = read_u64(pid, rt.runtime + heads_off)?;
            read_u64(pid, interp + gil_off)?
        }
        (major, minor) => return Err(PyError::Unsupported(major, minor)),
    };
    if gil == 0 || gil % 8 != 0 {
        return Err(PyError::Invalid(pid, rt.major, rt.minor, "GIL pointer is not a heap address"));
    }
    // Sanity: `locked` (an int at +16) is 0 or 1.
    let mut locked = [0u8; 4];
    read_mem(pid, gil + 16, &mut locked)?;
    if u32::from_le_bytes(locked) > 1 {
        return Err(PyError::Invalid(pid, rt.major, rt.minor, "GIL `locked` is neither 0 nor 1"));
    }
    Ok((gil, gil + GIL_SIZE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_maps_and_versions() {
        let m = parse_maps(
            "7f0000000000-7f0000001000 r--p 00000000 fd:01 123 /root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0\n\
             7f0000001000-7f0000002000 r-xp 00001000 fd:01 123 /root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0\n\
             7ffd00000000-7ffd00001000 rw-p 00000000 00:00 0 [stack]\n",
        );
        assert_eq!(m.len(), 3);
        assert_eq!((m[1].start, m[1].offset), (0x7f0000001000, 0x1000));
        assert_eq!(version_from_name(&m[0].path), Some((3, 11)));
        assert_eq!(version_from_name("/usr/bin/python3.8"), Some((3, 8)));
        assert_eq!(version_from_name("/usr/lib/libc.so.6"), None);
    }
}
