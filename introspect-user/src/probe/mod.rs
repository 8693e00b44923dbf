//! Probes: the only module that touches aya. Loads the embedded programs with this kernel's
//! tracepoint offsets, attaches them from the program table ([`programs`]), seeds the maps, and
//! hands out the ring buffer and counters.
pub mod programs;
pub mod tracefs;

use std::{
    collections::{BTreeSet, HashMap as StdHashMap},
    io,
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
use introspect_common::{
    Armed, ConnKey, ConnState, DbBackend, OffCpuState, PeerKey, PyWalk, Settings, TracepointOffsets, UnixPath, WIRE_MAX, counter, names, phase, role,
    thread_bit::DB_BACKEND as DB_BACKEND_BIT, wire,
};

use crate::proc::postgres::PgServer;
use programs::Program;
use tracefs::{Tracefs, TracefsError};

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
    #[error("listing the online CPUs: {0}")]
    Cpus(std::io::Error),
}

/// This kernel's tracepoint field offsets, and the optional programs that cannot run here
/// (a tracepoint or one of its fields missing) with what that loses.
/// Optional programs left out, and why.
type Unusable = Vec<(&'static str, String)>;

fn offsets(tracefs: &Tracefs) -> Result<(TracepointOffsets, Unusable), TracefsError> {
    programs::check_syscall_records(tracefs)?;
    let f = |cat, tp, field| tracefs.field(cat, tp, field).map(|f| f.offset as u16);
    let mut unusable = Vec::new();
    // The fields of an optional tracepoint: all there, or the program is left out.
    let mut opt = |program: &'static str, cat: &str, tp: &str, fields: &[&str]| -> Vec<u16> {
        let found: Result<Vec<u16>, TracefsError> = fields.iter().map(|field| tracefs.field(cat, tp, field).map(|f| f.offset as u16)).collect();
        match found {
            Ok(v) => v,
            Err(e) => {
                unusable.push((program, e.to_string()));
                vec![0; fields.len()]
            }
        }
    };
    let tcp = opt("tcp_tcp_probe", "tcp", "tcp_probe", &["daddr", "sport", "dport", "family", "data_len"]);
    let sig = opt("signal_signal_generate", "signal", "signal_generate", &["pid", "sig", "code", "group", "result"]);
    let deliver = opt("signal_signal_deliver", "signal", "signal_deliver", &["sig"]);
    let oom = opt("oom_mark_victim", "oom", "mark_victim", &["pid", "total_vm", "anon_rss", "file_rss", "shmem_rss"]);
    let state = opt(
        "sock_inet_sock_set_state",
        "sock",
        "inet_sock_set_state",
        &["oldstate", "newstate", "sport", "dport", "family", "protocol", "daddr", "daddr_v6"],
    );
    let offsets = TracepointOffsets {
        tcp_probe_daddr: tcp[0],
        tcp_probe_sport: tcp[1],
        tcp_probe_dport: tcp[2],
        tcp_probe_family: tcp[3],
        tcp_probe_data_len: tcp[4],
        newtask_pid: f("task", "task_newtask", "pid")?,
        newtask_clone_flags: f("task", "task_newtask", "clone_flags")?,
        switch_prev_state: f("sched", "sched_switch", "prev_state")?,
        switch_next_pid: f("sched", "sched_switch", "next_pid")?,
        wakeup_pid: f("sched", "sched_waking", "pid")?,
        signal_pid: sig[0],
        signal_sig: sig[1],
        signal_code: sig[2],
        signal_group: sig[3],
        signal_result: sig[4],
        deliver_sig: deliver[0],
        oom_pid: oom[0],
        oom_total_vm: oom[1],
        oom_anon_rss: oom[2],
        oom_file_rss: oom[3],
        oom_shmem_rss: oom[4],
        set_state_oldstate: state[0],
        set_state_newstate: state[1],
        set_state_sport: state[2],
        set_state_dport: state[3],
        set_state_family: state[4],
        set_state_protocol: state[5],
        set_state_daddr: state[6],
        set_state_daddr_v6: state[7],
        _pad: [0; 3],
    };
    Ok((offsets, unusable))
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
    /// Optional programs this kernel's tracepoints cannot serve, and why.
    unusable: Unusable,
    /// Threads in `PY_THREADS`, by process.
    py_threads: StdHashMap<u32, BTreeSet<u32>>,
}

