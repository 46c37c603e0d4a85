//! VM tests of the system image on a disk (docs/images.md "The system image on a disk"):
//! `initrd-disk.img` carries only the image's UUID; `system.erofs` is attached as a read-only
//! virtio disk, and PID 1 finds it by that UUID and mounts it without a loop device. Without
//! the disk, the node still boots and says which UUID it looked for.

use ros_tests::{repo_root, running_pid, Vm, VmOptions, NO_SERVICES};
use std::path::PathBuf;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(180);
const SYSTEM_CTR: &str = "ctr -a /run/ros/containerd-system.sock -n system";

fn out(name: &str) -> PathBuf {
    repo_root().join("build/out").join(name)
}

/// The UUID the build wrote into initrd-disk.img: system.erofs's, as `blkid` reads it.
fn image_uuid() -> String {
    let out = std::process::Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(out("system.erofs"))
        .output()
        .expect("blkid (util-linux) on the host");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l == "TYPE=erofs"), "blkid: {text}");
    text.lines()
        .find_map(|l| l.strip_prefix("UUID="))
        .unwrap_or_else(|| panic!("blkid: no UUID in {text}"))
        .to_string()
}

/// Prints `MemTotal − MemAvailable` and `Shmem` (MiB) for the report.
fn print_memory(vm: &mut Vm, what: &str) {
    let mem = vm.succeed("cat /proc/meminfo").unwrap();
    let kib = |key: &str| -> u64 {
        mem.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    eprintln!(
        "[vm {}] {what}: MemTotal-MemAvailable {} MiB, Shmem {} MiB",
        vm.name(),
        (kib("MemTotal:") - kib("MemAvailable:")) / 1024,
        kib("Shmem:") / 1024
    );
}

#[test]
fn the_system_image_on_a_read_only_disk_runs_the_default_services() {
    let uuid = image_uuid();
    let opts = VmOptions {
        initrd: out("initrd-disk.img"),
        readonly_disks: vec![out("system.erofs")],
        ..Default::default()
    };
    let mut vm = Vm::boot("sysdisk-default-services", &opts).unwrap();
    vm.wait_ready(BOOT).unwrap();
    let line = vm
        .wait_for_console("ros: system image on ", Duration::from_secs(1))
        .unwrap();
    // How long finding the disk took: the `storage` phase (mounts the image, then looks for a
    // state disk) runs from the end of `modules` to its own line.
    for l in vm
        .console_text()
        .lines()
        .filter(|l| l.contains("ros: phase modules") || l.contains("ros: phase storage"))
    {
        eprintln!("[vm {}] {}", vm.name(), l.trim());
    }
    assert!(
        line.contains(&format!(
            "ros: system image on /dev/vda (erofs UUID {uuid}) mounted at /usr/lib/ros/system"
        )),
        "{line}"
    );

    // Mounted from the disk itself: no loop device, and no image file in the root.
    let mounts = vm.succeed("cat /proc/mounts").unwrap();
    let system: Vec<&str> = mounts
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("/usr/lib/ros/system"))
        .collect();
    assert_eq!(system.len(), 1, "{mounts}");
    assert!(
        system[0].starts_with("/dev/vda /usr/lib/ros/system erofs ro,"),
        "{}",
        system[0]
    );
    assert!(!mounts.contains("/dev/loop"), "{mounts}");
    let loops = vm
        .succeed("cat /sys/block/loop*/loop/backing_file 2>/dev/null; true")
        .unwrap();
    assert_eq!(loops, "", "no loop device is backed by anything");
    vm.succeed("test ! -e /usr/lib/ros/system.erofs").unwrap();
    assert_eq!(
        vm.succeed("cat /usr/lib/ros/system.uuid").unwrap(),
        format!("{uuid}\n")
    );

    // containerd and runc from the disk run the default services.
    let tasks = vm.poll(&format!("{SYSTEM_CTR} t ls"), BOOT, |o| {
        running_pid(o, "syslog").is_some() && running_pid(o, "console").is_some()
    });
    assert!(running_pid(&tasks, "syslog").is_some(), "{tasks}");
    assert!(running_pid(&tasks, "console").is_some(), "{tasks}");
    let ps = vm.succeed("ros ps").unwrap();
    for name in ["syslog", "console"] {
        assert!(
            ps.lines()
                .any(|l| l.contains(name) && l.contains("running")),
            "{ps}"
        );
    }
    print_memory(
        &mut vm,
        "initrd-disk.img + disk, default config, after ready",
    );
    vm.poweroff().unwrap();
    vm.passed();
}

#[test]
fn without_the_disk_the_node_boots_and_names_the_uuid_it_looked_for() {
    let uuid = image_uuid();
    let opts = VmOptions {
        initrd: out("initrd-disk.img"),
        append: vec![NO_SERVICES.into()],
        ..Default::default()
    };
    let mut vm = Vm::boot("sysdisk-missing", &opts).unwrap();
    vm.wait_ready(BOOT).unwrap();
    let line = vm
        .wait_for_console("no block device carries", Duration::from_secs(1))
        .unwrap();
    assert!(
        line.contains(&format!(
            "no block device carries the erofs image with UUID {uuid} (waited 10 s; looked at: no block devices)"
        )) && line.contains("no containers on this boot"),
        "{line}"
    );
    vm.succeed("! grep -q ' /usr/lib/ros/system ' /proc/mounts")
        .unwrap();
    vm.poweroff().unwrap();
    vm.passed();
}
