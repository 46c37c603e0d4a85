//! `cargo xtask baseline`: the image ros is benchmarked against, Debian trixie with systemd
//! starting containerd, built in `build/bench/baseline/` as `rootfs.img` (raw ext4, no partition
//! table, booted with `root=/dev/vda`), `initrd.img` (Debian's own initramfs-tools output for the
//! pinned kernel) and `sizes.toml`.
//!
//! Owns that directory, its stamp (`build/stamps/baseline.inputs`, an `assemble::Stamp`), its
//! lock (`build/bench/baseline.lock`) and the choices that make the baseline "what a user would
//! install": mmdebstrap's minbase of trixie plus [`EXTRA_PACKAGES`], the same kernel,
//! containerd and runc .debs ros is built from ([`PINNED`], exactly as pinned in
//! `images/packages.lock`, through `fetch`'s verified cache), networkd with
//! DHCP on `en*`, a `bench-first.service` that imports ros's small busybox image and starts the
//! benchmark's first container, and `/bin/sh` as systemd's debug shell (the driver's root shell,
//! `systemd.debug_shell=ttyS1`).
//!
//! Invariants: outputs are built in `tmp-<pid>/` and renamed into place, the stamp written last
//! and removed before a rebuild starts, so an interrupted run never leaves a set that passes as
//! current; a later run unmounts and deletes what an interrupted mmdebstrap left in `tmp-*/`.
//!
//! It must not touch ros's outputs (`build/out/` is only read: `vmlinuz` to check the tree's
//! kernel is the same bytes, `images/syslog.oci.tar` as the small image), copy the kernel out (the
//! benchmark boots ros's `build/out/vmlinuz`), loop-mount anything (the image is made with
//! `mkfs.ext4 -d`), or print: progress goes through [`Step`]s.
//!
//! Limitations: needs root (mmdebstrap `--mode=root`, chroot) and the network to deb.debian.org;
//! the tree is not reproducible bit for bit (mmdebstrap takes the archive's current versions of
//! everything not pinned). The stamp covers the pins, the package list, the mmdebstrap arguments,
//! the generated files, mkfs's options and sizing, the small image and ros's kernel, plus
//! [`FORMAT`], which must be bumped when the steps below change in a way none of those inputs
//! show. Without `build/out/vmlinuz` the kernel check is skipped (and said so), not failed.

use crate::apt::AptEnv;
use crate::assemble::{inputs_text, AssembleError, Stamp};
use crate::fetch::{self, DebCache, DirLock, Event, FetchError};
use crate::layout::Layout;
use crate::lock::{Lock, LockError, LockedPackage, Manifest};
use crate::oci::ANNOTATION_IMAGE_NAME;
use crate::util::{describe, human_size, output_tail, sha256_bytes, sha256_file};
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Bumped when the build steps change in a way the stamp's other inputs do not show.
pub const FORMAT: u32 = 1;
pub const SUITE: &str = "trixie";
pub const MIRROR: &str = "http://deb.debian.org/debian";
pub const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
pub const VARIANT: &str = "minbase";
/// What a user adds to minbase for a booting systemd system (no recommends).
pub const EXTRA_PACKAGES: &[&str] = &["systemd-sysv", "udev", "kmod", "initramfs-tools"];
/// Manifest names (images/packages.toml) of the packages installed exactly as ros pins them.
pub const PINNED: &[&str] = &["linux-image-cloud-amd64", "containerd", "runc"];
pub const HOSTNAME: &str = "baseline";
/// The small image in the tree, and ros's archive it is a copy of (`build/out/images/`).
pub const SMALL_IMAGE: &str = "opt/bench/small.oci.tar";
pub const SMALL_IMAGE_SOURCE: &str = "syslog.oci.tar";
/// containerd namespace and name of the benchmark's first container.
pub const NAMESPACE: &str = "user";
pub const FIRST_CONTAINER: &str = "first";
/// Free space beyond the tree: the larger of a quarter of it and this.
pub const MIN_HEADROOM: u64 = 64 << 20;
/// What ext4 itself takes from an image of a few hundred MiB (journal, inode tables, bitmaps).
pub const EXT4_OVERHEAD: u64 = 32 << 20;
/// mmdebstrap's hooks that make `--include`d .deb paths visible inside the chroot.
const AUTOMOUNT_HOOKS: &str = "/usr/share/mmdebstrap/hooks/file-mirror-automount";

