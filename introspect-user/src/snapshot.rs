//! Snapshots of a thread's stack taken from userspace: kernel frames (/proc/PID/task/TID/stack),
//! the innermost native frame (the user PC /proc/PID/task/TID/syscall reports for a thread in a
//! syscall) and the Python frames (`pystack`), innermost first. Used for the `inflight` stack
//! (Dogslow's moment) and `introspect dump`.
use std::fs;

use blazesym::{
    Pid,
    symbolize::{
        Input, Symbolized, Symbolizer,
        source::{Kernel, Process, Source},
    },
};

use crate::pystack::{Frame, FrameKind, Interp};

/// Native and kernel symbolization (blazesym): ELF symbols and DWARF of the process's mappings,
/// kallsyms for the kernel.
pub struct Symbols {
    inner: Symbolizer,
}

impl Default for Symbols {
    fn default() -> Self {
        Self { inner: Symbolizer::new() }
    }
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
        if addrs.is_empty() {
            return Vec::new();
        }
        let src = Source::Process(Process::new(Pid::from(pid)));
        match self.inner.symbolize(&src, Input::AbsAddr(addrs)) {
            Ok(syms) => syms.iter().map(|s| native_frame(s, FrameKind::Native)).collect(),
            Err(_) => addrs.iter().map(|a| Frame { function: format!("{a:#x}"), file: String::new(), line: None, kind: FrameKind::Native }).collect(),
        }
    }

    /// Kernel frames for kernel addresses.
    pub fn kernel(&self, addrs: &[u64]) -> Vec<Frame> {
        if addrs.is_empty() {
            return Vec::new();
        }
        let src = Source::Kernel(Kernel::default());
        match self.inner.symbolize(&src, Input::AbsAddr(addrs)) {
            Ok(syms) => syms.iter().map(|s| native_frame(s, FrameKind::Kernel)).collect(),
            Err(_) => addrs.iter().map(|a| Frame { function: format!("{a:#x}"), file: String::new(), line: None, kind: FrameKind::Kernel }).collect(),
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
