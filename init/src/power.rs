//! Shutdown, reboot, halt and poweroff: the signal convention of sysvinit/busybox and the ordered
//! shutdown that ends in `reboot(2)`.
//!
//! Owns the order: release DHCP leases, stop every process (TERM, grace period, KILL), sync,
//! unmount every filesystem that holds data (remount read-only what will not unmount), then
//! `reboot(2)`. It never returns and never exits: PID 1 exiting is a kernel panic.

use crate::boot::{kmsg, mounts};
use crate::net::NetService;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::reboot::RebootMode;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use std::time::{Duration, Instant};

/// What the admin asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    Reboot,
    Halt,
    Poweroff,
}

impl PowerAction {
    /// The sysvinit/busybox convention: TERM → reboot, USR1 → halt, USR2 → poweroff,
    /// INT (ctrl-alt-del) → reboot, PWR → poweroff.
    pub fn from_signal(sig: Signal) -> Option<Self> {
        match sig {
            Signal::SIGTERM | Signal::SIGINT => Some(PowerAction::Reboot),
            Signal::SIGUSR1 => Some(PowerAction::Halt),
            Signal::SIGUSR2 | Signal::SIGPWR => Some(PowerAction::Poweroff),
            _ => None,
        }
    }

    fn mode(self) -> RebootMode {
        match self {
            PowerAction::Reboot => RebootMode::RB_AUTOBOOT,
            PowerAction::Halt => RebootMode::RB_HALT_SYSTEM,
            PowerAction::Poweroff => RebootMode::RB_POWER_OFF,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PowerAction::Reboot => "reboot",
            PowerAction::Halt => "halt",
            PowerAction::Poweroff => "poweroff",
        }
    }
}

/// Grace period between SIGTERM and SIGKILL for the processes left at shutdown.
const TERM_GRACE: Duration = Duration::from_secs(5);

/// How long shutdown waits for the DHCP clients to release their leases.
const RELEASE_GRACE: Duration = Duration::from_secs(2);

/// Waits until no child is left or `limit` passes, reaping as it goes. True when none is left.
fn wait_children_gone(reap: &mut dyn FnMut(), limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        reap();
        // Every user process descends from PID 1 and orphans come back to it, so once PID 1
        // has no child at all (ECHILD), no user process is left. (kill(-1, 0) cannot tell:
        // it counts kernel threads.)
        if waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) == Err(nix::errno::Errno::ECHILD)
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Unmounts every data filesystem, children first; what stays busy is remounted read-only so
/// nothing is left dirty. Returns (unmounted, remounted read-only).
fn unmount_all() -> (usize, usize) {
    let (mut gone, mut ro) = (0, 0);
    for target in mounts::unmount_plan(&mounts::current()) {
        match nix::mount::umount2(&target, MntFlags::empty()) {
            Ok(()) => gone += 1,
            Err(e) => {
                let flags = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
                match nix::mount::mount(None::<&str>, &target, None::<&str>, flags, None::<&str>) {
                    Ok(()) => {
                        ro += 1;
                        log::warn!(
                            "shutdown: {} busy ({e}); remounted read-only",
                            target.display()
                        );
                    }
                    Err(e2) => log::error!(
                        "shutdown: {}: umount {e}, remount ro {e2}",
                        target.display()
                    ),
                }
            }
        }
    }
    (gone, ro)
}

/// The ordered shutdown. `reap` collects exited children (PID 1's reaper); `stop_containers`
/// stops the containers and the containerd daemons in order (bounded by the caller);
/// `shells` are the interactive shells PID 1 runs, which ignore SIGTERM and get SIGHUP (a tty
/// hang-up) instead; `network`, when it runs, releases its DHCP leases (bounded by
/// `RELEASE_GRACE`).
pub fn shutdown(
    action: PowerAction,
    reap: &mut dyn FnMut(),
    stop_containers: &mut dyn FnMut(),
    shells: &[Pid],
    network: Option<&NetService>,
) -> ! {
    kmsg::console(&format!("shutdown: {} requested", action.name()));
    stop_containers();
    if let Some(net) = network {
        if !net.release(RELEASE_GRACE) {
            log::warn!(
                "shutdown: DHCP leases not all released within {}s",
                RELEASE_GRACE.as_secs()
            );
        }
    }
    for pid in shells {
        let _ = nix::sys::signal::kill(*pid, Signal::SIGHUP);
    }
    let _ = nix::sys::signal::kill(Pid::from_raw(-1), Signal::SIGTERM);
    if !wait_children_gone(reap, TERM_GRACE) {
        log::warn!(
            "shutdown: processes left after {}s; sending SIGKILL",
            TERM_GRACE.as_secs()
        );
        let _ = nix::sys::signal::kill(Pid::from_raw(-1), Signal::SIGKILL);
        wait_children_gone(reap, Duration::from_secs(2));
    }
    nix::unistd::sync();
    let (gone, ro) = unmount_all();
    nix::unistd::sync();
    log::info!("shutdown: unmounted {gone} filesystems, {ro} remounted read-only");
    kmsg::console("shutdown complete");
    let err = nix::sys::reboot::reboot(action.mode()).err();
    log::error!("reboot({}) failed: {err:?}", action.name());
    loop {
        // Never exit: PID 1 exiting panics the kernel.
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_follow_the_busybox_convention() {
        assert_eq!(
            PowerAction::from_signal(Signal::SIGTERM),
            Some(PowerAction::Reboot)
        );
        assert_eq!(
            PowerAction::from_signal(Signal::SIGINT),
            Some(PowerAction::Reboot)
        );
        assert_eq!(
            PowerAction::from_signal(Signal::SIGUSR1),
            Some(PowerAction::Halt)
        );
        assert_eq!(
            PowerAction::from_signal(Signal::SIGUSR2),
            Some(PowerAction::Poweroff)
        );
        assert_eq!(
            PowerAction::from_signal(Signal::SIGPWR),
            Some(PowerAction::Poweroff)
        );
        assert_eq!(PowerAction::from_signal(Signal::SIGHUP), None);
    }
}
