//! The userspace pipeline, free of aya: decoded events in, outputs fed. `watch` feeds it from
//! the ring buffer, `replay` from a recording; both produce the same output for the same events.
//! What only a live system can tell (stacks, /proc, the GIL's address) it asks of a [`Live`],
//! and it hands every event, with those answers in it, to the sinks (the recorder among them).
use std::{collections::HashMap, io};

use introspect_common::{
    CLIENT_CONN,
    syscalls::{self, Wait},
};

use super::deadlines::{self, Deadlines, Running};
use crate::{
    assemble::{Assembler, EndReason, Inflight, Request},
    breakdown::{Detail, OffCpu, Timeline},
    event::{Event, FdKind, FdOrigin, Hdr, InterruptAction, Sys, WaitFacts},
    kills::{Kill, Kills},
    output::{Completed, Counts, Crossed, Interrupted, KillReport, Sink, SqlCounts, State, Summary},
    sql::NPlusOne,
    stacks::{
        Frame,
        profile::{ProfileEntry, Profiles, Sampled},
    },
};

/// A request that ended after its process got a fatal signal waits this long for the process's
/// exit before it is reported as a request that survived it (gunicorn answers 500 after its
/// SIGABRT, then the worker exits within milliseconds).
const HOLD_NS: u64 = 2_000_000_000;

#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub threshold_ns: u64,
    /// Report every request, not only slow ones.
    pub all: bool,
    /// On-CPU sampling frequency: of every watched thread when `profile_all`, else of slow
    /// requests' threads.
    pub sample_hz: u64,
    /// The all-traffic profiler is on: every request gets a profile from its samples.
    pub profile_all: bool,
    /// `--interrupt-before`: interrupt requests this long before their server kills them.
    pub interrupt: Option<Interrupting>,
    /// When repeated statements are an N+1 pattern.
    pub n_plus_one: NPlusOne,
}

#[derive(Clone, Copy, Debug)]
pub struct Interrupting {
    pub before_ns: u64,
    /// Only report what would be done.
    pub dry_run: bool,
}

/// An interruption not raised yet is taken back this long before the predicted kill (a thread
/// in C code holding the GIL would raise it only after the kill began).
const UNDO_BEFORE_NS: u64 = 150_000_000;

/// Where the interruption of a request stands.
struct InterruptState {
    start_ns: u64,
    at_ns: u64,
    kill_at: u64,
    action: InterruptAction,
}

/// What only the live host can do for the pipeline.
pub trait Live {
    /// Adds what only the running system knows to an event before anything sees it (symbolized
    /// stacks), and follows processes for the host's own caches.
    fn enrich(&mut self, _ev: &mut Event) {}
    /// Whether futex address `addr` in `pid` lies inside its interpreter's GIL.
    fn is_gil(&mut self, pid: u32, addr: u64) -> bool;
    /// What /proc says fd `fd` of `pid` is (open before the watch, or made by an unhooked
    /// syscall).
    fn proc_fd(&mut self, pid: u32, fd: i32) -> Option<FdKind>;
    /// A serving thread's wait still in progress (from the kernel), its facts not filled in.
    fn open_wait(&mut self, tid: u32) -> Option<OffCpu>;
    /// A request just crossed the threshold: start capturing its thread's stacks, and return its
    /// stack right now.
    fn slow(&mut self, request: &Inflight) -> Option<SlowStart>;
    /// A slow request ended: stop capturing its thread.
    fn done(&mut self, pid: u32, tid: u32);
    /// When worker `pid` last signalled it is alive (gunicorn's heartbeat).
    fn heartbeat(&mut self, _pid: u32) -> Option<u64> {
        None
    }
    /// The stack of thread `tid` of `pid` right now (a request nearing its kill).
    fn snapshot(&mut self, _pid: u32, _tid: u32) -> Option<Vec<Frame>> {
        None
    }
    /// Makes thread `tid` of `pid`, serving connection `fd`, raise TimeoutError; why not when
    /// it did not write.
    fn interrupt(&mut self, _pid: u32, _tid: u32, _fd: i32) -> Result<(), String> {
        Err("nothing is live".into())
    }
    /// Whether the interruption of `tid` still waits to be raised.
    fn interrupt_pending(&mut self, _pid: u32, _tid: u32) -> Option<bool> {
        None
    }
    /// Takes the interruption of `tid` back if it was not raised; true when it was taken back.
    fn interrupt_undo(&mut self, _pid: u32, _tid: u32) -> bool {
        false
    }
}