/// What went wrong building the baseline; each names the file, package or command.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error("{path} is missing: run `cargo xtask build` first")]
    MissingRosOutput { path: PathBuf },
    #[error("{path}: {reason}")]
    BadArchive { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("{package} is not pinned in {lock}: run `cargo xtask relock`")]
    NotPinned { package: String, lock: PathBuf },
    #[error("{package}: the lock's pin {pinned} is gone from the archive: run `cargo xtask relock` and `cargo xtask build`")]
    StalePin { package: String, pinned: String },
    #[error("{package}: the tree has version {installed}, the lock pins {pinned}")]
    VersionMismatch {
        package: String,
        pinned: String,
        installed: String,
    },
    #[error("{tree}: expected exactly one kernel (boot/vmlinuz-*), found {found}")]
    KernelCount { tree: PathBuf, found: usize },
    #[error("{tree_kernel} differs from {ros_kernel}: the baseline must boot ros's kernel package (rebuild with `cargo xtask build`)")]
    KernelMismatch {
        tree_kernel: PathBuf,
        ros_kernel: PathBuf,
    },
    #[error("{path} is missing: initramfs-tools made no initramfs for the kernel")]
    NoInitramfs { path: PathBuf },
    #[error(
        "{path} still has mounts below it ({mounts}); unmount them (umount -R) before rebuilding"
    )]
    Mounted { path: PathBuf, mounts: String },
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Assemble(#[from] AssembleError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BaselineError {
    let path = path.to_owned();
    move |source| BaselineError::Io { path, source }
}

/// A long step starting or a thing done, for the caller to print.
#[derive(Debug)]
pub enum Step<'a> {
    Fetch(&'a Event),
    /// mmdebstrap starts (its own `I:` lines follow on stderr).
    Bootstrap {
        command: &'a str,
    },
    Bootstrapped {
        seconds: f64,
    },
    Configured {
        reference: &'a str,
    },
    Kernel {
        checked_against: Option<&'a Path>,
    },
    Mkfs {
        tree_bytes: u64,
        image_bytes: u64,
    },
}

impl fmt::Display for Step<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Fetch(e) => write!(f, "{e}"),
            Step::Bootstrap { command } => {
                write!(f, "bootstrapping Debian {SUITE} (takes minutes): {command}")
            }
            Step::Bootstrapped { seconds } => write!(f, "bootstrapped in {seconds:.1}s"),
            Step::Configured { reference } => write!(
                f,
                "configured: networkd DHCP on en*, containerd, bench-first ({reference})"
            ),
            Step::Kernel {
                checked_against: Some(p),
            } => write!(f, "kernel: byte-identical to {}", p.display()),
            Step::Kernel {
                checked_against: None,
            } => write!(f, "kernel: not checked (no build/out/vmlinuz)"),
            Step::Mkfs {
                tree_bytes,
                image_bytes,
            } => write!(
                f,
                "mkfs.ext4 -d: tree {}, image {}",
                human_size(*tree_bytes),
                human_size(*image_bytes)
            ),
        }
    }
}

/// `sizes.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    pub initrd_bytes: u64,
    /// Apparent size of the tree (`du -sb`) before mkfs.
    pub rootfs_tree_bytes: u64,
    pub rootfs_img_bytes: u64,
}

impl Sizes {
    pub fn render(&self) -> String {
        format!(
            "initrd_bytes = {}\nrootfs_tree_bytes = {}\nrootfs_img_bytes = {}\n",
            self.initrd_bytes, self.rootfs_tree_bytes, self.rootfs_img_bytes
        )
    }

    /// Reads what [`Sizes::render`] wrote; `None` when a key is missing or not a number.
    pub fn parse(text: &str) -> Option<Sizes> {
        let get = |key: &str| {
            text.lines().find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim() == key).then(|| v.trim().parse::<u64>().ok())?
            })
        };
        Some(Sizes {
            initrd_bytes: get("initrd_bytes")?,
            rootfs_tree_bytes: get("rootfs_tree_bytes")?,
            rootfs_img_bytes: get("rootfs_img_bytes")?,
        })
    }
}

