//! Kernel modules: resolving a module name to its file and dependencies from `modules.dep`,
//! and loading the files in order with `finit_module(2)`.
//!
//! Owns the modules.dep format and the load order (dependencies first, each once). Compressed
//! modules (`.ko.xz`, `.ko.zst`, `.ko.gz`) are handed to the kernel as they are, with
//! `MODULE_INIT_COMPRESSED_FILE` (the image kernel has CONFIG_MODULE_DECOMPRESS). It does not
//! decide which modules a node needs; boot and the config do.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// `finit_module` flag: the file is compressed; the kernel decompresses it.
const MODULE_INIT_COMPRESSED_FILE: libc::c_uint = 4;

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("module {name}: not found in {dep_file} (nor built in)")]
    NotFound { name: String, dep_file: PathBuf },
    #[error("module {name}: cannot open {path}: {source}")]
    Open {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("module {name}: finit_module({path}) failed: {errno}")]
    Load {
        name: String,
        path: PathBuf,
        errno: nix::errno::Errno,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Kernel module names treat `-` and `_` alike; the canonical form uses `_`.
pub fn canonical_name(name: &str) -> String {
    name.replace('-', "_")
}

/// The module name of a path in modules.dep (`kernel/fs/overlayfs/overlay.ko.xz` → `overlay`).
fn name_of(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    canonical_name(stem)
}

/// Parsed `modules.dep` plus `modules.builtin` of one kernel.
#[derive(Debug, Default, Clone)]
pub struct ModuleDb {
    /// name → (relative path, direct dependencies as relative paths)
    entries: BTreeMap<String, (String, Vec<String>)>,
    builtin: BTreeSet<String>,
}

impl ModuleDb {
    /// Parses the text of modules.dep (`path: dep dep …` per line) and modules.builtin (one
    /// path per line). Malformed lines are skipped: a partial db still loads what it can.
    pub fn parse(dep: &str, builtin: &str) -> Self {
        let mut entries = BTreeMap::new();
        for line in dep.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let path = path.trim();
            if path.is_empty() {
                continue;
            }
            let deps = deps.split_whitespace().map(str::to_string).collect();
            entries.insert(name_of(path), (path.to_string(), deps));
        }
        let builtin = builtin
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(name_of)
            .collect();
        ModuleDb { entries, builtin }
    }

    /// Reads the db of the kernel whose modules live in `dir` (`/lib/modules/<release>`).
    pub fn load(dir: &Path) -> Result<Self, ModuleError> {
        let read = |f: &str| {
            let path = dir.join(f);
            std::fs::read_to_string(&path).map_err(|source| ModuleError::Read { path, source })
        };
        let dep = read("modules.dep")?;
        // A kernel without builtin list is unusual but not fatal.
        let builtin = read("modules.builtin").unwrap_or_default();
        Ok(Self::parse(&dep, &builtin))
    }

    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&canonical_name(name))
    }

    /// The files to load for `name`, dependencies first, each once. A built-in module yields an
    /// empty list. `dep_file` only names the db in errors.
    pub fn resolve(&self, name: &str, dep_file: &Path) -> Result<Vec<String>, ModuleError> {
        let name = canonical_name(name);
        if self.is_builtin(&name) {
            return Ok(Vec::new());
        }
        let Some((path, _)) = self.entries.get(&name) else {
            return Err(ModuleError::NotFound {
                name,
                dep_file: dep_file.to_path_buf(),
            });
        };
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        self.visit(path, &mut seen, &mut order);
        Ok(order)
    }

    /// Depth-first, dependencies before dependents. modules.dep already lists the full
    /// transitive set per module; recursing keeps the order right even when it does not.
    fn visit(&self, path: &str, seen: &mut BTreeSet<String>, order: &mut Vec<String>) {
        if !seen.insert(path.to_string()) {
            return;
        }
        if let Some((_, deps)) = self.entries.get(&name_of(path)) {
            for d in deps {
                self.visit(d, seen, order);
            }
        }
        order.push(path.to_string());
    }
}

