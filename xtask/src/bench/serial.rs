//! The serial measurement (one worker and one client on one CPU, so time per request is
//! 1/throughput) and what processes nobody watches pay: pipe and TCP round trips, an unhooked
//! syscall and a hooked futex, each without and with the tracer attached. And what a query
//! costs: a page that runs 21 queries on PostgreSQL (its server on the same CPU) against the
//! hello-world page that runs none, on the same worker, in the same rounds; and both pages once
//! more with the SQL capture off (`--sql-capture-bytes 0`), which tells what reading the
//! statements costs apart from the hooks every syscall, switch and segment of a query passes.
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use anyhow::bail;
use introspect_tests::{postgres::Postgres, server::Gunicorn};
use serde_json::{Value, json};

use super::{Config, exec_s, median, pin, pin_thread, start_tracer, wrk_on};

/// One figure without and with the tracer (medians).
#[derive(Clone, Copy)]
struct Ab {
    untraced: f64,
    traced: f64,
}

impl Ab {
    fn of(samples: &[Samples; 3], pick: fn(&Samples) -> &Vec<f64>) -> Self {
        Self::between(samples, 0, 1, pick)
    }

    fn between(samples: &[Samples; 3], a: usize, b: usize, pick: fn(&Samples) -> &Vec<f64>) -> Self {
        Self { untraced: median(pick(&samples[a]).clone()), traced: median(pick(&samples[b]).clone()) }
    }

    fn added(self) -> f64 {
        self.traced - self.untraced
    }

    fn json(self) -> Value {
        json!({"no_tracer": self.untraced, "introspect": self.traced, "added": self.added()})
    }

    /// "U unit untraced, T traced: +A unit" with `decimals` digits.
    fn line(self, unit: &str, decimals: usize) -> String {
        format!("{:.decimals$} {unit} untraced, {:.decimals$} traced: +{:.decimals$} {unit}", self.untraced, self.traced, self.added())
    }
}

/// Per-run samples of one configuration (index 0 untraced, 1 traced).
#[derive(Default)]
struct Samples {
    request_us: Vec<f64>,
    sql_request_us: Vec<f64>,
    pipe_us: Vec<f64>,
    tcp_us: Vec<f64>,
    getppid_ns: Vec<f64>,
    futex_ns: Vec<f64>,
}

/// Results of the serial and unrelated-process measurements.
pub struct Serial {
    request_us: Ab,
    /// The tracer's own CPU per request.
    tracer_us: f64,
    /// The page with `SQL_QUERIES` queries, and the tracer's own CPU per request of it.
    sql_request_us: Ab,
    sql_tracer_us: f64,
    /// Both pages traced with the SQL capture off, against untraced.
    hello_sql_off_us: Ab,
    sql_page_sql_off_us: Ab,
    sql_off_tracer_us: f64,
    pipe_us: Ab,
    tcp_us: Ab,
    /// ns per call of an unhooked syscall and of a hooked futex.
    getppid_ns: Ab,
    futex_ns: Ab,
}

impl Serial {
    pub fn json(&self) -> Value {
        let mut hello = self.request_us.json();
        hello["tracer_own_cpu"] = json!(self.tracer_us);
        let mut sql = self.sql_request_us.json();
        sql["tracer_own_cpu"] = json!(self.sql_tracer_us);
        sql["queries"] = json!(SQL_QUERIES);
        sql["added_us_per_query"] = json!(self.per_query_us());
        let mut sql_off = self.sql_page_sql_off_us.json();
        sql_off["hello_world"] = self.hello_sql_off_us.json();
        sql_off["tracer_own_cpu"] = json!(self.sql_off_tracer_us);
        sql_off["added_us_per_query"] = json!(self.per_query_sql_off_us());
        json!({
            "sql_page_with_sql_capture_off_us_per_request": sql_off,
            "hello_world_us_per_request": hello,
            "sql_page_us_per_request": sql,
            "unrelated_pipe_round_trip_us": self.pipe_us.json(),
            "unrelated_tcp_round_trip_us": self.tcp_us.json(),
            "unrelated_getppid_ns": self.getppid_ns.json(),
            "unrelated_futex_wake_ns": self.futex_ns.json(),
        })
    }

