//! The bench's burst server: a minimal keep-alive HTTP server in a process of its own, fast
//! enough that the tracer's ring buffer, not Python, is what a burst tests.
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::bail;

/// A minimal keep-alive HTTP server for the burst (Python cannot serve 20k requests/s on two
/// cores; the tracer's ring buffer is what is under test). `/slow` answers after 600 ms.
pub fn burst_server() -> anyhow::Result<(u16, Child)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    drop(listener);
    // Re-exec this binary as the server so it is a separate process introspect can watch.
    let child =
        Command::new(std::env::current_exe()?).args(["burst-server", &port.to_string()]).stdin(Stdio::null()).stdout(Stdio::null()).spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("burst server did not start");
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok((port, child))
}

/// The burst server's main loop (`cargo xtask burst-server PORT`, used by the bench only).
pub fn serve_burst(port: u16) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut pending = Vec::new();
            loop {
                let n = match conn.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&pending[..end]).into_owned();
                    pending.drain(..end + 4);
                    if head.starts_with("GET /slow") {
                        thread::sleep(Duration::from_millis(600));
                    }
                    if conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nok\n").is_err() {
                        return;
                    }
                }
            }
        });
    }
    Ok(())
}
