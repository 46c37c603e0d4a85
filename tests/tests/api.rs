//! VM test of the admin API through the real `ros` CLI in the guest (issue: the ros admin API
//! and CLI). One boot (and one `ros reboot`) carries every check: live hostname and sysctl
//! changes; a workload added and removed with no other container restarting; an invalid set
//! refused with the history unchanged; rollback; 20 concurrent sets all landing; a network
//! change under `--try` that cuts the node's address and reverts by itself; `ros logs -f`
//! streaming a service's new line; service stop/start/restart and logs; a non-root user
//! refused; `ros reboot` and `ros poweroff`.

use ros_tests::registry::free_port;
use ros_tests::{running_pid, Vm, VmOptions};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(240);
const SYSTEM_CTR: &str = "ctr -a /run/ros/containerd-system.sock -n system";

const CONFIG: &str = r#"version = 1

[services.console]
enabled = false

# Prints a numbered line every second (for `ros logs -f`).
[services.ticker]
image = "ros/console"
entrypoint = []
command = ["/bin/busybox", "sh", "-c", "i=0; while true; do i=$((i+1)); echo tick-$i; sleep 1; done"]
net = "none"
stop_timeout_s = 2

[workloads.keep]
image = "ros/console"
entrypoint = []
command = ["/bin/busybox", "sleep", "100000"]
net = "none"
stop_timeout_s = 2
"#;

/// Whether the guest's web page answers through the QEMU host forward.
fn page_answers(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(3),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET / HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("node-up")
}

