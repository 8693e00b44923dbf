//! Which server a master is and when it kills a worker: gunicorn's `--timeout` (a worker whose
//! heartbeat is older is killed) and uWSGI's `--harakiri` (a request running longer is killed),
//! read from the master's command line, environment and uWSGI ini files the way each server
//! reads them. Pure: the caller reads /proc.
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Gunicorn,
    Uwsgi,
    Other,
}

/// When a server kills a worker on its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Deadline {
    /// gunicorn: the arbiter kills a worker whose heartbeat is older than `timeout_ms`,
    /// checking about once a second.
    Heartbeat { timeout_ms: u64 },
    /// uWSGI: the master kills a worker whose request has run longer than `limit_ms`, checking
    /// about once a second with second resolution; with a graceful timeout it first sends
    /// `graceful_signal` and kills `graceful_ms` later.
    Request { limit_ms: u64, graceful_ms: Option<u64>, graceful_signal: Option<i32> },
    /// The server kills nothing on its own (timeout 0, no harakiri).
    None,
    /// Cannot be told: set where introspect does not read (a gunicorn config file).
    Unknown { why: String },
}

/// A server master and how it kills.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    pub kind: Kind,
    pub deadline: Deadline,
    /// Where the deadline comes from ("command line", "GUNICORN_CMD_ARGS", "default", an ini
    /// file, "--kill-timeout").
    pub source: String,
}

/// What is known about a master process from /proc.
pub struct Master<'a> {
    pub args: &'a [String],
    pub env: &'a [(String, String)],
    /// Reads a file as the master would see it (relative paths against its working directory),
    /// `None` when it does not exist.
    pub read: &'a dyn Fn(&str) -> Option<String>,
}

fn env<'a>(m: &'a Master<'_>, name: &str) -> Option<&'a str> {
    m.env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The value of option `long` (or `short`) in `args`: `--long V`, `--long=V`, `-s V`, `-sV`.
fn option<'a>(args: &'a [String], long: &str, short: Option<&str>) -> Option<&'a str> {
    let mut found = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == long || Some(a.as_str()) == short {
            found = it.next().map(String::as_str);
        } else if let Some(v) = a.strip_prefix(long).and_then(|r| r.strip_prefix('=')) {
            found = Some(v);
        } else if let Some(v) = short.and_then(|s| a.strip_prefix(s)).filter(|v| !v.is_empty() && !v.starts_with('-')) {
            found = Some(v);
        }
    }
    found
}

fn secs(v: &str) -> Option<u64> {
    v.trim().parse::<u64>().ok().map(|s| s * 1000)
}

/// The program a command line runs, through an interpreter (`python -m gunicorn`, a venv's
/// `bin/gunicorn` script run by python).
fn kind_of(args: &[String]) -> Kind {
    let names: Vec<&str> = args.iter().take(3).map(|a| a.rsplit('/').next().unwrap_or(a)).collect();
    // gunicorn's master names itself "gunicorn: master [app]" with setproctitle.
    if names.iter().any(|n| *n == "gunicorn" || n.starts_with("gunicorn:")) || args.windows(2).any(|w| w[0] == "-m" && w[1] == "gunicorn") {
        Kind::Gunicorn
    } else if names.iter().any(|n| *n == "uwsgi" || n.starts_with("uWSGI")) {
        Kind::Uwsgi
    } else {
        Kind::Other
    }
}

/// How the master kills workers; `kill_timeout` (introspect's `--kill-timeout`) overrides what
/// is read.
pub fn detect(m: &Master<'_>, kill_timeout: Option<Duration>) -> Server {
    let kind = kind_of(m.args);
    let mut server = match kind {
        Kind::Gunicorn => gunicorn(m),
        Kind::Uwsgi => uwsgi(m),
        Kind::Other => Server { kind, deadline: Deadline::None, source: "not gunicorn or uWSGI".into() },
    };
    if let Some(t) = kill_timeout {
        let ms = t.as_millis() as u64;
        server.deadline = match kind {
            Kind::Uwsgi => Deadline::Request { limit_ms: ms, graceful_ms: None, graceful_signal: None },
            _ => Deadline::Heartbeat { timeout_ms: ms },
        };
        server.source = "--kill-timeout".into();
    }
    server
}

