//! How workers die, recorded as it happens (a forced kill leaves nothing behind otherwise):
//! signals sent to watched processes and to threads serving requests (with the sender), the
//! stack of a serving thread as a fatal signal reaches it, the OOM killer's choice, the exit code
//! a process leaves with, and gunicorn's heartbeat (the arbiter's timeout runs from it).
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::tracepoint,
    programs::TracePointContext,
};
use introspect_common::{OomEvent, ProcEvent, SignalEvent, kind};

use crate::{
    emit::{header, send},
    field,
    maps::{HEARTBEATS, OFFSETS, is_tracked, thread, thread_bits, upsert},
    python::capture_dying,
    syscall::{arg, now},
};

/// Signals whose default action ends the process (signal(7)): the ones a kill or a crash is made
/// of. Not SIGCHLD, SIGCONT, SIGURG, SIGWINCH, which masters receive all the time.
const FATAL: u64 = (1 << 1) // SIGHUP
    | (1 << 2) // SIGINT
    | (1 << 3) // SIGQUIT
    | (1 << 4) // SIGILL
    | (1 << 5) // SIGTRAP
    | (1 << 6) // SIGABRT
    | (1 << 7) // SIGBUS
    | (1 << 8) // SIGFPE
    | (1 << 9) // SIGKILL
    | (1 << 10) // SIGUSR1
    | (1 << 11) // SIGSEGV
    | (1 << 12) // SIGUSR2
    | (1 << 14) // SIGALRM
    | (1 << 15) // SIGTERM
    | (1 << 24) // SIGXCPU
    | (1 << 25) // SIGXFSZ
    | (1 << 31); // SIGSYS

/// signal_generate's result for a signal the target ignores (include/trace/events/signal.h).
const TRACE_SIGNAL_IGNORED: i32 = 1;

/// Where these fields have been in the records for years (checked against the format files).
const USUAL_SIG: u16 = 8;
const USUAL_CODE: u16 = 16;
const USUAL_PID: u16 = 36;
const USUAL_GROUP: u16 = 40;
const USUAL_RESULT: u16 = 44;
const USUAL_OOM_PID: u16 = 8;

#[inline(always)]
fn fatal(sig: i32) -> bool {
    (1..64).contains(&sig) && FATAL & (1u64 << sig) != 0
}

/// signal:signal_generate runs in the sender's context. The target is a process (kill) or a
/// thread (tgkill, and the faults the kernel signals to the faulting thread): watched processes
/// are known by pid, threads by their serving bit.
#[tracepoint]
pub fn signal_signal_generate(ctx: TracePointContext) -> u32 {
    let off = OFFSETS.load();
    let target = field::at::<i32>(&ctx, off.signal_pid, USUAL_PID) as u32;
    if !is_tracked(target) && thread_bits(target) & thread::SERVING == 0 {
        return 0;
    }
    let sig = field::at::<i32>(&ctx, off.signal_sig, USUAL_SIG);
    let result = field::at::<i32>(&ctx, off.signal_result, USUAL_RESULT);
    if !fatal(sig) || result == TRACE_SIGNAL_IGNORED {
        return 0;
    }
    send(SignalEvent {
        hdr: header(kind::SIGNAL, 0, bpf_get_current_pid_tgid()),
        target,
        sig,
        code: field::at::<i32>(&ctx, off.signal_code, USUAL_CODE),
        group: field::at::<i32>(&ctx, off.signal_group, USUAL_GROUP),
        result,
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    });
    0
}

/// signal:signal_deliver runs in the thread taking the signal, its memory still there: the last
/// moment its stack can be read, for a SIGKILL.
#[tracepoint]
pub fn signal_signal_deliver(ctx: TracePointContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    if thread_bits(tid) & thread::SERVING == 0 {
        return 0;
    }
    if fatal(field::at::<i32>(&ctx, OFFSETS.load().deliver_sig, USUAL_SIG)) {
        capture_dying(&ctx, now());
    }
    0
}

/// oom:mark_victim: the OOM killer chose this process (runs in whatever task triggered it).
#[tracepoint]
pub fn oom_mark_victim(ctx: TracePointContext) -> u32 {
    let off = OFFSETS.load();
    let pid = field::at::<i32>(&ctx, off.oom_pid, USUAL_OOM_PID) as u32;
    if !is_tracked(pid) {
        return 0;
    }
    // SAFETY: offsets from this kernel's format file; the values are in kB.
    let kb = |o: u16| unsafe { ctx.read_at::<u64>(o as usize) }.unwrap_or(0);
    send(OomEvent {
        hdr: header(kind::OOM, 0, bpf_get_current_pid_tgid()),
        pid,
        _pad: 0,
        total_vm_kb: kb(off.oom_total_vm),
        anon_rss_kb: kb(off.oom_anon_rss),
        file_rss_kb: kb(off.oom_file_rss),
        shmem_rss_kb: kb(off.oom_shmem_rss),
    });
    0
}

/// exit_group(code): how a watched process chose to leave (a killed one never calls it).
#[tracepoint]
pub fn syscalls_enter_exit_group(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_tracked(tgid) {
        return 0;
    }
    send(ProcEvent {
        hdr: header(kind::EXIT_CALL, 0, pid_tgid),
        pid: tgid,
        code: arg(&ctx, 0) as i32,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    });
    0
}

/// utimensat(fd, NULL, times, 0), i.e. futimens: gunicorn's worker heartbeat (WorkerTmp.notify
/// sets its temporary file's times; the arbiter kills a worker whose file is older than
/// --timeout). Only the time of the last one is kept, per process: no event per request.
#[tracepoint]
pub fn syscalls_enter_utimensat(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // With a path it is a file being touched by name, not a heartbeat.
    if !is_tracked(tgid) || arg(&ctx, 1) != 0 {
        return 0;
    }
    upsert(&HEARTBEATS, tgid, now());
    0
}
