//! System service images: `images/<name>/image.toml` (what goes in, entrypoint, env, labels)
//! built into an OCI image layout archive, `build/out/images/<name>.oci.tar` — `oci-layout`,
//! `index.json` and `blobs/sha256/…` holding one gzip layer, the config and the manifest —
//! which containerd imports as is (`ctr images import`, or content + image record through the
//! API).
//!
//! Owns the manifest format and the archive bytes. Archives are reproducible: entries sorted,
//! every mtime the build epoch (SOURCE_DATE_EPOCH), uid/gid 0, gzip without a timestamp, JSON
//! with sorted keys; the same inputs give the same digests. It must not fetch packages (it takes
//! extracted trees) or print. Files come from the repository (`source`, next to image.toml),
//! inline text (`content`), a pinned Debian package (`package` + `path`, static executables only:
//! the layer has no libraries), or the static `ros` binary (`ros = true`); `[busybox]` adds the
//! static busybox and one link per applet.
//!
//! Naming: the image is `docker.io/<name>:<ros version>`; index.json carries it as
//! `io.containerd.image.name` (what containerd's importer names the image after) and the tag as
//! `org.opencontainers.image.ref.name` (the OCI layout convention).

use crate::assemble::{busybox_applets, find_busybox, inputs_text, AssembleError, Outcome, Stamp};
use crate::elf::{self, ElfError};
use crate::fetch::PackageSet;
use crate::layout::Layout;
use crate::tree::{Layer, MergedTree, TreeError};
use crate::util::{sha256_bytes, sha256_file, write_atomic};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The manifest's file name inside each image folder.
pub const MANIFEST: &str = "image.toml";

pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The annotation containerd's importer takes the full image name from.
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// The OCI image-layout annotation for a manifest's tag.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Bumped when the archive layout changes in a way the inputs do not show.
const FORMAT: u32 = 1;

/// What went wrong building an image; each names the manifest, the file or the package.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
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
    #[error("{manifest}: {path} of package {package}: no such file")]
    NotInPackage {
        manifest: PathBuf,
        package: String,
        path: String,
    },
    #[error(
        "{manifest}: {path} of package {package} is dynamically linked (needs {needed:?}); \
         images take static executables only"
    )]
    Dynamic {
        manifest: PathBuf,
        package: String,
        path: String,
        needed: Vec<String>,
    },
    #[error("{manifest}: {source}")]
    Busybox {
        manifest: PathBuf,
        source: AssembleError,
    },
    #[error("{manifest}: writing the layer: {source}")]
    Tar {
        manifest: PathBuf,
        source: io::Error,
    },
    #[error(transparent)]
    Elf(#[from] ElfError),
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error(transparent)]
    Stamp(#[from] AssembleError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> OciError {
    let path = path.to_owned();
    move |source| OciError::Io { path, source }
}

/// `images/<name>/image.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageManifest {
    /// Repository name, e.g. `ros/console`; the tag is the ros version.
    pub name: String,
    /// Empty directories to create (`/tmp` and `/var/tmp` get mode 1777, `/root` 0700, others
    /// 0755).
    #[serde(default)]
    pub dirs: Vec<String>,
    pub config: ImageConfig,
    #[serde(default)]
    pub busybox: Option<BusyboxSpec>,
    #[serde(default, rename = "file")]
    pub files: Vec<FileSpec>,
}

/// The runtime defaults of the image (OCI image config `config` object).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `KEY=value` strings, in order.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub stop_signal: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `[busybox]`: the static busybox of a package, plus a link per applet next to it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusyboxSpec {
    pub package: String,
    /// Where the binary goes; the applet links go into the same directory.
    #[serde(default = "default_busybox_target")]
    pub target: String,
}

fn default_busybox_target() -> String {
    "/bin/busybox".into()
}

/// `[[file]]`: one file of the image; exactly one of `source`, `content`, `package` (+ `path`)
/// or `ros`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Absolute path in the image.
    pub target: String,
    /// A file next to image.toml.
    #[serde(default)]
    pub source: Option<String>,
    /// Inline contents.
    #[serde(default)]
    pub content: Option<String>,
    /// A pinned Debian package (images/packages.toml) …
    #[serde(default)]
    pub package: Option<String>,
    /// … and the absolute path of the file in it.
    #[serde(default)]
    pub path: Option<String>,
    /// The static `ros` binary of this build.
    #[serde(default)]
    pub ros: bool,
    /// Permission bits; default: the source's (0644 for `content`, 0755 for `ros`).
    #[serde(default)]
    pub mode: Option<u32>,
}

