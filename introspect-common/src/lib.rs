//! Types shared by the eBPF programs and the userspace agent: the ring-buffer event layouts, the
//! map key/value layouts and the names of maps and load-time globals.
//!
//! Every type is `#[repr(C)]` with explicit padding and a compile-time size check, so the two sides
//! can never disagree about a layout without the build failing.
#![no_std]

use core::mem::size_of;

pub mod syscalls;

/// Bytes of a request's or response's head copied into an event (request line, status line,
/// headers). Enough for method, path and the framing headers of ordinary responses; bodies are
/// never parsed or emitted.
pub const PAYLOAD_MAX: usize = 512;

/// Most bytes of one write on a database connection copied (`--sql-capture-bytes`): a power of
/// two, so the eBPF side can bound a copy with a mask.
pub const WIRE_MAX: usize = 8192;

/// Of a read on a database connection longer than [`PAYLOAD_MAX`]: bytes copied from its start
/// and from its end (where a response's end, PostgreSQL's ReadyForQuery or MySQL's final
/// packet, and an error before it are).
pub const WIRE_READ_PART: usize = PAYLOAD_MAX / 2;

/// Map and global names, used by both sides (never string literals at call sites).
pub mod names {
    pub const EVENTS: &str = "EVENTS";
    pub const TRACKED: &str = "TRACKED";
    pub const THREADS: &str = "THREADS";
    pub const CONNS: &str = "CONNS";
    pub const PORTS: &str = "PORTS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const OFFCPU: &str = "OFFCPU";
    pub const PY_WALK: &str = "PY_WALK";
    pub const ARMED: &str = "ARMED";
    pub const PY_THREADS: &str = "PY_THREADS";
    pub const ARMED_ANY: &str = "ARMED_ANY";
    pub const STACKS: &str = "STACKS";
    pub const HEARTBEATS: &str = "HEARTBEATS";
    pub const PG_SERVERS: &str = "PG_SERVERS";
    pub const DB_BACKENDS: &str = "DB_BACKENDS";
    pub const UNIX_LISTENERS: &str = "UNIX_LISTENERS";
    /// Offsets of tracepoint fields that are not fixed by the syscall ABI, read from tracefs.
    pub const G_OFFSETS: &str = "OFFSETS";
    /// What the kernel side copies, set at load time ([`crate::Settings`]).
    pub const G_SETTINGS: &str = "SETTINGS";
}

/// x86_64 syscall numbers (the table with what each hooked one is for is [`syscalls::TABLE`]).
pub use syscalls::nr;

/// Event kinds, with fixed numeric ids (recorded streams depend on them), in families with room
/// to grow: 1-15 connections, processes and the scheduler, 16-23 what file descriptors are; the
/// next families (signals, protocol heads of outbound calls, TLS) take the ranges after.
pub mod kind {
    pub const ACCEPT: u16 = 1;
    pub const READ: u16 = 2;
    pub const WRITE: u16 = 3;
    pub const CLOSE: u16 = 4;
    pub const FORK: u16 = 5;
    pub const EXIT: u16 = 6;
    pub const OFF_CPU: u16 = 7;
    pub const SYSCALL: u16 = 8;
    pub const STACK: u16 = 9;
    /// `connect`, at its entry (a wait inside it must already know the peer): [`ConnectEvent`].
    pub const CONNECT: u16 = 16;
    /// `socket` returned an fd: [`FdEvent`].
    pub const SOCKET: u16 = 17;
    /// `openat` returned an fd: [`FdEvent`].
    pub const OPEN: u16 = 18;
    /// `dup`, `dup2` or `dup3` returned an fd: [`FdEvent`].
    pub const DUP: u16 = 19;
    /// A signal to a watched process or to a thread serving a request (`hdr` names the sender):
    /// [`SignalEvent`].
    pub const SIGNAL: u16 = 24;
    /// The OOM killer chose a watched process: [`OomEvent`].
    pub const OOM: u16 = 25;
    /// A thread of a watched process called exit_group: [`ProcEvent`], `code` the exit code.
    pub const EXIT_CALL: u16 = 26;
    /// A PostgreSQL backend ran again after blocking: [`DbSwitchEvent`].
    pub const DB_SWITCH: u16 = 27;
    /// A serving thread's write on one of its outbound connections woke a PostgreSQL backend:
    /// that backend serves the connection ([`DbLinkEvent`]).
    pub const DB_LINK: u16 = 28;
    /// A process connected to a watched Unix socket: [`UnixConnectEvent`], at the connect's
    /// successful return.
    pub const UNIX_CONNECT: u16 = 29;
}

