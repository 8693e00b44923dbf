//! The programs and where they attach, declared once: the syscall programs come from the
//! syscall table (`introspect_common::syscalls`), the others are listed here. An optional attach
//! point may be missing on a kernel; what is lost without it is said in a warning.
use introspect_common::syscalls::{Exit, TABLE, prog};

use super::tracefs::{Tracefs, TracefsError};

/// A tracepoint a program attaches to.
pub struct Point {
    pub category: &'static str,
    pub name: String,
    /// `Some(what is lost)`: the watch goes on without it.
    pub optional: Option<String>,
}

pub struct Program {
    pub name: &'static str,
    pub points: Vec<Point>,
}

fn required(category: &'static str, name: &str) -> Point {
    Point { category, name: name.to_string(), optional: None }
}

/// Fork and exit tracking: attached first, before the process tree is scanned.
pub fn process() -> Vec<Program> {
    vec![
        Program { name: "task_task_newtask", points: vec![required("task", "task_newtask")] },
        Program { name: "sched_sched_process_exit", points: vec![required("sched", "sched_process_exit")] },
    ]
}

/// Everything that measures requests.
pub fn request() -> Vec<Program> {
    let mut out = vec![Program {
        name: "tcp_tcp_probe",
        points: vec![Point {
            category: "tcp",
            name: "tcp_probe".into(),
            optional: Some("requests start at their first read: the time they waited in the listen backlog (queue_ms) is not seen".into()),
        }],
    }];
    out.push(Program {
        name: "sock_inet_sock_set_state",
        points: vec![Point {
            category: "sock",
            name: "inet_sock_set_state".into(),
            optional: Some(
                "on listeners that defer accept until data arrives (uWSGI's TCP sockets), a first request's wait in the backlog (queue_ms) is not seen"
                    .into(),
            ),
        }],
    });
    // Enter programs in the table's order, each with all its syscalls.
    let mut enters: Vec<&'static str> = Vec::new();
    for s in TABLE {
        if !enters.contains(&s.enter) {
            enters.push(s.enter);
        }
    }
    let point = |s: &introspect_common::syscalls::Syscall, side: &str| Point {
        category: "syscalls",
        name: format!("sys_{side}_{}", s.tp),
        optional: s.optional.map(|lost| format!("{}: {lost}", s.name)),
    };
    for enter in enters {
        out.push(Program { name: enter, points: TABLE.iter().filter(|s| s.enter == enter).map(|s| point(s, "enter")).collect() });
    }
    for (name, exit) in [(prog::EXIT_ACCEPT, Exit::Accept), (prog::EXIT, Exit::Shared)] {
        out.push(Program { name, points: TABLE.iter().filter(|s| s.exit == exit).map(|s| point(s, "exit")).collect() });
    }
    out.push(Program { name: "sched_sched_switch", points: vec![required("sched", "sched_switch")] });
    out.push(Program { name: "sched_sched_waking", points: vec![required("sched", "sched_waking")] });
    let optional = |category, name: &str, lost: &str| Point { category, name: name.to_string(), optional: Some(lost.to_string()) };
    out.push(Program {
        name: "signal_signal_generate",
        points: vec![optional("signal", "signal_generate", "who signals a worker is not seen: a killed worker's requests end with no reason")],
    });
    out.push(Program {
        name: "signal_signal_deliver",
        points: vec![optional("signal", "signal_deliver", "a killed thread's stack at the kill is not captured")],
    });
    out.push(Program {
        name: "oom_mark_victim",
        points: vec![optional("oom", "mark_victim", "a worker the OOM killer chose is reported as killed by the kernel, without its memory")],
    });
    out
}

/// Checks every syscall argument a program reads is where the syscall ABI puts it (16 + 8*i,
/// 8 bytes) on this kernel; an optional syscall whose tracepoint is missing is skipped (its
/// attach then fails softly).
pub fn check_syscall_records(tracefs: &Tracefs) -> Result<(), TracefsError> {
    for s in TABLE {
        let tp = format!("sys_enter_{}", s.tp);
        for (field, i) in s.args {
            match tracefs.expect_field("syscalls", &tp, field, 16 + 8 * usize::from(*i), 8) {
                Err(TracefsError::Missing(_)) if s.optional.is_some() => break,
                r => r?,
            }
        }
    }
    tracefs.expect_field("syscalls", "sys_exit_read", "ret", 16, 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_syscall_is_attached_once_on_each_side_it_hooks() {
        let progs = request();
        let points: Vec<&str> = progs.iter().flat_map(|p| p.points.iter().map(|pt| pt.name.as_str())).collect();
        for s in TABLE {
            let enter = format!("sys_enter_{}", s.tp);
            assert_eq!(points.iter().filter(|p| **p == enter).count(), 1, "{enter}");
            let exit = format!("sys_exit_{}", s.tp);
            assert_eq!(points.iter().filter(|p| **p == exit).count(), usize::from(s.exit != Exit::None), "{exit}");
        }
        // close has no exit program; accept's is its own.
        assert!(!points.contains(&"sys_exit_close"));
        let accept = progs.iter().find(|p| p.name == prog::EXIT_ACCEPT).unwrap();
        assert_eq!(accept.points.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["sys_exit_accept", "sys_exit_accept4"]);
    }

    #[test]
    fn the_fd_argument_is_among_the_checked_ones() {
        use introspect_common::syscalls::FdArg;
        for s in TABLE {
            if let FdArg::Arg(i) = s.fd {
                assert!(s.args.iter().any(|(_, a)| *a == i), "{}: its fd argument {i} is read but not checked", s.name);
            }
        }
    }
}
