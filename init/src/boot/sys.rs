//! The syscall seam of boot: the few kernel calls that change the machine (mount, umount,
//! mkdir), behind a trait so boot logic is unit-tested with a recording fake instead of root.
//!
//! Owns no policy. `LinuxSys` is the real thing; `RecordingSys` (tests only) records typed calls
//! and can fail a chosen target with an errno.

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use std::path::Path;

pub trait Sys {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno>;
    fn umount(&self, target: &Path, flags: MntFlags) -> Result<(), Errno>;
    fn mkdir_p(&self, path: &Path) -> Result<(), Errno>;
}

/// The real kernel.
pub struct LinuxSys;

impl Sys for LinuxSys {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno> {
        let fstype = (!fstype.is_empty()).then_some(fstype);
        nix::mount::mount(Some(source), target, fstype, flags, data)
    }
    fn umount(&self, target: &Path, flags: MntFlags) -> Result<(), Errno> {
        nix::mount::umount2(target, flags)
    }
    fn mkdir_p(&self, path: &Path) -> Result<(), Errno> {
        std::fs::create_dir_all(path)
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
    }
}

#[cfg(test)]
pub mod fake {
    use super::*;
    use std::cell::RefCell;
    use std::path::PathBuf;

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Call {
        Mount {
            source: String,
            target: PathBuf,
            fstype: String,
            flags: MsFlags,
            data: Option<String>,
        },
        Umount {
            target: PathBuf,
            flags: MntFlags,
        },
        Mkdir(PathBuf),
    }

    /// Records every call; fails calls on `fail_target` with `fail_errno`.
    #[derive(Default)]
    pub struct RecordingSys {
        pub calls: RefCell<Vec<Call>>,
        pub fail_target: Option<(PathBuf, Errno)>,
    }

    impl RecordingSys {
        fn check(&self, target: &Path) -> Result<(), Errno> {
            match &self.fail_target {
                Some((t, e)) if t == target => Err(*e),
                _ => Ok(()),
            }
        }
    }

    impl Sys for RecordingSys {
        fn mount(
            &self,
            source: &str,
            target: &Path,
            fstype: &str,
            flags: MsFlags,
            data: Option<&str>,
        ) -> Result<(), Errno> {
            self.calls.borrow_mut().push(Call::Mount {
                source: source.into(),
                target: target.into(),
                fstype: fstype.into(),
                flags,
                data: data.map(str::to_string),
            });
            self.check(target)
        }
        fn umount(&self, target: &Path, flags: MntFlags) -> Result<(), Errno> {
            self.calls.borrow_mut().push(Call::Umount {
                target: target.into(),
                flags,
            });
            self.check(target)
        }
        fn mkdir_p(&self, path: &Path) -> Result<(), Errno> {
            self.calls.borrow_mut().push(Call::Mkdir(path.into()));
            Ok(())
        }
    }
}