/// A slow request's thread when capture started.
pub struct SlowStart {
    pub stack: Vec<Frame>,
    /// The thread is off the CPU since then (so its stack is that wait's stack).
    pub off_cpu_since: Option<u64>,
}

/// For replays: nothing is live (every answer is in the recording already).
pub struct NotLive;

impl Live for NotLive {
    fn is_gil(&mut self, _pid: u32, _addr: u64) -> bool {
        false
    }
    fn proc_fd(&mut self, _pid: u32, _fd: i32) -> Option<FdKind> {
        None
    }
    fn open_wait(&mut self, _tid: u32) -> Option<OffCpu> {
        None
    }
    fn slow(&mut self, _request: &Inflight) -> Option<SlowStart> {
        None
    }
    fn done(&mut self, _pid: u32, _tid: u32) {}
}

pub struct Pipeline<'a> {
    cfg: Config,
    asm: Assembler,
    summary: Summary,
    sinks: Vec<Box<dyn Sink + 'a>>,
    timeline: Timeline,
    profiles: Profiles,
    sampled: Sampled,
    /// Threads of requests that crossed the threshold, and their stack at that moment.
    slow: HashMap<u32, Option<Vec<Frame>>>,
    last_forget_ns: u64,
    pub counts: Counts,
    requests: Vec<Request>,
    inflight: Vec<Inflight>,
    kills: Kills,
    deadlines: Deadlines,
    /// Requests that ended after a fatal signal to their process, until it exits (killed) or
    /// outlives them by `HOLD_NS`.
    held: Vec<Ended>,
    running: Vec<Running>,
    interrupts: HashMap<u32, InterruptState>,
}

/// A request that ended, with what the pipeline knows of it, ready to be reported.
struct Ended {
    request: Request,
    /// Its breakdown, when it is reported or may have been killed.
    detail: Option<Detail>,
    slow: bool,
    on_cpu_ns: u64,
    stack: Option<Vec<Frame>>,
    profile: Option<Vec<ProfileEntry>>,
    /// Stacks taken as its kill neared.
    before_kill: Vec<(u64, Vec<Frame>)>,
}

impl<'a> Pipeline<'a> {
    pub fn new(cfg: Config, sinks: Vec<Box<dyn Sink + 'a>>) -> Self {
        Self {
            cfg,
            asm: Assembler::new(cfg.threshold_ns),
            summary: Summary::default(),
            sinks,
            timeline: Timeline::default(),
            profiles: Profiles::new(cfg.sample_hz),
            sampled: Sampled::new(cfg.sample_hz),
            slow: HashMap::new(),
            last_forget_ns: 0,
            counts: Counts::default(),
            requests: Vec::new(),
            inflight: Vec::new(),
            kills: Kills::default(),
            deadlines: Deadlines::default(),
            held: Vec::new(),
            running: Vec::new(),
            interrupts: HashMap::new(),
        }
    }

    pub fn assembler(&mut self) -> &mut Assembler {
        &mut self.asm
    }

    fn sinks(&mut self, mut f: impl FnMut(&mut dyn Sink) -> io::Result<()>) -> io::Result<()> {
        self.sinks.iter_mut().try_for_each(|s| f(s.as_mut()))
    }

