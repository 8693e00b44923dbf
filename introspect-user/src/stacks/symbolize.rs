//! Native and kernel symbolization: user addresses through the ELF files a process maps, kernel
//! addresses through kallsyms (blazesym does the symbol-table work).
use std::{cell::RefCell, collections::HashMap, fs, os::unix::fs::MetadataExt as _};

use blazesym::symbolize::{
    Input, Symbolized, Symbolizer,
    source::{Elf, Kernel, Source},
};
use object::{Object as _, ObjectSegment as _};

use crate::{
    proc::maps::{self, Mapping},
    stacks::{Frame, FrameKind},
};

/// Native and kernel symbolization (blazesym): ELF symbol tables of the process's mappings,
/// kallsyms for the kernel.
///
/// Function names only, no DWARF: the line tables and inlined-function trees of a libpython
/// built with debug info cost ~30 MiB of this process's memory once parsed (measured: 62 → 32
/// MiB peak RSS with ~10% of hello-world requests slow), and Python frames carry the file and
/// line that an operator reads.
pub struct Symbols {
    inner: Symbolizer,
    /// Per file (with its root prefix): where its symbols are read from and how file offsets
    /// map to addresses.
    files: RefCell<HashMap<String, Option<SymFile>>>,
    /// Each process's file mappings and the prefix that opens its files from here. Read once and
    /// again only when an address falls outside them (a library loaded since): reading
    /// /proc/PID/maps of a Python process takes milliseconds of kernel time, and symbolizing
    /// through blazesym's process source re-reads it on every call.
    procs: RefCell<HashMap<u32, ProcMaps>>,
    /// How many times a /proc/PID/maps was read.
    maps_reads: std::cell::Cell<u64>,
}

/// The symbol source of one mapped file.
struct SymFile {
    /// The file itself when it has a full symbol table; for a stripped one (a distribution's
    /// libc or python), the separate debug file installed for its build id, if any, else the
    /// file (exported symbols only).
    symbols: String,
    /// Its loadable segments as (file offset, size in the file, virtual address): the debug
    /// file's own offsets mean nothing, so addresses are translated with the original's.
    segments: Vec<(u64, u64, u64)>,
}

impl SymFile {
    /// `root` prefixes the debug file's path the way it prefixes `path` (a container's root).
    fn read(path: &str, root: &str) -> Option<Self> {
        let f = fs::File::open(path).ok()?;
        // SAFETY: a read-only private mapping of a library file, dropped before returning.
        let data = unsafe { memmap2::Mmap::map(&f) }.ok()?;
        let elf = object::File::parse(&*data).ok()?;
        let segments = elf.segments().map(|s| (s.file_range().0, s.file_range().1, s.address())).collect();
        let debug_file = || {
            let id = elf.build_id().ok().flatten().filter(|id| id.len() > 1)?;
            let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
            let p = format!("{root}/usr/lib/debug/.build-id/{}/{}.debug", hex(&id[..1]), hex(&id[1..]));
            fs::metadata(&p).is_ok().then_some(p)
        };
        let symbols = match elf.section_by_name(".symtab") {
            Some(_) => None,
            None => debug_file(),
        };
        Some(Self { symbols: symbols.unwrap_or_else(|| path.to_string()), segments })
    }

    fn virt_offset(&self, file_offset: u64) -> Option<u64> {
        self.segments.iter().find(|&&(off, size, _)| (off..off + size).contains(&file_offset)).map(|&(off, _, addr)| file_offset - off + addr)
    }
}

struct ProcMaps {
    /// All of them, anonymous and [vdso] too: an address in one of those is known not to be in
    /// a file, and must not send us back to /proc/PID/maps.
    maps: Vec<Mapping>,
    read_at: std::time::Instant,
    /// "" when the process sees the same root as this one (so the ELF files parsed for one
    /// worker serve all of them), else /proc/PID/root (a container).
    root: String,
}

impl Default for Symbols {
    fn default() -> Self {
        Self { inner: Symbolizer::new(), files: RefCell::new(HashMap::new()), procs: RefCell::new(HashMap::new()), maps_reads: Default::default() }
    }
}

fn hex_frame(addr: u64, kind: FrameKind) -> Frame {
    Frame { function: format!("{addr:#x}"), file: String::new(), line: None, kind, def_line: None }
}

fn read_proc_maps(pid: u32) -> Option<ProcMaps> {
    let maps = maps::read(pid).ok()?;
    // The same root directory (device and inode through the magic links): a link's text says
    // "/" for a container's root as well.
    let root_id = |p: &str| fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let same_root = root_id(&format!("/proc/{pid}/root")).is_some_and(|id| Some(id) == root_id("/proc/self/root"));
    Some(ProcMaps { maps, read_at: std::time::Instant::now(), root: if same_root { String::new() } else { format!("/proc/{pid}/root") } })
}

fn native_frame(sym: &Symbolized<'_>, kind: FrameKind) -> Frame {
    match sym {
        Symbolized::Sym(s) => {
            let (file, line) = match &s.code_info {
                Some(ci) => (ci.to_path().display().to_string(), ci.line),
                None => (s.module.as_ref().map(|m| m.to_string_lossy().into_owned()).unwrap_or_default(), None),
            };
            Frame { function: s.name.to_string(), file, line, kind, def_line: None }
        }
        Symbolized::Unknown(_) => Frame { function: "[unknown]".into(), file: String::new(), line: None, kind, def_line: None },
    }
}

