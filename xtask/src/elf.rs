//! The shared-library closure of dynamically linked executables, resolved the way glibc's
//! `ld.so` would resolve it on the image, but against the extracted package trees
//! ([`MergedTree`]) instead of the build host: the `PT_INTERP` loader, every `DT_NEEDED` entry
//! (searched in `DT_RPATH`/`DT_RUNPATH` with `$ORIGIN`, then the multiarch system directories),
//! transitively.
//!
//! Owns ELF parsing (through the `object` crate) and the search order. It must not copy anything
//! (the caller stages what [`Closure`] lists) and must never look at the build host's libraries:
//! a library that none of the given packages provides fails with the binary and the library
//! named. Limitations: x86-64 ELF64 only; no `/etc/ld.so.cache` (the image ships none, so ld.so
//! uses its built-in directories too); `$LIB`/`$PLATFORM` in run paths are not expanded.

use crate::tree::{Link, MergedTree, TreeError};
use object::elf;
use object::read::elf::{Dyn, ElfFile64, FileHeader, ProgramHeader};
use object::Endianness;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The directories glibc's ld.so searches after the run paths, on Debian amd64, when there is
/// no ld.so.cache.
pub const SYSTEM_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib",
    "/usr/lib",
];

/// What went wrong resolving libraries; each names the file and, where it matters, the binary.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not a valid ELF file: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("{path}: {reason}; the image is x86-64")]
    WrongMachine { path: PathBuf, reason: String },
    #[error("{binary}: no such file in the packages {packages:?}")]
    MissingBinary {
        binary: String,
        packages: Vec<String>,
    },
    #[error("{binary}: its interpreter {interp} is in none of the packages {packages:?}")]
    MissingInterpreter {
        binary: String,
        interp: String,
        packages: Vec<String>,
    },
    #[error(
        "{binary}: needs {library}{via}, which none of the packages {packages:?} provide \
         (searched {searched})"
    )]
    MissingLibrary {
        binary: String,
        library: String,
        /// ` (through /usr/lib/…/libfoo.so.1)` when a library, not the binary, needs it.
        via: String,
        packages: Vec<String>,
        searched: String,
    },
    #[error(transparent)]
    Tree(#[from] TreeError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ElfError {
    let path = path.to_owned();
    move |source| ElfError::Io { path, source }
}

/// What the dynamic linker needs to know about one ELF file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElfInfo {
    /// `PT_INTERP`: the program interpreter (only executables have one).
    pub interp: Option<String>,
    /// `DT_NEEDED`, in order.
    pub needed: Vec<String>,
    /// `DT_RPATH` entries (ignored by ld.so when there is a `DT_RUNPATH`).
    pub rpath: Vec<String>,
    /// `DT_RUNPATH` entries.
    pub runpath: Vec<String>,
}

impl ElfInfo {
    /// Static: neither an interpreter nor libraries.
    pub fn is_static(&self) -> bool {
        self.interp.is_none() && self.needed.is_empty()
    }
}

