//! The namespaces that fence everything the user containerd creates (DESIGN.md "cgroup v2
//! layout"): the user containerd runs in a cgroup namespace whose root is `/ros/user` and in a
//! mount namespace (a slave of the host's, so later host mounts still reach it) where cgroup2 is
//! mounted afresh, so `/sys/fs/cgroup` shows the fence as the root. Whatever cgroup path a
//! container asks for — ros's `/user/<name>`, the `/<ns>/<id>` that `ctr run` and nerdctl pick,
//! even `/` — runc resolves it inside the fence. The daemon process itself then moves out to
//! `/ros/runtime/containerd` (through a cgroup.procs fd opened in the host's namespace), so it
//! and its shims are not charged to the fence.
//!
//! The namespace is created once per boot (its first start enters `/ros/user` while it is still
//! an empty leaf, unshares, and pins the namespace with a bind mount at `PIN`); a restarted
//! daemon joins the pinned one with setns, because by then `/ros/user` has children and can no
//! longer take a process. Owns only that child-side setup: preparing it in the parent and the
//! raw syscalls in the forked child. It does not spawn, wait for or restart anything.

use crate::cgroups;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Where the fence's cgroup namespace is pinned for the daemon's restarts.
pub const PIN: &str = "/run/ros/user.cgns";

/// `statfs` magic of nsfs: what a pinned namespace file reports.
const NSFS_MAGIC: i64 = 0x6e73_6673;

#[derive(Debug, thiserror::Error)]
pub enum FenceNsError {
    #[error("user containerd fence: {path}: {source}")]
    Io { path: String, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FenceNsError + '_ {
    move |source| FenceNsError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// How the child gets into the fence's cgroup namespace.
enum Entry {
    /// Join the namespace pinned at `PIN`.
    Join(File),
    /// First start: enter the fence leaf through this cgroup.procs, unshare, pin.
    Create(File),
}

/// Everything the child needs, opened and allocated in the parent: after fork, the child of a
/// multi-threaded PID 1 may only make raw syscalls.
pub struct Prepared {
    entry: Entry,
    self_ns: CString,
    pin: CString,
    root: CString,
    cgroup_mnt: CString,
    cgroup2: CString,
}

/// Whether `path` is a pinned namespace (a bind mount of an nsfs file).
fn is_pinned(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 == NSFS_MAGIC)
        .unwrap_or(false)
}

fn cstring(s: &str) -> Result<CString, FenceNsError> {
    CString::new(s).map_err(|e| FenceNsError::Io {
        path: s.to_string(),
        source: io::Error::new(io::ErrorKind::InvalidInput, e),
    })
}

/// Opens what the child needs: the pinned namespace, or on first start the fence's
/// cgroup.procs and an empty file to pin the new namespace on.
pub fn prepare(cgroup_root: &Path, pin: &Path) -> Result<Prepared, FenceNsError> {
    let entry = if is_pinned(pin) {
        Entry::Join(File::open(pin).map_err(io_err(pin))?)
    } else {
        if let Some(dir) = pin.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        File::create(pin).map_err(io_err(pin))?;
        let procs = cgroup_root.join(cgroups::USER).join("cgroup.procs");
        Entry::Create(
            OpenOptions::new()
                .write(true)
                .open(&procs)
                .map_err(io_err(&procs))?,
        )
    };
    Ok(Prepared {
        entry,
        self_ns: cstring("/proc/self/ns/cgroup")?,
        pin: cstring(&pin.to_string_lossy())?,
        root: cstring("/")?,
        cgroup_mnt: cstring(cgroups::ROOT)?,
        cgroup2: cstring("cgroup2")?,
    })
}

/// Fails with the errno of the last syscall when `rc` is negative.
fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Prepared {
    /// Runs in the forked child before exec: enters the fence's cgroup namespace, moves the
    /// process to `runtime_procs` (host view), and remounts cgroup2 in a private mount
    /// namespace. Raw syscalls on memory prepared before the fork only.
    ///
    /// # Safety
    /// Call only in the child between fork and exec.
    pub unsafe fn enter(&self, runtime_procs: Option<&File>) -> io::Result<()> {
        // SAFETY: raw syscalls on fds and C strings owned by `self`, in the child.
        unsafe {
            match &self.entry {
                Entry::Join(ns) => check(libc::setns(ns.as_raw_fd(), libc::CLONE_NEWCGROUP))?,
                Entry::Create(procs) => {
                    // "0" moves the writer: the leaf becomes the namespace's root.
                    if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                        return Err(io::Error::last_os_error());
                    }
                    check(libc::unshare(libc::CLONE_NEWCGROUP))?;
                    check(libc::mount(
                        self.self_ns.as_ptr(),
                        self.pin.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ))?;
                }
            }
            // Out of the fence (the leaf must be empty before runc enables controllers in it).
            if let Some(f) = runtime_procs {
                if libc::write(f.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                std::ptr::null(),
                self.root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            ))?;
            // The host's cgroup2 mount is the same superblock: mounting it again on itself is
            // EBUSY, so detach it first (in this namespace only).
            check(libc::umount2(self.cgroup_mnt.as_ptr(), libc::MNT_DETACH))?;
            check(libc::mount(
                self.cgroup2.as_ptr(),
                self.cgroup_mnt.as_ptr(),
                self.cgroup2.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_opens_the_fence_leaf_and_creates_the_pin() {
        let dir = tempfile::tempdir().unwrap();
        let leaf = dir.path().join(cgroups::USER);
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::write(leaf.join("cgroup.procs"), "").unwrap();
        let pin = dir.path().join("run/ros/user.cgns");
        let p = prepare(dir.path(), &pin).unwrap();
        assert!(matches!(p.entry, Entry::Create(_)));
        assert!(pin.is_file(), "the pin's mount point exists");
    }

    #[test]
    fn a_missing_fence_leaf_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let pin = dir.path().join("user.cgns");
        let err = prepare(dir.path(), &pin).err().unwrap().to_string();
        assert!(err.contains("ros/user/cgroup.procs"), "{err}");
    }

    #[test]
    fn a_plain_file_is_not_a_pinned_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        std::fs::write(&f, "").unwrap();
        assert!(!is_pinned(&f));
        assert!(is_pinned(Path::new("/proc/self/ns/cgroup")));
    }
}
