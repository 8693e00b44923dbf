//! The live host side of `watch`: what the pure pipeline asks of the machine — waits in
//! progress (the kernel's per-thread state), what an fd is when the syscalls did not say
//! (/proc), whether a futex is the GIL, stacks of slow requests (arming per-thread capture in the
//! kernel, a userspace snapshot at the threshold), and symbolization of captured stacks.
use std::collections::HashMap;

use introspect_common::{Armed, NO_SYSCALL, phase};

use crate::{
    assemble::Inflight,
    breakdown::OffCpu,
    event::{Event, FdKind, Sys, WaitFacts},
    probe::Probes,
    proc::fds::Resolver,
    proc::mem::{read_mem, write_mem},
    run::pipeline::{Live, SlowStart},
    stacks::{
        Frame,
        python::{Interp, gil::Gils, interrupt::Written},
        snapshot,
        symbolize::Symbols,
    },
};

pub struct Host {
    pub probes: Probes,
    symbols: Symbols,
    /// Python readers by process; `None` once attaching failed (warned once).
    interps: HashMap<u32, Option<Interp>>,
    gils: Gils,
    fds: Resolver,
    sample_hz: u64,
    now_ns: u64,
    pub threads_armed: u64,
    warnings: Vec<String>,
    /// Interruptions written (`--interrupt-before`), by thread.
    written: HashMap<u32, (u32, Written)>,
    /// The all-traffic profiler is on: every thread's Python frames are walked in the kernel.
    profile_all: bool,
    /// Threads looked up for it (whether a thread state was found, and when it was looked for).
    py_threads: HashMap<u32, (bool, u64)>,
    /// Its stacks, symbolized, by what the kernel captured.
    stack_cache: foldhash::HashMap<StackKey, Vec<Frame>>,
    /// Processes that exited, and when: their readers and symbols are kept a little longer,
    /// for the stacks their threads left as they were killed (which can come after the exit).
    exited: Vec<(u32, u64)>,
}

/// What a sampled stack was captured as: its process, kernel addresses, innermost user address
/// and Python (code object, position) pairs.
#[derive(PartialEq, Eq, Hash)]
struct StackKey {
    tgid: u32,
    kaddrs: Vec<u64>,
    pc: Option<u64>,
    raw: Vec<(u64, u64)>,
}

/// Any kernel address: symbolizing it loads the kernel symbol table.
const KERNEL_TEXT_PROBE: u64 = 0xffff_ffff_8100_0000;

/// Symbolized stacks kept at most (a few MiB).
const STACK_CACHE_MAX: usize = 4096;

/// How long an exited process's readers are kept.
const KEEP_EXITED_NS: u64 = 1_000_000_000;

/// The Python reader of a process, attached on first use.
fn interp<'a>(interps: &'a mut HashMap<u32, Option<Interp>>, warnings: &mut Vec<String>, pid: u32) -> Option<&'a mut Interp> {
    interps
        .entry(pid)
        .or_insert_with(|| match Interp::attach(pid) {
            Ok(i) => Some(i),
            Err(e) => {
                warnings.push(format!("process {pid}: no Python frames in its stacks: {e}"));
                None
            }
        })
        .as_mut()
}

/// Kernel frames that are the capture machinery itself, not what the thread was doing.
fn is_capture_frame(f: &Frame) -> bool {
    ["bpf_", "__bpf_", "__traceiter_", "perf_", "__perf_"].iter().any(|p| f.function.starts_with(p))
}

impl Host {
    /// `sample_hz`: of an armed (slow request's) thread; `profile_all`: the all-traffic profiler
    /// runs, and no thread is armed (the per-CPU sampler samples them all).
    pub fn new(probes: Probes, sample_hz: u64, profile_all: bool) -> Self {
        let symbols = Symbols::default();
        if profile_all {
            // Samples come at once: load the kernel's symbols now (reading /proc/kallsyms takes
            // ~0.1 s of CPU), before the watch starts, not with the first sample.
            let _ = symbols.kernel(&[KERNEL_TEXT_PROBE]);
        }
        Self {
            probes,
            symbols,
            interps: HashMap::new(),
            gils: Gils::default(),
            fds: Resolver::default(),
            sample_hz,
            now_ns: 0,
            threads_armed: 0,
            warnings: Vec::new(),
            written: HashMap::new(),
            exited: Vec::new(),
            profile_all,
            py_threads: HashMap::new(),
            stack_cache: foldhash::HashMap::default(),
        }
    }

