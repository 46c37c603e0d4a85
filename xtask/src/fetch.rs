//! Getting verified .debs: resolving a manifest entry to a pinned or current package, the download
//! cache keyed by sha256 (outside the clone), stale-pin handling, and extracting each .deb once.
//!
//! Owns the cache directory (`<cache>/debs/<sha256>.deb`), the extract directory
//! (`<build>/extract/<sha256>/`) and its lock file (`<build>/extract.lock`, held by
//! [`fetch_all`] so parallel builds and tests never extract the same package at once). It must
//! not assemble anything, write the lock, or print: it reports what it does through [`Event`]s
//! and leaves the wording on screen to the caller.

use crate::apt::{follow_depends, AptEnv, AptError, IndexEntry};
use crate::layout::Layout;
use crate::lock::{Lock, LockError, LockedPackage, Manifest, PackageSpec};
use crate::util::{describe, human_size, is_sha256, output_tail, sha256_file};
use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What went wrong getting a package; each names the package, the path or the command.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{package}: cannot read the package index: {source}")]
    Index { package: String, source: AptError },
    #[error("{package} is not in the package index")]
    NotInIndex { package: String },
    #[error("{package}: none of its dependencies ({depends}) starts with `{prefix}`")]
    NoMatchingDepends {
        package: String,
        prefix: String,
        depends: String,
    },
    #[error("{package} {version}: download failed: {source}")]
    Download {
        package: String,
        version: String,
        source: AptError,
    },
    #[error(
        "{package} {version}: sha256 mismatch: expected {expected}, the download has {actual}"
    )]
    HashMismatch {
        package: String,
        version: String,
        expected: String,
        actual: String,
    },
    #[error("{package}: `{sha256}` is not a sha256")]
    BadHash { package: String, sha256: String },
    #[error("no download cache directory: set ROS_CACHE_DIR or HOME")]
    NoCacheDir,
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{package}: `{command}` failed: {detail}")]
    Extract {
        package: String,
        command: String,
        detail: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FetchError {
    let path = path.to_owned();
    move |source| FetchError::Io { path, source }
}

/// Something the fetch layer did that a person watching the build wants to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The package index was (re)downloaded.
    IndexUpdated,
    /// A verified .deb was taken from the cache.
    FromCache {
        package: String,
        version: String,
        size: u64,
    },
    /// A cached .deb did not match the hash it is filed under; it was deleted.
    CorruptCache {
        package: String,
        version: String,
        expected: String,
        actual: String,
    },
    /// The pinned version is gone from the index; `new` is used instead.
    Stale {
        old: LockedPackage,
        new: LockedPackage,
    },
    /// The manifest names a package the lock does not pin yet; the current version is used.
    NotLocked { new: LockedPackage },
    /// A .deb was downloaded and verified.
    Downloaded {
        package: String,
        version: String,
        size: u64,
    },
    /// A .deb was extracted.
    Extracted { package: String, version: String },
    /// The pinned package was extracted completely before; nothing to do.
    UpToDate { package: String, version: String },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::IndexUpdated => write!(f, "updated the package index (Debian trixie)"),
            Event::FromCache { package, version, size } => {
                write!(f, "{package} {version}: from cache ({})", human_size(*size))
            }
            Event::CorruptCache {
                package,
                version,
                expected,
                actual,
            } => write!(
                f,
                "warning: cached {package} {version} (sha256 {expected}) is corrupt: got {actual}; fetching again"
            ),
            Event::Stale { old, new } => {
                let via = match &new.from {
                    Some(from) => format!(" (via {from})"),
                    None => String::new(),
                };
                if old.name == new.name {
                    write!(
                        f,
                        "warning: lock is stale: {} {} → {}{via} (run `cargo xtask relock`)",
                        old.name, old.version, new.version
                    )
                } else {
                    write!(
                        f,
                        "warning: lock is stale: {} {} → {} {}{via} (run `cargo xtask relock`)",
                        old.name, old.version, new.name, new.version
                    )
                }
            }
            Event::NotLocked { new } => write!(
                f,
                "warning: {} is not in the lock; using {} {} (run `cargo xtask relock`)",
                new.manifest_name(),
                new.name,
                new.version
            ),
            Event::Downloaded { package, version, size } => {
                write!(f, "{package} {version}: fetched ({})", human_size(*size))
            }
            Event::Extracted { package, version } => write!(f, "{package} {version}: extracted"),
            Event::UpToDate { package, version } => {
                write!(f, "{package} {version}: extracted, up to date")
            }
        }
    }
}

