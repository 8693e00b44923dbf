//! Snapshots of a thread's stack taken from userspace: kernel frames (/proc/PID/task/TID/stack),
//! the innermost native frame (the user PC /proc/PID/task/TID/syscall reports for a thread in a
//! syscall) and the Python frames, innermost first. Used for the `inflight` stack (Dogslow's
//! moment) and `introspect dump`.
use crate::{
    proc::task,
    stacks::{Frame, FrameKind, python::Interp, symbolize::Symbols},
};

/// Kernel frames of a thread that is off the CPU, innermost first.
pub fn kernel_frames(pid: u32, tid: u32) -> Vec<Frame> {
    task::kernel_stack(pid, tid)
        .into_iter()
        .map(|function| Frame { function, file: String::new(), line: None, kind: FrameKind::Kernel, def_line: None })
        .collect()
}

/// Kernel and the innermost native frames of thread `tid`: what it is blocked in, if anything.
pub fn native_frames(symbols: &Symbols, pid: u32, tid: u32) -> Vec<Frame> {
    let mut frames = kernel_frames(pid, tid);
    if let Some(pc) = task::syscall_pc(pid, tid) {
        frames.extend(symbols.user(pid, &[pc]));
    }
    frames
}

/// Kernel, innermost native and Python frames of thread `tid`, innermost first.
pub fn thread_stack(interp: &mut Interp, symbols: &Symbols, tstate: u64, tid: u32) -> Vec<Frame> {
    let mut frames = native_frames(symbols, interp.pid, tid);
    frames.extend(interp.stack(tstate).unwrap_or_default());
    frames
}
