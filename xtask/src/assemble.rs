//! Assembling the boot artifacts from extracted packages: `build/out/vmlinuz` and
//! `build/out/initrd.img` — an uncompressed newc segment holding the erofs system image at
//! `/usr/lib/ros/system.erofs` (already compressed; the kernel unpacks an uncompressed archive
//! followed by a compressed one, never the reverse), then the initramfs tree of
//! `build/initrd-root/` as a zstd-compressed newc cpio — each rebuilt only when the inputs
//! recorded in its stamp change. Also builds the `ros` binary that becomes `/init`.
//!
//! Owns `build/initrd-root/`, `build/initrd-main.cpio.zst`, `build/out/` and `build/stamps/`.
//! It must not fetch or extract packages (it gets extracted trees from `fetch`), must not modify
//! those trees, and must not print: it returns what it did and the caller reports it.

use crate::layout::Layout;
use crate::lock::LockedPackage;
use crate::modules::{self, ModulesDep, ModulesError};
use crate::util::{describe, human_size, output_tail, sha256_bytes, sha256_file, write_atomic};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Bumped when the layout of the image changes in a way its inputs do not show.
const FORMAT: u32 = 1;

/// What went wrong assembling; each names the path or command.
#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("`{command}` built no `ros` executable")]
    NoRosBinary { command: String },
    #[error("{path}: expected exactly one boot/vmlinuz-* in the kernel package, found {found}")]
    NoKernelImage { path: PathBuf, found: usize },
    #[error("{path}: {reason}; /init must be a static x86-64 executable")]
    NotStatic { path: PathBuf, reason: String },
    #[error("{path}: no usr/bin/busybox or bin/busybox in the busybox package")]
    NoBusybox { path: PathBuf },
    #[error("busybox --list printed an unusable applet name `{name}`")]
    BadApplet { name: String },
    #[error("ZSTD level {level} is out of range 1..=19")]
    ZstdLevel { level: u32 },
    #[error(transparent)]
    Modules(#[from] ModulesError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> AssembleError {
    let path = path.to_owned();
    move |source| AssembleError::Io { path, source }
}

/// Whether an output was rebuilt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    UpToDate,
    Built,
}

/// The record of what an output was built from: `build/stamps/<output>.inputs`.
#[derive(Debug, Clone)]
pub struct Stamp {
    path: PathBuf,
}

impl Stamp {
    pub fn new(layout: &Layout, output: &str) -> Self {
        Stamp {
            path: layout.stamps().join(format!("{output}.inputs")),
        }
    }

    /// Whether `output` exists and was built from exactly `inputs`.
    pub fn up_to_date(&self, output: &Path, inputs: &str) -> bool {
        output.is_file() && fs::read_to_string(&self.path).is_ok_and(|s| s == inputs)
    }

    /// Forgets the record (before rebuilding, so a failed build is never taken as current).
    pub fn clear(&self) -> Result<(), AssembleError> {
        match fs::remove_file(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&self.path)(e)),
            _ => Ok(()),
        }
    }

    pub fn write(&self, inputs: &str) -> Result<(), AssembleError> {
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        write_atomic(&self.path, inputs.as_bytes()).map_err(io_err(&self.path))
    }
}

/// `key value` lines; the stamp's contents.
pub fn inputs_text(pairs: &[(&str, String)]) -> String {
    let mut s = String::new();
    for (k, v) in pairs {
        s.push_str(k);
        s.push(' ');
        s.push_str(v);
        s.push('\n');
    }
    s
}

fn pkg_input(p: &LockedPackage) -> String {
    format!("{} {} {}", p.name, p.version, p.sha256)
}

fn file_hash(path: &Path) -> Result<String, AssembleError> {
    sha256_file(path).map_err(io_err(path))
}

/// Runs `cargo build --release -p ros` for the static target and returns the executable.
pub fn build_ros(root: &Path) -> Result<PathBuf, AssembleError> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--release",
        "-p",
        "ros",
        "--target",
        "x86_64-unknown-linux-gnu",
        "--message-format=json-render-diagnostics",
    ])
    .current_dir(root)
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    let command = describe(&cmd);
    let output = cmd.output().map_err(|e| AssembleError::Command {
        command: command.clone(),
        detail: e.to_string(),
    })?;
    if !output.status.success() {
        return Err(AssembleError::Command {
            command,
            detail: output.status.to_string(),
        });
    }
    let mut exe = None;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "ros" {
            if let Some(path) = msg["executable"].as_str() {
                exe = Some(PathBuf::from(path));
            }
        }
    }
    exe.ok_or(AssembleError::NoRosBinary { command })
}