/// The running kernel's module directory.
pub fn module_dir() -> PathBuf {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    Path::new("/lib/modules").join(release)
}

fn is_compressed(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("xz" | "zst" | "gz")
    )
}

/// Loads one module file. Already loaded (EEXIST) counts as success.
fn load_file(name: &str, path: &Path) -> Result<(), ModuleError> {
    let file = File::open(path).map_err(|source| ModuleError::Open {
        name: name.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    let flags = if is_compressed(path) {
        MODULE_INIT_COMPRESSED_FILE
    } else {
        0
    };
    let params = c"";
    // SAFETY: finit_module takes an open fd (valid for the duration of the call, owned by
    // `file`), a NUL-terminated parameter string (a static C literal) and flags; it does not
    // retain either pointer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            params.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    match nix::errno::Errno::last() {
        nix::errno::Errno::EEXIST => Ok(()),
        errno => Err(ModuleError::Load {
            name: name.to_string(),
            path: path.to_path_buf(),
            errno,
        }),
    }
}

/// Loads `name` and its dependencies from `dir`. Returns how many files were loaded (0 for a
/// built-in module).
pub fn load(db: &ModuleDb, dir: &Path, name: &str) -> Result<usize, ModuleError> {
    let files = db.resolve(name, &dir.join("modules.dep"))?;
    for rel in &files {
        load_file(&name_of(rel), &dir.join(rel))?;
    }
    Ok(files.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/block/virtio_blk.ko.xz:
kernel/fs/overlayfs/overlay.ko.xz:
kernel/net/bridge/br_netfilter.ko.xz: kernel/net/bridge/bridge.ko.xz kernel/net/802/stp.ko.xz kernel/net/llc/llc.ko.xz
kernel/net/bridge/bridge.ko.xz: kernel/net/802/stp.ko.xz kernel/net/llc/llc.ko.xz
kernel/net/802/stp.ko.xz: kernel/net/llc/llc.ko.xz
kernel/net/llc/llc.ko.xz:
garbage line without colon
";
    const BUILTIN: &str = "kernel/fs/ext4/ext4.ko\nkernel/drivers/virtio/virtio_pci.ko\n";

    fn db() -> ModuleDb {
        ModuleDb::parse(DEP, BUILTIN)
    }

    #[test]
    fn resolves_dependencies_first_each_once() {
        let order = db()
            .resolve("br_netfilter", Path::new("modules.dep"))
            .unwrap();
        assert_eq!(
            order,
            vec![
                "kernel/net/llc/llc.ko.xz",
                "kernel/net/802/stp.ko.xz",
                "kernel/net/bridge/bridge.ko.xz",
                "kernel/net/bridge/br_netfilter.ko.xz",
            ]
        );
    }

    #[test]
    fn dash_and_underscore_are_the_same_module() {
        assert_eq!(
            db().resolve("br-netfilter", Path::new("d")).unwrap().len(),
            4
        );
        assert_eq!(
            db().resolve("virtio-blk", Path::new("d")).unwrap(),
            vec!["kernel/drivers/block/virtio_blk.ko.xz"]
        );
    }

    #[test]
    fn builtin_module_needs_no_file() {
        assert!(db().is_builtin("ext4"));
        assert!(db()
            .resolve("virtio_pci", Path::new("d"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn unknown_module_error_names_module_and_db() {
        let err = db()
            .resolve("nosuch", Path::new("/lib/modules/x/modules.dep"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "module nosuch: not found in /lib/modules/x/modules.dep (nor built in)"
        );
    }

    #[test]
    fn compressed_suffixes_are_detected() {
        assert!(is_compressed(Path::new("a.ko.xz")));
        assert!(is_compressed(Path::new("a.ko.zst")));
        assert!(!is_compressed(Path::new("a.ko")));
    }
}
