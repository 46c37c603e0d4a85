//! The system image: `images/system.toml` (which executables of which pinned packages, and which
//! packages provide their libraries) staged into a merged-`/usr` tree — the executables, their
//! loader and shared-library closure at their Debian paths, the OCI archives of the system
//! service images under `/usr/share/ros/images/`, empty mount points — and packed read-only and
//! compressed with `mkfs.erofs` into `build/out/system.erofs`.
//!
//! Owns `build/system-root/` and the erofs flags. It must not fetch packages, pick the files of
//! the OCI archives, or print. The libraries come only from the pinned packages (through
//! [`elf::closure`]); one that is missing fails the build naming the binary and the library.
//! Reproducible: `mkfs.erofs -T<epoch> --all-root -x-1 -U<uuid from the inputs>`, and
//! erofs-utils sorts directory entries itself. bookworm's erofs-utils 1.5 offers only lz4 and
//! lz4hc (no lzma): see docs/images.md.

use crate::assemble::{inputs_text, AssembleError, Outcome, Stamp};
use crate::elf::{self, ElfError};
use crate::fetch::PackageSet;
use crate::layout::Layout;
use crate::tree::{Layer, MergedTree, TreeError, USRMERGE};
use crate::util::{describe, output_tail, sha256_bytes, sha256_file};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Bumped when the layout of the image changes in a way its inputs do not show.
const FORMAT: u32 = 1;

/// `mkfs.erofs` flags besides `-T`/`-U`: lz4hc in 64 KiB physical clusters (46.3 vs 47.6 MB
/// for 1 MiB clusters, but a page fault decompresses at most 64 KiB), every file owned by root,
/// no extended attributes from the build host.
pub const MKFS_FLAGS: &[&str] = &["-zlz4hc", "-C65536", "--all-root", "-x-1", "--quiet"];

/// Where the OCI archives of the system service images go in the image.
pub const IMAGES_DIR: &str = "/usr/share/ros/images";

/// What went wrong with the system image; each names the manifest, path, package or command.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{manifest}: package {package} is not in images/packages.toml")]
    UnknownPackage { manifest: PathBuf, package: String },
    #[error("{manifest}: {path} is not in package {package}{found}")]
    NotInPackage {
        manifest: PathBuf,
        package: String,
        path: String,
        /// ` (package X has it)` when another package does.
        found: String,
    },
    #[error("`{command}` failed: {detail}")]
    Mkfs { command: String, detail: String },
    #[error(transparent)]
    Elf(#[from] ElfError),
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error(transparent)]
    Stamp(#[from] AssembleError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SystemError {
    let path = path.to_owned();
    move |source| SystemError::Io { path, source }
}

/// `images/system.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemManifest {
    /// Packages whose shared libraries the executables may use (after their own packages).
    pub libraries: Vec<String>,
    /// Empty directories of the image (mount points; `/tmp` gets mode 1777).
    #[serde(default)]
    pub dirs: Vec<String>,
    #[serde(rename = "binary")]
    pub binaries: Vec<BinarySpec>,
    /// Symbolic links no package ships (Debian's update-alternatives links, e.g.
    /// `/usr/sbin/iptables` → `iptables-nft`).
    #[serde(rename = "link", default)]
    pub links: Vec<LinkSpec>,
}

/// `[[link]]`: a symbolic link at `path` (absolute) pointing to `target` (as written, usually
/// relative). The target must resolve to a staged file, which the build checks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    pub path: String,
    pub target: String,
}

/// `[[binary]]`: executables of one package, at their Debian paths (a path that is a symlink in
/// the package is kept as one, with its target).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BinarySpec {
    pub package: String,
    pub paths: Vec<String>,
}

