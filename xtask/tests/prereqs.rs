//! `scripts/prereqs --check`, as a fresh machine would meet it: a PATH that lacks one command
//! must fail naming its package on stderr (stdout stays empty: `scripts/run --exec` promises
//! its stdout is the guest command's), and a missing qemu tool must ask for the qemu packages
//! together at one version (qemu-utils from backports is otherwise removed by apt).
//!
//! CI's machine has every prerequisite, so only this test ever sees the missing-command path.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A directory of links to every program on this PATH except those named in `without`.
fn path_without(without: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let path = std::env::var("PATH").unwrap();
    for entry in path.split(':').filter(|p| !p.is_empty()) {
        let Ok(read) = std::fs::read_dir(entry) else {
            continue;
        };
        for f in read.flatten() {
            let name = f.file_name();
            let name = name.to_string_lossy();
            let link = dir.path().join(&*name);
            if without.contains(&&*name) || link.exists() {
                continue;
            }
            symlink(f.path(), link).unwrap();
        }
    }
    dir
}

fn check(path: &Path) -> Output {
    Command::new("bash")
        .arg(repo_root().join("scripts/prereqs"))
        .arg("--check")
        .env("PATH", path)
        .output()
        .unwrap()
}

#[test]
fn a_missing_command_fails_naming_its_package_on_stderr() {
    // Every prerequisite is there (scripts/test installs them before any test runs).
    let all = check(Path::new(&std::env::var("PATH").unwrap()));
    assert!(
        all.status.success(),
        "{}",
        String::from_utf8_lossy(&all.stderr)
    );
    assert!(all.stdout.is_empty() && all.stderr.is_empty());

    let dir = path_without(&["socat"]);
    let out = check(dir.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(out.stdout.is_empty(), "stdout: {:?}", out.stdout);
    assert!(err.contains("missing host prerequisites: socat\n"), "{err}");
    assert!(err.contains("apt-get install -y"), "{err}");
}

#[test]
fn a_missing_qemu_tool_asks_for_the_qemu_packages_at_one_version() {
    let dir = path_without(&["qemu-img"]);
    let out = check(dir.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("apt-get install"))
        .unwrap_or_else(|| panic!("{err}"));
    let pins: Vec<(&str, &str)> = line
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect();
    let names: Vec<&str> = pins.iter().map(|(p, _)| *p).collect();
    assert_eq!(
        names,
        ["qemu-system-x86", "qemu-utils", "qemu-system-common"],
        "{line}"
    );
    assert!(pins.iter().all(|(_, v)| *v == pins[0].1), "{line}");
    assert!(line.contains("--allow-downgrades"), "{line}");
}