/// Flags on a [`StackEvent`].
pub mod stack_flag {
    /// A CPU-clock sample of an armed thread (it was running).
    pub const ON_CPU: u16 = 1 << 0;
    /// Taken as the armed thread left the CPU; `hdr.ts` equals the `out_ts` of its off-CPU
    /// interval.
    pub const OFF_CPU: u16 = 1 << 1;
    /// Taken as a fatal signal was delivered to a serving thread: where it was when it was
    /// killed (or when its handler was about to run).
    pub const SIGNAL: u16 = 1 << 2;
    /// From the all-traffic profiler (`--profile-all`, `record`): a per-CPU CPU-clock sample of
    /// any thread of a watched process, or an off-CPU stack of a serving thread whose wait was
    /// sampled (see [`LONG_WAIT_NS`], [`SAMPLE_EVERY`]); not from arming.
    pub const SAMPLED: u16 = 1 << 3;
    /// An off-CPU stack taken at the exit of the syscall the thread blocked in (its user and
    /// Python frames are those it blocked with); `wait_us` is the time it stands for: the
    /// syscall's duration, or with `SCALED` [`LONG_WAIT_NS`].
    pub const AT_EXIT: u16 = 1 << 4;
    /// Sampled: with `AT_EXIT`, a wait shorter than [`LONG_WAIT_NS`] captured with probability
    /// its length / `LONG_WAIT_NS`; without, a switch-out standing for [`SAMPLE_EVERY`] of them.
    pub const SCALED: u16 = 1 << 5;
    /// With `SCALED`: a preemption, standing for [`PREEMPT_EVERY`] of them.
    pub const PREEMPTED: u16 = 1 << 6;
}

/// The all-traffic profiler captures every wait of a serving thread that lasts at least this
/// long, and a shorter one with probability length / this (weighing this much): at most one
/// stack walk per millisecond of waiting.
pub const LONG_WAIT_NS: u64 = 1_000_000;
/// Switch-outs outside a hooked syscall that block (page faults, unhooked syscalls) are captured
/// one in this many per CPU, weighted by this many: their length is not known when the stack
/// must be taken.
pub const SAMPLE_EVERY: u16 = 16;
/// ... and preemptions one in this many: on a busy host a request is preempted about once, its
/// wait is the run queue's (exact in the breakdown), and where it was is what on-CPU samples
/// tell already; at one in 16 their stacks were most of the profiler's cost.
pub const PREEMPT_EVERY: u16 = 256;

/// Flags on a [`DataEvent`].
pub mod data_flag {
    /// First read of a new request or first write of a new response: the event carries a payload.
    pub const FIRST: u16 = 1 << 0;
    /// `sendfile`: bytes were written, but there is no user buffer to copy.
    pub const NO_BUFFER: u16 = 1 << 1;
    /// On a connection the process opened itself (`connect`): it asks, a server answers.
    pub const OUTBOUND: u16 = 1 << 2;
    /// On a connection the kernel recognised as PostgreSQL's (see [`crate::wire`]): the record
    /// is a [`WirePayloadEvent`] holding `payload_len` bytes.
    pub const WIRE_POSTGRES: u16 = 1 << 3;
    /// The same for MySQL and MariaDB.
    pub const WIRE_MYSQL: u16 = 1 << 4;
}

