//! VM tests of PID 1 (issue: boot foundation). Each boots the real image under TCG with a
//! config that starts no containers, and checks what a person would check by hand.

use ros_tests::{repo_root, Vm, VmOptions, NO_SERVICES};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(120);

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// One boot shares the related checks: config layers, reaping, a clean poweroff.
#[test]
fn config_layers_apply_orphans_are_reaped_and_poweroff_leaves_disks_clean() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "os-config.toml",
        "version = 1\nhostname = \"node-file\"\n\n[sysctl]\n\"net.ipv4.ip_forward\" = \"1\"\n\"vm.swappiness\" = \"7\"\n",
    );
    let disk = dir.path().join("scratch.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let (ok, out) = run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "SCRATCH"])
        .arg(&disk));
    assert!(ok, "mkfs.ext4: {out}");

    let opts = VmOptions {
        config: Some(cfg),
        append: vec!["ros.sysctl.vm.swappiness=13".into(), NO_SERVICES.into()],
        disks: vec![disk.clone()],
        ..Default::default()
    };
    let mut vm = Vm::boot("pid1-config-reap-poweroff", &opts).unwrap();
    vm.wait_ready(BOOT).unwrap();
    for phase in ["mounts", "cmdline", "modules", "config", "kernel"] {
        vm.wait_for_console(&format!("ros: phase {phase} "), Duration::from_secs(1))
            .unwrap();
    }

    // The init is ros, and the fw_cfg layer and the cmdline override both took effect.
    assert_eq!(vm.succeed("cat /proc/1/comm").unwrap(), "init\n");
    assert_eq!(vm.succeed("hostname").unwrap(), "node-file\n");
    assert_eq!(
        vm.succeed("cat /proc/sys/net/ipv4/ip_forward").unwrap(),
        "1\n"
    );
    assert_eq!(
        vm.succeed("cat /proc/sys/vm/swappiness").unwrap(),
        "13\n",
        "cmdline wins over the file"
    );

    // Orphans: 20 background sleeps whose parent exits at once are re-parented to PID 1 ...
    let ppids = vm
        .succeed("sh -c 'for i in $(seq 20); do sleep 8 & done'; sleep 0.5; for p in $(pidof sleep); do awk '/^PPid/{print $2}' /proc/$p/status; done")
        .unwrap();
    assert_eq!(
        ppids.lines().filter(|l| *l == "1").count(),
        20,
        "orphans re-parented to PID 1:\n{ppids}"
    );
    // ... and once they exit, PID 1 has reaped every one: no zombie is left.
    vm.poll("pidof sleep | wc -w", Duration::from_secs(60), |o| {
        o == "0\n"
    });
    let left = vm
        .succeed(
            "grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l; pidof sleep | wc -w",
        )
        .unwrap();
    assert_eq!(left, "0\n0\n", "zombies, then sleeps left");

    // A filesystem mounted by hand is unmounted cleanly by poweroff.
    vm.succeed("mount -t ext4 /dev/vda /mnt && echo kept > /mnt/hello")
        .unwrap();
    vm.poweroff().unwrap();
    let console = vm.console_text();
    vm.passed();
    assert!(console.contains("ros: shutdown complete"), "{console}");
    let (ok, out) = run(Command::new("e2fsck").args(["-n", "-f"]).arg(&disk));
    assert!(ok, "e2fsck -n after poweroff:\n{out}");
    let (ok, out) = run(Command::new("debugfs")
        .args(["-R", "cat /hello"])
        .arg(&disk));
    assert!(
        ok && out.contains("kept"),
        "file written before poweroff: {out}"
    );
    let (_, out) = run(Command::new("dumpe2fs").arg("-h").arg(&disk));
    assert!(out.contains("Filesystem state:         clean"), "{out}");
}

#[test]
fn invalid_config_still_boots_names_key_and_line_and_halt_halts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "os-config.toml",
        "version = 1\n# a typo below\nhostnme = \"typo\"\n",
    );
    let opts = VmOptions {
        config: Some(cfg),
        append: vec![NO_SERVICES.into()],
        ..Default::default()
    };
    let mut vm = Vm::boot("pid1-invalid-config-halt", &opts).unwrap();
    vm.wait_ready(BOOT).unwrap();
    let line = vm
        .wait_for_console("ros: config error:", Duration::from_secs(1))
        .unwrap();
    assert!(
        line.contains("ros: config error: hostnme (line 3): unknown field"),
        "{line}"
    );
    assert_eq!(
        vm.succeed("hostname").unwrap(),
        "ros\n",
        "the bad layer is skipped; defaults apply"
    );
    // The defaults run DHCP on every Ethernet NIC: QEMU's user network hands out 10.0.2.15.
    let addr = vm.succeed("ip addr show dev eth0").unwrap();
    assert!(addr.contains("inet 10.0.2.15/24"), "{addr}");

    vm.send("halt").unwrap();
    vm.wait_for_console("ros: shutdown complete", Duration::from_secs(60))
        .unwrap();
    vm.wait_for_console("reboot: System halted", Duration::from_secs(30))
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        vm.running(),
        "halt stops the machine without powering it off"
    );
    vm.passed();
}

