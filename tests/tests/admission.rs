//! VM test of the user side at scale (issue: containerd, the fence): one boot asks for 25
//! workloads under `max_containers = 20`; 20 run and each of the other 5 is refused with an error
//! naming the limit. Every container of the user containerd lands inside the fence `/ros/user`:
//! ros's workloads, a plain `ctr run`, and a `ctr run` that asks for a cgroup outside it.
//! The workloads share one shim (one asked for its own). Killing the user containerd while a
//! workload dies brings both back.

use ros_tests::{running_pid, Vm, VmOptions};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(240);
const ASKED: usize = 25;
const MAX: usize = 20;

fn config() -> String {
    let mut c = format!("version = 1\n\n[limits.user]\nmax_containers = {MAX}\n");
    for i in 1..=ASKED {
        write!(
            c,
            r#"
[workloads.w{i:02}]
image = "ros/console"
entrypoint = []
command = ["/bin/busybox", "sh", "-c", "while true; do sleep 1; done"]
net = "none"
stop_timeout_s = 2
"#
        )
        .unwrap();
        if i == 1 {
            c.push_str("shim = \"own\"\n");
        }
    }
    c
}

/// The ids of running tasks in a `ctr t ls` listing.
fn running_ids(tasks: &str) -> Vec<String> {
    tasks
        .lines()
        .skip(1)
        .filter(|l| l.split_whitespace().nth(2) == Some("RUNNING"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// `PID ID` of each user shim daemon (the id is the first container it ran; not the
/// short-lived `… start` helper).
const SHIMS_USER: &str =
    "ps -o pid,args | awk '/containerd-shim-runc-v2 -namespace user/ && !/awk/ && !/ start$/ \
     { for (i = 1; i < NF; i++) if ($i == \"-id\") print $1, $(i + 1) }'";

/// The host-side cgroup of a guest pid (`0::/path`).
fn cgroup_of(vm: &mut Vm, pid: u32) -> String {
    vm.succeed(&format!("cat /proc/{pid}/cgroup"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn twenty_of_twenty_five_workloads_run_and_every_user_container_is_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("os-config.toml");
    std::fs::write(&cfg, config()).unwrap();
    let opts = VmOptions {
        config: Some(cfg),
        mem_mib: 1024,
        ..Default::default()
    };
    let mut vm = Vm::boot("admission-fence", &opts).unwrap();
    vm.wait_ready(BOOT).unwrap();

    // 20 admitted and running; the other 5 refused by name with the limit in the message.
    let started = Instant::now();
    let tasks = vm.poll("ctr -n user t ls", BOOT, |o| running_ids(o).len() >= MAX);
    eprintln!(
        "[admission] {MAX} workloads running {:.1}s after ready",
        started.elapsed().as_secs_f64()
    );
    let running = running_ids(&tasks);
    assert_eq!(running.len(), MAX, "{tasks}");
    let console = vm.console_text();
    let refused: Vec<&str> = console
        .lines()
        .filter(|l| l.contains("not created: limits.user.max_containers = 20 reached"))
        .collect();
    assert_eq!(refused.len(), ASKED - MAX, "{refused:#?}");
    for l in &refused {
        assert!(l.contains("ros: workload w"), "{l}");
    }
    let containers = vm.succeed("ctr -n user c ls -q").unwrap();
    assert_eq!(containers.lines().count(), MAX, "{containers}");

    // ros's workloads sit in the fence.
    let w01 = running_pid(&tasks, "w01").unwrap();
    let cg = cgroup_of(&mut vm, w01);
    assert_eq!(cg, "0::/ros/user/user/w01", "{cg}");

    // The workloads share one shim, except w01, which asked for its own; both shims run
    // outside the fence, with the daemon.
    let shims = vm.poll(SHIMS_USER, BOOT, |o| o.lines().count() == 2);
    let ids: Vec<&str> = shims
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(ids.len(), 2, "two user shims for {MAX} workloads:\n{shims}");
    assert!(ids.contains(&"w01"), "w01's own shim:\n{shims}");
    for l in shims.lines() {
        let pid: u32 = l.split_whitespace().next().unwrap().parse().unwrap();
        assert_eq!(cgroup_of(&mut vm, pid), "0::/ros/runtime/containerd", "{l}");
    }

    // A plain `ctr run` on the user socket lands in the fence too, also when it asks for a
    // cgroup path of its own; the user containerd itself is outside it.
    let image = vm
        .succeed("ctr -n user i ls -q | grep console | head -n1")
        .unwrap();
    let image = image.trim();
    for (id, extra) in [("plain", ""), ("escape", "--cgroup /escape")] {
        vm.succeed(&format!(
            "ctr -n user run -d {extra} {image} {id} /bin/busybox sleep 1000"
        ))
        .unwrap();
        let tasks = vm.poll("ctr -n user t ls", Duration::from_secs(60), |o| {
            running_pid(o, id).is_some()
        });
        let pid = running_pid(&tasks, id).unwrap();
        let cg = cgroup_of(&mut vm, pid);
        eprintln!("[admission] ctr run {id}: {cg}");
        assert!(cg.starts_with("0::/ros/user/"), "{id} escaped: {cg}");
    }
    vm.succeed("test ! -e /sys/fs/cgroup/escape && test -d /sys/fs/cgroup/ros/user/escape")
        .unwrap();
    let daemon = vm
        .succeed("ps -o pid,args | awk '/containerd-user.toml/ && !/awk/ {print $1}'")
        .unwrap();
    let daemon: u32 = daemon.trim().parse().unwrap();
    assert_eq!(cgroup_of(&mut vm, daemon), "0::/ros/runtime/containerd");

    // Kill the user containerd and, while it is down, a workload: both come back.
    let w02 = running_pid(&tasks, "w02").unwrap();
    vm.succeed(&format!("kill -9 {daemon}; kill -9 {w02}"))
        .unwrap();
    vm.wait_for_console(
        "ros: containerd user exited (killed by signal 9)",
        Duration::from_secs(20),
    )
    .unwrap();
    let tasks = vm.poll("ctr -n user t ls", BOOT, |o| {
        running_pid(o, "w02").is_some_and(|p| p != w02) && running_ids(o).len() >= MAX
    });
    assert!(
        running_pid(&tasks, "w02").is_some_and(|p| p != w02),
        "w02 not back:\n{tasks}"
    );
    assert_eq!(running_pid(&tasks, "w01"), Some(w01), "w01 kept running");
    let new_daemon = vm
        .succeed("ps -o pid,args | awk '/containerd-user.toml/ && !/awk/ {print $1}'")
        .unwrap();
    let new_daemon: u32 = new_daemon.trim().parse().unwrap();
    assert_ne!(new_daemon, daemon);
    assert_eq!(cgroup_of(&mut vm, new_daemon), "0::/ros/runtime/containerd");
    // The restarted daemon is in the same fence namespace: a new container still lands inside.
    vm.succeed(&format!(
        "ctr -n user run -d {image} after /bin/busybox sleep 1000"
    ))
    .unwrap();
    let tasks = vm.poll("ctr -n user t ls", Duration::from_secs(60), |o| {
        running_pid(o, "after").is_some()
    });
    let cg = cgroup_of(&mut vm, running_pid(&tasks, "after").unwrap());
    assert_eq!(cg, "0::/ros/user/user/after");
    vm.poweroff().unwrap();
    vm.passed();
}
