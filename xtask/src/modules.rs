//! Kernel modules for the initramfs: reading `images/modules.list`, learning the dependencies of
//! the kernel package's modules (host `depmod` on the full tree, once per kernel), the dependency
//! closure of the listed modules, and the `modules.dep` for that subset.
//!
//! Owns `<build>/depmod/<kernel sha256>/` and the module-dependency logic. It must not modify the
//! extracted kernel package, decompress modules (they stay `.ko.xz`; the kernel has
//! MODULE_DECOMPRESS), or decide where the initramfs is staged.

use crate::util::{describe, output_tail};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What went wrong with modules; each names the module, path or command.
#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: expected exactly one kernel release under usr/lib/modules or lib/modules, found {found:?}")]
    KernelRelease { path: PathBuf, found: Vec<String> },
    #[error("module {module} (images/modules.list) is neither in modules.dep nor built into kernel {kver}")]
    NotFound { module: String, kver: String },
    #[error("modules.dep line {line}: {reason}")]
    Parse { line: usize, reason: String },
    #[error("`{command}` failed: {detail}")]
    Depmod { command: String, detail: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ModulesError {
    let path = path.to_owned();
    move |source| ModulesError::Io { path, source }
}

/// `kernel/fs/overlayfs/overlay.ko.xz` → `overlay`; `-` and `_` are the same in module names.
pub fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = base.split(".ko").next().unwrap_or(base);
    stem.replace('-', "_")
}

/// Module names from `modules.list`: one per line, `#` starts a comment.
pub fn parse_modules_list(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .flat_map(|l| l.split_whitespace())
        .map(|m| m.replace('-', "_"))
        .collect()
}

/// Module names in `modules.builtin`.
pub fn parse_builtin(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(module_name)
        .collect()
}

/// One line of modules.dep: a module path and every module it needs (transitively), in the
/// order depmod wrote them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepEntry {
    pub path: String,
    pub deps: Vec<String>,
}

/// A parsed `modules.dep` (paths relative to `lib/modules/<kver>/`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModulesDep {
    pub entries: Vec<DepEntry>,
}

/// The modules to ship: their paths, plus the listed names that are built into the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Closure {
    pub paths: BTreeSet<String>,
    pub builtin: Vec<String>,
}

impl ModulesDep {
    pub fn parse(text: &str) -> Result<Self, ModulesError> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let (path, deps) = line.split_once(':').ok_or_else(|| ModulesError::Parse {
                line: i + 1,
                reason: format!("no `:` in `{line}`"),
            })?;
            if path.trim().is_empty() || path.contains(char::is_whitespace) {
                return Err(ModulesError::Parse {
                    line: i + 1,
                    reason: format!("bad module path `{path}`"),
                });
            }
            entries.push(DepEntry {
                path: path.to_owned(),
                deps: deps.split_whitespace().map(str::to_owned).collect(),
            });
        }
        Ok(ModulesDep { entries })
    }

    /// The paths of `wanted` and everything they depend on. A wanted name that is built in is
    /// noted, one that is neither a module nor built in is an error naming it.
    pub fn closure(
        &self,
        wanted: &[String],
        builtin: &BTreeSet<String>,
        kver: &str,
    ) -> Result<Closure, ModulesError> {
        let by_name: BTreeMap<String, &DepEntry> = self
            .entries
            .iter()
            .map(|e| (module_name(&e.path), e))
            .collect();
        let by_path: BTreeMap<&str, &DepEntry> =
            self.entries.iter().map(|e| (e.path.as_str(), e)).collect();
        let mut out = Closure::default();
        let mut todo: Vec<&str> = Vec::new();
        for name in wanted {
            let name = name.replace('-', "_");
            match by_name.get(&name) {
                Some(e) => todo.push(&e.path),
                None if builtin.contains(&name) => out.builtin.push(name),
                None => {
                    return Err(ModulesError::NotFound {
                        module: name,
                        kver: kver.to_owned(),
                    })
                }
            }
        }
        while let Some(path) = todo.pop() {
            if !out.paths.insert(path.to_owned()) {
                continue;
            }
            if let Some(e) = by_path.get(path) {
                todo.extend(e.deps.iter().map(String::as_str));
            }
        }
        Ok(out)
    }

    /// `modules.dep` for just `paths`: the full file's lines for those modules, in its order.
    pub fn subset_text(&self, paths: &BTreeSet<String>) -> String {
        let mut s = String::new();
        for e in self.entries.iter().filter(|e| paths.contains(&e.path)) {
            s.push_str(&e.path);
            s.push(':');
            for d in &e.deps {
                s.push(' ');
                s.push_str(d);
            }
            s.push('\n');
        }
        s
    }
}

/// The kernel release and its module directory in an extracted kernel package
/// (`usr/lib/modules/<kver>/`, or `lib/modules/<kver>/` in older packages).
pub fn kernel_release(package_root: &Path) -> Result<(String, PathBuf), ModulesError> {
    let mut found = Vec::new();
    for base in ["usr/lib/modules", "lib/modules"] {
        let dir = package_root.join(base);
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.path().join("kernel").is_dir() {
                found.push((e.file_name().to_string_lossy().into_owned(), e.path()));
            }
        }
    }
    if found.len() == 1 {
        return Ok(found.remove(0));
    }
    Err(ModulesError::KernelRelease {
        path: package_root.to_owned(),
        found: found.into_iter().map(|(k, _)| k).collect(),
    })
}

