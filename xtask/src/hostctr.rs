//! A private containerd on the build host, of exactly the image's version, for host
//! integration tests (importing the system images now; the runtime code's import, spec,
//! start/stop, logs and restart tests next).
//!
//! The image's containerd is linked against trixie's glibc, newer than a Debian 12 host's, so it
//! runs in a chroot of the staged system tree (the same binaries and libraries as
//! `system.erofs`), following DESIGN.md's verified recipe: `unshare --mount --pid --fork` (a
//! private mount namespace, and a PID namespace so that killing containerd kills every shim and
//! container it started), the root bind-mounted onto itself (runc's pivot_root needs a mount
//! point; a plain chroot fails with `mount /, flags: 0x84000: invalid argument`), a fresh
//! `/proc`, `/sys` and `/dev` rbound from the host, the root moved onto `/` (as switch_root
//! does: without it `runc exec` lands in the host's `/`), then `chroot` and containerd with a
//! minimal config (CRI disabled).
//!
//! # API
//!
//! - [`prepare_rootfs`]: stage the runtime tree (`build/hostctr/rootfs`, once per input change,
//!   under a lock) from fetched packages ([`crate::fetch::fetch_all`]).
//! - [`HostContainerd::start`]: start containerd; [`HostContainerd::address`] is its socket,
//!   usable from the host (containerd-client, tonic) as is.
//! - [`HostContainerd::dir`]: a scratch directory mounted at the **same path** inside the chroot,
//!   so any path under it (OCI archives, log files, FIFOs, bundles) means the same thing to the
//!   test, to containerd and to the shims. Put every file containerd must see there.
//! - [`HostContainerd::ctr`] / [`HostContainerd::ctr_ok`]: run the image's `ctr` inside the
//!   namespace against this containerd.
//! - [`HostContainerd::host_pid`]: a task's PID as containerd reports it (in its PID namespace)
//!   → the PID on the host, for `/proc` or `kill` from the test.
//! - [`HostContainerd::stop`] (or drop): remove every task (so runc deletes its cgroups), stop
//!   containerd (SIGTERM, then SIGKILL after 10 s), which ends the PID namespace and with it
//!   every remaining process; remove the now empty `/<namespace>` cgroups; then delete the
//!   scratch directory.
//!
//! Needs root, `unshare`/`nsenter`/`mount` (util-linux) and `chroot` (coreutils) on the host.
//! Limitations: the unshare process gets `PR_SET_PDEATHSIG`, which fires when the *thread* that
//! started it exits — keep a `HostContainerd` on the thread that created it (tests do). The
//! overlayfs snapshotter needs the scratch directory on a filesystem overlayfs accepts as upper
//! (ext4, xfs, tmpfs — not overlayfs itself). containerd sees itself as PID 1 of its namespace.
//! Containers' cgroups are the host's (no cgroup namespace): a spec with its own cgroups path
//! (as ros's will, under `/ros/…`) leaves that path's parents behind.

use crate::fetch::{DirLock, FetchError, PackageSet};
use crate::layout::Layout;
use crate::system::{self, SystemError, SystemManifest};
use crate::tree::USRMERGE;
use crate::util::{describe, output_tail, sha256_file};
use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `PATH` for everything started here (host tools before the chroot, containerd and shims after).
const PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// How long containerd may take to answer after it started.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long containerd gets to exit after SIGTERM before the namespace is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong; each names the path or command, and start failures carry containerd's log.
#[derive(Debug, thiserror::Error)]
pub enum HostCtrError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("a private containerd needs root (mount namespaces, chroot)")]
    NotRoot,
    #[error("cannot run `{command}`: {source}")]
    Spawn { command: String, source: io::Error },
    #[error("containerd did not come up ({reason}); its log:\n{log}")]
    Start { reason: String, log: String },
    #[error("`{command}` failed ({status}): {output}")]
    Command {
        command: String,
        status: std::process::ExitStatus,
        output: String,
    },
    #[error("{rootfs}: no usr/bin/containerd; stage it with hostctr::prepare_rootfs")]
    NoContainerd { rootfs: PathBuf },
    #[error(transparent)]
    System(Box<SystemError>),
    #[error(transparent)]
    Fetch(Box<FetchError>),
}

impl From<SystemError> for HostCtrError {
    fn from(e: SystemError) -> Self {
        HostCtrError::System(Box::new(e))
    }
}

