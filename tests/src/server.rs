//! Real Python web servers (gunicorn) serving the apps in tests/apps.
use std::{
    fs,
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{guard::Guard, repo_root, venv};

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("bind an ephemeral port")
}

/// Direct children of `pid` (gunicorn workers of a master).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) else { return Vec::new() };
    text.split_whitespace().filter_map(|s| s.parse().ok()).collect()
}

pub struct Gunicorn {
    pub guard: Guard,
    pub port: u16,
    pub log: PathBuf,
}

impl Gunicorn {
    /// Starts `gunicorn APP` from tests/apps on a free loopback port with `extra` arguments and
    /// waits until it accepts connections and its `workers` workers are up.
    pub fn start(app: &str, workers: usize, extra: &[&str]) -> Self {
        Self::start_with_env(app, workers, extra, &[])
    }

    /// As `start`, with environment variables for the app.
    pub fn start_with_env(app: &str, workers: usize, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_in(&venv(), app, workers, extra, env)
    }

    /// As `start_with_env`, from the virtual environment `venv` (one per CPython version).
    pub fn start_in(venv: &std::path::Path, app: &str, workers: usize, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("introspect-gunicorn-{port}.log"));
        let logfile = fs::File::create(&log).expect("create gunicorn log");
        let mut cmd = Command::new(venv.join("bin/gunicorn"));
        cmd.current_dir(repo_root().join("tests/apps"))
            .args(["--bind", &format!("127.0.0.1:{port}"), "--workers", &workers.to_string()])
            .args(["--graceful-timeout", "2", "--log-level", "warning"])
            .args(extra)
            .arg(app)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(logfile.try_clone().expect("dup log"))
            .stderr(logfile);
        let guard = Guard::spawn("gunicorn", &mut cmd).expect("spawn gunicorn");
        let server = Self { guard, port, log };
        server.wait_ready(workers);
        server
    }

    pub fn master_pid(&self) -> u32 {
        self.guard.pid()
    }

    pub fn workers(&self) -> Vec<u32> {
        children(self.master_pid())
    }

    fn wait_ready(&self, workers: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = TcpStream::connect(("127.0.0.1", self.port)).is_ok();
            if up && self.workers().len() >= workers {
                // Workers import the app after forking; give the last one a moment to finish.
                thread::sleep(Duration::from_millis(300));
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gunicorn on port {} not ready after 30 s; log:\n{}",
                self.port,
                fs::read_to_string(&self.log).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}
