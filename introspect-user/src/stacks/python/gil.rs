//! The GIL's address range in a process: a thread in `futex()` on an address inside it is
//! waiting for the GIL (its cond, mutex, switch_cond and switch_mutex all live there).
use std::collections::HashMap;

use super::{
    layout::{GIL_SIZE, GilAt, gil_at},
    runtime::{PyError, Runtime},
};
use crate::proc::mem::{read_mem, read_u64};

/// The address range of the process's GIL: a thread in `futex()` on an address inside it is
/// waiting for the GIL (its cond, mutex, switch_cond and switch_mutex all live there).
pub fn gil_range(pid: u32, rt: &Runtime) -> Result<(u64, u64), PyError> {
    let gil = match gil_at(rt.major, rt.minor).ok_or(PyError::Unsupported(rt.major, rt.minor))? {
        GilAt::InRuntime(off) => rt.runtime + off,
        GilAt::InMainInterp { interp_main, ceval_gil } => {
            let interp = read_u64(pid, rt.runtime + interp_main)?;
            read_u64(pid, interp + ceval_gil)?
        }
        GilAt::FromDebugOffsets => {
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

/// GIL ranges per process, found once each (forked workers inherit their parent's).
#[derive(Default)]
pub struct Gils {
    /// `None` once discovery failed (not CPython, unknown build): waits there are locks.
    by_pid: HashMap<u32, Option<(u64, u64)>>,
    /// Warnings for the user, drained by the caller.
    pub warnings: Vec<String>,
}

impl Gils {
    /// Whether `addr` in `pid` lies in its GIL; `runtime` finds it the first time.
    pub fn contains(&mut self, pid: u32, addr: u64, runtime: impl FnOnce() -> Option<Runtime>) -> bool {
        let range = *self.by_pid.entry(pid).or_insert_with(|| {
            let found = match runtime() {
                Some(rt) => gil_range(pid, &rt).map_err(|e| e.to_string()),
                None => Err("its interpreter could not be read".to_string()),
            };
            match found {
                Ok(range) => Some(range),
                Err(e) => {
                    self.warnings.push(format!("process {pid}: GIL waits cannot be told from other lock waits: {e}"));
                    None
                }
            }
        });
        range.is_some_and(|(lo, hi)| (lo..hi).contains(&addr))
    }

    /// A forked child has its parent's address space: the same GIL address.
    pub fn fork(&mut self, parent: u32, child: u32) {
        if let Some(g) = self.by_pid.get(&parent).copied() {
            self.by_pid.insert(child, g);
        }
    }

    pub fn exit(&mut self, pid: u32) {
        self.by_pid.remove(&pid);
    }
}