    /// What fd `fd` of `pid` is: from the syscalls seen so far, else (asking /proc once) from
    /// the live host, whose answer is recorded as an event of its own so replays know it too.
    fn fd_kind(&mut self, pid: u32, ts: u64, fd: i32, live: &mut dyn Live) -> io::Result<Option<FdKind>> {
        if fd < 0 {
            return Ok(None);
        }
        if let Some(k) = self.asm.fds().get(pid, fd) {
            return Ok(Some(k.clone()));
        }
        let Some(kind) = live.proc_fd(pid, fd) else { return Ok(None) };
        let ev = Event::Fd { hdr: Hdr { tgid: pid, tid: pid, ts }, fd, origin: FdOrigin::Proc { kind: kind.clone() } };
        self.sinks(|s| s.event(&ev))?;
        self.asm.observe(&ev, &mut Vec::new());
        Ok(Some(kind))
    }

    /// Fills in what a wait was for, as known now (a recorded fact is kept: a replay knows no
    /// more than the live run did).
    fn wait_facts(&mut self, pid: u32, ts: u64, sys: &Sys, facts: &mut WaitFacts, live: &mut dyn Live) -> io::Result<()> {
        if sys.arg == CLIENT_CONN {
            // The request's own connection: the kernel knows it is a socket.
            facts.fd.get_or_insert(FdKind::Socket { peer: Some("client".into()) });
            return Ok(());
        }
        match syscalls::by_nr(sys.nr).map(|s| s.wait) {
            Some(Wait::Futex) if !facts.gil => facts.gil = live.is_gil(pid, sys.arg),
            Some(Wait::Fd | Wait::Poll) if facts.fd.is_none() => facts.fd = self.fd_kind(pid, ts, sys.fd, live)?,
            // The set's first socket names the wait (its members are known only from the
            // epoll_ctl calls seen, never from /proc).
            Some(Wait::Epoll) if facts.fd.is_none() => {
                if let Some(fd) = self.asm.fds().epoll_member(pid, sys.fd) {
                    facts.fd = self.fd_kind(pid, ts, fd, live)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    pub fn event(&mut self, mut ev: Event, live: &mut dyn Live) -> io::Result<()> {
        live.enrich(&mut ev);
        if let Event::OffCpu { hdr, sys: Some(sys), facts, .. } = &mut ev {
            let (pid, ts, sys) = (hdr.tgid, hdr.ts, *sys);
            self.wait_facts(pid, ts, &sys, facts, live)?;
        }
        self.sinks(|s| s.event(&ev))?;
        let ev = &ev;
        // Replays: capture started here in the live run.
        if let Event::Slow { hdr, stack, off_cpu_since } = ev
            && self.slow.get(&hdr.tid).is_none_or(Option::is_none)
        {
            self.profiles.start(hdr.tid);
            if let Some(since) = off_cpu_since {
                self.profiles.off_cpu_from(hdr.tid, *since, stack.clone());
            }
            self.slow.insert(hdr.tid, Some(stack.clone()));
        }
        if let Event::Fork { .. } = ev {
            self.counts.processes_followed += 1;
        }
        if let Event::Snapshot { hdr, stack } = ev {
            self.deadlines.add_snapshot(hdr.tid, hdr.ts, stack.clone());
        }
        if let Event::Interrupt { hdr, action, kill_at } = ev {
            self.apply_interrupt(hdr, action.clone(), *kill_at)?;
        }
        self.kills.observe(ev);
        self.timeline.observe(ev);
        self.profiles.observe(ev);
        if self.cfg.profile_all {
            // A sample goes to the request its thread serves at that instant.
            let serving = match ev {
                Event::Stack { hdr, sampled: Some(_), .. } => self.asm.serving(hdr.tgid, hdr.tid),
                _ => None,
            };
            self.sampled.observe(ev, serving);
        }
        self.asm.observe(ev, &mut self.requests);
        let mut requests = std::mem::take(&mut self.requests);
        for r in requests.drain(..) {
            self.completed(r, live)?;
        }
        // Keep the allocation for the next event.
        self.requests = requests;
        if let Event::Exit { pid, .. } = ev {
            // Its requests that ended after a fatal signal were killed with it.
            let (dead, alive): (Vec<Ended>, Vec<Ended>) = std::mem::take(&mut self.held).into_iter().partition(|e| e.request.pid == *pid);
            self.held = alive;
            for e in dead {
                let kill = self.kills.kill(e.request.pid, e.request.tid, e.request.start_ns, e.request.end_ns);
                self.report(e, Some(kill))?;
            }
            self.kills.forget(*pid);
        }
        Ok(())
    }

    fn completed(&mut self, r: Request, live: &mut dyn Live) -> io::Result<()> {
        let slow = r.duration_ns() >= self.cfg.threshold_ns;
        let (from, to) = (r.start_ns + r.queue_ns, r.end_ns);
        let died = r.end == EndReason::ProcessExit;
        let signalled = !died && self.kills.signalled_during(r.pid, r.start_ns, r.end_ns);
        // Only reported requests (and killed ones) need their whole breakdown; the summary needs
        // on-CPU time.
        let detail = (slow || self.cfg.all || died || signalled).then(|| self.timeline.detail(r.tid, from, to, r.queue_ns, None));
        let on_cpu_ms = match &detail {
            Some(d) => d.breakdown.on_cpu,
            None => self.timeline.on_cpu_ms(r.tid, from, to),
        };
        // A request that crossed the threshold while running: its stacks end with it.
        let (stack, mut profile) = match self.slow.remove(&r.tid) {
            Some(stack) => {
                live.done(r.pid, r.tid);
                (stack, self.profiles.finish(r.tid))
            }
            None => {
                // Interrupted below the threshold: its write still needs the host's last look.
                if self.interrupts.contains_key(&r.tid) {
                    live.done(r.pid, r.tid);
                }
                (None, None)
            }
        };
        if self.cfg.profile_all {
            profile = Some(self.sampled.finish(r.tid, r.start_ns));
        }
        self.timeline.forget_before(r.tid, r.end_ns);
        let before_kill = self.deadlines.done(r.tid);
        let ended = Ended { request: r, detail, slow, on_cpu_ns: (on_cpu_ms * 1e6) as u64, stack, profile, before_kill };
        if died {
            let e = &ended.request;
            let kill = self.kills.kill(e.pid, e.tid, e.start_ns, e.end_ns);
            self.report(ended, Some(kill))
        } else if signalled {
            self.held.push(ended);
            Ok(())
        } else {
            self.report(ended, None)
        }
    }

    fn report(&mut self, e: Ended, kill: Option<Kill>) -> io::Result<()> {
        let r = &e.request;
        // What --interrupt-before did, known now.
        let interrupt = self.interrupts.remove(&r.tid).filter(|st| st.start_ns == r.start_ns);
        // Why an exception that was written never ran: the thread stayed in native code (one long
        // C call holding the GIL, or a blocking call that does not return to the evaluation loop).
        const NEVER_RAN: &str = "the thread stayed in native code (one long C call or blocking syscall) and never reached the evaluation loop; taken back before the kill";
        const DIED_PENDING: &str = "the worker died with it pending: the thread stayed in native code (one long C call or blocking syscall) and never reached the evaluation loop";
        let outcome = interrupt.as_ref().and_then(|st| match st.action {
            InterruptAction::Written | InterruptAction::Surfaced if kill.is_none() => Some(("raised", r.status, None)),
            // Raised, and killed anyway (the app caught it and went on).
            InterruptAction::Surfaced => Some(("raised", None, None)),
            InterruptAction::Undone => Some(("uninterruptible", None, Some(NEVER_RAN))),
            InterruptAction::Written => Some(("uninterruptible", None, Some(DIED_PENDING))),
            InterruptAction::Refused { .. } | InterruptAction::DryRun => None,
        });
        if let (Some(st), Some((outcome, status, why))) = (&interrupt, outcome) {
            let kill_by = deadlines::kill_in(&self.kills, r.pid, r.start_ns, st.at_ns).map(|k| k.1);
            let i = Interrupted {
                pid: r.pid,
                tid: r.tid,
                method: &r.method,
                path: &r.path,
                start_ns: r.start_ns,
                at_ns: st.at_ns,
                outcome,
                why,
                status,
                kill_at_ns: st.kill_at,
                kill_by,
            };
            self.sinks.iter_mut().try_for_each(|s| s.interrupted(&i))?;
            self.counts.interrupted += u64::from(outcome == "raised" && kill.is_none());
        }
        let saved = matches!(outcome, Some(("raised", _, _))) && kill.is_none();
        self.summary.record(r, e.slow, e.on_cpu_ns, kill.as_ref().map(|k| k.reason), saved, self.cfg.n_plus_one);
        if let Some(p) = e.profile.as_deref().filter(|_| self.cfg.profile_all) {
            self.summary.profile(r, p);
        }
        self.counts.requests += 1;
        let reported = e.slow || self.cfg.all;
        self.counts.reported += u64::from(reported);
        self.counts.killed += u64::from(kill.is_some());
        let kill = match (&kill, &e.detail) {
            (Some(kill), Some(detail)) => Some(KillReport { kill, detail, before_kill: &e.before_kill }),
            _ => None,
        };
        let sql = r.sql.as_ref().filter(|_| reported || kill.is_some()).map(|t| t.report(self.cfg.n_plus_one));
        let done = Completed {
            request: r,
            slow: e.slow,
            detail: e.detail.as_ref().filter(|_| reported),
            stack: e.stack.as_deref(),
            profile: e.profile.as_deref(),
            kill,
            sql: sql.as_ref(),
        };
        self.sinks.iter_mut().try_for_each(|s| s.request(&done))
    }

    /// Every running request: when its server will kill it, a warning a
    /// second before, stacks until then; and the list `top` shows.
    fn watch_running(&mut self, now_ns: u64, live: &mut dyn Live) -> io::Result<()> {
        let mut running: Vec<(u32, u32, i32, u64, String, String)> =
            self.asm.running().map(|o| (o.pid, o.tid, o.fd, o.start_ns, o.method.to_string(), o.path.to_string())).collect();
        // Oldest first, in the same order every run: what is emitted here must replay the same.
        running.sort_by_key(|r| (r.3, r.1));
        self.running.clear();
        for (pid, tid, fd, start_ns, method, path) in running {
            self.heartbeat(pid, now_ns, live)?;
            let kill = deadlines::kill_in(&self.kills, pid, start_ns, now_ns);
            if let Some((_, _, at)) = kill {
                self.interrupt(pid, tid, fd, at, now_ns, live)?;
            }
            if let Some((_, reason, at)) = kill {
                let due = self.deadlines.check(tid, at, reason, now_ns, || format!("{method} {path} (pid {pid}, thread {tid})"));
                if let Some(w) = due.warning {
                    self.warning(now_ns, &w)?;
                }
                if due.snapshot
                    && let Some(stack) = live.snapshot(pid, tid)
                {
                    let ev = Event::Snapshot { hdr: Hdr { tgid: pid, tid, ts: now_ns }, stack };
                    self.sinks(|s| s.event(&ev))?;
                    if let Event::Snapshot { stack, .. } = ev {
                        self.deadlines.add_snapshot(tid, now_ns, stack);
                    }
                }
            }
            let elapsed_ms = now_ns.saturating_sub(start_ns) as f64 / 1e6;
            self.running.push(Running { pid, tid, method, path, elapsed_ms, kill_in_ms: kill.map(|k| k.0), kill_by: kill.map(|k| k.1) });
        }
        Ok(())
    }

    /// `--interrupt-before`: writes the interruption when the kill is near enough, follows it
    /// until it is raised, and takes it back unraised just before the kill.
    fn interrupt(&mut self, pid: u32, tid: u32, fd: i32, kill_at: u64, now_ns: u64, live: &mut dyn Live) -> io::Result<()> {
        let Some(cfg) = self.cfg.interrupt else { return Ok(()) };
        let action = match self.interrupts.get(&tid).map(|st| &st.action) {
            None if now_ns + cfg.before_ns >= kill_at => Some(if cfg.dry_run {
                InterruptAction::DryRun
            } else {
                match live.interrupt(pid, tid, fd) {
                    Ok(()) => InterruptAction::Written,
                    Err(why) => InterruptAction::Refused { why },
                }
            }),
            Some(InterruptAction::Written) => match live.interrupt_pending(pid, tid) {
                Some(false) => Some(InterruptAction::Surfaced),
                Some(true) if now_ns + UNDO_BEFORE_NS >= kill_at => {
                    Some(if live.interrupt_undo(pid, tid) { InterruptAction::Undone } else { InterruptAction::Surfaced })
                }
                _ => None,
            },
            _ => None,
        };
        let Some(action) = action else { return Ok(()) };
        let hdr = Hdr { tgid: pid, tid, ts: now_ns };
        let ev = Event::Interrupt { hdr, action, kill_at };
        self.sinks(|s| s.event(&ev))?;
        if let Event::Interrupt { action, .. } = ev {
            self.apply_interrupt(&hdr, action, kill_at)?;
        }
        Ok(())
    }

    /// A step of an interruption (live, or from a recording): remembered for the request's end,
    /// and reported now when nothing was written.
    fn apply_interrupt(&mut self, hdr: &Hdr, action: InterruptAction, kill_at: u64) -> io::Result<()> {
        let Some(r) = self.asm.running().find(|r| r.tid == hdr.tid) else { return Ok(()) };
        let (pid, tid, start_ns, method, path) = (r.pid, r.tid, r.start_ns, r.method.to_string(), r.path.to_string());
        let (outcome, why) = match &action {
            InterruptAction::Refused { why } => ("not_attempted", Some(why.clone())),
            InterruptAction::DryRun => ("dry_run", None),
            _ => ("", None),
        };
        if !outcome.is_empty() {
            let kill_by = deadlines::kill_in(&self.kills, pid, start_ns, hdr.ts).map(|k| k.1);
            let i = Interrupted {
                pid,
                tid,
                method: &method,
                path: &path,
                start_ns,
                at_ns: hdr.ts,
                outcome,
                why: why.as_deref(),
                status: None,
                kill_at_ns: kill_at,
                kill_by,
            };
            self.sinks.iter_mut().try_for_each(|s| s.interrupted(&i))?;
        }
        let at_ns = self.interrupts.get(&tid).filter(|st| st.start_ns == start_ns).map_or(hdr.ts, |st| st.at_ns);
        self.interrupts.insert(tid, InterruptState { start_ns, at_ns, kill_at, action });
        Ok(())
    }

    /// Learns a worker's latest heartbeat from the host, recorded as an event when it is news.
    fn heartbeat(&mut self, pid: u32, now_ns: u64, live: &mut dyn Live) -> io::Result<()> {
        if !matches!(self.kills.server_of(pid), Some((_, s)) if matches!(s.deadline, crate::kills::Deadline::Heartbeat { .. })) {
            return Ok(());
        }
        if let Some(at) = live.heartbeat(pid).filter(|&at| Some(at) != self.kills.heartbeat(pid)) {
            let ev = Event::Heartbeat { hdr: Hdr { tgid: pid, tid: pid, ts: now_ns }, pid, at };
            self.sinks(|s| s.event(&ev))?;
            self.kills.observe(&ev);
        }
        Ok(())
    }

    /// The watched listeners' backlogs so far, for `top` and the summary.
    fn listener_counts(&mut self) {
        self.counts.listeners = self
            .asm
            .listeners()
            .into_iter()
            .map(|l| crate::output::ListenerCounts {
                socket: l.socket,
                backlog_peak: l.peak,
                backlog_max: l.max,
                connects: l.connects,
                accepts: l.accepts,
                refused: l.refused,
            })
            .collect();
        self.counts.tcp_listen_overflows = self.asm.listen_overflows();
    }

    /// Time passes: requests that crossed the threshold while running are reported now, with
    /// what their time went to so far; `live` tells a wait still going on and captures stacks.
    /// Returns true when an output asks to stop.
    pub fn tick(&mut self, now_ns: u64, live: &mut dyn Live) -> io::Result<bool> {
        self.asm.tick(now_ns, &mut self.inflight);
        let mut crossed = std::mem::take(&mut self.inflight);
        for i in crossed.drain(..) {
            self.counts.inflight += 1;
            let mut open = live.open_wait(i.tid);
            if let Some(OffCpu { sys: Some(sys), facts, .. }) = open.as_mut() {
                let sys = *sys;
                self.wait_facts(i.pid, now_ns, &sys, facts, live)?;
            }
            let detail = self.timeline.detail(i.tid, i.start_ns + i.queue_ns, now_ns, i.queue_ns, open.as_ref());
            self.heartbeat(i.pid, now_ns, live)?;
            let kill = deadlines::kill_in(&self.kills, i.pid, i.start_ns, now_ns).map(|(ms, reason, _)| (ms, reason));
            self.profiles.start(i.tid);
            let stack = match live.slow(&i) {
                Some(s) => {
                    self.counts.stacks.snapshots += 1;
                    if let Some(since) = s.off_cpu_since {
                        // A wait already in progress: weighted by its whole length when it ends.
                        self.profiles.off_cpu_from(i.tid, since, s.stack.clone());
                    }
                    let ev = Event::Slow { hdr: Hdr { tgid: i.pid, tid: i.tid, ts: now_ns }, stack: s.stack.clone(), off_cpu_since: s.off_cpu_since };
                    self.sinks(|k| k.event(&ev))?;
                    Some(s.stack)
                }
                None => None,
            };
            let sql = i.sql.as_ref().map(|t| t.report(self.cfg.n_plus_one));
            let c = Crossed { inflight: &i, detail: &detail, stack: stack.as_deref(), kill, sql: sql.as_ref() };
            self.sinks.iter_mut().try_for_each(|s| s.inflight(&c))?;
            self.slow.insert(i.tid, stack);
        }
        // Keep the allocation for the next tick.
        self.inflight = crossed;
        self.watch_running(now_ns, live)?;
        // Requests that outlived a signal to their process by long enough: it was not a kill.
        let (survived, held): (Vec<Ended>, Vec<Ended>) =
            std::mem::take(&mut self.held).into_iter().partition(|e| now_ns > e.request.end_ns + HOLD_NS);
        self.held = held;
        for e in survived {
            self.report(e, None)?;
        }
        // Waits of threads whose requests never completed are kept for 10 minutes at most.
        if now_ns.saturating_sub(self.last_forget_ns) > 1_000_000_000 {
            self.last_forget_ns = now_ns;
            self.timeline.forget_all_before(now_ns.saturating_sub(600_000_000_000));
        }
        self.listener_counts();
        let state = State { now_ns, summary: &self.summary, counts: &self.counts, running: &self.running };
        let mut stop = false;
        for s in &mut self.sinks {
            stop |= s.tick(&state)?;
            s.flush()?;
        }
        Ok(stop)
    }

    /// When the next open request will cross the threshold, if one is open.
    pub fn next_crossing(&self) -> Option<u64> {
        self.asm.next_crossing()
    }

    pub fn warning(&mut self, now_ns: u64, message: &str) -> io::Result<()> {
        self.sinks(|s| s.warning(now_ns, message))
    }

    pub fn finish(&mut self, now_ns: u64) -> io::Result<()> {
        for e in std::mem::take(&mut self.held) {
            self.report(e, None)?;
        }
        self.asm.close();
        let stats = self.asm.stats();
        self.counts.open_at_exit = stats.open_at_exit;
        self.counts.non_http = stats.non_http_phases;
        self.counts.proxied = stats.proxied;
        self.listener_counts();
        self.counts.sql = SqlCounts {
            queries: stats.db.queries,
            outside_requests: stats.db.outside_requests,
            connects: stats.db.connects,
            encrypted_connections: stats.db.encrypted,
        };
        self.counts.stacks.oncpu_samples = self.profiles.oncpu_samples;
        self.counts.stacks.offcpu_stacks = self.profiles.offcpu_stacks;
        if self.cfg.profile_all {
            self.counts.stacks.sampled = Some(self.sampled.counts);
            self.summary.no_request = self.sampled.no_request();
        }
        let state = State { now_ns, summary: &self.summary, counts: &self.counts, running: &self.running };
        for s in &mut self.sinks {
            s.finish(&state)?;
            s.flush()?;
        }
        Ok(())
    }
}
