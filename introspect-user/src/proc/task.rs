//! A thread as /proc shows it: its kernel stack and the syscall it is in.
use std::fs;

/// The threads of process `pid` now (empty if it is gone).
pub fn threads(pid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

/// Function names of a thread's kernel stack, innermost first (/proc/PID/task/TID/stack; names
/// only: kptr_restrict hides the addresses). Empty while it runs in user space.
pub fn kernel_stack(pid: u32, tid: u32) -> Vec<String> {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/task/{tid}/stack")) else { return Vec::new() };
    text.lines()
        .filter_map(|l| {
            let sym = l.split_once("] ")?.1;
            let name = sym.split('+').next()?.trim();
            (!name.is_empty()).then(|| name.to_string())
        })
        .collect()
}

/// The user PC of a thread blocked in a syscall (None when it is running in user space).
pub fn syscall_pc(pid: u32, tid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    let last = text.split_whitespace().last()?;
    u64::from_str_radix(last.strip_prefix("0x")?, 16).ok()
}
