//! The package manifest (`images/packages.toml`: which Debian packages the image is made of, and
//! why) and the lock (`images/packages.lock`: the exact version, sha256, size and pool file of each).
//!
//! Owns parsing, validating and writing those two files. It must not talk to apt, the network or
//! the download cache: resolving versions is `fetch`'s job, and only `cargo xtask relock` writes the
//! lock.

use crate::util::{is_sha256, write_atomic};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// What went wrong reading or writing the manifest or the lock; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("cannot serialize {path}: {source}")]
    Serialize {
        path: PathBuf,
        source: toml::ser::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// What a package is for in the assembly. Packages without a role are only fetched and extracted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Provides `boot/vmlinuz-*` and the modules under `lib/modules/<kver>/`.
    Kernel,
    /// Provides the static `busybox` binary and its applets.
    Busybox,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Kernel => "kernel",
            Role::Busybox => "busybox",
        })
    }
}

/// One line of `packages.toml`: `name = { … }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageSpec {
    /// The package is a metapackage: lock the first package it depends on whose name starts with
    /// this prefix instead (its name changes with every kernel ABI).
    #[serde(default)]
    pub follow_depends: Option<String>,
    #[serde(default)]
    pub role: Option<Role>,
}

/// `images/packages.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub packages: BTreeMap<String, PackageSpec>,
}

impl Manifest {
    pub fn parse(text: &str, path: &Path) -> Result<Self, LockError> {
        let manifest: Manifest = toml::from_str(text).map_err(|source| LockError::Parse {
            path: path.to_owned(),
            source,
        })?;
        for (name, spec) in &manifest.packages {
            if !valid_package_name(name) {
                return Err(invalid(
                    path,
                    format!("`{name}` is not a Debian package name"),
                ));
            }
            if spec.follow_depends.as_deref() == Some("") {
                return Err(invalid(path, format!("{name}: follow_depends is empty")));
            }
        }
        Ok(manifest)
    }

    pub fn load(path: &Path) -> Result<Self, LockError> {
        Self::parse(&read(path)?, path)
    }

    /// The one package with `role`; `path` is the manifest's, for the error.
    pub fn with_role(&self, role: Role, path: &Path) -> Result<(&str, &PackageSpec), LockError> {
        let mut found = self.packages.iter().filter(|(_, s)| s.role == Some(role));
        match (found.next(), found.next()) {
            (Some((name, spec)), None) => Ok((name, spec)),
            (None, _) => Err(invalid(path, format!("no package has role = \"{role}\""))),
            (Some((a, _)), Some((b, _))) => Err(invalid(
                path,
                format!("both {a} and {b} have role = \"{role}\""),
            )),
        }
    }
}

/// One pinned package in the lock.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPackage {
    /// The real package (for a metapackage, the one it depends on).
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub size: u64,
    /// Path of the .deb in the archive's pool.
    pub filename: String,
    /// The manifest entry this was resolved from when that is a metapackage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

impl LockedPackage {
    /// The manifest name this pin belongs to.
    pub fn manifest_name(&self) -> &str {
        self.from.as_deref().unwrap_or(&self.name)
    }
}

/// `images/packages.lock`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lock {
    pub packages: Vec<LockedPackage>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct LockFile {
    #[serde(default)]
    package: Vec<LockedPackage>,
}

const LOCK_HEADER: &str = "\
# Exact Debian trixie packages the image is assembled from (see images/packages.toml).
# Generated by `cargo xtask relock`; do not edit by hand.
";