/// Where a file's bytes come from, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileSource {
    Repo(PathBuf),
    Inline(String),
    Package { package: String, path: String },
    Ros,
}

/// One image folder.
#[derive(Debug, Clone)]
pub struct ImageDir {
    /// The folder name (`console`): the archive is `<name>.oci.tar`.
    pub name: String,
    pub dir: PathBuf,
    pub manifest_path: PathBuf,
    pub manifest: ImageManifest,
}

/// Whether `name` is a valid path-component sequence of an image repository name.
fn valid_repo(name: &str) -> bool {
    !name.is_empty()
        && name.split('/').all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
        })
}

/// Whether `tag` is a valid image tag.
pub fn valid_tag(tag: &str) -> bool {
    (1..=128).contains(&tag.len())
        && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// `ros/console` + `0.1.0` → `docker.io/ros/console:0.1.0` (a name whose first component has
/// no `.` or `:` and is not `localhost` is on Docker Hub, as containerd normalises it).
pub fn reference(name: &str, tag: &str) -> String {
    let first = name.split('/').next().unwrap_or("");
    let has_domain =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    if has_domain {
        format!("{name}:{tag}")
    } else if name.contains('/') {
        format!("docker.io/{name}:{tag}")
    } else {
        format!("docker.io/library/{name}:{tag}")
    }
}

impl ImageManifest {
    pub fn parse(text: &str, path: &Path) -> Result<Self, OciError> {
        let m: ImageManifest = toml::from_str(text).map_err(|source| OciError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let bad = |reason: String| OciError::Invalid {
            path: path.to_owned(),
            reason,
        };
        if !valid_repo(&m.name) {
            return Err(bad(format!(
                "name `{}` is not a lowercase image name",
                m.name
            )));
        }
        for e in &m.config.env {
            if !e.contains('=') || e.starts_with('=') {
                return Err(bad(format!("config.env `{e}` is not KEY=value")));
            }
        }
        for d in &m.dirs {
            check_target(d).map_err(|r| bad(format!("dirs `{d}`: {r}")))?;
        }
        if let Some(bb) = &m.busybox {
            check_target(&bb.target).map_err(|r| bad(format!("busybox.target: {r}")))?;
        }
        for f in &m.files {
            check_target(&f.target).map_err(|r| bad(format!("file `{}`: {r}", f.target)))?;
            f.source()
                .map_err(|r| bad(format!("file `{}`: {r}", f.target)))?;
            if f.mode.is_some_and(|m| m > 0o7777) {
                return Err(bad(format!(
                    "file `{}`: mode is more than 0o7777",
                    f.target
                )));
            }
        }
        Ok(m)
    }

    pub fn load(path: &Path) -> Result<Self, OciError> {
        let text = fs::read_to_string(path).map_err(io_err(path))?;
        Self::parse(&text, path)
    }

    /// The Debian packages this image takes files from.
    pub fn packages(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .files
            .iter()
            .filter_map(|f| f.package.clone())
            .chain(self.busybox.iter().map(|b| b.package.clone()))
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// A target path must be absolute, normal and not `/`.
fn check_target(t: &str) -> Result<(), String> {
    if !t.starts_with('/') {
        return Err("must be an absolute path".into());
    }
    let rel = t.trim_start_matches('/');
    if rel.is_empty()
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err("must be a normal path below /".into());
    }
    Ok(())
}

impl FileSpec {
    /// Which source this entry names; exactly one is allowed.
    pub fn source(&self) -> Result<FileSource, String> {
        let mut found = Vec::new();
        if let Some(s) = &self.source {
            if s.starts_with('/') || s.split('/').any(|c| c == "..") {
                return Err(format!(
                    "source `{s}` must be a path inside the image folder"
                ));
            }
            found.push(FileSource::Repo(PathBuf::from(s)));
        }
        if let Some(c) = &self.content {
            found.push(FileSource::Inline(c.clone()));
        }
        match (&self.package, &self.path) {
            (Some(package), Some(path)) if path.starts_with('/') => {
                found.push(FileSource::Package {
                    package: package.clone(),
                    path: path.clone(),
                })
            }
            (Some(_), Some(path)) => return Err(format!("path `{path}` must be absolute")),
            (Some(_), None) => return Err("package needs path".into()),
            (None, Some(_)) => return Err("path needs package".into()),
            (None, None) => {}
        }
        if self.ros {
            found.push(FileSource::Ros);
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err("needs one of source, content, package + path, ros = true".into()),
            _ => Err("names more than one of source, content, package, ros".into()),
        }
    }
}

/// Every `images/*/image.toml`, sorted by folder name.
pub fn discover(images: &Path) -> Result<Vec<ImageDir>, OciError> {
    let mut out = Vec::new();
    for e in fs::read_dir(images).map_err(io_err(images))? {
        let e = e.map_err(io_err(images))?;
        let manifest_path = e.path().join(MANIFEST);
        if !manifest_path.is_file() {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        if !valid_tag(&name) {
            return Err(OciError::Invalid {
                path: e.path(),
                reason: "an image folder name must be [A-Za-z0-9._-]".into(),
            });
        }
        let manifest = ImageManifest::load(&manifest_path)?;
        out.push(ImageDir {
            name,
            dir: e.path(),
            manifest_path,
            manifest,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// What an image is built from besides its folder.
#[derive(Debug, Clone, Copy)]
pub struct ImageInputs<'a> {
    /// The static `ros` binary (for `ros = true` files).
    pub ros: &'a Path,
    pub packages: &'a PackageSet,
    /// ros version: the tag.
    pub version: &'a str,
    /// mtime of every entry and the config's `created`.
    pub epoch: i64,
}

/// The inputs of one image as stamp lines (`key value`): a changed line rebuilds it.
pub fn inputs(image: &ImageDir, inp: &ImageInputs) -> Result<Vec<(String, String)>, OciError> {
    let m = &image.manifest;
    let mut out = vec![
        ("format".to_owned(), FORMAT.to_string()),
        (
            MANIFEST.to_owned(),
            sha256_file(&image.manifest_path).map_err(io_err(&image.manifest_path))?,
        ),
        ("version".to_owned(), inp.version.to_owned()),
        ("epoch".to_owned(), inp.epoch.to_string()),
    ];
    for p in m.packages() {
        let pin = inp
            .packages
            .pin(&p)
            .ok_or_else(|| OciError::UnknownPackage {
                manifest: image.manifest_path.clone(),
                package: p.clone(),
            })?;
        out.push((
            format!("package {p}"),
            format!("{} {} {}", pin.name, pin.version, pin.sha256),
        ));
    }
    for f in &m.files {
        match f.source() {
            Ok(FileSource::Repo(rel)) => {
                let p = image.dir.join(&rel);
                out.push((
                    format!("source {}", rel.display()),
                    sha256_file(&p).map_err(io_err(&p))?,
                ));
            }
            Ok(FileSource::Ros) => out.push((
                "ros".to_owned(),
                sha256_file(inp.ros).map_err(io_err(inp.ros))?,
            )),
            Ok(FileSource::Inline(_) | FileSource::Package { .. }) => {}
            Err(reason) => {
                return Err(OciError::Invalid {
                    path: image.manifest_path.clone(),
                    reason,
                })
            }
        }
    }
    Ok(out)
}

/// One entry of the layer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir(u32),
    File { data: Vec<u8>, mode: u32 },
    Link(String),
}

/// The layer's tree: relative path → entry; sorted, parents before children.
#[derive(Debug, Default)]
struct LayerTree {
    entries: BTreeMap<String, Entry>,
}

fn dir_mode(rel: &str) -> u32 {
    match rel {
        "tmp" | "var/tmp" => 0o1777,
        "root" => 0o700,
        _ => 0o755,
    }
}

impl LayerTree {
    fn parents(&mut self, rel: &str) {
        let mut acc = String::new();
        let parts: Vec<&str> = rel.split('/').collect();
        for p in &parts[..parts.len().saturating_sub(1)] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(p);
            self.entries
                .entry(acc.clone())
                .or_insert_with(|| Entry::Dir(dir_mode(&acc)));
        }
    }
    fn insert(&mut self, target: &str, entry: Entry) {
        let rel = target.trim_start_matches('/').to_owned();
        self.parents(&rel);
        self.entries.insert(rel, entry);
    }
}

/// What [`build`] or [`ensure`] did.
#[derive(Debug, Clone)]
pub struct ImageReport {
    pub outcome: Outcome,
    /// `docker.io/ros/console:0.1.0`
    pub reference: String,
    pub path: PathBuf,
    /// Size of the archive.
    pub size: u64,
    /// Present when it was built.
    pub details: Option<ImageDetails>,
}

/// About a freshly built archive.
#[derive(Debug, Clone)]
pub struct ImageDetails {
    /// Uncompressed size of the layer's files.
    pub unpacked: u64,
    /// Entries in the layer.
    pub entries: usize,
    pub manifest_digest: String,
}

fn read_package_file(
    image: &ImageDir,
    inp: &ImageInputs,
    package: &str,
    path: &str,
) -> Result<(Vec<u8>, u32), OciError> {
    let root = inp
        .packages
        .root(package)
        .ok_or_else(|| OciError::UnknownPackage {
            manifest: image.manifest_path.clone(),
            package: package.to_owned(),
        })?;
    let tree = MergedTree::new(vec![Layer {
        package: package.to_owned(),
        root: root.to_owned(),
    }]);
    let found = tree.resolve(path)?.ok_or_else(|| OciError::NotInPackage {
        manifest: image.manifest_path.clone(),
        package: package.to_owned(),
        path: path.to_owned(),
    })?;
    if elf::is_elf(&found.host)? {
        let info = elf::read_info(&found.host)?;
        if !info.is_static() {
            return Err(OciError::Dynamic {
                manifest: image.manifest_path.clone(),
                package: package.to_owned(),
                path: path.to_owned(),
                needed: info.needed,
            });
        }
    }
    let meta = fs::metadata(&found.host).map_err(io_err(&found.host))?;
    let data = fs::read(&found.host).map_err(io_err(&found.host))?;
    Ok((data, meta.permissions().mode() & 0o7777))
}

/// The layer's tree for `image`.
fn layer_tree(image: &ImageDir, inp: &ImageInputs) -> Result<LayerTree, OciError> {
    let m = &image.manifest;
    let mut tree = LayerTree::default();
    for d in &m.dirs {
        let rel = d.trim_start_matches('/');
        tree.insert(d, Entry::Dir(dir_mode(rel)));
    }
    if let Some(bb) = &m.busybox {
        let root = inp
            .packages
            .root(&bb.package)
            .ok_or_else(|| OciError::UnknownPackage {
                manifest: image.manifest_path.clone(),
                package: bb.package.clone(),
            })?;
        let busybox_err = |source| OciError::Busybox {
            manifest: image.manifest_path.clone(),
            source,
        };
        let bin = find_busybox(root).map_err(busybox_err)?;
        let applets = busybox_applets(&bin).map_err(busybox_err)?;
        let data = fs::read(&bin).map_err(io_err(&bin))?;
        let (dir, name) = bb.target.rsplit_once('/').unwrap_or(("", &bb.target));
        tree.insert(&bb.target, Entry::File { data, mode: 0o755 });
        for a in applets {
            if a != name {
                tree.insert(&format!("{dir}/{a}"), Entry::Link(name.to_owned()));
            }
        }
    }
    for f in &m.files {
        let source = f.source().map_err(|reason| OciError::Invalid {
            path: image.manifest_path.clone(),
            reason,
        })?;
        let (data, mode) = match source {
            FileSource::Repo(rel) => {
                let p = image.dir.join(rel);
                let meta = fs::metadata(&p).map_err(io_err(&p))?;
                (
                    fs::read(&p).map_err(io_err(&p))?,
                    meta.permissions().mode() & 0o7777,
                )
            }
            FileSource::Inline(text) => (text.into_bytes(), 0o644),
            FileSource::Package { package, path } => {
                read_package_file(image, inp, &package, &path)?
            }
            FileSource::Ros => (fs::read(inp.ros).map_err(io_err(inp.ros))?, 0o755),
        };
        let mode = f.mode.unwrap_or(mode);
        tree.insert(&f.target, Entry::File { data, mode });
    }
    Ok(tree)
}

fn header(kind: tar::EntryType, mode: u32, size: u64, epoch: i64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(u64::try_from(epoch).unwrap_or(0));
    h
}

/// The layer as an uncompressed tar.
fn layer_tar(tree: &LayerTree, epoch: i64) -> io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, entry) in &tree.entries {
        match entry {
            Entry::Dir(mode) => {
                let mut h = header(tar::EntryType::Directory, *mode, 0, epoch);
                b.append_data(&mut h, format!("{path}/"), io::empty())?;
            }
            Entry::File { data, mode } => {
                let mut h = header(tar::EntryType::Regular, *mode, data.len() as u64, epoch);
                b.append_data(&mut h, path, data.as_slice())?;
            }
            Entry::Link(target) => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0, epoch);
                b.append_link(&mut h, path, target)?;
            }
        }
    }
    b.into_inner()
}

fn gzip(data: &[u8]) -> io::Result<Vec<u8>> {
    // GzBuilder writes mtime 0 and no file name: the bytes depend on the data only.
    let mut enc = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::best());
    enc.write_all(data)?;
    enc.finish()
}

