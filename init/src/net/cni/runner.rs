//! The process seam of the CNI driver: run one program (a plugin, `iptables`) with a given
//! environment and stdin, and collect its stdout, stderr and exit — the [`PluginRunner`] trait.
//!
//! Owns: [`ReaperRunner`], PID 1's implementation, which spawns through the one reaper
//! (`Owner::Waiter`) and learns the exit from `supervisor::waiters`; and, behind the
//! `std-runner` feature, [`StdRunner`] over `std::process` for tests and tools that are not
//! PID 1. Both enforce a timeout (SIGKILL, then the run fails naming the program).
//! Must not: interpret what the program printed (the driver does), or be used as PID 1 with
//! `StdRunner` (its `Child::wait` would race the reaper).

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::supervisor::reaper::{Exit, Reaper};
use crate::supervisor::{waiters, Owner};

/// One program run: what, with which environment (the whole environment: nothing is
/// inherited) and what it reads on stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// Absolute path of the executable.
    pub program: PathBuf,
    /// Arguments after argv[0].
    pub args: Vec<String>,
    /// The environment, in order.
    pub env: Vec<(String, String)>,
    /// Bytes written to its stdin, which is then closed.
    pub stdin: Vec<u8>,
    /// Killed (SIGKILL) when it runs longer.
    pub timeout: Duration,
}

/// How a run ended and what it printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// Exit code or signal.
    pub exit: Exit,
    /// Everything it wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr.
    pub stderr: Vec<u8>,
}

impl Finished {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        self.exit == Exit::Code(0)
    }

    /// stderr as text, trimmed (for error messages).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_string()
    }
}

/// A program that could not be run to its end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// fork/exec failed.
    #[error("cannot run {program}: {reason}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// Pipes could not be set up or read.
    #[error("{program}: {what}: {reason}")]
    Io {
        /// The program.
        program: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The OS error.
        reason: String,
    },
    /// Called on the thread that reaps: the exit could never be delivered.
    #[error("cannot run {program} on the reaping thread (it would wait for itself)")]
    ReapingThread {
        /// The program.
        program: PathBuf,
    },
    /// It ran past its timeout and was killed.
    #[error("{program} did not finish within {timeout:?} and was killed")]
    TimedOut {
        /// The program.
        program: PathBuf,
        /// The limit.
        timeout: Duration,
    },
}

/// Runs programs for the CNI driver.
pub trait PluginRunner: Send + Sync {
    /// Runs `inv` to its end (or its timeout).
    fn run(&self, inv: &Invocation) -> Result<Finished, RunError>;
}

fn command(inv: &Invocation) -> Command {
    let mut cmd = Command::new(&inv.program);
    cmd.args(&inv.args)
        .env_clear()
        .envs(inv.env.iter().map(|(k, v)| (k, v)))
        .current_dir("/");
    cmd
}

#[cfg(feature = "std-runner")]
fn io_error(program: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> RunError {
    let program = program.to_owned();
    move |e| RunError::Io {
        program,
        what,
        reason: e.to_string(),
    }
}

/// Reads a pipe to its end in a thread.
fn reader(mut from: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = from.read_to_end(&mut buf);
        buf
    })
}

/// Writes stdin in a thread (a plugin may print before it read everything) and closes it.
fn writer(mut to: impl Write + Send + 'static, data: Vec<u8>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        // A program that exits without reading gives EPIPE: its exit tells the story.
        let _ = to.write_all(&data);
    })
}

fn collect(out: JoinHandle<Vec<u8>>, err: JoinHandle<Vec<u8>>, exit: Exit) -> Finished {
    Finished {
        exit,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// PID 1's runner: spawns through the reaper and waits for the exit the serve loop delivers.
pub struct ReaperRunner {
    reaper: Arc<Reaper<Owner>>,
}

impl ReaperRunner {
    /// A runner spawning through `reaper`, whose owner must hand `Owner::Waiter` exits to
    /// `supervisor::waiters::deliver` (PID 1's serve loop does).
    pub fn new(reaper: Arc<Reaper<Owner>>) -> ReaperRunner {
        ReaperRunner { reaper }
    }
}

fn pipe(program: &Path) -> Result<(OwnedFd, OwnedFd), RunError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| RunError::Io {
        program: program.to_owned(),
        what: "pipe",
        reason: e.to_string(),
    })
}

impl PluginRunner for ReaperRunner {
    fn run(&self, inv: &Invocation) -> Result<Finished, RunError> {
        let program = inv.program.as_path();
        if waiters::on_reaping_thread() {
            return Err(RunError::ReapingThread {
                program: program.to_owned(),
            });
        }
        let (in_r, in_w) = pipe(program)?;
        let (out_r, out_w) = pipe(program)?;
        let (err_r, err_w) = pipe(program)?;
        let (id, exits) = waiters::register();
        let pid = {
            // The child's ends live in `cmd` and are closed when it is dropped, right after
            // the spawn: the readers then see EOF when the child (and only it) is done.
            let mut cmd = command(inv);
            cmd.stdin(Stdio::from(in_r))
                .stdout(Stdio::from(out_w))
                .stderr(Stdio::from(err_w));
            match self.reaper.spawn(&mut cmd, Owner::Waiter(id)) {
                Ok(pid) => pid,
                Err(e) => {
                    waiters::cancel(id);
                    return Err(RunError::Spawn {
                        program: program.to_owned(),
                        reason: e.to_string(),
                    });
                }
            }
        };
        let w = writer(std::fs::File::from(in_w), inv.stdin.clone());
        let out = reader(std::fs::File::from(out_r));
        let err = reader(std::fs::File::from(err_r));
        let exit = match exits.recv_timeout(inv.timeout) {
            Ok(exit) => exit,
            Err(_) => {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                // The reaper collects it; the exit no longer matters.
                let _ = exits.recv_timeout(Duration::from_secs(5));
                let _ = w.join();
                return Err(RunError::TimedOut {
                    program: program.to_owned(),
                    timeout: inv.timeout,
                });
            }
        };
        let _ = w.join();
        Ok(collect(out, err, exit))
    }
}

/// A runner over `std::process` that waits for its own children: for host tests and tools,
/// never for PID 1 (its wait would race the reaper).
#[cfg(feature = "std-runner")]
#[derive(Debug, Default, Clone, Copy)]
pub struct StdRunner;

#[cfg(feature = "std-runner")]
impl PluginRunner for StdRunner {
    fn run(&self, inv: &Invocation) -> Result<Finished, RunError> {
        use std::os::unix::process::ExitStatusExt;
        let program = inv.program.as_path();
        let mut child = command(inv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| RunError::Spawn {
                program: program.to_owned(),
                reason: e.to_string(),
            })?;
        let missing = || RunError::Io {
            program: program.to_owned(),
            what: "stdio",
            reason: "pipe missing".into(),
        };
        let w = writer(child.stdin.take().ok_or_else(missing)?, inv.stdin.clone());
        let out = reader(child.stdout.take().ok_or_else(missing)?);
        let err = reader(child.stderr.take().ok_or_else(missing)?);
        let deadline = std::time::Instant::now() + inv.timeout;
        let status = loop {
            if let Some(status) = child.try_wait().map_err(io_error(program, "wait"))? {
                break status;
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(RunError::TimedOut {
                    program: program.to_owned(),
                    timeout: inv.timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let _ = w.join();
        let exit = match (status.code(), status.signal()) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(sig)) => Exit::Signal(sig),
            (None, None) => Exit::Code(-1),
        };
        Ok(collect(out, err, exit))
    }
}
