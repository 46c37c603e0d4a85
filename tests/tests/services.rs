//! VM test of the node the compiled-in defaults make (no config file at all): the syslog and
//! console services run in the system namespace; a message sent to `/dev/log` on the host lands
//! in the rotated `/var/log/messages`, and so do PID 1's own log lines; the console service gives ttyS0 a root shell with the
//! `ros` CLI; poweroff stops both before the containerds.

use ros_tests::{running_pid, Vm, VmOptions};
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(180);
const SYSTEM_CTR: &str = "ctr -a /run/ros/containerd-system.sock -n system";

#[test]
fn defaults_run_syslog_and_a_console_shell() {
    let mut vm = Vm::boot("services-defaults", &VmOptions::default()).unwrap();
    vm.wait_ready(BOOT).unwrap();
    let tasks = vm.poll(&format!("{SYSTEM_CTR} t ls"), BOOT, |o| {
        running_pid(o, "syslog").is_some() && running_pid(o, "console").is_some()
    });
    assert!(running_pid(&tasks, "syslog").is_some(), "{tasks}");
    assert!(running_pid(&tasks, "console").is_some(), "{tasks}");

    // syslog: the host's /dev/log is its socket, and the file is the host's.
    vm.succeed("test -S /dev/log").unwrap();
    vm.succeed("logger -t probe hello-from-the-host").unwrap();
    let messages = vm.poll("cat /var/log/messages", Duration::from_secs(30), |o| {
        o.contains("hello-from-the-host")
    });
    assert!(
        messages.contains("probe") && messages.contains("hello-from-the-host"),
        "{messages}"
    );

    // The console: a shell on ttyS0 (the kernel's console) that runs the ros CLI. Typed input
    // echoes, so look for the computed value, which the typed line does not contain.
    let mark = vm.console_text().len();
    vm.send_console("echo console-$((6*7)); ros os version")
        .unwrap();
    vm.wait_for_console_from("console-42", mark, Duration::from_secs(30))
        .unwrap();
    vm.wait_for_console_from(
        &format!("ros {}", env!("CARGO_PKG_VERSION")),
        mark,
        Duration::from_secs(30),
    )
    .unwrap();
    // It is the console container's shell, not a debug shell of PID 1.
    vm.send_console("echo cg=@$(cut -d: -f3 /proc/self/cgroup)@")
        .unwrap();
    let line = vm
        .wait_for_console_from("cg=@/", mark, Duration::from_secs(30))
        .unwrap();
    assert!(!line.contains("/ros/init"), "{line}");

    // The system containerd killed, and syslog with it while it is down: PID 1 restarts the
    // daemon, the console's shim kept it running, and syslog comes back with a new pid.
    let syslog = running_pid(&tasks, "syslog").unwrap();
    let console = running_pid(&tasks, "console").unwrap();
    vm.succeed(&format!(
        "kill -9 $(ps -o pid,args | awk '/containerd-system.toml/ && !/awk/ {{print $1}}') {syslog}"
    ))
    .unwrap();
    vm.wait_for_console(
        "ros: containerd system exited (killed by signal 9)",
        Duration::from_secs(20),
    )
    .unwrap();
    let tasks = vm.poll(&format!("{SYSTEM_CTR} t ls"), BOOT, |o| {
        running_pid(o, "syslog").is_some_and(|p| p != syslog)
    });
    assert!(
        running_pid(&tasks, "syslog").is_some_and(|p| p != syslog),
        "{tasks}"
    );
    assert_eq!(running_pid(&tasks, "console"), Some(console), "{tasks}");
    // PID 1 logs to syslog whenever it is there (also after syslog's restart): its lines
    // about the console, killed now, are in the file.
    vm.succeed("sleep 2").unwrap();
    vm.succeed(&format!("kill -9 {console}")).unwrap();
    let messages = vm.poll("cat /var/log/messages", Duration::from_secs(30), |o| {
        o.contains("ros[1]: service console exited")
    });
    assert!(
        messages.contains("ros[1]: service console exited (status 137); restart 1 in 1s"),
        "{messages}"
    );
    let tasks = vm.poll(&format!("{SYSTEM_CTR} t ls"), BOOT, |o| {
        running_pid(o, "console").is_some_and(|p| p != console)
    });
    assert!(running_pid(&tasks, "console").is_some(), "{tasks}");

    vm.send("poweroff").unwrap();
    vm.wait_for_console("ros: shutdown complete", Duration::from_secs(120))
        .unwrap();
    vm.wait_exit(Duration::from_secs(30)).unwrap();
    let text = vm.console_text();
    let at = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("no `{needle}` on the console"))
    };
    let containerd = at("ros: containerd system stopped");
    assert!(at("ros: service console stopped") < containerd);
    assert!(at("ros: service syslog stopped") < containerd);
    vm.passed();
}