/// gunicorn: settings come from its config file, then GUNICORN_CMD_ARGS, then the command line,
/// each overriding the one before (gunicorn/app/base.py); the timeout defaults to 30 s and 0
/// turns it off.
fn gunicorn(m: &Master<'_>) -> Server {
    let heartbeat = |v: &str, source: &str| match secs(v) {
        Some(0) => Server { kind: Kind::Gunicorn, deadline: Deadline::None, source: source.into() },
        Some(ms) => Server { kind: Kind::Gunicorn, deadline: Deadline::Heartbeat { timeout_ms: ms }, source: source.into() },
        None => {
            Server { kind: Kind::Gunicorn, deadline: Deadline::Unknown { why: format!("--timeout {v:?} is not a number") }, source: source.into() }
        }
    };
    if let Some(v) = option(m.args, "--timeout", Some("-t")) {
        return heartbeat(v, "command line");
    }
    let env_args: Vec<String> = env(m, "GUNICORN_CMD_ARGS").map(|v| v.split_whitespace().map(str::to_string).collect()).unwrap_or_default();
    if let Some(v) = option(&env_args, "--timeout", Some("-t")) {
        return heartbeat(v, "GUNICORN_CMD_ARGS");
    }
    let config = option(m.args, "--config", Some("-c")).or_else(|| option(&env_args, "--config", Some("-c"))).unwrap_or("gunicorn.conf.py");
    let config = config.strip_prefix("python:").unwrap_or(config);
    if (m.read)(config).is_some() {
        let why = format!("gunicorn reads its settings from {config}, which may set the timeout; give introspect --kill-timeout");
        return Server { kind: Kind::Gunicorn, deadline: Deadline::Unknown { why }, source: config.to_string() };
    }
    heartbeat("30", "default")
}

