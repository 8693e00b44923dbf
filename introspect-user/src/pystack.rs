//! Python stacks read from outside the process: thread states, frame chains, code objects and
//! line tables, for CPython 3.8 to 3.13 (3.13+ through `_Py_DebugOffsets`). Reads never pause or
//! modify the process and need no GIL, so a thread stuck in C code holding the GIL is read like any
//! other. Every pointer is validated (code objects by type, strings by kind and length) because a
//! running interpreter changes under the reader.
//!
//! Offsets: ../shared/notes/cpython.md (DWARF of the pyenv builds, checked live on 3.8–3.13 and
//! Debian's 3.11). Line tables: CPython's Objects/lnotab_notes.txt (≤3.10) and
//! Objects/locations.md (3.11+).
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::python::{self, PyError, Runtime, read_mem, read_u64};

/// How a frame says where it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lasti {
    /// `int f_lasti`, in bytes (3.8, 3.9).
    IntBytes(u64),
    /// `int f_lasti`, in 2-byte code units (3.10).
    IntUnits(u64),
    /// A pointer to the current instruction (3.11+: prev_instr / instr_ptr), relative to the
    /// code object's inline bytecode at `adaptive`.
    Ptr { off: u64, adaptive: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineTable {
    Lnotab,
    Pep626,
    Locations,
}

/// Offsets of one CPython minor version (x86_64 release builds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub interp_head: u64,
    pub threads_head: u64,
    pub tstate_next: u64,
    pub thread_id: u64,
    pub native_thread_id: Option<u64>,
    /// tstate → frame pointer, or tstate → cframe when `cframe_frame` is set.
    pub tstate_frame: u64,
    pub cframe_frame: Option<u64>,
    pub frame_back: u64,
    pub frame_code: u64,
    pub lasti: Lasti,
    /// `owner` byte: 3 marks a C-stack shim/entry frame to skip (3.12+).
    pub frame_owner: Option<u64>,
    pub code_filename: u64,
    pub code_name: u64,
    pub code_qualname: Option<u64>,
    pub code_firstlineno: u64,
    pub code_linetable: u64,
    pub linetable: LineTable,
    /// Where the characters of a compact ASCII str start (sizeof(PyASCIIObject)).
    pub str_ascii_data: u64,
    /// ... and of a compact non-ASCII str (sizeof(PyCompactUnicodeObject)).
    pub str_compact_data: u64,
}

const FRAME_OWNED_BY_CSTACK: u8 = 3;

fn table(minor: u32) -> Option<Layout> {
    let (interp_head, threads_head, thread_id, native) = match minor {
        8..=10 => (32, 8, 176, None),
        11 => (40, 16, 152, Some(160)),
        12 => (40, 72, 136, Some(144)),
        13 => (632, 7344, 152, Some(160)),
        _ => return None,
    };
    let (tstate_frame, cframe_frame, frame_back, frame_code, lasti, frame_owner) = match minor {
        8 | 9 => (24, None, 24, 32, Lasti::IntBytes(104), None),
        10 => (24, None, 24, 32, Lasti::IntUnits(96), None),
        11 => (56, Some(8), 48, 32, Lasti::Ptr { off: 56, adaptive: 184 }, None),
        12 => (56, Some(0), 8, 0, Lasti::Ptr { off: 56, adaptive: 192 }, Some(70)),
        _ => (72, None, 8, 0, Lasti::Ptr { off: 56, adaptive: 200 }, Some(70)),
    };
    let (firstlineno, filename, name, qualname, linetable, kind) = match minor {
        8 | 9 => (40, 104, 112, None, 120, LineTable::Lnotab),
        10 => (40, 104, 112, None, 120, LineTable::Pep626),
        11 => (72, 112, 120, Some(128), 136, LineTable::Locations),
        _ => (68, 112, 120, Some(128), 136, LineTable::Locations),
    };
    let (ascii, compact) = if minor <= 11 { (48, 72) } else { (40, 56) };
    Some(Layout {
        interp_head,
        threads_head,
        tstate_next: 8,
        thread_id,
        native_thread_id: native,
        tstate_frame,
        cframe_frame,
        frame_back,
        frame_code,
        lasti,
        frame_owner,
        code_filename: filename,
        code_name: name,
        code_qualname: qualname,
        code_firstlineno: firstlineno,
        code_linetable: linetable,
        linetable: kind,
        str_ascii_data: ascii,
        str_compact_data: compact,
    })
}