impl Symbols {
    /// Native frames for user addresses of process `pid`.
    pub fn user(&self, pid: u32, addrs: &[u64]) -> Vec<Frame> {
        addrs.iter().map(|&a| self.user_one(pid, a)).collect()
    }

    /// The mapping's name (a file as the process names it, `[vdso]`, or empty when anonymous),
    /// file offset and root prefix `addr` maps to in process `pid`.
    fn locate(&self, pid: u32, addr: u64) -> Option<(String, u64, String)> {
        let find = |p: &ProcMaps| {
            p.maps.iter().find(|m| (m.start..m.end).contains(&addr)).map(|m| (m.path.clone(), addr - m.start + m.offset, p.root.clone()))
        };
        let mut procs = self.procs.borrow_mut();
        if let Some(p) = procs.get(&pid) {
            if let Some(found) = find(p) {
                return Some(found);
            }
            // Outside every mapping: a library loaded since, or (far more often) a bogus frame
            // of a stack walked without frame pointers. Reading /proc/PID/maps of a Python
            // process costs ~100 µs of kernel time, so at most once a second per process.
            if p.read_at.elapsed() < std::time::Duration::from_secs(1) {
                return None;
            }
        }
        let fresh = read_proc_maps(pid)?;
        self.maps_reads.set(self.maps_reads.get() + 1);
        let found = find(&fresh);
        procs.insert(pid, fresh);
        found
    }

    fn user_one(&self, pid: u32, addr: u64) -> Frame {
        let Some((path, offset, root)) = self.locate(pid, addr) else { return hex_frame(addr, FrameKind::Native) };
        if !path.starts_with('/') {
            // [vdso], [stack], an anonymous mapping: no file to read symbols from.
            return Frame { file: path, ..hex_frame(addr, FrameKind::Native) };
        }
        let mut files = self.files.borrow_mut();
        let file = files.entry(format!("{root}{path}")).or_insert_with_key(|full| SymFile::read(full, &root));
        let Some((symbols, virt)) = file.as_ref().and_then(|f| Some((f.symbols.clone(), f.virt_offset(offset)?))) else {
            return hex_frame(addr, FrameKind::Native);
        };
        let mut elf = Elf::new(symbols);
        elf.debug_syms = false;
        match self.inner.symbolize_single(&Source::Elf(elf), Input::VirtOffset(virt)) {
            // Named after the library, not the debug file its symbols came from.
            Ok(s) => Frame { file: path, ..native_frame(&s, FrameKind::Native) },
            Err(_) => hex_frame(addr, FrameKind::Native),
        }
    }

    /// Forgets a process that exited (its pid will be reused).
    pub fn forget(&self, pid: u32) {
        self.procs.borrow_mut().remove(&pid);
    }

    /// Kernel frames for kernel addresses.
    pub fn kernel(&self, addrs: &[u64]) -> Vec<Frame> {
        if addrs.is_empty() {
            return Vec::new();
        }
        let src = Source::Kernel(Kernel::default());
        match self.inner.symbolize(&src, Input::AbsAddr(addrs)) {
            Ok(syms) => syms.iter().map(|s| native_frame(s, FrameKind::Kernel)).collect(),
            Err(_) => addrs.iter().map(|&a| hex_frame(a, FrameKind::Kernel)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn marker_for_symbolization() -> u64 {
        std::hint::black_box(7)
    }

    #[test]
    fn names_a_function_of_this_executable_from_its_symbol_table() {
        let s = Symbols::default();
        let addr = marker_for_symbolization as fn() -> u64 as usize as u64;
        let f = &s.user(std::process::id(), &[addr + 1])[0];
        assert!(f.function.contains("marker_for_symbolization"), "{f:?}");
        assert_eq!(f.line, None);
        assert!(f.file.starts_with('/'), "{f:?}");
    }

    #[test]
    fn names_a_libc_function_stripped_or_not() {
        // Debian's libc is stripped: the name comes from its debug file when one is installed,
        // else from the exported symbols; either way `getppid` is named, and the frame carries
        // libc's path, not the debug file's.
        let s = Symbols::default();
        let addr = libc::getppid as unsafe extern "C" fn() -> libc::pid_t as usize as u64;
        let f = &s.user(std::process::id(), &[addr])[0];
        assert!(f.function.contains("getppid"), "{f:?}");
        assert!(f.file.contains("libc"), "{f:?}");
        assert!(!f.file.contains("/usr/lib/debug"), "{f:?}");
    }

    #[test]
    fn an_address_outside_any_mapping_is_shown_as_hex_without_rereading_the_maps_each_time() {
        let s = Symbols::default();
        let me = std::process::id();
        assert_eq!(s.user(me, &[0x10])[0].function, "0x10");
        let bogus: Vec<u64> = (1..200).map(|i| i * 0x10).collect();
        assert!(s.user(me, &bogus).iter().all(|f| f.function.starts_with("0x")));
        assert_eq!(s.maps_reads.get(), 1, "bogus frames must not send each lookup back to /proc/PID/maps");
    }

    #[test]
    fn a_vdso_address_is_named_after_its_mapping() {
        // SAFETY: no preconditions.
        let vdso = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
        assert_ne!(vdso, 0);
        let s = Symbols::default();
        let f = &s.user(std::process::id(), &[vdso + 0x10])[0];
        assert_eq!(f.file, "[vdso]", "{f:?}");
        assert_eq!(s.maps_reads.get(), 1);
    }
}
