//! The offline `ros` CLI as a user runs it: the real binary against real files.

use std::path::Path;
use std::process::{Command, Output};

fn ros(args: &[&str], file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ros"))
        .args(args)
        .arg("--file")
        .arg(file)
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

const ORIGINAL: &str = "# my node\nversion = 1\nhostname = \"a\"   # the name\n\n[sysctl]\n# forwarding on\n\"net.ipv4.ip_forward\" = \"1\"\n";

#[test]
fn set_in_both_forms_keeps_comments_and_layout() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("os-config.toml");
    std::fs::write(&f, ORIGINAL).unwrap();

    assert!(ros(&["config", "set", "hostname", "node-2"], &f)
        .status
        .success());
    assert!(ros(
        &[
            "config",
            "set",
            "sysctl.vm.swappiness=10",
            "network.interfaces.private.mtu=1500"
        ],
        &f
    )
    .status
    .success());

    let after = std::fs::read_to_string(&f).unwrap();
    assert_eq!(
        after,
        "# my node\nversion = 1\nhostname = \"node-2\"   # the name\n\n[sysctl]\n# forwarding on\n\"net.ipv4.ip_forward\" = \"1\"\n\"vm.swappiness\" = 10\n\n[network.interfaces.private]\nmtu = 1500\n"
    );
    let o = ros(&["config", "get", "sysctl.net.ipv4.ip_forward"], &f);
    assert_eq!(text(&o).0, "1\n");
    let o = ros(&["config", "get", "hostname"], &f);
    assert_eq!(text(&o).0, "node-2\n");

    assert!(ros(&["config", "unset", "sysctl.vm.swappiness"], &f)
        .status
        .success());
    assert!(!std::fs::read_to_string(&f).unwrap().contains("swappiness"));
}

#[test]
fn invalid_set_is_refused_naming_the_key_and_leaves_the_file_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("os-config.toml");
    std::fs::write(&f, ORIGINAL).unwrap();

    for (args, key) in [
        (
            vec!["config", "set", "network.interfaces.private.mtu", "big"],
            "network.interfaces.private.mtu",
        ),
        (vec!["config", "set", "hostnme", "x"], "hostnme"),
        (
            vec![
                "config",
                "set",
                "hostname=ok",
                "kernel.modules=[\"bad name\"]",
            ],
            "kernel.modules",
        ),
    ] {
        let o = ros(&args, &f);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(key), "{args:?}: error names {key}: {err}");
        assert_eq!(
            std::fs::read_to_string(&f).unwrap(),
            ORIGINAL,
            "{args:?} left the file untouched"
        );
    }
}

#[test]
fn validate_names_key_and_line_and_version_prints() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(&f, "version = 1\n\n[network]\nwait = \"sometimes\"\n").unwrap();
    let o = ros(&["config", "validate"], &f);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("network.wait (line 4):"), "{err}");

    std::fs::write(&f, ORIGINAL).unwrap();
    assert!(ros(&["config", "validate"], &f).status.success());

    let o = Command::new(env!("CARGO_BIN_EXE_ros"))
        .args(["os", "version"])
        .output()
        .unwrap();
    assert_eq!(text(&o).0, format!("ros {}\n", env!("CARGO_PKG_VERSION")));
}
