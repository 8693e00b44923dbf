//! `introspect top`: a watch whose only output is the live table ([`crate::output::top`]).
use std::{
    io::{self, IsTerminal},
    time::Duration,
};

use crossterm::{cursor, execute, terminal};

use crate::{
    cli::TopArgs,
    output::top::Top,
    run::live::{self, Session},
};

/// Puts the terminal back however `top` ends.
struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        let _ = terminal::disable_raw_mode();
        let _ = execute!(io::stdout(), cursor::Show, terminal::LeaveAlternateScreen);
    }
}

pub fn run(args: TopArgs) -> anyhow::Result<()> {
    let tty = io::stdout().is_terminal();
    let mut session = Session::new(args.target, args.reporting, args.duration);
    // The function view is where all requests' CPU went: it needs every request sampled.
    session.profile_all = true;
    // Keys are read between drains: a fixed, short interval keeps it responsive.
    session.poll_interval = Some(Duration::from_millis(10));
    session.kill_timeout = args.servers.kill_timeout;
    session.interrupt_before = args.servers.interrupt_before;
    session.interrupt_dry_run = args.servers.interrupt_dry_run;
    session.try_write = args.servers.try_write;
    session.sql_capture = args.sql.sql_capture_bytes;
    session.sql_literals = args.sql.sql_literals;
    session.pg_dsn = args.sql.pg_dsn.clone();
    let _guard = if tty {
        execute!(io::stdout(), terminal::EnterAlternateScreen, cursor::Hide)?;
        terminal::enable_raw_mode()?;
        Some(TerminalGuard)
    } else {
        None
    };
    // A full-screen view owns the terminal: no warnings on stderr.
    live::watch(&session, vec![Box::new(Top::new(args.interval, tty))])
}
