//! What introspect gives up at start: unless `--interrupt-before` asks it to write to a watched
//! process, a seccomp filter on every thread makes the ways of writing to another process fail
//! with EPERM — process_vm_writev, ptrace, pidfd_getfd, io_uring (whose operations seccomp does
//! not see) — and opening any file for writing except in the output directories opened before
//! (so /proc/PID/mem cannot be opened for writing). With `--interrupt-before` only
//! process_vm_writev stays allowed: the one write it makes.
use std::{collections::BTreeMap, os::fd::RawFd};

use seccompiler::{BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch};

#[derive(Debug, thiserror::Error)]
#[error("installing the seccomp filter that forbids writing to other processes: {0}")]
pub struct ForbidError(String);

fn err(e: impl std::fmt::Display) -> ForbidError {
    ForbidError(e.to_string())
}

/// Forbids writes to other processes from now on, in every thread; `writable_dirs` are
/// directory fds under which files may still be created (`openat(dir, ...)`), and
/// `allow_process_writes` keeps process_vm_writev (`--interrupt-before`).
pub fn forbid_writes(writable_dirs: &[RawFd], allow_process_writes: bool) -> Result<(), ForbidError> {
    let accmode =
        |mode: i32| SeccompCondition::new(2, SeccompCmpArgLen::Dword, SeccompCmpOp::MaskedEq(libc::O_ACCMODE as u64), mode as u64).map_err(err);
    // openat(dirfd, path, flags): for writing, and not under an allowed directory.
    let openat_rule = |mode: i32| -> Result<SeccompRule, ForbidError> {
        let mut conds = vec![accmode(mode)?];
        for &fd in writable_dirs {
            conds.push(SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, fd as u32 as u64).map_err(err)?);
        }
        SeccompRule::new(conds).map_err(err)
    };
    let open_rule = |mode: i32| -> Result<SeccompRule, ForbidError> {
        SeccompRule::new(vec![
            SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::MaskedEq(libc::O_ACCMODE as u64), mode as u64).map_err(err)?,
        ])
        .map_err(err)
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for always in [libc::SYS_ptrace, libc::SYS_pidfd_getfd, libc::SYS_io_uring_setup, libc::SYS_openat2, libc::SYS_creat] {
        rules.insert(always, Vec::new());
    }
    if !allow_process_writes {
        rules.insert(libc::SYS_process_vm_writev, Vec::new());
    }
    rules.insert(libc::SYS_open, vec![open_rule(libc::O_WRONLY)?, open_rule(libc::O_RDWR)?]);
    rules.insert(libc::SYS_openat, vec![openat_rule(libc::O_WRONLY)?, openat_rule(libc::O_RDWR)?]);
    let eperm = SeccompAction::Errno(libc::EPERM as u32);
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, eperm, TargetArch::x86_64).map_err(err)?;
    let program: BpfProgram = filter.try_into().map_err(err)?;
    seccompiler::apply_filter_all_threads(&program).map_err(err)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    /// The filter is per process tree: checked in a child so the test runner keeps its rights.
    #[test]
    fn writes_to_other_processes_fail_and_allowed_directories_stay_writable() {
        if std::env::var_os("INTROSPECT_FORBID_CHILD").is_some() {
            let dir = std::env::temp_dir().join(format!("introspect-forbid-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let out = crate::output::files::OutDir::open(&dir).unwrap();
            super::forbid_writes(&[out.fd()], false).unwrap();
            let parent = std::os::unix::process::parent_id();
            let byte = std::hint::black_box([0u8; 1]);
            let here = byte.as_ptr() as u64;
            let denied = crate::proc::mem::write_mem(std::process::id(), here, &[1]).unwrap_err();
            assert_eq!(denied.source.raw_os_error(), Some(libc::EPERM), "{denied}");
            let mem = std::fs::OpenOptions::new().write(true).open(format!("/proc/{parent}/mem")).unwrap_err();
            assert_eq!(mem.raw_os_error(), Some(libc::EPERM));
            assert_eq!(std::fs::File::create(dir.join("x")).unwrap_err().raw_os_error(), Some(libc::EPERM), "not through the allowed fd");
            std::io::Write::write_all(&mut out.create("allowed").unwrap(), b"ok").unwrap();
            assert!(std::fs::read_to_string("/proc/self/status").unwrap().contains("Seccomp:\t2"));
            return;
        }
        let me = std::env::current_exe().unwrap();
        let status = Command::new(me)
            .args(["run::forbid::tests::writes_to_other_processes_fail_and_allowed_directories_stay_writable", "--exact", "--nocapture"])
            .env("INTROSPECT_FORBID_CHILD", "1")
            .status()
            .unwrap();
        assert!(status.success());
    }
}