/// The signed package index, as far as fetching needs it. [`AptEnv`] is the real one; tests use
/// a fake.
pub trait PackageIndex {
    /// Refreshes the index when it is missing or old, or always with `force`, but at most once
    /// per run. Returns whether it refreshed.
    fn refresh(&mut self, force: bool) -> Result<bool, AptError>;
    /// Every version of `name` the index has.
    fn versions(&mut self, name: &str) -> Result<Vec<IndexEntry>, AptError>;
    /// The current version of `name`.
    fn candidate(&mut self, name: &str) -> Result<Option<IndexEntry>, AptError>;
    /// Downloads `name` `version` into the empty directory `dir`; returns the file.
    fn download(&mut self, name: &str, version: &str, dir: &Path) -> Result<PathBuf, AptError>;
}

impl PackageIndex for AptEnv {
    fn refresh(&mut self, force: bool) -> Result<bool, AptError> {
        self.update(force)
    }
    fn versions(&mut self, name: &str) -> Result<Vec<IndexEntry>, AptError> {
        self.show(name)
    }
    fn candidate(&mut self, name: &str) -> Result<Option<IndexEntry>, AptError> {
        AptEnv::candidate(self, name)
    }
    fn download(&mut self, name: &str, version: &str, dir: &Path) -> Result<PathBuf, AptError> {
        AptEnv::download(self, name, version, dir)
    }
}

/// The download cache: `<root>/debs/<sha256>.deb`, every file named by its own hash.
#[derive(Debug, Clone)]
pub struct DebCache {
    dir: PathBuf,
}

impl DebCache {
    /// A cache under `root` (the files go to `root/debs/`).
    pub fn new(root: impl AsRef<Path>) -> Self {
        DebCache {
            dir: root.as_ref().join("debs"),
        }
    }

    /// `${ROS_CACHE_DIR:-$HOME/.cache/ros}`.
    pub fn from_env() -> Result<Self, FetchError> {
        let root = match std::env::var_os("ROS_CACHE_DIR").filter(|v| !v.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => {
                let home = std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .ok_or(FetchError::NoCacheDir)?;
                PathBuf::from(home).join(".cache/ros")
            }
        };
        Ok(Self::new(root))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the .deb with this hash lives (whether or not it is there).
    pub fn path_for(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.deb"))
    }

    /// The cached .deb for `pkg` if there is one and its contents match its name. A file that
    /// does not match is reported ([`Event::CorruptCache`]) and deleted.
    pub fn lookup(
        &self,
        pkg: &LockedPackage,
        report: &mut dyn FnMut(&Event),
    ) -> Result<Option<PathBuf>, FetchError> {
        if !is_sha256(&pkg.sha256) {
            return Err(FetchError::BadHash {
                package: pkg.name.clone(),
                sha256: pkg.sha256.clone(),
            });
        }
        let path = self.path_for(&pkg.sha256);
        if !path.exists() {
            return Ok(None);
        }
        let actual = sha256_file(&path).map_err(io_err(&path))?;
        if actual == pkg.sha256 {
            return Ok(Some(path));
        }
        report(&Event::CorruptCache {
            package: pkg.name.clone(),
            version: pkg.version.clone(),
            expected: pkg.sha256.clone(),
            actual,
        });
        fs::remove_file(&path).map_err(io_err(&path))?;
        Ok(None)
    }
}

/// A verified .deb in the cache and the pin it satisfies.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The package actually used: the lock's pin, or the current version when the pin was stale.
    pub package: LockedPackage,
    pub path: PathBuf,
    /// Whether the pin was stale (or missing) and the current version was used instead.
    pub stale: bool,
}