/// 3.13+: the offsets the interpreter publishes about itself at the start of `_PyRuntime`
/// (Include/internal/pycore_debug_offsets.h, 3.13 layout). Each one is checked against the size
/// of its struct, as pystack does.
fn from_debug_offsets(pid: u32, rt: &Runtime) -> Result<Layout, PyError> {
    let mut d = [0u8; 584];
    read_mem(pid, rt.runtime, &mut d)?;
    if &d[..8] != b"xdebugpy" {
        return Err(PyError::Invalid(pid, rt.major, rt.minor, "no _Py_DebugOffsets cookie"));
    }
    let at = |o: usize| u64::from_le_bytes(d[o..o + 8].try_into().expect("8 bytes"));
    let version = at(8);
    if (version >> 24, (version >> 16) & 0xff) != (u64::from(rt.major), u64::from(rt.minor)) {
        return Err(PyError::Invalid(pid, rt.major, rt.minor, "debug offsets of another version"));
    }
    if at(16) != 0 {
        return Err(PyError::Invalid(pid, rt.major, rt.minor, "free-threaded builds are not supported"));
    }
    // (size field, [member offsets]) per struct: every member must lie inside its struct.
    let groups: [(usize, &[usize]); 6] = [
        (24, &[40]),
        (48, &[72]),
        (152, &[168, 184, 192, 200]),
        (224, &[232, 240, 248, 264]),
        (272, &[280, 288, 296, 304, 312, 344]),
        (536, &[552]),
    ];
    for (size_at, members) in groups {
        let size = at(size_at);
        if size == 0 || size > 1 << 20 || members.iter().any(|&m| at(m) >= size) {
            return Err(PyError::Invalid(pid, rt.major, rt.minor, "debug offsets out of range"));
        }
    }
    Ok(Layout {
        interp_head: at(40),
        threads_head: at(72),
        tstate_next: at(168),
        thread_id: at(192),
        native_thread_id: Some(at(200)),
        tstate_frame: at(184),
        cframe_frame: None,
        frame_back: at(232),
        frame_code: at(240),
        lasti: Lasti::Ptr { off: at(248), adaptive: at(344) },
        frame_owner: Some(at(264)),
        code_filename: at(280),
        code_name: at(288),
        code_qualname: Some(at(296)),
        code_firstlineno: at(312),
        code_linetable: at(304),
        linetable: LineTable::Locations,
        str_ascii_data: at(560),
        str_compact_data: at(560) + 16,
    })
}

/// The layout for a process's interpreter.
pub fn layout(pid: u32, rt: &Runtime) -> Result<Layout, PyError> {
    match (rt.major, rt.minor) {
        (3, 13) => from_debug_offsets(pid, rt),
        (3, m) => table(m).ok_or(PyError::Unsupported(3, m)),
        (major, minor) => Err(PyError::Unsupported(major, minor)),
    }
}

/// One frame of a stack, innermost first in a stack.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Frame {
    pub function: String,
    pub file: String,
    pub line: Option<u32>,
    /// "python", "native" or "kernel".
    pub kind: FrameKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameKind {
    Python,
    Native,
    Kernel,
}

/// What a code object says about itself.
#[derive(Clone, Debug)]
struct CodeInfo {
    function: String,
    file: String,
    firstlineno: u32,
    linetable: Vec<u8>,
}

/// A frame as read from the frame chain: the code object and the raw position field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawFrame {
    pub code: u64,
    pub lasti: u64,
}

/// A CPython process being read.
pub struct Interp {
    pub pid: u32,
    pub rt: Runtime,
    pub layout: Layout,
    codes: HashMap<u64, Option<CodeInfo>>,
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
        let rt = python::find_runtime(pid)?;
        let layout = layout(pid, &rt)?;
        Ok(Self { pid, rt, layout, codes: HashMap::new(), pthread_tid: None })
    }

    fn ptr(&self, addr: u64) -> Result<u64, PyError> {
        read_u64(self.pid, addr)
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
        let tids: Vec<u32> = std::fs::read_dir(format!("/proc/{}/task", self.pid))
            .ok()?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
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
        Ok(self.threads()?.into_iter().find(|(_, t)| *t == Some(tid)).map(|(ts, _)| ts))
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
                let line = self.line(&info, code, r.lasti);
                Some(Frame { function: info.function.clone(), file: info.file.clone(), line, kind: FrameKind::Python })
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

    fn code_info(&mut self, code: u64) -> Option<CodeInfo> {
        if let Some(c) = self.codes.get(&code) {
            return c.clone();
        }
        let info = self.read_code(code);
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

    #[test]
    fn tables_exist_for_supported_versions() {
        for m in 8..=13 {
            assert!(table(m).is_some());
        }
        assert!(table(14).is_none());
    }
}
