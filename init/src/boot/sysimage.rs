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

use super::loopdev::{self, LoopError};
use super::modules;
use nix::mount::MsFlags;
use std::path::{Path, PathBuf};

/// The image file the initramfs carries.
pub const IMAGE: &str = "/usr/lib/ros/system.erofs";
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
}

/// Loads `loop`, `erofs` and `overlay`, mounts the image and creates the links. Returns the loop device.
pub fn mount() -> Result<PathBuf, SysImageError> {
    if !Path::new(IMAGE).exists() {
        return Err(SysImageError::Missing);
    }
    let dir = modules::module_dir();
    match modules::ModuleDb::load(&dir) {
        Ok(db) => {
            // overlay: containerd's snapshotter needs it for every container's rootfs.
            for name in ["loop", "erofs", "overlay"] {
                if let Err(e) = modules::load(&db, &dir, name) {
                    log::warn!("system image: {e}");
                }
            }
        }
        Err(e) => log::warn!("system image: {e}"),
    }
    let attached = loopdev::attach_read_only(Path::new(IMAGE))?;
    let dev = attached.path.clone();
    std::fs::create_dir_all(MOUNT_POINT).map_err(|source| SysImageError::Io {
        path: MOUNT_POINT.into(),
        source,
    })?;
    nix::mount::mount(
        Some(dev.as_path()),
        MOUNT_POINT,
        Some("erofs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        None::<&str>,
    )
    .map_err(|source| SysImageError::Mount {
        dev: dev.clone(),
        source,
    })?;
    // Mounted: the mount holds the device now.
    drop(attached);
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
    Ok(dev)
}
