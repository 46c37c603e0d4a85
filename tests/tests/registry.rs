//! VM test of workload images from a registry and from an OCI archive (issue 4, item 5). One
//! boot: a real `docker-registry` with htpasswd credentials on the host's loopback, reached by
//! the guest as 10.0.2.100:5000 through QEMU `guestfwd` (restricted user networking; a `socat`
//! per connection), holds the
//! console image; the config names it with `[registries."10.0.2.100:5000"] insecure = true` and
//! credentials. A second workload comes from `oci-archive:` (the syslog archive in the system
//! image), a third names a tag the registry does not have, a fourth a missing archive, and a
//! fifth the same registry image as the first. The pulled, imported and re-used ones run; the
//! missing ones fail on the console with their name and image and are retried; the password
//! appears nowhere in the console or the logs.

use ros_tests::registry::TestRegistry;
use ros_tests::{repo_root, running_pid, Vm, VmOptions};
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(180);
const PASSWORD: &str = "Reg1stry-Pa55w0rd";
/// Where the system image's bundled archives are in the guest (`boot::sysimage::ARCHIVES`).
const ARCHIVES: &str = "/usr/lib/ros/system/usr/share/ros/images";

fn config() -> String {
    format!(
        r#"version = 1

[registries."10.0.2.100:5000"]
insecure = true
username = "ros"
password = "{PASSWORD}"

[workloads.remote]
image = "10.0.2.100:5000/ros/console:remote"
entrypoint = []
command = ["/bin/busybox", "sh", "-c", "while true; do sleep 1; done"]
net = "none"
stop_timeout_s = 2

[workloads.archived]
image = "oci-archive:{ARCHIVES}/syslog.oci.tar"
entrypoint = []
command = ["/bin/busybox", "sh", "-c", "while true; do sleep 1; done"]
net = "none"
stop_timeout_s = 2

[workloads.missing]
image = "10.0.2.100:5000/ros/none:1"
net = "none"

[workloads.noarchive]
image = "oci-archive:/var/lib/none.oci.tar"
net = "none"

# The same registry image again: pulls are one at a time, so it finds it present.
[workloads.remote2]
image = "10.0.2.100:5000/ros/console:remote"
entrypoint = []
command = ["/bin/busybox", "sh", "-c", "while true; do sleep 1; done"]
net = "none"
stop_timeout_s = 2
"#
    )
}

#[test]
fn workloads_from_a_registry_with_credentials_and_from_an_oci_archive() {
    let archive = repo_root().join("build/out/images/console.oci.tar");
    assert!(
        archive.exists(),
        "{} missing (run `cargo xtask build`)",
        archive.display()
    );
    let reg = TestRegistry::start(Some(("ros", PASSWORD))).unwrap();
    reg.push(&archive, "ros/console:remote").unwrap();

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("os-config.toml");
    std::fs::write(&cfg, config()).unwrap();
    let opts = VmOptions {
        config: Some(cfg),
        // `guestfwd=…-tcp:HOST:PORT` is one chardev, connected once: a second guest connection
        // shares (and breaks) it. `cmd:` spawns a forwarder per connection.
        nics: vec![format!(
            "user,restrict=on,guestfwd=tcp:10.0.2.100:5000-cmd:socat - TCP:127.0.0.1:{}",
            reg.port()
        )],
        ..Default::default()
    };
    let mut vm = Vm::boot("registry-pull-and-archive", &opts).unwrap();
    vm.wait_ready(BOOT).unwrap();
    let ready_at = Instant::now();

    // Both workloads run in the user namespace.
    let tasks = vm.poll("ctr -n user t ls", BOOT, |o| {
        ["remote", "remote2", "archived"]
            .iter()
            .all(|w| running_pid(o, w).is_some())
    });
    for w in ["remote", "remote2", "archived"] {
        assert!(running_pid(&tasks, w).is_some(), "{w}:\n{tasks}");
    }
    eprintln!(
        "[vm registry] the three workloads running {:.1}s after ready",
        ready_at.elapsed().as_secs_f64()
    );
    let images = vm.succeed("ctr -n user images ls -q").unwrap();
    assert!(
        images.contains("10.0.2.100:5000/ros/console:remote"),
        "{images}"
    );
    assert!(images.contains("docker.io/ros/syslog:"), "{images}");
    let containers = vm.succeed("ctr -n user c ls").unwrap();
    assert!(
        containers.contains("10.0.2.100:5000/ros/console:remote"),
        "{containers}"
    );
    // The pull's progress, per layer, is in the kernel log.
    let dmesg = vm.succeed("dmesg").unwrap();
    assert!(
        dmesg.contains("pull 10.0.2.100:5000/ros/console:remote: layer 1/1"),
        "{dmesg}"
    );

    // The tag that is not there: a console line naming workload and image, retried.
    let line = vm
        .wait_for_console(
            "ros: workload missing: image 10.0.2.100:5000/ros/none:1: pull 10.0.2.100:5000/ros/none:1: registry 10.0.2.100:5000:",
            Duration::from_secs(60),
        )
        .unwrap();
    assert!(line.contains("retry 1 in 1s"), "{line}");
    vm.wait_for_console(
        "ros: workload missing: image 10.0.2.100:5000/ros/none:1: pull",
        Duration::from_secs(30),
    )
    .unwrap();

    // A missing archive: the line names the workload and the path.
    vm.wait_for_console(
        "ros: workload noarchive: image oci-archive:/var/lib/none.oci.tar: /var/lib/none.oci.tar: No such file or directory",
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(
        !vm.console_text()
            .contains("workload remote2: image 10.0.2.100:5000/ros/console:remote:"),
        "the second pull of the same image waited for the first and did not fail"
    );

    // The password is nowhere: console, kernel log, ros's logs.
    let logs = vm.succeed("cat /var/log/ros/* 2>/dev/null; dmesg").unwrap();
    assert!(!logs.contains(PASSWORD), "password in the logs");
    assert!(
        !vm.console_text().contains(PASSWORD),
        "password on the console"
    );

    vm.poweroff().unwrap();
    assert!(!vm.console_text().contains(PASSWORD));
    // The registry saw the authenticated pull.
    assert!(
        reg.log().contains("/v2/ros/console/manifests/remote"),
        "{}",
        reg.log()
    );
    vm.passed();
}
