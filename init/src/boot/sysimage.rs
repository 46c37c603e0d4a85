//! The system image: `/usr/lib/ros/system.erofs` (containerd, runc, their libraries and the
//! bundled OCI archives; docs/images.md) attached to a loop device and mounted read-only at
//! `/usr/lib/ros/system`, with the links that make its dynamically linked binaries run from
//! the tmpfs root.
//!
//! Owns the mount point, the links and `PATH` for containerd. The loader path of the image's
//! binaries is absolute (`/lib64/ld-linux-x86-64.so.2`) and there is no ld.so.cache, so the root
//! gets `/lib64 → usr/lib/ros/system/usr/lib64` and `/usr/lib/x86_64-linux-gnu →
//! ros/system/usr/lib/x86_64-linux-gnu` (neither exists in the initramfs), plus `/usr/bin` links
//! for `containerd`, `containerd-shim-runc-v2`, `ctr` and `runc`, and `/usr/sbin` links for `iptables`,
//! `iptables-save` and `ip6tables`. An existing path is left alone.
//!
//! Two sources, the file winning when both are there: the file in the initramfs
//! (`initrd.img`, loop-mounted), or — when the initramfs carries only the image's UUID in
//! `/usr/lib/ros/system.uuid` (`initrd-disk.img`) — the block device holding that erofs image,
//! found by `sysdisk` and mounted directly (no loop device), so the image is not kept in RAM.

use super::loopdev::{self, LoopError};
use super::{modules, sysdisk};
use crate::storage::device::Dirs;
use nix::mount::MsFlags;
use std::fmt;
use std::path::{Path, PathBuf};

/// The image file the initramfs carries.
pub const IMAGE: &str = "/usr/lib/ros/system.erofs";
/// Or the UUID of the erofs image to find on a block device.
pub const UUID_FILE: &str = "/usr/lib/ros/system.uuid";
/// Where it is mounted.
pub const MOUNT_POINT: &str = "/usr/lib/ros/system";
/// The bundled OCI archives inside the mounted image.
pub const ARCHIVES: &str = "/usr/lib/ros/system/usr/share/ros/images";
/// `PATH` for containerd, its shims and runc.
pub const DAEMON_PATH: &str =
    "/usr/lib/ros/system/usr/bin:/usr/lib/ros/system/usr/sbin:/usr/bin:/bin";

/// (link, target) pairs created in the root.
const LINKS: &[(&str, &str)] = &[
    ("/lib64", "usr/lib/ros/system/usr/lib64"),
    (
        "/usr/lib/x86_64-linux-gnu",
        "ros/system/usr/lib/x86_64-linux-gnu",
    ),
    (
        "/usr/bin/containerd",
        "../lib/ros/system/usr/bin/containerd",
    ),
    (
        "/usr/bin/containerd-shim-runc-v2",
        "../lib/ros/system/usr/bin/containerd-shim-runc-v2",
    ),
    ("/usr/bin/ctr", "../lib/ros/system/usr/bin/ctr"),
    ("/usr/bin/runc", "../lib/ros/system/usr/sbin/runc"),
    // iptables (nf_tables backend) for the admin: the rules of workload networking are read
    // with `iptables -S`/`iptables-save` (ros itself runs the image's copy by its full path).
    ("/usr/sbin/iptables", "../lib/ros/system/usr/sbin/iptables"),
    (
        "/usr/sbin/iptables-save",
        "../lib/ros/system/usr/sbin/iptables-save",
    ),
    (
        "/usr/sbin/ip6tables",
        "../lib/ros/system/usr/sbin/ip6tables",
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum SysImageError {
    #[error("system image {IMAGE}: not present")]
    Missing,
    #[error("system image: {0}")]
    Loop(#[from] LoopError),
    #[error("system image: mount {dev} on {MOUNT_POINT}: {source}")]
    Mount {
        dev: PathBuf,
        source: nix::errno::Errno,
    },
    #[error("system image: {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("system image: {UUID_FILE}: {text:?} is not a UUID")]
    BadUuid { text: String },
    #[error(
        "system image {IMAGE}: not present, and no block device carries the erofs image with \
         UUID {uuid} (waited {waited_s} s; looked at: {})",
        looked_at_text(looked_at)
    )]
    NoDisk {
        uuid: String,
        waited_s: u64,
        /// Each device listed and what it carries (`vda: no erofs`).
        looked_at: Vec<String>,
    },
}

fn looked_at_text(seen: &[String]) -> String {
    if seen.is_empty() {
        "no block devices".to_string()
    } else {
        seen.join(", ")
    }
}

/// Where the image was mounted from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mounted {
    /// The loop device (file in the initramfs) or the disk/partition.
    pub dev: PathBuf,
    /// The erofs UUID when it was found on a disk by it.
    pub uuid: Option<String>,
}

impl fmt::Display for Mounted {
    /// `system image on /dev/vda (erofs UUID …) mounted at /usr/lib/ros/system`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "system image on {}", self.dev.display())?;
        if let Some(u) = &self.uuid {
            write!(f, " (erofs UUID {u})")?;
        }
        write!(f, " mounted at {MOUNT_POINT}")
    }
}

/// What the initramfs offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The image file, to loop-mount.
    File(PathBuf),
    /// The UUID of the image on a disk.
    Disk(String),
}

