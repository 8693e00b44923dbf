//! A memory-limited cgroup for a test: the memory controller of the cgroup v2 hierarchy when it
//! has one (`memory.max`), else the v1 memory hierarchy (`memory.limit_in_bytes`; on this project's
//! machine kind the v2 hierarchy has no memory controller). Processes moved in are moved back out
//! and the cgroup removed when dropped.
use std::{fs, path::PathBuf};

pub struct MemoryLimit {
    dir: PathBuf,
    /// Where processes go back to.
    root: PathBuf,
    pub version: u8,
}

/// The mount points of cgroup hierarchies: (v2 mount with the memory controller, v1 memory mount).
fn mounts() -> (Option<PathBuf>, Option<PathBuf>) {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    let (mut v2, mut v1) = (None, None);
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(dir), Some(kind), Some(opts)) = (f.get(1), f.get(2), f.get(3)) else { continue };
        if *kind == "cgroup2" && fs::read_to_string(format!("{dir}/cgroup.controllers")).is_ok_and(|c| c.split_whitespace().any(|c| c == "memory")) {
            v2 = Some(PathBuf::from(dir));
        } else if *kind == "cgroup" && opts.split(',').any(|o| o == "memory") {
            v1 = Some(PathBuf::from(dir));
        }
    }
    (v2, v1)
}

impl MemoryLimit {
    /// A new cgroup `name` limited to `bytes` of memory (no swap).
    pub fn new(name: &str, bytes: u64) -> Self {
        let (v2, v1) = mounts();
        let (root, version) = match (v2, v1) {
            (Some(root), _) => (root, 2),
            (None, Some(root)) => (root, 1),
            (None, None) => panic!("no cgroup hierarchy with the memory controller is mounted"),
        };
        let dir = root.join(name);
        let _ = fs::remove_dir(&dir);
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let limit = Self { dir, root, version };
        if version == 2 {
            limit.write("memory.max", &bytes.to_string());
            let _ = fs::write(limit.dir.join("memory.swap.max"), "0");
        } else {
            limit.write("memory.limit_in_bytes", &bytes.to_string());
            let _ = fs::write(limit.dir.join("memory.memsw.limit_in_bytes"), bytes.to_string());
        }
        limit
    }

    fn write(&self, file: &str, value: &str) {
        let path = self.dir.join(file);
        fs::write(&path, value).unwrap_or_else(|e| panic!("writing {value} to {}: {e}", path.display()));
    }

    /// Moves process `pid` (all its threads) into the cgroup.
    pub fn add(&self, pid: u32) {
        self.write("cgroup.procs", &pid.to_string());
    }

    pub fn describe(&self) -> String {
        format!("cgroup v{} at {}", self.version, self.dir.display())
    }
}

impl Drop for MemoryLimit {
    fn drop(&mut self) {
        if let Ok(procs) = fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in procs.split_whitespace() {
                let _ = fs::write(self.root.join("cgroup.procs"), pid);
            }
        }
        let _ = fs::remove_dir(&self.dir);
    }
}