/// What an outbound connection speaks, as far as the kernel side can tell from the first bytes
/// of its first write (`ConnState::wire`): only database connections get their bytes copied.
pub mod wire {
    /// Not looked at yet.
    pub const UNKNOWN: u8 = 0;
    pub const POSTGRES: u8 = 1;
    pub const MYSQL: u8 = 2;
    /// Something else (HTTP to an API, Redis, …), or encrypted: nothing copied.
    pub const NONE: u8 = 3;
    /// PostgreSQL after an SSLRequest or GSSENCRequest: the server's one-byte answer says whether
    /// the rest is encrypted (then [`NONE`]) or not ([`POSTGRES`]).
    pub const POSTGRES_ASKED_TLS: u8 = 4;
}

/// Bits of the kernel's per-thread state that userspace sets too.
pub mod thread_bit {
    /// A PostgreSQL backend, followed through the scheduler (userspace marks the ones running
    /// when the watch starts; the kernel marks those forked later).
    pub const DB_BACKEND: u8 = 1 << 3;
}

/// Which side of a connection a watched process is on (`ConnState::role`).
pub mod role {
    /// Accepted: the process serves requests on it.
    pub const SERVED: u8 = 0;
    /// Connected by the process (a database, a cache, an API): it makes calls on it.
    pub const OUTBOUND: u8 = 1;
}

/// Indices into the per-CPU `COUNTERS` array: everything the kernel side had to give up on.
pub mod counter {
    /// Ring buffer full: an event was lost.
    pub const RINGBUF_FULL: u32 = 0;
    /// A map update failed (map full): a connection or syscall could not be tracked.
    pub const MAP_FULL: u32 = 1;
    /// A user buffer could not be read (not faulted in): an event went out without its payload.
    pub const READ_FAILED: u32 = 2;
    pub const COUNT: u32 = 4;
}

/// The header every event starts with.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    pub kind: u16,
    pub flags: u16,
    /// Process id (thread-group id) in the initial pid namespace.
    pub tgid: u32,
    /// Thread id in the initial pid namespace.
    pub tid: u32,
    pub _pad: u32,
    /// CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns) when the event was produced.
    pub ts: u64,
}
const _: () = assert!(size_of::<EventHeader>() == 24);

/// A remote endpoint: IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerKey {
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    pub _pad: [u8; 6],
}
const _: () = assert!(size_of::<PeerKey>() == 24);

/// `accept`/`accept4` returned a connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AcceptEvent {
    pub hdr: EventHeader,
    pub fd: i32,
    pub listen_fd: i32,
    /// AF_INET, AF_INET6, AF_UNIX or 0 when the caller passed no address buffer.
    pub family: u16,
    pub _pad: [u8; 6],
    pub peer: PeerKey,
    /// When the syscall was entered; `hdr.ts` is when it returned.
    pub enter_ts: u64,
}
const _: () = assert!(size_of::<AcceptEvent>() == 72);

/// A read or write on a tracked connection.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DataEvent {
    pub hdr: EventHeader,
    pub fd: i32,
    /// Bytes copied into `payload` (0 when there is none).
    pub payload_len: u32,
    /// The syscall's return value: bytes transferred, 0 for end of stream.
    pub ret: i64,
    pub enter_ts: u64,
    /// For the first read of a request: when its first bytes reached the socket (tcp_probe), or 0.
    pub arrival_ts: u64,
    /// Syscall number (x86_64).
    pub nr: u32,
    /// Of a long read on a database connection: where in the payload the bytes of the read's end
    /// begin (the first [`WIRE_READ_PART`] bytes are its start); 0 when the payload is contiguous.
    pub tail_at: u32,
}
const _: () = assert!(size_of::<DataEvent>() == 64);

