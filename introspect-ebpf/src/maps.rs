//! Maps and load-time globals shared by the program families.
use aya_ebpf::{
    Global,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, StackTrace},
};
use introspect_common::{Armed, ConnKey, ConnState, OffCpuState, PeerKey, PyWalk, Settings, SysCtx, TracepointOffsets, UnixPath, counter};

/// All events, in one ring buffer so their order is kept. 8 MiB holds over 100 ms of a 50k
/// requests/s burst (the bench's) while userspace drains it every 10 ms.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Processes being watched: 1 at index tgid. Userspace seeds it; fork and exit keep it current.
///
/// An array indexed by pid (sized to pid_max at load) rather than a hash: every hooked syscall
/// and context switch on the host asks "is this one of ours?", and an array lookup is a bounds
/// check and a load the verifier inlines, where a hash lookup is a call, a hash and a bucket
/// walk. The same reason makes [`THREADS`] an array.
#[map(name = "TRACKED")]
pub static TRACKED: Array<u8> = Array::with_max_entries(1, 0);

/// Per-thread state bits (see [`thread`]), at index tid. Every write to a thread's byte happens
/// in that thread's own context or while it is being switched in (when it cannot run anywhere
/// else), so plain read-modify-write is safe.
#[map(name = "THREADS")]
pub static THREADS: Array<u8> = Array::with_max_entries(1, 0);

/// Bits of a [`THREADS`] byte.
pub mod thread {
    /// Serving a request: from the first read of a request until its connection closes (or the
    /// thread's next request). Only these threads are followed through the scheduler.
    pub const SERVING: u8 = 1 << 0;
    /// Off the CPU while serving: its `OFFCPU` entry is current.
    pub const OFF_CPU: u8 = 1 << 1;
    /// Inside a hooked syscall: its `PENDING` entry is current.
    pub const PENDING: u8 = 1 << 2;
    /// A PostgreSQL backend: followed through the scheduler (its `DB_BACKENDS` entry).
    pub const DB_BACKEND: u8 = introspect_common::thread_bit::DB_BACKEND;
    /// Left the CPU inside its current `PENDING` syscall (all-traffic profiling): its stack is
    /// taken at that syscall's exit, if the wait is sampled.
    pub const WAITED: u8 = 1 << 4;
}

/// Connections of tracked processes: accepted ones (served) and the ones they connected
/// themselves (outbound: databases, caches, APIs). LRU, so fds whose close was never seen
/// (close_range, a process killed) age out instead of filling the map.
#[map(name = "CONNS")]
pub static CONNS: LruHashMap<ConnKey, ConnState> = LruHashMap::with_max_entries(65536, 0);

/// Local TCP ports of the watched servers (1 at index port), for tcp_probe (which runs in softirq
/// context, where the current task says nothing about whose socket it is).
/// Watched Unix listeners by path, each with the id userspace gave it: `connect` to one of them
/// by any process is the arrival of a connection in its backlog (there is no segment to time).
#[map(name = "UNIX_LISTENERS")]
pub static UNIX_LISTENERS: HashMap<UnixPath, u32> = HashMap::with_max_entries(64, 0);

/// Scratch space for a `UNIX_LISTENERS` key (too big for the program's stack with the rest).
#[map(name = "UNIX_KEY")]
pub static UNIX_KEY: PerCpuArray<UnixPath> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "PORTS")]
pub static PORTS: Array<u8> = Array::with_max_entries(65536, 0);

/// When the first bytes of the next request reached each watched connection, keyed by peer; 0
/// once a read consumed them. Entries are reused in place (an update is far cheaper than a delete
/// and an insert); the LRU ages out peers that are gone.
#[map(name = "ARRIVALS")]
pub static ARRIVALS: LruHashMap<PeerKey, u64> = LruHashMap::with_max_entries(16384, 0);

/// A syscall of interest between its enter and exit, by thread id; current while the thread's
/// `thread::PENDING` bit is set. A thread's entry is overwritten in place by its next syscall and
/// removed when the thread exits, so the hot path never inserts or deletes.
#[map(name = "PENDING")]
pub static PENDING: HashMap<u32, Pending> = HashMap::with_max_entries(16384, 0);

/// Serving threads that are off the CPU: since when, why, and since when runnable. Current while
/// the thread's `thread::OFF_CPU` bit is set (and `out_ts` is non-zero, for userspace); reused in
/// place like `PENDING`.
#[map(name = "OFFCPU")]
pub static OFFCPU: HashMap<u32, OffCpuState> = HashMap::with_max_entries(16384, 0);

/// How to walk each Python process's frames (by tgid), set by userspace when it first arms one
/// of its threads.
#[map(name = "PY_WALK")]
pub static PY_WALK: HashMap<u32, PyWalk> = HashMap::with_max_entries(4096, 0);

/// Every Python thread of the watched processes that userspace has found the thread state of
/// (by tid), for the all-traffic profiler's Python walks. A thread's entry goes as it exits
/// (`sched_process_exit`), and userspace removes those of exited processes too.
#[map(name = "PY_THREADS")]
pub static PY_THREADS: HashMap<u32, Armed> = HashMap::with_max_entries(16384, 0);

/// Per CPU: switch-outs seen by the all-traffic profiler since the last one it sampled, blocked
/// (index 0) and preempted (1).
#[map(name = "WAIT_TICKS")]
pub static WAIT_TICKS: PerCpuArray<u32> = PerCpuArray::with_max_entries(2, 0);

/// Threads serving a slow request, whose stacks are captured (by tid).
#[map(name = "ARMED")]
pub static ARMED: HashMap<u32, Armed> = HashMap::with_max_entries(4096, 0);

