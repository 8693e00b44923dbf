//! A real uWSGI server (its master and workers, speaking HTTP on their socket) serving the Flask
//! test app.
use std::{
    fs,
    net::TcpStream,
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{
    guard::Guard,
    repo_root,
    server::{children, free_port},
    venv,
};

pub struct Uwsgi {
    pub guard: Guard,
    pub port: u16,
    pub log: PathBuf,
}

impl Uwsgi {
    /// `uwsgi --master --http-socket` on a free loopback port with one worker and `extra`
    /// arguments, serving tests/apps/flaskapp.py; waits until it answers.
    pub fn start(extra: &[&str]) -> Self {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("introspect-uwsgi-{port}.log"));
        let logfile = fs::File::create(&log).expect("create uwsgi log");
        let apps = repo_root().join("tests/apps");
        let mut cmd = Command::new(venv().join("bin/uwsgi"));
        cmd.current_dir(&apps)
            .args(["--master", "--http-socket", &format!("127.0.0.1:{port}"), "--processes", "1", "--threads", "1"])
            .arg("--chdir")
            .arg(&apps)
            .args(["--wsgi-file", "flaskapp.py", "--callable", "app", "--need-app", "--die-on-term", "--disable-logging"])
            .args(extra)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(logfile.try_clone().expect("dup log"))
            .stderr(logfile);
        let guard = Guard::spawn("uwsgi", &mut cmd).expect("spawn uwsgi (is it installed? run `cargo xtask setup`)");
        let server = Self { guard, port, log };
        server.wait_ready();
        server
    }

    pub fn master_pid(&self) -> u32 {
        self.guard.pid()
    }

    pub fn workers(&self) -> Vec<u32> {
        children(self.master_pid())
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() && !self.workers().is_empty() {
                thread::sleep(Duration::from_millis(300));
                return;
            }
            assert!(Instant::now() < deadline, "uwsgi on port {} not ready after 30 s; log:\n{}", self.port, self.log_text());
            thread::sleep(Duration::from_millis(50));
        }
    }
}