/// A [`DataEvent`] with the head of the request or response.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DataPayloadEvent {
    pub data: DataEvent,
    pub comm: [u8; 16],
    pub payload: [u8; PAYLOAD_MAX],
}
const _: () = assert!(size_of::<DataPayloadEvent>() == 64 + 16 + PAYLOAD_MAX);

/// A [`DataEvent`] on a database connection with the bytes moved (a bounded copy). Only the
/// header and `payload_len` bytes of `payload` are sent: the record is variable-sized.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct WirePayloadEvent {
    pub data: DataEvent,
    pub payload: [u8; WIRE_MAX],
}
const _: () = assert!(size_of::<WirePayloadEvent>() == 64 + WIRE_MAX);

/// `close` of a tracked connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CloseEvent {
    pub hdr: EventHeader,
    pub fd: i32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<CloseEvent>() == 32);

/// Bytes of a `connect` address copied: a whole `sockaddr_un` (110 bytes), so Unix socket paths
/// arrive complete.
pub const SOCKADDR_MAX: usize = 112;

/// `connect(fd, addr, len)` by a watched process, taken at the syscall's entry with the address
/// as the caller passed it (parsed in userspace).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ConnectEvent {
    pub hdr: EventHeader,
    pub fd: i32,
    /// Bytes of `addr` copied (at most [`SOCKADDR_MAX`]).
    pub addr_len: u32,
    pub addr: [u8; SOCKADDR_MAX],
}
const _: () = assert!(size_of::<ConnectEvent>() == 32 + SOCKADDR_MAX);

/// A syscall of a watched process returned a new fd (`hdr.kind`: SOCKET, OPEN or DUP).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FdEvent {
    pub hdr: EventHeader,
    pub fd: i32,
    /// DUP: the fd it duplicates. SOCKET: the address family. OPEN: unused.
    pub from: i32,
    /// SOCKET: the socket type (with its SOCK_NONBLOCK / SOCK_CLOEXEC flags).
    pub detail: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<FdEvent>() == 40);

/// A tracked process forked a child (now tracked too), exited, or called exit_group.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcEvent {
    pub hdr: EventHeader,
    /// FORK: the new process. EXIT, EXIT_CALL: the process exiting.
    pub pid: u32,
    /// EXIT_CALL: the exit code passed to exit_group.
    pub code: i32,
    pub comm: [u8; 16],
}
const _: () = assert!(size_of::<ProcEvent>() == 48);

/// A signal generated for a watched process or a serving thread, in the sender's context.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SignalEvent {
    /// The sender (the current task when the signal was generated: the kernel's own signals, an
    /// OOM kill or a fault, are sent in some task's context too).
    pub hdr: EventHeader,
    /// The process (or thread) signalled.
    pub target: u32,
    pub sig: i32,
    /// si_code: SI_USER 0 (kill), SI_TKILL -6 (tgkill), SI_KERNEL 128 (the kernel: the OOM
    /// killer), a fault's code for SIGSEGV and its kin.
    pub code: i32,
    /// 1 when sent to the whole process, 0 to one thread.
    pub group: i32,
    /// The tracepoint's result: 0 delivered, 2 already pending, 3 and 4 lost (ignored signals
    /// are not reported).
    pub result: i32,
    pub _pad: u32,
    /// The sender's command.
    pub comm: [u8; 16],
}
const _: () = assert!(size_of::<SignalEvent>() == 64);

/// oom:mark_victim for a watched process: its memory when the OOM killer chose it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OomEvent {
    pub hdr: EventHeader,
    pub pid: u32,
    pub _pad: u32,
    pub total_vm_kb: u64,
    pub anon_rss_kb: u64,
    pub file_rss_kb: u64,
    pub shmem_rss_kb: u64,
}
const _: () = assert!(size_of::<OomEvent>() == 64);

/// The syscall a thread was in, as far as the hooked syscalls tell.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SysCtx {
    /// Syscall number (x86_64), or `NO_SYSCALL`.
    pub nr: u32,
    /// The fd it waits on (its first argument; the first polled fd for poll/select), or -1.
    pub fd: i32,
    /// futex: the address. poll/select: the number of fds. epoll_wait: the timeout.
    pub arg: u64,
}
const _: () = assert!(size_of::<SysCtx>() == 16);

