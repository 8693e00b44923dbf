//! Python stacks read from outside the process: thread states, frame chains, code objects and
//! line tables, for CPython 3.8 to 3.13 (3.13+ through `_Py_DebugOffsets`). Reads never pause or
//! modify the process and need no GIL, so a thread stuck in C code holding the GIL is read like any
//! other. Every pointer is validated (code objects by type, strings by kind and length) because a
//! running interpreter changes under the reader.
pub mod gil;
pub mod interrupt;
pub mod layout;
pub mod linetable;
pub mod runtime;

use std::collections::HashMap;

use layout::{FRAME_OWNED_BY_CSTACK, Lasti, Layout};
use linetable::{lnotab_line, locations_line, pep626_line};
pub use runtime::{PyError, Runtime};

use crate::{
    proc::mem::{read_mem, read_u64},
    stacks::{Frame, FrameKind, RawFrame},
};

/// (code object, position) lines kept at most.
const MAX_LINES: usize = 1 << 16;

/// What a code object says about itself.
#[derive(Clone, Debug)]
struct CodeInfo {
    function: String,
    file: String,
    firstlineno: u32,
    linetable: Vec<u8>,
}

/// A CPython process being read.
pub struct Interp {
    pub pid: u32,
    pub rt: Runtime,
    pub layout: Layout,
    /// Code objects read so far (shared: the linetable is not copied per frame).
    codes: HashMap<u64, Option<std::rc::Rc<CodeInfo>>>,
    /// Lines of (code object, position) pairs seen so far: the all-traffic profiler hands the
    /// same ones over many times a second.
    lines: HashMap<(u64, u64), Option<u32>>,
    /// ≤3.10: offset of the kernel tid inside glibc's `struct pthread` (found once per process).
    pthread_tid: Option<u64>,
}

/// Bounds that keep a reader of a changing process from looping or allocating without end.
const MAX_THREADS: usize = 4096;
const MAX_FRAMES: usize = 256;
const MAX_STR: u64 = 4096;
const MAX_LINETABLE: u64 = 1 << 16;

impl Interp {
    pub fn attach(pid: u32) -> Result<Self, PyError> {
        let rt = runtime::find_runtime(pid)?;
        let layout = layout::layout(pid, &rt)?;
        Ok(Self { pid, rt, layout, codes: HashMap::new(), lines: HashMap::new(), pthread_tid: None })
    }

    fn ptr(&self, addr: u64) -> Result<u64, PyError> {
        Ok(read_u64(self.pid, addr)?)
    }

    /// Every thread state of every interpreter, with its kernel tid when it can be told.
    pub fn threads(&mut self) -> Result<Vec<(u64, Option<u32>)>, PyError> {
        let l = &self.layout;
        let mut out = Vec::new();
        let mut interp = self.ptr(self.rt.runtime + l.interp_head)?;
        // Sub-interpreters: interp->next is at offset 0 up to 3.12 (and is rarely used).
        let mut interps = 0;
        while interp != 0 && interps < 64 {
            let mut t = self.ptr(interp + l.threads_head)?;
            while t != 0 && out.len() < MAX_THREADS {
                out.push(t);
                t = self.ptr(t + l.tstate_next)?;
            }
            interps += 1;
            interp = if self.rt.minor <= 12 { self.ptr(interp).unwrap_or(0) } else { 0 };
        }
        let mut res = Vec::with_capacity(out.len());
        for t in out {
            let tid = self.tid_of(t);
            res.push((t, tid));
        }
        Ok(res)
    }

    fn tid_of(&mut self, tstate: u64) -> Option<u32> {
        if let Some(off) = self.layout.native_thread_id {
            return self.ptr(tstate + off).ok().map(|v| v as u32);
        }
        // ≤3.10: thread_id is pthread_self(), the address of glibc's struct pthread, which holds
        // the kernel tid at an offset that depends on the glibc build.
        let pthread = self.ptr(tstate + self.layout.thread_id).ok()?;
        let off = match self.pthread_tid {
            Some(o) => o,
            None => {
                let o = self.find_pthread_tid_offset(pthread)?;
                self.pthread_tid = Some(o);
                o
            }
        };
        let mut b = [0u8; 4];
        read_mem(self.pid, pthread + off, &mut b).ok()?;
        Some(u32::from_le_bytes(b))
    }