    /// Profiling all traffic: the first time a thread shows up (and again a second after a
    /// look that found no Python thread state: it may not have had one yet), its thread state
    /// goes into the kernel's `PY_THREADS` so its samples carry Python frames.
    fn find_py_thread(&mut self, pid: u32, tid: u32) {
        let now = self.now_ns;
        match self.py_threads.get(&tid) {
            Some((true, _)) => return,
            Some((false, at)) if now.saturating_sub(*at) < 1_000_000_000 => return,
            _ => {}
        }
        let found = interp(&mut self.interps, &mut self.warnings, pid).and_then(|i| Some((i.tstate_of(tid).ok()??, i.walk())));
        if let Some((tstate, walk)) = found
            && let Err(e) = self.probes.py_thread(tid, Armed { tstate, tgid: pid, _pad: 0 }, walk)
        {
            self.warnings.push(format!("thread {tid}: its samples will have no Python frames: {e}"));
        }
        self.py_threads.insert(tid, (found.is_some(), now));
    }

    /// Reads each process's interpreter layout ahead of time, so arming a slow request's thread
    /// does not wait for it.
    /// Profiling all traffic, their threads' thread states go into the kernel's `PY_THREADS` now
    /// too: a thread found only at its first event has no Python frames in the samples taken
    /// before userspace drained that event (a worker's first request, up to 100 ms of it).
    pub fn warm(&mut self, pids: impl IntoIterator<Item = u32>) {
        for pid in pids {
            interp(&mut self.interps, &mut self.warnings, pid);
            if self.profile_all {
                for tid in crate::proc::task::threads(pid) {
                    self.find_py_thread(pid, tid);
                }
            }
        }
    }

    /// Every open fd of `pid` and what it is, for the fds open before the watch began.
    pub fn fds_of(&mut self, pid: u32) -> Vec<(i32, FdKind)> {
        self.fds.all(pid)
    }

    pub fn set_now(&mut self, now_ns: u64) {
        self.now_ns = now_ns;
        let (gone, kept): (Vec<_>, Vec<_>) = self.exited.drain(..).partition(|&(_, at)| now_ns.saturating_sub(at) > KEEP_EXITED_NS);
        self.exited = kept;
        if !gone.is_empty() {
            // Its code objects' addresses mean nothing now.
            self.stack_cache.clear();
        }
        for (pid, _) in gone {
            for tid in self.probes.forget_py_threads(pid) {
                self.py_threads.remove(&tid);
            }
            self.interps.remove(&pid);
            self.symbols.forget(pid);
            self.gils.exit(pid);
        }
    }

    /// Tries an identity write (the bytes already there) into process `pid`, and opening its
    /// memory for writing: what `--try-write` reports.
    pub fn try_write(&mut self, pid: u32) -> String {
        let addr = interp(&mut self.interps, &mut self.warnings, pid).map(|i| i.rt.runtime);
        let vm = match addr {
            None => "not tried (no Python runtime to write to)".to_string(),
            Some(addr) => {
                let mut b = [0u8; 8];
                match read_mem(pid, addr, &mut b).and_then(|()| write_mem(pid, addr, &b)) {
                    Ok(()) => "allowed".to_string(),
                    Err(e) => format!("denied ({})", e.source),
                }
            }
        };
        let mem = match std::fs::OpenOptions::new().write(true).open(format!("/proc/{pid}/mem")) {
            Ok(_) => "allowed".to_string(),
            Err(e) => format!("denied ({e})"),
        };
        format!("write check on process {pid}: process_vm_writev {vm}; opening /proc/{pid}/mem for writing {mem}")
    }

    /// Warnings for the user since the last call.
    pub fn take_warnings(&mut self) -> Vec<String> {
        let mut w = std::mem::take(&mut self.warnings);
        w.append(&mut self.gils.warnings);
        w
    }
}

