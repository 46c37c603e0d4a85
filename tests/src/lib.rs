//! The VM test driver: boots the real ros image (build/out/vmlinuz + initrd.img) in QEMU and
//! talks to it the way a person would — reading the serial console and typing into the debug
//! shell on the second serial port.
//!
//! Owns the QEMU command line (shared with `scripts/run` through xtask), the console capture and
//! the shell protocol. It never builds the image (scripts/test does that first) and never sends
//! traffic off the machine: user networking is `restrict=on` unless a caller asks otherwise.
//!
//! A failed test keeps its console log under `target/vm-logs/NAME.log`.

pub mod qemu;
pub mod registry;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub use qemu::VmOptions;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("vm {vm}: cannot start qemu: {source}")]
    Spawn { vm: String, source: std::io::Error },
    #[error("vm {vm}: image missing: {path} (run `cargo xtask build`)")]
    NoImage { vm: String, path: PathBuf },
    #[error(
        "vm {vm}: no console line matching `{pattern}` within {secs}s; last console lines:\n{tail}"
    )]
    ConsoleTimeout {
        vm: String,
        pattern: String,
        secs: u64,
        tail: String,
    },
    #[error("vm {vm}: qemu exited ({status}) while waiting for `{pattern}`; last console lines:\n{tail}")]
    Exited {
        vm: String,
        pattern: String,
        status: String,
        tail: String,
    },
    #[error("vm {vm}: debug shell: {reason}")]
    Shell { vm: String, reason: String },
    #[error("vm {vm}: `{cmd}` did not finish within {secs}s; output so far:\n{output}")]
    CommandTimeout {
        vm: String,
        cmd: String,
        secs: u64,
        output: String,
    },
    #[error("vm {vm}: `{cmd}` failed with status {status}:\n{output}")]
    CommandFailed {
        vm: String,
        cmd: String,
        status: i32,
        output: String,
    },
    #[error("vm {vm}: qemu still running after {secs}s")]
    NoExit { vm: String, secs: u64 },
    #[error("vm {vm}: {what}: {source}")]
    Io {
        vm: String,
        what: String,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, VmError>;

/// The console text captured so far, and whether QEMU closed it.
#[derive(Default)]
struct Console {
    text: String,
    closed: bool,
}

/// A running VM.
pub struct Vm {
    name: String,
    child: Child,
    console: Arc<(Mutex<Console>, Condvar)>,
    shell: Option<UnixStream>,
    shell_path: PathBuf,
    shell_buf: String,
    seq: u64,
    started: Instant,
    _dir: tempfile::TempDir,
    keep_log: bool,
}

/// Cmdline words that turn off the default services (console, syslog): PID-1 and network
/// tests boot a node that starts no containers, which keeps them fast.
pub const NO_SERVICES: &str =
    "ros.services.console.enabled=false ros.services.syslog.enabled=false";

/// The repository root (tests/ lives one level down).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

impl Vm {
    /// Boots a VM. `name` names it in errors and in the kept log.
    pub fn boot(name: &str, opts: &VmOptions) -> Result<Vm> {
        for p in [&opts.kernel, &opts.initrd] {
            if !p.exists() {
                return Err(VmError::NoImage {
                    vm: name.into(),
                    path: p.clone(),
                });
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("ros-vm-")
            .tempdir()
            .map_err(|source| VmError::Io {
                vm: name.into(),
                what: "temp dir".into(),
                source,
            })?;
        let shell_path = dir.path().join("ttyS1.sock");
        let mut cmd = qemu::command(opts, &shell_path);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| VmError::Spawn {
            vm: name.into(),
            source,
        })?;
        let console = Arc::new((Mutex::new(Console::default()), Condvar::new()));
        if let Some(out) = child.stdout.take() {
            spawn_reader(out, console.clone(), opts.echo_errors);
        }
        if let Some(err) = child.stderr.take() {
            spawn_reader(err, console.clone(), opts.echo_errors);
        }
        Ok(Vm {
            name: name.into(),
            child,
            console,
            shell: None,
            shell_path,
            shell_buf: String::new(),
            seq: 0,
            started: Instant::now(),
            _dir: dir,
            keep_log: true,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Everything the console printed so far (`\r` removed).
    pub fn console_text(&self) -> String {
        self.console
            .0
            .lock()
            .map(|c| c.text.clone())
            .unwrap_or_default()
    }

    fn tail(&self) -> String {
        let text = self.console_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Waits until a console line contains `pattern` after byte offset `from`; returns that line.
    pub fn wait_for_console_from(
        &mut self,
        pattern: &str,
        from: usize,
        timeout: Duration,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.console;
        let mut guard = lock
            .lock()
            .map_err(|_| self.shell_err("console lock poisoned"))?;
        loop {
            let start = from.min(guard.text.len());
            if let Some(pos) = guard.text[start..].find(pattern) {
                let at = start + pos;
                let line_start = guard.text[..at].rfind('\n').map_or(0, |i| i + 1);
                let rest = &guard.text[line_start..];
                if let Some(end) = rest.find('\n') {
                    return Ok(rest[..end].to_string());
                }
            }
            if guard.closed {
                drop(guard);
                let status = self
                    .child
                    .try_wait()
                    .ok()
                    .flatten()
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                return Err(VmError::Exited {
                    vm: self.name.clone(),
                    pattern: pattern.into(),
                    status,
                    tail: self.tail(),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                drop(guard);
                return Err(VmError::ConsoleTimeout {
                    vm: self.name.clone(),
                    pattern: pattern.into(),
                    secs: timeout.as_secs(),
                    tail: self.tail(),
                });
            }
            guard = cvar
                .wait_timeout(guard, deadline - now)
                .map_err(|_| self.shell_err("console lock poisoned"))?
                .0;
        }
    }

    /// Waits for a console line containing `pattern` anywhere in the console so far.
    pub fn wait_for_console(&mut self, pattern: &str, timeout: Duration) -> Result<String> {
        self.wait_for_console_from(pattern, 0, timeout)
    }

    /// Waits for `ros: ready` and prints the boot's cost, so the suite's time stays visible.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<String> {
        let line = self.wait_for_console("ros: ready in", timeout)?;
        eprintln!(
            "[vm {}] {} (wall {:.1}s since qemu start)",
            self.name,
            line.trim(),
            self.started.elapsed().as_secs_f64()
        );
        Ok(line)
    }

    fn shell_err(&self, reason: &str) -> VmError {
        VmError::Shell {
            vm: self.name.clone(),
            reason: reason.into(),
        }
    }

    fn connect_shell(&mut self) -> Result<()> {
        if self.shell.is_some() {
            return Ok(());
        }
        let stream = UnixStream::connect(&self.shell_path).map_err(|source| VmError::Io {
            vm: self.name.clone(),
            what: format!("connect {}", self.shell_path.display()),
            source,
        })?;
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(|source| VmError::Io {
                vm: self.name.clone(),
                what: "socket timeout".into(),
                source,
            })?;
        self.shell = Some(stream);
        // Quiet the shell: no echo, no prompts. The marker is split in the typed text so the
        // echo of this very line cannot match it.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.write_shell("stty -echo; PS1=''; PS2=''; echo __ROS_SY''NC__\n")?;
            if self
                .read_until("__ROS_SYNC__\n", Instant::now() + Duration::from_secs(3))?
                .is_some()
            {
                self.shell_buf.clear();
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.shell_err("no answer from the debug shell on ttyS1 within 60s"));
            }
        }
    }

    fn write_shell(&mut self, text: &str) -> Result<()> {
        let name = self.name.clone();
        let s = self.shell.as_mut().ok_or_else(|| VmError::Shell {
            vm: name.clone(),
            reason: "not connected".into(),
        })?;
        s.write_all(text.as_bytes()).map_err(|source| VmError::Io {
            vm: name,
            what: "write shell".into(),
            source,
        })
    }

    /// Reads shell output until `marker` appears; returns the text before it (and drops it
    /// from the buffer), or None at the deadline.
    fn read_until(&mut self, marker: &str, deadline: Instant) -> Result<Option<String>> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(pos) = self.shell_buf.find(marker) {
                let before = self.shell_buf[..pos].to_string();
                self.shell_buf.drain(..pos + marker.len());
                return Ok(Some(before));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            let name = self.name.clone();
            let s = self.shell.as_mut().ok_or_else(|| VmError::Shell {
                vm: name.clone(),
                reason: "not connected".into(),
            })?;
            match s.read(&mut chunk) {
                Ok(0) => return Err(self.shell_err("debug shell socket closed")),
                Ok(n) => self
                    .shell_buf
                    .push_str(&String::from_utf8_lossy(&chunk[..n]).replace('\r', "")),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(source) => {
                    return Err(VmError::Io {
                        vm: name,
                        what: "read shell".into(),
                        source,
                    })
                }
            }
        }
    }

    /// Runs `cmd` in the guest's debug shell; returns its exit status and combined output.
    pub fn exec(&mut self, cmd: &str, timeout: Duration) -> Result<(i32, String)> {
        self.connect_shell()?;
        self.seq += 1;
        let n = self.seq;
        // A subshell, so `exit N` in CMD ends CMD and not the debug shell.
        let wrapped = format!("echo __ROS_B''EGIN_{n}__; ( {cmd}\n) </dev/null 2>&1; printf '\\n__ROS_E''ND_{n}__ %d\\n' $?\n");
        self.write_shell(&wrapped)?;
        let deadline = Instant::now() + timeout;
        let begin = format!("__ROS_BEGIN_{n}__\n");
        let end = format!("__ROS_END_{n}__ ");
        let timed_out = |vm: &Vm, output: String| VmError::CommandTimeout {
            vm: vm.name.clone(),
            cmd: cmd.into(),
            secs: timeout.as_secs(),
            output,
        };
        if self.read_until(&begin, deadline)?.is_none() {
            let partial = self.shell_buf.clone();
            return Err(timed_out(self, partial));
        }
        let Some(mut output) = self.read_until(&end, deadline)? else {
            let partial = self.shell_buf.clone();
            return Err(timed_out(self, partial));
        };
        let Some(code) = self.read_until("\n", deadline)? else {
            return Err(timed_out(self, output));
        };
        // The end marker is printed after a newline of its own: drop exactly that one.
        if output.ends_with('\n') {
            output.pop();
        }
        let status = code
            .trim()
            .parse()
            .map_err(|_| self.shell_err(&format!("bad status `{code}`")))?;
        Ok((status, output))
    }

    /// Runs `cmd` every second until `pred` accepts its output or `timeout` passes; returns the
    /// last output (a failed run counts as empty output).
    pub fn poll(&mut self, cmd: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self
                .exec(cmd, Duration::from_secs(60))
                .map(|(_, o)| o)
                .unwrap_or_default();
            if pred(&out) || Instant::now() >= deadline {
                return out;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Runs `cmd` and returns its output; a non-zero status is an error carrying the output.
    pub fn succeed(&mut self, cmd: &str) -> Result<String> {
        let (status, output) = self.exec(cmd, Duration::from_secs(120))?;
        if status != 0 {
            return Err(VmError::CommandFailed {
                vm: self.name.clone(),
                cmd: cmd.into(),
                status,
                output,
            });
        }
        Ok(output)
    }

    /// Types `cmd` into the debug shell without waiting for it (for `poweroff`, `reboot`).
    pub fn send(&mut self, cmd: &str) -> Result<()> {
        self.connect_shell()?;
        self.write_shell(&format!("{cmd}\n"))
    }

    /// Types a line on the serial console (ttyS0), e.g. into the recovery shell.
    pub fn send_console(&mut self, line: &str) -> Result<()> {
        let name = self.name.clone();
        let stdin = self.child.stdin.as_mut().ok_or_else(|| VmError::Shell {
            vm: name.clone(),
            reason: "no console stdin".into(),
        })?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| stdin.flush())
            .map_err(|source| VmError::Io {
                vm: name,
                what: "write console".into(),
                source,
            })
    }

    /// Waits for QEMU to exit (after the guest powered off, or rebooted with `-no-reboot`).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Ok(None) => {
                    return Err(VmError::NoExit {
                        vm: self.name.clone(),
                        secs: timeout.as_secs(),
                    })
                }
                Err(source) => {
                    return Err(VmError::Io {
                        vm: self.name.clone(),
                        what: "wait qemu".into(),
                        source,
                    })
                }
            }
        }
    }

    /// True while QEMU runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Powers the guest off through its debug shell and waits for QEMU to exit.
    pub fn poweroff(&mut self) -> Result<()> {
        self.send("poweroff")?;
        self.wait_for_console("ros: shutdown complete", Duration::from_secs(60))?;
        self.wait_exit(Duration::from_secs(30)).map(|_| ())
    }

    /// Marks the test as passed so the console log is not kept.
    pub fn passed(mut self) {
        self.keep_log = false;
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.keep_log || std::thread::panicking() {
            let dir = repo_root().join("target/vm-logs");
            let path = dir.join(format!("{}.log", self.name));
            if std::fs::create_dir_all(&dir)
                .and_then(|_| std::fs::write(&path, self.console_text()))
                .is_ok()
            {
                eprintln!("[vm {}] console log kept at {}", self.name, path.display());
            }
        }
    }
}

/// The pid of container `id`'s task if `ctr t ls` output shows it RUNNING.
pub fn running_pid(tasks: &str, id: &str) -> Option<u32> {
    tasks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() >= 3 && f[0] == id && f[2] == "RUNNING")
            .then(|| f[1].parse().ok())
            .flatten()
    })
}

