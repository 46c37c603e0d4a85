//! The images bundled in the system image, and the one place that maps a config's `image`
//! to them (docs/images.md "Naming").
//!
//! Each archive `<dir>/<x>.oci.tar` holds `docker.io/ros/<x>:<ros version>`. A config names it
//! as `ros/<x>`, `docker.io/ros/<x>`, with `:latest` or with the version tag; all of these
//! resolve to the bundled name (no bundled image carries `latest`). Other references are only
//! normalised (`nginx` → `docker.io/library/nginx:latest`). Pure apart from the directory
//! listing.

use std::path::{Path, PathBuf};

/// The tag every bundled image carries: the ros version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `docker.io/library/nginx:latest` from `nginx`, the way containerd and Docker normalise.
pub fn normalize(image: &str) -> String {
    let (name, tag_or_digest) = split_tag(image);
    let first = name.split('/').next().unwrap_or_default();
    let has_domain =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let full = if has_domain {
        name.to_string()
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    };
    match tag_or_digest {
        Some(t) => format!("{full}{t}"),
        None => format!("{full}:latest"),
    }
}

/// (name, `:tag` or `@digest`) — the tag's colon is one after the last `/`.
fn split_tag(image: &str) -> (&str, Option<&str>) {
    if let Some(at) = image.find('@') {
        return (&image[..at], Some(&image[at..]));
    }
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(c) => (&image[..last_slash + c], Some(&image[last_slash + c..])),
        None => (image, None),
    }
}

/// A bundled image: its archive and the name it is imported under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundled {
    pub archive: PathBuf,
    pub name: String,
}

/// The bundled image `image` means, if it names one whose archive is in `dir`.
pub fn lookup(dir: &Path, image: &str) -> Option<Bundled> {
    let full = normalize(image);
    let (name, tag) = split_tag(&full);
    let short = name.strip_prefix("docker.io/ros/")?;
    let version_tag = format!(":{VERSION}");
    let tag_ok = tag == Some(":latest") || tag == Some(version_tag.as_str());
    if short.contains('/') || !tag_ok {
        return None;
    }
    let archive = dir.join(format!("{short}.oci.tar"));
    archive.exists().then(|| Bundled {
        archive,
        name: format!("docker.io/ros/{short}:{VERSION}"),
    })
}

/// Every archive in `dir` (sorted), with the name it is imported under.
pub fn all(dir: &Path) -> Vec<Bundled> {
    let mut out: Vec<Bundled> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            let short = file.strip_suffix(".oci.tar")?.to_string();
            Some(Bundled {
                archive: e.path(),
                name: format!("docker.io/ros/{short}:{VERSION}"),
            })
        })
        .collect();
    out.sort_by(|a, b| a.archive.cmp(&b.archive));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalise_like_docker() {
        assert_eq!(normalize("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(normalize("ros/syslog"), "docker.io/ros/syslog:latest");
        assert_eq!(
            normalize("docker.io/library/nginx:1.27"),
            "docker.io/library/nginx:1.27"
        );
        assert_eq!(
            normalize("10.0.2.100:5000/app"),
            "10.0.2.100:5000/app:latest"
        );
        assert_eq!(normalize("a/b@sha256:00"), "docker.io/a/b@sha256:00");
    }

    #[test]
    fn bundled_names_resolve_to_the_version_tag() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("syslog.oci.tar"), "").unwrap();
        let want = Some(Bundled {
            archive: dir.path().join("syslog.oci.tar"),
            name: format!("docker.io/ros/syslog:{VERSION}"),
        });
        for image in [
            "ros/syslog".to_string(),
            "docker.io/ros/syslog:latest".to_string(),
            format!("ros/syslog:{VERSION}"),
        ] {
            assert_eq!(lookup(dir.path(), &image), want, "{image}");
        }
        assert_eq!(lookup(dir.path(), "ros/syslog:0.0.0-other"), None);
        assert_eq!(lookup(dir.path(), "ros/ntp"), None, "no archive");
        assert_eq!(lookup(dir.path(), "library/syslog"), None);
        assert_eq!(all(dir.path()), want.into_iter().collect::<Vec<_>>());
    }
}