/// The `harakiri*` settings of a uWSGI ini file's `[uwsgi]` section.
fn ini_values(text: &str) -> Vec<(String, String)> {
    let mut in_uwsgi = false;
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_uwsgi = line == "[uwsgi]";
        } else if in_uwsgi && let Some((k, v)) = line.split_once('=') {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

/// uWSGI: options from ini files (`--ini FILE` or a bare `FILE.ini`), the environment
/// (`UWSGI_<OPTION>`) and the command line; the command line wins. Harakiri is enforced by the
/// master only.
fn uwsgi(m: &Master<'_>) -> Server {
    let mut values: Vec<(String, String, String)> = Vec::new();
    let inis = m.args.iter().enumerate().filter_map(|(i, a)| {
        if a == "--ini" {
            m.args.get(i + 1).map(String::as_str)
        } else {
            a.strip_prefix("--ini=").or_else(|| (a.ends_with(".ini") && !a.starts_with('-')).then_some(a.as_str()))
        }
    });
    for ini in inis.chain(env(m, "UWSGI_INI")) {
        if let Some(text) = (m.read)(ini) {
            values.extend(ini_values(&text).into_iter().map(|(k, v)| (k, v, ini.to_string())));
        }
    }
    for (k, v) in m.env {
        if let Some(opt) = k.strip_prefix("UWSGI_") {
            values.push((opt.to_ascii_lowercase().replace('_', "-"), v.clone(), k.clone()));
        }
    }
    for opt in ["harakiri", "harakiri-graceful-timeout", "harakiri-graceful-signal"] {
        let short = (opt == "harakiri").then_some("-t");
        if let Some(v) = option(m.args, &format!("--{opt}"), short) {
            values.push((opt.into(), v.into(), "command line".into()));
        }
    }
    let last = |name: &str| values.iter().rev().find(|(k, _, _)| k == name);
    let server = |deadline, source: &str| Server { kind: Kind::Uwsgi, deadline, source: source.into() };
    let Some((_, limit, source)) = last("harakiri") else { return server(Deadline::None, "no harakiri") };
    let Some(limit_ms) = secs(limit) else {
        return server(Deadline::Unknown { why: format!("harakiri {limit:?} is not a number") }, source);
    };
    if limit_ms == 0 {
        return server(Deadline::None, source);
    }
    let graceful_ms = last("harakiri-graceful-timeout").and_then(|(_, v, _)| secs(v)).filter(|&g| g > 0);
    let graceful_signal = last("harakiri-graceful-signal").and_then(|(_, v, _)| v.parse().ok());
    server(Deadline::Request { limit_ms, graceful_ms, graceful_signal }, source)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master(args: &str, env: &[(&str, &str)], files: &[(&str, &str)]) -> Server {
        let args: Vec<String> = args.split_whitespace().map(str::to_string).collect();
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let files: Vec<(String, String)> = files.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let read = move |p: &str| files.iter().find(|(k, _)| k == p).map(|(_, v)| v.clone());
        detect(&Master { args: &args, env: &env, read: &read }, None)
    }

    fn hb(ms: u64) -> Deadline {
        Deadline::Heartbeat { timeout_ms: ms }
    }

    #[test]
    fn gunicorn_timeout_from_where_gunicorn_reads_it() {
        let py = "/srv/venv/bin/python /srv/venv/bin/gunicorn";
        assert_eq!(master(&format!("{py} -w 2 app:app"), &[], &[]).deadline, hb(30_000));
        assert_eq!(master(&format!("{py} --timeout 3 app:app"), &[], &[]).deadline, hb(3_000));
        assert_eq!(master(&format!("{py} -t5 app:app"), &[], &[]).deadline, hb(5_000));
        assert_eq!(master(&format!("{py} --timeout=7 app:app"), &[], &[]).deadline, hb(7_000));
        assert_eq!(master(&format!("{py} -t 0 app:app"), &[], &[]).deadline, Deadline::None);
        let s = master(&format!("{py} app:app"), &[("GUNICORN_CMD_ARGS", "--workers 3 --timeout 9")], &[]);
        assert_eq!((s.deadline, s.source.as_str()), (hb(9_000), "GUNICORN_CMD_ARGS"));
        // The command line wins over the environment, which wins over the config file.
        assert_eq!(master(&format!("{py} -t 2 app:app"), &[("GUNICORN_CMD_ARGS", "-t 9")], &[("gunicorn.conf.py", "")]).deadline, hb(2_000));
        let s = master(&format!("{py} app:app"), &[], &[("gunicorn.conf.py", "timeout = 120\n")]);
        assert!(matches!(s.deadline, Deadline::Unknown { .. }), "{s:?}");
        let s = master(&format!("{py} -c /etc/gunicorn.py app:app"), &[], &[("/etc/gunicorn.py", "")]);
        assert!(matches!(&s.deadline, Deadline::Unknown { why } if why.contains("/etc/gunicorn.py")), "{s:?}");
        assert_eq!(master("gunicorn: master [app:app]", &[], &[]).kind, Kind::Gunicorn);
        assert_eq!(master("/usr/bin/python3 -m gunicorn app:app", &[], &[]).kind, Kind::Gunicorn);
    }

    #[test]
    fn uwsgi_harakiri_from_command_line_ini_and_environment() {
        let d = |limit_ms, graceful_ms, graceful_signal| Deadline::Request { limit_ms, graceful_ms, graceful_signal };
        assert_eq!(master("uwsgi --master --http :8000 --wsgi-file app.py", &[], &[]).deadline, Deadline::None);
        assert_eq!(master("uwsgi --master --harakiri 3 --wsgi-file app.py", &[], &[]).deadline, d(3_000, None, None));
        assert_eq!(master("uwsgi --master -t 4", &[], &[]).deadline, d(4_000, None, None));
        assert_eq!(master("uwsgi --harakiri=3 --harakiri-graceful-timeout 2", &[], &[]).deadline, d(3_000, Some(2_000), None));
        let ini = "[uwsgi]\nmaster = true\nharakiri = 6\nharakiri-graceful-timeout = 1\nharakiri-graceful-signal = 15\n[other]\nharakiri = 99\n";
        let s = master("uwsgi --ini site.ini", &[], &[("site.ini", ini)]);
        assert_eq!((s.deadline, s.source.as_str()), (d(6_000, Some(1_000), Some(15)), "site.ini"));
        assert_eq!(master("uwsgi site.ini", &[], &[("site.ini", ini)]).deadline, d(6_000, Some(1_000), Some(15)));
        assert_eq!(master("uwsgi site.ini --harakiri 2", &[], &[("site.ini", ini)]).deadline, d(2_000, Some(1_000), Some(15)));
        assert_eq!(master("uwsgi --master", &[("UWSGI_HARAKIRI", "8")], &[]).deadline, d(8_000, None, None));
    }

    #[test]
    fn kill_timeout_overrides_and_other_servers_kill_nothing() {
        let args: Vec<String> = vec!["/usr/bin/waitress-serve".into(), "app:app".into()];
        let none = |_: &str| None;
        let m = Master { args: &args, env: &[], read: &none };
        assert_eq!(detect(&m, None).deadline, Deadline::None);
        assert_eq!(detect(&m, Some(Duration::from_secs(5))).deadline, hb(5_000));
    }
}