/// The full `modules.dep` of the kernel whose modules are in `moddir`, computed once by host
/// `depmod` in `work` (a fresh directory per kernel package) and kept there.
///
/// depmod wants `<base>/lib/modules/<kver>/`; `work` gets that layout with symlinks to the
/// package's files, so depmod writes its output into `work`, never into the extracted package.
/// An empty config directory keeps the host's `/etc/depmod.d` out.
pub fn full_modules_dep(moddir: &Path, kver: &str, work: &Path) -> Result<String, ModulesError> {
    let target = work.join("lib/modules").join(kver);
    let done = work.join("done");
    let dep = target.join("modules.dep");
    if done.is_file() {
        if let Ok(text) = fs::read_to_string(&dep) {
            return Ok(text);
        }
    }
    if work.exists() {
        fs::remove_dir_all(work).map_err(io_err(work))?;
    }
    fs::create_dir_all(&target).map_err(io_err(&target))?;
    let conf = work.join("depmod.d");
    fs::create_dir_all(&conf).map_err(io_err(&conf))?;
    for e in fs::read_dir(moddir).map_err(io_err(moddir))?.flatten() {
        let name = e.file_name();
        // Only the sources depmod reads, not index files a package might ship.
        let keep = name == "kernel"
            || name == "modules.builtin"
            || name == "modules.order"
            || name == "modules.builtin.modinfo";
        if keep {
            let link = target.join(&name);
            std::os::unix::fs::symlink(e.path(), &link).map_err(io_err(&link))?;
        }
    }
    let mut cmd = Command::new("depmod");
    cmd.arg("-C").arg(&conf).arg("-b").arg(work).arg(kver);
    let command = describe(&cmd);
    let output = cmd.output().map_err(|e| ModulesError::Depmod {
        command: command.clone(),
        detail: format!("{e} (install the kmod package)"),
    })?;
    if !output.status.success() {
        return Err(ModulesError::Depmod {
            command,
            detail: format!("{}: {}", output.status, output_tail(&output)),
        });
    }
    let text = fs::read_to_string(&dep).map_err(io_err(&dep))?;
    fs::write(&done, "").map_err(io_err(&done))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = "\
kernel/fs/overlayfs/overlay.ko.xz:
kernel/drivers/block/virtio_blk.ko.xz:
kernel/net/core/failover.ko.xz:
kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz
kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz kernel/net/core/failover.ko.xz
kernel/drivers/firmware/qemu_fw_cfg.ko.xz:
kernel/fs/fuse/virtiofs.ko.xz: kernel/fs/fuse/fuse.ko.xz
kernel/fs/fuse/fuse.ko.xz:
kernel/drivers/md/dm-mod.ko.xz:
";

    fn names(list: &str) -> Vec<String> {
        parse_modules_list(list)
    }

    #[test]
    fn closure_follows_dependencies() {
        let dep = ModulesDep::parse(FIXTURE).unwrap();
        let builtin = parse_builtin("kernel/drivers/virtio/virtio_pci.ko\n");
        let c = dep
            .closure(
                &names("virtio_net\noverlay  # for containers\n\nvirtio_pci\n"),
                &builtin,
                "6.12",
            )
            .unwrap();
        let want: BTreeSet<String> = [
            "kernel/drivers/net/virtio_net.ko.xz",
            "kernel/drivers/net/net_failover.ko.xz",
            "kernel/net/core/failover.ko.xz",
            "kernel/fs/overlayfs/overlay.ko.xz",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        assert_eq!(c.paths, want);
        assert_eq!(c.builtin, vec!["virtio_pci"]);
        assert_eq!(
            dep.subset_text(&c.paths),
            "kernel/fs/overlayfs/overlay.ko.xz:\n\
             kernel/net/core/failover.ko.xz:\n\
             kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz\n\
             kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz kernel/net/core/failover.ko.xz\n"
        );
    }

    #[test]
    fn closure_names_a_missing_module() {
        let dep = ModulesDep::parse(FIXTURE).unwrap();
        let err = dep
            .closure(
                &names("virtio_blk\nvirtio_gpu\n"),
                &BTreeSet::new(),
                "6.12.1-cloud",
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("virtio_gpu") && err.contains("6.12.1-cloud"),
            "{err}"
        );
    }

    #[test]
    fn dashes_and_underscores_are_the_same_module() {
        assert_eq!(module_name("kernel/drivers/md/dm-mod.ko.xz"), "dm_mod");
        assert_eq!(module_name("extra/foo.ko"), "foo");
        let dep = ModulesDep::parse(FIXTURE).unwrap();
        let c = dep
            .closure(&names("dm-mod"), &BTreeSet::new(), "k")
            .unwrap();
        assert!(c.paths.contains("kernel/drivers/md/dm-mod.ko.xz"));
    }

    #[test]
    fn modules_dep_rejects_garbage() {
        let err = ModulesDep::parse("ok.ko:\nno colon here\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
    }
}
