//! Named network namespaces for workloads: `<dir>/<name>` (normally `/run/ros/netns/<name>`), a
//! file on which a new network namespace is bind-mounted, as `ip netns` does, so it outlives
//! every process in it and containerd/runc can join it by path.
//!
//! Owns: creating (a short-lived thread unshares a new network namespace and bind-mounts its
//! `/proc/thread-self/ns/net`; the caller's own namespace never changes), deleting (lazy
//! unmount, then the file), and listing the names present.
//! Must not: configure anything inside the namespace (the CNI plugins do), or delete a file
//! that is not in its directory.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

/// The netns directory PID 1 uses.
pub const NETNS_DIR: &str = "/run/ros/netns";

/// A namespace that could not be made or removed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetnsError {
    /// The name cannot be a file name.
    #[error("network namespace name {name:?} is not a plain file name")]
    BadName {
        /// The name.
        name: String,
    },
    /// A file operation failed.
    #[error("{path}: {op}: {reason}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What was done (`create`, `unshare`, `bind mount`, `unmount`, `remove`).
        op: &'static str,
        /// The OS error.
        reason: String,
    },
}

fn io(path: &Path, op: &'static str) -> impl FnOnce(String) -> NetnsError {
    let path = path.to_owned();
    move |reason| NetnsError::Io { path, op, reason }
}

fn checked(dir: &Path, name: &str) -> Result<PathBuf, NetnsError> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0');
    if plain {
        Ok(dir.join(name))
    } else {
        Err(NetnsError::BadName {
            name: name.to_string(),
        })
    }
}

/// The path of namespace `name` in `dir` (whether or not it exists).
pub fn path(dir: &Path, name: &str) -> Result<PathBuf, NetnsError> {
    checked(dir, name)
}

/// Whether `path` has a namespace mounted on it (an nsfs file, not the empty placeholder).
pub fn is_mounted(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// Creates namespace `name` under `dir` and returns its path. An existing mounted namespace of
/// that name is an error (the caller decides whether a leftover is deleted first).
pub fn create(dir: &Path, name: &str) -> Result<PathBuf, NetnsError> {
    let path = checked(dir, name)?;
    fs::create_dir_all(dir).map_err(|e| io(dir, "create")(e.to_string()))?;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| io(&path, "create")(e.to_string()))?;
    let target = path.clone();
    let made = std::thread::spawn(move || -> Result<(), NetnsError> {
        // Only this thread moves to the new namespace, and it ends right after.
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| io(&target, "unshare")(e.to_string()))?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| io(&target, "bind mount")(e.to_string()))
    })
    .join();
    let made = made.unwrap_or_else(|_| Err(io(&path, "unshare")("thread panicked".into())));
    if let Err(e) = made {
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// Makes `dir` a shared mount point (bind-mounted on itself, then `MS_SHARED`), as `ip netns`
/// does with `/run/netns`. PID 1 calls it before the user containerd starts: that daemon runs in
/// a mount namespace of its own (`supervisor::fence_ns`, a slave of this one), and only a
/// mount point that was shared when it unshared receives the namespaces mounted here later —
/// otherwise runc would find an empty placeholder file at a workload's namespace path.
/// Idempotent: a `dir` that already is a mount point is only marked shared again.
pub fn share_dir(dir: &Path) -> Result<(), NetnsError> {
    fs::create_dir_all(dir).map_err(|e| io(dir, "create")(e.to_string()))?;
    if !is_mount_point(dir) {
        mount(
            Some(dir),
            dir,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| io(dir, "bind mount")(e.to_string()))?;
    }
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_SHARED | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| io(dir, "make shared")(e.to_string()))
}

/// Whether `dir` is listed as a mount point in `/proc/self/mountinfo` (field 5).
fn is_mount_point(dir: &Path) -> bool {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = dir.display().to_string();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| m == want)
}

/// Deletes namespace `name` under `dir`: unmounts it (lazily: a process still inside keeps it
/// alive until it leaves) and removes the file. Absent is not an error.
pub fn delete(dir: &Path, name: &str) -> Result<(), NetnsError> {
    let path = checked(dir, name)?;
    if fs::symlink_metadata(&path).is_err() {
        return Ok(());
    }
    if is_mounted(&path) {
        umount2(&path, MntFlags::MNT_DETACH).map_err(|e| io(&path, "unmount")(e.to_string()))?;
    }
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(&path, "remove")(e.to_string())),
    }
}

/// The names of every file in `dir` (namespaces and leftover placeholders); none when `dir`
/// does not exist.
pub fn list(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_plain() {
        let d = Path::new("/run/ros/netns");
        assert!(path(d, "web").is_ok_and(|p| p == Path::new("/run/ros/netns/web")));
        for bad in ["", ".", "..", "a/b", "../x"] {
            assert!(
                matches!(path(d, bad), Err(NetnsError::BadName { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn deleting_an_absent_namespace_succeeds() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(delete(d.path(), "gone"), Ok(()));
        assert!(list(d.path()).is_empty());
        assert!(list(&d.path().join("missing")).is_empty());
    }
}
