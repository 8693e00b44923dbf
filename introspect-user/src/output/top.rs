//! `introspect top`'s table: routes ranked by the time they consume, redrawn after each drain.
//! Full-screen with keys on a terminal; plain periodic tables when stdout is not one.
use std::{
    io::{self, Write},
    time::{Duration, Instant},
};

use crossterm::{
    cursor,
    event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    queue,
    terminal::{self, ClearType},
};

use super::{Counts, Sink, State, shapes::ShapeRow, summary::EndpointRow};
use crate::{run::deadlines::Running, stacks::hot::HotRow};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SortBy {
    Total,
    Count,
    Cpu,
    P99,
    Slow,
    Errors,
    Killed,
}

impl SortBy {
    fn from_key(c: char) -> Option<Self> {
        Some(match c {
            't' => SortBy::Total,
            'n' => SortBy::Count,
            'c' => SortBy::Cpu,
            'p' => SortBy::P99,
            's' => SortBy::Slow,
            'e' => SortBy::Errors,
            'k' => SortBy::Killed,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            SortBy::Total => "total time",
            SortBy::Count => "count",
            SortBy::Cpu => "CPU share",
            SortBy::P99 => "p99",
            SortBy::Slow => "slow",
            SortBy::Errors => "5xx",
            SortBy::Killed => "killed",
        }
    }

    fn sort(self, rows: &mut [EndpointRow]) {
        let key = |r: &EndpointRow| -> f64 {
            match self {
                SortBy::Total => r.total_ms,
                SortBy::Count => r.count as f64,
                SortBy::Cpu => r.share_cpu,
                SortBy::P99 => r.p99_ms.unwrap_or(0.0),
                SortBy::Slow => r.slow as f64,
                SortBy::Errors => r.errors_5xx as f64,
                SortBy::Killed => r.killed as f64,
            }
        };
        rows.sort_by(|a, b| key(b).total_cmp(&key(a)).then_with(|| a.route.cmp(&b.route)));
    }
}

/// The table as lines of text, at most `max_rows` routes.
fn render(rows: &[EndpointRow], running: &[Running], counts: &Counts, sort: SortBy, max_rows: usize, width: usize) -> Vec<String> {
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    let mut out = vec![
        format!(
            "introspect top — {} requests, {} slow, {} dropped events — sorted by {} (keys: t n c p s e k, d queries, f functions, q quits)",
            counts.requests,
            rows.iter().map(|r| r.slow).sum::<u64>(),
            counts.dropped_events,
            sort.name()
        ),
        String::new(),
        format!(
            "{:<36} {:>7} {:>7} {:>6} {:>9} {:>9} {:>9} {:>6} {:>5} {:>6} {:>9} {:>5} {:>4} {:>8}",
            "ROUTE", "COUNT", "TIME%", "CPU%", "P50 ms", "P95 ms", "P99 ms", "SLOW", "5XX", "KILLED", "SQL/REQ", "DB%", "N+1", "LOCK ms"
        ),
    ];
    for r in rows.iter().take(max_rows) {
        let route: String = format!("{} {}", r.method, r.route).chars().take(36).collect();
        // Queries per request (p50/p99), the database's share of those requests' time, requests
        // with an N+1 pattern, and their lock waits in the server.
        let sql = match &r.sql {
            Some(q) => format!(
                " {:>9} {:>4.0}% {:>4} {:>8.1}",
                format!("{}/{}", q.queries_p50, q.queries_p99),
                q.db_share * 100.0,
                q.n_plus_one,
                q.lock_wait_ms
            ),
            None => format!(" {:>9} {:>5} {:>4} {:>8}", "-", "-", "-", "-"),
        };
        out.push(format!(
            "{:<36} {:>7} {:>6.1}% {:>5.1}% {:>9} {:>9} {:>9} {:>6} {:>5} {:>6}{sql}",
            route,
            r.count,
            r.share_time * 100.0,
            r.share_cpu * 100.0,
            ms(r.p50_ms),
            ms(r.p95_ms),
            ms(r.p99_ms),
            r.slow,
            r.errors_5xx,
            r.killed
        ));
    }
    let killed_by: Vec<String> =
        rows.iter().flat_map(|r| r.killed_by.iter().map(move |(reason, n)| format!("{} {}: {n} {reason}", r.method, r.route))).collect();
    if !killed_by.is_empty() {
        out.push(String::new());
        out.push(format!("killed: {}", killed_by.join(", ")));
    }
    // --interrupt-before: requests that raised TimeoutError instead of being killed.
    let interrupted: Vec<String> =
        rows.iter().filter(|r| r.interrupted > 0).map(|r| format!("{} {}: {}", r.method, r.route, r.interrupted)).collect();
    if !interrupted.is_empty() {
        out.push(String::new());
        out.push(format!("interrupted (TimeoutError raised before the kill): {}", interrupted.join(", ")));
    }
    if !running.is_empty() {
        out.push(String::new());
        out.push(format!("{:<36} {:>8} {:>10} {:>12}  {}", "RUNNING PAST THE THRESHOLD", "PID", "ELAPSED ms", "KILL IN ms", "BY"));
        let mut running: Vec<&Running> = running.iter().collect();
        running.sort_by(|a, b| b.elapsed_ms.total_cmp(&a.elapsed_ms));
        for r in running.into_iter().take(max_rows.saturating_sub(rows.len().min(max_rows)).max(3)) {
            let what: String = format!("{} {}", r.method, r.path).chars().take(36).collect();
            let kill_in = r.kill_in_ms.map_or("-".to_string(), |k| format!("{k:.0}"));
            out.push(format!("{what:<36} {:>8} {:>10.0} {kill_in:>12}  {}", r.pid, r.elapsed_ms, r.kill_by.map_or("", |k| k.name())));
        }
    }
    // The listen backlogs: how deep each got (uWSGI's "listen queue full" is its refused).
    if !counts.listeners.is_empty() {
        out.push(String::new());
        let overflows = counts.tcp_listen_overflows.map_or(String::new(), |n| format!("   (host TCP listen overflows: {n})"));
        // Socket paths are shown whole (up to 100 characters): a cut one is no name.
        let w = counts.listeners.iter().map(|l| l.socket.chars().count()).max().unwrap_or(0).clamp(36, 100);
        out.push(format!("{:<w$} {:>8} {:>8} {:>8}{overflows}", "LISTEN BACKLOG", "PEAK", "MAX", "REFUSED"));
        for l in &counts.listeners {
            let socket: String = l.socket.chars().take(w).collect();
            let max = l.backlog_max.map_or("-".to_string(), |m| m.to_string());
            let refused = l.refused.map_or("-".to_string(), |r| r.to_string());
            out.push(format!("{socket:<w$} {:>8} {max:>8} {refused:>8}", l.backlog_peak));
        }
    }
    out.into_iter().map(|l| l.chars().take(width).collect()).collect()
}

/// Query shapes listed after the routes when stdout is not a terminal.
const PLAIN_SHAPES: usize = 10;

/// The query-shape view: the statements that took the most time across routes, at most
/// `max_rows`. Its heading line starts with "QUERY SHAPE".
fn render_queries(shapes: &[ShapeRow], max_rows: usize, width: usize) -> Vec<String> {
    let mut out = vec![format!(
        "{:<60} {:>8} {:>10} {:>6} {:>8} {:>8} {:>6} {:>5} {:>4}  {}",
        "QUERY SHAPE (by total time)", "COUNT", "TIME ms", "TIME%", "MEAN ms", "MAX ms", "REQS", "N+1", "ERR", "TOP ROUTE"
    )];
    if shapes.is_empty() {
        out.push("(no queries seen yet)".into());
    }
    for s in shapes.iter().take(max_rows) {
        let shape: String = s.shape.chars().take(60).collect();
        let route = s.routes.first().map_or(String::new(), |r| format!("{} ({:.0}%)", r.route, r.time_ms / s.time_ms.max(1e-9) * 100.0));
        out.push(format!(
            "{shape:<60} {:>8} {:>10.1} {:>5.1}% {:>8.2} {:>8.1} {:>6} {:>5} {:>4}  {route}",
            s.count,
            s.time_ms,
            s.share * 100.0,
            s.mean_ms,
            s.max_ms,
            s.requests,
            s.n_plus_one,
            s.errors
        ));
    }
    out.into_iter().map(|l| l.chars().take(width).collect()).collect()
}

/// The function view: where the CPU of all requests went, by Python function, at most
/// `max_rows`. Its heading line starts with "FUNCTION".
fn render_functions(rows: &[HotRow], max_rows: usize, width: usize) -> Vec<String> {
    let mut out = vec![format!(
        "{:<50} {:>10} {:>10} {:>6} {:>10} {:>6}  {}",
        "FUNCTION (by own CPU)", "SELF ms", "TOTAL ms", "CPU%", "OFF ms", "REQS", "TOP ROUTE"
    )];
    if rows.is_empty() {
        out.push("(no samples yet)".into());
    }
    for r in rows.iter().take(max_rows) {
        let file = r.file.rsplit('/').next().unwrap_or(&r.file);
        let name = match r.line {
            Some(l) => format!("{} ({file}:{l})", r.function),
            None => format!("{} ({file})", r.function),
        };
        let name: String = name.chars().take(50).collect();
        let route = r
            .routes
            .first()
            .map_or(String::new(), |x| format!("{} {} ({:.0}%)", x.method, x.route, x.total_cpu_ms / r.total_cpu_ms.max(1e-9) * 100.0));
        out.push(format!(
            "{name:<50} {:>10.1} {:>10.1} {:>5.1}% {:>10.1} {:>6}  {route}",
            r.self_cpu_ms,
            r.total_cpu_ms,
            r.share_cpu * 100.0,
            r.off_cpu_ms,
            r.requests
        ));
    }
    out.into_iter().map(|l| l.chars().take(width).collect()).collect()
}

/// Functions listed after the routes when stdout is not a terminal.
const PLAIN_FUNCTIONS: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum View {
    Routes,
    Queries,
    Functions,
}

pub struct Top {
    interval: Duration,
    last: Option<Instant>,
    sort: SortBy,
    view: View,
    tty: bool,
    dirty: bool,
}

impl Top {
    /// `tty`: full-screen with keys; else a plain table every `interval`.
    pub fn new(interval: Duration, tty: bool) -> Self {
        Self { interval, last: None, sort: SortBy::Total, view: View::Routes, tty, dirty: false }
    }
}

impl Sink for Top {
    fn tick(&mut self, state: &State<'_>) -> io::Result<bool> {
        let (summary, counts) = (state.summary, state.counts);
        if self.tty {
            while event::poll(Duration::ZERO)? {
                if let Event::Key(k) = event::read()?
                    && k.kind == KeyEventKind::Press
                {
                    match k.code {
                        KeyCode::Char('q') | KeyCode::Esc => return Ok(true),
                        KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => return Ok(true),
                        KeyCode::Char('d') => {
                            self.view = View::Queries;
                            self.dirty = true;
                        }
                        KeyCode::Char('f') => {
                            self.view = if self.view == View::Functions { View::Routes } else { View::Functions };
                            self.dirty = true;
                        }
                        KeyCode::Char(c) => {
                            // A sort key goes back to the routes, sorted by it.
                            if let Some(s) = SortBy::from_key(c) {
                                self.sort = s;
                                self.view = View::Routes;
                                self.dirty = true;
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        if !self.dirty && self.last.is_some_and(|l| l.elapsed() < self.interval) {
            return Ok(false);
        }
        self.dirty = false;
        self.last = Some(Instant::now());
        let mut rows = summary.rows();
        self.sort.sort(&mut rows);
        let mut out = io::stdout().lock();
        if self.tty {
            let (w, h) = terminal::size().unwrap_or((120, 40));
            let max_rows = (h as usize).saturating_sub(4);
            let lines = match self.view {
                View::Routes => render(&rows, state.running, counts, self.sort, max_rows, w as usize),
                View::Queries => {
                    let mut lines = vec![
                        format!("introspect top — {} requests — query shapes across routes (keys: t n c p s e k routes, q quits)", counts.requests),
                        String::new(),
                    ];
                    lines.extend(render_queries(&summary.query_shapes(max_rows), max_rows, w as usize));
                    lines
                }
                View::Functions => {
                    let mut lines = vec![
                        format!(
                            "introspect top — {} requests — functions by the CPU they took in requests, sampled (keys: f routes, d queries, q quits)",
                            counts.requests
                        ),
                        String::new(),
                    ];
                    lines.extend(render_functions(&summary.hot.rows(max_rows), max_rows, w as usize));
                    lines
                }
            };
            queue!(out, cursor::MoveTo(0, 0), terminal::Clear(ClearType::All))?;
            for (i, l) in lines.iter().enumerate() {
                queue!(out, cursor::MoveTo(0, i as u16))?;
                write!(out, "{l}")?;
            }
        } else {
            for l in render(&rows, state.running, counts, self.sort, usize::MAX, usize::MAX) {
                writeln!(out, "{l}")?;
            }
            let shapes = summary.query_shapes(PLAIN_SHAPES);
            if !shapes.is_empty() {
                writeln!(out)?;
                for l in render_queries(&shapes, PLAIN_SHAPES, usize::MAX) {
                    writeln!(out, "{l}")?;
                }
            }
            let hot = summary.hot.rows(PLAIN_FUNCTIONS);
            if !hot.is_empty() {
                writeln!(out)?;
                for l in render_functions(&hot, PLAIN_FUNCTIONS, usize::MAX) {
                    writeln!(out, "{l}")?;
                }
            }
            writeln!(out)?;
        }
        out.flush()?;
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(route: &str, count: u64, total: f64, p99: f64) -> EndpointRow {
        EndpointRow {
            method: "GET".into(),
            route: route.into(),
            count,
            slow: 0,
            errors_5xx: 0,
            no_status: 0,
            killed: 0,
            killed_by: Default::default(),
            interrupted: 0,
            total_ms: total,
            share_time: 0.5,
            share_cpu: 0.25,
            p50_ms: Some(1.0),
            p95_ms: Some(2.0),
            p99_ms: Some(p99),
            sql: None,
        }
    }

    #[test]
    fn sorts_and_renders() {
        let mut rows = vec![row("/a", 10, 50.0, 9.0), row("/b", 99, 20.0, 1.0)];
        rows[0].sql = Some(super::super::summary::RouteSqlRow {
            requests: 10,
            queries: 210,
            queries_p50: 21,
            queries_p99: 31,
            time_ms: 20.0,
            db_share: 0.4,
            n_plus_one: 10,
            lock_wait_ms: 12.5,
        });
        SortBy::Count.sort(&mut rows);
        assert_eq!(rows[0].route, "/b");
        SortBy::P99.sort(&mut rows);
        assert_eq!(rows[0].route, "/a");
        let running = [Running {
            pid: 42,
            tid: 43,
            method: "GET".into(),
            path: "/spin/9".into(),
            elapsed_ms: 2_500.0,
            kill_in_ms: Some(700.0),
            kill_by: Some(crate::kills::Reason::GunicornTimeout),
        }];
        rows[0].killed_by.insert("gunicorn_timeout", 2);
        rows[1].interrupted = 3;
        let lines = render(&rows, &running, &Counts::default(), SortBy::P99, 10, 200);
        assert!(lines[0].contains("sorted by p99"));
        assert!(lines[3].starts_with("GET /a") && lines[3].contains("50.0%") && lines[3].contains("25.0%"));
        assert!(lines[3].ends_with("21/31   40%   10     12.5"), "{}", lines[3]);
        assert!(lines[4].ends_with("-     -    -        -"), "{}", lines[4]);
        assert!(lines.iter().any(|l| l.contains("GET /a: 2 gunicorn_timeout")), "{lines:?}");
        assert!(lines.iter().any(|l| l.starts_with("interrupted") && l.contains("GET /b: 3")), "{lines:?}");
        let run = lines.iter().find(|l| l.starts_with("GET /spin/9")).expect("the running request");
        assert!(run.contains("2500") && run.contains("700") && run.ends_with("gunicorn_timeout"), "{run}");
    }

    #[test]
    fn renders_listen_backlogs() {
        let counts = Counts {
            listeners: vec![
                crate::output::ListenerCounts { socket: "127.0.0.1:8000".into(), backlog_peak: 3, backlog_max: Some(2048), ..Default::default() },
                crate::output::ListenerCounts {
                    socket: "unix:/run/a-socket-path-longer-than-thirty-six-characters.sock".into(),
                    backlog_peak: 100,
                    backlog_max: Some(100),
                    connects: Some(900),
                    accepts: Some(850),
                    refused: Some(12),
                },
            ],
            tcp_listen_overflows: Some(4),
            ..Default::default()
        };
        let lines = render(&[], &[], &counts, SortBy::Total, 10, 200);
        let at = lines.iter().position(|l| l.starts_with("LISTEN BACKLOG")).expect("a backlog table");
        assert!(lines[at].ends_with("(host TCP listen overflows: 4)"), "{lines:#?}");
        let cols = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        assert_eq!(cols(&lines[at + 1]), ["127.0.0.1:8000", "3", "2048", "-"]);
        assert_eq!(cols(&lines[at + 2]), ["unix:/run/a-socket-path-longer-than-thirty-six-characters.sock", "100", "100", "12"]);
        // Nothing watched that listens: no table.
        assert!(!render(&[], &[], &Counts::default(), SortBy::Total, 10, 200).iter().any(|l| l.starts_with("LISTEN")));
    }

    #[test]
    fn renders_query_shapes() {
        use super::super::shapes::ShapeRoute;
        let shape = ShapeRow {
            shape: "SELECT name FROM customers WHERE id = ?".into(),
            fingerprint: "00000000000000ff".into(),
            summary: "SELECT customers".into(),
            count: 400,
            time_ms: 80.0,
            mean_ms: 0.2,
            max_ms: 1.5,
            share: 0.75,
            requests: 20,
            n_plus_one: 20,
            errors: 0,
            truncated: false,
            routes: vec![ShapeRoute { route: "GET /db/orders/{id}".into(), count: 400, time_ms: 60.0 }],
        };
        assert_eq!(render_queries(&[], 10, 200)[1], "(no queries seen yet)");
        let lines = render_queries(&[shape], 10, 300);
        assert!(lines[0].starts_with("QUERY SHAPE"));
        assert!(lines[1].starts_with("SELECT name FROM customers WHERE id = ?"), "{}", lines[1]);
        assert!(lines[1].contains("  400       80.0  75.0%     0.20      1.5     20    20    0  GET /db/orders/{id} (75%)"), "{}", lines[1]);
    }
}
