//! VM tests of containers (issue: containerd, a privileged system namespace for OS services and
//! a fenced user namespace for workloads). One boot carries a service, a workload and a
//! crash-looping service and a one-shot: order, listing, admission, restart after a kill,
//! a containerd restart, backoff, a service's shim dying, and the ordered poweroff.

use ros_tests::{running_pid, Vm, VmOptions};
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(180);
const SYSTEM_CTR: &str = "ctr -a /run/ros/containerd-system.sock -n system";

const CONFIG: &str = r#"version = 1

[services.syslog]
image = "ros/syslog"
privileged = true
net = "host"
restart = "always"
depends_on = ["setup"]

# A one-shot: syslog starts only after it exited 0.
[services.setup]
image = "ros/console"
entrypoint = []
command = ["/bin/busybox", "sh", "-c", "echo set up"]
oneshot = true
net = "none"

[services.crashy]
image = "ros/console"
entrypoint = []
command = ["/bin/busybox", "sh", "-c", "exit 1"]
restart = "always"
net = "none"

[workloads.spin]
image = "ros/console"
# The console image's entrypoint is its tty script: `command` alone would be its arguments.
entrypoint = []
command = ["/bin/busybox", "sh", "-c", "while true; do sleep 1; done"]
net = "none"
stop_timeout_s = 2

# Beyond limits.user.max_containers: refused at admission (workloads are admitted by name).
[workloads.spin2]
image = "ros/console"
entrypoint = []
command = ["/bin/busybox", "sh", "-c", "while true; do sleep 1; done"]
net = "none"

[limits.user]
max_containers = 1
"#;

/// Kernel timestamps (seconds) of the console lines containing `needle`. The stamp is the
/// `[ 12.345678]` right before the needle: the console service's shell shares ttyS0, so a line
/// can begin with its prompt and a terminal query (`ros:~# \x1b[6n[   22.08] ros: …`).
fn stamps(console: &str, needle: &str) -> Vec<f64> {
    console
        .lines()
        .filter_map(|l| {
            let head = &l[..l.find(needle)?];
            let open = head.rfind('[')?;
            let close = head[open..].find(']')? + open;
            head[open + 1..close].trim().parse().ok()
        })
        .collect()
}

#[test]
fn stamps_read_the_time_next_to_the_needle() {
    let console = "ros:~# \x1b[6n[   22.083125] ros: service crashy started (pid 265)\n\
                   [   24.5] ros: service crashy exited\n\
                   [   33.099229] ros: service crashy started (pid 428)\n";
    assert_eq!(
        stamps(console, "ros: service crashy started"),
        [22.083125, 33.099229]
    );
}

