//! Every per-version fact about CPython's memory layout that introspect relies on, in one place
//! (x86_64 release builds with the GIL). 3.8–3.12 come from tables; 3.13+ publishes its own
//! offsets in `_Py_DebugOffsets` at the start of `_PyRuntime`, which are read and range-checked.
//!
//! Where the numbers come from: the DWARF debug information of the pyenv builds (3.8.18,
//! 3.9.18, 3.10.13, 3.11.7, 3.12.1, 3.13.0, all `--enable-shared`), each checked live by reading
//! real processes and comparing with `py-spy dump`, and Debian's statically linked 3.11.2, which
//! has the same layout as pyenv's 3.11 (offsets match across patch releases of a minor version).
//! docs/cpython.md in this repository has the reasoning behind each group.
use super::runtime::{PyError, Runtime};
use crate::proc::mem::read_mem;

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

pub const FRAME_OWNED_BY_CSTACK: u8 = 3;

pub fn table(minor: u32) -> Option<Layout> {
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
    let groups: [(usize, &[usize]); 6] =
        [(24, &[40]), (48, &[72]), (152, &[168, 184, 192, 200]), (224, &[232, 240, 248, 264]), (272, &[280, 288, 296, 304, 312, 344]), (536, &[552])];
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

/// Size of `struct _gil_runtime_state` (interval, last_holder, locked, switch_number, cond,
/// mutex, switch_cond, switch_mutex: Include/internal/pycore_gil.h).
pub const GIL_SIZE: u64 = 208;

/// Where the GIL (`struct _gil_runtime_state`) is, per version.
pub enum GilAt {
    /// Embedded in `_PyRuntime` at this offset (`_PyRuntime.ceval.gil`).
    InRuntime(u64),
    /// A pointer in the main interpreter (PEP 684, 3.12): `_PyRuntime.interpreters.main` at
    /// `interp_main`, its `ceval.gil` at `ceval_gil`.
    InMainInterp { interp_main: u64, ceval_gil: u64 },
    /// 3.13+: from `_Py_DebugOffsets`: `runtime_state.interpreters_head` at +40 and
    /// `interpreter_state.ceval_gil` at +112 give the two offsets.
    FromDebugOffsets,
}

pub fn gil_at(major: u32, minor: u32) -> Option<GilAt> {
    Some(match (major, minor) {
        (3, 8) => GilAt::InRuntime(1152),
        (3, 9) | (3, 10) => GilAt::InRuntime(352),
        (3, 11) => GilAt::InRuntime(360),
        (3, 12) => GilAt::InMainInterp { interp_main: 40, ceval_gil: 384 },
        (3, 13..) => GilAt::FromDebugOffsets,
        _ => return None,
    })
}

/// `PyThreadState.interp`: the thread's interpreter (prev, next, interp: 3.8 to 3.13).
pub const TSTATE_INTERP: u64 = 16;

/// How `PyThreadState_SetAsyncExc` asks a thread to raise an exception, per version: it stores
/// the exception in `tstate->async_exc` and raises the flag the evaluation loop checks at its
/// next "eval breaker" point (a backward jump, a call), where it raises it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AsyncExcAt {
    /// `offsetof(PyThreadState, async_exc)`.
    pub async_exc: u64,
    pub breaker: Breaker,
}

/// Where the eval breaker is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Breaker {
    /// Two ints, both set to 1 (`_PyEval_SignalAsyncExc`: `pending.async_exc` and the
    /// `eval_breaker` computed from it), in `_PyRuntime.ceval` (3.8).
    RuntimeInts { eval_breaker: u64, async_flag: u64 },
    /// The same in the thread's interpreter, `interp->ceval` (3.9 to 3.11).
    InterpInts { eval_breaker: u64, async_flag: u64 },
    /// A word of flag bits in the thread's interpreter (`interp->ceval.eval_breaker`, 3.12):
    /// `_PY_ASYNC_EXCEPTION_BIT` is set in it.
    InterpBits { eval_breaker: u64 },
    /// The same word in the thread state itself (`tstate->eval_breaker`, 3.13).
    ThreadBits { eval_breaker: u64 },
}

/// `_PY_ASYNC_EXCEPTION_BIT` (Include/internal/pycore_ceval.h, 3.12 and 3.13).
pub const ASYNC_EXCEPTION_BIT: u8 = 1 << 3;

/// Offsets from the release builds' headers (offsetof of `PyThreadState`, `_PyRuntimeState`
/// and `PyInterpreterState` compiled against each pyenv version's own headers, internal ones
/// included). `_Py_DebugOffsets` (3.13) does not publish them.
pub fn async_exc_at(major: u32, minor: u32) -> Option<AsyncExcAt> {
    let (async_exc, breaker) = match (major, minor) {
        (3, 8) => (168, Breaker::RuntimeInts { eval_breaker: 592, async_flag: 620 }),
        (3, 9) => (168, Breaker::InterpInts { eval_breaker: 72, async_flag: 92 }),
        (3, 10) => (168, Breaker::InterpInts { eval_breaker: 68, async_flag: 92 }),
        (3, 11) => (144, Breaker::InterpInts { eval_breaker: 100, async_flag: 124 }),
        (3, 12) => (128, Breaker::InterpBits { eval_breaker: 368 }),
        (3, 13) => (144, Breaker::ThreadBits { eval_breaker: 24 }),
        _ => return None,
    };
    Some(AsyncExcAt { async_exc, breaker })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_exist_for_supported_versions() {
        for m in 8..=13 {
            assert!(table(m).is_some());
            assert!(gil_at(3, m).is_some());
            assert!(async_exc_at(3, m).is_some());
        }
        assert!(async_exc_at(3, 14).is_none());
        assert!(table(14).is_none());
        assert!(gil_at(3, 7).is_none());
    }
}