/// `1970-01-01T00:00:00Z` for `epoch` seconds (UTC, proleptic Gregorian).
pub fn rfc3339(epoch: i64) -> String {
    let days = epoch.div_euclid(86_400);
    let secs = epoch.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        (secs % 3600) / 60,
        secs % 60
    )
}

fn descriptor(media: &str, bytes: &[u8]) -> Value {
    json!({
        "mediaType": media,
        "digest": format!("sha256:{}", sha256_bytes(bytes)),
        "size": bytes.len(),
    })
}

/// The archive's files: (path in the tar, bytes), in archive order.
pub struct OciLayout {
    pub files: Vec<(String, Vec<u8>)>,
    pub reference: String,
    pub manifest_digest: String,
    pub unpacked: u64,
    pub entries: usize,
}

/// Builds the OCI image layout of `image` in memory.
pub fn layout(image: &ImageDir, inp: &ImageInputs) -> Result<OciLayout, OciError> {
    let m = &image.manifest;
    if !valid_tag(inp.version) {
        return Err(OciError::Invalid {
            path: image.manifest_path.clone(),
            reason: format!("version `{}` is not a valid image tag", inp.version),
        });
    }
    let tree = layer_tree(image, inp)?;
    let unpacked = tree
        .entries
        .values()
        .map(|e| match e {
            Entry::File { data, .. } => data.len() as u64,
            _ => 0,
        })
        .sum();
    let tar_err = |source| OciError::Tar {
        manifest: image.manifest_path.clone(),
        source,
    };
    let layer = layer_tar(&tree, inp.epoch).map_err(tar_err)?;
    let diff_id = format!("sha256:{}", sha256_bytes(&layer));
    let layer_gz = gzip(&layer).map_err(tar_err)?;
    let reference = reference(&m.name, inp.version);

    let mut labels = m.config.labels.clone();
    labels
        .entry("org.opencontainers.image.version".into())
        .or_insert_with(|| inp.version.to_owned());
    let mut cfg = serde_json::Map::new();
    if !m.config.entrypoint.is_empty() {
        cfg.insert("Entrypoint".into(), json!(m.config.entrypoint));
    }
    if !m.config.cmd.is_empty() {
        cfg.insert("Cmd".into(), json!(m.config.cmd));
    }
    if !m.config.env.is_empty() {
        cfg.insert("Env".into(), json!(m.config.env));
    }
    if let Some(w) = &m.config.working_dir {
        cfg.insert("WorkingDir".into(), json!(w));
    }
    if let Some(u) = &m.config.user {
        cfg.insert("User".into(), json!(u));
    }
    if let Some(s) = &m.config.stop_signal {
        cfg.insert("StopSignal".into(), json!(s));
    }
    cfg.insert("Labels".into(), json!(labels));
    let created = rfc3339(inp.epoch);
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": Value::Object(cfg),
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{
            "created": created,
            "created_by": format!("cargo xtask build (images/{}/{MANIFEST})", image.name),
        }],
    });
    let json_err = |e: serde_json::Error| OciError::Tar {
        manifest: image.manifest_path.clone(),
        source: io::Error::other(e),
    };
    let config_bytes = serde_json::to_vec(&config).map_err(json_err)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": descriptor(MEDIA_CONFIG, &config_bytes),
        "layers": [descriptor(MEDIA_LAYER_GZIP, &layer_gz)],
    });
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(json_err)?;
    let manifest_digest = format!("sha256:{}", sha256_bytes(&manifest_bytes));
    let mut manifest_desc = descriptor(MEDIA_MANIFEST, &manifest_bytes);
    manifest_desc["platform"] = json!({ "architecture": "amd64", "os": "linux" });
    manifest_desc["annotations"] = json!({
        ANNOTATION_IMAGE_NAME: reference,
        ANNOTATION_REF_NAME: inp.version,
    });
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [manifest_desc],
    });
    let index_bytes = serde_json::to_vec(&index).map_err(json_err)?;

    let mut blobs: Vec<(String, Vec<u8>)> = [layer_gz, config_bytes, manifest_bytes]
        .into_iter()
        .map(|b| (format!("blobs/sha256/{}", sha256_bytes(&b)), b))
        .collect();
    blobs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut files = vec![
        (
            "oci-layout".to_owned(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".to_owned(), index_bytes),
    ];
    files.extend(blobs);
    Ok(OciLayout {
        files,
        reference,
        manifest_digest,
        unpacked,
        entries: tree.entries.len(),
    })
}

/// The layout as a tar archive (directories `blobs/` and `blobs/sha256/` included).
pub fn archive_bytes(layout: &OciLayout, epoch: i64) -> io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs_done = false;
    for (path, data) in &layout.files {
        if path.starts_with("blobs/") && !dirs_done {
            for d in ["blobs/", "blobs/sha256/"] {
                let mut h = header(tar::EntryType::Directory, 0o755, 0, epoch);
                b.append_data(&mut h, d, io::empty())?;
            }
            dirs_done = true;
        }
        let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64, epoch);
        b.append_data(&mut h, path, data.as_slice())?;
    }
    b.into_inner()
}

