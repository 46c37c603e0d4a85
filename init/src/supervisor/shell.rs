//! Root shells on ttys: the debug shell (`ros.debug_shell=ttyS1`) and the recovery shell.
//!
//! Owns how a shell is started on a tty: a new session with the tty as controlling terminal,
//! a clean environment and the default signal mask. It does not decide when shells run; boot and
//! the recovery path do, and the reaper tells them when one exits.

use super::reaper::Reaper;
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::unistd::Pid;
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// The busybox shell shipped in the image for debug and recovery only.
pub const SHELL: &str = "/bin/sh";

#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    #[error("shell on /dev/{tty}: {source}")]
    Spawn { tty: String, source: std::io::Error },
}

/// Resets what a child of PID 1 must not inherit: PID 1 blocks every signal for its signalfd.
/// Also used by every other child PID 1 starts.
pub fn child_defaults(cmd: &mut Command) {
    // SAFETY: runs in the forked child before exec; sigprocmask and setsid are
    // async-signal-safe and touch only the child's own state.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
            nix::unistd::setsid()?;
            Ok(())
        });
    }
}

/// Starts a root shell on `/dev/<tty>` registered with the reaper under `owner`.
pub fn spawn_on_tty<T>(reaper: &Reaper<T>, tty: &str, owner: T) -> Result<Pid, ShellError> {
    let err = |source| ShellError::Spawn {
        tty: tty.to_string(),
        source,
    };
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/dev/{tty}"))
        .map_err(err)?;
    let mut cmd = Command::new(SHELL);
    cmd.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", "/root")
        .env("TERM", "vt100")
        .env("PS1", "ros# ")
        .current_dir("/")
        .stdin(Stdio::from(dev.try_clone().map_err(err)?))
        .stdout(Stdio::from(dev.try_clone().map_err(err)?))
        .stderr(Stdio::from(dev));
    child_defaults(&mut cmd);
    // SAFETY: runs in the child after setsid (registered first by child_defaults); TIOCSCTTY on
    // fd 0, the tty just opened, makes it the controlling terminal so job control and ^C work.
    unsafe {
        cmd.pre_exec(|| {
            if libc::ioctl(0, libc::TIOCSCTTY, 1) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    reaper.spawn(&mut cmd, owner).map_err(err)
}
