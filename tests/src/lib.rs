//! The harness behind introspect's integration suites and demo: real gunicorn servers, a real
//! HTTP client that records ground truth, and `introspect` itself — each process held by a guard
//! that kills its whole process group when dropped, on success or failure.
pub mod apps;
pub mod cgroup;
pub mod checks;
pub mod client;
pub mod guard;
pub mod introspect;
pub mod mariadb;
pub mod nginx;
pub mod postgres;
pub mod server;
pub mod uwsgi;

use std::path::PathBuf;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The Python virtual environment `cargo xtask setup` made (override with INTROSPECT_VENV).
pub fn venv() -> PathBuf {
    std::env::var_os("INTROSPECT_VENV").map_or_else(|| repo_root().join("target/venv/py311"), PathBuf::from)
}

/// The virtual environment of one CPython version (`target/venv/NAME`: py38 … py313, debian311).
pub fn venv_named(name: &str) -> PathBuf {
    venv().parent().map_or_else(|| PathBuf::from(name), |p| p.join(name))
}

/// The introspect binary under test (xtask sets INTROSPECT_BIN; default: the release build).
pub fn introspect_bin() -> PathBuf {
    std::env::var_os("INTROSPECT_BIN").map_or_else(|| repo_root().join("target/release/introspect"), PathBuf::from)
}

/// Whether this run may load eBPF programs. Under CI=true a missing capability fails the test
/// instead of skipping it: CI is root with BPF, and a silent skip would hide a broken set-up.
pub fn can_trace(test: &str) -> bool {
    // SAFETY: no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let problem = if !root {
        Some("not running as root".to_string())
    } else if !introspect_bin().exists() {
        Some(format!("{} is missing (run `cargo xtask test`)", introspect_bin().display()))
    } else if !venv().join("bin/gunicorn").exists() {
        Some(format!("{} has no gunicorn (run `cargo xtask setup`)", venv().display()))
    } else {
        None
    };
    match problem {
        None => true,
        Some(p) if std::env::var("CI").is_ok_and(|v| v == "true") => panic!("{test}: cannot trace under CI: {p}"),
        Some(p) => {
            eprintln!("{test}: SKIPPED outside CI: {p}");
            false
        }
    }
}