    /// Finds where glibc keeps the tid in `struct pthread`: an offset whose value is one of the
    /// process's thread ids (0x2d0 on glibc 2.36 x86_64, tried first).
    fn find_pthread_tid_offset(&self, pthread: u64) -> Option<u64> {
        let tids: Vec<u32> =
            std::fs::read_dir(format!("/proc/{}/task", self.pid)).ok()?.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
        let mut buf = vec![0u8; 0x800];
        read_mem(self.pid, pthread, &mut buf).ok()?;
        let at = |o: usize| u32::from_le_bytes(buf[o..o + 4].try_into().expect("4 bytes"));
        if tids.contains(&at(0x2d0)) {
            return Some(0x2d0);
        }
        (0..buf.len() - 4).step_by(4).find(|&o| tids.contains(&at(o))).map(|o| o as u64)
    }

    /// The thread state of kernel thread `tid`.
    pub fn tstate_of(&mut self, tid: u32) -> Result<Option<u64>, PyError> {
        let threads = self.threads()?;
        if let Some((ts, _)) = threads.iter().find(|(_, t)| *t == Some(tid)) {
            return Ok(Some(*ts));
        }
        // A process forked from one that already ran Python (uWSGI's workers, forked by a master
        // that loaded the app) keeps the forking thread's state with the parent's thread id
        // (3.11+ do not update native_thread_id in the child). That thread became the child's
        // main thread: the one state whose id is no thread of this process is the main
        // thread's.
        if tid != self.pid {
            return Ok(None);
        }
        let live: Vec<u32> = std::fs::read_dir(format!("/proc/{}/task", self.pid))
            .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
            .unwrap_or_default();
        let mut orphans = threads.iter().filter(|(_, t)| t.is_none_or(|t| !live.contains(&t)));
        Ok(match (orphans.next(), orphans.next()) {
            (Some((ts, _)), None) => Some(*ts),
            _ => None,
        })
    }

    /// The address of the innermost frame of a thread state.
    pub fn top_frame(&self, tstate: u64) -> Result<u64, PyError> {
        let f = self.ptr(tstate + self.layout.tstate_frame)?;
        match self.layout.cframe_frame {
            Some(off) if f != 0 => self.ptr(f + off),
            _ => Ok(f),
        }
    }

    /// Reads a thread's frame chain, innermost first.
    pub fn raw_stack(&self, tstate: u64) -> Result<Vec<RawFrame>, PyError> {
        let l = &self.layout;
        let lasti_off = match l.lasti {
            Lasti::IntBytes(o) | Lasti::IntUnits(o) | Lasti::Ptr { off: o, .. } => o,
        };
        let mut out = Vec::new();
        let mut f = self.top_frame(tstate)?;
        while f != 0 && out.len() < MAX_FRAMES {
            if let Some(owner) = l.frame_owner {
                let mut b = [0u8; 1];
                read_mem(self.pid, f + owner, &mut b)?;
                if b[0] == FRAME_OWNED_BY_CSTACK {
                    f = self.ptr(f + l.frame_back)?;
                    continue;
                }
            }
            out.push(RawFrame { code: self.ptr(f + l.frame_code)?, lasti: self.ptr(f + lasti_off)? });
            f = self.ptr(f + l.frame_back)?;
        }
        Ok(out)
    }

    /// Python frames for raw frames (read here or in the kernel). Frames whose code object cannot
    /// be read or is not a code object (an entry frame, memory reused meanwhile) are dropped.
    pub fn symbolize(&mut self, raw: &[RawFrame]) -> Vec<Frame> {
        raw.iter()
            .filter_map(|r| {
                let code = r.code & !3; // 3.14 tags f_executable; harmless before.
                let info = self.code_info(code)?;
                if info.file == "<shim>" {
                    return None;
                }
                let line = match self.lines.get(&(code, r.lasti)) {
                    Some(l) => *l,
                    None => {
                        if self.lines.len() >= MAX_LINES {
                            self.lines.clear();
                        }
                        let l = self.line(&info, code, r.lasti);
                        self.lines.insert((code, r.lasti), l);
                        l
                    }
                };
                Some(Frame {
                    function: info.function.clone(),
                    file: info.file.clone(),
                    line,
                    kind: FrameKind::Python,
                    def_line: Some(info.firstlineno),
                })
            })
            .collect()
    }

