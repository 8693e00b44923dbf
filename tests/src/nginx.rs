//! A real nginx (Debian's) in front of an app server: `uwsgi_pass` to a uWSGI `--socket` (TCP or
//! Unix) or `proxy_pass` to an HTTP one, listening on a free loopback port with keep-alive to its
//! clients. Its access log records, per request, what nginx measured of the upstream.
use std::{
    fs,
    net::TcpStream,
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{guard::Guard, server::free_port};

/// How nginx talks to the app server.
#[derive(Clone, Debug)]
pub enum Upstream {
    /// `uwsgi_pass ADDR` (`127.0.0.1:PORT` or `unix:PATH`).
    Uwsgi(String),
    /// `proxy_pass http://ADDR` over HTTP/1.1 with upstream keep-alive off.
    Http(String),
}

pub struct Nginx {
    pub guard: Guard,
    pub port: u16,
    dir: PathBuf,
}

/// One access-log line.
#[derive(Clone, Debug)]
pub struct Access {
    pub uri: String,
    pub status: u16,
    /// `$upstream_response_time`, ms (nginx keeps it to the millisecond).
    pub upstream_ms: f64,
    /// `$request_time`, ms: from its first byte of the request to its last write of the response.
    pub request_ms: f64,
    /// `$connection_requests`: how many requests the client's connection had carried.
    pub connection_requests: u32,
}

impl Nginx {
    pub fn start(upstream: Upstream) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("introspect-nginx-{port}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("nginx dir");
        let pass = match &upstream {
            Upstream::Uwsgi(addr) => format!("include /etc/nginx/uwsgi_params; uwsgi_pass {addr};"),
            Upstream::Http(addr) => format!("proxy_http_version 1.1; proxy_set_header Connection close; proxy_pass http://{addr};"),
        };
        let d = dir.display();
        // Root workers: they reach a Unix socket and the temp dir whatever their modes.
        let conf = format!(
            "daemon off;\nmaster_process on;\nuser root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  log_format timing '$request_uri $status $upstream_response_time $request_time $connection_requests';\n  \
             access_log {d}/access.log timing;\n  keepalive_timeout 60s;\n  keepalive_requests 100000;\n  \
             client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;\n  \
             uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n  \
             server {{ listen 127.0.0.1:{port}; location / {{ {pass} }} }}\n}}\n"
        );
        let conf_path = dir.join("nginx.conf");
        fs::write(&conf_path, conf).expect("write nginx.conf");
        let out = fs::File::create(dir.join("stderr.log")).expect("nginx stderr");
        let mut cmd = Command::new("nginx");
        cmd.arg("-c").arg(&conf_path).arg("-p").arg(&dir).stdin(Stdio::null()).stdout(Stdio::null()).stderr(out);
        let guard = Guard::spawn("nginx", &mut cmd).expect("spawn nginx (is it installed? run `cargo xtask setup`)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx on port {port} not ready; {}", fs::read_to_string(dir.join("error.log")).unwrap_or_default());
            thread::sleep(Duration::from_millis(30));
        }
        Self { guard, port, dir }
    }

    /// The access log so far (nginx writes each line as the request ends).
    pub fn access(&self) -> Vec<Access> {
        let text = fs::read_to_string(self.dir.join("access.log")).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some(Access {
                    uri: f.first()?.to_string(),
                    status: f.get(1)?.parse().ok()?,
                    upstream_ms: f.get(2)?.parse::<f64>().ok()? * 1000.0,
                    request_ms: f.get(3)?.parse::<f64>().ok()? * 1000.0,
                    connection_requests: f.get(4)?.parse().ok()?,
                })
            })
            .collect()
    }

    pub fn error_log(&self) -> String {
        fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.guard.stop_with(libc::SIGQUIT, Duration::from_secs(5));
        let _ = fs::remove_dir_all(&self.dir);
    }
}