const SAMPLER: &str = "sample_oncpu";
const ALL_SAMPLER: &str = "sample_all";

/// Slots of the pid-indexed maps: /proc/sys/kernel/pid_max (pids are below it), at least the
/// kernel's default. A pid_max raised after the watch starts yields pids beyond the arrays; the
/// kernel side counts those as map-full losses.
fn pid_slots() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/pid_max").ok().and_then(|s| s.trim().parse::<u32>().ok()).unwrap_or(1 << 22).clamp(32768, 1 << 22)
}

fn idle() -> ConnState {
    ConnState { peer: PeerKey::default(), phase: phase::IDLE, has_peer: 0, role: role::SERVED, wire: wire::UNKNOWN, linked: 0, _pad: [0; 3] }
}

fn peer_key(addr: &SocketAddr) -> PeerKey {
    let v6 = match addr {
        SocketAddr::V4(a) => a.ip().to_ipv6_mapped(),
        SocketAddr::V6(a) => *a.ip(),
    };
    PeerKey { addr: v6.octets(), port: addr.port(), _pad: [0; 6] }
}

impl Probes {
    /// `outbound_heads`: copy the heads of requests on outbound connections (a parser for them
    /// is loaded); `sql_capture`: bytes of each write on a database connection copied (0: none).
    /// `profile_all`: the all-traffic profiler's kernel side samples every serving thread's waits
    /// (its on-CPU side is attached by [`Probes::profile_all`]).
    pub fn load(tracefs: &Tracefs, outbound_heads: bool, sql_capture: u16, profile_all: bool) -> Result<Self, LoadError> {
        let (offsets, unusable) = offsets(tracefs)?;
        let settings = Settings {
            outbound_heads: outbound_heads.into(),
            profile_all: profile_all.into(),
            sql_capture: sql_capture.min(WIRE_MAX as u16),
            _pad2: [0; 4],
        };
        // Pid-indexed arrays cover every pid the kernel can hand out now.
        let pids = pid_slots();
        let ebpf = EbpfLoader::new()
            .override_global(names::G_OFFSETS, &offsets, true)
            .override_global(names::G_SETTINGS, &settings, true)
            .map_max_entries(names::TRACKED, pids)
            .map_max_entries(names::THREADS, pids)
            .load(aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/introspect")))?;
        Ok(Self {
            ebpf,
            without: Vec::new(),
            stats: None,
            samplers: StdHashMap::new(),
            perf_hooks: None,
            armed: BTreeSet::new(),
            unusable,
            py_threads: StdHashMap::new(),
        })
    }

    /// Loads and attaches `table`; returns what is lost for each optional point that failed.
    fn attach(&mut self, table: Vec<Program>) -> Result<Vec<String>, LoadError> {
        let mut lost = Vec::new();
        let lost_points = &mut lost;
        for program in table {
            let name = program.name;
            if self.without.iter().any(|w| w == name) {
                continue;
            }
            if let Some((_, why)) = self.unusable.iter().find(|(n, _)| *n == name) {
                let lost = program.points.iter().find_map(|p| p.optional.clone()).unwrap_or_default();
                lost_points.push(format!("{name} left out ({why}): {lost}"));
                continue;
            }
            let prog: &mut TracePoint = self
                .ebpf
                .program_mut(name)
                .ok_or(LoadError::MissingProgram(name))?
                .try_into()
                .map_err(|source| LoadError::Program { name, source })?;
            prog.load().map_err(|source| LoadError::Program { name, source })?;
            for point in program.points {
                match (prog.attach(point.category, &point.name), point.optional) {
                    (Ok(_), _) => {}
                    (Err(e), Some(what)) => lost_points.push(format!("cannot attach {}:{} ({e}): {what}", point.category, point.name)),
                    (Err(source), None) => return Err(LoadError::Program { name, source }),
                }
            }
        }
        Ok(lost)
    }

    /// Leaves these programs unattached (what they measure is then missing).
    pub fn without(&mut self, programs: &[String]) {
        self.without = programs.to_vec();
    }

    /// Fork and exit tracking: attached before the process tree is scanned, so no child born in
    /// between is missed.
    pub fn attach_process_tracking(&mut self) -> Result<(), LoadError> {
        self.attach(programs::process()).map(drop)
    }

    /// The on-CPU sampling program (attached per thread).
    fn sampler(&mut self) -> Result<&mut PerfEvent, LoadError> {
        self.ebpf
            .program_mut(SAMPLER)
            .ok_or(LoadError::MissingProgram(SAMPLER))?
            .try_into()
            .map_err(|source| LoadError::Program { name: SAMPLER, source })
    }

    /// Attaches everything that measures requests; returns what is lost for each optional
    /// attach point this kernel lacks.
    pub fn attach_request_tracking(&mut self) -> Result<Vec<String>, LoadError> {
        let lost = self.attach(programs::request())?;
        // Loaded now, attached per thread when a request turns slow.
        let prog = self.sampler()?;
        prog.load().map_err(|source| LoadError::Program { name: SAMPLER, source })?;
        // The first attach pays for aya's one-time probing (~20 ms here): pay it now, on this
        // thread, rather than when the first slow request is being armed.
        // SAFETY: gettid has no preconditions.
        let me = unsafe { libc::gettid() } as u32;
        let link = prog
            .attach(
                PerfEventConfig::Software(SoftwareEvent::CpuClock),
                PerfEventScope::OneProcess { pid: me, cpu: None },
                SamplePolicy::Period(u64::MAX / 2),
                false,
            )
            .map_err(|source| LoadError::Program { name: SAMPLER, source })?;
        prog.detach(link).map_err(|source| LoadError::Program { name: SAMPLER, source })?;
        Ok(lost)
    }

    /// Starts capturing a thread's stacks: on-CPU samples at `hz` and a stack each time it leaves
    /// the CPU.
    pub fn arm(&mut self, tid: u32, armed: Armed, walk: PyWalk, hz: u64) -> Result<(), LoadError> {
        self.set_walk(armed.tgid, walk)?;
        self.hash::<u32, Armed>(names::ARMED)?.insert(tid, armed, 0).map_err(|source| LoadError::Map { name: names::ARMED, source })?;
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
                    .attach(
                        PerfEventConfig::Software(SoftwareEvent::Dummy),
                        PerfEventScope::CallingProcess { cpu: None },
                        SamplePolicy::Period(u64::MAX >> 1),
                        false,
                    )
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

    /// The all-traffic profiler's on-CPU side: a CPU-clock event on every online CPU at `hz`,
    /// whose program keeps the samples that land on a watched process's thread.
    pub fn profile_all(&mut self, hz: u64) -> Result<(), LoadError> {
        let cpus = aya::util::online_cpus().map_err(|(_, e)| LoadError::Cpus(e))?;
        let prog: &mut PerfEvent = self
            .ebpf
            .program_mut(ALL_SAMPLER)
            .ok_or(LoadError::MissingProgram(ALL_SAMPLER))?
            .try_into()
            .map_err(|source| LoadError::Program { name: ALL_SAMPLER, source })?;
        prog.load().map_err(|source| LoadError::Program { name: ALL_SAMPLER, source })?;
        for cpu in cpus {
            // Held by the program until the watch ends (the ids are not needed).
            prog.attach(
                PerfEventConfig::Software(SoftwareEvent::CpuClock),
                PerfEventScope::AllProcessesOneCpu { cpu },
                // A fixed period: every sample stands for exactly 1/hz s of CPU.
                SamplePolicy::Period(1_000_000_000 / hz.max(1)),
                false,
            )
            .map_err(|source| LoadError::Program { name: ALL_SAMPLER, source })?;
        }
        Ok(())
    }

    /// Lets the all-traffic profiler walk `tid`'s Python frames.
    pub fn py_thread(&mut self, tid: u32, armed: Armed, walk: PyWalk) -> Result<(), LoadError> {
        self.set_walk(armed.tgid, walk)?;
        self.hash::<u32, Armed>(names::PY_THREADS)?.insert(tid, armed, 0).map_err(|source| LoadError::Map { name: names::PY_THREADS, source })?;
        self.py_threads.entry(armed.tgid).or_default().insert(tid);
        Ok(())
    }

    /// How the kernel walks process `tgid`'s Python frames.
    fn set_walk(&mut self, tgid: u32, walk: PyWalk) -> Result<(), LoadError> {
        self.hash::<u32, PyWalk>(names::PY_WALK)?.insert(tgid, walk, 0).map_err(|source| LoadError::Map { name: names::PY_WALK, source })
    }

    /// Process `pid` exited: its threads' entries go (their tids will be reused).
    pub fn forget_py_threads(&mut self, pid: u32) -> BTreeSet<u32> {
        let tids = self.py_threads.remove(&pid).unwrap_or_default();
        if let Ok(mut map) = self.hash::<u32, Armed>(names::PY_THREADS) {
            for tid in &tids {
                let _ = map.remove(tid);
            }
        }
        tids
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

    /// Unix listeners whose backlog arrivals are taken from their clients' connects; returns
    /// each one's id (what the kernel reports it by) with its path. Paths too long for a
    /// `sun_path`, or unnamed, are left out.
    pub fn watch_unix(&mut self, paths: &BTreeSet<String>) -> Result<StdHashMap<u32, String>, LoadError> {
        let mut map: HashMap<&mut MapData, UnixPath, u32> = self.hash(names::UNIX_LISTENERS)?;
        let mut ids = StdHashMap::new();
        for (path, key) in paths.iter().filter_map(|p| Some((p, UnixPath::from_listing(p)?))) {
            let id = ids.len() as u32 + 1;
            map.insert(key, id, 0).map_err(|source| LoadError::Map { name: names::UNIX_LISTENERS, source })?;
            ids.insert(id, path.clone());
        }
        Ok(ids)
    }

    /// PostgreSQL servers whose backends are followed: the servers first (each backend they
    /// fork from now on is marked by the kernel), then the children they already have.
    pub fn watch_postgres(&mut self, servers: &[PgServer]) -> Result<(), LoadError> {
        let mut map: HashMap<&mut MapData, u32, u64> = self.hash(names::PG_SERVERS)?;
        for s in servers {
            map.insert(s.pid, s.wait_addr, 0).map_err(|source| LoadError::Map { name: names::PG_SERVERS, source })?;
        }
        let mut backends: HashMap<&mut MapData, u32, DbBackend> = self.hash(names::DB_BACKENDS)?;
        for s in servers {
            for &pid in &s.children {
                let st = DbBackend { wait_addr: s.wait_addr, ..DbBackend::default() };
                backends.insert(pid, st, 0).map_err(|source| LoadError::Map { name: names::DB_BACKENDS, source })?;
            }
        }
        let mut threads = self.array(names::THREADS)?;
        for pid in servers.iter().flat_map(|s| &s.children) {
            let bits = threads.get(pid, 0).unwrap_or(0);
            threads.set(*pid, bits | DB_BACKEND_BIT, 0).map_err(|source| LoadError::Map { name: names::THREADS, source })?;
        }
        Ok(())
    }

    /// Connections that were open before the watch: accepted ones (`served`, whose next request
    /// is seen like any other) and the processes' own (`outbound`).
    pub fn seed_conns(&mut self, served: &[(u32, i32, SocketAddr)], outbound: &[(u32, i32)]) -> Result<(), LoadError> {
        let map = self.ebpf.map_mut(names::CONNS).ok_or(LoadError::MissingMap(names::CONNS))?;
        // aya reads LRU hash maps through its HashMap type.
        let mut map: HashMap<&mut MapData, ConnKey, ConnState> =
            HashMap::try_from(map).map_err(|source| LoadError::Map { name: names::CONNS, source })?;
        let served =
            served.iter().map(|(tgid, fd, peer)| (*tgid, *fd, ConnState { peer: peer_key(peer), has_peer: 1, role: role::SERVED, ..idle() }));
        let outbound = outbound.iter().map(|(tgid, fd)| (*tgid, *fd, ConnState { role: role::OUTBOUND, ..idle() }));
        for (tgid, fd, state) in served.chain(outbound) {
            map.insert(ConnKey { tgid, fd }, state, 0).map_err(|source| LoadError::Map { name: names::CONNS, source })?;
        }
        Ok(())
    }

    /// The event ring buffer, taken out of the object (it is read on its own from then on).
    pub fn take_events(&mut self) -> Result<EventRing, LoadError> {
        let map = self.ebpf.take_map(names::EVENTS).ok_or(LoadError::MissingMap(names::EVENTS))?;
        RingBuf::try_from(map).map(EventRing).map_err(|source| LoadError::Map { name: names::EVENTS, source })
    }

    /// A serving thread's wait that is still going on (for `inflight` breakdowns).
    pub fn offcpu(&self, tid: u32) -> Option<OffCpuState> {
        let map = self.ebpf.map(names::OFFCPU)?;
        let map: HashMap<&MapData, u32, OffCpuState> = HashMap::try_from(map).ok()?;
        // Entries are reused in place; out_ts is 0 while the thread is on the CPU.
        map.get(&tid, 0).ok().filter(|st| st.out_ts != 0)
    }

    /// The phase of a tracked connection (`introspect_common::phase`), if the kernel has it.
    pub fn conn_phase(&self, pid: u32, fd: i32) -> Option<u8> {
        let map = self.ebpf.map(names::CONNS)?;
        let map: HashMap<&MapData, ConnKey, ConnState> = HashMap::try_from(map).ok()?;
        map.get(&ConnKey { tgid: pid, fd }, 0).ok().map(|c| c.phase)
    }

    /// When process `pid` last touched a file by fd (gunicorn's worker heartbeat), if it did.
    pub fn heartbeat(&self, pid: u32) -> Option<u64> {
        let map = self.ebpf.map(names::HEARTBEATS)?;
        let map: HashMap<&MapData, u32, u64> = HashMap::try_from(map).ok()?;
        map.get(&pid, 0).ok()
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
        let arr: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map).map_err(|source| LoadError::Map { name: names::COUNTERS, source })?;
        let sum = |i: u32| -> Result<u64, LoadError> {
            Ok(arr.get(&i, 0).map_err(|source| LoadError::Map { name: names::COUNTERS, source })?.iter().sum())
        };
        Ok(KernelLosses { ringbuf_full: sum(counter::RINGBUF_FULL)?, map_full: sum(counter::MAP_FULL)?, read_failed: sum(counter::READ_FAILED)? })
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelLosses {
    pub ringbuf_full: u64,
    pub map_full: u64,
    pub read_failed: u64,
}

/// The kernel's event ring buffer.
pub struct EventRing(RingBuf<MapData>);

impl EventRing {
    /// Every record in the ring, in order: `read` turns it into a value while the record is
    /// held, `then` processes the value after its space is handed back to the kernel. Returns
    /// how many records there were.
    pub fn drain<T>(&mut self, mut read: impl FnMut(&[u8]) -> T, mut then: impl FnMut(T) -> io::Result<()>) -> io::Result<u64> {
        let mut n = 0;
        while let Some(item) = self.0.next() {
            n += 1;
            let value = read(&item);
            drop(item);
            then(value)?;
        }
        Ok(n)
    }
}
