//! The host-wide settings the network decides: `/etc/resolv.conf` and the DHCP-given hostname,
//! behind the `Host` seam so tests (which run on a real host) never change the host's own.
//!
//! Owns: writing resolv.conf atomically (temp file + fsync + rename, through
//! `config::write_atomic`) and `sethostname(2)`.
//! Must not: decide what to write (`resolv` and the reconciler do).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A host setting that could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// resolv.conf could not be written.
    #[error("write {}: {reason}", path.display())]
    ResolvConf {
        /// The file.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// sethostname failed.
    #[error("set hostname {name:?}: {errno}")]
    Hostname {
        /// The name.
        name: String,
        /// The errno.
        errno: nix::errno::Errno,
    },
}

/// Applies host-wide network settings.
pub trait Host: Send + Sync {
    /// Replaces the resolver configuration with `text`.
    fn write_resolv_conf(&self, text: &str) -> Result<(), HostError>;
    /// Sets the kernel host name.
    fn set_hostname(&self, name: &str) -> Result<(), HostError>;
}

/// The real host: a resolv.conf path (`/etc/resolv.conf` on a node) and `sethostname(2)`.
pub struct SystemHost {
    resolv_conf: PathBuf,
    /// Serialises writers: `write_atomic`'s temp file name is per process, not per thread.
    lock: Mutex<()>,
}

impl SystemHost {
    /// The node's settings: `/etc/resolv.conf`.
    pub fn new() -> Self {
        Self::with_resolv_conf(Path::new("/etc/resolv.conf"))
    }

    /// Writes resolv.conf at `path` instead.
    pub fn with_resolv_conf(path: &Path) -> Self {
        SystemHost {
            resolv_conf: path.to_path_buf(),
            lock: Mutex::new(()),
        }
    }
}

impl Default for SystemHost {
    fn default() -> Self {
        Self::new()
    }
}

impl Host for SystemHost {
    fn write_resolv_conf(&self, text: &str) -> Result<(), HostError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let err = |e: std::io::Error| HostError::ResolvConf {
            path: self.resolv_conf.clone(),
            reason: e.to_string(),
        };
        if let Some(dir) = self.resolv_conf.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        crate::config::write_atomic(&self.resolv_conf, text).map_err(err)
    }

    fn set_hostname(&self, name: &str) -> Result<(), HostError> {
        nix::unistd::sethostname(name).map_err(|errno| HostError::Hostname {
            name: name.to_string(),
            errno,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_resolv_conf_is_replaced_whole() {
        let dir = tempfile::tempdir();
        let Ok(dir) = dir else { return };
        let path = dir.path().join("etc/resolv.conf");
        let host = SystemHost::with_resolv_conf(&path);
        assert_eq!(host.write_resolv_conf("nameserver 1.1.1.1\n"), Ok(()));
        assert_eq!(host.write_resolv_conf("nameserver 10.0.2.3\n"), Ok(()));
        assert_eq!(
            std::fs::read_to_string(&path).ok().as_deref(),
            Some("nameserver 10.0.2.3\n")
        );
        // No temp file left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("etc"))
            .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert_eq!(names, ["resolv.conf"]);
    }
}
