//! Finding block devices without udev: devtmpfs has no `/dev/disk/by-label`, so ros lists
//! `/sys/class/block`, probes each device node itself (`probe`) and matches `LABEL=`/`UUID=`
//! against what it read; a path is taken as it is.
//!
//! Owns: [`DeviceSpec`] (the parsed `device`/`source` string) and [`BlockDev`] listing, both
//! over a root directory pair (`/sys/class/block`, `/dev`) so tests use a fake one.
//! Must not: write to a device. Skips loop, ram, zram and optical devices (the system image is
//! a loop device and must never be taken for a state disk).

use super::probe::{self, Probe};
use std::path::{Path, PathBuf};

/// What a `device`/`source` string names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// `none`: no device (state in RAM).
    None,
    /// `LABEL=…` (ext2/3/4 volume label).
    Label(String),
    /// `UUID=…` (ext2/3/4 filesystem UUID, case-insensitive).
    Uuid(String),
    /// An absolute path (`/dev/vdb`).
    Path(PathBuf),
}

impl DeviceSpec {
    /// Parses `none`, `LABEL=X`, `UUID=X` or an absolute path; anything else is `None` here
    /// (the caller names the key).
    pub fn parse(s: &str) -> Option<DeviceSpec> {
        let s = s.trim();
        if s == "none" {
            Some(DeviceSpec::None)
        } else if let Some(l) = s.strip_prefix("LABEL=") {
            Some(DeviceSpec::Label(l.to_string()))
        } else if let Some(u) = s.strip_prefix("UUID=") {
            Some(DeviceSpec::Uuid(u.to_ascii_lowercase()))
        } else if s.starts_with('/') {
            Some(DeviceSpec::Path(PathBuf::from(s)))
        } else {
            None
        }
    }
}

/// One block device of `/sys/class/block`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDev {
    /// Kernel name (`vda`, `vda1`).
    pub name: String,
    /// Its node (`/dev/vda`).
    pub path: PathBuf,
    /// A partition rather than a whole disk.
    pub partition: bool,
}

/// Where devices are listed and opened.
#[derive(Debug, Clone)]
pub struct Dirs {
    /// `/sys/class/block`.
    pub sys_block: PathBuf,
    /// `/dev`.
    pub dev: PathBuf,
}

impl Default for Dirs {
    fn default() -> Self {
        Dirs {
            sys_block: PathBuf::from("/sys/class/block"),
            dev: PathBuf::from("/dev"),
        }
    }
}

/// A fake `sys` and `dev` in a temporary directory (gone on drop), for tests that put
/// devices there.
#[cfg(test)]
pub struct FakeDirs {
    _root: tempfile::TempDir,
    pub dirs: Dirs,
}

#[cfg(test)]
impl Default for FakeDirs {
    fn default() -> FakeDirs {
        let root = tempfile::tempdir().unwrap();
        let dirs = Dirs {
            sys_block: root.path().join("sys"),
            dev: root.path().join("dev"),
        };
        std::fs::create_dir_all(&dirs.sys_block).unwrap();
        std::fs::create_dir_all(&dirs.dev).unwrap();
        FakeDirs { _root: root, dirs }
    }
}

const SKIPPED: &[&str] = &["loop", "ram", "zram", "sr", "fd", "nbd"];

/// Every usable block device, sorted by name.
pub fn list(dirs: &Dirs) -> Vec<BlockDev> {
    let Ok(entries) = std::fs::read_dir(&dirs.sys_block) else {
        return Vec::new();
    };
    let mut out: Vec<BlockDev> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if SKIPPED.iter().any(|p| name.starts_with(p)) {
                return None;
            }
            Some(BlockDev {
                path: dirs.dev.join(&name),
                partition: e.path().join("partition").exists(),
                name,
            })
        })
        .filter(|d| d.path.exists())
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The first device whose ext filesystem has this label or UUID, with its probe.
pub fn find_by(dirs: &Dirs, spec: &DeviceSpec) -> Option<(BlockDev, Probe)> {
    list(dirs).into_iter().find_map(|d| {
        let p = probe::probe(&d.path).ok()?;
        let (_, label, uuid) = p.ext()?;
        let hit = match spec {
            DeviceSpec::Label(l) => label == l,
            DeviceSpec::Uuid(u) => uuid == u,
            DeviceSpec::None | DeviceSpec::Path(_) => false,
        };
        hit.then_some((d, p))
    })
}

/// Resolves `spec` to a device node now (no waiting): a label or UUID through [`find_by`], a
/// path when it exists.
pub fn resolve(dirs: &Dirs, spec: &DeviceSpec) -> Option<PathBuf> {
    match spec {
        DeviceSpec::None => None,
        DeviceSpec::Path(p) => p.exists().then(|| p.clone()),
        DeviceSpec::Label(_) | DeviceSpec::Uuid(_) => find_by(dirs, spec).map(|(d, _)| d.path),
    }
}

/// `/dev/…` paths given in the config live under the real `/dev`; in tests the fake `dev`
/// directory stands in for it.
pub fn under(dirs: &Dirs, p: &Path) -> PathBuf {
    match p.strip_prefix("/dev") {
        Ok(rest) if dirs.dev != Path::new("/dev") => dirs.dev.join(rest),
        _ => p.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!(DeviceSpec::parse("none"), Some(DeviceSpec::None));
        assert_eq!(
            DeviceSpec::parse("LABEL=ROS_STATE"),
            Some(DeviceSpec::Label("ROS_STATE".into()))
        );
        assert_eq!(
            DeviceSpec::parse("UUID=AB-cd"),
            Some(DeviceSpec::Uuid("ab-cd".into()))
        );
        assert_eq!(
            DeviceSpec::parse("/dev/vdb"),
            Some(DeviceSpec::Path("/dev/vdb".into()))
        );
        assert_eq!(DeviceSpec::parse("vdb"), None);
    }

    #[test]
    fn listing_skips_loop_devices_and_marks_partitions() {
        let d = tempfile::tempdir().unwrap();
        let dirs = Dirs {
            sys_block: d.path().join("sys"),
            dev: d.path().join("dev"),
        };
        for name in ["vdb", "vda", "vda1", "loop0"] {
            std::fs::create_dir_all(dirs.sys_block.join(name)).unwrap();
            std::fs::create_dir_all(&dirs.dev).unwrap();
            std::fs::File::create(dirs.dev.join(name)).unwrap();
        }
        std::fs::File::create(dirs.sys_block.join("vda1/partition")).unwrap();
        let got: Vec<(String, bool)> = list(&dirs)
            .into_iter()
            .map(|b| (b.name, b.partition))
            .collect();
        assert_eq!(
            got,
            [
                ("vda".to_string(), false),
                ("vda1".to_string(), true),
                ("vdb".to_string(), false)
            ]
        );
    }
}
