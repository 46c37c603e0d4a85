//! The one reaper of PID 1 (DESIGN.md "Processes"): on SIGCHLD it calls `waitpid(-1, WNOHANG)`
//! until nothing is left and hands each exit to whoever registered that pid.
//!
//! Owns child registration and collection. Children are registered while the registry lock is
//! held across the spawn, so an exit can never be reaped before its owner is known. Nothing else
//! in PID 1 may wait for children (no `Child::wait`, no `tokio::process`): they would race this.

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::process::Command;
use std::sync::Mutex;

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit status {c}"),
            Exit::Signal(s) => write!(f, "killed by signal {s}"),
        }
    }
}

/// One reaped child: its pid, how it ended, and its owner if one registered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaped<T> {
    pub pid: Pid,
    pub exit: Exit,
    pub owner: Option<T>,
}

/// The registry of children, keyed by pid, holding an owner token of type `T`.
pub struct Reaper<T> {
    owners: Mutex<HashMap<i32, T>>,
}

impl<T> Default for Reaper<T> {
    fn default() -> Self {
        Reaper {
            owners: Mutex::new(HashMap::new()),
        }
    }
}

impl<T> Reaper<T> {
    /// Spawns `cmd` and registers it for `owner` before any exit can be collected.
    /// The `Child` handle is dropped without waiting: the reaper owns the wait.
    pub fn spawn(&self, cmd: &mut Command, owner: T) -> std::io::Result<Pid> {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        let child = cmd.spawn()?;
        let pid = Pid::from_raw(child.id() as i32);
        owners.insert(pid.as_raw(), owner);
        Ok(pid)
    }

    /// Collects every child that has exited, registered or not (orphans re-parented to PID 1).
    pub fn reap(&self) -> Vec<Reaped<T>> {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        loop {
            let (pid, exit) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, Exit::Signal(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue, // stopped/continued: not an exit
            };
            out.push(Reaped {
                pid,
                exit,
                owner: owners.remove(&pid.as_raw()),
            });
        }
        out
    }

    /// Collects the registered children whose owner `pred` accepts and that have exited,
    /// leaving every other child (and orphans) to [`Reaper::reap`]. For a caller that must
    /// keep helpers going while it blocks (the ordered stop of workloads, whose network
    /// detach runs plugins) without taking exits others wait for.
    pub fn reap_where(&self, pred: impl Fn(&T) -> bool) -> Vec<Reaped<T>> {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        let pids: Vec<i32> = owners
            .iter()
            .filter(|(_, o)| pred(o))
            .map(|(pid, _)| *pid)
            .collect();
        let mut out = Vec::new();
        for raw in pids {
            let exit = match waitpid(Pid::from_raw(raw), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => Exit::Code(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => Exit::Signal(sig as i32),
                Ok(_) | Err(_) => continue,
            };
            out.push(Reaped {
                pid: Pid::from_raw(raw),
                exit,
                owner: owners.remove(&raw),
            });
        }
        out
    }

    /// How many registered children are still running.
    pub fn registered(&self) -> usize {
        self.owners.lock().map(|o| o.len()).unwrap_or(0)
    }
}

// Tests live in init/tests/reaper.rs: waitpid(-1) would steal the children of other unit tests
// running in the same process, so the reaper gets a test binary of its own.