    /// What each query adds: the SQL page's added time (serving CPU and tracer) less the
    /// hello-world page's, over its queries.
    fn per_query_us(&self) -> f64 {
        let added = |ab: Ab, tracer: f64| ab.added() + tracer;
        (added(self.sql_request_us, self.sql_tracer_us) - added(self.request_us, self.tracer_us)) / SQL_QUERIES as f64
    }

    /// The same with the SQL capture off: what the hooks alone cost per query.
    fn per_query_sql_off_us(&self) -> f64 {
        (self.sql_page_sql_off_us.added() - self.hello_sql_off_us.added()) / SQL_QUERIES as f64
    }

    pub fn print(&self) {
        println!(
            "\nSerial hello-world (1 worker, wrk -c1, both on CPU 1; tracer on CPU 0): {:.1} µs/request untraced, {:.1} traced: +{:.1} µs on the serving CPU, +{:.1} µs in the tracer, +{:.1} µs in all",
            self.request_us.untraced,
            self.request_us.traced,
            self.request_us.added(),
            self.tracer_us,
            self.request_us.added() + self.tracer_us
        );
        println!(
            "Serial SQL page ({SQL_QUERIES} queries on PostgreSQL, its server on CPU 1 too): {:.1} µs/request untraced, {:.1} traced: +{:.1} µs on the serving CPU, +{:.1} µs in the tracer; {:.2} µs per query beyond the hello-world request's cost",
            self.sql_request_us.untraced,
            self.sql_request_us.traced,
            self.sql_request_us.added(),
            self.sql_tracer_us,
            self.per_query_us()
        );
        println!(
            "Serial, SQL capture off (--sql-capture-bytes 0): hello-world +{:.1} µs, SQL page +{:.1} µs on the serving CPU; {:.2} µs per query on the serving CPU (with it on: {:.2})",
            self.hello_sql_off_us.added(),
            self.sql_page_sql_off_us.added(),
            self.per_query_sql_off_us(),
            (self.sql_request_us.added() - self.request_us.added()) / SQL_QUERIES as f64
        );
        println!("Unwatched process, pipe round trip (2 writes, 2 reads, 2 context switches): {}", self.pipe_us.line("µs", 2));
        println!("Unwatched process, loopback TCP round trip (2 writes, 2 reads, 2 segments, 2 context switches): {}", self.tcp_us.line("µs", 2));
        println!(
            "Unwatched process, a syscall no program hooks (getppid): {} (every syscall of every process takes the tracing slow path while any syscall tracepoint is attached)",
            self.getppid_ns.line("ns", 0)
        );
        println!("Unwatched process, an uncontended futex wake (hooked, rejected by the programs): {}", self.futex_ns.line("ns", 0));
    }
}

const SERIAL_ROUNDS: usize = 5;
/// Queries of the SQL page: `/db/orders/20`, the last 20 orders, then each one's customer.
const SQL_QUERIES: u32 = 21;