/// Whether the baseline was rebuilt, and its sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    UpToDate(Sizes),
    Built(Sizes),
}

/// A file written into the tree after bootstrapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeFile {
    /// Relative to the tree's root.
    pub path: &'static str,
    pub contents: String,
}

/// `/etc/systemd/network/` file: DHCP on every `en*` link, like ros.
pub fn network_file() -> String {
    "[Match]\nName=en*\n\n[Network]\nDHCP=yes\n".to_owned()
}

pub fn fstab() -> String {
    "/dev/vda / ext4 rw,relatime 0 1\n".to_owned()
}

/// The unit that starts the benchmark's first container once containerd is up.
pub fn bench_first_unit(reference: &str) -> String {
    format!(
        "[Unit]\n\
         Description=Benchmark: import the small image and start the first container\n\
         Requires=containerd.service\n\
         After=containerd.service\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         ExecStart=/usr/bin/ctr -n {NAMESPACE} image import /{SMALL_IMAGE}\n\
         ExecStart=/usr/bin/ctr -n {NAMESPACE} run -d {reference} {FIRST_CONTAINER} /bin/busybox sleep 2147483647\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

/// Drop-in for systemd's `debug-shell.service` (started by `systemd.debug_shell=ttyS1`, which
/// systemd 257 turns into `TTYPath=/dev/ttyS1`): the benchmark driver types into `/bin/sh` (dash),
/// not the unit's default bash, whose bracketed-paste escapes would surround every prompt.
pub fn debug_shell_dropin() -> String {
    "[Service]\nExecStart=\nExecStart=/bin/sh\n".to_owned()
}

/// Everything written into the tree besides the small image.
pub fn tree_files(reference: &str) -> Vec<TreeFile> {
    vec![
        TreeFile {
            path: "etc/fstab",
            contents: fstab(),
        },
        TreeFile {
            path: "etc/hostname",
            contents: format!("{HOSTNAME}\n"),
        },
        TreeFile {
            path: "etc/hosts",
            contents: format!("127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
        },
        TreeFile {
            path: "etc/systemd/network/80-en.network",
            contents: network_file(),
        },
        TreeFile {
            path: "etc/systemd/system/bench-first.service",
            contents: bench_first_unit(reference),
        },
        TreeFile {
            path: "etc/systemd/system/debug-shell.service.d/bench-sh.conf",
            contents: debug_shell_dropin(),
        },
    ]
}

/// Commands run in the tree (chroot) after the files are written.
pub fn chroot_commands() -> Vec<Vec<&'static str>> {
    vec![
        vec![
            "systemctl",
            "enable",
            "systemd-networkd.service",
            "bench-first.service",
            "containerd.service",
        ],
        vec!["systemctl", "mask", "systemd-networkd-wait-online.service"],
        vec!["passwd", "--delete", "root"],
    ]
}

/// The image reference `ctr image import` gives the archive: its index's
/// `io.containerd.image.name` annotation (the one manifest's).
pub fn image_reference(index_json: &[u8], path: &Path) -> Result<String, BaselineError> {
    let bad = |reason: String| BaselineError::BadArchive {
        path: path.to_owned(),
        reason,
    };
    let index: serde_json::Value =
        serde_json::from_slice(index_json).map_err(|e| bad(format!("index.json: {e}")))?;
    let manifests = index["manifests"]
        .as_array()
        .ok_or_else(|| bad("index.json has no manifests".into()))?;
    let [m] = manifests.as_slice() else {
        return Err(bad(format!(
            "index.json has {} manifests, expected one",
            manifests.len()
        )));
    };
    m["annotations"][ANNOTATION_IMAGE_NAME]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| {
            bad(format!(
                "index.json has no {ANNOTATION_IMAGE_NAME} annotation"
            ))
        })
}

/// Reads `index.json` out of an OCI archive and returns [`image_reference`].
pub fn archive_reference(archive: &Path) -> Result<String, BaselineError> {
    let file = fs::File::open(archive).map_err(io_err(archive))?;
    let mut tar = tar::Archive::new(file);
    for entry in tar.entries().map_err(io_err(archive))? {
        let mut entry = entry.map_err(io_err(archive))?;
        let name = entry.path().map_err(io_err(archive))?.into_owned();
        if name == Path::new("index.json") || name == Path::new("./index.json") {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).map_err(io_err(archive))?;
            return image_reference(&bytes, archive);
        }
    }
    Err(BaselineError::BadArchive {
        path: archive.to_owned(),
        reason: "no index.json".into(),
    })
}

