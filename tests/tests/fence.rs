//! VM test of the user fence (DESIGN.md: every workload inside `/ros/user`, whose
//! `[limits.user]` memory and pids bound all workloads together). One boot carries a system
//! service and three unlimited workloads: two memory hogs that each stay under the fence but
//! together exceed it, and a fork bomb. The fence OOM-kills a hog and refuses the bomb's forks,
//! while the service, the debug shell and the system containerd carry on. (The fence is one
//! budget: once the bomb fills it, the surviving hog's next `sleep` is refused too and it ends.)

use ros_tests::{running_pid, Vm, VmOptions};
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(180);
const SYSTEM_CTR: &str = "ctr -a /run/ros/containerd-system.sock -n system";
const FENCE: &str = "/sys/fs/cgroup/ros/user";
const FENCE_MEMORY: u64 = 256 << 20;
const FENCE_PIDS: u64 = 200;

// Each hog holds 150 MiB in busybox `tail` (no newline in /dev/zero: it buffers everything) and
// then feeds it a byte a second, so the pipeline ends (status 137) once `tail` is killed.
const CONFIG: &str = r#"version = 1

[services.syslog]
image = "ros/syslog"
privileged = true
net = "host"
restart = "always"

[workloads.hog1]
image = "ros/console"
entrypoint = []
command = ["/bin/busybox", "sh", "-c", "{ head -c 157286400 /dev/zero; while sleep 1; do printf x; done; } | tail >/dev/null"]
restart = "no"
net = "none"
stop_timeout_s = 2

[workloads.hog2]
image = "ros/console"
entrypoint = []
command = ["/bin/busybox", "sh", "-c", "{ head -c 157286400 /dev/zero; while sleep 1; do printf x; done; } | tail >/dev/null"]
restart = "no"
net = "none"
stop_timeout_s = 2

# Starts after the hogs and gives them time to fork their pipelines before the pids run out.
# busybox sh exits at its first failed fork, so the forking loop runs in a subshell that the
# task's shell starts again (with the pid the dead one freed) each time: the fence stays full
# and its forks keep failing.
[workloads.bomb]
image = "ros/console"
entrypoint = []
command = ["/bin/busybox", "sh", "-c", "sleep 10; while true; do (while true; do /bin/busybox sleep 1000 & done) & wait $!; done"]
restart = "no"
net = "none"
stop_timeout_s = 2
depends_on = ["hog1", "hog2"]

[limits.user]
memory = "256MiB"
pids = 200
"#;

/// The value of `key` in a flat-keyed cgroup file (`memory.events`, `pids.events`).
fn field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next() == Some(key)).then(|| f.next()?.parse().ok())?
    })
}

#[test]
fn user_fence_bounds_workload_memory_and_pids_and_spares_the_system() {
    let wall = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("os-config.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let opts = VmOptions {
        config: Some(cfg),
        mem_mib: 1024,
        ..Default::default()
    };
    let mut vm = Vm::boot("fence-memory-pids", &opts).unwrap();
    vm.wait_ready(BOOT).unwrap();

    // The fence carries the configured limits.
    let max = vm
        .succeed(&format!("cat {FENCE}/memory.max {FENCE}/pids.max"))
        .unwrap();
    assert_eq!(
        max.split_whitespace().collect::<Vec<_>>(),
        [FENCE_MEMORY.to_string(), FENCE_PIDS.to_string()],
        "{max}"
    );
    let sys_tasks = vm.poll(&format!("{SYSTEM_CTR} t ls"), BOOT, |o| {
        running_pid(o, "syslog").is_some()
    });
    let syslog_pid = running_pid(&sys_tasks, "syslog")
        .unwrap_or_else(|| panic!("syslog not running:\n{sys_tasks}"));

    // Memory: 2 × 150 MiB does not fit in 256 MiB; the fence's OOM killer takes a hog.
    let events = vm.poll(
        &format!("cat {FENCE}/memory.events"),
        Duration::from_secs(240),
        |o| field(o, "oom_kill").is_some_and(|n| n >= 1),
    );
    assert!(
        field(&events, "oom_kill").is_some_and(|n| n >= 1),
        "no OOM kill in the fence:\n{events}"
    );
    let killed = vm
        .wait_for_console(
            "exited (status 137); not restarted",
            Duration::from_secs(60),
        )
        .unwrap();
    assert!(
        killed.contains("ros: workload hog1") || killed.contains("ros: workload hog2"),
        "{killed}"
    );
    eprintln!("[fence] {}", killed.trim());
    let current: u64 = vm
        .succeed(&format!("cat {FENCE}/memory.current"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(current <= FENCE_MEMORY, "memory.current {current}");

    // pids: the bomb runs into pids.max, and the fence never holds more.
    let events = vm.poll(
        &format!("cat {FENCE}/pids.events"),
        Duration::from_secs(180),
        |o| field(o, "max").is_some_and(|n| n > 0),
    );
    let refused_before = field(&events, "max").unwrap_or(0);
    assert!(refused_before > 0, "pids.max never hit:\n{events}");
    for _ in 0..3 {
        let pids: u64 = vm
            .succeed(&format!("cat {FENCE}/pids.current"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        eprintln!("[fence] pids.current {pids}");
        assert!(pids <= FENCE_PIDS, "pids.current {pids}");
        assert!(
            pids >= FENCE_PIDS / 2,
            "the bomb did not fill the fence: {pids}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }

    // Meanwhile the OS side is untouched: the shell answers, syslog runs with the same pid and
    // was never restarted.
    let (status, out) = vm.exec("echo alive", Duration::from_secs(60)).unwrap();
    assert_eq!((status, out.trim()), (0, "alive"));
    let sys_tasks = vm.succeed(&format!("{SYSTEM_CTR} t ls")).unwrap();
    assert_eq!(
        running_pid(&sys_tasks, "syslog"),
        Some(syslog_pid),
        "{sys_tasks}"
    );
    let console = vm.console_text();
    assert!(
        !console.contains("ros: service syslog exited"),
        "syslog restarted"
    );
    // ... while the bomb still runs and keeps being refused.
    let user_tasks = vm.succeed("ctr -n user t ls").unwrap();
    assert!(running_pid(&user_tasks, "bomb").is_some(), "{user_tasks}");
    let events = vm.succeed(&format!("cat {FENCE}/pids.events")).unwrap();
    let refused_after = field(&events, "max").unwrap_or(0);
    assert!(
        refused_after > refused_before,
        "the bomb stopped forking: max {refused_before} -> {refused_after}"
    );

    eprintln!("[fence] user tasks:\n{user_tasks}");
    for l in console.lines().filter(|l| l.contains("ros: workload")) {
        eprintln!("[fence] {l}");
    }
    eprintln!(
        "[fence] memory.events:\n{}",
        vm.succeed(&format!("cat {FENCE}/memory.events")).unwrap()
    );
    eprintln!("[fence] pids.events: max {refused_before} -> {refused_after}");

    vm.poweroff().unwrap();
    eprintln!("[fence] wall {:.1}s", wall.elapsed().as_secs_f64());
    vm.passed();
}
