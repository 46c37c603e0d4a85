//! Where things are: the repository root and the paths under it that the image build reads
//! (`images/…`) and writes (`build/…`).
//!
//! Owns path names only. It must not create, read or delete anything, and it holds no path outside
//! the clone (the download cache is `fetch::DebCache`, chosen from the environment).

use std::path::{Path, PathBuf};

/// Paths of one clone.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Layout { root: root.into() }
    }

    /// The clone xtask runs from: the parent of xtask's manifest directory (as `cargo run` reports
    /// it, else as it was when xtask was compiled).
    pub fn discover() -> Self {
        let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
            .map(PathBuf::from)
            .filter(|p| p.join("Cargo.toml").is_file() && p.ends_with("xtask"))
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
        let root = manifest.parent().map(Path::to_path_buf).unwrap_or(manifest);
        Layout { root }
    }

    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }
    pub fn manifest(&self) -> PathBuf {
        self.images().join("packages.toml")
    }
    pub fn lock(&self) -> PathBuf {
        self.images().join("packages.lock")
    }
    pub fn modules_list(&self) -> PathBuf {
        self.images().join("modules.list")
    }
    pub fn os_config(&self) -> PathBuf {
        self.images().join("os-config.toml")
    }
    /// What goes into `system.erofs` (`system::SystemManifest`).
    pub fn system_manifest(&self) -> PathBuf {
        self.images().join("system.toml")
    }
    /// The OCI archives of the system service images (`<name>.oci.tar`).
    pub fn images_out(&self) -> PathBuf {
        self.out().join("images")
    }
    pub fn build(&self) -> PathBuf {
        self.root.join("build")
    }
    /// The isolated apt (`apt::AptEnv`).
    pub fn apt(&self) -> PathBuf {
        self.build().join("apt")
    }
    /// `<sha256>/` trees of extracted packages.
    pub fn extract(&self) -> PathBuf {
        self.build().join("extract")
    }
    /// `depmod` work directories, one per kernel package.
    pub fn depmod(&self) -> PathBuf {
        self.build().join("depmod")
    }
    /// The initramfs tree before packing.
    pub fn staging(&self) -> PathBuf {
        self.build().join("initrd-root")
    }
    /// One file per output, holding the inputs it was last built from.
    pub fn stamps(&self) -> PathBuf {
        self.build().join("stamps")
    }
    /// The Debian baseline image the benchmark compares ros with (`baseline`).
    pub fn baseline(&self) -> PathBuf {
        self.build().join("bench").join("baseline")
    }
    pub fn out(&self) -> PathBuf {
        self.build().join("out")
    }
    /// `build/out/NAME` relative to the root, for messages.
    pub fn display(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .display()
            .to_string()
    }
}
