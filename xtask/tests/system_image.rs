//! The system image's library closure against the real pinned packages: containerd, runc and
//! the shim get their loader and libraries from libc6 and libseccomp2, at Debian's paths, and a
//! library package left out of images/system.toml fails naming the binary and the library.
//!
//! Needs, the first time, network access to deb.debian.org (later runs use the cache).

use std::fs;
use std::path::Path;
use xtask::elf::{self, ElfError};
use xtask::fetch::{self, PackageSet};
use xtask::layout::Layout;
use xtask::system::{self, SystemError, SystemManifest};

fn packages(layout: &Layout) -> PackageSet {
    fetch::fetch_pinned(layout, &mut |e| eprintln!("  {e}"))
        .unwrap()
        .1
}

#[test]
fn staged_runtime_takes_every_library_from_the_pinned_packages() {
    let layout = Layout::discover();
    let pkgs = packages(&layout);
    let path = layout.system_manifest();
    let manifest = SystemManifest::load(&path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let staged = system::stage(&root, &manifest, &path, &pkgs, &[]).unwrap();

    let libs = &staged.libraries;
    assert_eq!(libs["libc.so.6"], "/usr/lib/x86_64-linux-gnu/libc.so.6");
    assert_eq!(
        libs["libseccomp.so.2"],
        "/usr/lib/x86_64-linux-gnu/libseccomp.so.2.6.0"
    );
    assert_eq!(
        libs["/lib64/ld-linux-x86-64.so.2"],
        "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    );
    for bin in [
        "usr/bin/containerd",
        "usr/bin/containerd-shim-runc-v2",
        "usr/bin/ctr",
        "usr/sbin/runc",
        "usr/lib/cni/bridge",
        "usr/lib/cni/host-local",
        "usr/lib/cni/portmap",
        "usr/lib/cni/firewall",
        "usr/lib/cni/loopback",
        "usr/sbin/xtables-nft-multi",
        "usr/sbin/mke2fs",
        "usr/sbin/e2fsck",
    ] {
        let p = root.join(bin);
        let info = elf::read_info(&p).unwrap();
        assert_eq!(
            info.interp.as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2"),
            "{bin}"
        );
        // Every library it needs is in the staged tree, by soname, in the multiarch directory.
        for lib in &info.needed {
            let at = root.join("usr/lib/x86_64-linux-gnu").join(lib);
            assert!(at.exists(), "{bin} needs {lib}: not at {}", at.display());
        }
    }
    // The loader path the kernel opens, through the merged-/usr links.
    let ld = fs::canonicalize(root.join("lib64/ld-linux-x86-64.so.2")).unwrap();
    assert_eq!(
        ld,
        fs::canonicalize(root.join("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")).unwrap()
    );
    assert_eq!(
        fs::read_link(root.join("usr/bin/runc")).unwrap(),
        Path::new("../sbin/runc")
    );
    // Nothing from the build host: exactly the closure, nothing else in the library directory.
    let mut in_libdir: Vec<String> = fs::read_dir(root.join("usr/lib/x86_64-linux-gnu"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    in_libdir.sort();
    assert_eq!(
        in_libdir,
        [
            "ld-linux-x86-64.so.2",
            "libblkid.so.1",
            "libblkid.so.1.1.0",
            "libc.so.6",
            "libcom_err.so.2",
            "libcom_err.so.2.1",
            "libe2p.so.2",
            "libe2p.so.2.3",
            "libext2fs.so.2",
            "libext2fs.so.2.4",
            "libmnl.so.0",
            "libmnl.so.0.2.0",
            "libnftnl.so.11",
            "libnftnl.so.11.6.0",
            "libseccomp.so.2",
            "libseccomp.so.2.6.0",
            "libuuid.so.1",
            "libuuid.so.1.3.0",
            "libxtables.so.12",
            "libxtables.so.12.7.0",
            "xtables",
        ]
    );
    // iptables: the alternatives links of system.toml's [[link]], down to the multi-call binary,
    // and the extensions the rules use (dlopen()ed, so listed one by one).
    for link in [
        "usr/sbin/iptables",
        "usr/sbin/iptables-restore",
        "usr/sbin/iptables-save",
    ] {
        assert_eq!(
            fs::canonicalize(root.join(link)).unwrap(),
            fs::canonicalize(root.join("usr/sbin/xtables-nft-multi")).unwrap(),
            "{link}"
        );
    }
    assert_eq!(
        fs::read_link(root.join("usr/sbin/iptables")).unwrap(),
        Path::new("iptables-nft")
    );
    for ext in [
        "standard",
        "comment",
        "conntrack",
        "MASQUERADE",
        "DNAT",
        "addrtype",
    ] {
        let p = root.join(format!("usr/lib/x86_64-linux-gnu/xtables/libxt_{ext}.so"));
        assert!(p.exists(), "{}", p.display());
    }
}

#[test]
fn a_library_package_left_out_fails_naming_binary_and_library() {
    let layout = Layout::discover();
    let pkgs = packages(&layout);
    let path = layout.system_manifest();
    let mut manifest = SystemManifest::load(&path).unwrap();
    manifest.libraries.retain(|l| l != "libseccomp2");
    let dir = tempfile::tempdir().unwrap();
    let err = system::stage(&dir.path().join("root"), &manifest, &path, &pkgs, &[]).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, SystemError::Elf(ElfError::MissingLibrary { .. })),
        "{msg}"
    );
    assert!(
        msg.starts_with("/usr/sbin/runc: needs libseccomp.so.2"),
        "{msg}"
    );
}