/// `SysCtx::nr` when the thread was not in a hooked syscall (a page fault, preemption).
pub const NO_SYSCALL: u32 = u32::MAX;

/// `SysCtx::arg` of a read or write on the request's own client connection (the kernel knows it
/// is a tracked connection, so userspace need not look the fd up).
pub const CLIENT_CONN: u64 = u64::MAX;

/// A thread serving a request was off the CPU: blocked from `out_ts` to `wake_ts`, then
/// runnable until it ran again at `hdr.ts`. Preempted threads have `wake_ts == out_ts`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OffCpuEvent {
    pub hdr: EventHeader,
    pub out_ts: u64,
    pub wake_ts: u64,
    /// sched_switch prev_state & 0xff: 0 runnable (preempted), 1 S (interruptible), 2 D.
    pub state: u32,
    pub _pad: u32,
    pub sys: SysCtx,
}
const _: () = assert!(size_of::<OffCpuEvent>() == 64);

/// A PostgreSQL backend (`hdr.tid`) blocked from `out_ts` to `wake_ts`, then runnable until it
/// ran again at `hdr.ts`; what it said it waited for, and who woke it. Only blocking spells are
/// sent (a preempted backend was waiting for a CPU, which userspace counts as its CPU time).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DbSwitchEvent {
    pub hdr: EventHeader,
    pub out_ts: u64,
    pub wake_ts: u64,
    /// The backend's `*my_wait_event_info` as it left the CPU (PostgreSQL's wait event: class
    /// in the top byte, event in the low 16 bits; 0 none).
    pub wait_event: u32,
    /// sched_switch prev_state & 0xff: 1 S (interruptible), 2 D.
    pub state: u32,
    /// The thread that woke it (0 unknown).
    pub waker_tid: u32,
    /// 1 when that thread is a PostgreSQL backend too.
    pub waker_is_backend: u32,
}
const _: () = assert!(size_of::<DbSwitchEvent>() == 56);

/// `hdr`'s write on `fd` (an outbound connection) woke PostgreSQL backend `backend`.
/// On a [`UnixConnectEvent`]: the connect failed with EAGAIN, its listener's backlog full.
pub const UNIX_REFUSED: u16 = 1;

/// Bytes of a `sun_path` (include/uapi/linux/un.h `UNIX_PATH_MAX`).
pub const UNIX_PATH_MAX: usize = 108;

/// Key of the `UNIX_LISTENERS` map: a `sun_path` as `connect` passes it, zero-padded; an
/// abstract name keeps its leading NUL and ends where the address length says.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnixPath {
    pub bytes: [u8; UNIX_PATH_MAX],
}
const _: () = assert!(size_of::<UnixPath>() == UNIX_PATH_MAX);

impl UnixPath {
    /// The key of a path as /proc/net/unix prints it ("@name": abstract). None when too long.
    pub fn from_listing(path: &str) -> Option<Self> {
        let (skip, name) = match path.strip_prefix('@') {
            Some(name) => (1, name.as_bytes()),
            None => (0, path.as_bytes()),
        };
        if skip + name.len() == 0 || skip + name.len() > UNIX_PATH_MAX {
            return None;
        }
        let mut bytes = [0u8; UNIX_PATH_MAX];
        bytes[skip..skip + name.len()].copy_from_slice(name);
        Some(Self { bytes })
    }
}

/// A connect to a watched Unix listener returned (`hdr.ts`): 0, and the connection is in that
/// listener's backlog from then, in order, until a worker accepts it; or EAGAIN
/// ([`UNIX_REFUSED`] in `hdr.flags`): the backlog was full.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UnixConnectEvent {
    pub hdr: EventHeader,
    /// The listener's value in `UNIX_LISTENERS`.
    pub listener: u32,
    pub _pad: u32,
    /// When the connect was called: the client's wait starts here (a full backlog blocks it).
    pub enter_ts: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DbLinkEvent {
    pub hdr: EventHeader,
    pub fd: i32,
    pub backend: u32,
}
const _: () = assert!(size_of::<DbLinkEvent>() == 32);

