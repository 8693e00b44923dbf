//! `cargo xtask setup`: everything a fresh machine of this kind lacks, installed idempotently.
//! Each step checks first and does nothing when its result is already there.
use std::{
    collections::hash_map::DefaultHasher,
    fs,
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{root, run};

/// Debian packages: LLVM 22 for bpf-linker (it must match the nightly's LLVM major), wrk for
/// load, PostgreSQL and MariaDB (server and client) for the database suites, Chromium (renders
/// the flame graphs in tests), tmux (a real terminal for `top`), curl and util-linux tools used
/// by the suites, a C compiler for building uWSGI, nginx (in front of uWSGI).
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "wrk",
    "curl",
    "util-linux",
    "postgresql",
    "postgresql-contrib",
    "mariadb-server",
    "mariadb-client",
    "python3.11",
    "python3.11-venv",
    "chromium",
    "tmux",
    "nginx",
    "gcc",
    "libc6-dev",
];

/// The interpreters the suites run the apps on: every pyenv minor version of this machine kind,
/// and Debian's own python3.11 (a static, non-PIE build with different symbols).
pub const PYTHONS: &[(&str, &str)] = &[
    // Older than introspect reads: checks that such a process still gets its requests measured.
    ("py37", "3.7"),
    ("py38", "3.8"),
    ("py39", "3.9"),
    ("py310", "3.10"),
    ("py311", "3.11"),
    ("py312", "3.12"),
    ("py313", "3.13"),
    ("debian311", "/usr/bin/python3.11"),
];

/// The environment that also gets uWSGI.
pub const UWSGI_PYTHON: &str = "py311";

pub struct Env {
    pub venv: PathBuf,
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn output(cmd: &mut Command) -> String {
    cmd.stderr(Stdio::null()).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}

fn apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p])).contains("install ok installed"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get").args(["install", "-y", "-qq", "--no-install-recommends"]).args(&missing).env("DEBIAN_FRONTEND", "noninteractive"))
}

/// rust-src for the nightly (the eBPF target builds core from source), and rustfmt and clippy
/// for both toolchains (`cargo xtask test` checks formatting and lints). Adding a component keeps
/// the toolchain's date.
fn components() -> anyhow::Result<()> {
    for (toolchain, wanted) in [("nightly", &["rust-src", "clippy", "rustfmt"][..]), ("stable", &["clippy", "rustfmt"][..])] {
        let installed = output(Command::new("rustup").args(["component", "list", "--toolchain", toolchain, "--installed"]));
        for c in wanted {
            if !installed.lines().any(|l| l.starts_with(c)) {
                eprintln!("xtask: adding {c} to the {toolchain} toolchain");
                run(Command::new("rustup").args(["component", "add", c, "--toolchain", toolchain]))?;
            }
        }
    }
    Ok(())
}

fn bpf_linker() -> anyhow::Result<()> {
    if quiet(Command::new("bpf-linker").arg("--version")) {
        return Ok(());
    }
    eprintln!("xtask: building bpf-linker against LLVM 22 (a few minutes, once)");
    // Without LLVM_PREFIX the build finds Debian's default llvm-config (LLVM 14) and fails to
    // link (-lLLVM not found).
    run(Command::new("cargo")
        .args(["install", "bpf-linker", "--version", "0.13.0", "--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", "/usr/lib/llvm-22"))
}

/// A pyenv CPython `minor` (e.g. "3.11"), or an absolute interpreter path.
fn interpreter(spec: &str) -> anyhow::Result<PathBuf> {
    if spec.starts_with('/') {
        return Ok(PathBuf::from(spec));
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let pyenv = Path::new(&home).join(".pyenv/versions");
    let mut candidates: Vec<PathBuf> = fs::read_dir(&pyenv)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("{spec}."))))
        .map(|p| p.join(format!("bin/python{spec}")))
        .filter(|p| p.exists())
        .collect();
    candidates.sort();
    candidates.pop().with_context(|| format!("CPython {spec} not found in {} (pyenv)", pyenv.display()))
}

fn venv(python: &Path, dir: &Path, requirements: &[PathBuf]) -> anyhow::Result<()> {
    let mut reqs = String::new();
    for r in requirements {
        reqs += &fs::read_to_string(r).with_context(|| format!("reading {}", r.display()))?;
    }
    let mut h = DefaultHasher::new();
    (python, &reqs).hash(&mut h);
    let stamp_value = format!("{:016x}\n", h.finish());
    let stamp = dir.join(".introspect-stamp");
    if fs::read_to_string(&stamp).is_ok_and(|s| s == stamp_value) && dir.join("bin/python").exists() {
        return Ok(());
    }
    eprintln!("xtask: creating Python environment {} from {}", dir.display(), python.display());
    let _ = fs::remove_dir_all(dir);
    run(Command::new(python).args(["-m", "venv"]).arg(dir))?;
    let mut pip = Command::new(dir.join("bin/pip"));
    pip.args(["install", "--quiet", "--disable-pip-version-check"]);
    for r in requirements {
        pip.arg("-r").arg(r);
    }
    run(&mut pip)?;
    fs::write(&stamp, stamp_value)?;
    Ok(())
}

pub fn setup() -> anyhow::Result<Env> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("setup installs Debian packages and the suites load eBPF programs: run as root");
    }
    apt_packages()?;
    components()?;
    bpf_linker()?;
    let apps = root().join("tests/apps");
    for (name, spec) in PYTHONS {
        let mut requirements = vec![apps.join("requirements.txt")];
        // uWSGI is built from source (a C compiler and the interpreter's headers, which the
        // pyenv builds have): once, for the interpreter the suites run uWSGI on.
        if *name == UWSGI_PYTHON {
            requirements.push(apps.join("requirements-uwsgi.txt"));
        }
        venv(&interpreter(spec)?, &root().join("target/venv").join(name), &requirements)?;
    }
    Ok(Env { venv: root().join("target/venv/py311") })
}
