//! A real MariaDB server (Debian's package) started for a test: its own data directory, port and
//! socket, run as the `mysql` user, stopped and removed when dropped.
//!
//! The server has a database `introspect` with `items (id, v)` (empty), and for N+1 tests
//! `authors (id, name)` and `books (id, title, author_id)`: 20 books, each by its own author
//! (book i is `book i` by `author i`). The apps connect over TCP to 127.0.0.1 as user
//! `introspect`, password `introspect` ([`MariaDb::dsn_env`]); the harness itself queries as root over
//! the server's Unix socket (root is authenticated by its uid, so the tests must run as root).
use std::{
    fs,
    net::TcpStream,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{guard::Guard, server::free_port};

/// The database, user and password the apps use.
pub const DB: &str = "introspect";
pub const USER: &str = "introspect";
pub const PASSWORD: &str = "introspect";

/// The N+1 tables' size: this many books, each by its own author.
pub const BOOKS: usize = 20;

pub struct MariaDb {
    guard: Guard,
    pub port: u16,
    dir: PathBuf,
}

/// The first of `candidates` that exists: Debian 12 ships the `mariadb*` names with `mysql*`
/// compatibility links.
fn find(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.exists())
}

fn server_bin() -> Option<PathBuf> {
    find(&["/usr/sbin/mariadbd", "/usr/sbin/mysqld"])
}

fn install_db_bin() -> Option<PathBuf> {
    find(&["/usr/bin/mariadb-install-db", "/usr/bin/mysql_install_db"])
}

fn client_bin() -> Option<PathBuf> {
    find(&["/usr/bin/mariadb", "/usr/bin/mysql"])
}

/// What is missing for a MariaDB test here, if anything.
fn problem() -> Option<String> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".to_string());
    }
    if server_bin().is_none() || install_db_bin().is_none() || client_bin().is_none() {
        return Some("the MariaDB server or client is not installed (mariadb-server, mariadb-client: run `cargo xtask setup`)".to_string());
    }
    None
}

/// Whether this run can start a MariaDB server. Under CI=true a missing piece fails the test
/// instead of skipping it (CI is root with `cargo xtask setup` done; a silent skip would hide a
/// broken set-up).
pub fn available(test: &str) -> bool {
    match problem() {
        None => true,
        Some(p) if std::env::var("CI").is_ok_and(|v| v == "true") => panic!("{test}: cannot run MariaDB under CI: {p}"),
        Some(p) => {
            eprintln!("{test}: SKIPPED outside CI: {p}");
            false
        }
    }
}

/// Runs a command as the mysql user (the server refuses to run as root without `--user=root`).
fn as_mysql(program: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=mysql", "--regid=mysql", "--init-groups"]).arg(program);
    c
}

/// Server options shared by `mariadb-install-db` and `mariadbd`: no option files (Debian's
/// /etc/mysql would point at the system server's socket and datadir), Debian's default character
/// set, a small redo log, no DNS lookups of clients.
fn common_args(data: &Path) -> Vec<String> {
    vec![
        "--no-defaults".into(),
        format!("--datadir={}", data.display()),
        "--character-set-server=utf8mb4".into(),
        "--collation-server=utf8mb4_general_ci".into(),
        "--innodb-log-file-size=8M".into(),
        "--skip-name-resolve".into(),
    ]
}