/// The file when it is there (it wins), else the UUID from `uuid_file`.
pub fn source(image: &Path, uuid_file: &Path) -> Result<Source, SysImageError> {
    if image.exists() {
        return Ok(Source::File(image.to_path_buf()));
    }
    let text = match std::fs::read_to_string(uuid_file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(SysImageError::Missing),
        Err(source) => {
            return Err(SysImageError::Io {
                path: uuid_file.to_path_buf(),
                source,
            })
        }
    };
    sysdisk::parse_uuid(&text)
        .map(Source::Disk)
        .ok_or_else(|| SysImageError::BadUuid {
            text: text.trim().to_string(),
        })
}

/// Loads the modules, mounts the image (the file in the initramfs, else the disk named by its
/// UUID, waited for up to `sysdisk::WAIT`) and creates the links.
pub fn mount() -> Result<Mounted, SysImageError> {
    let source = source(Path::new(IMAGE), Path::new(UUID_FILE))?;
    let needed: &[&str] = match source {
        // overlay: containerd's snapshotter needs it for every container's rootfs.
        Source::File(_) => &["loop", "erofs", "overlay"],
        Source::Disk(_) => &["erofs", "overlay"],
    };
    let dir = modules::module_dir();
    match modules::ModuleDb::load(&dir) {
        Ok(db) => {
            for name in needed {
                if let Err(e) = modules::load(&db, &dir, name) {
                    log::warn!("system image: {e}");
                }
            }
        }
        Err(e) => log::warn!("system image: {e}"),
    }
    std::fs::create_dir_all(MOUNT_POINT).map_err(|source| SysImageError::Io {
        path: MOUNT_POINT.into(),
        source,
    })?;
    let mounted = match source {
        Source::File(image) => {
            let attached = loopdev::attach_read_only(&image)?;
            let dev = attached.path.clone();
            mount_erofs(&dev)?;
            // Mounted: the mount holds the device now.
            drop(attached);
            Mounted { dev, uuid: None }
        }
        Source::Disk(uuid) => {
            let disk = sysdisk::wait_for(&Dirs::default(), &uuid, sysdisk::WAIT, sysdisk::POLL)
                .map_err(|looked_at| SysImageError::NoDisk {
                    uuid: uuid.clone(),
                    waited_s: sysdisk::WAIT.as_secs(),
                    looked_at,
                })?;
            mount_erofs(&disk.path)?;
            Mounted {
                dev: disk.path,
                uuid: Some(uuid),
            }
        }
    };
    for (link, target) in LINKS {
        let link = Path::new(link);
        if link.symlink_metadata().is_ok() {
            log::warn!("system image: {} exists; not linked", link.display());
            continue;
        }
        if let Some(parent) = link.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        std::os::unix::fs::symlink(target, link).map_err(|source| SysImageError::Io {
            path: link.to_path_buf(),
            source,
        })?;
    }
    Ok(mounted)
}

/// Mounts the erofs on `dev` read-only at [`MOUNT_POINT`].
fn mount_erofs(dev: &Path) -> Result<(), SysImageError> {
    nix::mount::mount(
        Some(dev),
        MOUNT_POINT,
        Some("erofs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        None::<&str>,
    )
    .map_err(|source| SysImageError::Mount {
        dev: dev.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_wins_then_the_uuid_then_missing() {
        let d = tempfile::tempdir().unwrap();
        let image = d.path().join("system.erofs");
        let uuid = d.path().join("system.uuid");
        assert!(matches!(source(&image, &uuid), Err(SysImageError::Missing)));
        std::fs::write(&uuid, "0B9E3F5A-1C2D-4E5F-8A9B-0C1D2E3F4A5B\n").unwrap();
        assert_eq!(
            source(&image, &uuid).unwrap(),
            Source::Disk("0b9e3f5a-1c2d-4e5f-8a9b-0c1d2e3f4a5b".into())
        );
        std::fs::write(&image, b"erofs").unwrap();
        assert_eq!(source(&image, &uuid).unwrap(), Source::File(image.clone()));
        std::fs::remove_file(&image).unwrap();
        std::fs::write(&uuid, "junk\n").unwrap();
        let e = source(&image, &uuid).unwrap_err();
        assert_eq!(
            e.to_string(),
            "system image: /usr/lib/ros/system.uuid: \"junk\" is not a UUID"
        );
    }

    #[test]
    fn messages_name_the_device_the_uuid_and_what_was_looked_at() {
        let m = Mounted {
            dev: "/dev/vda".into(),
            uuid: Some("0b9e3f5a-1c2d-4e5f-8a9b-0c1d2e3f4a5b".into()),
        };
        assert_eq!(
            m.to_string(),
            "system image on /dev/vda (erofs UUID 0b9e3f5a-1c2d-4e5f-8a9b-0c1d2e3f4a5b) \
             mounted at /usr/lib/ros/system"
        );
        let l = Mounted {
            dev: "/dev/loop0".into(),
            uuid: None,
        };
        assert_eq!(
            l.to_string(),
            "system image on /dev/loop0 mounted at /usr/lib/ros/system"
        );
        let e = SysImageError::NoDisk {
            uuid: "0b9e3f5a-1c2d-4e5f-8a9b-0c1d2e3f4a5b".into(),
            waited_s: 10,
            looked_at: vec!["vda: no erofs".into()],
        };
        assert_eq!(
            e.to_string(),
            "system image /usr/lib/ros/system.erofs: not present, and no block device carries \
             the erofs image with UUID 0b9e3f5a-1c2d-4e5f-8a9b-0c1d2e3f4a5b (waited 10 s; \
             looked at: vda: no erofs)"
        );
        let e = SysImageError::NoDisk {
            uuid: "x".into(),
            waited_s: 10,
            looked_at: vec![],
        };
        assert!(e
            .to_string()
            .ends_with("(waited 10 s; looked at: no block devices)"));
    }
}