fn pin_from(entry: &IndexEntry, from: Option<&str>) -> LockedPackage {
    LockedPackage {
        name: entry.package.clone(),
        version: entry.version.clone(),
        sha256: entry.sha256.clone(),
        size: entry.size,
        filename: entry.filename.clone(),
        from: from.map(str::to_owned),
    }
}

fn index_err(package: &str) -> impl FnOnce(AptError) -> FetchError {
    let package = package.to_owned();
    move |source| FetchError::Index { package, source }
}

/// The current version of manifest entry `name`, following `follow_depends` from a metapackage
/// to the package it depends on (recorded as `from`). The index must already be refreshed.
pub fn resolve_current(
    index: &mut dyn PackageIndex,
    name: &str,
    spec: &PackageSpec,
) -> Result<LockedPackage, FetchError> {
    let entry = index
        .candidate(name)
        .map_err(index_err(name))?
        .ok_or_else(|| FetchError::NotInIndex {
            package: name.to_owned(),
        })?;
    let Some(prefix) = &spec.follow_depends else {
        return Ok(pin_from(&entry, None));
    };
    let depends = entry.depends.clone().unwrap_or_default();
    let real = follow_depends(&depends, prefix).ok_or_else(|| FetchError::NoMatchingDepends {
        package: name.to_owned(),
        prefix: prefix.clone(),
        depends: depends.clone(),
    })?;
    let real_entry = index
        .candidate(&real)
        .map_err(index_err(&real))?
        .ok_or(FetchError::NotInIndex { package: real })?;
    Ok(pin_from(&real_entry, Some(name)))
}

/// The stale-pin decision: the index entry for the pinned version, or `None` when the archive no
/// longer has it.
pub fn find_pinned<'a>(pin: &LockedPackage, versions: &'a [IndexEntry]) -> Option<&'a IndexEntry> {
    versions
        .iter()
        .find(|e| e.package == pin.name && e.version == pin.version)
}

/// A verified .deb for manifest entry `name` (`spec`), pinned by `locked` when the lock has it.
///
/// Order: the cache (verified by hash); else the index (refreshed when old, or once more when the
/// pin is not found); a pin that is gone is replaced by the current version ([`Event::Stale`]),
/// verified against the index's sha256; the download is checked against the expected hash and
/// only then filed in the cache.
pub fn fetch(
    index: &mut dyn PackageIndex,
    cache: &DebCache,
    name: &str,
    spec: &PackageSpec,
    locked: Option<&LockedPackage>,
    report: &mut dyn FnMut(&Event),
) -> Result<Fetched, FetchError> {
    let mut stale = false;
    let mut target = match locked {
        Some(pin) => pin.clone(),
        None => {
            refresh(index, name, false, report)?;
            let new = resolve_current(index, name, spec)?;
            report(&Event::NotLocked { new: new.clone() });
            stale = true;
            new
        }
    };
    if let Some(path) = cache.lookup(&target, report)? {
        report(&Event::FromCache {
            package: target.name.clone(),
            version: target.version.clone(),
            size: target.size,
        });
        return Ok(Fetched {
            package: target,
            path,
            stale,
        });
    }

    let refreshed = refresh(index, &target.name, false, report)?;
    let mut versions = index
        .versions(&target.name)
        .map_err(index_err(&target.name))?;
    if find_pinned(&target, &versions).is_none()
        && !refreshed
        && refresh(index, &target.name, true, report)?
    {
        versions = index
            .versions(&target.name)
            .map_err(index_err(&target.name))?;
    }
    if find_pinned(&target, &versions).is_none() {
        let new = resolve_current(index, name, spec)?;
        report(&Event::Stale {
            old: target.clone(),
            new: new.clone(),
        });
        target = new;
        stale = true;
        if let Some(path) = cache.lookup(&target, report)? {
            report(&Event::FromCache {
                package: target.name.clone(),
                version: target.version.clone(),
                size: target.size,
            });
            return Ok(Fetched {
                package: target,
                path,
                stale,
            });
        }
    }

    let path = download_verified(index, cache, &target)?;
    report(&Event::Downloaded {
        package: target.name.clone(),
        version: target.version.clone(),
        size: target.size,
    });
    Ok(Fetched {
        package: target,
        path,
        stale,
    })
}

