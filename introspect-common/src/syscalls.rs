//! The one table of hooked syscalls: number, name, the programs on its tracepoints, which
//! argument names its fd, the arguments the programs read, and what a wait inside it is. The
//! loader attaches from it and checks the record layouts against it, the kernel programs decode by
//! its numbers, and userspace names and classifies syscalls with it: adding a syscall is one entry
//! here (and, if it needs decoding of its own, a case in its program).

/// x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl).
pub mod nr {
    pub const READ: u32 = 0;
    pub const WRITE: u32 = 1;
    pub const CLOSE: u32 = 3;
    pub const POLL: u32 = 7;
    pub const PREAD64: u32 = 17;
    pub const PWRITE64: u32 = 18;
    pub const READV: u32 = 19;
    pub const WRITEV: u32 = 20;
    pub const SELECT: u32 = 23;
    pub const DUP: u32 = 32;
    pub const DUP2: u32 = 33;
    pub const NANOSLEEP: u32 = 35;
    pub const SENDFILE: u32 = 40;
    pub const SOCKET: u32 = 41;
    pub const CONNECT: u32 = 42;
    pub const ACCEPT: u32 = 43;
    pub const SENDTO: u32 = 44;
    pub const RECVFROM: u32 = 45;
    pub const SENDMSG: u32 = 46;
    pub const RECVMSG: u32 = 47;
    pub const FSYNC: u32 = 74;
    pub const FDATASYNC: u32 = 75;
    pub const FUTEX: u32 = 202;
    pub const CLOCK_NANOSLEEP: u32 = 230;
    pub const EXIT_GROUP: u32 = 231;
    pub const OPENAT: u32 = 257;
    pub const PSELECT6: u32 = 270;
    pub const EPOLL_WAIT: u32 = 232;
    pub const EPOLL_CTL: u32 = 233;
    pub const EPOLL_PWAIT: u32 = 281;
    pub const EPOLL_PWAIT2: u32 = 441;
    pub const PPOLL: u32 = 271;
    pub const UTIMENSAT: u32 = 280;
    pub const ACCEPT4: u32 = 288;
    pub const DUP3: u32 = 292;
    pub const PREADV: u32 = 295;
    pub const PWRITEV: u32 = 296;
}

/// Names of the syscall programs (the eBPF functions of the same name).
pub mod prog {
    pub const ACCEPT: &str = "syscalls_enter_accept";
    pub const EXIT_ACCEPT: &str = "syscalls_exit_accept";
    pub const READ: &str = "syscalls_enter_read";
    pub const READV: &str = "syscalls_enter_readv";
    pub const RECVMSG: &str = "syscalls_enter_recvmsg";
    pub const WRITE: &str = "syscalls_enter_write";
    pub const WRITEV: &str = "syscalls_enter_writev";
    pub const SENDMSG: &str = "syscalls_enter_sendmsg";
    pub const SENDFILE: &str = "syscalls_enter_sendfile";
    pub const BLOCKING: &str = "syscalls_enter_blocking";
    pub const CONNECT: &str = "syscalls_enter_connect";
    pub const FD: &str = "syscalls_enter_fd";
    pub const CLOSE: &str = "syscalls_enter_close";
    pub const EXIT_GROUP: &str = "syscalls_enter_exit_group";
    pub const UTIMENSAT: &str = "syscalls_enter_utimensat";
    /// The exit of every hooked syscall but accept: the enter side recorded what it was.
    pub const EXIT: &str = "syscalls_exit";
}

/// Which argument names the fd a syscall concerns (the one a wait inside it is classified by).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdArg {
    Arg(u8),
    /// poll/ppoll: the first `struct pollfd` of the array in argument 0.
    FirstPolled,
    /// select/pselect6: the lowest fd set in readfds (argument 1), else writefds (argument 2).
    FirstSelected,
    None,
}

/// What a serving thread blocked inside a syscall was waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// For its fd: a socket is network (by peer), a regular file disk.
    Fd,
    /// For its first polled fd, unless it polled none or timed out: then it slept.
    Poll,
    /// For the first socket in the epoll set it waited on (known from the `epoll_ctl` calls of
    /// serving threads), as `Poll` is for its first fd.
    Epoll,
    /// A futex: the GIL when the address lies inside it, else a lock.
    Futex,
    Sleep,
    Disk,
    /// Nothing of its own: disk when the thread was in uninterruptible sleep (D), else other.
    Plain,
}

/// Which exit program a syscall's exit tracepoint gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Shared,
    Accept,
    None,
}

