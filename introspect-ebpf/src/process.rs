//! Following the process tree: children of tracked processes are tracked from birth (gunicorn
//! forks and recycles workers), and exits are reported so userspace can close their requests.
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::tracepoint,
    programs::TracePointContext,
};
use introspect_common::{ProcEvent, counter, kind};

use crate::{
    backend::{self, PG_SERVERS},
    emit::{header, send},
    maps::{OFFCPU, OFFSETS, PENDING, PY_THREADS, THREADS, TRACKED, count, is_tracked, thread, thread_bits},
};

/// include/uapi/linux/sched.h
const CLONE_THREAD: u64 = 0x0001_0000;

/// task:task_newtask runs in the parent, before the child can run, so the child is tracked
/// before it makes its first syscall. Threads share the parent's tgid and need nothing.
#[tracepoint]
pub fn task_task_newtask(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // A PostgreSQL server forking a backend (forks are rare: one hash lookup each).
    // SAFETY: the value is copied out at once.
    let pg = unsafe { PG_SERVERS.get(tgid) }.copied();
    if pg.is_none() && !is_tracked(tgid) {
        return 0;
    }
    let off = OFFSETS.load();
    // SAFETY: offsets come from this kernel's task_newtask format file.
    let flags = unsafe { ctx.read_at::<u64>(off.newtask_clone_flags as usize) }.unwrap_or(CLONE_THREAD);
    if flags & CLONE_THREAD != 0 {
        return 0;
    }
    let Ok(child) = (unsafe { ctx.read_at::<i32>(off.newtask_pid as usize) }) else { return 0 };
    let child = child as u32;
    if let Some(wait_addr) = pg {
        backend::born(child, wait_addr);
        return 0;
    }
    match TRACKED.get_ptr_mut(child) {
        // SAFETY: array slot of a pid that is not running yet.
        Some(t) => unsafe { *t = 1 },
        // Beyond the array: pid_max was raised after the watch started.
        None => count(counter::MAP_FULL),
    }
    emit(kind::FORK, pid_tgid, child);
    0
}

/// sched:sched_process_exit fires for every exiting thread; the process is gone when its
/// thread-group leader exits.
#[tracepoint]
pub fn sched_sched_process_exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    if thread_bits(tid) & thread::DB_BACKEND != 0 {
        backend::gone(tid);
    }
    if !is_tracked(tgid) {
        return 0;
    }
    // Per-thread state dies with the thread (its tid will be reused).
    if let Some(b) = THREADS.get_ptr_mut(tid) {
        // SAFETY: this thread's own slot, in its own context.
        unsafe { *b = 0 };
    }
    let _ = OFFCPU.remove(tid);
    let _ = PENDING.remove(tid);
    // Its thread state is freed: a thread reusing the tid must not be walked with it.
    let _ = PY_THREADS.remove(tid);
    if tgid != tid {
        return 0;
    }
    if let Some(t) = TRACKED.get_ptr_mut(tgid) {
        // SAFETY: array slot of the exiting process.
        unsafe { *t = 0 };
    }
    emit(kind::EXIT, pid_tgid, tgid);
    0
}

#[inline(always)]
fn emit(kind: u16, pid_tgid: u64, pid: u32) {
    send(ProcEvent { hdr: header(kind, 0, pid_tgid), pid, code: 0, comm: bpf_get_current_comm().unwrap_or([0; 16]) });
}