fn refresh(
    index: &mut dyn PackageIndex,
    package: &str,
    force: bool,
    report: &mut dyn FnMut(&Event),
) -> Result<bool, FetchError> {
    let updated = index.refresh(force).map_err(index_err(package))?;
    if updated {
        report(&Event::IndexUpdated);
    }
    Ok(updated)
}

/// Downloads `pin` into a private temporary directory inside the cache, checks its sha256 against
/// the pin, and files it as `<sha256>.deb`.
fn download_verified(
    index: &mut dyn PackageIndex,
    cache: &DebCache,
    pin: &LockedPackage,
) -> Result<PathBuf, FetchError> {
    fs::create_dir_all(cache.dir()).map_err(io_err(cache.dir()))?;
    let tmp = cache.dir().join(format!(
        "tmp-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    let result = (|| {
        let file = index
            .download(&pin.name, &pin.version, &tmp)
            .map_err(|source| FetchError::Download {
                package: pin.name.clone(),
                version: pin.version.clone(),
                source,
            })?;
        let actual = sha256_file(&file).map_err(io_err(&file))?;
        if actual != pin.sha256 {
            return Err(FetchError::HashMismatch {
                package: pin.name.clone(),
                version: pin.version.clone(),
                expected: pin.sha256.clone(),
                actual,
            });
        }
        let dest = cache.path_for(&actual);
        fs::rename(&file, &dest).map_err(io_err(&dest))?;
        Ok(dest)
    })();
    let _ = fs::remove_dir_all(&tmp);
    result
}

/// The extracted tree of the package with this hash, if it was extracted completely before.
pub fn extracted(extract_root: &Path, sha256: &str) -> Option<PathBuf> {
    let dir = extract_root.join(sha256);
    let done = extract_root.join(format!("{sha256}.done"));
    (dir.is_dir() && done.is_file()).then_some(dir)
}

/// Extracts `deb` (verified, of `pkg`) into `<extract_root>/<sha256>/` with `dpkg-deb -x`, unless
/// that was done completely before; a `<sha256>.done` stamp marks completion.
pub fn extract(
    extract_root: &Path,
    pkg: &LockedPackage,
    deb: &Path,
    report: &mut dyn FnMut(&Event),
) -> Result<PathBuf, FetchError> {
    if let Some(dir) = extracted(extract_root, &pkg.sha256) {
        return Ok(dir);
    }
    let dir = extract_root.join(&pkg.sha256);
    let done = extract_root.join(format!("{}.done", pkg.sha256));
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
    }
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let mut cmd = Command::new("dpkg-deb");
    cmd.arg("-x").arg(deb).arg(&dir);
    let command = describe(&cmd);
    let fail = |detail: String| FetchError::Extract {
        package: pkg.name.clone(),
        command: command.clone(),
        detail,
    };
    let output = cmd
        .output()
        .map_err(|e| fail(format!("{e} (is dpkg installed?)")))?;
    if !output.status.success() {
        return Err(fail(format!("{}: {}", output.status, output_tail(&output))));
    }
    fs::write(&done, format!("{} {}\n", pkg.name, pkg.version)).map_err(io_err(&done))?;
    report(&Event::Extracted {
        package: pkg.name.clone(),
        version: pkg.version.clone(),
    });
    Ok(dir)
}

