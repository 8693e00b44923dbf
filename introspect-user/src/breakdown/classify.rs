//! Classify: what a serving thread was waiting for while it was off the CPU, from the syscall it
//! was in (the syscall table says what a wait in each one is) and the facts the pipeline knew
//! about its fd or futex then.
use introspect_common::syscalls::{self, Wait};

use crate::event::{FdKind, Sys, WaitFacts};

/// Task states as sched_switch reports them.
pub const STATE_RUNNING: u32 = 0;
const STATE_UNINTERRUPTIBLE: u32 = 2;

/// What a blocked interval was waiting for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Category {
    Disk,
    Net { peer: Option<String> },
    Lock,
    Gil,
    Sleep,
    Other,
}

/// An off-CPU interval of a serving thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffCpu {
    pub out_ts: u64,
    pub wake_ts: u64,
    pub in_ts: u64,
    pub state: u32,
    pub sys: Option<Sys>,
    pub facts: WaitFacts,
}

/// The name of a syscall in the `syscalls` list.
pub fn syscall_name(nr: u32) -> String {
    syscalls::by_nr(nr).map_or_else(|| format!("syscall_{nr}"), |s| s.name.to_string())
}

/// Classifies the blocked part of an interval; `ret` is the return value of the syscall it was in,
/// when known. A poll with no fds is a sleep; one that timed out (returned 0) is a sleep too,
/// unless it waited on a socket: database drivers poll their socket in slices (psycopg 3 in
/// 100 ms ones, so that Ctrl-C is seen), and every slice is time waiting for the peer.
pub fn classify(off: &OffCpu, ret: Option<i64>) -> Category {
    let disk_if_d = || if off.state == STATE_UNINTERRUPTIBLE { Category::Disk } else { Category::Other };
    let by_fd = || match &off.facts.fd {
        Some(FdKind::Socket { peer }) => Category::Net { peer: peer.clone() },
        Some(FdKind::File) => Category::Disk,
        _ => disk_if_d(),
    };
    let Some(sys) = off.sys else {
        // Not in a hooked syscall: uninterruptible sleep there is a major page fault's IO.
        return disk_if_d();
    };
    match syscalls::by_nr(sys.nr).map(|s| s.wait) {
        Some(Wait::Futex) if off.facts.gil => Category::Gil,
        Some(Wait::Futex) => Category::Lock,
        Some(Wait::Sleep) => Category::Sleep,
        Some(Wait::Poll) if sys.arg == 0 => Category::Sleep,
        Some(Wait::Poll) if ret == Some(0) && !matches!(off.facts.fd, Some(FdKind::Socket { .. })) => Category::Sleep,
        Some(Wait::Epoll) if ret == Some(0) && !matches!(off.facts.fd, Some(FdKind::Socket { .. })) => Category::Sleep,
        Some(Wait::Poll | Wait::Epoll | Wait::Fd) => by_fd(),
        Some(Wait::Disk) => Category::Disk,
        Some(Wait::Plain) | None => disk_if_d(),
    }
}

#[cfg(test)]
mod tests {
    use introspect_common::syscalls::nr;

    use super::*;

    fn poll(fd: Option<FdKind>, nfds: u64) -> OffCpu {
        OffCpu {
            out_ts: 10,
            wake_ts: 110,
            in_ts: 111,
            state: 1,
            sys: Some(Sys { nr: nr::POLL, fd: 5, arg: nfds }),
            facts: WaitFacts { fd, gil: false },
        }
    }

    #[test]
    fn a_timed_out_poll_is_a_sleep_unless_it_waited_on_a_socket() {
        let db = Some(FdKind::Socket { peer: Some("127.0.0.1:5432".into()) });
        // psycopg 3 polls its socket in 100 ms slices: each one that times out is still the
        // database's time.
        assert_eq!(classify(&poll(db.clone(), 1), Some(0)), Category::Net { peer: Some("127.0.0.1:5432".into()) });
        assert_eq!(classify(&poll(db.clone(), 1), Some(1)), Category::Net { peer: Some("127.0.0.1:5432".into()) });
        assert_eq!(classify(&poll(db, 0), Some(0)), Category::Sleep);
        assert_eq!(classify(&poll(Some(FdKind::File), 1), Some(0)), Category::Sleep);
        assert_eq!(classify(&poll(None, 1), Some(0)), Category::Sleep);
    }
}