/// Builds `image` into the archive `out` (written atomically).
pub fn build(image: &ImageDir, inp: &ImageInputs, out: &Path) -> Result<ImageReport, OciError> {
    let l = layout(image, inp)?;
    let bytes = archive_bytes(&l, inp.epoch).map_err(|source| OciError::Tar {
        manifest: image.manifest_path.clone(),
        source,
    })?;
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    write_atomic(out, &bytes).map_err(io_err(out))?;
    fs::set_permissions(out, fs::Permissions::from_mode(0o644)).map_err(io_err(out))?;
    Ok(ImageReport {
        outcome: Outcome::Built,
        reference: l.reference,
        path: out.to_owned(),
        size: bytes.len() as u64,
        details: Some(ImageDetails {
            unpacked: l.unpacked,
            entries: l.entries,
            manifest_digest: l.manifest_digest,
        }),
    })
}

/// Builds `build/out/images/<name>.oci.tar` unless its stamp says the inputs (see [`inputs`],
/// plus `tool`, the hash of the xtask doing it) are unchanged.
pub fn ensure(
    layout: &Layout,
    image: &ImageDir,
    inp: &ImageInputs,
    tool: &str,
) -> Result<ImageReport, OciError> {
    let file = format!("{}.oci.tar", image.name);
    let out = layout.images_out().join(&file);
    let stamp = Stamp::new(layout, &format!("images/{file}"));
    let mut pairs = inputs(image, inp)?;
    pairs.push(("xtask".into(), tool.to_owned()));
    let pairs: Vec<(&str, String)> = pairs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let text = inputs_text(&pairs);
    if stamp.up_to_date(&out, &text) {
        let size = fs::metadata(&out).map_err(io_err(&out))?.len();
        return Ok(ImageReport {
            outcome: Outcome::UpToDate,
            reference: reference(&image.manifest.name, inp.version),
            path: out,
            size,
            details: None,
        });
    }
    stamp.clear()?;
    let report = build(image, inp, &out)?;
    stamp.write(&text)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn image(dir: &Path, toml_text: &str) -> ImageDir {
        let d = dir.join("img");
        fs::create_dir_all(&d).unwrap();
        let p = d.join(MANIFEST);
        fs::write(&p, toml_text).unwrap();
        ImageDir {
            name: "img".into(),
            dir: d,
            manifest: ImageManifest::load(&p).unwrap(),
            manifest_path: p,
        }
    }

    const SIMPLE: &str = r#"
name = "ros/test"
dirs = ["/tmp", "/var/log"]

[config]
entrypoint = ["/bin/entry"]
env = ["PATH=/bin", "A=b"]
labels = { "org.opencontainers.image.title" = "test" }

[[file]]
target = "/bin/entry"
source = "entry.sh"

[[file]]
target = "/etc/passwd"
content = "root:x:0:0:root:/root:/bin/sh\n"

[[file]]
target = "/usr/bin/ros"
ros = true
"#;

    fn setup(dir: &Path) -> (ImageDir, PathBuf, PackageSet) {
        let img = image(dir, SIMPLE);
        let entry = img.dir.join("entry.sh");
        fs::write(&entry, "#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(&entry, fs::Permissions::from_mode(0o755)).unwrap();
        let ros = dir.join("ros");
        fs::write(&ros, b"fake ros").unwrap();
        (img, ros, PackageSet::default())
    }

    fn untar(bytes: &[u8]) -> Vec<(String, tar::EntryType, u32, u64, Vec<u8>)> {
        let mut a = tar::Archive::new(bytes);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let h = e.header().clone();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.entry_type(),
                    h.mode().unwrap(),
                    h.mtime().unwrap(),
                    data,
                )
            })
            .collect()
    }

    #[test]
    fn archive_is_a_valid_reproducible_oci_layout() {
        let dir = tempfile::tempdir().unwrap();
        let (img, ros, pkgs) = setup(dir.path());
        let inp = ImageInputs {
            ros: &ros,
            packages: &pkgs,
            version: "0.1.0",
            epoch: 1_700_000_000,
        };
        let a = build(&img, &inp, &dir.path().join("a.tar")).unwrap();
        let b = build(&img, &inp, &dir.path().join("b.tar")).unwrap();
        let bytes = fs::read(&a.path).unwrap();
        assert_eq!(bytes, fs::read(&b.path).unwrap(), "reproducible");
        assert_eq!(a.reference, "docker.io/ros/test:0.1.0");

        let files = untar(&bytes);
        let names: Vec<&str> = files.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(
            &names[..4],
            ["oci-layout", "index.json", "blobs/", "blobs/sha256/"]
        );
        let get = |n: &str| -> Vec<u8> { files.iter().find(|f| f.0 == n).unwrap().4.clone() };
        let blob = |d: &Value| {
            get(&format!(
                "blobs/sha256/{}",
                d["digest"].as_str().unwrap()[7..].to_owned()
            ))
        };
        // Every blob is named by its digest.
        for f in files
            .iter()
            .filter(|f| f.0.starts_with("blobs/sha256/") && !f.4.is_empty())
        {
            assert_eq!(format!("blobs/sha256/{}", sha256_bytes(&f.4)), f.0);
            assert_eq!(f.3, 1_700_000_000);
        }
        let index: Value = serde_json::from_slice(&get("index.json")).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(
            m["annotations"][ANNOTATION_IMAGE_NAME],
            "docker.io/ros/test:0.1.0"
        );
        assert_eq!(m["annotations"][ANNOTATION_REF_NAME], "0.1.0");
        assert_eq!(
            format!("{}", m["digest"].as_str().unwrap()),
            a.details.as_ref().unwrap().manifest_digest
        );
        let manifest: Value = serde_json::from_slice(&blob(m)).unwrap();
        let config: Value = serde_json::from_slice(&blob(&manifest["config"])).unwrap();
        assert_eq!(config["config"]["Entrypoint"][0], "/bin/entry");
        assert_eq!(config["config"]["Env"][1], "A=b");
        assert_eq!(
            config["config"]["Labels"]["org.opencontainers.image.version"],
            "0.1.0"
        );
        assert_eq!(config["created"], "2023-11-14T22:13:20Z");
        let gz = blob(&manifest["layers"][0]);
        let mut layer = Vec::new();
        flate2::read::GzDecoder::new(gz.as_slice())
            .read_to_end(&mut layer)
            .unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            format!("sha256:{}", sha256_bytes(&layer))
        );
        let entries = untar(&layer);
        let listing: Vec<(String, u32)> = entries.iter().map(|e| (e.0.clone(), e.2)).collect();
        assert_eq!(
            listing,
            vec![
                ("bin/".into(), 0o755),
                ("bin/entry".into(), 0o755),
                ("etc/".into(), 0o755),
                ("etc/passwd".into(), 0o644),
                ("tmp/".into(), 0o1777),
                ("usr/".into(), 0o755),
                ("usr/bin/".into(), 0o755),
                ("usr/bin/ros".into(), 0o755),
                ("var/".into(), 0o755),
                ("var/log/".into(), 0o755),
            ]
        );
        assert_eq!(entries[7].4, b"fake ros");
    }

    #[test]
    fn a_changed_input_changes_the_stamp_lines() {
        let dir = tempfile::tempdir().unwrap();
        let (img, ros, pkgs) = setup(dir.path());
        let inp = ImageInputs {
            ros: &ros,
            packages: &pkgs,
            version: "0.1.0",
            epoch: 0,
        };
        let before = inputs(&img, &inp).unwrap();
        fs::write(&ros, b"other ros").unwrap();
        let after = inputs(&img, &inp).unwrap();
        assert_ne!(before, after);
        assert!(after.iter().any(|(k, _)| k == "source entry.sh"));
    }

    #[test]
    fn manifest_errors_name_the_file_and_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(MANIFEST);
        let bad = |text: &str| ImageManifest::parse(text, &p).unwrap_err().to_string();
        let base = "name = \"ros/x\"\n[config]\n";
        let e = bad(&format!("{base}[[file]]\ntarget = \"/a\"\n"));
        assert!(e.contains("file `/a`: needs one of"), "{e}");
        let e = bad(&format!(
            "{base}[[file]]\ntarget = \"/a\"\nros = true\ncontent = \"x\"\n"
        ));
        assert!(e.contains("more than one"), "{e}");
        let e = bad(&format!("{base}[[file]]\ntarget = \"a\"\nros = true\n"));
        assert!(e.contains("absolute"), "{e}");
        let e = bad(&format!(
            "{base}[[file]]\ntarget = \"/a\"\nsource = \"../x\"\n"
        ));
        assert!(e.contains("inside the image folder"), "{e}");
        let e = bad("name = \"Ros/X\"\n[config]\n");
        assert!(e.contains("Ros/X"), "{e}");
        let e = bad("name = \"ros/x\"\n[config]\nenv = [\"NOEQUALS\"]\n");
        assert!(e.contains("NOEQUALS"), "{e}");
        let e = bad("name = \"ros/x\"\n[config]\nentrypoint = \"/x\"\n");
        assert!(e.starts_with(&p.display().to_string()), "{e}");
        let e = bad("name = \"ros/x\"\nunknown = 1\n[config]\n");
        assert!(e.contains("unknown"), "{e}");
    }

    #[test]
    fn unknown_package_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(
            dir.path(),
            "name = \"ros/x\"\n[config]\n[[file]]\ntarget = \"/x\"\npackage = \"nope\"\npath = \"/usr/bin/x\"\n",
        );
        let ros = dir.path().join("ros");
        fs::write(&ros, b"r").unwrap();
        let pkgs = PackageSet::default();
        let inp = ImageInputs {
            ros: &ros,
            packages: &pkgs,
            version: "1",
            epoch: 0,
        };
        let e = layout(&img, &inp).err().unwrap().to_string();
        assert!(
            e.contains("package nope is not in images/packages.toml"),
            "{e}"
        );
    }

    #[test]
    fn references_are_normalised_like_containerd() {
        assert_eq!(
            reference("ros/console", "0.1.0"),
            "docker.io/ros/console:0.1.0"
        );
        assert_eq!(reference("busybox", "1"), "docker.io/library/busybox:1");
        assert_eq!(reference("ghcr.io/a/b", "1"), "ghcr.io/a/b:1");
        assert_eq!(reference("localhost/a", "1"), "localhost/a:1");
        assert!(valid_tag("0.1.0") && !valid_tag("-x") && !valid_tag(""));
    }

    #[test]
    fn rfc3339_matches_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
