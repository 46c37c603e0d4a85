//! Leaving the initramfs: copy (move) the rootfs into a tmpfs and make that the root, because
//! runc's pivot_root cannot work on the initramfs rootfs (DESIGN.md boot step 2).
//!
//! Owns the move of files and the switch itself (move mounts, chroot, exec). Files are copied
//! one by one and each original is removed right after, so peak memory stays near one copy.
//! It does not mount anything but the new root; the caller re-execs into the new tree.

use super::mounts::MountEntry;
use nix::mount::MsFlags;
use std::convert::Infallible;
use std::ffi::CString;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where the new root is built before it becomes `/`.
pub const NEW_ROOT: &str = "/.ros-root";

#[derive(Debug, thiserror::Error)]
pub enum SwitchRootError {
    #[error("switch_root: {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("switch_root: {what} {path}: {errno}")]
    Sys {
        what: &'static str,
        path: PathBuf,
        errno: nix::errno::Errno,
    },
}

fn io<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> SwitchRootError + 'a {
    move |source| SwitchRootError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn sys<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(nix::errno::Errno) -> SwitchRootError + 'a {
    move |errno| SwitchRootError::Sys {
        what,
        path: path.to_path_buf(),
        errno,
    }
}

/// True when `/` is the kernel's initramfs (fstype `rootfs`).
pub fn root_is_initramfs(mounted: &[MountEntry]) -> bool {
    mounted
        .iter()
        .find(|m| m.target == Path::new("/"))
        .is_some_and(|m| m.fstype == "rootfs")
}

/// Moves the tree at `src` into `dst` (an existing directory): directories, regular files with
/// their modes, and symlinks. Entries whose path is in `skip` are left where they are. With
/// `remove` each original is deleted once copied. Returns the bytes copied.
pub fn move_tree(
    src: &Path,
    dst: &Path,
    skip: &[PathBuf],
    remove: bool,
) -> Result<u64, SwitchRootError> {
    let mut bytes = 0;
    let entries = fs::read_dir(src).map_err(io("read dir", src))?;
    for entry in entries {
        let entry = entry.map_err(io("read dir", src))?;
        let from = entry.path();
        if skip.iter().any(|s| s == &from) {
            continue;
        }
        let to = dst.join(entry.file_name());
        let meta = fs::symlink_metadata(&from).map_err(io("stat", &from))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            fs::create_dir_all(&to).map_err(io("mkdir", &to))?;
            fs::set_permissions(&to, fs::Permissions::from_mode(meta.permissions().mode()))
                .map_err(io("chmod", &to))?;
            bytes += move_tree(&from, &to, skip, remove)?;
            if remove {
                let _ = fs::remove_dir(&from); // non-empty when it held a skipped mount point
            }
        } else if ft.is_symlink() {
            let target = fs::read_link(&from).map_err(io("readlink", &from))?;
            symlink(&target, &to).map_err(io("symlink", &to))?;
            if remove {
                fs::remove_file(&from).map_err(io("remove", &from))?;
            }
        } else if ft.is_file() {
            bytes += fs::copy(&from, &to).map_err(io("copy", &from))?;
            if remove {
                fs::remove_file(&from).map_err(io("remove", &from))?;
            }
        }
        // Device nodes, fifos and sockets are not carried over: devtmpfs provides /dev.
    }
    Ok(bytes)
}

/// Builds the tmpfs root from the initramfs, moves the API mounts into it, makes it `/` and
/// execs `/init` there with the same argv. Returns only on failure.
pub fn switch_to_tmpfs(mounted: &[MountEntry]) -> Result<Infallible, SwitchRootError> {
    let new_root = Path::new(NEW_ROOT);
    fs::create_dir_all(new_root).map_err(io("mkdir", new_root))?;
    nix::mount::mount(
        Some("rootfs"),
        new_root,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(sys("mount tmpfs on", new_root))?;

    let mut skip: Vec<PathBuf> = mounted
        .iter()
        .filter(|m| m.target != Path::new("/"))
        .map(|m| m.target.clone())
        .collect();
    skip.push(new_root.to_path_buf());
    let bytes = move_tree(Path::new("/"), new_root, &skip, true)?;
    log::info!(
        "moved initramfs into tmpfs ({:.1} MiB)",
        bytes as f64 / 1048576.0
    );

    for m in mounted.iter().filter(|m| m.target != Path::new("/")) {
        let rel = m.target.strip_prefix("/").unwrap_or(&m.target);
        let to = new_root.join(rel);
        fs::create_dir_all(&to).map_err(io("mkdir", &to))?;
        nix::mount::mount(
            Some(&m.target),
            &to,
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(sys("move mount", &m.target))?;
    }
    super::kmsg::reopen();

    nix::unistd::chdir(new_root).map_err(sys("chdir", new_root))?;
    nix::mount::mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(sys("move to /", new_root))?;
    nix::unistd::chroot(".").map_err(sys("chroot", new_root))?;
    nix::unistd::chdir("/").map_err(sys("chdir", Path::new("/")))?;
    super::kmsg::reopen();

    let init = Path::new("/init");
    let argv: Vec<CString> = std::env::args_os()
        .filter_map(|a| CString::new(a.into_encoded_bytes()).ok())
        .collect();
    let path = CString::new("/init").map_err(|_| SwitchRootError::Sys {
        what: "exec",
        path: init.into(),
        errno: nix::errno::Errno::EINVAL,
    })?;
    let err = nix::unistd::execv(&path, &argv)
        .err()
        .unwrap_or(nix::errno::Errno::EINVAL);
    Err(SwitchRootError::Sys {
        what: "exec",
        path: init.into(),
        errno: err,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn move_tree_moves_files_dirs_and_symlinks_and_skips_mount_points() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let s = src.path();
        fs::create_dir_all(s.join("usr/bin")).unwrap();
        fs::create_dir_all(s.join("proc/self")).unwrap();
        fs::write(s.join("init"), b"binary").unwrap();
        fs::set_permissions(s.join("init"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("/init", s.join("usr/bin/ros")).unwrap();
        fs::write(s.join("proc/self/x"), b"x").unwrap();

        let bytes = move_tree(s, dst.path(), &[s.join("proc")], true).unwrap();

        let d = dst.path();
        assert_eq!(bytes, 6);
        assert_eq!(fs::read(d.join("init")).unwrap(), b"binary");
        assert_eq!(
            fs::metadata(d.join("init")).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(
            fs::read_link(d.join("usr/bin/ros")).unwrap(),
            Path::new("/init")
        );
        assert!(
            !d.join("proc").exists(),
            "skipped mount point is not copied"
        );
        assert!(!s.join("init").exists(), "originals are removed");
        assert!(s.join("proc/self/x").exists(), "skipped tree is left alone");
    }

    #[test]
    fn initramfs_is_detected_by_rootfs_type() {
        let m = |t: &str, f: &str| MountEntry {
            target: t.into(),
            fstype: f.into(),
            source: "x".into(),
        };
        assert!(root_is_initramfs(&[m("/", "rootfs"), m("/proc", "proc")]));
        assert!(!root_is_initramfs(&[m("/", "tmpfs")]));
        assert!(!root_is_initramfs(&[]));
    }
}