/// Kernel state of a PostgreSQL backend (map `DB_BACKENDS`, by pid): where its wait event lives
/// and its current off-CPU spell.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DbBackend {
    /// Address of the server's `my_wait_event_info` (a `uint32 *`) in the backend's memory:
    /// the same in every backend, which the server forks without exec.
    pub wait_addr: u64,
    /// 0 while on the CPU.
    pub out_ts: u64,
    pub wake_ts: u64,
    pub wait_event: u32,
    pub state: u32,
    pub waker_tid: u32,
    pub waker_is_backend: u32,
}
const _: () = assert!(size_of::<DbBackend>() == 40);

/// A hooked syscall of a thread serving a request, from enter to exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SyscallEvent {
    pub hdr: EventHeader,
    pub sys: SysCtx,
    pub enter_ts: u64,
    pub ret: i64,
}
const _: () = assert!(size_of::<SyscallEvent>() == 56);

/// Kernel state of a serving thread that is off the CPU (map `OFFCPU`), readable by userspace
/// to account for a wait that is still going on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OffCpuState {
    pub out_ts: u64,
    pub wake_ts: u64,
    pub tgid: u32,
    pub state: u32,
    pub sys: SysCtx,
}
const _: () = assert!(size_of::<OffCpuState>() == 40);

/// Python frames a kernel stack walk records at most (deeper stacks keep their innermost part).
pub const PY_FRAMES_MAX: usize = 96;

/// `PyWalk::cframe_frame` when the thread state points at the frame directly.
pub const NO_OFFSET: u16 = u16::MAX;

/// How to walk a process's Python frame chain in the kernel (map `PY_WALK`, by tgid). Only
/// pointers are followed and copied; names and lines are resolved in userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyWalk {
    /// tstate → top frame (or → cframe, when `cframe_frame` is set: 3.11, 3.12).
    pub tstate_frame: u16,
    pub cframe_frame: u16,
    pub frame_back: u16,
    pub frame_code: u16,
    /// The position field (f_lasti or the instruction pointer), copied as 8 raw bytes.
    pub frame_lasti: u16,
    pub _pad: [u16; 3],
}
const _: () = assert!(size_of::<PyWalk>() == 16);

/// A thread whose stacks are being captured (map `ARMED`, by tid): it is serving a slow request.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Armed {
    /// Its `PyThreadState *`.
    pub tstate: u64,
    pub tgid: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<Armed>() == 16);

/// One Python frame as the kernel read it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyRawFrame {
    pub code: u64,
    pub lasti: u64,
}
const _: () = assert!(size_of::<PyRawFrame>() == 16);

/// A stack of an armed thread: kernel and user stack ids (in `STACKS`, < 0 when unavailable)
/// and the Python frames, innermost first.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StackEvent {
    pub hdr: EventHeader,
    pub kstack: i32,
    pub ustack: i32,
    pub nframes: u32,
    /// `stack_flag::AT_EXIT`: the time the stack stands for, in microseconds (see the flag).
    pub wait_us: u32,
    pub frames: [PyRawFrame; PY_FRAMES_MAX],
}
const _: () = assert!(size_of::<StackEvent>() == 40 + 16 * PY_FRAMES_MAX);

/// Key of the `CONNS` map: a connection is a socket fd of a tracked process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub tgid: u32,
    pub fd: i32,
}
const _: () = assert!(size_of::<ConnKey>() == 8);