fn wait_page(port: u16, want: bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if page_answers(port) == want {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The pids of the running tasks named in `names`, from `ctr … t ls` in `ns`.
fn pids(vm: &mut Vm, ctr: &str, names: &[&str]) -> Vec<Option<u32>> {
    let tasks = vm.succeed(&format!("{ctr} t ls")).unwrap();
    names.iter().map(|n| running_pid(&tasks, n)).collect()
}

#[test]
fn the_cli_changes_the_live_node_safely() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("os-config.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let port = free_port();
    let opts = VmOptions {
        config: Some(cfg),
        nics: vec![format!("user,hostfwd=tcp:127.0.0.1:{port}-:8000")],
        no_reboot: false,
        ..Default::default()
    };
    let mut vm = Vm::boot("api-cli", &opts).unwrap();
    vm.wait_ready(BOOT).unwrap();
    let tasks = vm.poll(&format!("{SYSTEM_CTR} t ls"), BOOT, |o| {
        running_pid(o, "ticker").is_some() && running_pid(o, "syslog").is_some()
    });
    assert!(running_pid(&tasks, "ticker").is_some(), "{tasks}");
    vm.poll("ctr -n user t ls", BOOT, |o| {
        running_pid(o, "keep").is_some()
    });
    let before_sys = pids(&mut vm, SYSTEM_CTR, &["syslog", "ticker"]);
    let before_keep = pids(&mut vm, "ctr -n user", &["keep"]);

    // The socket is root's alone.
    assert_eq!(
        vm.succeed("stat -c %a /run/ros/ros.sock").unwrap().trim(),
        "600"
    );

    // Hostname and a sysctl, live; the CLI says what changed.
    let out = vm.succeed("ros config set hostname api-node").unwrap();
    assert!(out.contains("hostname: ros -> api-node"), "{out}");
    assert_eq!(vm.succeed("hostname").unwrap(), "api-node\n");
    vm.succeed("ros config set sysctl.vm.swappiness=27")
        .unwrap();
    assert_eq!(vm.succeed("cat /proc/sys/vm/swappiness").unwrap(), "27\n");

    // An invalid set is refused naming the key; history is unchanged.
    let history = vm.succeed("ros config history").unwrap();
    let (code, out) = vm
        .exec("ros config set network.interfaces.default.mtu big", BOOT)
        .unwrap();
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("network.interfaces.default.mtu"), "{out}");
    assert_eq!(vm.succeed("ros config history").unwrap(), history);
    // --dry-run prints the plan and changes nothing.
    let out = vm
        .succeed("ros config set --dry-run hostname dry-node")
        .unwrap();
    assert!(out.contains("dry-node"), "{out}");
    assert_eq!(vm.succeed("hostname").unwrap(), "api-node\n");

    // Rollback restores the previous generation live (as a new generation).
    vm.succeed("ros config set hostname second-name").unwrap();
    vm.succeed("ros config rollback").unwrap();
    assert_eq!(vm.succeed("hostname").unwrap(), "api-node\n");

    assert_eq!(
        vm.succeed("ros config get hostname").unwrap().trim(),
        "api-node"
    );
    // A confirmed trial stays.
    vm.succeed("ros config set --try 60s hostname tried && ros config confirm")
        .unwrap();
    vm.succeed("sleep 1").unwrap();
    assert_eq!(vm.succeed("hostname").unwrap(), "tried\n");
    vm.succeed("ros config set hostname api-node").unwrap();

    // A workload added starts; removed, it stops; nothing else restarts.
    let out = vm
        .succeed(
            r#"ros config set workloads.extra '{ image = "ros/console", entrypoint = [], command = ["/bin/busybox", "sleep", "100000"], net = "none", stop_timeout_s = 1 }'"#,
        )
        .unwrap();
    assert!(out.contains("workload extra started"), "{out}");
    let extra = pids(&mut vm, "ctr -n user", &["extra"]);
    assert!(extra[0].is_some(), "extra not running");
    let out = vm.succeed("ros ps").unwrap();
    assert!(
        out.lines()
            .any(|l| l.contains("extra") && l.contains("running")),
        "{out}"
    );
    let json = vm.succeed("ros ps -o json").unwrap();
    assert!(json.contains("\"extra\""), "{json}");
    let out = vm.succeed("ros config unset workloads.extra").unwrap();
    assert!(out.contains("workload extra stopped"), "{out}");
    let user = vm.succeed("ctr -n user t ls").unwrap();
    assert!(running_pid(&user, "extra").is_none(), "{user}");
    assert_eq!(pids(&mut vm, SYSTEM_CTR, &["syslog", "ticker"]), before_sys);
    assert_eq!(pids(&mut vm, "ctr -n user", &["keep"]), before_keep);

    // 20 concurrent sets of different keys: every one lands.
    let gens_before = vm.succeed("ros config history | wc -l").unwrap();
    vm.succeed(
        "for i in $(seq 1 20); do ros config set registries.r$i.example:5000.insecure true >/tmp/set-$i.log 2>&1 & done; wait",
    )
    .unwrap();
    let local = vm.succeed("ros config export --local").unwrap();
    for i in 1..=20 {
        assert!(
            local.contains(&format!("r{i}.example:5000")),
            "r{i} lost:\n{local}"
        );
    }
    let gens_after = vm.succeed("ros config history | wc -l").unwrap();
    let n = |s: &str| s.trim().parse::<usize>().unwrap();
    assert_eq!(n(&gens_after), n(&gens_before) + 20);

    // `ros logs -f` streams a line the ticker prints after it started.
    let last = vm
        .succeed("tail -n 1 /var/log/ros/ticker.log | grep -o 'tick-[0-9]*'")
        .unwrap();
    let last: u32 = last.trim().trim_start_matches("tick-").parse().unwrap();
    vm.succeed("(ros logs -f > /tmp/follow.log 2>&1 &) ; sleep 4; pkill -f 'ros logs -f'; true")
        .unwrap();
    let follow = vm.succeed("cat /tmp/follow.log").unwrap();
    let newer = follow
        .lines()
        .filter_map(|l| l.split("tick-").nth(1))
        .filter_map(|n| n.trim().parse::<u32>().ok())
        .any(|i| i > last + 1);
    assert!(newer, "no new tick after tick-{last}:\n{follow}");

    // Services: list, stop, start, restart, logs.
    let list = vm.succeed("ros service list").unwrap();
    assert!(list.contains("ticker") && list.contains("syslog"), "{list}");
    vm.succeed("ros service stop ticker").unwrap();
    assert!(running_pid(
        &vm.succeed(&format!("{SYSTEM_CTR} t ls")).unwrap(),
        "ticker"
    )
    .is_none());
    assert!(vm.succeed("ros service list").unwrap().contains("stopped"));
    vm.succeed("ros service start ticker").unwrap();
    let ticker = pids(&mut vm, SYSTEM_CTR, &["ticker"])[0];
    assert!(ticker.is_some());
    vm.succeed("ros service restart ticker").unwrap();
    let again = pids(&mut vm, SYSTEM_CTR, &["ticker"])[0];
    assert!(again.is_some() && again != ticker, "{again:?} {ticker:?}");
    let logs = vm.succeed("ros service logs ticker --tail 3").unwrap();
    assert!(logs.contains("tick-"), "{logs}");
    let (code, out) = vm.exec("ros service stop nope", BOOT).unwrap();
    assert_ne!(code, 0);
    assert!(out.contains("nope"), "{out}");

    // A non-root user is refused.
    vm.succeed("grep -q '^nobody:' /etc/passwd || echo 'nobody:x:65534:65534:nobody:/:/bin/sh' >> /etc/passwd")
        .unwrap();
    let (code, out) = vm.exec("su nobody -s /bin/sh -c 'ros ps'", BOOT).unwrap();
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("root"), "{out}");

    // A network change under --try that cuts the node's address reverts by itself.
    vm.succeed(
        "mkdir -p /tmp/www && echo node-up > /tmp/www/index.html && httpd -p 8000 -h /tmp/www",
    )
    .unwrap();
    assert!(
        wait_page(port, true, Duration::from_secs(30)),
        "page not up"
    );
    let out = vm
        .succeed("ros config set --try 20s network.interfaces.default.dhcp false")
        .unwrap();
    assert!(out.contains("20"), "{out}");
    let addr = vm.succeed("ip -4 addr show eth0").unwrap();
    assert!(!addr.contains("inet "), "the address stayed:\n{addr}");
    assert!(!page_answers(port), "the page answered without an address");
    assert!(
        wait_page(port, true, Duration::from_secs(90)),
        "the node did not come back after its trial"
    );
    let history = vm.succeed("ros config history").unwrap();
    assert!(history.contains("bad"), "{history}");
    assert!(vm
        .succeed("ip -4 addr show eth0")
        .unwrap()
        .contains("inet "));

    // Status, version, and the reboot/poweroff verbs.
    let status = vm.succeed("ros os status").unwrap();
    assert!(status.contains("api-node"), "{status}");
    assert!(vm.succeed("ros os version").unwrap().starts_with("ros "));
    let mark = vm.console_text().len();
    vm.succeed("ros reboot").unwrap();
    vm.wait_for_console_from("ros: shutdown complete", mark, Duration::from_secs(90))
        .unwrap();
    vm.wait_for_console_from("ros: ready in", mark, BOOT)
        .unwrap();
    // The API starts just after ready: wait until it answers before asking it to power off.
    vm.poll("ros os status >/dev/null 2>&1 && echo api-up", BOOT, |o| {
        o.contains("api-up")
    });
    let mark = vm.console_text().len();
    vm.send("ros poweroff").unwrap();
    vm.wait_for_console_from("ros: shutdown complete", mark, Duration::from_secs(90))
        .unwrap();
    vm.wait_exit(Duration::from_secs(30)).unwrap();
    vm.passed();
}