impl From<FetchError> for HostCtrError {
    fn from(e: FetchError) -> Self {
        HostCtrError::Fetch(Box::new(e))
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> HostCtrError {
    let path = path.to_owned();
    move |source| HostCtrError::Io { path, source }
}

/// Stages the runtime tree of `images/system.toml` (executables, loader, libraries; no OCI
/// archives) into `build/hostctr/rootfs` unless it is current, and returns it. Safe to call
/// from parallel tests and processes (holds `build/hostctr.lock`).
pub fn prepare_rootfs(layout: &Layout, packages: &PackageSet) -> Result<PathBuf, HostCtrError> {
    let base = layout.build().join("hostctr");
    let _guard = DirLock::acquire(&layout.build().join("hostctr.lock"))?;
    let manifest_path = layout.images().join("system.toml");
    let manifest = SystemManifest::load(&manifest_path)?;
    let mut inputs = format!(
        "system.toml {}\n",
        sha256_file(&manifest_path).map_err(io_err(&manifest_path))?
    );
    for name in manifest.packages() {
        if let Some(pin) = packages.pin(&name) {
            inputs.push_str(&format!("{name} {} {}\n", pin.version, pin.sha256));
        }
    }
    let rootfs = base.join("rootfs");
    let stamp = base.join("rootfs.inputs");
    if rootfs.is_dir() && fs::read_to_string(&stamp).is_ok_and(|s| s == inputs) {
        return Ok(rootfs);
    }
    let _ = fs::remove_file(&stamp);
    system::stage(&rootfs, &manifest, &manifest_path, packages, &[])?;
    fs::write(&stamp, inputs).map_err(io_err(&stamp))?;
    Ok(rootfs)
}

/// The mount-and-chroot script run as PID 1 of the new namespaces: `$1` the run directory,
/// `$2` the staged tree, `$3` the scratch directory (bound at its own path inside).
///
/// The root is moved onto `/` before the chroot, as switch_root does, not just chrooted into:
/// `runc exec` joins a container's mount namespace with setns(2), which sets the root to the
/// namespace's root mount *and what is mounted on top of it* — with a plain chroot the
/// container's root sits deep in the tree, so exec'd processes landed in the host's `/`.
const SCRIPT: &str = r#"set -eu
run=$1 src=$2 data=$3
root=$run/rootfs
mount --bind "$root" "$root"
mount --bind "$src/usr" "$root/usr"
mount -o remount,bind,ro "$root/usr"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mount --bind "$data" "$root$data"
cd "$root"
mount --move . /
exec chroot . /usr/bin/containerd --config "$data/config.toml"
"#;

/// containerd's config: everything under `data`, CRI off.
pub fn config_toml(data: &Path) -> String {
    let d = data.display();
    format!(
        r#"# Written by xtask::hostctr: a private containerd for host tests.
version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{d}/containerd.sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"#
    )
}

/// A running private containerd; stopped and cleaned up on drop.
#[derive(Debug)]
pub struct HostContainerd {
    run: Option<tempfile::TempDir>,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// containerd's PID on the host.
    pid: i32,
    /// containerd's position in `NSpid:` lines (its PID namespace's depth).
    ns_level: usize,
}

/// The `NSpid:` PIDs of `pid` (outermost namespace first).
fn nspids(pid: i32) -> Option<Vec<i32>> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    line["NSpid:".len()..]
        .split_whitespace()
        .map(|p| p.parse().ok())
        .collect()
}

fn only_child(pid: u32) -> Option<i32> {
    let text = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    let kids: Vec<i32> = text
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    match kids.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

impl HostContainerd {
    /// Starts containerd from `rootfs` (a tree staged by [`prepare_rootfs`], or any tree with
    /// `usr/bin/containerd`, its libraries, `runc` and the shim) and waits until it answers.
    pub fn start(rootfs: &Path) -> Result<Self, HostCtrError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(HostCtrError::NotRoot);
        }
        let rootfs = fs::canonicalize(rootfs).map_err(io_err(rootfs))?;
        if !rootfs.join("usr/bin/containerd").is_file() {
            return Err(HostCtrError::NoContainerd { rootfs });
        }
        let run = tempfile::Builder::new()
            .prefix("ros-ctr.")
            .tempdir()
            .map_err(io_err(&std::env::temp_dir()))?;
        let run_path = fs::canonicalize(run.path()).map_err(io_err(run.path()))?;
        let data = run_path.join("data");
        let root = run_path.join("rootfs");
        for d in [
            "usr", "proc", "sys", "dev", "run", "etc", "var", "root", "tmp",
        ] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        let tmp = root.join("tmp");
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777)).map_err(io_err(&tmp))?;
        for (name, target) in USRMERGE {
            let p = root.join(name);
            symlink(target, &p).map_err(io_err(&p))?;
        }
        let inside = root.join(data.strip_prefix("/").unwrap_or(&data));
        for p in [&data, &inside] {
            fs::create_dir_all(p).map_err(io_err(p))?;
        }
        let config = data.join("config.toml");
        fs::write(&config, config_toml(&data)).map_err(io_err(&config))?;
        let log = run_path.join("containerd.log");
        let log_file = fs::File::create(&log).map_err(io_err(&log))?;
        let log_err = log_file.try_clone().map_err(io_err(&log))?;

        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--pid",
            "--fork",
            "--kill-child",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            SCRIPT,
            "sh",
        ])
        .arg(&run_path)
        .arg(&rootfs)
        .arg(&data)
        .env_clear()
        .env("PATH", PATH)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log_file))
        .stderr(Stdio::from(log_err));
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of the
        // parent; it only makes the kernel kill unshare (and so the namespace) if we die.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(io::Error::from)
            });
        }
        let command = describe(&cmd);
        let child = cmd.spawn().map_err(|source| HostCtrError::Spawn {
            command: command.clone(),
            source,
        })?;
        let mut me = HostContainerd {
            run: Some(run),
            data,
            log,
            child: Some(child),
            pid: 0,
            ns_level: 0,
        };
        me.wait_started()?;
        Ok(me)
    }

    fn start_failed(&self, reason: String) -> HostCtrError {
        HostCtrError::Start {
            reason,
            log: self.log_tail(),
        }
    }

    fn child_exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn wait_started(&mut self) -> Result<(), HostCtrError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let unshare = self.child.as_ref().map(|c| c.id()).unwrap_or(0);
        loop {
            if let Some(status) = self.child_exited() {
                return Err(self.start_failed(format!("unshare exited: {status}")));
            }
            if self.pid == 0 {
                if let Some(pid) = only_child(unshare) {
                    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                    if comm.trim() == "containerd" {
                        self.pid = pid;
                        self.ns_level = nspids(pid).map_or(1, |v| v.len().saturating_sub(1));
                    }
                }
            }
            if self.pid != 0 && self.address().exists() {
                if let Ok(out) = self.ctr("default", &["version"]) {
                    if out.status.success() {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(self.start_failed(format!(
                    "no answer on {} after {}s",
                    self.address().display(),
                    START_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The scratch directory: the same path inside the chroot and on the host.
    pub fn dir(&self) -> &Path {
        &self.data
    }

    /// containerd's gRPC socket (`<dir>/containerd.sock`).
    pub fn address(&self) -> PathBuf {
        self.data.join("containerd.sock")
    }

    /// containerd's PID on the host.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// containerd's stdout and stderr so far.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last lines of containerd's log.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Runs the image's `ctr --address <socket> --namespace <namespace> ARGS` inside the mount
    /// namespace and chroot of this containerd.
    pub fn ctr(&self, namespace: &str, args: &[&str]) -> Result<Output, HostCtrError> {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--target={}", self.pid))
            .args([
                "--mount",
                "--pid",
                "--root",
                "--wd",
                "--",
                "/usr/bin/ctr",
                "--address",
            ])
            .arg(self.address())
            .args(["--namespace", namespace])
            .args(args)
            .env_clear()
            .env("PATH", PATH)
            .stdin(Stdio::null());
        let command = describe(&cmd);
        cmd.output()
            .map_err(|source| HostCtrError::Spawn { command, source })
    }

    /// [`Self::ctr`] that must succeed; returns its stdout.
    pub fn ctr_ok(&self, namespace: &str, args: &[&str]) -> Result<String, HostCtrError> {
        let out = self.ctr(namespace, args)?;
        if !out.status.success() {
            return Err(HostCtrError::Command {
                command: format!("ctr -n {namespace} {}", args.join(" ")),
                status: out.status,
                output: output_tail(&out),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The host PID of the process that containerd reports as `pid` (numbered in containerd's
    /// PID namespace: tasks, shims, containerd itself as 1), if it is running.
    pub fn host_pid(&self, pid: i32) -> Option<i32> {
        let ours = pid_ns(self.pid)?;
        let procs = fs::read_dir("/proc").ok()?;
        for e in procs.flatten() {
            let Some(host) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if nspids(host).and_then(|ns| ns.get(self.ns_level).copied()) != Some(pid) {
                continue;
            }
            // Same number at the same depth is not enough (another containerd's namespace):
            // the process must be in containerd's namespace or descend from a process there.
            let mut p = host;
            for _ in 0..64 {
                if pid_ns(p).as_ref() == Some(&ours) {
                    return Some(host);
                }
                match ppid(p) {
                    Some(parent) if parent > 1 => p = parent,
                    _ => break,
                }
            }
        }
        None
    }

    /// Removes every task, stops containerd and deletes the scratch directory, reporting the
    /// first failure (drop does the same, ignoring failures).
    pub fn stop(mut self) -> Result<(), HostCtrError> {
        self.teardown()
    }

    /// Force-removes every task (runc then deletes its cgroup); returns the namespaces.
    fn remove_tasks(&self) -> Vec<String> {
        let Ok(namespaces) = self.ctr_ok("default", &["namespaces", "ls", "-q"]) else {
            return Vec::new();
        };
        let namespaces: Vec<String> = namespaces
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        for ns in &namespaces {
            let Ok(tasks) = self.ctr_ok(ns, &["tasks", "ls", "-q"]) else {
                continue;
            };
            for id in tasks.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let _ = self.ctr(ns, &["tasks", "rm", "-f", id]);
            }
        }
        namespaces
    }

    fn teardown(&mut self) -> Result<(), HostCtrError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let mut result = Ok(());
        let mut namespaces = Vec::new();
        if child.try_wait().ok().flatten().is_none() {
            if self.pid != 0 {
                namespaces = self.remove_tasks();
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(self.pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let deadline = Instant::now() + STOP_TIMEOUT;
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if child.try_wait().ok().flatten().is_none() {
                // unshare --kill-child: killing unshare SIGKILLs containerd, the namespace's
                // init, and with it every process of the namespace.
                let _ = child.kill();
            }
        }
        let _ = child.wait();
        remove_empty_cgroups(Path::new("/sys/fs/cgroup"), &namespaces);
        if let Some(run) = self.run.take() {
            let path = run.path().to_owned();
            if let Err(e) = run.close() {
                result = Err(HostCtrError::Io { path, source: e });
            }
        }
        result
    }
}

/// runc removes a task's own cgroup (`/<namespace>/<id>` by default) but not the
/// `/<namespace>` above it: remove those when empty, in the v2 tree and in every v1 hierarchy
/// (rmdir refuses a cgroup that still has processes or children, so nothing in use goes).
fn remove_empty_cgroups(root: &Path, namespaces: &[String]) {
    let mut dirs = vec![root.to_owned()];
    if let Ok(entries) = fs::read_dir(root) {
        dirs.extend(
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    for d in dirs {
        for ns in namespaces {
            let _ = fs::remove_dir(d.join(ns));
        }
    }
}

fn pid_ns(pid: i32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/ns/pid")).ok()
}

fn ppid(pid: i32) -> Option<i32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("PPid:"))?;
    line["PPid:".len()..].trim().parse().ok()
}

impl Drop for HostContainerd {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keeps_everything_under_the_scratch_dir() {
        let c = config_toml(Path::new("/tmp/ros-ctr.x/data"));
        assert!(c.contains("root = \"/tmp/ros-ctr.x/data/root\""));
        assert!(c.contains("state = \"/tmp/ros-ctr.x/data/state\""));
        assert!(c.contains("address = \"/tmp/ros-ctr.x/data/containerd.sock\""));
        assert!(c.contains("\"io.containerd.grpc.v1.cri\""));
        let parsed: toml::Value = toml::from_str(&c).unwrap();
        assert_eq!(parsed["version"].as_integer(), Some(2));
    }

    #[test]
    fn nspids_of_this_process_end_with_its_pid() {
        let me = std::process::id() as i32;
        let ns = nspids(me).unwrap();
        assert_eq!(ns.first(), Some(&me));
    }
}
