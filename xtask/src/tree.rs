//! Several extracted package trees seen as one root filesystem: absolute paths looked up across
//! the packages, symlinks followed inside that view (never into the build host's `/`), and the
//! merged-`/usr` links every trixie system has (`/bin`, `/sbin`, `/lib`, `/lib64` → `usr/…`),
//! which come from `base-files` and so are in none of the packages we fetch.
//!
//! Owns path resolution only. It must not copy, create or modify anything, and never read a path
//! outside the package trees it was given. When two packages ship the same path, the one listed
//! first wins (trixie has no such overlap among the packages we use).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Symlinks followed before a lookup gives up (the kernel's limit is 40 as well).
const MAX_LINKS: usize = 40;

/// The merged-`/usr` links of a trixie root: `(name at /, target)`.
pub const USRMERGE: &[(&str, &str)] = &[
    ("bin", "usr/bin"),
    ("lib", "usr/lib"),
    ("lib64", "usr/lib64"),
    ("sbin", "usr/sbin"),
];

/// What went wrong resolving a path; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: more than {MAX_LINKS} symlinks (a loop?)")]
    SymlinkLoop { path: String },
    #[error("{path}: `{component}` is not a directory")]
    NotADirectory { path: String, component: String },
    #[error("{path}: not an absolute path")]
    NotAbsolute { path: String },
}

/// One package's extracted tree.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Package name, for messages.
    pub package: String,
    pub root: PathBuf,
}

/// A symlink met on the way to a file: where it is and what it says.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Link {
    /// Absolute path in the merged view.
    pub path: String,
    /// The link's target, verbatim.
    pub target: String,
    /// The package that ships it; `None` for the merged-`/usr` links.
    pub package: Option<String>,
}

/// A regular file found in the merged view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Canonical absolute path in the merged view (no symlink in it).
    pub path: String,
    /// The file on the build host.
    pub host: PathBuf,
    pub package: String,
    /// Every symlink followed to get there, in order.
    pub links: Vec<Link>,
}

enum Node {
    Dir,
    File { host: PathBuf, package: String },
    Link(Link),
}

/// The packages' trees as one root.
#[derive(Debug, Clone, Default)]
pub struct MergedTree {
    layers: Vec<Layer>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TreeError {
    let path = path.to_owned();
    move |source| TreeError::Io { path, source }
}

/// `/a/b/../c/./d` → `["a", "c", "d"]`-style normalisation of the components of `path`.
fn components(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_owned)
        .collect()
}