/// Whether `path` starts with the ELF magic.
pub fn is_elf(path: &Path) -> Result<bool, ElfError> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut f = fs::File::open(path).map_err(io_err(path))?;
    match f.read_exact(&mut magic) {
        Ok(()) => Ok(&magic == b"\x7fELF"),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Parses the interpreter and dynamic section of the x86-64 ELF file at `path`.
pub fn read_info(path: &Path) -> Result<ElfInfo, ElfError> {
    let data = fs::read(path).map_err(io_err(path))?;
    parse_info(&data, path)
}

fn split_paths(value: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(value)
        .split(':')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// [`read_info`] on bytes already read; `path` is for messages.
pub fn parse_info(data: &[u8], path: &Path) -> Result<ElfInfo, ElfError> {
    let parse = |reason: String| ElfError::Parse {
        path: path.to_owned(),
        reason,
    };
    if data.get(4) != Some(&2) {
        return Err(ElfError::WrongMachine {
            path: path.to_owned(),
            reason: "not a 64-bit ELF file".into(),
        });
    }
    let file = ElfFile64::<Endianness>::parse(data).map_err(|e| parse(e.to_string()))?;
    let endian = file.endian();
    let header = file.elf_header();
    if header.e_machine(endian) != elf::EM_X86_64 {
        return Err(ElfError::WrongMachine {
            path: path.to_owned(),
            reason: format!("e_machine is {}, not x86-64", header.e_machine(endian)),
        });
    }
    let mut info = ElfInfo::default();
    for ph in file.elf_program_headers() {
        if let Some(interp) = ph
            .interpreter(endian, data)
            .map_err(|e| parse(e.to_string()))?
        {
            info.interp = Some(String::from_utf8_lossy(interp).into_owned());
        }
    }
    let sections = file.elf_section_table();
    let Some((dynamic, link)) = sections
        .dynamic(endian, data)
        .map_err(|e| parse(e.to_string()))?
    else {
        if info.interp.is_some() {
            return Err(parse(
                "it has an interpreter but no .dynamic section".into(),
            ));
        }
        return Ok(info);
    };
    let strings = sections
        .strings(endian, data, link)
        .map_err(|e| parse(e.to_string()))?;
    for d in dynamic {
        let tag = d.d_tag(endian);
        if tag == elf::DT_NULL {
            break;
        }
        if ![elf::DT_NEEDED, elf::DT_RPATH, elf::DT_RUNPATH].contains(&tag) {
            continue;
        }
        let offset = u32::try_from(d.d_val(endian)).map_err(|_| {
            parse(format!(
                "dynamic string offset {} too large",
                d.d_val(endian)
            ))
        })?;
        let value = strings
            .get(offset)
            .map_err(|_| parse(format!("bad dynamic string offset {offset}")))?;
        if tag == elf::DT_NEEDED {
            info.needed
                .push(String::from_utf8_lossy(value).into_owned());
        } else if tag == elf::DT_RPATH {
            info.rpath.extend(split_paths(value));
        } else {
            info.runpath.extend(split_paths(value));
        }
    }
    Ok(info)
}

/// Everything a set of executables needs at run time, as paths in the merged view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Closure {
    /// Regular files to copy: canonical path → (file on the build host, package).
    pub files: BTreeMap<String, (PathBuf, String)>,
    /// Symlinks met on the way (the executables' own, the loader's, the libraries' sonames).
    pub links: BTreeSet<Link>,
    /// Library name as needed (`libc.so.6`, and the interpreter's path) → canonical path.
    pub libraries: BTreeMap<String, String>,
}

/// The search path for `needed` of an object at `origin_dir` with `info`, in ld.so's order.
pub fn search_dirs(info: &ElfInfo, origin_dir: &str) -> Vec<String> {
    let run = if info.runpath.is_empty() {
        &info.rpath
    } else {
        &info.runpath
    };
    let mut dirs: Vec<String> = run
        .iter()
        .map(|d| {
            d.replace("${ORIGIN}", origin_dir)
                .replace("$ORIGIN", origin_dir)
        })
        .filter(|d| d.starts_with('/'))
        .collect();
    dirs.extend(SYSTEM_DIRS.iter().map(|d| (*d).to_owned()));
    dirs
}

/// The closure of `binaries` (absolute paths in `tree`): the files themselves, their loader and
/// every library they need, transitively, each found in `tree`.
pub fn closure(tree: &MergedTree, binaries: &[String]) -> Result<Closure, ElfError> {
    let packages = || -> Vec<String> { tree.layers().iter().map(|l| l.package.clone()).collect() };
    let mut out = Closure::default();
    // (path in the view, the binary it is for, the library that needs it)
    let mut todo: Vec<(String, String, Option<String>)> = binaries
        .iter()
        .rev()
        .map(|b| (b.clone(), b.clone(), None))
        .collect();
    let mut seen = BTreeSet::new();
    while let Some((path, binary, _)) = todo.pop() {
        let found = tree
            .resolve(&path)?
            .ok_or_else(|| ElfError::MissingBinary {
                binary: path.clone(),
                packages: packages(),
            })?;
        out.links.extend(found.links.iter().cloned());
        if !seen.insert(found.path.clone()) {
            continue;
        }
        out.files.insert(
            found.path.clone(),
            (found.host.clone(), found.package.clone()),
        );
        if !is_elf(&found.host)? {
            continue;
        }
        let info = read_info(&found.host)?;
        if let Some(interp) = &info.interp {
            let ld = tree
                .resolve(interp)?
                .ok_or_else(|| ElfError::MissingInterpreter {
                    binary: binary.clone(),
                    interp: interp.clone(),
                    packages: packages(),
                })?;
            out.libraries.insert(interp.clone(), ld.path.clone());
            todo.push((interp.clone(), binary.clone(), Some(found.path.clone())));
        }
        let origin = found
            .path
            .rsplit_once('/')
            .map(|(d, _)| if d.is_empty() { "/" } else { d })
            .unwrap_or("/")
            .to_owned();
        let dirs = search_dirs(&info, &origin);
        for lib in &info.needed {
            let candidates: Vec<String> = if lib.contains('/') {
                vec![lib.clone()]
            } else {
                dirs.iter().map(|d| format!("{d}/{lib}")).collect()
            };
            let mut hit = None;
            for c in &candidates {
                if let Some(f) = tree.resolve(c)? {
                    // ld.so skips a file of the wrong class or machine and searches on.
                    if is_elf(&f.host)? && read_info(&f.host).is_ok() {
                        hit = Some((c.clone(), f));
                        break;
                    }
                }
            }
            let Some((at, f)) = hit else {
                let via = if found.path == binary {
                    String::new()
                } else {
                    format!(" (through {})", found.path)
                };
                return Err(ElfError::MissingLibrary {
                    binary: binary.clone(),
                    library: lib.clone(),
                    via,
                    packages: packages(),
                    searched: dirs.join(", "),
                });
            };
            out.libraries.entry(lib.clone()).or_insert(f.path.clone());
            todo.push((at, binary.clone(), Some(found.path.clone())));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Layer;
    use std::process::Command;

    #[test]
    fn search_dirs_follow_ld_so_order() {
        let info = ElfInfo {
            rpath: vec!["/opt/old".into()],
            runpath: vec!["$ORIGIN/../lib".into(), "relative".into()],
            ..ElfInfo::default()
        };
        let dirs = search_dirs(&info, "/usr/bin");
        assert_eq!(dirs[0], "/usr/bin/../lib", "RUNPATH wins over RPATH");
        assert!(!dirs.contains(&"/opt/old".to_string()));
        assert!(!dirs.contains(&"relative".to_string()));
        assert_eq!(&dirs[1..], SYSTEM_DIRS);
        let only_rpath = ElfInfo {
            rpath: vec!["/opt/old".into()],
            ..ElfInfo::default()
        };
        assert_eq!(search_dirs(&only_rpath, "/")[0], "/opt/old");
    }

    #[test]
    fn parses_a_dynamic_executable_of_the_build_host() {
        // The host's own /bin/sh: dynamic, with an interpreter and libc.
        let Ok(sh) = fs::canonicalize("/bin/sh") else {
            return;
        };
        let info = read_info(&sh).unwrap();
        assert_eq!(info.interp.as_deref(), Some("/lib64/ld-linux-x86-64.so.2"));
        assert!(info.needed.contains(&"libc.so.6".to_string()), "{info:?}");
        assert!(!info.is_static());
    }

    #[test]
    fn text_files_are_not_elf() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("script");
        fs::write(&p, b"#!/bin/sh\n").unwrap();
        assert!(!is_elf(&p).unwrap());
        fs::write(&p, b"").unwrap();
        assert!(!is_elf(&p).unwrap());
        let err = parse_info(b"\x7fELF\x01\x01\x01", &p).unwrap_err();
        assert!(matches!(err, ElfError::WrongMachine { .. }), "{err}");
    }

    /// A fake package tree made from the build host's /bin/sh and its libraries (copied into
    /// tempdir layers): the closure is found, and dropping libc names binary and library.
    #[test]
    fn closure_of_host_shell_and_missing_library_error() {
        let Ok(sh) = fs::canonicalize("/bin/sh") else {
            return;
        };
        let info = read_info(&sh).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let prog = Layer {
            package: "prog".into(),
            root: dir.path().join("prog"),
        };
        let libs = Layer {
            package: "libs".into(),
            root: dir.path().join("libs"),
        };
        fs::create_dir_all(prog.root.join("usr/bin")).unwrap();
        fs::copy(&sh, prog.root.join("usr/bin/sh")).unwrap();
        let libdir = libs.root.join("usr/lib/x86_64-linux-gnu");
        fs::create_dir_all(&libdir).unwrap();
        fs::create_dir_all(libs.root.join("usr/lib64")).unwrap();
        // Copy what the host's ld.so resolves, by name, into the fake multiarch dir.
        let ldd = Command::new("sh")
            .arg("-c")
            .arg(format!("ldd {}", sh.display()))
            .output()
            .unwrap();
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            let Some(real) = line.split("=>").nth(1) else {
                continue;
            };
            let real = real.split_whitespace().next().unwrap();
            let name = line.split_whitespace().next().unwrap();
            fs::copy(real, libdir.join(name)).unwrap();
        }
        let ld_real = fs::canonicalize(info.interp.as_deref().unwrap()).unwrap();
        fs::copy(&ld_real, libdir.join("ld-linux-x86-64.so.2")).unwrap();
        std::os::unix::fs::symlink(
            "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            libs.root.join("usr/lib64/ld-linux-x86-64.so.2"),
        )
        .unwrap();

        let tree = MergedTree::new(vec![prog.clone(), libs.clone()]);
        let c = closure(&tree, &["/usr/bin/sh".to_string()]).unwrap();
        assert_eq!(
            c.libraries["libc.so.6"],
            "/usr/lib/x86_64-linux-gnu/libc.so.6"
        );
        assert_eq!(
            c.libraries["/lib64/ld-linux-x86-64.so.2"],
            "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
        );
        assert!(c.files.contains_key("/usr/bin/sh"));
        assert!(c
            .links
            .iter()
            .any(|l| l.path == "/usr/lib64/ld-linux-x86-64.so.2"));

        fs::remove_file(libdir.join("libc.so.6")).unwrap();
        let err = closure(&tree, &["/usr/bin/sh".to_string()]).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ElfError::MissingLibrary { .. }), "{msg}");
        assert!(
            msg.starts_with("/usr/bin/sh: needs libc.so.6")
                && msg.contains("/usr/lib/x86_64-linux-gnu"),
            "{msg}"
        );
    }
}
