//! The live host side of `watch`: what the pure pipeline asks of the machine — waits in
//! progress (the kernel's per-thread state), stacks of slow requests (arming per-thread capture in
//! the kernel, a userspace snapshot at the threshold), and symbolization of captured stacks.
use std::collections::HashMap;

use introspect_common::{Armed, NO_SYSCALL};

use crate::{
    assemble::Inflight,
    breakdown::OffCpu,
    enrich::Enricher,
    event::{Event, Hdr, Sys, WaitFacts},
    loader::Probes,
    pipeline::{Live, SlowStart},
    pystack::{Frame, Interp},
    snapshot::{self, Symbols},
};

pub struct Host {
    pub probes: Probes,
    pub enricher: Enricher,
    symbols: Symbols,
    /// Python readers by process; `None` once attaching failed (warned once).
    interps: HashMap<u32, Option<Interp>>,
    sample_hz: u64,
    now_ns: u64,
    pub threads_armed: u64,
    /// Warnings for the user, drained by the caller.
    pub warnings: Vec<String>,
}

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
    pub fn new(probes: Probes, sample_hz: u64) -> Self {
        Self {
            probes,
            enricher: Enricher::default(),
            symbols: Symbols::default(),
            interps: HashMap::new(),
            sample_hz,
            now_ns: 0,
            threads_armed: 0,
            warnings: Vec::new(),
        }
    }

    /// Reads each process's interpreter layout ahead of time, so arming a slow request's thread
    /// does not wait for it.
    pub fn warm(&mut self, pids: impl IntoIterator<Item = u32>) {
        for pid in pids {
            interp(&mut self.interps, &mut self.warnings, pid);
        }
    }

    pub fn set_now(&mut self, now_ns: u64) {
        self.now_ns = now_ns;
    }


    /// Wait facts for `ev`, with the process's Python runtime from its reader when they need it
    /// (one discovery of the runtime per process serves stacks and the GIL alike).
    fn enrich_facts(&mut self, ev: &mut Event) {
        let runtime = self
            .enricher
            .needs_runtime(ev)
            .and_then(|pid| interp(&mut self.interps, &mut self.warnings, pid))
            .map(|i| i.rt.clone());
        self.enricher.enrich(ev, runtime.as_ref());
    }

    /// Attaches what only this host can tell: wait facts, and symbolized stacks.
    pub fn enrich(&mut self, ev: &mut Event) {
        self.enrich_facts(ev);
        match ev {
            // A thread's stacks keep coming until its disarm reaches the kernel (up to one drain
            // after its request ended), while it already serves fast requests: nobody reads
            // those, so they are not symbolized (that was most of the tracer's CPU with many slow
            // requests).
            Event::Stack { hdr, .. } if !self.probes.is_armed(hdr.tid) => {}
            Event::Stack { hdr, kstack, ustack, raw, frames, .. } => {
                let mut out: Vec<Frame> = self.symbols.kernel(&self.probes.stack(*kstack));
                let skip = out.iter().take_while(|f| is_capture_frame(f)).count();
                out.drain(..skip);
                // Without frame pointers in libpython only the innermost user frame is exact.
                if let Some(&pc) = self.probes.stack(*ustack).first() {
                    out.extend(self.symbols.user(hdr.tgid, &[pc]));
                }
                let raw = std::mem::take(raw);
                if let Some(interp) = interp(&mut self.interps, &mut self.warnings, hdr.tgid) {
                    out.extend(interp.symbolize(&raw));
                }
                *frames = out;
            }
            Event::Fork { child, .. } => {
                let child = *child;
                self.warm([child]);
            }
            Event::Exit { pid, .. } => {
                self.interps.remove(pid);
                self.symbols.forget(*pid);
            }
            _ => {}
        }
    }
}

impl Live for Host {
    fn open_wait(&mut self, tid: u32) -> Option<OffCpu> {
        let st = self.probes.offcpu(tid)?;
        let now = self.now_ns;
        let sys = (st.sys.nr != NO_SYSCALL).then_some(Sys { nr: st.sys.nr, fd: st.sys.fd, arg: st.sys.arg });
        let mut ev = Event::OffCpu {
            hdr: Hdr { tgid: st.tgid, tid, ts: now },
            out_ts: st.out_ts,
            wake_ts: if st.wake_ts == 0 { now } else { st.wake_ts },
            state: st.state,
            sys,
            facts: WaitFacts::default(),
        };
        self.enrich_facts(&mut ev);
        let Event::OffCpu { out_ts, wake_ts, state, sys, facts, .. } = ev else { return None };
        Some(OffCpu { out_ts, wake_ts, in_ts: now, state, sys, facts })
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
            None => {
                let mut stack = snapshot::kernel_frames(r.pid, r.tid);
                if let Some(pc) = snapshot::syscall_pc(r.pid, r.tid) {
                    stack.extend(self.symbols.user(r.pid, &[pc]));
                }
                return Some(SlowStart { stack, off_cpu_since: None });
            }
        };
        // Arm first: sampling starts now, the snapshot (which may symbolize for a while) after.
        let walk = interp.walk();
        match self.probes.arm(r.tid, Armed { tstate, tgid: r.pid, _pad: 0 }, walk, hz) {
            Ok(()) => self.threads_armed += 1,
            Err(e) => self.warnings.push(format!("thread {}: cannot sample its stacks: {e}", r.tid)),
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
    }
}
