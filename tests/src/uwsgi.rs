//! A real uWSGI server (its master and workers) serving the Flask test app: speaking HTTP on its
//! socket (`--http-socket`), or the uwsgi protocol (`--socket`) on TCP or a Unix socket for an
//! nginx in front.
use std::{
    fs,
    net::TcpStream,
    os::unix::net::UnixStream,
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

/// Where and how the workers listen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listen {
    /// `--http-socket 127.0.0.1:PORT`: the workers speak HTTP.
    HttpSocket,
    /// `--socket 127.0.0.1:PORT`: the uwsgi protocol on TCP.
    UwsgiTcp,
    /// `--socket PATH`: the uwsgi protocol on a Unix socket.
    UwsgiUnix,
    /// `--http 127.0.0.1:PORT`: uWSGI's own HTTP router, a process of its own in front of the
    /// workers, which it reaches over the uwsgi protocol on an internal socket.
    HttpRouter,
}

pub struct Uwsgi {
    pub guard: Guard,
    /// The TCP port (also reserved, unused, for a Unix socket: it names the files).
    pub port: u16,
    /// The Unix socket's path, for [`Listen::UwsgiUnix`].
    pub socket: Option<PathBuf>,
    pub log: PathBuf,
}

impl Drop for Uwsgi {
    fn drop(&mut self) {
        if let Some(s) = &self.socket {
            let _ = fs::remove_file(s);
        }
    }
}

impl Uwsgi {
    /// `uwsgi --master --http-socket` on a free loopback port with one worker and `extra`
    /// arguments, serving tests/apps/flaskapp.py; waits until it answers.
    pub fn start(extra: &[&str]) -> Self {
        Self::start_on(Listen::HttpSocket, 1, 1, extra)
    }

    /// `uwsgi --master` listening as `listen` with `processes` workers of `threads` threads
    /// each, and `extra` arguments; waits until it accepts connections.
    pub fn start_on(listen: Listen, processes: u32, threads: u32, extra: &[&str]) -> Self {
        Self::start_with_env(listen, processes, threads, extra, &[])
    }

    /// [`Uwsgi::start_on`] with `env` set for the app (a database DSN).
    pub fn start_with_env(listen: Listen, processes: u32, threads: u32, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("introspect-uwsgi-{port}.log"));
        let socket = (listen == Listen::UwsgiUnix).then(|| std::env::temp_dir().join(format!("introspect-uwsgi-{port}.sock")));
        let logfile = fs::File::create(&log).expect("create uwsgi log");
        let apps = repo_root().join("tests/apps");
        let mut cmd = Command::new(venv().join("bin/uwsgi"));
        let tcp = format!("127.0.0.1:{port}");
        match (listen, &socket) {
            (Listen::HttpSocket, _) => cmd.args(["--http-socket", &tcp]),
            (Listen::UwsgiTcp, _) => cmd.args(["--socket", &tcp]),
            (Listen::HttpRouter, _) => cmd.args(["--http", &tcp]),
            // nginx's workers (another user) connect to it.
            (Listen::UwsgiUnix, Some(path)) => cmd.arg("--socket").arg(path).arg("--chmod-socket=666"),
            (Listen::UwsgiUnix, None) => unreachable!("a Unix socket has a path"),
        };
        cmd.current_dir(&apps)
            .args(["--master", "--processes", &processes.to_string(), "--threads", &threads.to_string()])
            .arg("--chdir")
            .arg(&apps)
            .args(["--need-app", "--die-on-term", "--disable-logging"])
            .args(extra)
            // The Flask test app unless `extra` names another (`--module djangoapp.wsgi`).
            .args(if extra.contains(&"--module") { &[][..] } else { &["--wsgi-file", "flaskapp.py", "--callable", "app"][..] })
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(logfile.try_clone().expect("dup log"))
            .stderr(logfile);
        let guard = Guard::spawn("uwsgi", &mut cmd).expect("spawn uwsgi (is it installed? run `cargo xtask setup`)");
        let server = Self { guard, port, socket, log };
        // --cheaper starts fewer workers than --processes.
        server.wait_ready(if extra.iter().any(|a| a.starts_with("--cheaper")) { 1 } else { processes as usize });
        server
    }

    /// Where nginx's `uwsgi_pass` or `proxy_pass` reaches the workers.
    pub fn upstream(&self) -> String {
        match &self.socket {
            Some(path) => format!("unix:{}", path.display()),
            None => format!("127.0.0.1:{}", self.port),
        }
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

    fn wait_ready(&self, processes: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = match &self.socket {
                Some(path) => UnixStream::connect(path).is_ok(),
                None => TcpStream::connect(("127.0.0.1", self.port)).is_ok(),
            };
            if up && self.workers().len() >= processes {
                thread::sleep(Duration::from_millis(300));
                return;
            }
            assert!(Instant::now() < deadline, "uwsgi on port {} not ready after 30 s; log:\n{}", self.port, self.log_text());
            thread::sleep(Duration::from_millis(50));
        }
    }
}
