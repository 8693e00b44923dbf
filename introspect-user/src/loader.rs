//! Loader: the only module that touches aya. Loads the embedded programs with this kernel's
//! tracepoint offsets, attaches them, seeds the maps, and hands out the ring buffer and counters.
use std::{
    collections::{BTreeSet, HashMap as StdHashMap},
    net::SocketAddr,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf, StackTraceMap},
    programs::{
        PerfEvent, TracePoint,
        perf_event::{PerfEventConfig, PerfEventLinkId, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
};
use introspect_common::{Armed, ConnKey, ConnState, OffCpuState, PeerKey, PyWalk, TracepointOffsets, counter, names, phase};

use crate::tracefs::{Tracefs, TracefsError};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error("loading the eBPF object: {0}")]
    Object(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program { name: &'static str, source: aya::programs::ProgramError },
    #[error("map {name}: {source}")]
    Map { name: &'static str, source: aya::maps::MapError },
    #[error("map {0} missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("program {0} missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("enabling BPF run-time statistics: {0}")]
    Stats(String),
}

/// Programs and the tracepoints each one is attached to. Syscall exits share one program: the
/// enter side already recorded what the syscall was.
const PROCESS_PROGRAMS: &[(&str, &[(&str, &str)])] = &[
    ("task_task_newtask", &[("task", "task_newtask")]),
    ("sched_sched_process_exit", &[("sched", "sched_process_exit")]),
];
const REQUEST_PROGRAMS: &[(&str, &[(&str, &str)])] = &[
    ("tcp_tcp_probe", &[("tcp", "tcp_probe")]),
    ("syscalls_enter_accept", &[("syscalls", "sys_enter_accept"), ("syscalls", "sys_enter_accept4")]),
    ("syscalls_exit_accept", &[("syscalls", "sys_exit_accept"), ("syscalls", "sys_exit_accept4")]),
    ("syscalls_enter_read", &[("syscalls", "sys_enter_read"), ("syscalls", "sys_enter_recvfrom"), ("syscalls", "sys_enter_pread64")]),
    ("syscalls_enter_readv", &[("syscalls", "sys_enter_readv"), ("syscalls", "sys_enter_preadv")]),
    ("syscalls_enter_recvmsg", &[("syscalls", "sys_enter_recvmsg")]),
    ("syscalls_enter_write", &[("syscalls", "sys_enter_write"), ("syscalls", "sys_enter_sendto"), ("syscalls", "sys_enter_pwrite64")]),
    ("syscalls_enter_writev", &[("syscalls", "sys_enter_writev"), ("syscalls", "sys_enter_pwritev")]),
    ("syscalls_enter_sendmsg", &[("syscalls", "sys_enter_sendmsg")]),
    ("syscalls_enter_sendfile", &[("syscalls", "sys_enter_sendfile64")]),
    // Not epoll_wait: load generators and event loops call it constantly, and a serving thread's
    // epoll wait cannot name what it waits for anyway (it would be `other` either way).
    (
        "syscalls_enter_blocking",
        &[
            ("syscalls", "sys_enter_futex"),
            ("syscalls", "sys_enter_nanosleep"),
            ("syscalls", "sys_enter_clock_nanosleep"),
            ("syscalls", "sys_enter_poll"),
            ("syscalls", "sys_enter_ppoll"),
            ("syscalls", "sys_enter_select"),
            ("syscalls", "sys_enter_pselect6"),
            ("syscalls", "sys_enter_fsync"),
            ("syscalls", "sys_enter_fdatasync"),
            ("syscalls", "sys_enter_connect"),
            ("syscalls", "sys_enter_openat"),
        ],
    ),
    (
        "syscalls_exit",
        &[
            ("syscalls", "sys_exit_read"),
            ("syscalls", "sys_exit_recvfrom"),
            ("syscalls", "sys_exit_pread64"),
            ("syscalls", "sys_exit_readv"),
            ("syscalls", "sys_exit_preadv"),
            ("syscalls", "sys_exit_recvmsg"),
            ("syscalls", "sys_exit_write"),
            ("syscalls", "sys_exit_sendto"),
            ("syscalls", "sys_exit_pwrite64"),
            ("syscalls", "sys_exit_writev"),
            ("syscalls", "sys_exit_pwritev"),
            ("syscalls", "sys_exit_sendmsg"),
            ("syscalls", "sys_exit_sendfile64"),
            ("syscalls", "sys_exit_futex"),
            ("syscalls", "sys_exit_nanosleep"),
            ("syscalls", "sys_exit_clock_nanosleep"),
            ("syscalls", "sys_exit_poll"),
            ("syscalls", "sys_exit_ppoll"),
            ("syscalls", "sys_exit_select"),
            ("syscalls", "sys_exit_pselect6"),
            ("syscalls", "sys_exit_fsync"),
            ("syscalls", "sys_exit_fdatasync"),
            ("syscalls", "sys_exit_connect"),
            ("syscalls", "sys_exit_openat"),
        ],
    ),
    ("sched_sched_switch", &[("sched", "sched_switch")]),
    ("sched_sched_wakeup", &[("sched", "sched_wakeup")]),
    ("syscalls_enter_close", &[("syscalls", "sys_enter_close")]),
];

/// The syscall argument each enter program reads, checked against this kernel's records.
const SYSCALL_ARGS: &[(&str, &str, usize)] = &[
    ("sys_enter_accept4", "fd", 0),
    ("sys_enter_accept4", "upeer_sockaddr", 1),
    ("sys_enter_read", "fd", 0),
    ("sys_enter_read", "buf", 1),
    ("sys_enter_recvfrom", "ubuf", 1),
    ("sys_enter_readv", "vec", 1),
    ("sys_enter_recvmsg", "msg", 1),
    ("sys_enter_write", "buf", 1),
    ("sys_enter_sendto", "buff", 1),
    ("sys_enter_writev", "vec", 1),
    ("sys_enter_sendmsg", "msg", 1),
    ("sys_enter_sendfile64", "out_fd", 0),
    ("sys_enter_close", "fd", 0),
    ("sys_enter_pread64", "buf", 1),
    ("sys_enter_pwrite64", "buf", 1),
    ("sys_enter_futex", "uaddr", 0),
    ("sys_enter_poll", "ufds", 0),
    ("sys_enter_poll", "nfds", 1),
    ("sys_enter_ppoll", "ufds", 0),
    ("sys_enter_select", "inp", 1),
    ("sys_enter_select", "outp", 2),
    ("sys_enter_pselect6", "inp", 1),
    ("sys_enter_fsync", "fd", 0),
    ("sys_enter_connect", "fd", 0),
];

fn offsets(tracefs: &Tracefs) -> Result<TracepointOffsets, TracefsError> {
    for (tp, field, i) in SYSCALL_ARGS {
        tracefs.expect_field("syscalls", tp, field, 16 + 8 * i, 8)?;
    }
    tracefs.expect_field("syscalls", "sys_exit_read", "ret", 16, 8)?;
    let f = |cat, tp, field| tracefs.field(cat, tp, field).map(|f| f.offset as u16);
    Ok(TracepointOffsets {
        tcp_probe_daddr: f("tcp", "tcp_probe", "daddr")?,
        tcp_probe_sport: f("tcp", "tcp_probe", "sport")?,
        tcp_probe_dport: f("tcp", "tcp_probe", "dport")?,
        tcp_probe_family: f("tcp", "tcp_probe", "family")?,
        tcp_probe_data_len: f("tcp", "tcp_probe", "data_len")?,
        newtask_pid: f("task", "task_newtask", "pid")?,
        newtask_clone_flags: f("task", "task_newtask", "clone_flags")?,
        switch_prev_state: f("sched", "sched_switch", "prev_state")?,
        switch_next_pid: f("sched", "sched_switch", "next_pid")?,
        wakeup_pid: f("sched", "sched_wakeup", "pid")?,
        _pad: [0; 2],
    })
}

pub struct Probes {
    ebpf: Ebpf,
    /// Programs left unattached (`--without`, for overhead diagnosis).
    without: Vec<String>,
    /// Held while the kernel keeps per-program run-time statistics (`--bpf-stats`).
    stats: Option<std::os::fd::OwnedFd>,
    /// Per-thread CPU-clock perf events of armed threads.
    samplers: StdHashMap<u32, PerfEventLinkId>,
    /// A never-firing event on this process, held from the first armed thread on (see `arm`).
    perf_hooks: Option<PerfEventLinkId>,
    /// Threads in `ARMED` (even if arming them failed half-way, so their disarm undoes what was
    /// done), mirrored so `ARMED_ANY` says whether there are any.
    armed: BTreeSet<u32>,
}

const SAMPLER: &str = "sample_oncpu";

/// Slots of the pid-indexed maps: /proc/sys/kernel/pid_max (pids are below it), at least the
/// kernel's default. A pid_max raised after the watch starts yields pids beyond the arrays; the
/// kernel side counts those as map-full losses.
fn pid_slots() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(1 << 22)
        .clamp(32768, 1 << 22)
}

fn peer_key(addr: &SocketAddr) -> PeerKey {
    let v6 = match addr {
        SocketAddr::V4(a) => a.ip().to_ipv6_mapped(),
        SocketAddr::V6(a) => *a.ip(),
    };
    PeerKey { addr: v6.octets(), port: addr.port(), _pad: [0; 6] }
}

impl Probes {
    pub fn load(tracefs: &Tracefs) -> Result<Self, LoadError> {
        let offsets = offsets(tracefs)?;
        // Pid-indexed arrays cover every pid the kernel can hand out now.
        let pids = pid_slots();
        let ebpf = EbpfLoader::new()
            .override_global(names::G_OFFSETS, &offsets, true)
            .map_max_entries(names::TRACKED, pids)
            .map_max_entries(names::THREADS, pids)
            .load(aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/introspect")))?;
        Ok(Self { ebpf, without: Vec::new(), stats: None, samplers: StdHashMap::new(), perf_hooks: None, armed: BTreeSet::new() })
    }

    fn attach(&mut self, table: &[(&'static str, &[(&str, &str)])]) -> Result<(), LoadError> {
        for (name, points) in table {
            if self.without.iter().any(|w| w == name) {
                continue;
            }
            let prog: &mut TracePoint = self
                .ebpf
                .program_mut(name)
                .ok_or(LoadError::MissingProgram(name))?
                .try_into()
                .map_err(|source| LoadError::Program { name, source })?;
            prog.load().map_err(|source| LoadError::Program { name, source })?;
            for (cat, tp) in *points {
                prog.attach(cat, tp).map_err(|source| LoadError::Program { name, source })?;
            }
        }
        Ok(())
    }

    /// Leaves these programs unattached (what they measure is then missing).
    pub fn without(&mut self, programs: &[String]) {
        self.without = programs.to_vec();
    }

    /// Fork and exit tracking: attached before the process tree is scanned, so no child born in
    /// between is missed.
    pub fn attach_process_tracking(&mut self) -> Result<(), LoadError> {
        self.attach(PROCESS_PROGRAMS)
    }

    /// The on-CPU sampling program (attached per thread).
    fn sampler(&mut self) -> Result<&mut PerfEvent, LoadError> {
        self.ebpf
            .program_mut(SAMPLER)
            .ok_or(LoadError::MissingProgram(SAMPLER))?
            .try_into()
            .map_err(|source| LoadError::Program { name: SAMPLER, source })
    }

    pub fn attach_request_tracking(&mut self) -> Result<(), LoadError> {
        self.attach(REQUEST_PROGRAMS)?;
        // Loaded now, attached per thread when a request turns slow.
        let prog = self.sampler()?;
        prog.load().map_err(|source| LoadError::Program { name: SAMPLER, source })?;
        // The first attach pays for aya's one-time probing (~20 ms here): pay it now, on this
        // thread, rather than when the first slow request is being armed.
        // SAFETY: gettid has no preconditions.
        let me = unsafe { libc::gettid() } as u32;
        let link = prog
            .attach(PerfEventConfig::Software(SoftwareEvent::CpuClock), PerfEventScope::OneProcess { pid: me, cpu: None }, SamplePolicy::Period(u64::MAX / 2), false)
            .map_err(|source| LoadError::Program { name: SAMPLER, source })?;
        prog.detach(link).map_err(|source| LoadError::Program { name: SAMPLER, source })
    }

    /// Starts capturing a thread's stacks: on-CPU samples at `hz` and a stack each time it leaves
    /// the CPU.
    pub fn arm(&mut self, tid: u32, armed: Armed, walk: PyWalk, hz: u64) -> Result<(), LoadError> {
        self.hash::<u32, PyWalk>(names::PY_WALK)?
            .insert(armed.tgid, walk, 0)
            .map_err(|source| LoadError::Map { name: names::PY_WALK, source })?;
        self.hash::<u32, Armed>(names::ARMED)?
            .insert(tid, armed, 0)
            .map_err(|source| LoadError::Map { name: names::ARMED, source })?;
        let first = self.armed.is_empty();
        self.armed.insert(tid);
        if first {
            self.array(names::ARMED_ANY)?.set(0, 1, 0).map_err(|source| LoadError::Map { name: names::ARMED_ANY, source })?;
        }
        if hz > 0 && !self.samplers.contains_key(&tid) {
            if self.perf_hooks.is_none() {
                // While no per-thread event exists, the kernel's context-switch hooks for them
                // are off; the first new one turns them on and waits for an RCU grace period, and
                // they are turned off again a second after the last one closes. With slow
                // requests coming every second or so, every other alert waited those 4-20 ms.
                // One dummy event held for the watch keeps the hooks on (a few ns per context
                // switch for threads without events).
                let link = self
                    .sampler()?
                    .attach(PerfEventConfig::Software(SoftwareEvent::Dummy), PerfEventScope::CallingProcess { cpu: None }, SamplePolicy::Period(u64::MAX >> 1), false)
                    .map_err(|source| LoadError::Program { name: SAMPLER, source })?;
                self.perf_hooks = Some(link);
            }
            let prog = self.sampler()?;
            // A per-thread event counts that thread's CPU time only: it fires only while it runs.
            let link = prog
                .attach(
                    PerfEventConfig::Software(SoftwareEvent::CpuClock),
                    PerfEventScope::OneProcess { pid: tid, cpu: None },
                    // A fixed period, so every sample stands for exactly 1/hz s of CPU.
                    SamplePolicy::Period(1_000_000_000 / hz),
                    false,
                )
                .map_err(|source| LoadError::Program { name: SAMPLER, source })?;
            self.samplers.insert(tid, link);
        }
        Ok(())
    }

    /// Whether `tid` is armed (until its `disarm`).
    pub fn is_armed(&self, tid: u32) -> bool {
        self.armed.contains(&tid)
    }

    /// Whether any thread is armed.
    pub fn any_armed(&self) -> bool {
        !self.armed.is_empty()
    }

    /// Stops capturing a thread's stacks.
    pub fn disarm(&mut self, tid: u32) {
        if let Ok(mut armed) = self.hash::<u32, Armed>(names::ARMED) {
            let _ = armed.remove(&tid);
        }
        if self.armed.remove(&tid)
            && self.armed.is_empty()
            && let Ok(mut any) = self.array(names::ARMED_ANY)
        {
            let _ = any.set(0, 0, 0);
        }
        if let Some(link) = self.samplers.remove(&tid)
            && let Ok(prog) = self.sampler()
        {
            let _ = prog.detach(link);
        }
    }

    /// The addresses of a captured stack, innermost first.
    pub fn stack(&self, id: i32) -> Vec<u64> {
        if id < 0 {
            return Vec::new();
        }
        let Some(map) = self.ebpf.map(names::STACKS) else { return Vec::new() };
        let Ok(map) = StackTraceMap::<&MapData>::try_from(map) else { return Vec::new() };
        map.get(&(id as u32), 0).map(|st| st.frames().iter().map(|f| f.ip).collect()).unwrap_or_default()
    }

    fn hash<K: aya::Pod, V: aya::Pod>(&mut self, name: &'static str) -> Result<HashMap<&mut MapData, K, V>, LoadError> {
        let map = self.ebpf.map_mut(name).ok_or(LoadError::MissingMap(name))?;
        HashMap::try_from(map).map_err(|source| LoadError::Map { name, source })
    }

    fn array(&mut self, name: &'static str) -> Result<Array<&mut MapData, u8>, LoadError> {
        let map = self.ebpf.map_mut(name).ok_or(LoadError::MissingMap(name))?;
        Array::try_from(map).map_err(|source| LoadError::Map { name, source })
    }

    pub fn track(&mut self, pids: &BTreeSet<u32>) -> Result<(), LoadError> {
        let mut tracked = self.array(names::TRACKED)?;
        for &pid in pids {
            tracked.set(pid, 1, 0).map_err(|source| LoadError::Map { name: names::TRACKED, source })?;
        }
        Ok(())
    }

    pub fn watch_ports(&mut self, ports: &BTreeSet<u16>) -> Result<(), LoadError> {
        let mut map = self.array(names::PORTS)?;
        for &port in ports {
            map.set(u32::from(port), 1, 0).map_err(|source| LoadError::Map { name: names::PORTS, source })?;
        }
        Ok(())
    }

    /// Connections that were open before the watch: their next request is seen like any other.
    pub fn seed_conns(&mut self, conns: &[(u32, i32, SocketAddr)]) -> Result<(), LoadError> {
        let map = self.ebpf.map_mut(names::CONNS).ok_or(LoadError::MissingMap(names::CONNS))?;
        // aya reads LRU hash maps through its HashMap type.
        let mut map: HashMap<&mut MapData, ConnKey, ConnState> =
            HashMap::try_from(map).map_err(|source| LoadError::Map { name: names::CONNS, source })?;
        for (tgid, fd, peer) in conns {
            let state = ConnState { peer: peer_key(peer), phase: phase::IDLE, has_peer: 1, _pad: [0; 6] };
            map.insert(ConnKey { tgid: *tgid, fd: *fd }, state, 0)
                .map_err(|source| LoadError::Map { name: names::CONNS, source })?;
        }
        Ok(())
    }

    /// The event ring buffer, taken out of the object (it is read on its own from then on).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, LoadError> {
        let map = self.ebpf.take_map(names::EVENTS).ok_or(LoadError::MissingMap(names::EVENTS))?;
        RingBuf::try_from(map).map_err(|source| LoadError::Map { name: names::EVENTS, source })
    }

    /// A serving thread's wait that is still going on (for `inflight` breakdowns).
    pub fn offcpu(&self, tid: u32) -> Option<OffCpuState> {
        let map = self.ebpf.map(names::OFFCPU)?;
        let map: HashMap<&MapData, u32, OffCpuState> = HashMap::try_from(map).ok()?;
        // Entries are reused in place; out_ts is 0 while the thread is on the CPU.
        map.get(&tid, 0).ok().filter(|st| st.out_ts != 0)
    }

    /// Asks the kernel to account each program's run time (costs two clock reads per run).
    pub fn enable_stats(&mut self) -> Result<(), LoadError> {
        let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| LoadError::Stats(e.to_string()))?;
        self.stats = Some(fd);
        Ok(())
    }

    /// Run count and total run time of each program, while stats are enabled.
    pub fn program_stats(&self) -> Vec<(String, u64, u64)> {
        self.ebpf
            .programs()
            .filter_map(|(name, p)| {
                let info = p.info().ok()?;
                Some((name.to_string(), info.run_count(), info.run_time().as_nanos() as u64))
            })
            .collect()
    }

    /// Kernel-side losses, summed over CPUs: (ring buffer full, map full, user read failed).
    pub fn losses(&self) -> Result<KernelLosses, LoadError> {
        let map = self.ebpf.map(names::COUNTERS).ok_or(LoadError::MissingMap(names::COUNTERS))?;
        let arr: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(|source| LoadError::Map { name: names::COUNTERS, source })?;
        let sum = |i: u32| -> Result<u64, LoadError> {
            Ok(arr.get(&i, 0).map_err(|source| LoadError::Map { name: names::COUNTERS, source })?.iter().sum())
        };
        Ok(KernelLosses {
            ringbuf_full: sum(counter::RINGBUF_FULL)?,
            map_full: sum(counter::MAP_FULL)?,
            read_failed: sum(counter::READ_FAILED)?,
        })
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelLosses {
    pub ringbuf_full: u64,
    pub map_full: u64,
    pub read_failed: u64,
}
