//! Which CPython a process runs and where its runtime state lives: `_PyRuntime`, found by
//! symbol in the ELF files the process maps (libpython, or the executable for a static build),
//! and the version (`Py_Version` from 3.11, else the file name).
use std::{fs, path::PathBuf};

use crate::proc::{
    maps,
    mem::{MemError, read_mem},
};

use object::{Object, ObjectKind, ObjectSegment, ObjectSymbol};

#[derive(Debug, thiserror::Error)]
pub enum PyError {
    #[error("process {0} has no CPython runtime mapped (_PyRuntime not found)")]
    NotPython(u32),
    #[error("reading {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("parsing ELF {path}: {source}")]
    Elf { path: String, source: object::Error },
    #[error(transparent)]
    Mem(#[from] MemError),
    #[error("CPython {0}.{1} is not supported (3.8 to 3.13 are)")]
    Unsupported(u32, u32),
    #[error("the runtime of process {0} does not look like CPython {1}.{2} ({3})")]
    Invalid(u32, u32, u32, &'static str),
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
    /// Address of `PyExc_TimeoutError` (a `PyObject *` naming the type), 0 if not exported.
    pub timeout_error: u64,
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
    timeout_error: Option<u64>,
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
        timeout_error: sym("PyExc_TimeoutError"),
    };
    if let Ok(mut c) = cache.lock() {
        c.insert(path.to_string(), info.clone());
    }
    Ok(info)
}

/// Finds `_PyRuntime` in the ELF files a process maps, and the interpreter's version.
pub fn find_runtime(pid: u32) -> Result<Runtime, PyError> {
    let maps = maps::read(pid).map_err(|source| PyError::Io { path: format!("/proc/{pid}/maps"), source })?;
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
        let Some(bias) = maps::load_bias(&maps, &m.path, info.executable, info.first_vaddr) else { continue };
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
        let timeout_error = info.timeout_error.map_or(0, |a| a.wrapping_add(bias));
        return Ok(Runtime { major, minor, runtime, code_type, timeout_error, path: m.path.clone() });
    }
    Err(PyError::NotPython(pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_file_names() {
        assert_eq!(version_from_name("/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0"), Some((3, 11)));
        assert_eq!(version_from_name("/usr/bin/python3.8"), Some((3, 8)));
        assert_eq!(version_from_name("/usr/lib/libc.so.6"), None);
    }
}