#[derive(Clone, Copy, Debug)]
pub struct Syscall {
    pub nr: u32,
    /// As reports name it.
    pub name: &'static str,
    /// Its tracepoints are `syscalls:sys_enter_<tp>` and `syscalls:sys_exit_<tp>`.
    pub tp: &'static str,
    /// The program on its enter tracepoint.
    pub enter: &'static str,
    pub exit: Exit,
    pub fd: FdArg,
    /// The arguments the enter program reads, as (field name in the tracepoint's format file,
    /// index): the loader checks each is where the syscall ABI puts argument `index`.
    pub args: &'static [(&'static str, u8)],
    pub wait: Wait,
    /// `Some(what is lost)`: without it introspect still works, with less (its tracepoint may be
    /// missing on a kernel).
    pub optional: Option<&'static str>,
}

const fn sc(nr: u32, name: &'static str, enter: &'static str, fd: FdArg, args: &'static [(&'static str, u8)], wait: Wait) -> Syscall {
    Syscall { nr, name, tp: name, enter, exit: Exit::Shared, fd, args, wait, optional: None }
}

const FD0: FdArg = FdArg::Arg(0);

const FDS_FROM_PROC: Option<&str> = Some("what the fds it makes are is looked up in /proc instead, and missed once they are closed");

const EPOLL_LOST: Option<&str> = Some("waits in epoll are `other`");