#[test]
fn services_and_workloads_run_restart_with_backoff_and_stop_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("os-config.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let opts = VmOptions {
        config: Some(cfg),
        ..Default::default()
    };
    let mut vm = Vm::boot("containers-run-restart-stop", &opts).unwrap();
    vm.wait_ready(BOOT).unwrap();
    let console = vm.console_text();
    let setup_done = console
        .find("ros: service setup exited (status 0); not restarted")
        .expect("the one-shot finished before ready");
    let syslog_started = console
        .find("ros: service syslog started")
        .expect("syslog started before ready");
    assert!(setup_done < syslog_started, "one-shot before its dependent");

    // (a) the service in the system namespace, the workload in the user one, both running.
    let sys_tasks = vm.poll(&format!("{SYSTEM_CTR} t ls"), BOOT, |o| {
        running_pid(o, "syslog").is_some()
    });
    let old_pid = running_pid(&sys_tasks, "syslog")
        .unwrap_or_else(|| panic!("syslog not running:\n{sys_tasks}"));
    let sys_containers = vm.succeed(&format!("{SYSTEM_CTR} c ls")).unwrap();
    assert!(sys_containers.contains("syslog"), "{sys_containers}");
    let user_tasks = vm.poll("ctr -n user t ls", BOOT, |o| {
        running_pid(o, "spin").is_some()
    });
    assert!(running_pid(&user_tasks, "spin").is_some(), "{user_tasks}");
    let user_containers = vm.succeed("ctr -n user c ls").unwrap();
    assert!(user_containers.contains("spin"), "{user_containers}");
    assert!(
        !user_containers.contains("syslog"),
        "namespaces are apart:\n{user_containers}"
    );
    assert!(!user_containers.contains("spin2"), "{user_containers}");
    vm.wait_for_console(
        "ros: workload spin2: not created: limits.user.max_containers = 1 reached",
        Duration::from_secs(1),
    )
    .unwrap();
    vm.succeed("test -s /var/log/ros/syslog.log").unwrap();
    vm.succeed("grep -q 'stdout set up' /var/log/ros/setup.log")
        .unwrap();
    // The workload's task lands inside the fence.
    let cg = vm
        .succeed("cat /proc/$(ctr -n user t ls | awk '$1==\"spin\"{print $2}')/cgroup")
        .unwrap();
    assert!(cg.contains("/ros/user/user/spin"), "{cg}");

    // (b) a killed service comes back with a new pid, and the restart is logged.
    vm.succeed(&format!("kill -9 {old_pid}")).unwrap();
    let sys_tasks = vm.poll(&format!("{SYSTEM_CTR} t ls"), BOOT, |o| {
        running_pid(o, "syslog").is_some_and(|p| p != old_pid)
    });
    let new_pid = running_pid(&sys_tasks, "syslog");
    assert!(
        new_pid.is_some_and(|p| p != old_pid),
        "syslog not back:\n{sys_tasks}"
    );
    vm.wait_for_console(
        "ros: service syslog exited (status 137); restart 1 in 1s",
        Duration::from_secs(10),
    )
    .unwrap();
    let log = vm.succeed("cat /var/log/ros/syslog.log").unwrap();
    assert!(log.contains("restart 1 in 1s"), "{log}");

    // A killed user containerd is restarted by PID 1; the workload's shim kept it running, and
    // its supervisor reconnects (the ordered stop below still reaches it).
    vm.succeed("kill -9 $(ps -o pid,args | awk '/containerd-user.toml/ && !/awk/ {print $1}')")
        .unwrap();
    vm.wait_for_console(
        "ros: containerd user exited (killed by signal 9); restart 1 in 1s",
        Duration::from_secs(10),
    )
    .unwrap();
    let user_tasks = vm.poll("ctr -n user t ls", BOOT, |o| {
        running_pid(o, "spin").is_some()
    });
    assert!(running_pid(&user_tasks, "spin").is_some(), "{user_tasks}");

    // (c) the crash loop backs off: 1 s, 2 s, 4 s between restarts.
    vm.wait_for_console(
        "ros: service crashy exited (status 1); restart 4 in 8s",
        Duration::from_secs(60),
    )
    .unwrap();
    let console = vm.console_text();
    let starts = stamps(&console, "ros: service crashy started");
    let crashy: Vec<&str> = console.lines().filter(|l| l.contains("crashy")).collect();
    assert!(starts.len() >= 4, "{starts:?} from:\n{}", crashy.join("\n"));
    let gaps: Vec<f64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    for (gap, want) in gaps.iter().zip([1.0, 2.0, 4.0]) {
        assert!(*gap >= want, "restart gaps {gaps:?}");
    }

    // (d) a service's shim dying ends its task; the service is restarted by its policy.
    let syslog_pid = running_pid(
        &vm.succeed(&format!("{SYSTEM_CTR} t ls")).unwrap(),
        "syslog",
    )
    .expect("syslog running");
    let shim = vm
        .succeed(&format!(
            "awk '/^PPid:/ {{print $2}}' /proc/{syslog_pid}/status"
        ))
        .unwrap();
    let shim = shim.trim();
    let args = vm
        .succeed(&format!("tr '\\0' ' ' < /proc/{shim}/cmdline"))
        .unwrap();
    assert!(
        args.contains("containerd-shim-runc-v2") && args.contains("-id syslog"),
        "syslog's parent is its shim: {args}"
    );
    vm.succeed(&format!("kill -9 {shim}")).unwrap();
    let sys_tasks = vm.poll(&format!("{SYSTEM_CTR} t ls"), BOOT, |o| {
        running_pid(o, "syslog").is_some_and(|p| p != syslog_pid)
    });
    assert!(
        running_pid(&sys_tasks, "syslog").is_some_and(|p| p != syslog_pid),
        "syslog not back after its shim died:\n{sys_tasks}"
    );

    // (e) poweroff: the workload, then the services, then the containerds.
    vm.send("poweroff").unwrap();
    vm.wait_for_console("ros: shutdown complete", Duration::from_secs(120))
        .unwrap();
    vm.wait_exit(Duration::from_secs(30)).unwrap();
    let text = vm.console_text();
    let at = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("no `{needle}` on the console"))
    };
    let workload = at("ros: workload spin stopped");
    let service = at("ros: service syslog stopped");
    let containerd = at("ros: containerd system stopped");
    assert!(workload < service && service < containerd, "stop order");
    assert!(at("ros: containerd user stopped") < at("ros: shutdown complete"));
    vm.passed();
}