/// Refuses anything but a static x86-64 ELF executable (no `PT_INTERP`): the kernel runs `/init`
/// before there is any dynamic loader.
pub fn check_static(path: &Path) -> Result<(), AssembleError> {
    let mut head = Vec::new();
    fs::File::open(path)
        .and_then(|f| f.take(64 * 1024).read_to_end(&mut head))
        .map_err(io_err(path))?;
    let bad = |reason: &str| AssembleError::NotStatic {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let u16_at = |o: usize| head.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        head.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        head.get(o..o + 8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    };
    if head.get(0..4) != Some(b"\x7fELF") || head.get(4) != Some(&2) || head.get(5) != Some(&1) {
        return Err(bad("not a 64-bit little-endian ELF file"));
    }
    if u16_at(0x12) != Some(0x3e) {
        return Err(bad("not an x86-64 executable"));
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return Err(bad("truncated ELF header"));
    };
    for i in 0..usize::from(phnum) {
        let off = usize::try_from(phoff)
            .unwrap_or(usize::MAX)
            .saturating_add(i * usize::from(phentsize));
        match u32_at(off) {
            Some(3) => return Err(bad("it is dynamically linked (has an ELF interpreter)")),
            Some(_) => {}
            None => return Err(bad("program headers beyond the first 64 KiB")),
        }
    }
    Ok(())
}

/// What `kernel` did.
#[derive(Debug, Clone)]
pub struct KernelReport {
    pub outcome: Outcome,
    pub path: PathBuf,
    pub size: u64,
    pub image: String,
}

/// Copies `boot/vmlinuz-*` of the extracted kernel package to `build/out/vmlinuz`.
pub fn kernel(
    layout: &Layout,
    pkg: &LockedPackage,
    pkg_root: &Path,
) -> Result<KernelReport, AssembleError> {
    let boot = pkg_root.join("boot");
    let images: Vec<PathBuf> = fs::read_dir(&boot)
        .map_err(io_err(&boot))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .collect();
    let [image] = images.as_slice() else {
        return Err(AssembleError::NoKernelImage {
            path: pkg_root.to_owned(),
            found: images.len(),
        });
    };
    let name = image
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let out = layout.out().join("vmlinuz");
    let stamp = Stamp::new(layout, "vmlinuz");
    let inputs = inputs_text(&[
        ("format", FORMAT.to_string()),
        ("kernel", pkg_input(pkg)),
        ("image", name.clone()),
    ]);
    let outcome = if stamp.up_to_date(&out, &inputs) {
        Outcome::UpToDate
    } else {
        stamp.clear()?;
        fs::create_dir_all(layout.out()).map_err(io_err(&layout.out()))?;
        let tmp = out.with_extension("tmp");
        fs::copy(image, &tmp).map_err(io_err(&tmp))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &out).map_err(io_err(&out))?;
        stamp.write(&inputs)?;
        Outcome::Built
    };
    let size = fs::metadata(&out).map_err(io_err(&out))?.len();
    Ok(KernelReport {
        outcome,
        path: out,
        size,
        image: name,
    })
}

/// Everything the initramfs is made of.
#[derive(Debug, Clone)]
pub struct InitrdPlan<'a> {
    /// The static `ros` binary (`/init`).
    pub ros: &'a Path,
    pub kernel: (&'a LockedPackage, &'a Path),
    pub busybox: (&'a LockedPackage, &'a Path),
    pub modules_list: &'a Path,
    pub os_config: &'a Path,
    /// ros version for `/etc/os-release`.
    pub version: &'a str,
    /// mtime of every entry (SOURCE_DATE_EPOCH).
    pub epoch: i64,
    pub zstd_level: u32,
    /// Hash of the tool doing the assembly, so a changed xtask rebuilds.
    pub tool: String,
    /// The erofs system image, shipped at [`SYSTEM_IMAGE`] in an uncompressed cpio segment in
    /// front of the zstd one.
    pub system: Option<&'a Path>,
}

