//! Kernel events as the userspace pipeline sees them: decoded from the ring buffer
//! ([`decode`]), written to and read from recordings ([`recording`]) in the same form, so a
//! recording replays exactly what a live run processed.
pub mod decode;
pub mod recording;

use std::net::SocketAddr;

use introspect_common::{NO_SYSCALL, SysCtx};
use serde::{Deserialize, Serialize};

pub use crate::proto::{Head, Wire};
use crate::{
    kills::{OomRss, Server},
    stacks::{Frame, RawFrame},
};

/// Identity and time of every event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hdr {
    pub tgid: u32,
    pub tid: u32,
    /// CLOCK_MONOTONIC ns.
    pub ts: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dir {
    Read,
    Write,
}

/// A hooked syscall: number (x86_64), the fd it concerns (-1 if none) and its telling argument
/// (futex address, number of polled fds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sys {
    pub nr: u32,
    pub fd: i32,
    pub arg: u64,
}

impl Sys {
    pub fn from_ctx(c: &SysCtx) -> Option<Self> {
        (c.nr != NO_SYSCALL).then_some(Sys { nr: c.nr, fd: c.fd, arg: c.arg })
    }
}

/// What an fd is: known from the syscall that made it, else from /proc.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FdKind {
    /// A socket, with its remote endpoint when known (`ip:port`, `unix:PATH`, `unix`).
    Socket {
        peer: Option<String>,
    },
    File,
    Pipe,
    Other,
}

/// How an fd came to be, as far as introspect saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FdOrigin {
    /// openat.
    Open,
    /// socket(family, ...), not connected yet.
    Socket { family: u16 },
    /// dup, dup2, dup3 of `from`.
    Dup { from: i32 },
    /// What /proc said it is: an fd open before the watch began, or made by a syscall that is
    /// not hooked (written to recordings, so replays know it too).
    Proc { kind: FdKind },
}

/// What a wait was for, as the pipeline knew when it saw the wait (the fd may be closed and its
/// number reused by the time anyone looks). Recorded with the wait, so replays keep it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitFacts {
    pub fd: Option<FdKind>,
    /// The futex address lies inside the interpreter's GIL.
    pub gil: bool,
}

