//! The containerd daemons PID 1 runs (DESIGN.md "containerd: two instances"): spawned through
//! the one reaper, each placed in its cgroup leaf with its OOM score before exec, restarted with
//! the restart policy's backoff when it exits, and stopped (TERM, grace, KILL) at shutdown.
//!
//! Owns the daemons' processes and their log files (`/var/log/ros/containerd-<name>.log`). It
//! does not talk to containerd (the fleet does) and never waits for a child itself: the serve
//! loop hands it the reaper's reports.

use super::fleet;
use super::policy::Backoff;
use super::reaper::{Exit, Reaper};
use super::{fence_ns, shell, Owner};
use crate::boot::{kmsg, sysimage};
use crate::cgroups;
use crate::runtime::daemon::{self, Instance, InstanceName};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::path::Path;
use std::time::{Duration, Instant};

/// One containerd PID 1 runs and restarts.
struct Daemon {
    instance: Instance,
    pid: Option<Pid>,
    started: Instant,
    backoff: Backoff,
    next_start: Option<Instant>,
}

/// The containerd daemons, spawned through the reaper and restarted with backoff.
#[derive(Default)]
pub struct Daemons {
    list: Vec<Daemon>,
}

impl Daemons {
    pub fn add(&mut self, reaper: &Reaper<Owner>, instance: Instance) {
        let mut d = Daemon {
            instance,
            pid: None,
            started: Instant::now(),
            backoff: Backoff::default(),
            next_start: None,
        };
        d.spawn(reaper);
        self.list.push(d);
    }

    pub fn exited(&mut self, name: InstanceName, exit: Exit) {
        for d in self.list.iter_mut().filter(|d| d.instance.name == name) {
            d.pid = None;
            let delay = d.backoff.delay_after(d.started.elapsed());
            kmsg::console(&format!(
                "containerd {} exited ({exit}); restart {} in {}s",
                name.as_str(),
                d.backoff.restarts,
                delay.as_secs()
            ));
            d.next_start = Some(Instant::now() + delay);
        }
    }

    pub fn respawn_due(&mut self, reaper: &Reaper<Owner>) {
        let now = Instant::now();
        for d in &mut self.list {
            if d.pid.is_none() && d.next_start.is_some_and(|t| t <= now) {
                d.spawn(reaper);
            }
        }
    }

    /// SIGTERM to every daemon, up to `DAEMON_GRACE` for them to exit, then SIGKILL.
    pub fn stop(&mut self, reaper: &Reaper<Owner>) {
        const DAEMON_GRACE: Duration = Duration::from_secs(10);
        for d in &mut self.list {
            d.next_start = None;
            if let Some(pid) = d.pid {
                let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + DAEMON_GRACE;
        let mut killed = false;
        while self.list.iter().any(|d| d.pid.is_some()) {
            for r in reaper.reap() {
                if let Some(Owner::Containerd(name)) = r.owner {
                    for d in self.list.iter_mut().filter(|d| d.instance.name == name) {
                        d.pid = None;
                        kmsg::console(&format!(
                            "containerd {} stopped ({})",
                            name.as_str(),
                            r.exit
                        ));
                    }
                }
            }
            if Instant::now() >= deadline {
                if killed {
                    break;
                }
                killed = true;
                for d in &self.list {
                    if let Some(pid) = d.pid {
                        log::warn!("containerd {}: SIGKILL", d.instance.name.as_str());
                        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Daemon {
    /// Starts containerd: its config written, placed in its cgroup leaf and given its OOM score
    /// in the child before exec (so containerd and every shim it forks start inside the leaf;
    /// moving it after spawn would race its first forks), output appended to
    /// `/var/log/ros/containerd-<name>.log`.
    fn spawn(&mut self, reaper: &Reaper<Owner>) {
        let name = self.instance.name;
        self.next_start = None;
        match spawn_containerd(reaper, &self.instance) {
            Ok(pid) => {
                log::info!("containerd {} started (pid {pid})", name.as_str());
                self.pid = Some(pid);
                self.started = Instant::now();
            }
            Err(e) => {
                let delay = self.backoff.delay_after(Duration::ZERO);
                log::error!(
                    "containerd {}: {e}; retry in {}s",
                    name.as_str(),
                    delay.as_secs()
                );
                self.next_start = Some(Instant::now() + delay);
            }
        }
    }
}

fn spawn_containerd(reaper: &Reaper<Owner>, instance: &Instance) -> Result<Pid, String> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let name = instance.name;
    daemon::prepare(instance).map_err(|e| e.to_string())?;
    let log_path = Path::new(fleet::LOG_DIR).join(format!("containerd-{}.log", name.as_str()));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    let err_log = log
        .try_clone()
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    let leaf = match name {
        InstanceName::System => cgroups::SYSTEM_CONTAINERD,
        InstanceName::User => cgroups::RUNTIME_CONTAINERD,
    };
    let procs_path = Path::new(cgroups::ROOT).join(leaf).join("cgroup.procs");
    let procs = std::fs::OpenOptions::new().write(true).open(&procs_path);
    if let Err(e) = &procs {
        log::warn!(
            "containerd {}: {}: {e}",
            name.as_str(),
            procs_path.display()
        );
    }
    let procs = procs.ok();
    // The user daemon runs in the fence's namespaces; without them containers made through its
    // socket could land outside the fence, so a failure here fails the start (and is retried).
    let fence = match name {
        InstanceName::System => None,
        InstanceName::User => Some(
            fence_ns::prepare(Path::new(cgroups::ROOT), Path::new(fence_ns::PIN))
                .map_err(|e| e.to_string())?,
        ),
    };
    let oom = format!("{}\n", name.oom_score()).into_bytes();
    let argv = daemon::argv(instance);
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", sysimage::DAEMON_PATH)
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err_log);
    shell::child_defaults(&mut cmd);
    // SAFETY: runs in the forked child before exec and only makes raw syscalls (write, open,
    // close, setns, unshare, mount) on memory prepared before the fork: "0" written to
    // cgroup.procs moves the writer itself; the OOM score goes to /proc/self. Failures of the
    // leaf and the score are ignored (fewer guarantees, not a daemon that cannot start); the
    // fence's namespaces must be entered.
    unsafe {
        cmd.pre_exec(move || {
            match &fence {
                Some(f) => f.enter(procs.as_ref())?,
                None => {
                    if let Some(f) = &procs {
                        libc::write(f.as_raw_fd(), b"0".as_ptr().cast(), 1);
                    }
                }
            }
            let fd = libc::open(
                c"/proc/self/oom_score_adj".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            if fd >= 0 {
                libc::write(fd, oom.as_ptr().cast(), oom.len());
                libc::close(fd);
            }
            Ok(())
        });
    }
    let pid = reaper
        .spawn(&mut cmd, Owner::Containerd(name))
        .map_err(|e| format!("{}: {e}", argv[0]))?;
    // spawn returned after exec: the daemon has left the fence leaf, which may now have
    // controllers for its children.
    if name == InstanceName::User {
        if let Err(e) = cgroups::delegate_fence(Path::new(cgroups::ROOT)) {
            log::warn!("containerd user: {e}");
        }
    }
    Ok(pid)
}