/// Every package of a manifest, fetched, verified and extracted: manifest name → (the pin
/// actually used, its extracted tree).
#[derive(Debug, Clone, Default)]
pub struct PackageSet {
    pub packages: BTreeMap<String, (LockedPackage, PathBuf)>,
}

impl PackageSet {
    /// The extracted tree of manifest entry `name`.
    pub fn root(&self, name: &str) -> Option<&Path> {
        self.packages.get(name).map(|(_, p)| p.as_path())
    }
    /// The pin used for manifest entry `name`.
    pub fn pin(&self, name: &str) -> Option<&LockedPackage> {
        self.packages.get(name).map(|(p, _)| p)
    }
}

/// An exclusive lock on a file (released on drop), serialising fetch/extract and staging
/// between processes that share a build directory (parallel tests, a build next to tests).
#[derive(Debug)]
pub struct DirLock {
    _lock: nix::fcntl::Flock<fs::File>,
}

impl DirLock {
    /// Blocks until `path` (created if missing) is locked by this process.
    pub fn acquire(path: &Path) -> Result<Self, FetchError> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| io_err(path)(io::Error::from(e)))?;
        Ok(DirLock { _lock: lock })
    }
}

/// Why [`fetch_pinned`] failed: reading the manifest or lock, or fetching.
#[derive(Debug, thiserror::Error)]
pub enum PinnedError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
}

/// What `cargo xtask build` fetches for the checkout at `layout`: its manifest and lock, the
/// shared download cache (`ROS_CACHE_DIR`), its isolated apt state and extract directory.
/// Returns the manifest with the fetched set, for the build and for tests that need packages.
pub fn fetch_pinned(
    layout: &Layout,
    report: &mut dyn FnMut(&Event),
) -> Result<(Manifest, PackageSet), PinnedError> {
    let manifest = Manifest::load(&layout.manifest())?;
    let lock = Lock::load_or_empty(&layout.lock())?;
    let cache = DebCache::from_env()?;
    let mut apt = AptEnv::new(layout.apt());
    let set = fetch_all(
        &mut apt,
        &cache,
        &layout.extract(),
        &manifest,
        &lock,
        report,
    )?;
    Ok((manifest, set))
}

