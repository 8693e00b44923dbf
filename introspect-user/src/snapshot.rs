//! Snapshots of a thread's stack taken from userspace: kernel frames (/proc/PID/task/TID/stack),
//! the innermost native frame (the user PC /proc/PID/task/TID/syscall reports for a thread in a
//! syscall) and the Python frames (`pystack`), innermost first. Used for the `inflight` stack
//! (Dogslow's moment) and `introspect dump`.
use std::{cell::RefCell, collections::HashMap, fs, os::unix::fs::MetadataExt as _};

use blazesym::symbolize::{
    Input, Symbolized, Symbolizer,
    source::{Elf, Kernel, Source},
};

use crate::{
    pystack::{Frame, FrameKind, Interp},
    python::{Mapping, parse_maps},
};

/// Native and kernel symbolization (blazesym): ELF symbols and DWARF of the process's mappings,
/// kallsyms for the kernel.
pub struct Symbols {
    inner: Symbolizer,
    /// Each process's file mappings and the prefix that opens its files from here. Read once and
    /// again only when an address falls outside them (a library loaded since): reading
    /// /proc/PID/maps of a Python process takes milliseconds of kernel time, and symbolizing
    /// through blazesym's process source re-reads it on every call.
    procs: RefCell<HashMap<u32, ProcMaps>>,
}

struct ProcMaps {
    maps: Vec<Mapping>,
    /// "" when the process sees the same root as this one (so the ELF files parsed for one
    /// worker serve all of them), else /proc/PID/root (a container).
    root: String,
}

impl Default for Symbols {
    fn default() -> Self {
        Self { inner: Symbolizer::new(), procs: RefCell::new(HashMap::new()) }
    }
}

fn hex_frame(addr: u64, kind: FrameKind) -> Frame {
    Frame { function: format!("{addr:#x}"), file: String::new(), line: None, kind }
}

fn read_proc_maps(pid: u32) -> Option<ProcMaps> {
    let maps = parse_maps(&fs::read_to_string(format!("/proc/{pid}/maps")).ok()?);
    // The same root directory (device and inode through the magic links): a link's text says
    // "/" for a container's root as well.
    let root_id = |p: &str| fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let same_root = root_id(&format!("/proc/{pid}/root")).is_some_and(|id| Some(id) == root_id("/proc/self/root"));
    Some(ProcMaps { maps: maps.into_iter().filter(|m| m.path.starts_with('/')).collect(), root: if same_root { String::new() } else { format!("/proc/{pid}/root") } })
}

fn native_frame(sym: &Symbolized<'_>, kind: FrameKind) -> Frame {
    match sym {
        Symbolized::Sym(s) => {
            let (file, line) = match &s.code_info {
                Some(ci) => (ci.to_path().display().to_string(), ci.line),
                None => (s.module.as_ref().map(|m| m.to_string_lossy().into_owned()).unwrap_or_default(), None),
            };
            Frame { function: s.name.to_string(), file, line, kind }
        }
        Symbolized::Unknown(_) => Frame { function: "[unknown]".into(), file: String::new(), line: None, kind },
    }
}

impl Symbols {
    /// Native frames for user addresses of process `pid`.
    pub fn user(&self, pid: u32, addrs: &[u64]) -> Vec<Frame> {
        addrs.iter().map(|&a| self.user_one(pid, a)).collect()
    }

    /// The file and file offset `addr` maps to in process `pid`.
    fn locate(&self, pid: u32, addr: u64) -> Option<(String, u64)> {
        let find = |p: &ProcMaps| {
            p.maps.iter().find(|m| (m.start..m.end).contains(&addr)).map(|m| (format!("{}{}", p.root, m.path), addr - m.start + m.offset))
        };
        let mut procs = self.procs.borrow_mut();
        if let Some(found) = procs.get(&pid).and_then(find) {
            return Some(found);
        }
        let fresh = read_proc_maps(pid)?;
        let found = find(&fresh);
        procs.insert(pid, fresh);
        found
    }

    fn user_one(&self, pid: u32, addr: u64) -> Frame {
        let Some((path, offset)) = self.locate(pid, addr) else { return hex_frame(addr, FrameKind::Native) };
        let src = Source::Elf(Elf::new(path));
        match self.inner.symbolize_single(&src, Input::FileOffset(offset)) {
            Ok(s) => native_frame(&s, FrameKind::Native),
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

/// Kernel frames of a thread that is off the CPU, innermost first (names only: kptr_restrict
/// hides the addresses).
pub fn kernel_frames(pid: u32, tid: u32) -> Vec<Frame> {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/task/{tid}/stack")) else { return Vec::new() };
    text.lines()
        .filter_map(|l| {
            let sym = l.split_once("] ")?.1;
            let name = sym.split('+').next()?.trim();
            (!name.is_empty()).then(|| Frame { function: name.to_string(), file: String::new(), line: None, kind: FrameKind::Kernel })
        })
        .collect()
}

/// The user PC of a thread blocked in a syscall (None when it is running in user space).
pub fn syscall_pc(pid: u32, tid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    let last = text.split_whitespace().last()?;
    u64::from_str_radix(last.strip_prefix("0x")?, 16).ok()
}

/// Kernel, innermost native and Python frames of thread `tid`, innermost first.
pub fn thread_stack(interp: &mut Interp, symbols: &Symbols, tstate: u64, tid: u32) -> Vec<Frame> {
    let mut frames = kernel_frames(interp.pid, tid);
    if let Some(pc) = syscall_pc(interp.pid, tid) {
        frames.extend(symbols.user(interp.pid, &[pc]));
    }
    frames.extend(interp.stack(tstate).unwrap_or_default());
    frames
}
