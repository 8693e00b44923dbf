//! `cargo xtask`: set-up, build, test and demo for introspect, so that a fresh machine needs
//! nothing but these commands.
mod bench;
mod demo;
mod setup;

use std::{
    path::PathBuf,
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (idempotent; fast when everything is present).
    Setup,
    /// Set up, then build the release `introspect` binary (eBPF programs embedded).
    Build,
    /// Set up, build, and run the whole suite: unit tests and the integration suites against
    /// real servers (needs root).
    Test {
        /// Extra arguments for the integration test binaries (a test name filter, --nocapture).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Run introspect against a bundled gunicorn + Flask app under load for about a minute.
    Demo,
    /// Measure introspect's overhead against a baseline and py-spy; prints a table and writes
    /// bench-out/bench.json.
    Bench,
    /// (internal) the bench's fast HTTP server.
    #[command(hide = true)]
    BurstServer { port: u16 },
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask has a parent").to_path_buf()
}

/// Runs a command, failing with its name when it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// Set-up and a release build, with the harness pointed at both (for demo and bench).
pub fn prepare() -> anyhow::Result<setup::Env> {
    let env = setup::setup()?;
    let bin = build()?;
    // The harness finds the binary and the virtualenv through these.
    // SAFETY: single-threaded at this point.
    unsafe {
        std::env::set_var("INTROSPECT_BIN", &bin);
        std::env::set_var("INTROSPECT_VENV", &env.venv);
    }
    Ok(env)
}

pub fn build() -> anyhow::Result<PathBuf> {
    eprintln!("xtask: building introspect (release)");
    run(cargo().args(["build", "--release", "--package", "introspect-user"]))?;
    Ok(root().join("target/release/introspect"))
}

/// Formatting and lints, before anything runs: `cargo fmt --check` over every crate, clippy with
/// warnings denied over the host crates and, with the nightly, over the eBPF programs.
fn lint() -> anyhow::Result<()> {
    eprintln!("xtask: cargo fmt --check, clippy -D warnings");
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args(["clippy", "--release", "--all-targets", "--", "-D", "warnings"]))?;
    run(Command::new("rustup")
        .current_dir(root())
        .args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "--release",
            "--package",
            "introspect-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .args(["--", "-D", "warnings"]))
}

fn test(args: &[String]) -> anyhow::Result<()> {
    let env = setup::setup()?;
    lint()?;
    let bin = build()?;
    eprintln!("xtask: unit tests");
    run(cargo().args(["test", "--release", "--package", "introspect-common", "--package", "introspect-user"]))?;
    eprintln!("xtask: integration suites (real gunicorn, real kernel)");
    // One at a time: the suites compare timings against a client on a 2-core machine.
    run(cargo()
        .args(["test", "--release", "--package", "introspect-tests", "--"])
        .args(["--test-threads", "1"])
        .args(args)
        .env("INTROSPECT_BIN", &bin)
        .env("INTROSPECT_VENV", &env.venv))?;
    Ok(())
}

fn main() -> ExitCode {
    let result = match Cli::parse().cmd {
        Cmd::Setup => setup::setup().map(drop),
        Cmd::Build => setup::setup().and_then(|_| build()).map(drop),
        Cmd::Test { args } => test(&args),
        Cmd::Demo => demo::run(),
        Cmd::Bench => bench::run(),
        Cmd::BurstServer { port } => bench::serve_burst(port),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