pub fn serial_and_unrelated(bin: &std::path::Path, venv: &std::path::Path) -> anyhow::Result<Serial> {
    if thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        bail!("the serial measurement needs two CPUs");
    }
    // The database on the serving CPU too, so the SQL page's time per request is all its cost;
    // backends inherit the postmaster's affinity. The worker keeps its connection.
    let pg = Postgres::start();
    pin(pg.pid(), 1);
    let dsn = pg.dsn();
    let server = Gunicorn::start_with_env("flaskapp:app", 1, &[], &[("INTROSPECT_PG_DSN", &dsn), ("INTROSPECT_PG_PERSISTENT", "1")]);
    pin(server.master_pid(), 1);
    for w in server.workers() {
        pin(w, 1);
    }
    let url = format!("http://127.0.0.1:{}/fast", server.port);
    let sql_url = format!("http://127.0.0.1:{}/db/orders/{}", server.port, SQL_QUERIES - 1);
    wrk_on(Some(1), &url, 1, 1, 2)?;
    wrk_on(Some(1), &sql_url, 1, 1, 2)?;
    let mut samples: [Samples; 3] = Default::default();
    let mut tracer_cpu = Vec::new();
    let mut sql_tracer_cpu = Vec::new();
    let mut sql_off_tracer_cpu = Vec::new();
    for round in 0..SERIAL_ROUNDS {
        // 0 untraced, 1 traced, 2 traced with the SQL capture off.
        for config in if round % 2 == 0 { [0, 1, 2] } else { [2, 1, 0] } {
            let with = config > 0;
            let extra: &[&str] = if config == 2 { &["--sql-capture-bytes", "0"] } else { &[] };
            let tracer = if with { start_tracer(Config::Default, server.master_pid(), "500ms", bin, venv, extra)? } else { None };
            if let Some(t) = &tracer {
                pin(t.pid, 0);
            }
            let t0 = tracer.as_ref().map_or(0.0, |t| exec_s(t.pid));
            let r = wrk_on(Some(1), &url, 1, 1, 4)?;
            let t1 = tracer.as_ref().map_or(0.0, |t| exec_s(t.pid));
            let q = wrk_on(Some(1), &sql_url, 1, 1, 4)?;
            let t2 = tracer.as_ref().map_or(0.0, |t| exec_s(t.pid));
            let pipe = pipe_round_trip_us(1, 100_000)?;
            let tcp = tcp_round_trip_us(1, 50_000)?;
            let (ppid, futex) = syscall_loops_ns(1, 1_000_000)?;
            if let Some(mut t) = tracer {
                if config == 1 {
                    tracer_cpu.push((t1 - t0) / r.requests.max(1.0) * 1e6);
                    sql_tracer_cpu.push((t2 - t1) / q.requests.max(1.0) * 1e6);
                } else {
                    sql_off_tracer_cpu.push((t2 - t1) / q.requests.max(1.0) * 1e6);
                }
                t.guard.stop_with(libc::SIGTERM, Duration::from_secs(20));
            }
            let s = &mut samples[config];
            s.request_us.push(1e6 / r.rps);
            s.sql_request_us.push(1e6 / q.rps);
            s.pipe_us.push(pipe);
            s.tcp_us.push(tcp);
            s.getppid_ns.push(ppid);
            s.futex_ns.push(futex);
            eprintln!(
                "bench: serial round {round} {}: {:.1} µs/request, SQL page {:.1} µs/request, pipe round trip {pipe:.2} µs, TCP round trip {tcp:.2} µs",
                ["no tracer", "introspect", "introspect, SQL capture off"][config],
                1e6 / r.rps,
                1e6 / q.rps
            );
        }
    }
    Ok(Serial {
        request_us: Ab::of(&samples, |s| &s.request_us),
        tracer_us: median(tracer_cpu),
        sql_request_us: Ab::of(&samples, |s| &s.sql_request_us),
        sql_tracer_us: median(sql_tracer_cpu),
        hello_sql_off_us: Ab::between(&samples, 0, 2, |s| &s.request_us),
        sql_page_sql_off_us: Ab::between(&samples, 0, 2, |s| &s.sql_request_us),
        sql_off_tracer_us: median(sql_off_tracer_cpu),
        pipe_us: Ab::of(&samples, |s| &s.pipe_us),
        tcp_us: Ab::of(&samples, |s| &s.tcp_us),
        getppid_ns: Ab::of(&samples, |s| &s.getppid_ns),
        futex_ns: Ab::of(&samples, |s| &s.futex_ns),
    })
}

