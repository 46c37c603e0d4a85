//! The cgroup v2 layout of a ros node (DESIGN.md "containerd: two instances"): PID 1 and its
//! shells in `/ros/init`, OS services and the system containerd under `/ros/system`, the user
//! containerd and its shims in `/ros/runtime`, and every workload inside the fence `/ros/user`.
//!
//! Owns the tree, the controllers it enables, the reservations (memory.min) and the fence's
//! limits. Processes live only in leaves (cgroup v2's no-internal-process rule). Every function
//! takes the cgroup root so tests run against a temp dir; nothing here spawns or kills.

use crate::config::schema::UserLimits;
use crate::config::units::UserMemory;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The cgroup2 mount point.
pub const ROOT: &str = "/sys/fs/cgroup";

/// Leaves and inner nodes of the layout, relative to the cgroup root.
pub const INIT: &str = "ros/init";
pub const SYSTEM: &str = "ros/system";
pub const SYSTEM_CONTAINERD: &str = "ros/system/containerd";
pub const RUNTIME: &str = "ros/runtime";
pub const RUNTIME_CONTAINERD: &str = "ros/runtime/containerd";
pub const USER: &str = "ros/user";

/// Controllers delegated down the tree (those the kernel offers; others are skipped).
const CONTROLLERS: &[&str] = &["cpu", "io", "memory", "pids"];

/// Memory kept for the OS side even when workloads press: the system services and containerd,
/// and the user containerd (which must answer to stop a runaway workload).
pub const SYSTEM_MEMORY_MIN: u64 = 64 << 20;
pub const RUNTIME_MEMORY_MIN: u64 = 32 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
    #[error("limits.user.memory: {percent}% of MemTotal: cannot read MemTotal from {path}")]
    MemTotal { percent: u8, path: PathBuf },
}

fn io_err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_err(path, "write"))
}

