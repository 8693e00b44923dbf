//! Running `introspect` under test: stdout lines are parsed as they arrive and stamped with when
//! they arrived (for alert latency), stderr is kept for failure messages.
use std::{
    io::{BufRead, BufReader},
    process::{Command, Output, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{guard::Guard, introspect_bin};

/// A JSON line from introspect's stdout and when the harness read it.
#[derive(Clone, Debug)]
pub struct Line {
    pub at: Instant,
    /// The line exactly as printed.
    pub raw: String,
    pub json: Value,
}

impl Line {
    pub fn ty(&self) -> &str {
        self.json["type"].as_str().unwrap_or("")
    }
}

pub struct Watch {
    guard: Guard,
    lines: mpsc::Receiver<Line>,
    seen: Vec<Line>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<thread::JoinHandle<()>>,
}

/// Runs `introspect` to completion (for argument and permission errors).
/// `introspect top ARGS` with stdout to a pipe (its plain tables), under a guard; the thread
/// returns everything it printed once it exits (give it a `--duration`).
pub fn top(args: &[&str]) -> (Guard, std::thread::JoinHandle<String>) {
    let mut cmd = Command::new(introspect_bin());
    cmd.arg("top").args(args).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut guard = Guard::spawn("introspect top", &mut cmd).expect("spawn introspect top");
    let stdout = guard.child_mut().stdout.take().expect("top's stdout");
    (guard, std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default()))
}

pub fn run(args: &[&str]) -> Output {
    Command::new(introspect_bin()).args(args).output().expect("run introspect")
}

/// `introspect replay FILE ARGS`: the lines it prints (it must succeed).
pub fn replay(recording: &std::path::Path, args: &[&str]) -> Vec<Line> {
    let out = Command::new(introspect_bin()).arg("replay").arg(recording).args(args).output().expect("run introspect replay");
    assert!(out.status.success(), "replay of {} failed: {}", recording.display(), String::from_utf8_lossy(&out.stderr));
    let at = Instant::now();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| Line {
            at,
            raw: l.to_string(),
            json: serde_json::from_str(l).unwrap_or_else(|e| panic!("replay printed a line that is not JSON ({e}): {l}")),
        })
        .collect()
}

impl Watch {
    /// Starts `introspect watch ARGS` and waits until it says it is watching.
    pub fn start(args: &[&str]) -> Self {
        let mut cmd = Command::new(introspect_bin());
        cmd.arg("watch").args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut guard = Guard::spawn("introspect", &mut cmd).expect("spawn introspect");
        let stdout = guard.child_mut().stdout.take().expect("piped stdout");
        let stderr = guard.child_mut().stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        let out_reader = thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let json = serde_json::from_str(&line).unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
                if tx.send(Line { at: Instant::now(), raw: line, json }).is_err() {
                    break;
                }
            }
        });
        let err_text = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let err_copy = Arc::clone(&err_text);
        let err_reader = thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("watching") {
                    let _ = ready_tx.send(());
                }
                let mut t = err_copy.lock().expect("stderr lock");
                t.push_str(&line);
                t.push('\n');
            }
        });
        let mut w = Self { guard, lines, seen: Vec::new(), stderr: err_text, readers: vec![out_reader, err_reader] };
        if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let status = w.guard.try_wait();
            panic!("introspect did not start (exit {status:?}); stderr:\n{}", w.stderr());
        }
        w
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    fn pump(&mut self) {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
    }

    /// Waits up to `timeout` for a line matching `pred` and returns it.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Line) -> bool) -> Option<Line> {
        let deadline = Instant::now() + timeout;
        self.pump();
        let mut checked = 0;
        loop {
            if let Some(l) = self.seen[checked..].iter().find(|l| pred(l)) {
                return Some(l.clone());
            }
            checked = self.seen.len();
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => return None,
            }
        }
    }

    /// The next line, waiting up to `timeout`.
    pub fn next_line(&mut self, timeout: Duration) -> Option<Line> {
        let l = self.lines.recv_timeout(timeout).ok()?;
        self.seen.push(l.clone());
        Some(l)
    }

    /// SIGTERM, wait for a clean exit, and return every line it printed.
    pub fn stop(mut self) -> Vec<Line> {
        let status = self.guard.stop_with(libc::SIGTERM, Duration::from_secs(15));
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        self.pump();
        assert!(status.is_some_and(|s| s.success()), "introspect exited with {status:?}; stderr:\n{}", self.stderr());
        std::mem::take(&mut self.seen)
    }
}
