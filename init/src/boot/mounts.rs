//! Mounts: the early API filesystems PID 1 needs (DESIGN.md boot step 1), reading
//! `/proc/self/mountinfo`, and the unmount plan of shutdown.
//!
//! Owns which filesystems boot mounts and in what order, and which ones shutdown leaves alone.
//! Calls the kernel only through `Sys`, so plans are unit-tested.

use super::sys::Sys;
use nix::mount::MsFlags;
use std::path::{Path, PathBuf};

/// One mount of the early plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MsFlags,
    pub data: Option<&'static str>,
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mount {fstype} on {target}: {errno}")]
    Mount {
        fstype: String,
        target: PathBuf,
        errno: nix::errno::Errno,
    },
    #[error("create mount point {target}: {errno}")]
    Mkdir {
        target: PathBuf,
        errno: nix::errno::Errno,
    },
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// The API filesystems, parents before children. /dev, /proc and /sys come first because
/// logging (/dev/kmsg) and everything else needs them.
pub fn early_plan() -> Vec<MountSpec> {
    let m = |source, target, fstype, flags, data| MountSpec {
        source,
        target,
        fstype,
        flags,
        data,
    };
    vec![
        m(
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        m("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, None),
        m("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC, None),
        m(
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
            Some("gid=5,mode=620,ptmxmode=666"),
        ),
        m(
            "shm",
            "/dev/shm",
            "tmpfs",
            MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
            Some("mode=1777"),
        ),
        m(
            "tmpfs",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
            Some("mode=0755"),
        ),
        m(
            "tmpfs",
            "/tmp",
            "tmpfs",
            MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
            Some("mode=1777"),
        ),
        m(
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            NOSUID_NODEV_NOEXEC,
            // No `nsdelegate`: the user containerd lives in a cgroup namespace rooted at the
            // fence but its process sits outside it (supervisor::fence_ns), and nsdelegate
            // would forbid runc there to move a container's first process from the shim's
            // cgroup into the fence.
            None,
        ),
    ]
}

/// The first three mounts of the plan: what stage 1 needs before switch_root.
pub fn minimal_plan() -> Vec<MountSpec> {
    early_plan().into_iter().take(3).collect()
}

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub target: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// mountinfo escapes blanks and backslashes as octal (`\040`).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `/proc/self/mountinfo` text, in mount order. Malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let target = left.split_whitespace().nth(4)?;
            let mut r = right.split_whitespace();
            let fstype = r.next()?;
            let source = r.next().unwrap_or("none");
            Some(MountEntry {
                target: PathBuf::from(unescape(target)),
                fstype: fstype.into(),
                source: unescape(source),
            })
        })
        .collect()
}

/// The current mount table, empty when /proc is not mounted yet.
pub fn current() -> Vec<MountEntry> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| parse_mountinfo(&t))
        .unwrap_or_default()
}

/// Mounts every entry of `plan` whose target is not already a mount point.
/// Returns how many were mounted; the first failure is returned as an error (a boot fault).
pub fn mount_missing(
    sys: &dyn Sys,
    plan: &[MountSpec],
    mounted: &[MountEntry],
) -> Result<usize, MountError> {
    let mut n = 0;
    for spec in plan {
        let target = Path::new(spec.target);
        if mounted.iter().any(|m| m.target == target) {
            continue;
        }
        // Only create a missing mount point; an existing non-directory is a fault mount reports.
        if !target.exists() {
            sys.mkdir_p(target).map_err(|errno| MountError::Mkdir {
                target: target.into(),
                errno,
            })?;
        }
        sys.mount(spec.source, target, spec.fstype, spec.flags, spec.data)
            .map_err(|errno| MountError::Mount {
                fstype: spec.fstype.into(),
                target: target.into(),
                errno,
            })?;
        n += 1;
    }
    Ok(n)
}

/// Filesystems that carry no data of their own; shutdown leaves them mounted (unmounting
/// /proc or /dev would only take away what shutdown itself uses).
const API_FSTYPES: &[&str] = &[
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "cgroup2",
    "cgroup",
    "securityfs",
    "debugfs",
    "tracefs",
    "mqueue",
    "bpf",
    "pstore",
    "configfs",
    "fusectl",
    "hugetlbfs",
    "rootfs",
    "efivarfs",
    "binfmt_misc",
];

/// What shutdown unmounts, children before parents (reverse mount order); never `/`.
pub fn unmount_plan(mounted: &[MountEntry]) -> Vec<PathBuf> {
    mounted
        .iter()
        .rev()
        .filter(|m| m.target != Path::new("/") && !API_FSTYPES.contains(&m.fstype.as_str()))
        .map(|m| m.target.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::sys::fake::{Call, RecordingSys};
    use super::*;
    use nix::errno::Errno;

    const MOUNTINFO: &str = "\
22 1 0:20 / / rw,relatime - rootfs rootfs rw
23 22 0:5 / /dev rw,nosuid - devtmpfs devtmpfs rw,size=1k
24 22 0:21 / /proc rw - proc proc rw
25 22 0:22 / /run rw - tmpfs tmpfs rw
26 22 253:1 / /mnt/my\\040disk rw - ext4 /dev/vda rw
27 24 0:30 / /proc/sys/fs/binfmt_misc rw - binfmt_misc binfmt_misc rw
";

    #[test]
    fn mountinfo_parses_targets_types_and_escapes() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 6);
        assert_eq!(m[0].fstype, "rootfs");
        assert_eq!(
            m[4],
            MountEntry {
                target: "/mnt/my disk".into(),
                fstype: "ext4".into(),
                source: "/dev/vda".into()
            }
        );
    }

    #[test]
    fn mount_missing_skips_mounted_targets_in_plan_order() {
        let sys = RecordingSys::default();
        let mounted = parse_mountinfo(MOUNTINFO);
        let n = mount_missing(&sys, &early_plan(), &mounted).unwrap();
        let targets: Vec<PathBuf> = sys
            .calls
            .borrow()
            .iter()
            .filter_map(|c| match c {
                Call::Mount { target, .. } => Some(target.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(n, 5);
        assert_eq!(
            targets,
            ["/sys", "/dev/pts", "/dev/shm", "/tmp", "/sys/fs/cgroup"].map(PathBuf::from)
        );
    }

    #[test]
    fn mount_failure_names_fstype_target_and_errno() {
        let sys = RecordingSys {
            fail_target: Some(("/run".into(), Errno::ENOTDIR)),
            ..Default::default()
        };
        let err = mount_missing(&sys, &early_plan(), &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "mount tmpfs on /run: ENOTDIR: Not a directory"
        );
    }

    #[test]
    fn unmount_plan_is_reverse_order_without_root_or_api_filesystems() {
        let plan = unmount_plan(&parse_mountinfo(MOUNTINFO));
        assert_eq!(
            plan,
            vec![PathBuf::from("/mnt/my disk"), PathBuf::from("/run")]
        );
    }

    #[test]
    fn minimal_plan_is_dev_proc_sys() {
        let t: Vec<_> = minimal_plan().iter().map(|m| m.target).collect();
        assert_eq!(t, ["/dev", "/proc", "/sys"]);
    }
}