/// The controllers `dir` may hand to its children (its `cgroup.controllers`).
fn available(dir: &Path) -> Vec<String> {
    fs::read_to_string(dir.join("cgroup.controllers"))
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Enables our controllers for the children of `dir`, as far as `dir` has them.
fn delegate(dir: &Path) -> Result<(), CgroupError> {
    let have = available(dir);
    let wanted: Vec<String> = CONTROLLERS
        .iter()
        .filter(|c| have.iter().any(|h| h == *c))
        .map(|c| format!("+{c}"))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    write(&dir.join("cgroup.subtree_control"), &wanted.join(" "))
}

/// Creates the layout under `root` and delegates controllers to every inner node but the
/// fence: `/ros/user` stays an empty leaf until the user containerd has entered it once to
/// root its cgroup namespace there (see `supervisor::fence_ns`); `delegate_fence` follows.
pub fn create_layout(root: &Path) -> Result<(), CgroupError> {
    for leaf in [INIT, SYSTEM_CONTAINERD, RUNTIME_CONTAINERD, USER] {
        let dir = root.join(leaf);
        fs::create_dir_all(&dir).map_err(io_err(&dir, "mkdir"))?;
    }
    for inner in ["", "ros", SYSTEM, RUNTIME] {
        delegate(&root.join(inner))?;
    }
    Ok(())
}

/// Enables the controllers inside the fence, for the containers' cgroups below it.
pub fn delegate_fence(root: &Path) -> Result<(), CgroupError> {
    delegate(&root.join(USER))
}

/// Moves process `pid` into the leaf `leaf`.
pub fn enter(root: &Path, leaf: &str, pid: i32) -> Result<(), CgroupError> {
    write(&root.join(leaf).join("cgroup.procs"), &pid.to_string())
}

/// MemTotal in bytes from a `/proc/meminfo` text.
pub fn mem_total(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// The fence's memory.max in bytes.
pub fn fence_memory(limit: UserMemory, meminfo_path: &Path) -> Result<u64, CgroupError> {
    match limit {
        UserMemory::Bytes(b) => Ok(b),
        UserMemory::Percent(p) => {
            let total = fs::read_to_string(meminfo_path)
                .ok()
                .and_then(|t| mem_total(&t));
            let total = total.ok_or_else(|| CgroupError::MemTotal {
                percent: p,
                path: meminfo_path.into(),
            })?;
            Ok(total / 100 * u64::from(p))
        }
    }
}

/// Applies the reservations and the fence's limits. Writes only files the kernel offers, so a
/// kernel without a controller degrades to fewer guarantees instead of failing boot.
pub fn apply_limits(
    root: &Path,
    limits: &UserLimits,
    meminfo_path: &Path,
) -> Result<(), CgroupError> {
    let set = |rel: &str, file: &str, value: String| -> Result<(), CgroupError> {
        let path = root.join(rel).join(file);
        if path.exists() {
            write(&path, &value)?;
        }
        Ok(())
    };
    set(SYSTEM, "memory.min", SYSTEM_MEMORY_MIN.to_string())?;
    set(RUNTIME, "memory.min", RUNTIME_MEMORY_MIN.to_string())?;
    set(
        USER,
        "memory.max",
        fence_memory(limits.memory, meminfo_path)?.to_string(),
    )?;
    set(USER, "pids.max", limits.pids.to_string())?;
    // Under contention workloads together weigh as much as one default cgroup, i.e. no more
    // than the OS side.
    set(USER, "cpu.weight", "100".to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake cgroup root: directories with the files the kernel would offer.
    fn fake_root() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids rdma misc\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn layout_creates_leaves_and_delegates_our_controllers() {
        let root = fake_root();
        // Inner nodes offer what their parent enabled; simulate the kernel for `ros`.
        fs::create_dir_all(root.path().join("ros")).unwrap();
        fs::write(
            root.path().join("ros/cgroup.controllers"),
            "cpu io memory pids\n",
        )
        .unwrap();
        create_layout(root.path()).unwrap();
        for leaf in [INIT, SYSTEM_CONTAINERD, RUNTIME_CONTAINERD, USER] {
            assert!(root.path().join(leaf).is_dir(), "{leaf}");
        }
        assert_eq!(
            fs::read_to_string(root.path().join("cgroup.subtree_control")).unwrap(),
            "+cpu +io +memory +pids"
        );
        assert_eq!(
            fs::read_to_string(root.path().join("ros/cgroup.subtree_control")).unwrap(),
            "+cpu +io +memory +pids"
        );
        assert!(
            !root
                .path()
                .join(SYSTEM)
                .join("cgroup.subtree_control")
                .exists(),
            "nothing offered, nothing written"
        );
    }

    #[test]
    fn percent_memory_is_taken_from_memtotal() {
        let dir = tempfile::tempdir().unwrap();
        let meminfo = dir.path().join("meminfo");
        fs::write(&meminfo, "MemTotal:        1000000 kB\nMemFree:  5 kB\n").unwrap();
        assert_eq!(
            fence_memory(UserMemory::Percent(75), &meminfo).unwrap(),
            1_024_000_000 / 100 * 75
        );
        assert_eq!(fence_memory(UserMemory::Bytes(42), &meminfo).unwrap(), 42);
        let err = fence_memory(UserMemory::Percent(50), &dir.path().join("nope")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("limits.user.memory: 50% of MemTotal"),
            "{err}"
        );
    }

    #[test]
    fn limits_are_written_where_the_kernel_offers_them() {
        let root = tempfile::tempdir().unwrap();
        for (rel, files) in [
            (SYSTEM, vec!["memory.min"]),
            (RUNTIME, vec!["memory.min"]),
            (USER, vec!["memory.max", "pids.max", "cpu.weight"]),
        ] {
            fs::create_dir_all(root.path().join(rel)).unwrap();
            for f in files {
                fs::write(root.path().join(rel).join(f), "").unwrap();
            }
        }
        let meminfo = root.path().join("meminfo");
        fs::write(&meminfo, "MemTotal: 2048 kB\n").unwrap();
        let limits = UserLimits {
            max_containers: 5,
            memory: UserMemory::Bytes(1 << 30),
            pids: 300,
        };
        apply_limits(root.path(), &limits, &meminfo).unwrap();
        let read = |p: &str| fs::read_to_string(root.path().join(p)).unwrap();
        assert_eq!(read("ros/user/memory.max"), (1u64 << 30).to_string());
        assert_eq!(read("ros/user/pids.max"), "300");
        assert_eq!(read("ros/system/memory.min"), SYSTEM_MEMORY_MIN.to_string());
    }
}
