//! VM test of the user side at scale (issue: containerd, the fence): one boot asks for 25
//! workloads under `max_containers = 20`; 20 run and each of the other 5 is refused with an error
//! naming the limit. Every container of the user containerd lands inside the fence `/ros/user`:
//! ros's workloads, a plain `ctr run`, and a `ctr run` that asks for a cgroup outside it.
//! Four workloads share one shim (`shim = "shared"`, runtime `io.containerd.ros.v2`), started in
//! the same burst as the rest; the others have one each. Killing the user containerd while a
//! shared workload dies brings both back, the workload into the same shim and its mates
//! untouched; turning off the one the shared shim was started for leaves it and the rest
//! running.

use ros_tests::{running_pid, Vm, VmOptions};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(240);
const ASKED: usize = 25;
const MAX: usize = 20;
/// w01..w04 ask for the shared workload shim; the others have their own.
const SHARED: usize = 4;

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
        if i <= SHARED {
            c.push_str("shim = \"shared\"\n");
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

/// `NAME SHIM_PID` of each running user task (a task's first process is the shim's child).
const TASK_SHIMS: &str = "ctr -n user t ls | awk 'NR > 1 && $3 == \"RUNNING\" {print $1, $2}' | \
     while read n p; do echo $n $(awk '/^PPid:/ {print $2}' /proc/$p/status); done";

/// The shim pid of each running task.
fn task_shims(vm: &mut Vm) -> BTreeMap<String, u32> {
    let out = vm.succeed(TASK_SHIMS).unwrap();
    out.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_string(), f.next()?.parse().ok()?))
        })
        .collect()
}

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

    // w01..w04 share one shim, though started in a burst on a starved CPU (runc's own `start`
    // would at times give the group a second shim on the same socket); every other workload has
    // its own; all shims run outside the fence, with the daemon.
    let shims = task_shims(&mut vm);
    let shared: BTreeSet<u32> = (1..=SHARED)
        .filter_map(|i| shims.get(&format!("w{i:02}")).copied())
        .collect();
    eprintln!(
        "[admission] {SHARED} shared workloads in {} shim(s)",
        shared.len()
    );
    assert_eq!(shared.len(), 1, "{shims:?}");
    let shared_shim = *shared.iter().next().unwrap();
    let runtimes = vm
        .succeed("for w in w01 w04 w05; do ctr -n user c info $w | grep -A1 '\"Runtime\"' | tail -n1; done")
        .unwrap();
    assert_eq!(
        runtimes.matches("io.containerd.ros.v2").count(),
        2,
        "{runtimes}"
    );
    assert_eq!(
        runtimes.matches("io.containerd.runc.v2").count(),
        1,
        "{runtimes}"
    );
    // Every shared bundle names the one socket, and it is the one that shim listens on.
    let addresses = vm
        .succeed(
            "for w in w01 w02 w03 w04; do \
             cat /run/containerd/io.containerd.runtime.v2.task/user/$w/address; echo; done | sort -u",
        )
        .unwrap();
    assert_eq!(addresses.lines().count(), 1, "{addresses}");
    let socket = addresses.trim().trim_start_matches("unix://").to_string();
    // The shim's view of its network namespace's unix sockets: Num RefCount Protocol Flags Type
    // St Inode Path; flags 00010000 = listening.
    vm.succeed(&format!(
        "inode=$(awk '$4 == \"00010000\" && $8 == \"{socket}\" {{print $7}}' /proc/{shared_shim}/net/unix); \
         test -n \"$inode\" && ls -l /proc/{shared_shim}/fd | grep -q \"socket:\\[$inode\\]\""
    ))
    .unwrap();
    let own: Vec<u32> = shims
        .iter()
        .filter(|(id, _)| id.starts_with('w') && id.as_str() > "w04")
        .map(|(_, p)| *p)
        .collect();
    let distinct: BTreeSet<u32> = own.iter().copied().collect();
    assert_eq!(distinct.len(), own.len(), "one shim each: {shims:?}");
    assert!(distinct.is_disjoint(&shared), "{shims:?}");
    for pid in shared.iter().chain(own.iter().take(1)) {
        assert_eq!(
            cgroup_of(&mut vm, *pid),
            "0::/ros/runtime/containerd",
            "shim {pid}"
        );
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

    // Kill the user containerd and, while it is down, a shared workload: both come back.
    let before_kill = vm.succeed("ctr -n user t ls").unwrap();
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
    // The shared workload came back into its group's shim, next to its untouched mates.
    let back = task_shims(&mut vm);
    for i in 1..=SHARED {
        let id = format!("w{i:02}");
        assert_eq!(back.get(&id), Some(&shared_shim), "{id}: {back:?}");
    }
    for id in ["w03", "w04"] {
        assert_eq!(
            running_pid(&tasks, id),
            running_pid(&before_kill, id),
            "{id}"
        );
    }
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

    // Turning off the workload the shared shim was started for (its bundle goes) leaves the
    // shim and the workloads in it running.
    let shims = task_shims(&mut vm);
    let shim = shims["w03"];
    let args = vm
        .succeed(&format!("tr '\\0' ' ' < /proc/{shim}/cmdline"))
        .unwrap();
    let first = args
        .split_whitespace()
        .skip_while(|a| *a != "-id")
        .nth(1)
        .unwrap_or_else(|| panic!("no -id: {args}"))
        .to_string();
    let mates: Vec<&String> = shims
        .iter()
        .filter(|(id, p)| **p == shim && **id != first)
        .map(|(id, _)| id)
        .collect();
    let tasks_before_off = vm.succeed("ctr -n user t ls").unwrap();
    vm.succeed(&format!("ros config set workloads.{first}.enabled false"))
        .unwrap();
    let after = vm.poll("ctr -n user t ls", BOOT, |o| {
        running_pid(o, &first).is_none()
    });
    assert!(
        running_pid(&after, &first).is_none(),
        "{first} still there:\n{after}"
    );
    vm.succeed(&format!("kill -0 {shim}")).unwrap();
    let now = task_shims(&mut vm);
    for id in &mates {
        assert_eq!(
            now.get(*id),
            Some(&shim),
            "{id} kept running in shim {shim}: {now:?}"
        );
        assert_eq!(
            running_pid(&after, id),
            running_pid(&tasks_before_off, id),
            "{id}"
        );
    }
    vm.poweroff().unwrap();
    vm.passed();
}