impl Lock {
    pub fn parse(text: &str, path: &Path) -> Result<Self, LockError> {
        let file: LockFile = toml::from_str(text).map_err(|source| LockError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let mut seen = BTreeMap::new();
        for p in &file.package {
            if !valid_package_name(&p.name) || p.version.is_empty() {
                return Err(invalid(path, format!("bad entry for `{}`", p.name)));
            }
            if !is_sha256(&p.sha256) {
                return Err(invalid(
                    path,
                    format!(
                        "{}: sha256 `{}` is not 64 lowercase hex digits",
                        p.name, p.sha256
                    ),
                ));
            }
            if seen.insert(p.manifest_name().to_owned(), ()).is_some() {
                return Err(invalid(
                    path,
                    format!("{} is locked twice", p.manifest_name()),
                ));
            }
        }
        Ok(Lock {
            packages: file.package,
        })
    }

    /// The lock at `path`, or an empty one when there is none yet.
    pub fn load_or_empty(path: &Path) -> Result<Self, LockError> {
        match fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Lock::default()),
            Err(source) => Err(LockError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// The pin for manifest entry `name` (matched by `from` for metapackages).
    pub fn entry_for(&self, name: &str) -> Option<&LockedPackage> {
        self.packages.iter().find(|p| p.manifest_name() == name)
    }

    /// The lock as TOML: a header comment, then one `[[package]]` per pin, sorted by name.
    pub fn to_toml(&self, path: &Path) -> Result<String, LockError> {
        let mut package = self.packages.clone();
        package.sort_by(|a, b| a.name.cmp(&b.name));
        let body =
            toml::to_string(&LockFile { package }).map_err(|source| LockError::Serialize {
                path: path.to_owned(),
                source,
            })?;
        Ok(format!("{LOCK_HEADER}\n{body}"))
    }

    pub fn write(&self, path: &Path) -> Result<(), LockError> {
        let text = self.to_toml(path)?;
        write_atomic(path, text.as_bytes()).map_err(|source| LockError::Write {
            path: path.to_owned(),
            source,
        })
    }
}

fn read(path: &Path) -> Result<String, LockError> {
    fs::read_to_string(path).map_err(|source| LockError::Read {
        path: path.to_owned(),
        source,
    })
}

fn invalid(path: &Path, reason: String) -> LockError {
    LockError::Invalid {
        path: path.to_owned(),
        reason,
    }
}

/// Debian policy 5.6.1: lowercase letters, digits, `+ - .`, at least two characters, starting
/// with a letter or digit.
pub fn valid_package_name(name: &str) -> bool {
    name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA_A: &str = "598a3fd92bdafc34cd81196b2952ad36e910e47a4ecf162f8ce5e8e262598e53";
    const SHA_B: &str = "e9893e5295d0549b8852611f12a4b8b5f6cc4b8128dcc2086b9847793b904ab7";

    fn sample() -> Lock {
        Lock {
            packages: vec![
                LockedPackage {
                    name: "linux-image-6.12.117+deb13-cloud-amd64".into(),
                    version: "6.12.117-1".into(),
                    sha256: SHA_B.into(),
                    size: 34671208,
                    filename: "pool/main/l/linux-signed-amd64/x.deb".into(),
                    from: Some("linux-image-cloud-amd64".into()),
                },
                LockedPackage {
                    name: "busybox-static".into(),
                    version: "1:1.37.0-6+b9".into(),
                    sha256: SHA_A.into(),
                    size: 955316,
                    filename: "pool/main/b/busybox/busybox-static_1.37.0-6+b9_amd64.deb".into(),
                    from: None,
                },
            ],
        }
    }

    #[test]
    fn lock_round_trips_sorted_with_header() {
        let path = Path::new("packages.lock");
        let text = sample().to_toml(path).unwrap();
        assert!(text.starts_with("# Exact Debian trixie packages"));
        let busybox = text.find("name = \"busybox-static\"").unwrap();
        let kernel = text.find("name = \"linux-image-6.12.117").unwrap();
        assert!(busybox < kernel, "sorted by name:\n{text}");
        assert!(text.contains("from = \"linux-image-cloud-amd64\""));
        assert_eq!(
            text.matches("from =").count(),
            1,
            "from only when set:\n{text}"
        );
        let back = Lock::parse(&text, path).unwrap();
        let mut want = sample().packages;
        want.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(back.packages, want);
    }

    #[test]
    fn lock_entry_for_matches_metapackage_by_from() {
        let lock = sample();
        assert_eq!(
            lock.entry_for("linux-image-cloud-amd64").unwrap().version,
            "6.12.117-1"
        );
        assert_eq!(lock.entry_for("busybox-static").unwrap().size, 955316);
        assert!(lock
            .entry_for("linux-image-6.12.117+deb13-cloud-amd64")
            .is_none());
        assert!(lock.entry_for("runc").is_none());
    }

    #[test]
    fn lock_rejects_bad_hash_and_duplicates() {
        let path = Path::new("images/packages.lock");
        let bad = format!(
            "[[package]]\nname = \"busybox-static\"\nversion = \"1\"\nsha256 = \"{}\"\nsize = 1\nfilename = \"f\"\n",
            SHA_A.to_uppercase()
        );
        let err = Lock::parse(&bad, path).unwrap_err().to_string();
        assert!(
            err.contains("busybox-static") && err.contains("sha256"),
            "{err}"
        );
        let one = format!(
            "[[package]]\nname = \"busybox-static\"\nversion = \"1\"\nsha256 = \"{SHA_A}\"\nsize = 1\nfilename = \"f\"\n"
        );
        let err = Lock::parse(&format!("{one}{one}"), path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("locked twice"), "{err}");
        let err = Lock::parse("[[package]]\nname = \"x\"\n", path)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("images/packages.lock"), "{err}");
    }

    #[test]
    fn lock_missing_file_is_empty() {
        let lock = Lock::load_or_empty(Path::new("/nonexistent/packages.lock")).unwrap();
        assert!(lock.packages.is_empty());
    }

    #[test]
    fn manifest_parses_roles_and_follow_depends() {
        let text = r#"
[packages]
linux-image-cloud-amd64 = { follow_depends = "linux-image-", role = "kernel" } # why
busybox-static = { role = "busybox" }
runc = {}
"#;
        let path = Path::new("packages.toml");
        let m = Manifest::parse(text, path).unwrap();
        assert_eq!(m.packages.len(), 3);
        let (name, spec) = m.with_role(Role::Kernel, path).unwrap();
        assert_eq!(name, "linux-image-cloud-amd64");
        assert_eq!(spec.follow_depends.as_deref(), Some("linux-image-"));
        assert_eq!(
            m.with_role(Role::Busybox, path).unwrap().0,
            "busybox-static"
        );
        assert_eq!(m.packages["runc"], PackageSpec::default());

        let err = Manifest::parse("[packages]\nx = { folow = \"a\" }\n", path).unwrap_err();
        assert!(err.to_string().contains("folow"), "{err}");
        let err = Manifest::parse("[packages]\nBad_Name = {}\n", path).unwrap_err();
        assert!(err.to_string().contains("Bad_Name"), "{err}");
        let two = "[packages]\na1 = { role = \"kernel\" }\nb1 = { role = \"kernel\" }\n";
        let err = Manifest::parse(two, path)
            .unwrap()
            .with_role(Role::Kernel, path)
            .unwrap_err();
        assert!(err.to_string().contains("both a1 and b1"), "{err}");
    }
}