/// Size of the image for a tree taking `allocated` bytes of blocks (`du -sB1`, not the apparent
/// size: small files round up to whole blocks): the tree plus the larger of a quarter of it and
/// [`MIN_HEADROOM`] left free for users (`df`'s Avail, after mke2fs's default 5% reserved for
/// root and [`EXT4_OVERHEAD`]), rounded up to whole MiB.
pub fn image_bytes(allocated: u64) -> u64 {
    let usable = allocated + (allocated / 4).max(MIN_HEADROOM);
    let size = (usable + EXT4_OVERHEAD) * 100 / 95;
    size.div_ceil(1 << 20) << 20
}

/// `du -s <args> tree`'s number.
fn du(tree: &Path, arg: &str) -> Result<u64, BaselineError> {
    let out = capture(Command::new("du").args(["-s", arg]).arg(tree))?;
    out.split_whitespace()
        .next()
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| BaselineError::Command {
            command: format!("du -s {arg} {}", tree.display()),
            detail: format!("unexpected output `{}`", out.trim()),
        })
}

/// `mkfs.ext4`'s options before `-d tree image`. `-T default`: below 512 MiB mke2fs would pick
/// the `small` type (1 KiB blocks, 128-byte inodes).
pub const MKFS_ARGS: &[&str] = &["-q", "-F", "-T", "default", "-L", HOSTNAME];

/// mmdebstrap's arguments, except the .deb paths (those change with the cache's place; their
/// hashes are in the stamp) and the target directory.
pub fn mmdebstrap_args() -> Vec<String> {
    vec![
        "--mode=root".into(),
        format!("--variant={VARIANT}"),
        format!("--keyring={KEYRING}"),
        format!("--hook-dir={AUTOMOUNT_HOOKS}"),
        format!("--include={}", EXTRA_PACKAGES.join(",")),
    ]
}

/// The archive line mmdebstrap gets as its mirror.
pub fn source_line() -> String {
    format!("deb [signed-by={KEYRING}] {MIRROR} {SUITE} main")
}

/// What the outputs are built from.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub pins: Vec<LockedPackage>,
    pub files: Vec<TreeFile>,
    /// sha256 of the small image archive.
    pub archive: String,
    /// sha256 of ros's `build/out/vmlinuz`, when there is one.
    pub ros_kernel: Option<String>,
}

impl Inputs {
    /// The stamp's text: one `key value` line per input.
    pub fn stamp(&self) -> String {
        let mut pairs: Vec<(&str, String)> = vec![
            ("format", FORMAT.to_string()),
            ("suite", format!("{SUITE} {MIRROR}")),
            ("mmdebstrap", mmdebstrap_args().join(" ")),
            (
                "mkfs",
                format!(
                    "{} headroom={MIN_HEADROOM} overhead={EXT4_OVERHEAD}",
                    MKFS_ARGS.join(" ")
                ),
            ),
        ];
        for p in &self.pins {
            pairs.push(("pin", format!("{} {} {}", p.name, p.version, p.sha256)));
        }
        for f in &self.files {
            pairs.push((
                "file",
                format!("{} {}", f.path, sha256_bytes(f.contents.as_bytes())),
            ));
        }
        for c in chroot_commands() {
            pairs.push(("chroot", c.join(" ")));
        }
        pairs.push(("small-image", self.archive.clone()));
        pairs.push((
            "ros-kernel",
            self.ros_kernel.clone().unwrap_or_else(|| "none".into()),
        ));
        inputs_text(&pairs)
    }
}