/// Where the erofs system image is in the initramfs (PID 1 loop-mounts it).
pub const SYSTEM_IMAGE: &str = "usr/lib/ros/system.erofs";

/// What `initrd` did.
#[derive(Debug, Clone)]
pub struct InitrdReport {
    pub outcome: Outcome,
    pub path: PathBuf,
    pub size: u64,
    /// Size of the uncompressed segment holding the system image (0 without one).
    pub system_segment: u64,
    /// Present when it was rebuilt.
    pub built: Option<Staged>,
}

/// Summary of a staged and packed tree.
#[derive(Debug, Clone, Default)]
pub struct Staged {
    pub kver: String,
    pub modules: Vec<String>,
    pub builtin: Vec<String>,
    pub applets: usize,
    pub entries: usize,
    pub files: usize,
    pub unpacked: u64,
}

impl InitrdReport {
    /// `build/out/initrd.img 3.1 MiB (zstd), …`
    pub fn describe(&self, layout: &Layout) -> String {
        let mut s = if self.system_segment > 0 {
            format!(
                "{} {} ({} uncompressed cpio with {SYSTEM_IMAGE}, then {} zstd)",
                layout.display(&self.path),
                human_size(self.size),
                human_size(self.system_segment),
                human_size(self.size.saturating_sub(self.system_segment)),
            )
        } else {
            format!(
                "{} {} (zstd)",
                layout.display(&self.path),
                human_size(self.size)
            )
        };
        if let Some(b) = &self.built {
            s.push_str(&format!(
                ", {} entries ({} files, {} unpacked), {} busybox applets, kernel {} modules: {}",
                b.entries,
                b.files,
                human_size(b.unpacked),
                b.applets,
                b.kver,
                b.modules.join(" ")
            ));
            if !b.builtin.is_empty() {
                s.push_str(&format!(" (built in: {})", b.builtin.join(" ")));
            }
        }
        s
    }
}

/// The inputs of `initrd.img` as stamp text.
pub fn initrd_inputs(plan: &InitrdPlan) -> Result<String, AssembleError> {
    Ok(inputs_text(&[
        ("format", FORMAT.to_string()),
        ("ros", file_hash(plan.ros)?),
        ("kernel", pkg_input(plan.kernel.0)),
        ("busybox", pkg_input(plan.busybox.0)),
        ("modules.list", file_hash(plan.modules_list)?),
        ("os-config.toml", file_hash(plan.os_config)?),
        ("version", plan.version.to_owned()),
        ("epoch", plan.epoch.to_string()),
        ("zstd", plan.zstd_level.to_string()),
        ("xtask", plan.tool.clone()),
        (
            "system.erofs",
            match plan.system {
                Some(p) => file_hash(p)?,
                None => "none".into(),
            },
        ),
    ]))
}

/// The uncompressed segment's size for an initrd whose inputs are current (written to a sink:
/// the format is simple enough that this is the exact size, and cheap).
fn segment_size(plan: &InitrdPlan) -> Result<u64, AssembleError> {
    let Some(system) = plan.system else {
        return Ok(0);
    };
    let size = fs::metadata(system).map_err(io_err(system))?.len();
    let mut w = crate::cpio::NewcWriter::new(io::sink(), plan.epoch);
    system_segment_dirs(&mut w)
        .and_then(|()| w.file(SYSTEM_IMAGE, 0o644, size, &mut io::repeat(0)))
        .and_then(|()| w.finish())
        .map(|(_, n)| n)
        .map_err(io_err(system))
}

fn system_segment_dirs<W: Write>(w: &mut crate::cpio::NewcWriter<W>) -> io::Result<()> {
    w.dir("usr", 0o755)?;
    w.dir("usr/lib", 0o755)?;
    w.dir("usr/lib/ros", 0o755)
}