/// Every hooked syscall.
pub const TABLE: &[Syscall] = &[
    // Connections: accepted ones are served, connected ones are the process's own calls.
    Syscall { exit: Exit::Accept, ..sc(nr::ACCEPT, "accept", prog::ACCEPT, FD0, &[("fd", 0), ("upeer_sockaddr", 1)], Wait::Fd) },
    Syscall { exit: Exit::Accept, ..sc(nr::ACCEPT4, "accept4", prog::ACCEPT, FD0, &[("fd", 0), ("upeer_sockaddr", 1)], Wait::Fd) },
    sc(nr::CONNECT, "connect", prog::CONNECT, FD0, &[("fd", 0), ("uservaddr", 1), ("addrlen", 2)], Wait::Fd),
    // Reads and writes: on a connection they carry its requests; on anything else, a serving
    // thread's wait in them is disk or network time.
    sc(nr::READ, "read", prog::READ, FD0, &[("fd", 0), ("buf", 1)], Wait::Fd),
    sc(nr::RECVFROM, "recvfrom", prog::READ, FD0, &[("fd", 0), ("ubuf", 1)], Wait::Fd),
    sc(nr::PREAD64, "pread64", prog::READ, FD0, &[("fd", 0), ("buf", 1)], Wait::Fd),
    sc(nr::READV, "readv", prog::READV, FD0, &[("fd", 0), ("vec", 1)], Wait::Fd),
    sc(nr::PREADV, "preadv", prog::READV, FD0, &[("fd", 0), ("vec", 1)], Wait::Fd),
    sc(nr::RECVMSG, "recvmsg", prog::RECVMSG, FD0, &[("fd", 0), ("msg", 1)], Wait::Fd),
    sc(nr::WRITE, "write", prog::WRITE, FD0, &[("fd", 0), ("buf", 1)], Wait::Fd),
    sc(nr::SENDTO, "sendto", prog::WRITE, FD0, &[("fd", 0), ("buff", 1)], Wait::Fd),
    sc(nr::PWRITE64, "pwrite64", prog::WRITE, FD0, &[("fd", 0), ("buf", 1)], Wait::Fd),
    sc(nr::WRITEV, "writev", prog::WRITEV, FD0, &[("fd", 0), ("vec", 1)], Wait::Fd),
    sc(nr::PWRITEV, "pwritev", prog::WRITEV, FD0, &[("fd", 0), ("vec", 1)], Wait::Fd),
    sc(nr::SENDMSG, "sendmsg", prog::SENDMSG, FD0, &[("fd", 0), ("msg", 1)], Wait::Fd),
    // The socket is out_fd; the data never passes through user memory.
    Syscall { tp: "sendfile64", ..sc(nr::SENDFILE, "sendfile", prog::SENDFILE, FD0, &[("out_fd", 0)], Wait::Fd) },
    // Waits of their own.
    sc(nr::FUTEX, "futex", prog::BLOCKING, FdArg::None, &[("uaddr", 0)], Wait::Futex),
    sc(nr::NANOSLEEP, "nanosleep", prog::BLOCKING, FdArg::None, &[], Wait::Sleep),
    sc(nr::CLOCK_NANOSLEEP, "clock_nanosleep", prog::BLOCKING, FdArg::None, &[], Wait::Sleep),
    sc(nr::POLL, "poll", prog::BLOCKING, FdArg::FirstPolled, &[("ufds", 0), ("nfds", 1)], Wait::Poll),
    sc(nr::PPOLL, "ppoll", prog::BLOCKING, FdArg::FirstPolled, &[("ufds", 0), ("nfds", 1)], Wait::Poll),
    sc(nr::SELECT, "select", prog::BLOCKING, FdArg::FirstSelected, &[("n", 0), ("inp", 1), ("outp", 2)], Wait::Poll),
    sc(nr::PSELECT6, "pselect6", prog::BLOCKING, FdArg::FirstSelected, &[("n", 0), ("inp", 1), ("outp", 2)], Wait::Poll),
    // epoll: psycopg 3 waits for a new connection's handshake in a selector, and event loops
    // wait in nothing else. Which fds a set holds comes from epoll_ctl (the kernel reports it
    // for serving threads only, like every wait here: others pay one map lookup per call).
    Syscall { optional: EPOLL_LOST, ..sc(nr::EPOLL_CTL, "epoll_ctl", prog::BLOCKING, FD0, &[("epfd", 0), ("op", 1), ("fd", 2)], Wait::Plain) },
    Syscall { optional: EPOLL_LOST, ..sc(nr::EPOLL_WAIT, "epoll_wait", prog::BLOCKING, FD0, &[("epfd", 0)], Wait::Epoll) },
    Syscall { optional: EPOLL_LOST, ..sc(nr::EPOLL_PWAIT, "epoll_pwait", prog::BLOCKING, FD0, &[("epfd", 0)], Wait::Epoll) },
    Syscall { optional: EPOLL_LOST, ..sc(nr::EPOLL_PWAIT2, "epoll_pwait2", prog::BLOCKING, FD0, &[("epfd", 0)], Wait::Epoll) },
    sc(nr::FSYNC, "fsync", prog::BLOCKING, FD0, &[("fd", 0)], Wait::Disk),
    sc(nr::FDATASYNC, "fdatasync", prog::BLOCKING, FD0, &[("fd", 0)], Wait::Disk),
    // What each fd is, from the syscalls that make them (a wait is classified by what its fd was
    // then, even if it is closed by the time userspace reads the event). openat is also a wait
    // of its own (a slow filesystem). fcntl(F_DUPFD) is not hooked: gunicorn calls fcntl twice
    // per connection, and an fd it makes is a number no open fd has, so userspace finds it
    // unknown and looks it up in /proc once.
    sc(nr::OPENAT, "openat", prog::FD, FdArg::Arg(0), &[("dfd", 0)], Wait::Plain),
    Syscall { optional: FDS_FROM_PROC, ..sc(nr::SOCKET, "socket", prog::FD, FdArg::None, &[("family", 0), ("type", 1)], Wait::Plain) },
    Syscall { optional: FDS_FROM_PROC, ..sc(nr::DUP, "dup", prog::FD, FD0, &[("fildes", 0)], Wait::Plain) },
    Syscall { optional: FDS_FROM_PROC, ..sc(nr::DUP2, "dup2", prog::FD, FD0, &[("oldfd", 0), ("newfd", 1)], Wait::Plain) },
    Syscall { optional: FDS_FROM_PROC, ..sc(nr::DUP3, "dup3", prog::FD, FD0, &[("oldfd", 0), ("newfd", 1)], Wait::Plain) },
    Syscall { exit: Exit::None, ..sc(nr::CLOSE, "close", prog::CLOSE, FD0, &[("fd", 0)], Wait::Plain) },
    // How workers end and whether they are alive: the exit code a process leaves with, and
    // gunicorn's heartbeat (each worker touches its temporary file with futimens, which the
    // arbiter's timeout is measured from).
    Syscall {
        exit: Exit::None,
        optional: Some("the exit codes of workers that die are not known"),
        ..sc(nr::EXIT_GROUP, "exit_group", prog::EXIT_GROUP, FdArg::None, &[("error_code", 0)], Wait::Plain)
    },
    Syscall {
        exit: Exit::None,
        optional: Some("gunicorn's worker timeouts cannot be foreseen from its heartbeat"),
        ..sc(nr::UTIMENSAT, "utimensat", prog::UTIMENSAT, FD0, &[("dfd", 0), ("filename", 1)], Wait::Plain)
    },
];

/// The table entry of a syscall number.
pub fn by_nr(nr: u32) -> Option<&'static Syscall> {
    let mut i = 0;
    while i < TABLE.len() {
        if TABLE[i].nr == nr {
            return Some(&TABLE[i]);
        }
        i += 1;
    }
    None
}
