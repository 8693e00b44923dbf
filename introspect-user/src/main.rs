//! introspect: parse, dispatch, map errors to exit codes (2 for usage and permission errors).
//!
//! The tree follows the data: `probe` (the only aya code) → `event` (decode, recordings) →
//! `proto` (one parser per wire protocol) → `assemble` (requests and calls, what each fd is) →
//! `breakdown`, `stacks` → `run` (the pipeline, the live host, the watch loop) → `output`
//! (every output behind one `Sink` trait); `proc` reads /proc; `cmd` has one file per command.
#![deny(clippy::print_stdout)] // stdout is data only: every output goes through a sink.

mod assemble;
mod breakdown;
mod cli;
mod clock;
mod cmd;
mod event;
mod kills;
mod output;
mod probe;
mod proc;
mod proto;
mod run;
mod sql;
mod stacks;

use std::{io, process::ExitCode};

use clap::Parser;

/// An error the user can fix by changing how the command is run: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Watch(args) => cmd::watch::run(args),
        cli::Command::Replay(args) => cmd::replay::run(args),
        cli::Command::Dump(args) => cmd::dump::run(args),
        cli::Command::Record(args) => cmd::record::run(args),
        cli::Command::Flamegraph(args) => cmd::flamegraph::run(args),
        cli::Command::Top(args) => cmd::top::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `introspect watch ... | head` ends quietly.
        Err(e) if e.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("introspect: {e:#}");
            if e.downcast_ref::<UsageError>().is_some() { ExitCode::from(2) } else { ExitCode::FAILURE }
        }
    }
}
