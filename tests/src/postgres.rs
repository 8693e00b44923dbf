//! A real PostgreSQL server (Debian's package) started for a test: its own data directory and
//! port, run as the `postgres` user, stopped and removed when dropped.
use std::{
    fs,
    net::TcpStream,
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{guard::Guard, server::free_port};

pub struct Postgres {
    guard: Guard,
    pub port: u16,
    dir: PathBuf,
}

/// The newest installed server's bin directory (/usr/lib/postgresql/N/bin).
fn bin_dir() -> PathBuf {
    let mut versions: Vec<u32> = fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (run `cargo xtask setup`)")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort();
    let v = versions.last().expect("no PostgreSQL version under /usr/lib/postgresql");
    PathBuf::from(format!("/usr/lib/postgresql/{v}/bin"))
}

/// Runs a command as the postgres user (the server refuses to run as root).
fn as_postgres(program: PathBuf) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"]).arg(program);
    c
}

impl Postgres {
    pub fn start() -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("introspect-pg-{port}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create PostgreSQL directory");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).expect("chmod");
        let status = Command::new("chown").args(["postgres:postgres"]).arg(&dir).status().expect("chown");
        assert!(status.success(), "chown {} failed", dir.display());
        let data = dir.join("data");
        let out =
            as_postgres(bin_dir().join("initdb")).args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"]).arg(&data).output().expect("initdb");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let log = fs::File::create(dir.join("server.log")).expect("server log");
        let mut cmd = as_postgres(bin_dir().join("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            // Every statement's duration in the log, by backend pid: the SQL suite's ground truth.
            // UTC, as the apps' settings say, so Django sets no time zone when it connects.
            .args(["-c", "log_min_duration_statement=0", "-c", "log_line_prefix=%m [%p] ", "-c", "timezone=UTC"])
            .args(["-c", &format!("unix_socket_directories={}", dir.display())])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log);
        let guard = Guard::spawn("postgres", &mut cmd).expect("spawn postgres");
        let pg = Self { guard, port, dir };
        pg.wait_ready();
        pg.psql("CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'one');");
        // A shop for the Flask app's N+1 page: 50 customers, 200 orders.
        pg.psql(
            "CREATE TABLE customers (id int PRIMARY KEY, name text); \
             INSERT INTO customers SELECT i, 'customer ' || i FROM generate_series(1, 50) i; \
             CREATE TABLE orders (id int PRIMARY KEY, customer_id int REFERENCES customers, total numeric); \
             INSERT INTO orders SELECT i, 1 + i % 50, i * 1.5 FROM generate_series(1, 1000) i;",
        );
        pg
    }

    /// The server (postmaster) process: `setpriv` execs it.
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// A libpq connection string over TCP (so waits on it show the server's address).
    pub fn dsn(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname=postgres", self.port)
    }

    pub fn psql(&self, sql: &str) {
        let out = Command::new(bin_dir().join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-c", sql])
            .output()
            .expect("psql");
        assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The result of a query, unaligned and trimmed.
    pub fn query(&self, sql: &str) -> String {
        let out = Command::new(bin_dir().join("psql"))
            .args(["-X", "-tA", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-c", sql])
            .output()
            .expect("psql");
        assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Locks row 1 of `items` from another transaction (a psql session) for `hold`, and returns
    /// once the lock is taken. The guard ends the session if the test fails first.
    pub fn hold_row_lock(&self, hold: Duration) -> Guard {
        let sql = format!("BEGIN; SELECT id FROM items WHERE id = 1 FOR UPDATE; SELECT pg_sleep({}); COMMIT;", hold.as_secs_f64());
        let mut cmd = Command::new(bin_dir().join("psql"));
        cmd.args(["-X", "-q", "-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-c", &sql])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let guard = Guard::spawn("psql lock holder", &mut cmd).expect("spawn psql");
        self.wait_row_locked();
        guard
    }

    /// Returns once a transaction holds row 1 of `items` locked (`FOR UPDATE`).
    pub fn wait_row_locked(&self) {
        // Taken when a transaction other than ours holds a tuple lock on items.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = Command::new(bin_dir().join("psql"))
                .args(["-X", "-tA", "-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-c"])
                .arg("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 'items' AND l.mode = 'RowShareLock' AND l.granted")
                .output()
                .expect("psql");
            if String::from_utf8_lossy(&out.stdout).trim() == "1" {
                return;
            }
            assert!(Instant::now() < deadline, "the row lock was never taken");
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// What the server logged of the statements of backend `pid` (`log_min_duration_statement =
    /// 0`): how many log lines with a duration, and their sum in ms. A simple query is one line;
    /// an extended-protocol one is three (parse, bind, execute).
    pub fn logged_durations(&self, backend_pid: u32) -> Vec<(f64, String)> {
        let log = fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let tag = format!("[{backend_pid}] LOG:  duration: ");
        log.lines()
            .filter_map(|l| {
                let rest = &l[l.find(&tag)? + tag.len()..];
                let (ms, what) = rest.split_once(" ms  ")?;
                Some((ms.parse().ok()?, what.to_string()))
            })
            .collect()
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL not ready after 30 s: {}",
                fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Fast shutdown (SIGINT) so the server releases its shared memory; the guard kills what
        // is left.
        self.guard.stop_with(libc::SIGINT, Duration::from_secs(10));
        let _ = fs::remove_dir_all(&self.dir);
    }
}