#[test]
fn reboot_typed_in_the_debug_shell_boots_again() {
    let opts = VmOptions {
        no_reboot: false,
        append: vec!["ros.hostname=again".into(), NO_SERVICES.into()],
        ..Default::default()
    };
    let mut vm = Vm::boot("pid1-reboot", &opts).unwrap();
    vm.wait_ready(BOOT).unwrap();
    let mark = vm.console_text().len();
    vm.send("reboot").unwrap();
    vm.wait_for_console_from("ros: shutdown complete", mark, Duration::from_secs(60))
        .unwrap();
    vm.wait_for_console_from("reboot: Restarting system", mark, Duration::from_secs(30))
        .unwrap();
    vm.wait_for_console_from("ros: ready in", mark, BOOT)
        .unwrap();
    // A fresh boot: the shell is new, the uptime small.
    let up: f64 = vm
        .succeed("cut -d' ' -f1 /proc/uptime")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(up < 60.0, "uptime after reboot {up}");
    vm.poweroff().unwrap();
    vm.passed();
}

/// A real fault on the boot path: the image's /run is a file (an extra cpio appended to the
/// initramfs replaces the directory), so mounting tmpfs on it fails.
#[test]
fn boot_fault_lands_in_the_recovery_shell_showing_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("run"), "not a directory\n").unwrap();
    let extra = dir.path().join("extra.cpio");
    let (ok, out) = run(Command::new("sh").current_dir(&tree).arg("-c").arg(format!(
        "echo run | cpio -o -H newc -R 0:0 > {}",
        extra.display()
    )));
    assert!(ok, "cpio: {out}");
    // The kernel takes concatenated archives, each compressed on its own: the fault goes
    // last, zstd-compressed like the image's main segment, so its `run` replaces the directory.
    let (ok, out) = run(Command::new("zstd").args(["-q", "-f", "--rm"]).arg(&extra));
    assert!(ok, "zstd: {out}");
    let initrd = dir.path().join("initrd.img");
    let mut bytes = std::fs::read(repo_root().join("build/out/initrd.img")).unwrap();
    bytes.extend(std::fs::read(dir.path().join("extra.cpio.zst")).unwrap());
    std::fs::write(&initrd, bytes).unwrap();

    let opts = VmOptions {
        initrd,
        append: vec![NO_SERVICES.into()],
        ..Default::default()
    };
    let mut vm = Vm::boot("pid1-recovery", &opts).unwrap();
    let line = vm.wait_for_console("ros: recovery shell:", BOOT).unwrap();
    assert!(line.contains("mount tmpfs on /run: ENOTDIR"), "{line}");
    assert!(
        !vm.console_text().contains("ros: ready"),
        "a faulty boot never reports ready"
    );
    vm.wait_for_console("--- error: mount tmpfs on /run", Duration::from_secs(10))
        .unwrap();
    // The shell on the console answers.
    std::thread::sleep(Duration::from_secs(1));
    vm.send_console("echo recovery-$((6*7))").unwrap();
    vm.wait_for_console("recovery-42", Duration::from_secs(30))
        .unwrap();
    vm.send_console("poweroff").unwrap();
    vm.wait_exit(Duration::from_secs(60)).unwrap();
    vm.passed();
}

/// `scripts/run --exec` as a user types it.
#[test]
fn scripts_run_exec_prints_init_name_and_hostname() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "c.toml",
        "version = 1\nhostname = \"exec-node\"\n",
    );
    let out = Command::new(repo_root().join("scripts/run"))
        .arg("--config")
        .arg(&cfg)
        .args(["--exec", "cat /proc/1/comm; hostname"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "status {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "init\nexec-node\n");

    // The other options reach the VM: memory, a disk, extra cmdline words; the status is CMD's.
    let disk = dir.path().join("d.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    // A provisioned layer with a typo: skipped, and the node's error line reaches stderr.
    let bad = write(dir.path(), "bad.toml", "version = 1\nhostnme = \"typo\"\n");
    let out = Command::new(repo_root().join("scripts/run"))
        .args(["--mem", "512", "--append", "ros.sysctl.vm.swappiness=21 ros.hostname=opt-node"])
        .args(["--nic", "user,mac=52:54:00:00:00:99", "--disk"])
        .arg(&disk)
        .arg("--config")
        .arg(&bad)
        .args(["--exec", "hostname; cat /proc/sys/vm/swappiness; cat /sys/block/vda/size; awk '/MemTotal/{print ($2 < 524288)}' /proc/meminfo; cat /sys/class/net/eth0/address; exit 3"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "opt-node\n21\n16384\n1\n52:54:00:00:00:99\n"
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "--exec exits with the command's status"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines()
            .any(|l| l.starts_with("ros: config error: hostnme (line 2): unknown field `hostnme`")),
        "the node's config error is shown on stderr:\n{err}"
    );
}

#[test]
fn scripts_run_timeout_gives_up_with_a_clear_error() {
    let out = Command::new(repo_root().join("scripts/run"))
        // No services: the timeout covers the boot too, and this test is about the command.
        .args([
            "--append",
            NO_SERVICES,
            "--timeout",
            "60",
            "--exec",
            "sleep 600",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("`sleep 600` did not finish within 60s"),
        "{err}"
    );
}