/// Writes `out`: the uncompressed newc segment with `system` (when there is one) followed by the
/// compressed archive `packed`. The kernel unpacks an uncompressed archive followed by a
/// compressed one (never the reverse: docs/boot.md). Returns the segment's size.
pub fn concat_initrd(
    out: &Path,
    system: Option<&Path>,
    packed: &Path,
    epoch: i64,
) -> Result<u64, AssembleError> {
    let tmp = out.with_extension("tmp");
    let file = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    let mut w = io::BufWriter::new(file);
    let mut segment = 0;
    if let Some(system) = system {
        let mut src = fs::File::open(system).map_err(io_err(system))?;
        let size = src.metadata().map_err(io_err(system))?.len();
        let mut cpio = crate::cpio::NewcWriter::new(&mut w, epoch);
        system_segment_dirs(&mut cpio)
            .and_then(|()| cpio.file(SYSTEM_IMAGE, 0o644, size, &mut src))
            .map_err(io_err(system))?;
        segment = cpio.finish().map_err(io_err(&tmp))?.1;
    }
    let mut src = fs::File::open(packed).map_err(io_err(packed))?;
    io::copy(&mut src, &mut w).map_err(io_err(&tmp))?;
    w.flush().map_err(io_err(&tmp))?;
    drop(w);
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).map_err(io_err(&tmp))?;
    fs::rename(&tmp, out).map_err(io_err(out))?;
    Ok(segment)
}

/// The zstd main cpio (`build/initrd-main.cpio.zst`), current once [`initrd`] returned; also the
/// tail of `initrd-disk.img` (`diskinitrd`).
pub fn main_cpio(layout: &Layout) -> PathBuf {
    layout.build().join("initrd-main.cpio.zst")
}

/// Builds `build/out/initrd.img` unless its stamp says the inputs are unchanged.
pub fn initrd(layout: &Layout, plan: &InitrdPlan) -> Result<InitrdReport, AssembleError> {
    if !(1..=19).contains(&plan.zstd_level) {
        return Err(AssembleError::ZstdLevel {
            level: plan.zstd_level,
        });
    }
    let out = layout.out().join("initrd.img");
    let stamp = Stamp::new(layout, "initrd.img");
    let inputs = initrd_inputs(plan)?;
    if stamp.up_to_date(&out, &inputs) {
        let size = fs::metadata(&out).map_err(io_err(&out))?.len();
        return Ok(InitrdReport {
            outcome: Outcome::UpToDate,
            path: out,
            size,
            system_segment: segment_size(plan)?,
            built: None,
        });
    }
    stamp.clear()?;
    check_static(plan.ros)?;
    let (kver, moddir) = modules::kernel_release(plan.kernel.1)?;
    let work = layout.depmod().join(&plan.kernel.0.sha256);
    let full = ModulesDep::parse(&modules::full_modules_dep(&moddir, &kver, &work)?)?;
    let staging = layout.staging();
    let mut staged = stage(&staging, plan, &kver, &moddir, &full)?;
    fs::create_dir_all(layout.out()).map_err(io_err(&layout.out()))?;
    let packed = main_cpio(layout);
    let (entries, files, unpacked) = pack(&staging, &packed, plan.zstd_level, plan.epoch)?;
    let system_segment = concat_initrd(&out, plan.system, &packed, plan.epoch)?;
    staged.entries = entries;
    staged.files = files;
    staged.unpacked = unpacked;
    stamp.write(&inputs)?;
    let size = fs::metadata(&out).map_err(io_err(&out))?.len();
    Ok(InitrdReport {
        outcome: Outcome::Built,
        path: out,
        size,
        system_segment,
        built: Some(staged),
    })
}

/// Directories of the initramfs and their modes.
const DIRS: &[(&str, u32)] = &[
    ("bin", 0o755),
    ("dev", 0o755),
    ("etc", 0o755),
    ("lib", 0o755),
    ("lib/modules", 0o755),
    ("mnt", 0o755),
    ("proc", 0o555),
    ("root", 0o700),
    ("run", 0o755),
    ("sbin", 0o755),
    ("sys", 0o555),
    ("tmp", 0o1777),
    ("usr", 0o755),
    ("usr/bin", 0o755),
    ("usr/sbin", 0o755),
    ("usr/share", 0o755),
    ("usr/share/ros", 0o755),
    ("var", 0o755),
];

/// Applets that must not become links: `/init` is ros, and busybox's init must never run.
const NO_LINK: &[&str] = &["busybox", "init", "linuxrc"];