/// Two threads of this (unwatched) process on one CPU bounce a byte through two pipes; µs per
/// round trip.
fn pipe_round_trip_us(cpu: usize, rounds: u32) -> anyhow::Result<f64> {
    let mut a = [0i32; 2];
    let mut b = [0i32; 2];
    // SAFETY: pipe fills the arrays.
    if unsafe { libc::pipe(a.as_mut_ptr()) } != 0 || unsafe { libc::pipe(b.as_mut_ptr()) } != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    let echo = thread::spawn(move || {
        pin_thread(0, cpu);
        let mut byte = 0u8;
        for _ in 0..rounds {
            // SAFETY: valid fds and a one-byte buffer.
            unsafe {
                libc::read(a[0], (&raw mut byte).cast(), 1);
                libc::write(b[1], (&raw const byte).cast(), 1);
            }
        }
    });
    let t = thread::spawn(move || {
        pin_thread(0, cpu);
        let start = Instant::now();
        let mut byte = 1u8;
        for _ in 0..rounds {
            // SAFETY: as above.
            unsafe {
                libc::write(a[1], (&raw const byte).cast(), 1);
                libc::read(b[0], (&raw mut byte).cast(), 1);
            }
        }
        start.elapsed()
    });
    let elapsed = t.join().map_err(|_| anyhow::anyhow!("pipe thread panicked"))?;
    echo.join().map_err(|_| anyhow::anyhow!("pipe thread panicked"))?;
    for fd in a.into_iter().chain(b) {
        // SAFETY: our fds.
        unsafe { libc::close(fd) };
    }
    Ok(elapsed.as_secs_f64() * 1e6 / f64::from(rounds))
}

/// Two threads of this (unwatched) process on one CPU bounce a byte over a loopback TCP
/// connection (no Nagle); µs per round trip.
fn tcp_round_trip_us(cpu: usize, rounds: u32) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = thread::spawn(move || -> std::io::Result<()> {
        pin_thread(0, cpu);
        let (mut c, _) = listener.accept()?;
        c.set_nodelay(true)?;
        let mut byte = [0u8; 1];
        for _ in 0..rounds {
            c.read_exact(&mut byte)?;
            c.write_all(&byte)?;
        }
        Ok(())
    });
    let t = thread::spawn(move || -> std::io::Result<Duration> {
        pin_thread(0, cpu);
        let mut c = TcpStream::connect(addr)?;
        c.set_nodelay(true)?;
        let mut byte = [1u8; 1];
        let start = Instant::now();
        for _ in 0..rounds {
            c.write_all(&byte)?;
            c.read_exact(&mut byte)?;
        }
        Ok(start.elapsed())
    });
    let elapsed = t.join().map_err(|_| anyhow::anyhow!("TCP thread panicked"))??;
    echo.join().map_err(|_| anyhow::anyhow!("TCP thread panicked"))??;
    Ok(elapsed.as_secs_f64() * 1e6 / f64::from(rounds))
}

/// ns per getppid (no program hooks it) and per uncontended FUTEX_WAKE (hooked), in a thread of
/// this unwatched process pinned to `cpu`.
fn syscall_loops_ns(cpu: usize, calls: u32) -> anyhow::Result<(f64, f64)> {
    let t = thread::spawn(move || {
        pin_thread(0, cpu);
        let start = Instant::now();
        for _ in 0..calls {
            // SAFETY: getppid has no arguments and no side effects.
            unsafe { libc::syscall(libc::SYS_getppid) };
        }
        let ppid = start.elapsed();
        let word = 0u32;
        let start = Instant::now();
        for _ in 0..calls {
            // SAFETY: a wake on a private word nobody waits on returns at once.
            unsafe { libc::syscall(libc::SYS_futex, &raw const word, libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, 1, 0, 0, 0) };
        }
        (ppid, start.elapsed())
    });
    let (ppid, futex) = t.join().map_err(|_| anyhow::anyhow!("syscall loop panicked"))?;
    let per = |d: Duration| d.as_secs_f64() * 1e9 / f64::from(calls);
    Ok((per(ppid), per(futex)))
}