impl SystemManifest {
    pub fn parse(text: &str, path: &Path) -> Result<Self, SystemError> {
        let m: SystemManifest = toml::from_str(text).map_err(|source| SystemError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let bad = |reason: String| SystemError::Invalid {
            path: path.to_owned(),
            reason,
        };
        let link_paths = m.links.iter().map(|l| &l.path);
        for p in m
            .binaries
            .iter()
            .flat_map(|b| &b.paths)
            .chain(&m.dirs)
            .chain(link_paths)
        {
            let rel = p.trim_start_matches('/');
            if !p.starts_with('/')
                || rel.is_empty()
                || rel
                    .split('/')
                    .any(|c| c.is_empty() || c == "." || c == "..")
            {
                return Err(bad(format!("`{p}` is not a normal absolute path")));
            }
        }
        if m.binaries.is_empty() {
            return Err(bad("no [[binary]]".into()));
        }
        if let Some(l) = m
            .links
            .iter()
            .find(|l| l.target.is_empty() || l.target.contains('\0'))
        {
            return Err(bad(format!("[[link]] `{}` has no target", l.path)));
        }
        Ok(m)
    }

    pub fn load(path: &Path) -> Result<Self, SystemError> {
        let text = fs::read_to_string(path).map_err(io_err(path))?;
        Self::parse(&text, path)
    }

    /// Every package named: the binaries' first, then the libraries', each once.
    pub fn packages(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for p in self
            .binaries
            .iter()
            .map(|b| &b.package)
            .chain(&self.libraries)
        {
            if !out.contains(p) {
                out.push(p.clone());
            }
        }
        out
    }
}

/// A file added to the image as is (the OCI archives).
#[derive(Debug, Clone)]
pub struct Extra {
    pub source: PathBuf,
    /// Absolute path in the image.
    pub target: String,
}

/// Summary of a staged tree.
#[derive(Debug, Clone, Default)]
pub struct Staged {
    /// The executables, as listed.
    pub binaries: Vec<String>,
    /// Library (as needed) → path in the image.
    pub libraries: BTreeMap<String, String>,
    pub files: usize,
    pub bytes: u64,
}

fn copy_file(from: &Path, to: &Path) -> Result<u64, SystemError> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let n = fs::copy(from, to).map_err(io_err(from))?;
    let mode = fs::metadata(from)
        .map_err(io_err(from))?
        .permissions()
        .mode()
        & 0o7777;
    fs::set_permissions(to, fs::Permissions::from_mode(mode)).map_err(io_err(to))?;
    Ok(n)
}

fn make_link(target: &str, at: &Path) -> Result<(), SystemError> {
    if let Some(dir) = at.parent() {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    match fs::symlink_metadata(at) {
        Ok(_) => Ok(()),
        Err(_) => symlink(target, at).map_err(io_err(at)),
    }
}

/// Sets every directory under `root` (and `root`) to 0755, except `special` (relative path →
/// mode).
fn fix_dir_modes(root: &Path, special: &BTreeMap<String, u32>) -> Result<(), SystemError> {
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let dir = root.join(&rel);
        let key = rel.to_string_lossy().into_owned();
        let mode = special.get(&key).copied().unwrap_or(0o755);
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).map_err(io_err(&dir))?;
        for e in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let e = e.map_err(io_err(&dir))?;
            if e.file_type().map_err(io_err(&e.path()))?.is_dir() {
                todo.push(rel.join(e.file_name()));
            }
        }
    }
    Ok(())
}