impl Live for Host {
    fn enrich(&mut self, ev: &mut Event) {
        if self.profile_all {
            let hdr = *ev.hdr();
            // A sample without Python frames from a thread found before: the kernel dropped
            // its entry as it exited, and this is a new thread with its tid (or one between
            // Python frames); looked up again, at most once a second.
            if let Event::Stack { sampled: Some(_), raw, .. } = &*ev
                && raw.is_empty()
                && let Some(seen) = self.py_threads.get_mut(&hdr.tid)
            {
                seen.0 = false;
            }
            // Only threads of the watched processes: their samples, and their reads and writes
            // on connections (a request's first read comes before its first sample). Not the
            // events of PostgreSQL backends.
            if hdr.tid != 0 && matches!(ev, Event::Stack { sampled: Some(_), .. } | Event::Data { .. } | Event::Accept { .. }) {
                self.find_py_thread(hdr.tgid, hdr.tid);
            }
        }
        match ev {
            // A thread's stacks keep coming until its disarm reaches the kernel (up to one drain
            // after its request ended), while it already serves fast requests: nobody reads
            // those, so they are not symbolized (that was most of the tracer's CPU with many slow
            // requests).
            Event::Stack { hdr, sampled: None, at_signal: false, .. } if !self.probes.is_armed(hdr.tid) => {}
            Event::Stack { hdr, kstack, ustack, raw, frames, sampled, .. } => {
                // A wait's stack taken at its syscall's exit: the kernel part is the exit path,
                // not where it waited; the native frame above it names the call.
                let at_exit = sampled.is_some_and(|w| w.wait_ns.is_some());
                let kaddrs = if at_exit { Vec::new() } else { self.probes.stack(*kstack) };
                // Without frame pointers in libpython only the innermost user frame is exact.
                let pc = self.probes.stack(*ustack).first().copied();
                let raw = std::mem::take(raw);
                // The all-traffic profiler sees the same few stacks over and over: symbolized
                // once, by what was captured (addresses and code objects, not ids).
                let key = sampled.is_some().then(|| StackKey {
                    tgid: hdr.tgid,
                    kaddrs: kaddrs.clone(),
                    pc,
                    raw: raw.iter().map(|r| (r.code, r.lasti)).collect(),
                });
                if let Some(hit) = key.as_ref().and_then(|k| self.stack_cache.get(k)) {
                    *frames = hit.clone();
                    return;
                }
                let mut out: Vec<Frame> = self.symbols.kernel(&kaddrs);
                let skip = out.iter().take_while(|f| is_capture_frame(f)).count();
                out.drain(..skip);
                if let Some(pc) = pc {
                    out.extend(self.symbols.user(hdr.tgid, &[pc]));
                }
                if let Some(interp) = interp(&mut self.interps, &mut self.warnings, hdr.tgid) {
                    out.extend(interp.symbolize(&raw));
                }
                if let Some(k) = key {
                    if self.stack_cache.len() >= STACK_CACHE_MAX {
                        // Code objects are freed and their addresses reused: start over now
                        // and then rather than keep what may have gone stale.
                        self.stack_cache.clear();
                    }
                    self.stack_cache.insert(k, out.clone());
                }
                *frames = out;
            }
            Event::Fork { hdr, child } => {
                self.gils.fork(hdr.tgid, *child);
                let child = *child;
                self.warm([child]);
            }
            Event::Exit { hdr, pid } => self.exited.push((*pid, hdr.ts)),
            _ => {}
        }
    }

    fn is_gil(&mut self, pid: u32, addr: u64) -> bool {
        let (interps, warnings) = (&mut self.interps, &mut self.warnings);
        self.gils.contains(pid, addr, || interp(interps, warnings, pid).map(|i| i.rt.clone()))
    }

    fn proc_fd(&mut self, pid: u32, fd: i32) -> Option<FdKind> {
        self.fds.describe(pid, fd)
    }

    fn open_wait(&mut self, tid: u32) -> Option<OffCpu> {
        let st = self.probes.offcpu(tid)?;
        let now = self.now_ns;
        let sys = (st.sys.nr != NO_SYSCALL).then_some(Sys { nr: st.sys.nr, fd: st.sys.fd, arg: st.sys.arg });
        Some(OffCpu {
            out_ts: st.out_ts,
            wake_ts: if st.wake_ts == 0 { now } else { st.wake_ts },
            in_ts: now,
            state: st.state,
            sys,
            facts: WaitFacts::default(),
        })
    }