/// Phase of a connection, so the kernel copies the head of a request or response only once.
pub mod phase {
    pub const IDLE: u8 = 0;
    pub const READING: u8 = 1;
    pub const WRITING: u8 = 2;
    /// Closed. The entry stays, to be reused in place by the next connection on the same fd (an
    /// in-place update costs a fraction of an LRU delete plus insert).
    pub const CLOSED: u8 = 3;
}

/// Value of the `CONNS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnState {
    pub peer: PeerKey,
    pub phase: u8,
    /// 1 when `peer` is a TCP endpoint whose arrivals tcp_probe records.
    pub has_peer: u8,
    /// [`role`]`::SERVED` or `OUTBOUND`.
    pub role: u8,
    /// Of an outbound connection: what it speaks ([`wire`]).
    pub wire: u8,
    /// Of an outbound connection: 1 once a write on it was seen to wake a database backend
    /// (reported once, as a [`DbLinkEvent`]).
    pub linked: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<ConnState>() == 32);

/// In an `ARRIVALS` value: set when the time is a handshake's completion (a listener that defers
/// accept until data arrives completes it with the request's first segment), clear when it is a
/// data segment's arrival. Timestamps lose their lowest nanosecond to it.
pub const ARRIVAL_HANDSHAKE: u64 = 1;

/// Offsets of tracepoint fields, read from tracefs `format` files at load time (no CO-RE from
/// Rust). The programs compile in only the offsets kernels have used for years, as a fast path
/// taken when these agree (see the eBPF crate's `field` module). The syscall tracepoints' layout
/// is fixed by the syscall ABI and checked by userspace instead.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TracepointOffsets {
    pub tcp_probe_daddr: u16,
    pub tcp_probe_sport: u16,
    pub tcp_probe_dport: u16,
    pub tcp_probe_family: u16,
    pub tcp_probe_data_len: u16,
    pub newtask_pid: u16,
    pub newtask_clone_flags: u16,
    pub switch_prev_state: u16,
    pub switch_next_pid: u16,
    pub wakeup_pid: u16,
    pub signal_pid: u16,
    pub signal_sig: u16,
    pub signal_code: u16,
    pub signal_group: u16,
    pub signal_result: u16,
    pub deliver_sig: u16,
    pub oom_pid: u16,
    pub oom_total_vm: u16,
    pub oom_anon_rss: u16,
    pub oom_file_rss: u16,
    pub oom_shmem_rss: u16,
    pub set_state_oldstate: u16,
    pub set_state_newstate: u16,
    pub set_state_sport: u16,
    pub set_state_dport: u16,
    pub set_state_family: u16,
    pub set_state_protocol: u16,
    pub set_state_daddr: u16,
    pub set_state_daddr_v6: u16,
    pub _pad: [u16; 3],
}
const _: () = assert!(size_of::<TracepointOffsets>() == 64);

/// What the kernel side copies, set at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// 1: copy the head of each request and response on outbound connections too (the payload
    /// of a protocol parser for them); 0: only their sizes and timing.
    pub outbound_heads: u8,
    /// 1: the all-traffic profiler is on: off-CPU waits of every serving thread are sampled
    /// (its on-CPU side is the per-CPU sampler, attached only then).
    pub profile_all: u8,
    /// Bytes of each write on a database connection copied (at most [`WIRE_MAX`]); 0: database
    /// connections are not recognised, nothing of them is copied.
    pub sql_capture: u16,
    pub _pad2: [u8; 4],
}
const _: () = assert!(size_of::<Settings>() == 8);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), Copy, with explicit padding and no pointers or bools.
    unsafe impl aya::Pod for ConnKey {}
    unsafe impl aya::Pod for ConnState {}
    unsafe impl aya::Pod for PeerKey {}
    unsafe impl aya::Pod for TracepointOffsets {}
    unsafe impl aya::Pod for OffCpuState {}
    unsafe impl aya::Pod for SysCtx {}
    unsafe impl aya::Pod for PyWalk {}
    unsafe impl aya::Pod for Armed {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for DbBackend {}
    unsafe impl aya::Pod for UnixPath {}
}