/// Stages the system tree into `staging` (emptied first): the binaries of `manifest`, their
/// library closure from `packages`, the merged-`/usr` links, the empty `dirs`, and `extras`.
pub fn stage(
    staging: &Path,
    manifest: &SystemManifest,
    manifest_path: &Path,
    packages: &PackageSet,
    extras: &[Extra],
) -> Result<Staged, SystemError> {
    let mut layers = Vec::new();
    for name in manifest.packages() {
        let root = packages
            .root(&name)
            .ok_or_else(|| SystemError::UnknownPackage {
                manifest: manifest_path.to_owned(),
                package: name.clone(),
            })?;
        layers.push(Layer {
            package: name,
            root: root.to_owned(),
        });
    }
    let tree = MergedTree::new(layers);
    let mut binaries = Vec::new();
    for spec in &manifest.binaries {
        for path in &spec.paths {
            let found = tree.resolve(path)?;
            match found {
                Some(f) if f.package == spec.package => binaries.push(path.clone()),
                other => {
                    return Err(SystemError::NotInPackage {
                        manifest: manifest_path.to_owned(),
                        package: spec.package.clone(),
                        path: path.clone(),
                        found: other
                            .map(|f| format!(" (package {} has it)", f.package))
                            .unwrap_or_default(),
                    })
                }
            }
        }
    }
    let closure = elf::closure(&tree, &binaries)?;

    if staging.exists() {
        fs::remove_dir_all(staging).map_err(io_err(staging))?;
    }
    fs::create_dir_all(staging).map_err(io_err(staging))?;
    let mut staged = Staged {
        binaries: binaries.clone(),
        libraries: closure.libraries.clone(),
        ..Staged::default()
    };
    for (path, (host, _)) in &closure.files {
        staged.bytes += copy_file(host, &staging.join(path.trim_start_matches('/')))?;
        staged.files += 1;
    }
    for link in closure.links.iter().filter(|l| l.package.is_some()) {
        make_link(
            &link.target,
            &staging.join(link.path.trim_start_matches('/')),
        )?;
    }
    for (name, target) in USRMERGE {
        fs::create_dir_all(staging.join(target)).map_err(io_err(&staging.join(target)))?;
        make_link(target, &staging.join(name))?;
    }
    for l in &manifest.links {
        let at = staging.join(l.path.trim_start_matches('/'));
        make_link(&l.target, &at)?;
        // A dangling link would only fail at run time, in the guest: refuse it here.
        if fs::metadata(&at).is_err() {
            return Err(SystemError::Invalid {
                path: manifest_path.to_owned(),
                reason: format!(
                    "[[link]] {} -> {} points to nothing in the image",
                    l.path, l.target
                ),
            });
        }
    }
    let mut special = BTreeMap::new();
    for d in &manifest.dirs {
        let rel = d.trim_start_matches('/');
        let p = staging.join(rel);
        fs::create_dir_all(&p).map_err(io_err(&p))?;
        if rel == "tmp" || rel == "var/tmp" {
            special.insert(rel.to_owned(), 0o1777);
        }
    }
    for x in extras {
        let to = staging.join(x.target.trim_start_matches('/'));
        staged.bytes += copy_file(&x.source, &to)?;
        fs::set_permissions(&to, fs::Permissions::from_mode(0o644)).map_err(io_err(&to))?;
        staged.files += 1;
    }
    fix_dir_modes(staging, &special)?;
    Ok(staged)
}

/// A filesystem UUID derived from `seed` (reproducible, different for different inputs).
pub fn uuid_from(seed: &str) -> String {
    crate::util::uuid_text(&sha256_bytes(seed.as_bytes()))
}

/// Packs `staging` into the erofs image `out` (through a temporary file).
pub fn mkfs_erofs(staging: &Path, out: &Path, epoch: i64, uuid: &str) -> Result<(), SystemError> {
    let tmp = out.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut cmd = Command::new("mkfs.erofs");
    cmd.args(MKFS_FLAGS)
        .arg(format!("-T{}", epoch.max(0)))
        .arg(format!("-U{uuid}"))
        .arg(&tmp)
        .arg(staging);
    let command = describe(&cmd);
    let output = cmd.output().map_err(|e| SystemError::Mkfs {
        command: command.clone(),
        detail: format!("{e} (install erofs-utils)"),
    })?;
    if !output.status.success() {
        let _ = fs::remove_file(&tmp);
        return Err(SystemError::Mkfs {
            command,
            detail: format!("{}: {}", output.status, output_tail(&output)),
        });
    }
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).map_err(io_err(&tmp))?;
    fs::rename(&tmp, out).map_err(io_err(out))
}

/// Everything the system image is made of.
#[derive(Debug, Clone)]
pub struct SystemPlan<'a> {
    pub manifest_path: &'a Path,
    pub packages: &'a PackageSet,
    /// The OCI archives (or other files) to ship.
    pub extras: &'a [Extra],
    pub epoch: i64,
    /// Hash of the tool doing the assembly, so a changed xtask rebuilds.
    pub tool: String,
}

/// What [`build`] did.
#[derive(Debug, Clone)]
pub struct SystemReport {
    pub outcome: Outcome,
    pub path: PathBuf,
    pub size: u64,
    /// Present when it was rebuilt.
    pub staged: Option<Staged>,
}