/// The `/bin` links to make from `busybox --list` output.
pub fn applet_links(list: &str) -> Result<Vec<String>, AssembleError> {
    let mut out = Vec::new();
    for name in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if name.contains('/') || name == "." || name == ".." {
            return Err(AssembleError::BadApplet {
                name: name.to_owned(),
            });
        }
        if !NO_LINK.contains(&name) {
            out.push(name.to_owned());
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The static busybox binary in an extracted busybox package (`usr/bin/busybox` on trixie).
pub fn find_busybox(package_root: &Path) -> Result<PathBuf, AssembleError> {
    ["usr/bin/busybox", "bin/busybox"]
        .iter()
        .map(|p| package_root.join(p))
        .find(|p| p.is_file())
        .ok_or_else(|| AssembleError::NoBusybox {
            path: package_root.to_owned(),
        })
}

/// The applets to link for the static `busybox` at `path` (it runs on the build host: it is
/// static), per [`applet_links`].
pub fn busybox_applets(path: &Path) -> Result<Vec<String>, AssembleError> {
    let mut cmd = Command::new(path);
    cmd.arg("--list");
    let command = describe(&cmd);
    let output = cmd.output().map_err(|e| AssembleError::Command {
        command: command.clone(),
        detail: e.to_string(),
    })?;
    if !output.status.success() {
        return Err(AssembleError::Command {
            command,
            detail: output_tail(&output),
        });
    }
    applet_links(&String::from_utf8_lossy(&output.stdout))
}

fn os_release(version: &str) -> String {
    format!(
        "NAME=\"ros\"\nID=ros\nVERSION=\"{version}\"\nVERSION_ID=\"{version}\"\nPRETTY_NAME=\"ros {version}\"\n"
    )
}

fn put(path: &Path, contents: &[u8], mode: u32) -> Result<(), AssembleError> {
    fs::write(path, contents).map_err(io_err(path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err(path))
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<(), AssembleError> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    fs::copy(from, to).map_err(io_err(from))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode)).map_err(io_err(to))
}

fn link(target: &str, at: &Path) -> Result<(), AssembleError> {
    symlink(target, at).map_err(io_err(at))
}

/// Builds the initramfs tree in `staging` from scratch.
fn stage(
    staging: &Path,
    plan: &InitrdPlan,
    kver: &str,
    moddir: &Path,
    full: &ModulesDep,
) -> Result<Staged, AssembleError> {
    if staging.exists() {
        fs::remove_dir_all(staging).map_err(io_err(staging))?;
    }
    fs::create_dir_all(staging).map_err(io_err(staging))?;
    fs::set_permissions(staging, fs::Permissions::from_mode(0o755)).map_err(io_err(staging))?;
    for (dir, _) in DIRS {
        let p = staging.join(dir);
        fs::create_dir_all(&p).map_err(io_err(&p))?;
    }

    // /init is ros; `ros` on PATH is the same binary (the CLI), and so is the runtime of
    // shared-shim containers, which containerd finds on its PATH by that name.
    copy(plan.ros, &staging.join("init"), 0o755)?;
    link("/init", &staging.join("usr/bin/ros"))?;
    link("/init", &staging.join("usr/bin/containerd-shim-ros-v2"))?;

    // busybox and one /bin link per applet.
    let bb = find_busybox(plan.busybox.1)?;
    let bb_dest = staging.join("bin/busybox");
    copy(&bb, &bb_dest, 0o755)?;
    let applets = busybox_applets(&bb_dest)?;
    for a in &applets {
        link("busybox", &staging.join("bin").join(a))?;
    }

    // /etc
    put(
        &staging.join("etc/passwd"),
        b"root:x:0:0:root:/root:/bin/sh\n",
        0o644,
    )?;
    put(&staging.join("etc/group"), b"root:x:0:\n", 0o644)?;
    put(
        &staging.join("etc/os-release"),
        os_release(plan.version).as_bytes(),
        0o644,
    )?;
    copy(
        plan.os_config,
        &staging.join("usr/share/ros/os-config.toml"),
        0o644,
    )?;

    // Modules: the listed ones and their dependencies, still compressed.
    let list = fs::read_to_string(plan.modules_list).map_err(io_err(plan.modules_list))?;
    let wanted = modules::parse_modules_list(&list);
    let builtin_text = fs::read_to_string(moddir.join("modules.builtin")).unwrap_or_default();
    let closure = full.closure(&wanted, &modules::parse_builtin(&builtin_text), kver)?;
    let dest = staging.join("lib/modules").join(kver);
    fs::create_dir_all(&dest).map_err(io_err(&dest))?;
    for rel in &closure.paths {
        copy(&moddir.join(rel), &dest.join(rel), 0o644)?;
    }
    put(
        &dest.join("modules.dep"),
        full.subset_text(&closure.paths).as_bytes(),
        0o644,
    )?;
    for f in ["modules.builtin", "modules.order"] {
        if moddir.join(f).is_file() {
            copy(&moddir.join(f), &dest.join(f), 0o644)?;
        }
    }

    // Directory modes last: creating entries inside must not be blocked by them.
    for (dir, mode) in DIRS {
        let p = staging.join(dir);
        fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).map_err(io_err(&p))?;
    }
    let mut modules: Vec<String> = closure
        .paths
        .iter()
        .map(|p| modules::module_name(p))
        .collect();
    modules.sort();
    Ok(Staged {
        kver: kver.to_owned(),
        modules,
        builtin: closure.builtin,
        applets: applets.len(),
        ..Staged::default()
    })
}

