//! Reading tracepoint record fields cheaply.
//!
//! A context load at a constant offset is one instruction the verifier checks; a load at an
//! offset only known at load time (from the format file) needs the probe-read helper, a call that
//! costs more than the rest of a rejecting program. Fields are therefore read at the offset
//! this code was written against when the format file agrees (one comparison against a
//! load-time global), and through the helper otherwise.
use aya_ebpf::{EbpfContext, programs::TracePointContext};

/// The field of type `T` at constant offset `OFF`.
///
/// The kernel refuses to attach a program whose context loads reach past a record's end, so
/// `OFF + size_of::<T>()` must be within every record the program is attached to.
#[inline(always)]
pub fn fixed<T: Copy>(ctx: &TracePointContext, off: usize) -> T {
    // SAFETY: constant, aligned offset inside the record (the verifier rejects anything else).
    unsafe { *(ctx.as_ptr() as *const u8).add(off).cast::<T>() }
}

/// The field of type `T` at `off` (from this kernel's format file), `usual` being where kernels
/// have had it for years.
#[inline(always)]
pub fn at<T: Copy + Default>(ctx: &TracePointContext, off: u16, usual: u16) -> T {
    if off == usual {
        fixed::<T>(ctx, usual as usize)
    } else {
        // SAFETY: offset from this kernel's format file.
        unsafe { ctx.read_at::<T>(off as usize) }.unwrap_or_default()
    }
}
