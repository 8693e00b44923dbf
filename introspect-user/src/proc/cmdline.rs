//! A process's command line, environment, parent and working directory (/proc/PID/cmdline,
//! environ, stat, cwd): what tells which server a master is and how it kills its workers.
use std::{fs, path::PathBuf};

fn nul_split(bytes: &[u8]) -> Vec<String> {
    bytes.split(|&b| b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
}

pub fn args(pid: u32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline")).map(|b| nul_split(&b)).unwrap_or_default()
}

/// The environment the process started with.
pub fn env(pid: u32) -> Vec<(String, String)> {
    let vars = fs::read(format!("/proc/{pid}/environ")).map(|b| nul_split(&b)).unwrap_or_default();
    vars.into_iter().filter_map(|v| v.split_once('=').map(|(k, v)| (k.to_string(), v.to_string()))).collect()
}

/// Parent pid from /proc/PID/stat (the comm field may contain spaces and parentheses).
pub fn ppid(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    ppid_of(&stat)
}

pub fn ppid_of(stat: &str) -> Option<u32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Reads `path` as process `pid` sees it: relative to its working directory, inside its root.
pub fn read_as(pid: u32, path: &str) -> Option<String> {
    let p = if path.starts_with('/') { PathBuf::from(format!("/proc/{pid}/root{path}")) } else { PathBuf::from(format!("/proc/{pid}/cwd/{path}")) };
    fs::read_to_string(p).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(!args(me).is_empty());
        assert!(env(me).iter().any(|(k, _)| k == "PATH" || k == "HOME"));
        assert_eq!(ppid(me), Some(std::os::unix::process::parent_id()));
        assert_eq!(ppid_of("123 (gunicorn: worker [a b)]) S 77 123 123 0"), Some(77));
        assert!(read_as(me, "/proc/self/status").is_some());
        assert!(read_as(me, "Cargo.toml").is_some(), "relative to the working directory");
    }
}