/// The stamp text of the system image.
pub fn inputs(plan: &SystemPlan, manifest: &SystemManifest) -> Result<String, SystemError> {
    let mut pairs = vec![
        ("format", FORMAT.to_string()),
        (
            "system.toml",
            sha256_file(plan.manifest_path).map_err(io_err(plan.manifest_path))?,
        ),
        ("epoch", plan.epoch.to_string()),
        ("mkfs", MKFS_FLAGS.join(" ")),
        ("xtask", plan.tool.clone()),
    ];
    let mut lines = Vec::new();
    for name in manifest.packages() {
        let pin = plan
            .packages
            .pin(&name)
            .ok_or_else(|| SystemError::UnknownPackage {
                manifest: plan.manifest_path.to_owned(),
                package: name.clone(),
            })?;
        lines.push(format!(
            "{name} {} {} {}",
            pin.name, pin.version, pin.sha256
        ));
    }
    for x in plan.extras {
        lines.push(format!(
            "{} {}",
            x.target,
            sha256_file(&x.source).map_err(io_err(&x.source))?
        ));
    }
    for l in &lines {
        pairs.push(("input", l.clone()));
    }
    Ok(inputs_text(&pairs))
}

/// Builds `build/out/system.erofs` unless its stamp says the inputs are unchanged.
pub fn build(layout: &Layout, plan: &SystemPlan) -> Result<SystemReport, SystemError> {
    let manifest = SystemManifest::load(plan.manifest_path)?;
    let out = layout.out().join("system.erofs");
    let stamp = Stamp::new(layout, "system.erofs");
    let inputs = inputs(plan, &manifest)?;
    let size = |p: &Path| fs::metadata(p).map(|m| m.len()).map_err(io_err(p));
    if stamp.up_to_date(&out, &inputs) {
        return Ok(SystemReport {
            outcome: Outcome::UpToDate,
            size: size(&out)?,
            path: out,
            staged: None,
        });
    }
    stamp.clear()?;
    let staging = layout.build().join("system-root");
    let staged = stage(
        &staging,
        &manifest,
        plan.manifest_path,
        plan.packages,
        plan.extras,
    )?;
    fs::create_dir_all(layout.out()).map_err(io_err(&layout.out()))?;
    mkfs_erofs(&staging, &out, plan.epoch, &uuid_from(&inputs))?;
    stamp.write(&inputs)?;
    Ok(SystemReport {
        outcome: Outcome::Built,
        size: size(&out)?,
        path: out,
        staged: Some(staged),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_rejects_relative_paths_and_lists_packages_once() {
        let p = Path::new("images/system.toml");
        let ok = SystemManifest::parse(
            r#"
libraries = ["libc6", "libseccomp2"]
dirs = ["/proc", "/tmp"]
[[binary]]
package = "runc"
paths = ["/usr/sbin/runc", "/usr/bin/runc"]
[[binary]]
package = "libc6"
paths = ["/usr/bin/x"]
"#,
            p,
        )
        .unwrap();
        assert_eq!(ok.packages(), vec!["runc", "libc6", "libseccomp2"]);
        let err = SystemManifest::parse(
            "libraries = []\n[[binary]]\npackage = \"x1\"\npaths = [\"usr/bin/x\"]\n",
            p,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("images/system.toml") && err.contains("usr/bin/x"),
            "{err}"
        );
        let err = SystemManifest::parse("libraries = []\nbinary = []\nfoo = 1\n", p)
            .unwrap_err()
            .to_string();
        assert!(err.contains("foo"), "{err}");
    }

    #[test]
    fn uuid_is_stable_and_input_dependent() {
        assert_eq!(uuid_from("a"), uuid_from("a"));
        assert_ne!(uuid_from("a"), uuid_from("b"));
        assert_eq!(uuid_from("a").len(), 36);
    }

    /// Needs `mkfs.erofs` (erofs-utils, a host prerequisite).
    #[test]
    fn erofs_is_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let mk = |name: &str, order: &[&str]| {
            let root = dir.path().join(name);
            fs::create_dir_all(root.join("usr/bin")).unwrap();
            for f in order {
                fs::write(root.join("usr/bin").join(f), f.repeat(1000)).unwrap();
            }
            let out = dir.path().join(format!("{name}.erofs"));
            mkfs_erofs(&root, &out, 0, &uuid_from("x")).unwrap();
            fs::read(out).unwrap()
        };
        let a = mk("a", &["x", "y", "z"]);
        let b = mk("b", &["z", "x", "y"]);
        assert!(a == b, "same tree, different creation order: same image");
    }
}