/// How an all-traffic sample counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleWeight {
    /// An off-CPU stack taken at the exit of the syscall it blocked in: the time it stands for
    /// (else an off-CPU stack is weighted by the off-CPU interval starting at its `hdr.ts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ns: Option<u64>,
    /// It stands for this many such waits (one in that many was captured); 1 for the rest.
    pub every: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Event {
    Accept {
        hdr: Hdr,
        fd: i32,
        listen_fd: i32,
        peer: Option<SocketAddr>,
        enter_ts: u64,
    },
    Data {
        hdr: Hdr,
        dir: Dir,
        fd: i32,
        /// Bytes moved; 0 is end of stream (reads only).
        bytes: u64,
        enter_ts: u64,
        /// First bytes of this request reached the socket (first reads only, when seen).
        arrival_ts: Option<u64>,
        /// The first read of a request or first write of a response carries its parsed head.
        head: Option<Head>,
        comm: Option<String>,
        #[serde(default)]
        nr: u32,
        /// On a connection the process made itself: its writes are requests, its reads responses.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        outbound: bool,
        /// On a database connection: what this write asked or this read answered.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wire: Option<Wire>,
    },
    Close {
        hdr: Hdr,
        fd: i32,
    },
    /// connect(fd) to `peer` (at the syscall's entry; `None`: an address family without one).
    Connect {
        hdr: Hdr,
        fd: i32,
        peer: Option<String>,
    },
    /// A new fd.
    Fd {
        hdr: Hdr,
        fd: i32,
        origin: FdOrigin,
    },
    /// A serving thread was off the CPU: blocked from `out_ts` to `wake_ts`, runnable until
    /// `hdr.ts`.
    OffCpu {
        hdr: Hdr,
        out_ts: u64,
        wake_ts: u64,
        /// Task state when it left: 0 preempted, 1 interruptible sleep, 2 uninterruptible (D).
        state: u32,
        sys: Option<Sys>,
        #[serde(default)]
        facts: WaitFacts,
    },
    /// A hooked syscall of a serving thread; `hdr.ts` is its return.
    Syscall {
        hdr: Hdr,
        sys: Sys,
        enter_ts: u64,
        ret: i64,
    },
    /// A stack of a thread serving a slow request, or of the all-traffic profiler (`sampled`): a
    /// CPU-clock sample (`on_cpu`), or taken as it left the CPU (`hdr.ts` is then that off-CPU
    /// interval's `out_ts`), or at the exit of the syscall it blocked in (`sampled.wait_ns`).
    /// The kernel's ids and raw Python frames are symbolized into `frames` by the live agent
    /// (and not recorded).
    Stack {
        hdr: Hdr,
        on_cpu: bool,
        /// Taken as a fatal signal reached the thread (where it was when it was killed).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        at_signal: bool,
        #[serde(skip)]
        kstack: i32,
        #[serde(skip)]
        ustack: i32,
        #[serde(skip)]
        raw: Vec<RawFrame>,
        frames: Vec<Frame>,
        /// From the all-traffic profiler (of any thread of a watched process, serving or not),
        /// and how it counts; `None`: from arming (a slow request's thread).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sampled: Option<SampleWeight>,
    },
    /// A request on `hdr.tid` crossed the threshold and its stacks started being captured: the
    /// stack then, and since when it was off the CPU if it was. Written to recordings by the
    /// live agent, so replays reproduce stacks and profiles.
    Slow {
        hdr: Hdr,
        stack: Vec<Frame>,
        off_cpu_since: Option<u64>,
    },
    Fork {
        hdr: Hdr,
        child: u32,
    },
    Exit {
        hdr: Hdr,
        pid: u32,
    },
    /// A fatal signal for `target` (a watched process, or a thread serving a request), sent by
    /// `hdr` (the kernel's own come from whatever task was running).
    Signal {
        hdr: Hdr,
        target: u32,
        sig: i32,
        code: i32,
        group: i32,
        sender_comm: String,
    },
    /// The OOM killer chose `pid`.
    Oom {
        hdr: Hdr,
        pid: u32,
        rss: OomRss,
    },
    /// `hdr.tgid` called exit_group(`code`).
    ExitCall {
        hdr: Hdr,
        code: i32,
    },
    /// A process watched from the start, and its parent (from /proc; later ones are forks).
    Proc {
        hdr: Hdr,
        pid: u32,
        ppid: u32,
    },
    /// What server master `pid` is and when it kills workers (from its command line).
    Server {
        hdr: Hdr,
        pid: u32,
        server: Server,
    },
    /// Worker `pid`'s heartbeat was last at `at` (gunicorn), as read when it mattered.
    Heartbeat {
        hdr: Hdr,
        pid: u32,
        at: u64,
    },
    /// A stack of `hdr.tid` read from userspace as its request neared the server's kill.
    Snapshot {
        hdr: Hdr,
        stack: Vec<Frame>,
    },
    /// PostgreSQL backend `hdr.tid` was blocked from `out_ts` to `wake_ts` waiting for
    /// `wait_event` (its `wait_event_info`), then runnable until `hdr.ts`; `waker` woke it.
    DbSwitch {
        hdr: Hdr,
        out_ts: u64,
        wake_ts: u64,
        wait_event: u32,
        /// 1 interruptible sleep, 2 uninterruptible (D).
        state: u32,
        waker: Option<u32>,
        waker_is_backend: bool,
    },
    /// A process (watched or not: nginx) connected to the watched Unix listener at `path`,
    /// from `enter_ts` to `hdr.ts`: the connection is in its backlog; or was refused, the
    /// backlog full.
    UnixConnect {
        hdr: Hdr,
        path: String,
        enter_ts: u64,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        refused: bool,
    },
    /// A sample of a watched listener's accept queue (`socket`: `unix:PATH` or `ADDR:PORT`):
    /// `queued` connections waiting, room for `max`. `listen_overflows`: the host's TCP
    /// ListenOverflows counter then (all sockets of the host), on the first and last samples.
    Backlog {
        hdr: Hdr,
        socket: String,
        queued: u32,
        max: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        listen_overflows: Option<u64>,
    },
    /// `hdr.tid`'s write on its connection `fd` woke PostgreSQL backend `backend`: the backend
    /// serving that connection.
    DbLink {
        hdr: Hdr,
        fd: i32,
        backend: u32,
    },
    /// `--pg-dsn`: what `pg_stat_activity` said of the server's client sessions at `hdr.ts`,
    /// `interval_ns` after the previous sample. Backends are numbered with
    /// [`crate::sql::activity::REMOTE`] set, apart from this host's.
    PgActivity {
        hdr: Hdr,
        interval_ns: u64,
        sessions: Vec<crate::sql::activity::Session>,
    },
    /// `--interrupt-before` on `hdr.tid`'s request, whose kill was predicted at `kill_at`.
    Interrupt {
        hdr: Hdr,
        action: InterruptAction,
        kill_at: u64,
    },
}

/// A step of interrupting a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterruptAction {
    /// TimeoutError was written to the thread's state.
    Written,
    /// The thread raised it (its state no longer holds it).
    Surfaced,
    /// Taken back unraised just before the kill (the thread never reached a check: C code).
    Undone,
    /// Not written, and why.
    Refused { why: String },
    /// `--interrupt-dry-run`: would have been written now.
    DryRun,
}

impl Event {
    pub fn hdr(&self) -> &Hdr {
        match self {
            Event::Accept { hdr, .. }
            | Event::Data { hdr, .. }
            | Event::Close { hdr, .. }
            | Event::Connect { hdr, .. }
            | Event::Fd { hdr, .. }
            | Event::OffCpu { hdr, .. }
            | Event::Syscall { hdr, .. }
            | Event::Stack { hdr, .. }
            | Event::Slow { hdr, .. }
            | Event::Fork { hdr, .. }
            | Event::Exit { hdr, .. }
            | Event::Signal { hdr, .. }
            | Event::Oom { hdr, .. }
            | Event::ExitCall { hdr, .. }
            | Event::Proc { hdr, .. }
            | Event::Server { hdr, .. }
            | Event::Heartbeat { hdr, .. }
            | Event::Snapshot { hdr, .. }
            | Event::Interrupt { hdr, .. }
            | Event::DbSwitch { hdr, .. }
            | Event::DbLink { hdr, .. }
            | Event::UnixConnect { hdr, .. }
            | Event::Backlog { hdr, .. }
            | Event::PgActivity { hdr, .. } => hdr,
        }
    }
}