    /// How the kernel walks this interpreter's frames.
    pub fn walk(&self) -> introspect_common::PyWalk {
        let l = &self.layout;
        let lasti = match l.lasti {
            Lasti::IntBytes(o) | Lasti::IntUnits(o) | Lasti::Ptr { off: o, .. } => o,
        };
        introspect_common::PyWalk {
            tstate_frame: l.tstate_frame as u16,
            cframe_frame: l.cframe_frame.map_or(introspect_common::NO_OFFSET, |o| o as u16),
            frame_back: l.frame_back as u16,
            frame_code: l.frame_code as u16,
            frame_lasti: lasti as u16,
            _pad: [0; 3],
        }
    }

    /// A thread's Python stack, innermost first.
    pub fn stack(&mut self, tstate: u64) -> Result<Vec<Frame>, PyError> {
        let raw = self.raw_stack(tstate)?;
        Ok(self.symbolize(&raw))
    }

    fn code_info(&mut self, code: u64) -> Option<std::rc::Rc<CodeInfo>> {
        if let Some(c) = self.codes.get(&code) {
            return c.clone();
        }
        let info = self.read_code(code).map(std::rc::Rc::new);
        // Code objects are immutable while alive; a failed read is retried next time.
        if info.is_some() {
            self.codes.insert(code, info.clone());
        }
        info
    }

    fn read_code(&self, code: u64) -> Option<CodeInfo> {
        if code == 0 || self.ptr(code + 8).ok()? != self.rt.code_type {
            return None;
        }
        let l = &self.layout;
        let name_ptr = self.ptr(code + l.code_qualname.unwrap_or(l.code_name)).ok()?;
        let function = self.read_str(name_ptr)?;
        let file = self.read_str(self.ptr(code + l.code_filename).ok()?)?;
        let mut b = [0u8; 4];
        read_mem(self.pid, code + l.code_firstlineno, &mut b).ok()?;
        let firstlineno = i32::from_le_bytes(b).max(0) as u32;
        let table = self.ptr(code + l.code_linetable).ok()?;
        let linetable = self.read_bytes(table).unwrap_or_default();
        Some(CodeInfo { function, file, firstlineno, linetable })
    }

    /// A `str` object: compact ASCII, or compact latin-1 / UCS-2 / UCS-4.
    fn read_str(&self, obj: u64) -> Option<String> {
        if obj == 0 {
            return None;
        }
        let len = self.ptr(obj + 16).ok()?;
        let mut st = [0u8; 4];
        read_mem(self.pid, obj + 32, &mut st).ok()?;
        let state = u32::from_le_bytes(st);
        let (kind, compact, ascii) = ((state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1);
        if compact == 0 || len > MAX_STR || !matches!(kind, 1 | 2 | 4) {
            return None;
        }
        let data = obj + if ascii == 1 { self.layout.str_ascii_data } else { self.layout.str_compact_data };
        let mut buf = vec![0u8; (len * u64::from(kind)) as usize];
        read_mem(self.pid, data, &mut buf).ok()?;
        Some(match kind {
            1 => buf.iter().map(|&b| b as char).collect(),
            2 => char::decode_utf16(buf.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]))).map(|c| c.unwrap_or('\u{fffd}')).collect(),
            _ => buf.chunks_exact(4).map(|c| char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]])).unwrap_or('\u{fffd}')).collect(),
        })
    }

    /// A `bytes` object's contents.
    fn read_bytes(&self, obj: u64) -> Option<Vec<u8>> {
        let len = self.ptr(obj + 16).ok()?;
        if len > MAX_LINETABLE {
            return None;
        }
        let mut buf = vec![0u8; len as usize];
        read_mem(self.pid, obj + 32, &mut buf).ok()?;
        Some(buf)
    }

    fn line(&self, info: &CodeInfo, code: u64, lasti: u64) -> Option<u32> {
        let first = info.firstlineno;
        match (self.layout.lasti, self.layout.linetable) {
            (Lasti::IntBytes(_), _) => lnotab_line(&info.linetable, first, lasti as u32 as i32),
            (Lasti::IntUnits(_), _) => pep626_line(&info.linetable, first, (lasti as u32 as i32).checked_mul(2)?),
            (Lasti::Ptr { adaptive, .. }, _) => {
                let units = lasti.checked_sub(code + adaptive)? / 2;
                locations_line(&info.linetable, first, units)
            }
        }
    }
}