/// Console lines in which the node reports its own errors (DESIGN's stable console lines).
pub const ERROR_LINES: &[&str] = &["ros: config error: ", "ros: recovery shell: "];

/// The node's error line in `line`, from its `ros: ` prefix on (the kernel's timestamp dropped).
pub fn error_line(line: &str) -> Option<&str> {
    ERROR_LINES
        .iter()
        .find_map(|p| line.find(p))
        .map(|at| line[at..].trim_end())
}

fn spawn_reader(
    out: impl Read + Send + 'static,
    console: Arc<(Mutex<Console>, Condvar)>,
    echo_errors: bool,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(out);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).replace('\r', "");
                    if std::env::var_os("ROS_VM_ECHO").is_some() {
                        eprint!("{line}");
                    } else if let Some(e) = error_line(&line).filter(|_| echo_errors) {
                        eprintln!("{e}");
                    }
                    if let Ok(mut c) = console.0.lock() {
                        c.text.push_str(&line);
                    }
                    console.1.notify_all();
                }
            }
        }
        if let Ok(mut c) = console.0.lock() {
            c.closed = true;
        }
        console.1.notify_all();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_are_found_after_the_kernel_timestamp() {
        assert_eq!(
            error_line("[    3.1] ros: config error: hostnme (line 2): unknown field\n"),
            Some("ros: config error: hostnme (line 2): unknown field")
        );
        assert_eq!(
            error_line("ros: recovery shell: mount tmpfs on /run: ENOTDIR"),
            Some("ros: recovery shell: mount tmpfs on /run: ENOTDIR")
        );
        assert_eq!(error_line("ros: ready in 9.000s"), None);
    }
}