    fn slow(&mut self, r: &Inflight) -> Option<SlowStart> {
        let hz = self.sample_hz;
        // Read before the snapshot: if it is still off the CPU after, the snapshot is that wait's.
        let off = self.probes.offcpu(r.tid).map(|st| st.out_ts);
        let found = interp(&mut self.interps, &mut self.warnings, r.pid).and_then(|i| Some((i.tstate_of(r.tid).ok()??, i)));
        let (tstate, interp) = match found {
            Some(x) => x,
            // Not a Python thread, or an interpreter this agent cannot read: kernel and native
            // frames only.
            None => return Some(SlowStart { stack: snapshot::native_frames(&self.symbols, r.pid, r.tid), off_cpu_since: None }),
        };
        // Arm first: sampling starts now, the snapshot (which may symbolize for a while) after.
        // Profiling all traffic, the thread is sampled already (and its kill's stack walked).
        let walk = interp.walk();
        if !self.profile_all {
            match self.probes.arm(r.tid, Armed { tstate, tgid: r.pid, _pad: 0 }, walk, hz) {
                Ok(()) => self.threads_armed += 1,
                Err(e) => self.warnings.push(format!("thread {}: cannot sample its stacks: {e}", r.tid)),
            }
        }
        let interp = self.interps.get_mut(&r.pid).and_then(Option::as_mut)?;
        let stack = snapshot::thread_stack(interp, &self.symbols, tstate, r.tid);
        let still_off = off.is_some() && self.probes.offcpu(r.tid).map(|st| st.out_ts) == off;
        Some(SlowStart { stack, off_cpu_since: if still_off { off } else { None } })
    }

    fn done(&mut self, _pid: u32, tid: u32) {
        if self.probes.is_armed(tid) {
            self.probes.disarm(tid);
        }
        // An exception written for a request that ended between two looks must not land in the
        // thread's next request: take it back if it is still pending.
        if let Some((pid, w)) = self.written.remove(&tid)
            && let Some(interp) = self.interps.get(&pid).and_then(Option::as_ref)
            && interp.interrupt_pending(&w).unwrap_or(false)
        {
            let taken_back = interp.undo_interrupt(&w).unwrap_or(false);
            self.warnings.push(format!(
                "thread {tid} of process {pid}: its request ended with the TimeoutError still pending; {}",
                if taken_back { "taken back" } else { "it could not be taken back and may be raised in the thread's next request" }
            ));
        }
    }

    fn heartbeat(&mut self, pid: u32) -> Option<u64> {
        self.probes.heartbeat(pid)
    }

    fn interrupt(&mut self, pid: u32, tid: u32, fd: i32) -> Result<(), String> {
        // Only while the request is read and its response not begun: the thread is in the app.
        let in_app = |probes: &Probes| probes.conn_phase(pid, fd) == Some(phase::READING);
        if !in_app(&self.probes) {
            return Err("its response had begun or it had ended".into());
        }
        let interp = interp(&mut self.interps, &mut self.warnings, pid).ok_or("its interpreter cannot be read")?;
        let tstate = interp.tstate_of(tid).map_err(|e| e.to_string())?.ok_or("the thread has no Python thread state")?;
        let written = interp.raise_timeout(tstate).map_err(|e| e.to_string())?;
        if !in_app(&self.probes) {
            // Its response began while the write was made: take it back if it was not raised.
            let taken_back = interp.undo_interrupt(&written).unwrap_or(false);
            return Err(format!("its response began as it was interrupted ({})", if taken_back { "taken back" } else { "already raised" }));
        }
        self.written.insert(tid, (pid, written));
        Ok(())
    }

    fn interrupt_pending(&mut self, _pid: u32, tid: u32) -> Option<bool> {
        let (pid, w) = self.written.get(&tid)?;
        let pending = self.interps.get(pid)?.as_ref()?.interrupt_pending(w).ok()?;
        if !pending {
            self.written.remove(&tid);
        }
        Some(pending)
    }

    fn interrupt_undo(&mut self, _pid: u32, tid: u32) -> bool {
        let Some((pid, w)) = self.written.remove(&tid) else { return false };
        self.interps.get(&pid).and_then(Option::as_ref).is_some_and(|i| i.undo_interrupt(&w).unwrap_or(false))
    }

    fn snapshot(&mut self, pid: u32, tid: u32) -> Option<Vec<Frame>> {
        let interp = interp(&mut self.interps, &mut self.warnings, pid)?;
        let tstate = interp.tstate_of(tid).ok()??;
        Some(snapshot::thread_stack(interp, &self.symbols, tstate, tid))
    }
}
