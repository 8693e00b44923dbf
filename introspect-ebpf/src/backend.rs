//! PostgreSQL backends on this host, through the scheduler: each time one blocks, what it said
//! it waits for (its own `*my_wait_event_info`, read from its memory as it leaves the CPU) and,
//! when it runs again, who woke it. A backend blocked on a row lock is woken by the backend that
//! released it, so the waker names the holder. And when a serving thread's write wakes a
//! backend, that backend serves the connection written to: the link between an app's
//! connection and its server process, seen once per connection.
//!
//! Backends are known from birth: userspace names the servers (postmasters) and the kernel
//! marks each child they fork (`task_newtask`, in `process`); the ones already running are
//! marked by userspace at start.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::map,
    maps::HashMap,
};
use introspect_common::{ConnKey, DbBackend, DbLinkEvent, DbSwitchEvent, counter, kind, role};

use crate::{
    emit::{header, send},
    maps::{CONNS, PENDING, count, set_thread_bits, thread, thread_bits},
};

/// PostgreSQL servers (postmaster tgid) → the address of their `my_wait_event_info`.
#[map(name = "PG_SERVERS")]
pub static PG_SERVERS: HashMap<u32, u64> = HashMap::with_max_entries(64, 0);

/// Backends by pid (single-threaded: pid == tid). Current while the pid's
/// `thread::DB_BACKEND` bit is set.
#[map(name = "DB_BACKENDS")]
pub static DB_BACKENDS: HashMap<u32, DbBackend> = HashMap::with_max_entries(16384, 0);

/// A child `pid` of server `tgid` (not a thread: the caller checked) is a backend from birth.
#[inline(always)]
pub fn born(pid: u32, wait_addr: u64) {
    let st = DbBackend { wait_addr, ..DbBackend::default() };
    if DB_BACKENDS.insert(pid, st, 0).is_err() {
        count(counter::MAP_FULL);
        return;
    }
    set_thread_bits(pid, thread::DB_BACKEND, 0);
}

/// A backend exits.
#[inline(always)]
pub fn gone(pid: u32) {
    let _ = DB_BACKENDS.remove(pid);
    set_thread_bits(pid, 0, thread::DB_BACKEND);
}

/// Backend `pid` (the current task) leaves the CPU in task state `state` at `now`.
#[inline(always)]
pub fn switched_out(pid: u32, state: u32, now: u64) {
    let Some(st) = DB_BACKENDS.get_ptr_mut(pid) else { return };
    // SAFETY: map value pointer from a successful lookup; `pid` is the current task, so no
    // other CPU switches it or wakes it now.
    unsafe {
        if state == 0 {
            // Preempted: runnable all along, nothing to report.
            (*st).out_ts = 0;
            return;
        }
        // `my_wait_event_info` points at the backend's PGPROC slot in shared memory once it has
        // one (at a local variable before). Both are resident: a failed read reports 0.
        let at: u64 = bpf_probe_read_user((*st).wait_addr as *const u64).unwrap_or(0);
        (*st).wait_event = if at != 0 { bpf_probe_read_user(at as *const u32).unwrap_or(0) } else { 0 };
        (*st).out_ts = now;
        (*st).wake_ts = 0;
        (*st).state = state;
        (*st).waker_tid = 0;
        (*st).waker_is_backend = 0;
    }
}

/// Backend `pid` runs again at `now`: its blocking spell, if one was being followed.
#[inline(always)]
pub fn switched_in(pid: u32, now: u64) {
    let Some(st) = DB_BACKENDS.get_ptr_mut(pid) else { return };
    // SAFETY: map value pointer from a successful lookup; `pid` is being switched in here.
    let st = unsafe {
        let copy = *st;
        (*st).out_ts = 0;
        copy
    };
    if st.out_ts == 0 {
        return;
    }
    let mut hdr = header(kind::DB_SWITCH, 0, ((pid as u64) << 32) | pid as u64);
    hdr.ts = now;
    send(DbSwitchEvent {
        hdr,
        out_ts: st.out_ts,
        wake_ts: if st.wake_ts == 0 { now } else { st.wake_ts },
        wait_event: st.wait_event,
        state: st.state,
        waker_tid: st.waker_tid,
        waker_is_backend: st.waker_is_backend,
    });
}

/// Backend `pid` is being woken by the current task at `now` (sched_waking runs in the waker's
/// context).
#[inline(always)]
pub fn woken(pid: u32, now: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let waker = pid_tgid as u32;
    let waker_bits = thread_bits(waker);
    if let Some(st) = DB_BACKENDS.get_ptr_mut(pid) {
        // SAFETY: map value pointer from a successful lookup; the wakee is not running, and
        // only one waking makes it runnable.
        unsafe {
            if (*st).out_ts != 0 && (*st).wake_ts == 0 {
                (*st).wake_ts = now;
                (*st).waker_tid = waker;
                (*st).waker_is_backend = u32::from(waker_bits & thread::DB_BACKEND != 0);
            }
        }
    }
    // A serving thread writing on an outbound connection woke this backend: on loopback and
    // Unix sockets the receiving side runs in the writer's context (unless the kernel deferred
    // it to ksoftirqd), so the connection is the backend's client socket.
    if waker_bits & thread::PENDING == 0 {
        return;
    }
    let Some(p) = PENDING.get_ptr(waker) else { return };
    // SAFETY: map value pointer from a successful lookup (the waker's own entry).
    let (pkind, fd) = unsafe { ((*p).kind, (*p).fd) };
    if pkind == kind::WRITE {
        link(pid_tgid, fd, pid);
    }
}

/// A serving thread (`tid` of `tgid`), blocked in a syscall on `fd`, is being woken by the
/// current task: when that is a backend, its reply woke the thread (the other direction of
/// [`woken`], a second chance at the link when one delivery was deferred).
#[inline(always)]
pub fn woke_client(tgid: u32, tid: u32, fd: i32) {
    let waker = bpf_get_current_pid_tgid() as u32;
    if fd < 0 || thread_bits(waker) & thread::DB_BACKEND == 0 {
        return;
    }
    link(((tgid as u64) << 32) | tid as u64, fd, waker);
}

/// `fd` of the thread `pid_tgid`, if one of its outbound connections, is served by `backend`:
/// reported once per connection.
#[inline(always)]
fn link(pid_tgid: u64, fd: i32, backend: u32) {
    let key = ConnKey { tgid: (pid_tgid >> 32) as u32, fd };
    let Some(conn) = CONNS.get_ptr_mut(key) else { return };
    // SAFETY: map value pointer from a successful lookup; a racing link writes the same.
    unsafe {
        if (*conn).role != role::OUTBOUND || (*conn).linked != 0 {
            return;
        }
        (*conn).linked = 1;
    }
    send(DbLinkEvent { hdr: header(kind::DB_LINK, 0, pid_tgid), fd, backend });
}
