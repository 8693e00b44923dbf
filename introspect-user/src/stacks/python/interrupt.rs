//! Interrupting a request from outside (`--interrupt-before`, opt-in): what
//! `PyThreadState_SetAsyncExc` does inside the process, done through its memory, so the thread
//! raises `TimeoutError` at its next eval-breaker check (a backward jump or a call in Python
//! code) and the app's own error handling runs: transactions roll back, the app answers 500,
//! the worker lives. C code holding the GIL that does not return to the evaluation loop never
//! sees it (then the write is undone before the server's kill).
//!
//! Every write is checked before and after: `tstate->async_exc` must be empty (another pending
//! exception is left alone) and the flags must hold values the evaluation loop can hold; the
//! caller verifies the request is still the same around the write and undoes it otherwise.
use super::{
    Interp, PyError,
    layout::{ASYNC_EXCEPTION_BIT, Breaker, TSTATE_INTERP, async_exc_at},
};
use crate::proc::mem::{read_mem, read_u64, write_mem};

#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    #[error("CPython {0}.{1} cannot be interrupted by introspect (3.8 to 3.13 can)")]
    Unsupported(u32, u32),
    #[error("PyExc_TimeoutError is not exported by {0}")]
    NoTimeoutError(String),
    #[error("another exception is already pending in that thread")]
    AlreadyPending,
    #[error("the interpreter's flags hold unexpected values ({0}): its layout is not the one introspect knows")]
    Layout(&'static str),
    #[error(transparent)]
    Py(#[from] PyError),
}

/// What was written, to check on and undo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub tstate: u64,
    /// The exception written (the TimeoutError type object).
    pub exc: u64,
    async_exc: u64,
    /// Whether its reference count was raised (types before 3.12 are not immortal).
    counted: bool,
    /// (address, what) of the flag set.
    flag: Flag,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flag {
    /// An int set to 1 (3.8–3.11 `pending.async_exc`), with the `eval_breaker` int beside it.
    Int { async_flag: u64, eval_breaker: u64 },
    /// A bit in the low byte of a flag word (3.12, 3.13).
    Bit { byte: u64 },
}

fn read_i32(pid: u32, addr: u64) -> Result<i32, PyError> {
    let mut b = [0u8; 4];
    read_mem(pid, addr, &mut b)?;
    Ok(i32::from_le_bytes(b))
}

fn write(pid: u32, addr: u64, bytes: &[u8]) -> Result<(), PyError> {
    Ok(write_mem(pid, addr, bytes)?)
}

impl Interp {
    /// Asks thread state `tstate` to raise `TimeoutError`.
    pub fn raise_timeout(&mut self, tstate: u64) -> Result<Written, InterruptError> {
        let (pid, rt) = (self.pid, &self.rt);
        let at = async_exc_at(rt.major, rt.minor).ok_or(InterruptError::Unsupported(rt.major, rt.minor))?;
        if rt.timeout_error == 0 {
            return Err(InterruptError::NoTimeoutError(rt.path.clone()));
        }
        let exc = read_u64(pid, rt.timeout_error).map_err(PyError::from)?;
        if exc == 0 || read_u64(pid, exc + 8).map_err(PyError::from)? == 0 {
            return Err(InterruptError::Layout("PyExc_TimeoutError is not a type object"));
        }
        let async_exc = tstate + at.async_exc;
        if read_u64(pid, async_exc).map_err(PyError::from)? != 0 {
            return Err(InterruptError::AlreadyPending);
        }
        let interp = read_u64(pid, tstate + TSTATE_INTERP).map_err(PyError::from)?;
        let flag = match at.breaker {
            Breaker::RuntimeInts { eval_breaker, async_flag } => {
                Flag::Int { async_flag: rt.runtime + async_flag, eval_breaker: rt.runtime + eval_breaker }
            }
            Breaker::InterpInts { eval_breaker, async_flag } => Flag::Int { async_flag: interp + async_flag, eval_breaker: interp + eval_breaker },
            Breaker::InterpBits { eval_breaker } => Flag::Bit { byte: interp + eval_breaker },
            Breaker::ThreadBits { eval_breaker } => Flag::Bit { byte: tstate + eval_breaker },
        };
        if let Flag::Int { async_flag, eval_breaker } = flag {
            let (a, e) = (read_i32(pid, async_flag)?, read_i32(pid, eval_breaker)?);
            if !(0..=1).contains(&a) || !(0..=1).contains(&e) {
                return Err(InterruptError::Layout("eval_breaker and pending.async_exc are not 0 or 1"));
            }
        }
        // The thread takes a reference when it raises and drops it after: give it one, as
        // PyThreadState_SetAsyncExc does (3.12+ built-in types are immortal: nothing to count).
        let counted = rt.minor < 12;
        if counted {
            let refcnt = read_u64(pid, exc).map_err(PyError::from)?;
            write(pid, exc, &(refcnt + 1).to_le_bytes())?;
        }
        write(pid, async_exc, &exc.to_le_bytes())?;
        match flag {
            Flag::Int { async_flag, eval_breaker } => {
                write(pid, async_flag, &1i32.to_le_bytes())?;
                write(pid, eval_breaker, &1i32.to_le_bytes())?;
            }
            Flag::Bit { byte } => {
                let mut b = [0u8; 1];
                read_mem(pid, byte, &mut b).map_err(PyError::from)?;
                write(pid, byte, &[b[0] | ASYNC_EXCEPTION_BIT])?;
            }
        }
        Ok(Written { tstate, exc, async_exc, counted, flag })
    }

    /// Whether the exception is still waiting (the thread has not reached a check yet).
    pub fn interrupt_pending(&self, w: &Written) -> Result<bool, PyError> {
        Ok(read_u64(self.pid, w.async_exc)? == w.exc)
    }

    /// Takes the exception back if the thread has not raised it yet; true when it was taken
    /// back.
    pub fn undo_interrupt(&self, w: &Written) -> Result<bool, PyError> {
        if !self.interrupt_pending(w)? {
            return Ok(false);
        }
        let pid = self.pid;
        write(pid, w.async_exc, &0u64.to_le_bytes())?;
        if w.counted {
            let refcnt = read_u64(pid, w.exc)?;
            write(pid, w.exc, &refcnt.saturating_sub(1).to_le_bytes())?;
        }
        // The flag: the evaluation loop clears a stale eval_breaker itself the next time it
        // recomputes it; only the request for an async exception is withdrawn.
        match w.flag {
            Flag::Int { async_flag, .. } => write(pid, async_flag, &0i32.to_le_bytes())?,
            Flag::Bit { byte } => {
                let mut b = [0u8; 1];
                read_mem(pid, byte, &mut b)?;
                write(pid, byte, &[b[0] & !ASYNC_EXCEPTION_BIT])?;
            }
        }
        Ok(true)
    }
}
