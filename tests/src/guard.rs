//! Process guards: every process a test or the demo starts runs in its own process group, and
//! the guard kills the whole group (workers included) when it goes out of scope.
use std::{
    os::unix::process::CommandExt,
    process::{Child, Command, ExitStatus},
    thread,
    time::{Duration, Instant},
};

pub struct Guard {
    name: String,
    child: Option<Child>,
}

fn signal_group(pgid: u32, sig: i32) {
    // SAFETY: kill(2) on our own child's process group.
    unsafe { libc::kill(-(pgid as i32), sig) };
}

impl Guard {
    /// Spawns `cmd` as the leader of a new process group.
    pub fn spawn(name: &str, cmd: &mut Command) -> std::io::Result<Self> {
        let child = cmd.process_group(0).spawn()?;
        Ok(Self { name: name.to_string(), child: Some(child) })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("guard holds its child until stopped")
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends `sig` to the leader, waits up to `grace` for it to exit, then kills the group.
    pub fn stop_with(&mut self, sig: i32, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let deadline = Instant::now() + grace;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => {
                    eprintln!("guard: {} did not stop within {grace:?}; killing it", self.name);
                    break None;
                }
            }
        };
        signal_group(child.id(), libc::SIGKILL);
        status.or_else(|| child.wait().ok())
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_group(child.id(), libc::SIGKILL);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
