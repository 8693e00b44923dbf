//! `introspect dump --pid PID`: the current stack of every thread of a Python process, like
//! `py-spy dump`, read from outside without pausing it.
use std::io::{self, Write};

use serde::Serialize;

use crate::{
    UsageError,
    cli::DumpArgs,
    proc::targets,
    stacks::{Frame, FrameKind, python::Interp, snapshot, symbolize::Symbols},
};

#[derive(Serialize)]
struct ThreadDump {
    tid: Option<u32>,
    stack: Vec<Frame>,
}

#[derive(Serialize)]
struct Dump {
    pid: u32,
    python: String,
    threads: Vec<ThreadDump>,
}

pub fn run(args: DumpArgs) -> anyhow::Result<()> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(UsageError("dump must run as root: it reads another process's memory".into()).into());
    }
    if !targets::exists(args.pid) {
        return Err(UsageError(format!("no process with pid {}", args.pid)).into());
    }
    let mut interp = Interp::attach(args.pid).map_err(|e| UsageError(format!("cannot read Python stacks of {}: {e}", args.pid)))?;
    let symbols = Symbols::default();
    let threads = interp.threads()?;
    let mut dump = Dump { pid: args.pid, python: format!("{}.{}", interp.rt.major, interp.rt.minor), threads: Vec::new() };
    for (tstate, tid) in threads {
        let stack = match tid {
            Some(tid) if args.native => snapshot::thread_stack(&mut interp, &symbols, tstate, tid),
            _ => interp.stack(tstate).unwrap_or_default(),
        };
        dump.threads.push(ThreadDump { tid, stack });
    }
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &dump)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "Process {} (Python {})", dump.pid, dump.python)?;
    for t in &dump.threads {
        writeln!(out, "\nThread {}:", t.tid.map_or("?".to_string(), |t| t.to_string()))?;
        for f in &t.stack {
            match (f.kind, f.line) {
                (FrameKind::Python, Some(line)) => writeln!(out, "    {} ({}:{line})", f.function, f.file)?,
                (FrameKind::Python, None) => writeln!(out, "    {} ({})", f.function, f.file)?,
                (FrameKind::Native, _) => writeln!(out, "    {} [native] {}", f.function, f.file)?,
                (FrameKind::Kernel, _) => writeln!(out, "    {} [kernel]", f.function)?,
            }
        }
    }
    Ok(())
}