fn join(parts: &[String]) -> String {
    let mut s = String::new();
    for p in parts {
        s.push('/');
        s.push_str(p);
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

impl MergedTree {
    pub fn new(layers: Vec<Layer>) -> Self {
        MergedTree { layers }
    }

    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// What is at `parts` (already canonical up to the last component), not following a final
    /// symlink.
    fn node(&self, parts: &[String]) -> Result<Option<Node>, TreeError> {
        if let [one] = parts {
            // These are links on every trixie root; a package's own /lib etc. lives under usr/.
            if let Some((_, target)) = USRMERGE.iter().find(|(n, _)| n == one) {
                return Ok(Some(Node::Link(Link {
                    path: join(parts),
                    target: (*target).to_owned(),
                    package: None,
                })));
            }
        }
        let rel: PathBuf = parts.iter().collect();
        let mut dir = false;
        for layer in &self.layers {
            let host = layer.root.join(&rel);
            let meta = match fs::symlink_metadata(&host) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOTDIR) => continue,
                Err(e) => return Err(io_err(&host)(e)),
            };
            if meta.is_dir() {
                dir = true;
                continue;
            }
            if dir {
                // A directory in an earlier package wins over anything else later.
                break;
            }
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&host).map_err(io_err(&host))?;
                return Ok(Some(Node::Link(Link {
                    path: join(parts),
                    target: target.to_string_lossy().into_owned(),
                    package: Some(layer.package.clone()),
                })));
            }
            return Ok(Some(Node::File {
                host,
                package: layer.package.clone(),
            }));
        }
        Ok(dir.then_some(Node::Dir))
    }

    /// Follows `path` (absolute) through the merged view to a regular file. `Ok(None)` when
    /// nothing is there (or it is a directory).
    pub fn resolve(&self, path: &str) -> Result<Option<Found>, TreeError> {
        if !path.starts_with('/') {
            return Err(TreeError::NotAbsolute {
                path: path.to_owned(),
            });
        }
        let mut todo: Vec<String> = components(path);
        todo.reverse();
        let mut done: Vec<String> = Vec::new();
        let mut links = Vec::new();
        while let Some(c) = todo.pop() {
            if c == ".." {
                done.pop();
                continue;
            }
            done.push(c.clone());
            match self.node(&done)? {
                None => return Ok(None),
                Some(Node::Dir) => {}
                Some(Node::File { host, package }) => {
                    if !todo.is_empty() {
                        return Err(TreeError::NotADirectory {
                            path: path.to_owned(),
                            component: join(&done),
                        });
                    }
                    return Ok(Some(Found {
                        path: join(&done),
                        host,
                        package,
                        links,
                    }));
                }
                Some(Node::Link(link)) => {
                    if links.len() >= MAX_LINKS {
                        return Err(TreeError::SymlinkLoop {
                            path: path.to_owned(),
                        });
                    }
                    done.pop();
                    if link.target.starts_with('/') {
                        done.clear();
                    }
                    let mut rest = components(&link.target);
                    rest.reverse();
                    todo.extend(rest);
                    links.push(link);
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn layer(dir: &Path, name: &str) -> Layer {
        let root = dir.join(name);
        fs::create_dir_all(&root).unwrap();
        Layer {
            package: name.into(),
            root,
        }
    }

    fn file(root: &Path, rel: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, rel).unwrap();
    }

    #[test]
    fn follows_usrmerge_and_package_links_across_packages() {
        let dir = tempfile::tempdir().unwrap();
        let libc = layer(dir.path(), "libc6");
        let seccomp = layer(dir.path(), "libseccomp2");
        file(&libc.root, "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2");
        fs::create_dir_all(libc.root.join("usr/lib64")).unwrap();
        symlink(
            "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            libc.root.join("usr/lib64/ld-linux-x86-64.so.2"),
        )
        .unwrap();
        file(
            &seccomp.root,
            "usr/lib/x86_64-linux-gnu/libseccomp.so.2.6.0",
        );
        symlink(
            "libseccomp.so.2.6.0",
            seccomp
                .root
                .join("usr/lib/x86_64-linux-gnu/libseccomp.so.2"),
        )
        .unwrap();
        let tree = MergedTree::new(vec![libc, seccomp]);

        let ld = tree
            .resolve("/lib64/ld-linux-x86-64.so.2")
            .unwrap()
            .unwrap();
        assert_eq!(ld.path, "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2");
        assert_eq!(ld.package, "libc6");
        let link_paths: Vec<&str> = ld.links.iter().map(|l| l.path.as_str()).collect();
        assert_eq!(
            link_paths,
            vec!["/lib64", "/usr/lib64/ld-linux-x86-64.so.2"]
        );
        assert_eq!(ld.links[0].package, None);

        let sc = tree
            .resolve("/lib/x86_64-linux-gnu/libseccomp.so.2")
            .unwrap()
            .unwrap();
        assert_eq!(sc.path, "/usr/lib/x86_64-linux-gnu/libseccomp.so.2.6.0");
        assert_eq!(sc.package, "libseccomp2");

        assert!(tree
            .resolve("/usr/lib/x86_64-linux-gnu/libnope.so.1")
            .unwrap()
            .is_none());
        assert!(tree.resolve("/usr/lib").unwrap().is_none(), "a directory");
        assert!(matches!(
            tree.resolve("usr/lib"),
            Err(TreeError::NotAbsolute { .. })
        ));
    }

    #[test]
    fn symlink_loop_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let a = layer(dir.path(), "a1");
        fs::create_dir_all(a.root.join("usr/bin")).unwrap();
        symlink("y", a.root.join("usr/bin/x")).unwrap();
        symlink("x", a.root.join("usr/bin/y")).unwrap();
        let tree = MergedTree::new(vec![a]);
        let err = tree.resolve("/usr/bin/x").unwrap_err().to_string();
        assert!(err.contains("/usr/bin/x") && err.contains("loop"), "{err}");
    }

    #[test]
    fn absolute_links_stay_inside_the_view() {
        let dir = tempfile::tempdir().unwrap();
        let a = layer(dir.path(), "a1");
        file(&a.root, "usr/sbin/runc");
        fs::create_dir_all(a.root.join("usr/bin")).unwrap();
        // Points at /usr/sbin/runc of the view, not of the build host.
        symlink("/usr/sbin/runc", a.root.join("usr/bin/runc")).unwrap();
        let tree = MergedTree::new(vec![a.clone()]);
        let f = tree.resolve("/usr/bin/runc").unwrap().unwrap();
        assert_eq!(f.host, a.root.join("usr/sbin/runc"));
        assert_eq!(f.path, "/usr/sbin/runc");
    }
}