/// Every entry under `root`, as paths relative to it, sorted bytewise (parents first).
fn walk(root: &Path) -> Result<Vec<PathBuf>, AssembleError> {
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let dir = root.join(&rel);
        for e in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let e = e.map_err(io_err(&dir))?;
            let rel = rel.join(e.file_name());
            if e.file_type().map_err(io_err(&e.path()))?.is_dir() {
                todo.push(rel.clone());
            }
            out.push(rel);
        }
    }
    out.sort_by(|a, b| {
        a.as_os_str()
            .as_encoded_bytes()
            .cmp(b.as_os_str().as_encoded_bytes())
    });
    Ok(out)
}

/// Sets the mtime of `path` (not following symlinks) to `epoch`.
fn set_mtime(path: &Path, epoch: i64) -> Result<(), AssembleError> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let t = TimeSpec::new(epoch, 0);
    utimensat(None, path, &t, &t, UtimensatFlags::NoFollowSymlink)
        .map_err(|e| io_err(path)(io::Error::from(e)))
}

/// SOURCE_DATE_EPOCH, else 0.
pub fn source_date_epoch() -> i64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Packs `staging` as a newc cpio (sorted, owned by root, every mtime `epoch`) compressed with
/// zstd at `level` into `out`. Returns (entries, regular files, unpacked bytes).
pub fn pack(
    staging: &Path,
    out: &Path,
    level: u32,
    epoch: i64,
) -> Result<(usize, usize, u64), AssembleError> {
    let entries = walk(staging)?;
    let mut files = 0;
    let mut unpacked = 0;
    let mut list = b".\0".to_vec();
    for rel in &entries {
        let p = staging.join(rel);
        let meta = fs::symlink_metadata(&p).map_err(io_err(&p))?;
        if meta.is_file() {
            files += 1;
            unpacked += meta.len();
        }
        set_mtime(&p, epoch)?;
        list.extend_from_slice(b"./");
        list.extend_from_slice(rel.as_os_str().as_encoded_bytes());
        list.push(0);
    }
    set_mtime(staging, epoch)?;

    let tmp = out.with_extension("tmp");
    let tmp_file = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    let mut cpio = Command::new("cpio");
    cpio.args([
        "--quiet",
        "-o",
        "-H",
        "newc",
        "-R",
        "0:0",
        "--reproducible",
        "--null",
    ])
    .current_dir(staging)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let cpio_cmd = describe(&cpio);
    let spawn_err = |command: &str| {
        let command = command.to_owned();
        move |e: io::Error| AssembleError::Command {
            command,
            detail: format!("{e} (install cpio and zstd)"),
        }
    };
    let mut cpio_child = cpio.spawn().map_err(spawn_err(&cpio_cmd))?;
    let no_pipe = |command: &str| AssembleError::Command {
        command: command.to_owned(),
        detail: "spawned without the piped stdin/stdout".into(),
    };
    let cpio_out = cpio_child.stdout.take().ok_or_else(|| no_pipe(&cpio_cmd))?;
    let mut zstd = Command::new("zstd");
    zstd.arg("-q")
        .arg(format!("-{level}"))
        .args(["-T0", "-c"])
        .stdin(Stdio::from(cpio_out))
        .stdout(Stdio::from(tmp_file))
        .stderr(Stdio::piped());
    let zstd_cmd = describe(&zstd);
    let zstd_child = zstd.spawn().map_err(spawn_err(&zstd_cmd));
    let mut stdin = cpio_child.stdin.take().ok_or_else(|| no_pipe(&cpio_cmd))?;
    let writer = std::thread::spawn(move || stdin.write_all(&list));
    let cpio_result = cpio_child.wait_with_output();
    let _ = writer.join();
    let zstd_result = zstd_child?.wait_with_output();
    let check = |command: &str, r: io::Result<std::process::Output>| match r {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(AssembleError::Command {
            command: command.to_owned(),
            detail: format!("{}: {}", o.status, output_tail(&o)),
        }),
        Err(e) => Err(AssembleError::Command {
            command: command.to_owned(),
            detail: e.to_string(),
        }),
    };
    let result = check(&cpio_cmd, cpio_result).and_then(|()| check(&zstd_cmd, zstd_result));
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, out).map_err(io_err(out))?;
    Ok((entries.len() + 1, files, unpacked))
}