/// Fetches (or takes from the cache) and extracts every package of `manifest` as pinned by
/// `lock`, under `<extract_root>/`; holds `<extract_root>.lock` meanwhile so concurrent builds
/// and tests never extract the same package at once.
pub fn fetch_all(
    index: &mut dyn PackageIndex,
    cache: &DebCache,
    extract_root: &Path,
    manifest: &Manifest,
    lock: &Lock,
    report: &mut dyn FnMut(&Event),
) -> Result<PackageSet, FetchError> {
    let mut lock_path = extract_root.as_os_str().to_owned();
    lock_path.push(".lock");
    let _guard = DirLock::acquire(Path::new(&lock_path))?;
    let mut set = PackageSet::default();
    for (name, spec) in &manifest.packages {
        let locked = lock.entry_for(name);
        if let Some(pin) = locked {
            if let Some(dir) = extracted(extract_root, &pin.sha256) {
                report(&Event::UpToDate {
                    package: pin.name.clone(),
                    version: pin.version.clone(),
                });
                set.packages.insert(name.clone(), (pin.clone(), dir));
                continue;
            }
        }
        let fetched = fetch(index, cache, name, spec, locked, report)?;
        let dir = extract(extract_root, &fetched.package, &fetched.path, report)?;
        set.packages.insert(name.clone(), (fetched.package, dir));
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::sha256_bytes;

    /// An index in memory: package name → (entries, bytes of each version's .deb).
    #[derive(Default)]
    struct FakeIndex {
        entries: BTreeMap<String, Vec<(IndexEntry, Vec<u8>)>>,
        refreshes: usize,
        downloads: Vec<String>,
        /// Bytes served instead of the real ones (a mirror or lock gone wrong).
        serve_instead: Option<Vec<u8>>,
    }

    impl FakeIndex {
        fn add(
            &mut self,
            name: &str,
            version: &str,
            body: &[u8],
            depends: Option<&str>,
        ) -> IndexEntry {
            let entry = IndexEntry {
                package: name.into(),
                version: version.into(),
                sha256: sha256_bytes(body),
                size: body.len() as u64,
                filename: format!("pool/main/{name}_{version}_amd64.deb"),
                depends: depends.map(str::to_owned),
            };
            self.entries
                .entry(name.into())
                .or_default()
                .push((entry.clone(), body.to_vec()));
            entry
        }
    }

    impl PackageIndex for FakeIndex {
        fn refresh(&mut self, force: bool) -> Result<bool, AptError> {
            if self.refreshes > 0 || !force {
                return Ok(false);
            }
            self.refreshes += 1;
            Ok(true)
        }
        fn versions(&mut self, name: &str) -> Result<Vec<IndexEntry>, AptError> {
            Ok(self
                .entries
                .get(name)
                .map(|v| v.iter().map(|(e, _)| e.clone()).collect())
                .unwrap_or_default())
        }
        fn candidate(&mut self, name: &str) -> Result<Option<IndexEntry>, AptError> {
            Ok(self
                .entries
                .get(name)
                .and_then(|v| v.last())
                .map(|(e, _)| e.clone()))
        }
        fn download(&mut self, name: &str, version: &str, dir: &Path) -> Result<PathBuf, AptError> {
            self.downloads.push(format!("{name}={version}"));
            let (_, body) = self.entries[name]
                .iter()
                .find(|(e, _)| e.version == version)
                .expect("download of a version the index has");
            let path = dir.join(format!("{name}_{version}_amd64.deb"));
            let body = self.serve_instead.clone().unwrap_or_else(|| body.clone());
            fs::write(&path, body).unwrap();
            Ok(path)
        }
    }

    fn pin(e: &IndexEntry, from: Option<&str>) -> LockedPackage {
        pin_from(e, from)
    }

    fn run(
        index: &mut FakeIndex,
        cache: &DebCache,
        name: &str,
        spec: &PackageSpec,
        locked: Option<&LockedPackage>,
    ) -> (Result<Fetched, FetchError>, Vec<Event>) {
        let mut events = Vec::new();
        let r = fetch(index, cache, name, spec, locked, &mut |e| {
            events.push(e.clone())
        });
        (r, events)
    }

    #[test]
    fn cache_hit_is_verified_and_needs_no_index() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DebCache::new(dir.path());
        let mut index = FakeIndex::default();
        let e = index.add("busybox-static", "1:1.37.0-6", b"busybox deb", None);
        let p = pin(&e, None);
        let spec = PackageSpec::default();

        let (r, events) = run(&mut index, &cache, "busybox-static", &spec, Some(&p));
        let f = r.unwrap();
        assert_eq!(f.path, cache.path_for(&e.sha256));
        assert!(!f.stale);
        assert!(
            matches!(events.last(), Some(Event::Downloaded { .. })),
            "{events:?}"
        );

        let (r, events) = run(&mut index, &cache, "busybox-static", &spec, Some(&p));
        r.unwrap();
        assert_eq!(
            index.downloads.len(),
            1,
            "second fetch comes from the cache"
        );
        assert_eq!(
            events,
            vec![Event::FromCache {
                package: "busybox-static".into(),
                version: "1:1.37.0-6".into(),
                size: 11
            }]
        );
    }

    #[test]
    fn corrupt_cache_is_refused_by_name_and_fetched_again() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DebCache::new(dir.path());
        let mut index = FakeIndex::default();
        let e = index.add("busybox-static", "1:1.37.0-6", b"busybox deb", None);
        let p = pin(&e, None);
        fs::create_dir_all(cache.dir()).unwrap();
        fs::write(cache.path_for(&e.sha256), b"bit rot").unwrap();

        let mut events = Vec::new();
        let found = cache.lookup(&p, &mut |ev| events.push(ev.clone())).unwrap();
        assert!(found.is_none());
        assert!(!cache.path_for(&e.sha256).exists(), "corrupt file deleted");
        let msg = events[0].to_string();
        assert!(
            msg.contains("cached busybox-static 1:1.37.0-6")
                && msg.contains(&e.sha256)
                && msg.contains(&sha256_bytes(b"bit rot"))
                && msg.contains("is corrupt")
                && msg.contains("fetching again"),
            "{msg}"
        );

        fs::write(cache.path_for(&e.sha256), b"bit rot").unwrap();
        let (r, events) = run(
            &mut index,
            &cache,
            "busybox-static",
            &PackageSpec::default(),
            Some(&p),
        );
        let f = r.unwrap();
        assert!(
            matches!(events[0], Event::CorruptCache { .. }),
            "{events:?}"
        );
        assert!(
            matches!(events.last(), Some(Event::Downloaded { .. })),
            "{events:?}"
        );
        assert_eq!(sha256_file(&f.path).unwrap(), e.sha256);
    }

    #[test]
    fn pinned_version_is_kept_while_the_index_has_it() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DebCache::new(dir.path());
        let mut index = FakeIndex::default();
        let old = index.add("runc", "1.0", b"old", None);
        index.add("runc", "1.1", b"new", None);
        let (r, events) = run(
            &mut index,
            &cache,
            "runc",
            &PackageSpec::default(),
            Some(&pin(&old, None)),
        );
        let f = r.unwrap();
        assert_eq!(f.package.version, "1.0");
        assert!(!f.stale);
        assert!(!events.iter().any(|e| matches!(e, Event::Stale { .. })));
        assert_eq!(index.downloads, vec!["runc=1.0"]);
    }

    #[test]
    fn stale_pin_refreshes_once_then_uses_current_version() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DebCache::new(dir.path());
        let mut index = FakeIndex::default();
        let current = index.add("busybox-static", "1:1.37.0-7", b"new busybox", None);
        let gone = LockedPackage {
            version: "1:1.37.0-6".into(),
            sha256: sha256_bytes(b"old busybox"),
            ..pin(&current, None)
        };
        let (r, events) = run(
            &mut index,
            &cache,
            "busybox-static",
            &PackageSpec::default(),
            Some(&gone),
        );
        let f = r.unwrap();
        assert!(f.stale);
        assert_eq!(f.package, pin(&current, None));
        assert_eq!(index.refreshes, 1, "a missing pin forces one index update");
        let warning = events
            .iter()
            .find(|e| matches!(e, Event::Stale { .. }))
            .unwrap()
            .to_string();
        assert_eq!(
            warning,
            "warning: lock is stale: busybox-static 1:1.37.0-6 → 1:1.37.0-7 (run `cargo xtask relock`)"
        );
        assert_eq!(sha256_file(&f.path).unwrap(), current.sha256);
    }

    #[test]
    fn stale_kernel_pin_follows_the_metapackage() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DebCache::new(dir.path());
        let mut index = FakeIndex::default();
        index.add(
            "linux-image-cloud-amd64",
            "6.12.118-1",
            b"meta",
            Some("linux-image-6.12.118+deb13-cloud-amd64 (= 6.12.118-1)"),
        );
        let real = index.add(
            "linux-image-6.12.118+deb13-cloud-amd64",
            "6.12.118-1",
            b"kernel",
            None,
        );
        let spec = PackageSpec {
            follow_depends: Some("linux-image-".into()),
            role: None,
        };
        let gone = LockedPackage {
            name: "linux-image-6.12.117+deb13-cloud-amd64".into(),
            version: "6.12.117-1".into(),
            sha256: sha256_bytes(b"old kernel"),
            size: 10,
            filename: "pool/x.deb".into(),
            from: Some("linux-image-cloud-amd64".into()),
        };
        let (r, events) = run(
            &mut index,
            &cache,
            "linux-image-cloud-amd64",
            &spec,
            Some(&gone),
        );
        let f = r.unwrap();
        assert_eq!(f.package, pin(&real, Some("linux-image-cloud-amd64")));
        let warning = events
            .iter()
            .find(|e| matches!(e, Event::Stale { .. }))
            .unwrap()
            .to_string();
        assert!(
            warning.contains("linux-image-6.12.117+deb13-cloud-amd64 6.12.117-1 → linux-image-6.12.118+deb13-cloud-amd64 6.12.118-1 (via linux-image-cloud-amd64)"),
            "{warning}"
        );
        assert_eq!(
            index.downloads,
            vec!["linux-image-6.12.118+deb13-cloud-amd64=6.12.118-1"]
        );

        // relock resolves the same way
        let resolved = resolve_current(&mut index, "linux-image-cloud-amd64", &spec).unwrap();
        assert_eq!(resolved.name, "linux-image-6.12.118+deb13-cloud-amd64");
        assert_eq!(resolved.from.as_deref(), Some("linux-image-cloud-amd64"));
    }

    #[test]
    fn find_pinned_matches_name_and_version() {
        let mut index = FakeIndex::default();
        let a = index.add("runc", "1.0", b"a", None);
        let versions = index.versions("runc").unwrap();
        assert!(find_pinned(&pin(&a, None), &versions).is_some());
        let other = LockedPackage {
            version: "0.9".into(),
            ..pin(&a, None)
        };
        assert!(find_pinned(&other, &versions).is_none());
    }

    #[test]
    fn wrong_lock_hash_fails_naming_package_and_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DebCache::new(dir.path());
        let mut index = FakeIndex::default();
        let e = index.add("busybox-static", "1:1.37.0-6", b"busybox deb", None);
        let wrong = LockedPackage {
            sha256: sha256_bytes(b"something else"),
            ..pin(&e, None)
        };
        let (r, _) = run(
            &mut index,
            &cache,
            "busybox-static",
            &PackageSpec::default(),
            Some(&wrong),
        );
        let err = r.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, FetchError::HashMismatch { .. }));
        assert!(
            msg.contains("busybox-static 1:1.37.0-6")
                && msg.contains(&wrong.sha256)
                && msg.contains(&e.sha256),
            "{msg}"
        );
        assert_eq!(
            fs::read_dir(cache.dir()).unwrap().count(),
            0,
            "nothing filed, no temp left"
        );
    }

    #[test]
    fn unlocked_package_uses_current_version_with_warning() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DebCache::new(dir.path());
        let mut index = FakeIndex::default();
        index.add("runc", "1.1", b"runc", None);
        let (r, events) = run(&mut index, &cache, "runc", &PackageSpec::default(), None);
        assert!(r.unwrap().stale);
        assert!(
            events[0].to_string().contains("runc is not in the lock"),
            "{events:?}"
        );
    }

    #[test]
    fn extract_is_skipped_once_complete() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("extract");
        let sha = sha256_bytes(b"x");
        fs::create_dir_all(root.join(&sha)).unwrap();
        assert!(extracted(&root, &sha).is_none(), "no stamp, not complete");
        fs::write(root.join(format!("{sha}.done")), "x 1\n").unwrap();
        let p = LockedPackage {
            name: "x1".into(),
            version: "1".into(),
            sha256: sha.clone(),
            size: 1,
            filename: "f".into(),
            from: None,
        };
        let mut events = Vec::new();
        let got = extract(&root, &p, Path::new("/nonexistent.deb"), &mut |e| {
            events.push(e.clone())
        })
        .unwrap();
        assert_eq!(got, root.join(&sha));
        assert!(events.is_empty());
    }
}