/// 1 while any thread is armed: spares every switch-out of a serving thread the `ARMED` hash
/// lookup when no request is slow (the usual case).
#[map(name = "ARMED_ANY")]
pub static ARMED_ANY: Array<u8> = Array::with_max_entries(1, 0);

/// When each watched process last touched a file by fd (futimens: gunicorn's worker heartbeat),
/// by tgid. Read by userspace for the processes with a slow request only.
#[map(name = "HEARTBEATS")]
pub static HEARTBEATS: HashMap<u32, u64> = HashMap::with_max_entries(8192, 0);

/// Kernel and user stacks of captured samples (ids travel in stack events).
#[map(name = "STACKS")]
pub static STACKS: StackTrace = StackTrace::with_max_entries(16384, 0);

/// Everything the kernel side had to give up on, per CPU (see `introspect_common::counter`).
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[unsafe(no_mangle)]
pub static OFFSETS: Global<TracepointOffsets> = Global::new(TracepointOffsets {
    tcp_probe_daddr: 0,
    tcp_probe_sport: 0,
    tcp_probe_dport: 0,
    tcp_probe_family: 0,
    tcp_probe_data_len: 0,
    newtask_pid: 0,
    newtask_clone_flags: 0,
    switch_prev_state: 0,
    switch_next_pid: 0,
    wakeup_pid: 0,
    signal_pid: 0,
    signal_sig: 0,
    signal_code: 0,
    signal_group: 0,
    signal_result: 0,
    deliver_sig: 0,
    oom_pid: 0,
    oom_total_vm: 0,
    oom_anon_rss: 0,
    oom_file_rss: 0,
    oom_shmem_rss: 0,
    set_state_oldstate: 0,
    set_state_newstate: 0,
    set_state_sport: 0,
    set_state_dport: 0,
    set_state_family: 0,
    set_state_protocol: 0,
    set_state_daddr: 0,
    set_state_daddr_v6: 0,
    _pad: [0; 3],
});

#[unsafe(no_mangle)]
pub static SETTINGS: Global<Settings> = Global::new(Settings { outbound_heads: 0, profile_all: 0, sql_capture: 0, _pad2: [0; 4] });

/// How a pending syscall names its buffer.
pub mod buf_kind {
    /// `buf` is the data.
    pub const PLAIN: u8 = 0;
    /// `buf` is a `struct iovec *`.
    pub const IOV: u8 = 1;
    /// `buf` is a `struct msghdr *`.
    pub const MSG: u8 = 2;
    /// No user buffer (sendfile).
    pub const NONE: u8 = 3;
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    /// `introspect_common::kind::{ACCEPT, READ, WRITE}` on a connection, `SOCKET`, `OPEN` or
    /// `DUP` for a syscall that makes an fd, or `SYSCALL` for any other hooked syscall of a
    /// serving thread.
    pub kind: u16,
    pub buf_kind: u8,
    /// 1 when this syscall starts a new phase of its connection.
    pub first: u8,
    /// READ/WRITE: the connection's `role`.
    pub role: u8,
    /// 1: also report it as a syscall of the serving thread (an fd-making syscall that is a wait
    /// of its own, openat).
    pub also_syscall: u8,
    pub _pad: [u8; 2],
    /// The fd (SOCKET: the address family).
    pub fd: i32,
    /// READ/WRITE: the user buffer. DUP: the new fd asked for. SOCKET: the type.
    pub buf: u64,
    pub enter_ts: u64,
    /// What the syscall is, for classifying a wait inside it.
    pub sys: SysCtx,
}

impl Pending {
    /// A hooked syscall of a serving thread that is not on a connection: reported as a syscall,
    /// and what it waits for classified by `sys`.
    #[inline(always)]
    pub fn syscall(sys: SysCtx, enter_ts: u64) -> Self {
        Pending {
            kind: introspect_common::kind::SYSCALL,
            buf_kind: buf_kind::NONE,
            first: 0,
            role: introspect_common::role::SERVED,
            also_syscall: 0,
            _pad: [0; 2],
            fd: sys.fd,
            buf: 0,
            enter_ts,
            sys,
        }
    }
}

#[inline(always)]
pub fn count(index: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, and BPF programs do not preempt each other on one CPU.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn is_tracked(tgid: u32) -> bool {
    TRACKED.get(tgid).is_some_and(|t| *t != 0)
}

/// The thread's state bits (0 for a tid beyond the array, which only a pid_max raised after
/// start can produce).
#[inline(always)]
pub fn thread_bits(tid: u32) -> u8 {
    THREADS.get(tid).copied().unwrap_or(0)
}

#[inline(always)]
pub fn set_thread_bits(tid: u32, set: u8, clear: u8) {
    match THREADS.get_ptr_mut(tid) {
        // SAFETY: array slot of this thread; see `THREADS` for why no other CPU writes it now.
        Some(b) => unsafe { *b = (*b & !clear) | set },
        // Beyond the array: pid_max was raised after the watch started.
        None => count(counter::MAP_FULL),
    }
}

/// Overwrites `map[key]` in place when present (no allocation, no bucket lock), else inserts.
#[inline(always)]
pub fn upsert<K, V>(map: &HashMap<K, V>, key: K, value: V) {
    match map.get_ptr_mut(&key) {
        // SAFETY: map value pointer from a successful lookup; the callers' keys are per-thread.
        Some(slot) => unsafe { *slot = value },
        None => {
            if map.insert(key, value, 0).is_err() {
                count(counter::MAP_FULL);
            }
        }
    }
}