/// sha256 of the running xtask executable (changes when the assembly code does).
pub fn tool_hash() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| sha256_file(&p).ok())
        .unwrap_or_else(|| sha256_bytes(env!("CARGO_PKG_VERSION").as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applet_links_never_include_init_or_linuxrc() {
        let links = applet_links("sh\ninit\nls\nlinuxrc\nbusybox\nmount\nsh\n").unwrap();
        assert_eq!(links, vec!["ls", "mount", "sh"]);
        assert!(applet_links("../etc/x\n").is_err());
    }

    #[test]
    fn stamp_tracks_every_input() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let out = layout.out().join("thing");
        fs::create_dir_all(layout.out()).unwrap();
        fs::write(&out, b"x").unwrap();
        let stamp = Stamp::new(&layout, "thing");
        let a = inputs_text(&[("ros", "aaa".into()), ("zstd", "19".into())]);
        let b = inputs_text(&[("ros", "bbb".into()), ("zstd", "19".into())]);
        assert!(!stamp.up_to_date(&out, &a), "no stamp yet");
        stamp.write(&a).unwrap();
        assert!(stamp.up_to_date(&out, &a));
        assert!(!stamp.up_to_date(&out, &b), "a changed input rebuilds");
        fs::remove_file(&out).unwrap();
        assert!(!stamp.up_to_date(&out, &a), "a missing output rebuilds");
        stamp.clear().unwrap();
        stamp.clear().unwrap();
    }

    #[test]
    fn static_check_rejects_dynamic_and_non_elf() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("script");
        fs::write(&text, b"#!/bin/sh\n").unwrap();
        let err = check_static(&text).unwrap_err().to_string();
        assert!(err.contains("not a 64-bit"), "{err}");
        // /bin/sh on the build host is dynamically linked.
        if let Ok(sh) = fs::canonicalize("/bin/sh") {
            let err = check_static(&sh).unwrap_err().to_string();
            assert!(err.contains("dynamically linked"), "{err}");
        }
    }

    #[test]
    fn os_release_names_ros_and_version() {
        let s = os_release("0.1.0");
        assert!(
            s.contains("ID=ros\n") && s.contains("VERSION_ID=\"0.1.0\""),
            "{s}"
        );
    }

    #[test]
    fn pack_is_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("root");
        fs::create_dir_all(staging.join("bin")).unwrap();
        put(&staging.join("init"), b"#!/bin/sh\n", 0o755).unwrap();
        link("/init", &staging.join("bin/x")).unwrap();
        let a = dir.path().join("a.img");
        let b = dir.path().join("b.img");
        let (entries, files, bytes) = pack(&staging, &a, 3, 0).unwrap();
        assert_eq!((entries, files, bytes), (4, 1, 10));
        std::thread::sleep(std::time::Duration::from_millis(10));
        put(&staging.join("init"), b"#!/bin/sh\n", 0o755).unwrap();
        pack(&staging, &b, 3, 0).unwrap();
        assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
        let listing = Command::new("sh")
            .arg("-c")
            .arg(format!("zstd -dc {} | cpio -t --quiet", a.display()))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&listing.stdout),
            ".\nbin\nbin/x\ninit\n"
        );
    }
}