/// Output paths inside `build/bench/baseline/`.
pub const ROOTFS: &str = "rootfs.img";
pub const INITRD: &str = "initrd.img";
pub const SIZES: &str = "sizes.toml";

/// Builds the baseline in `layout.baseline()` unless its stamp says the inputs are unchanged.
pub fn build(layout: &Layout, report: &mut dyn FnMut(&Step)) -> Result<Outcome, BaselineError> {
    let dir = layout.baseline();
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let mut lock_path = dir.as_os_str().to_owned();
    lock_path.push(".lock");
    let _guard = DirLock::acquire(Path::new(&lock_path))?;

    let archive = layout.images_out().join(SMALL_IMAGE_SOURCE);
    if !archive.is_file() {
        return Err(BaselineError::MissingRosOutput { path: archive });
    }
    let reference = archive_reference(&archive)?;
    let ros_kernel_path = layout.out().join("vmlinuz");
    let ros_kernel = match ros_kernel_path.is_file() {
        true => Some(sha256_file(&ros_kernel_path).map_err(io_err(&ros_kernel_path))?),
        false => None,
    };
    let lock_file = layout.lock();
    let lock = Lock::load_or_empty(&lock_file)?;
    let pins = PINNED
        .iter()
        .map(|name| {
            lock.entry_for(name)
                .cloned()
                .ok_or_else(|| BaselineError::NotPinned {
                    package: (*name).to_owned(),
                    lock: lock_file.clone(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let inputs = Inputs {
        pins,
        files: tree_files(&reference),
        archive: sha256_file(&archive).map_err(io_err(&archive))?,
        ros_kernel,
    };
    let stamp_text = inputs.stamp();
    let stamp = Stamp::new(layout, "baseline");
    let outputs = [ROOTFS, INITRD, SIZES].map(|n| dir.join(n));
    if outputs.iter().all(|p| stamp.up_to_date(p, &stamp_text)) {
        let sizes_path = dir.join(SIZES);
        let text = fs::read_to_string(&sizes_path).map_err(io_err(&sizes_path))?;
        if let Some(sizes) = Sizes::parse(&text) {
            return Ok(Outcome::UpToDate(sizes));
        }
    }

    // Never take a half-replaced set of outputs as current.
    stamp.clear()?;
    remove_stale_work(&dir)?;
    let work = dir.join(format!("tmp-{}", std::process::id()));
    fs::create_dir_all(&work).map_err(io_err(&work))?;
    let result = build_in(layout, &work, &inputs, &reference, &ros_kernel_path, report);
    let sizes = match result {
        Ok(s) => s,
        Err(e) => {
            // The build's error matters more; a directory left behind goes on the next run.
            let _ = remove_work(&work);
            return Err(e);
        }
    };
    for name in [ROOTFS, INITRD, SIZES] {
        let (from, to) = (work.join(name), dir.join(name));
        fs::rename(&from, &to).map_err(io_err(&to))?;
    }
    remove_work(&work)?;
    stamp.write(&stamp_text)?;
    Ok(Outcome::Built(sizes))
}

/// Mount points at or below `path` (from /proc/self/mountinfo).
fn mounts_below(path: &Path) -> Result<Vec<PathBuf>, BaselineError> {
    let info = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(info).map_err(io_err(info))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|m| m.starts_with(path))
        .collect())
}

/// Deletes a work directory of this module, first unmounting what an interrupted mmdebstrap left
/// mounted in it (its bind mounts of the cached .debs, /proc, /dev …), deepest first; never
/// deletes through a mount that stays.
fn remove_work(path: &Path) -> Result<(), BaselineError> {
    let mut mounts = mounts_below(path)?;
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for m in &mounts {
        let _ = Command::new("umount").arg(m).output();
    }
    let left = mounts_below(path)?;
    if !left.is_empty() {
        return Err(BaselineError::Mounted {
            path: path.to_owned(),
            mounts: left
                .iter()
                .map(|m| m.display().to_string())
                .collect::<Vec<_>>()
                .join(" "),
        });
    }
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}

/// Deletes work directories of earlier, interrupted runs.
fn remove_stale_work(dir: &Path) -> Result<(), BaselineError> {
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        let is_work = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("tmp-"));
        if is_work {
            remove_work(&path)?;
        }
    }
    Ok(())
}

fn run(cmd: &mut Command) -> Result<(), BaselineError> {
    capture(cmd).map(drop)
}

fn capture(cmd: &mut Command) -> Result<String, BaselineError> {
    let command = describe(cmd);
    let output = cmd.output().map_err(|e| BaselineError::Command {
        command: command.clone(),
        detail: e.to_string(),
    })?;
    if !output.status.success() {
        return Err(BaselineError::Command {
            command,
            detail: format!("{}: {}", output.status, output_tail(&output)),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The pinned .debs, verified, from the download cache (fetched into it when missing).
fn pinned_debs(
    layout: &Layout,
    pins: &[LockedPackage],
    report: &mut dyn FnMut(&Step),
) -> Result<Vec<PathBuf>, BaselineError> {
    let manifest = Manifest::load(&layout.manifest())?;
    let cache = DebCache::from_env()?;
    let mut index = AptEnv::new(layout.apt());
    let mut debs = Vec::new();
    for (name, pin) in PINNED.iter().zip(pins) {
        let spec = manifest.packages.get(*name).cloned().unwrap_or_default();
        let fetched = fetch::fetch(&mut index, &cache, name, &spec, Some(pin), &mut |e| {
            report(&Step::Fetch(e))
        })?;
        if fetched.stale {
            return Err(BaselineError::StalePin {
                package: pin.name.clone(),
                pinned: pin.version.clone(),
            });
        }
        debs.push(fetched.path);
    }
    Ok(debs)
}

fn build_in(
    layout: &Layout,
    work: &Path,
    inputs: &Inputs,
    reference: &str,
    ros_kernel: &Path,
    report: &mut dyn FnMut(&Step),
) -> Result<Sizes, BaselineError> {
    let debs = pinned_debs(layout, &inputs.pins, report)?;
    let tree = work.join("tree");
    let mut cmd = Command::new("mmdebstrap");
    cmd.args(mmdebstrap_args());
    for deb in &debs {
        cmd.arg(format!("--include={}", deb.display()));
    }
    cmd.arg(SUITE).arg(&tree).arg(source_line());
    let command = describe(&cmd);
    report(&Step::Bootstrap { command: &command });
    let started = Instant::now();
    // mmdebstrap's own progress (`I: …`) goes straight to the terminal.
    let status = cmd.status().map_err(|e| BaselineError::Command {
        command: command.clone(),
        detail: format!("{e} (is mmdebstrap installed?)"),
    })?;
    if !status.success() {
        return Err(BaselineError::Command {
            command,
            detail: format!("{status} (its output is above)"),
        });
    }
    report(&Step::Bootstrapped {
        seconds: started.elapsed().as_secs_f64(),
    });

    for pin in &inputs.pins {
        let installed = capture(Command::new("chroot").arg(&tree).args([
            "dpkg-query",
            "-W",
            "-f",
            "${Version}",
            &pin.name,
        ]))?;
        if installed.trim() != pin.version {
            return Err(BaselineError::VersionMismatch {
                package: pin.name.clone(),
                pinned: pin.version.clone(),
                installed: installed.trim().to_owned(),
            });
        }
    }

    configure(
        &tree,
        &inputs.files,
        &layout.images_out().join(SMALL_IMAGE_SOURCE),
    )?;
    report(&Step::Configured { reference });

    let (kernel, version) = tree_kernel(&tree)?;
    let checked = ros_kernel.is_file();
    if checked
        && fs::read(&kernel).map_err(io_err(&kernel))?
            != fs::read(ros_kernel).map_err(io_err(ros_kernel))?
    {
        return Err(BaselineError::KernelMismatch {
            tree_kernel: kernel,
            ros_kernel: ros_kernel.to_owned(),
        });
    }
    report(&Step::Kernel {
        checked_against: checked.then_some(ros_kernel),
    });
    let initrd = tree.join(format!("boot/initrd.img-{version}"));
    if !initrd.is_file() {
        return Err(BaselineError::NoInitramfs { path: initrd });
    }
    let initrd_out = work.join(INITRD);
    fs::copy(&initrd, &initrd_out).map_err(io_err(&initrd_out))?;

    let tree_bytes = du(&tree, "-b")?;
    let img_bytes = image_bytes(du(&tree, "-B1")?);
    report(&Step::Mkfs {
        tree_bytes,
        image_bytes: img_bytes,
    });
    let img = work.join(ROOTFS);
    let file = fs::File::create(&img).map_err(io_err(&img))?;
    file.set_len(img_bytes).map_err(io_err(&img))?;
    drop(file);
    run(Command::new("mkfs.ext4")
        .args(MKFS_ARGS)
        .arg("-d")
        .arg(&tree)
        .arg(&img))?;
    remove_work(&tree)?;

    let sizes = Sizes {
        initrd_bytes: fs::metadata(&initrd_out)
            .map_err(io_err(&initrd_out))?
            .len(),
        rootfs_tree_bytes: tree_bytes,
        rootfs_img_bytes: img_bytes,
    };
    let sizes_path = work.join(SIZES);
    fs::write(&sizes_path, sizes.render()).map_err(io_err(&sizes_path))?;
    Ok(sizes)
}

/// Writes the generated files and the small image into `tree` and runs [`chroot_commands`].
fn configure(tree: &Path, files: &[TreeFile], archive: &Path) -> Result<(), BaselineError> {
    for f in files {
        let path = tree.join(f.path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        // A symlink in the way (e.g. a default from a package) is replaced, not written through.
        if path.symlink_metadata().is_ok() {
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
        fs::write(&path, &f.contents).map_err(io_err(&path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).map_err(io_err(&path))?;
    }
    let small = tree.join(SMALL_IMAGE);
    if let Some(parent) = small.parent() {
        fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    fs::copy(archive, &small).map_err(io_err(&small))?;
    for c in chroot_commands() {
        run(Command::new("chroot").arg(tree).args(c))?;
    }
    Ok(())
}

/// The tree's one `boot/vmlinuz-<version>` and that version.
fn tree_kernel(tree: &Path) -> Result<(PathBuf, String), BaselineError> {
    let boot = tree.join("boot");
    let mut found = Vec::new();
    for entry in fs::read_dir(&boot).map_err(io_err(&boot))? {
        let entry = entry.map_err(io_err(&boot))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(version) = name.strip_prefix("vmlinuz-") {
            found.push((entry.path(), version.to_owned()));
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        n => Err(BaselineError::KernelCount {
            tree: tree.to_owned(),
            found: n,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Inputs {
        Inputs {
            pins: vec![LockedPackage {
                name: "runc".into(),
                version: "1.1.15+ds1-2+b4".into(),
                sha256: "a".repeat(64),
                size: 1,
                filename: "pool/main/r/runc/runc.deb".into(),
                from: None,
            }],
            files: tree_files("docker.io/ros/syslog:0.1.0"),
            archive: "b".repeat(64),
            ros_kernel: Some("c".repeat(64)),
        }
    }

    #[test]
    fn network_file_does_dhcp_on_en_links() {
        assert_eq!(network_file(), "[Match]\nName=en*\n\n[Network]\nDHCP=yes\n");
    }

    #[test]
    fn bench_first_imports_then_runs_the_first_container() {
        let unit = bench_first_unit("docker.io/ros/syslog:0.1.0");
        assert!(unit.contains("Requires=containerd.service\nAfter=containerd.service\n"));
        assert!(unit.contains("Type=oneshot\nRemainAfterExit=yes\n"));
        let exec: Vec<&str> = unit
            .lines()
            .filter_map(|l| l.strip_prefix("ExecStart="))
            .collect();
        assert_eq!(
            exec,
            [
                "/usr/bin/ctr -n user image import /opt/bench/small.oci.tar",
                "/usr/bin/ctr -n user run -d docker.io/ros/syslog:0.1.0 first /bin/busybox sleep 2147483647",
            ]
        );
        assert!(unit.ends_with("[Install]\nWantedBy=multi-user.target\n"));
    }

    #[test]
    fn tree_files_are_relative_and_unique() {
        let files = tree_files("r");
        let mut paths: Vec<&str> = files.iter().map(|f| f.path).collect();
        assert!(paths.iter().all(|p| !p.starts_with('/')));
        paths.sort_unstable();
        paths.dedup();
        assert_eq!(paths.len(), files.len());
        assert_eq!(files[0].contents, "/dev/vda / ext4 rw,relatime 0 1\n");
    }

    #[test]
    fn stamp_changes_when_any_input_changes() {
        let base = inputs().stamp();
        assert_eq!(base, inputs().stamp());
        let mut i = inputs();
        i.pins[0].sha256 = "d".repeat(64);
        assert_ne!(i.stamp(), base);
        let mut i = inputs();
        i.files = tree_files("docker.io/ros/other:0.1.0");
        assert_ne!(i.stamp(), base);
        let mut i = inputs();
        i.archive = "e".repeat(64);
        assert_ne!(i.stamp(), base);
        let mut i = inputs();
        i.ros_kernel = None;
        assert_ne!(i.stamp(), base);
        assert!(base.contains(&format!("--include={}", EXTRA_PACKAGES.join(","))));
    }

    #[test]
    fn sizes_file_is_key_value_and_reads_back() {
        let s = Sizes {
            initrd_bytes: 17,
            rootfs_tree_bytes: 300,
            rootfs_img_bytes: 4096,
        };
        assert_eq!(
            s.render(),
            "initrd_bytes = 17\nrootfs_tree_bytes = 300\nrootfs_img_bytes = 4096\n"
        );
        assert_eq!(Sizes::parse(&s.render()), Some(s));
        assert_eq!(Sizes::parse("initrd_bytes = 1\n"), None);
        assert_eq!(
            Sizes::parse("initrd_bytes = x\nrootfs_tree_bytes = 1\nrootfs_img_bytes = 1\n"),
            None
        );
    }

    #[test]
    fn image_has_headroom_rounded_to_mib() {
        const MIB: u64 = 1 << 20;
        // Small trees get MIN_HEADROOM, large ones a quarter; both after 5% reserved and overhead.
        assert_eq!(
            image_bytes(100 * MIB),
            ((164 * MIB + EXT4_OVERHEAD) * 100 / 95).div_ceil(MIB) * MIB
        );
        assert_eq!(image_bytes(380 * MIB), 534 * MIB);
        assert_eq!(image_bytes(380 * MIB + 1) % MIB, 0);
        let free = |alloc: u64| image_bytes(alloc) * 95 / 100 - EXT4_OVERHEAD - alloc;
        assert!(free(363 * MIB) >= (363 * MIB) / 4);
        assert!(free(10 * MIB) >= MIN_HEADROOM);
    }

    #[test]
    fn reference_is_the_containerd_name_annotation() {
        let p = Path::new("x.oci.tar");
        let index = br#"{"manifests":[{"annotations":{"io.containerd.image.name":"docker.io/ros/syslog:0.1.0","org.opencontainers.image.ref.name":"0.1.0"}}]}"#;
        assert_eq!(
            image_reference(index, p).unwrap(),
            "docker.io/ros/syslog:0.1.0"
        );
        let err = image_reference(br#"{"manifests":[{"annotations":{}}]}"#, p).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("x.oci.tar: index.json has no io.containerd.image.name"));
        let err = image_reference(br#"{"manifests":[{},{}]}"#, p).unwrap_err();
        assert!(err.to_string().contains("2 manifests"));
    }

    #[test]
    fn reference_is_read_from_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.oci.tar");
        let mut builder = tar::Builder::new(fs::File::create(&path).unwrap());
        let body = br#"{"manifests":[{"annotations":{"io.containerd.image.name":"docker.io/library/busybox:1"}}]}"#;
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, "index.json", &body[..])
            .unwrap();
        builder.finish().unwrap();
        drop(builder);
        assert_eq!(
            archive_reference(&path).unwrap(),
            "docker.io/library/busybox:1"
        );
        let missing = dir.path().join("none.tar");
        assert!(matches!(
            archive_reference(&missing),
            Err(BaselineError::Io { .. })
        ));
    }
}