impl MariaDb {
    pub fn start() -> Self {
        if let Some(p) = problem() {
            panic!("cannot start MariaDB: {p}");
        }
        let (server, install_db) = (server_bin().expect("checked"), install_db_bin().expect("checked"));
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("introspect-mariadb-{port}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create MariaDB directory");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).expect("chmod");
        let status = Command::new("chown").args(["mysql:mysql"]).arg(&dir).status().expect("chown");
        assert!(status.success(), "chown {} failed", dir.display());
        let data = dir.join("data");
        let out = as_mysql(&install_db)
            .args(common_args(&data))
            .args(["--skip-test-db", "--auth-root-authentication-method=socket"])
            .stdin(Stdio::null())
            .output()
            .expect("mariadb-install-db");
        assert!(out.status.success(), "mariadb-install-db failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let log = fs::File::create(dir.join("server.log")).expect("server log");
        let mut cmd = as_mysql(&server);
        cmd.args(common_args(&data))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", dir.join("mysqld.sock").display()))
            .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
            .arg("--innodb-flush-log-at-trx-commit=0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log);
        let guard = Guard::spawn("mariadbd", &mut cmd).expect("spawn mariadbd");
        let db = Self { guard, port, dir };
        db.wait_ready();
        let mut sql = format!(
            "CREATE DATABASE {DB}; CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'; GRANT ALL PRIVILEGES ON {DB}.* TO '{USER}'@'%'; USE {DB}; \
             CREATE TABLE items (id INT PRIMARY KEY, v VARCHAR(64)); \
             CREATE TABLE authors (id INT PRIMARY KEY, name VARCHAR(64)); \
             CREATE TABLE books (id INT PRIMARY KEY, title VARCHAR(64), author_id INT);"
        );
        let rows = |f: &dyn Fn(usize) -> String| (1..=BOOKS).map(f).collect::<Vec<_>>().join(", ");
        sql += &format!("INSERT INTO authors (id, name) VALUES {};", rows(&|i| format!("({i}, 'author {i}')")));
        sql += &format!("INSERT INTO books (id, title, author_id) VALUES {};", rows(&|i| format!("({i}, 'book {i}', {i})")));
        db.run(&sql);
        db
    }

    /// Environment variables that point tests/apps/flaskapp.py's MySQL endpoints at this server
    /// (over TCP, so waits on it show the server's address).
    pub fn dsn_env(&self) -> Vec<(String, String)> {
        [
            ("INTROSPECT_MYSQL_HOST", "127.0.0.1".to_string()),
            ("INTROSPECT_MYSQL_PORT", self.port.to_string()),
            ("INTROSPECT_MYSQL_USER", USER.to_string()),
            ("INTROSPECT_MYSQL_PASSWORD", PASSWORD.to_string()),
            ("INTROSPECT_MYSQL_DB", DB.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The server's Unix socket (the harness's own connections go there, not over TCP).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("mysqld.sock")
    }

    /// The pid of the server process.
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// The `mariadb` client as root over the socket, in batch mode with the database selected
    /// (before it exists: none).
    fn client(&self, db: Option<&str>) -> Command {
        let mut c = Command::new(client_bin().expect("the MariaDB client is not installed (run `cargo xtask setup`)"));
        c.args(["--no-defaults", "--batch", "--skip-column-names", "--user=root"]).arg(format!("--socket={}", self.socket().display()));
        if let Some(db) = db {
            c.arg(format!("--database={db}"));
        }
        c
    }

    fn exec(&self, db: Option<&str>, sql: &str) -> Output {
        let out = self.client(db).arg("--execute").arg(sql).stdin(Stdio::null()).output().expect("mariadb client");
        assert!(out.status.success(), "mariadb {sql}: {}", String::from_utf8_lossy(&out.stderr));
        out
    }

    /// Runs statements (no database selected unless they say `USE`).
    pub fn run(&self, sql: &str) {
        self.exec(None, sql);
    }

    /// The result of a query in the `introspect` database: tab-separated columns, a line per
    /// row, no header, trimmed.
    pub fn query(&self, sql: &str) -> String {
        String::from_utf8_lossy(&self.exec(Some(DB), sql).stdout).trim().to_string()
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let log = || fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        // The TCP listener opens last; then the client must get in over the socket.
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && self.client(None).args(["--execute", "SELECT 1"]).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
            {
                return;
            }
            assert!(Instant::now() < deadline, "MariaDB not ready after 30 s: {}", log());
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        // SIGTERM is a normal shutdown; the guard kills what is left.
        self.guard.stop_with(libc::SIGTERM, Duration::from_secs(10));
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_with_the_books() {
        if !available("mariadb::starts_with_the_books") {
            return;
        }
        let t0 = Instant::now();
        let db = MariaDb::start();
        eprintln!("MariaDB {} up on port {} in {:?}", db.query("SELECT VERSION()"), db.port, t0.elapsed());
        assert_eq!(db.query("SELECT COUNT(*) FROM books"), "20");
        assert_eq!(db.query("SELECT COUNT(DISTINCT author_id) FROM books JOIN authors a ON a.id = author_id"), "20");
        assert_eq!(db.query("SELECT COUNT(*) FROM items"), "0");
        let (dir, pid) = (db.dir.clone(), db.pid());
        drop(db);
        assert!(!dir.exists(), "{} is left after drop", dir.display());
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "mariadbd {pid} is still running after drop");
    }
}
