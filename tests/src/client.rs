//! A real HTTP/1.1 client that records ground truth: when each request's first byte was sent
//! and when its response's last byte was received (CLOCK_MONOTONIC, the clock the kernel stamps
//! events with), the status, and the thread the app says served it (X-Tid).
use std::{
    io::{self, Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

#[derive(Clone, Debug)]
pub struct Exchange {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub sent: Instant,
    pub received: Instant,
    /// The X-Tid response header: the native id of the thread that served the request.
    pub server_tid: Option<u32>,
    pub keep_alive: bool,
    /// The response head (status line and headers).
    pub head: String,
    /// CPU time the hypervisor stole from the VM while this exchange ran (/proc/stat), in ms:
    /// time the client's clock saw pass with nobody running, a slack for timing checks.
    pub stolen_ms: f64,
    /// Time the client's own thread waited for a CPU while this exchange ran
    /// (/proc/thread-self/schedstat), in ms: on a loaded 2-vCPU machine the client may read the
    /// response well after the server wrote it, time no server-side figure can hold.
    pub client_runq_ms: f64,
    /// Time the kernel's softirq threads (`ksoftirqd/N`) waited for a CPU and ran while this
    /// exchange ran, in ms. Under load the kernel defers loopback delivery to them; they run
    /// at normal priority, so the real-time clients and the busy workers keep them waiting,
    /// and a segment can sit there for milliseconds before either end sees it: time that
    /// belongs to neither the server nor the client.
    pub softirq_ms: f64,
}

/// The calling thread's run-queue wait so far (schedstat's second field, ns), in ms.
pub fn runq_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    stat.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 1e6
}

/// Run time plus run-queue wait of every `ksoftirqd/N` so far (schedstat's first two
/// fields), in ms. Their pids are found once.
pub fn softirq_ms() -> f64 {
    static PIDS: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();
    let pids = PIDS.get_or_init(|| {
        let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with("ksoftirqd/")))
            .collect()
    });
    pids.iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap_or_default();
            stat.split_whitespace().take(2).filter_map(|v| v.parse::<f64>().ok()).sum::<f64>() / 1e6
        })
        .sum()
}

/// The VM's steal time so far (/proc/stat `steal`, all CPUs), in ms.
pub fn steal_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: f64 = stat.lines().next().and_then(|l| l.split_whitespace().nth(8)).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    // SAFETY: no preconditions.
    ticks * 1000.0 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

impl Exchange {
    /// A response header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.head, name)
    }

    /// A numeric response header (the test apps report what they measured this way).
    pub fn header_f64(&self, name: &str) -> Option<f64> {
        self.header(name).and_then(|v| v.parse().ok())
    }

    pub fn duration_ms(&self) -> f64 {
        (self.received - self.sent).as_secs_f64() * 1e3
    }
}

/// One client connection that is reused while the server keeps it open.
pub struct Client {
    port: u16,
    keep_alive: bool,
    conn: Option<TcpStream>,
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Gives the calling thread a real-time priority (SCHED_FIFO), so that when the last byte of a
/// response lands it runs at once and stamps `received` then, not after a busy CPU frees up: the
/// ground truth must not include the client's own scheduling delay. Best effort: only a
/// privileged process may raise its priority (the suites run as root).
pub fn measure_precisely() {
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: valid pointer; affects only the calling thread.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
}

/// The zero-length last chunk has arrived (trailers are not used by the test apps).
fn chunked_done(body: &[u8]) -> bool {
    body == b"0\r\n\r\n" || body.ends_with(b"\r\n0\r\n\r\n")
}

impl Client {
    pub fn new(port: u16, keep_alive: bool) -> Self {
        Self { port, keep_alive, conn: None }
    }

    fn connect(&mut self) -> io::Result<&mut TcpStream> {
        if self.conn.is_none() {
            let s = TcpStream::connect(("127.0.0.1", self.port))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(60)))?;
            self.conn = Some(s);
        }
        Ok(self.conn.as_mut().expect("just connected"))
    }

    /// Sends one request and reads its whole response (Content-Length or chunked).
    pub fn request(&mut self, method: &str, path: &str) -> io::Result<Exchange> {
        // Read outside the timed part.
        let (steal_before, runq_before, softirq_before) = (steal_ms(), runq_ms(), softirq_ms());
        let mut ex = self.exchange(method, path)?;
        ex.stolen_ms = steal_ms() - steal_before;
        ex.client_runq_ms = runq_ms() - runq_before;
        ex.softirq_ms = softirq_ms() - softirq_before;
        Ok(ex)
    }

    fn exchange(&mut self, method: &str, path: &str) -> io::Result<Exchange> {
        let conn_header = if self.keep_alive { "keep-alive" } else { "close" };
        let req =
            format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUser-Agent: introspect-tests\r\nConnection: {conn_header}\r\n\r\n", self.port);
        let conn = self.connect()?;
        let sent = Instant::now();
        if let Err(e) = conn.write_all(req.as_bytes()) {
            // A kept-alive connection the server closed meanwhile: retry once on a new one.
            self.conn = None;
            if !self.keep_alive {
                return Err(e);
            }
            return self.exchange(method, path);
        }
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 16384];
        let (head_end, received) = loop {
            let n = conn.read(&mut chunk)?;
            if n == 0 {
                self.conn = None;
                if buf.is_empty() && self.keep_alive {
                    return self.exchange(method, path);
                }
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before the response head"));
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break (i + 4, Instant::now());
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let chunked = header(&head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let mut received = received;
        let bodiless = method == "HEAD" || status == 204 || status == 304 || status < 200;
        if !bodiless {
            if chunked {
                while !chunked_done(&buf[head_end..]) {
                    let n = conn.read(&mut chunk)?;
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    received = Instant::now();
                }
            } else if let Some(len) = header(&head, "content-length").and_then(|v| v.parse::<usize>().ok()) {
                while buf.len() < head_end + len {
                    let n = conn.read(&mut chunk)?;
                    if n == 0 {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-body"));
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    received = Instant::now();
                }
            } else {
                while conn.read(&mut chunk)? > 0 {
                    received = Instant::now();
                }
            }
        }
        let server_keeps = header(&head, "connection").is_none_or(|v| !v.eq_ignore_ascii_case("close"));
        if !(self.keep_alive && server_keeps) {
            self.conn = None;
        }
        Ok(Exchange {
            method: method.to_string(),
            path: path.to_string(),
            status,
            sent,
            received,
            server_tid: header(&head, "x-tid").and_then(|v| v.parse().ok()),
            keep_alive: self.keep_alive,
            head,
            stolen_ms: 0.0,
            client_runq_ms: 0.0,
            softirq_ms: 0.0,
        })
    }
}
