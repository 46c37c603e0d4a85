//! Shared by the host tests that run the image's containerd (`runtime_containerd.rs`,
//! `runtime_registry.rs`): the root check, and a private containerd (`xtask::hostctr`) with the
//! bundled images built into its scratch directory through the xtask library, with a shell
//! script standing in for the static `ros` binary (so `cargo xtask build` is not needed).

// Each test file uses what it needs of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use xtask::fetch::{self, PackageSet};
use xtask::hostctr::{self, HostContainerd};
use xtask::layout::Layout;
use xtask::oci::{self, ImageInputs};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// True when root; otherwise says the test is skipped.
pub fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: a private containerd needs root");
    false
}

/// The pinned packages, fetched and extracted through the xtask library (as `cargo xtask build`
/// does: the clone's build/apt and build/extract, the shared download cache).
pub fn packages(layout: &Layout) -> PackageSet {
    fetch::fetch_pinned(layout, &mut |e| eprintln!("  {e}"))
        .unwrap()
        .1
}

/// A private containerd and the images named (`console`, `syslog`) built as OCI archives into
/// its scratch directory, as (name → path).
pub fn containerd_with_archives(names: &[&str]) -> (HostContainerd, BTreeMap<String, PathBuf>) {
    let layout = Layout::discover();
    let pkgs = packages(&layout);
    let rootfs = hostctr::prepare_rootfs(&layout, &pkgs).unwrap();
    let ctr = HostContainerd::start(&rootfs).unwrap();
    let ros = ctr.dir().join("ros-stand-in");
    fs::write(&ros, "#!/bin/sh\necho ros stand-in \"$@\"\n").unwrap();
    fs::set_permissions(&ros, fs::Permissions::from_mode(0o755)).unwrap();
    let inputs = ImageInputs {
        ros: &ros,
        packages: &pkgs,
        version: VERSION,
        epoch: 0,
    };
    let mut archives = BTreeMap::new();
    for image in oci::discover(&layout.images()).unwrap() {
        if !names.contains(&image.name.as_str()) {
            continue;
        }
        let path = ctr.dir().join(format!("{}.oci.tar", image.name));
        oci::build(&image, &inputs, &path).unwrap();
        archives.insert(image.name.clone(), path);
    }
    assert_eq!(
        archives.len(),
        names.len(),
        "images {names:?}: {archives:?}"
    );
    (ctr, archives)
}
