//! VM tests of workload networking (issue 5): `net = "bridge"` (the workloads' default) on
//! `ros0` through the CNI plugins, as a user checks it by hand. Two boots:
//!
//! A (then a reboot of the same VM): a web workload publishing `8080:80/tcp` answers on the
//! guest's port 8080 and on the QEMU host through a `hostfwd` to it; a client workload reaches
//! it by address; workloads cannot reach a listener on the host unless `host_ports` lists its
//! port; a `kill -9` of the web workload restarts it with a fresh attachment at the same address
//! and no leaked lease or rule; after `reboot` the store and the nat table hold exactly the
//! running workloads.
//!
//! B: with `[network.workloads] isolate = true` two workloads cannot reach each other, while
//! the published port still answers from the QEMU host.

use ros_tests::{running_pid, Vm, VmOptions, NO_SERVICES};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(240);
/// host-local's store for `ros0` (cni::Paths::system: `/run/ros/cni/ipam/ros0`).
const IPAM: &str = "/run/ros/cni/ipam/ros0";
const SLEEPER: &str = r#"["/bin/busybox", "sh", "-c", "while true; do sleep 1; done"]"#;

/// `ctr t exec` in workload `name` with a fresh exec id.
fn in_workload(name: &str, cmd: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("ctr -n user t exec --exec-id t{n} {name} /bin/busybox {cmd}")
}

/// A shell command serving `text` over HTTP on `port` in the foreground.
fn httpd(text: &str, port: u16) -> String {
    format!(
        r#"["/bin/busybox", "sh", "-c", "mkdir -p /www && echo {text} > /www/index.html && exec /bin/busybox httpd -f -p {port} -h /www"]"#
    )
}

fn config_a() -> String {
    format!(
        r#"version = 1

[network.workloads]
host_ports = ["9998"]

[workloads.web]
image = "ros/console"
entrypoint = []
command = {web}
ports = ["8080:80/tcp"]
stop_timeout_s = 2

[workloads.client]
image = "ros/console"
entrypoint = []
command = {SLEEPER}
stop_timeout_s = 2
"#,
        web = httpd("hello-from-web", 80)
    )
}

fn config_b() -> String {
    format!(
        r#"version = 1

[network.workloads]
isolate = true

[workloads.a]
image = "ros/console"
entrypoint = []
command = {a}
ports = ["8081:80/tcp"]
stop_timeout_s = 2

[workloads.b]
image = "ros/console"
entrypoint = []
command = {b}
stop_timeout_s = 2
"#,
        a = httpd("hello-from-a", 80),
        b = httpd("hello-from-b", 80)
    )
}

/// A TCP port on the QEMU host's loopback that is free now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// `GET /` from the QEMU host to 127.0.0.1:`port` (a hostfwd into the guest); the whole
/// response, or the error.
fn http_get(port: u16) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Retries `http_get` until the body holds `want` or `timeout` passes; the last answer.
fn host_fetch(port: u16, want: &str, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = http_get(port);
        if got.as_deref().is_ok_and(|b| b.contains(want)) || Instant::now() >= deadline {
            return got;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Waits until every workload in `names` runs; returns `ctr t ls`.
fn wait_running(vm: &mut Vm, names: &[&str]) -> String {
    let tasks = vm.poll("ctr -n user t ls", BOOT, |o| {
        names.iter().all(|n| running_pid(o, n).is_some())
    });
    for n in names {
        assert!(
            running_pid(&tasks, n).is_some(),
            "{n} not running:\n{tasks}"
        );
    }
    tasks
}

/// The address ros gave workload `name`, read inside it (`ip -4 addr show dev eth0`).
fn address_in(vm: &mut Vm, name: &str) -> Ipv4Addr {
    let out = vm
        .succeed(&in_workload(name, "ip -4 -o addr show dev eth0"))
        .unwrap();
    let cidr = out
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap_or_else(|| panic!("no inet address in {name}:\n{out}"));
    cidr.split('/').next().unwrap_or("").parse().unwrap()
}

/// Runs `wget` inside workload `from`; its output and whether it succeeded.
fn wget_in(vm: &mut Vm, from: &str, url: &str) -> (bool, String) {
    let (status, out) = vm
        .exec(
            &in_workload(
                from,
                &format!("timeout 10 /bin/busybox wget -qO- -T 4 {url}"),
            ),
            Duration::from_secs(60),
        )
        .unwrap();
    (status == 0, out)
}

/// The addresses leased in host-local's store (its files other than its bookkeeping).
fn leases(vm: &mut Vm) -> Vec<Ipv4Addr> {
    let out = vm.succeed(&format!("ls {IPAM}")).unwrap();
    let mut ips: Vec<Ipv4Addr> = out
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    ips.sort();
    ips
}

/// The nat and filter rules ros and the plugins wrote (`iptables -S` of both tables).
fn rules(vm: &mut Vm) -> (String, String) {
    let nat = vm.succeed("iptables -t nat -S").unwrap();
    let filter = vm.succeed("iptables -S").unwrap();
    (nat, filter)
}

fn in_subnet(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    o[0] == 10 && o[1] == 88
}

/// Prints the console's workload-networking lines (driver start, attaches), for the record.
fn print_network_lines(vm: &Vm) {
    for l in vm.console_text().lines() {
        if l.contains("workload networking") || (l.contains(": network ") && l.contains("ros0")) {
            eprintln!("[{}] {}", vm.name(), l.trim());
        }
    }
}

/// Seconds of the console lines `ros: workload NAME: network … in X.XXXs`.
fn attach_times(console: &str) -> Vec<f64> {
    console
        .lines()
        .filter(|l| l.contains(": network ") && l.contains(" on ros0"))
        .filter_map(|l| l.rsplit(" in ").next()?.trim_end_matches('s').parse().ok())
        .collect()
}

#[test]
fn bridge_workloads_publish_ports_reach_each_other_are_fenced_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("os-config.toml");
    std::fs::write(&cfg, config_a()).unwrap();
    let port = free_port();
    let opts = VmOptions {
        config: Some(cfg),
        append: vec![NO_SERVICES.into()],
        nics: vec![format!("user,hostfwd=tcp:127.0.0.1:{port}-:8080")],
        no_reboot: false,
        ..Default::default()
    };
    let mut vm = Vm::boot("bridge-ports-fence-restart-reboot", &opts).unwrap();
    vm.wait_ready(BOOT).unwrap();
    let tasks = wait_running(&mut vm, &["web", "client"]);
    let t0 = Instant::now();

    // Addresses from the default subnet, the bridge as gateway, resolv.conf written for it.
    let web = address_in(&mut vm, "web");
    let client = address_in(&mut vm, "client");
    assert!(
        in_subnet(web) && in_subnet(client) && web != client,
        "{web} {client}"
    );
    let route = vm.succeed(&in_workload("client", "ip route")).unwrap();
    assert!(route.contains("default via 10.88.0.1 dev eth0"), "{route}");
    let hostname = vm.succeed(&in_workload("client", "hostname")).unwrap();
    assert_eq!(hostname.trim(), "client");
    vm.succeed(&in_workload(
        "client",
        "grep -q 'Written by ros' /etc/resolv.conf",
    ))
    .unwrap();
    let bridge = vm.succeed("ip -4 addr show dev ros0").unwrap();
    assert!(bridge.contains("inet 10.88.0.1/16"), "{bridge}");

    // The published port: from the guest (its uplink address, and its loopback), and from the
    // QEMU host through the hostfwd to the guest's 8080.
    let got = vm.poll(
        "wget -qO- -T 4 http://10.0.2.15:8080/",
        Duration::from_secs(60),
        |o| o.contains("hello-from-web"),
    );
    assert!(got.contains("hello-from-web"), "guest uplink:8080: {got}");
    let (status, lo) = vm
        .exec(
            "wget -qO- -T 4 http://127.0.0.1:8080/",
            Duration::from_secs(30),
        )
        .unwrap();
    let localnet = vm
        .succeed("cat /proc/sys/net/ipv4/conf/ros0/route_localnet")
        .unwrap();
    eprintln!(
        "[bridge] guest 127.0.0.1:8080 -> status {status}: {} (ros0 route_localnet = {})",
        lo.trim(),
        localnet.trim()
    );
    assert!(
        status == 0 && lo.contains("hello-from-web"),
        "guest 127.0.0.1:8080: {lo}"
    );
    let body = host_fetch(port, "hello-from-web", Duration::from_secs(60));
    assert!(
        body.as_deref().is_ok_and(|b| b.contains("hello-from-web")),
        "QEMU host 127.0.0.1:{port} (hostfwd to the guest's 8080): {body:?}"
    );

    // Workloads reach each other by address.
    let (ok, out) = wget_in(&mut vm, "client", &format!("http://{web}/"));
    assert!(
        ok && out.contains("hello-from-web"),
        "client -> web {web}: {out}"
    );

    // The host fence: a listener on the host answers a workload only on a host_ports port.
    vm.succeed(
        "mkdir -p /tmp/www && echo hello-from-host > /tmp/www/index.html && \
         httpd -p 9998 -h /tmp/www && httpd -p 9999 -h /tmp/www",
    )
    .unwrap();
    let own = vm.succeed("wget -qO- -T 4 http://10.88.0.1:9999/").unwrap();
    assert!(
        own.contains("hello-from-host"),
        "the host reaches its own listener: {own}"
    );
    let (ok, out) = wget_in(&mut vm, "client", "http://10.88.0.1:9998/");
    assert!(
        ok && out.contains("hello-from-host"),
        "host_ports 9998: {out}"
    );
    for url in ["http://10.88.0.1:9999/", "http://10.0.2.15:9999/"] {
        let (ok, out) = wget_in(&mut vm, "client", url);
        assert!(
            !ok && !out.contains("hello-from-host"),
            "{url} must be dropped: {out}"
        );
    }

    // State: one lease, one cached result and one namespace per running workload.
    let mut both = vec![web, client];
    both.sort();
    assert_eq!(leases(&mut vm), both);
    let results = vm
        .succeed("ls /run/ros/cni/results /run/ros/netns")
        .unwrap();
    for n in ["web.json", "client.json", "web", "client"] {
        assert!(results.split_whitespace().any(|f| f == n), "{n}: {results}");
    }
    let (nat_before, filter_before) = rules(&mut vm);
    assert!(nat_before.contains("--dport 8080"), "{nat_before}");
    eprintln!(
        "[bridge] checks on the first boot took {:.1}s; attach times {:?}",
        t0.elapsed().as_secs_f64(),
        attach_times(&vm.console_text())
    );

    // A crash: the web workload is restarted with a fresh attachment; nothing leaks.
    let old_pid = running_pid(&tasks, "web").unwrap();
    let mark = vm.console_text().len();
    vm.succeed(&format!("kill -9 {old_pid}")).unwrap();
    vm.wait_for_console_from(
        "ros: workload web exited (status 137); restart 1 in 1s",
        mark,
        Duration::from_secs(30),
    )
    .unwrap();
    vm.wait_for_console_from("ros: workload web: network ", mark, Duration::from_secs(60))
        .unwrap();
    let tasks = vm.poll("ctr -n user t ls", BOOT, |o| {
        running_pid(o, "web").is_some_and(|p| p != old_pid)
    });
    assert!(
        running_pid(&tasks, "web").is_some_and(|p| p != old_pid),
        "web not back:\n{tasks}"
    );
    let web2 = address_in(&mut vm, "web");
    eprintln!("[bridge] web's address before the crash {web}, after {web2}");
    assert_eq!(web2, web, "a restarted workload gets its address back");
    let mut both = vec![web2, client];
    both.sort();
    assert_eq!(
        leases(&mut vm),
        both,
        "the store holds exactly the running workloads"
    );
    let (nat_after, filter_after) = rules(&mut vm);
    assert_eq!(
        nat_after.lines().count(),
        nat_before.lines().count(),
        "nat rules after the restart:\n{nat_after}\nbefore:\n{nat_before}"
    );
    assert_eq!(
        filter_after.lines().count(),
        filter_before.lines().count(),
        "filter rules after the restart:\n{filter_after}\nbefore:\n{filter_before}"
    );
    if web2 != web {
        let stale = format!("{web}/");
        assert!(!nat_after.contains(&stale), "{nat_after}");
        assert!(!filter_after.contains(&stale), "{filter_after}");
    }
    let body = host_fetch(port, "hello-from-web", Duration::from_secs(60));
    assert!(
        body.as_deref().is_ok_and(|b| b.contains("hello-from-web")),
        "after the restart: {body:?}"
    );

    // Reboot: the ordered stop detaches both; the next boot starts clean.
    let mark = vm.console_text().len();
    let stop_started = Instant::now();
    vm.send("reboot").unwrap();
    vm.wait_for_console_from("ros: shutdown complete", mark, Duration::from_secs(120))
        .unwrap();
    eprintln!(
        "[bridge] reboot: shutdown complete after {:.1}s",
        stop_started.elapsed().as_secs_f64()
    );
    let stopping = vm.console_text()[mark..].to_string();
    assert!(!stopping.contains("network detach:"), "{stopping}");
    assert!(!stopping.contains("not stopped within"), "{stopping}");
    vm.wait_for_console_from("ros: ready in", mark, BOOT)
        .unwrap();
    wait_running(&mut vm, &["web", "client"]);
    let web3 = address_in(&mut vm, "web");
    let client3 = address_in(&mut vm, "client");
    let mut both = vec![web3, client3];
    both.sort();
    assert_eq!(leases(&mut vm), both, "no stale leases after the reboot");
    let (nat_rebooted, filter_rebooted) = rules(&mut vm);
    assert_eq!(
        nat_rebooted.lines().count(),
        nat_before.lines().count(),
        "nat rules after the reboot:\n{nat_rebooted}\nbefore:\n{nat_before}"
    );
    assert_eq!(
        filter_rebooted.lines().count(),
        filter_before.lines().count(),
        "filter rules after the reboot:\n{filter_rebooted}\nbefore:\n{filter_before}"
    );
    let body = host_fetch(port, "hello-from-web", Duration::from_secs(60));
    assert!(
        body.as_deref().is_ok_and(|b| b.contains("hello-from-web")),
        "after the reboot: {body:?}"
    );
    print_network_lines(&vm);
    let mark = vm.console_text().len();
    vm.send("poweroff").unwrap();
    vm.wait_for_console_from("ros: shutdown complete", mark, Duration::from_secs(120))
        .unwrap();
    vm.wait_exit(Duration::from_secs(30)).unwrap();
    let stopping = vm.console_text()[mark..].to_string();
    assert!(!stopping.contains("network detach:"), "{stopping}");
    vm.passed();
}

#[test]
fn isolated_workloads_cannot_reach_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("os-config.toml");
    std::fs::write(&cfg, config_b()).unwrap();
    let port = free_port();
    let opts = VmOptions {
        config: Some(cfg),
        append: vec![NO_SERVICES.into()],
        nics: vec![format!("user,hostfwd=tcp:127.0.0.1:{port}-:8081")],
        ..Default::default()
    };
    let mut vm = Vm::boot("bridge-isolate", &opts).unwrap();
    vm.wait_ready(BOOT).unwrap();
    wait_running(&mut vm, &["a", "b"]);
    let a = address_in(&mut vm, "a");
    let b = address_in(&mut vm, "b");
    assert!(in_subnet(a) && in_subnet(b) && a != b, "{a} {b}");
    // The host reaches both (isolation is between workloads only) ...
    let got = vm.poll(
        &format!("wget -qO- -T 4 http://{a}/"),
        Duration::from_secs(60),
        |o| o.contains("hello-from-a"),
    );
    assert!(got.contains("hello-from-a"), "host -> a: {got}");
    let got = vm.succeed(&format!("wget -qO- -T 4 http://{b}/")).unwrap();
    assert!(got.contains("hello-from-b"), "host -> b: {got}");
    // ... they do not reach each other ...
    let (ok, out) = wget_in(&mut vm, "b", &format!("http://{a}/"));
    assert!(
        !ok && !out.contains("hello-from-a"),
        "b -> a must be dropped: {out}"
    );
    let (ok, out) = wget_in(&mut vm, "a", &format!("http://{b}/"));
    assert!(
        !ok && !out.contains("hello-from-b"),
        "a -> b must be dropped: {out}"
    );
    // ... and a's published port still answers from the QEMU host.
    let body = host_fetch(port, "hello-from-a", Duration::from_secs(60));
    assert!(
        body.as_deref().is_ok_and(|b| b.contains("hello-from-a")),
        "QEMU host 127.0.0.1:{port} -> a: {body:?}"
    );
    print_network_lines(&vm);
    let rules = vm.succeed("iptables -S ROS-ADMIN").unwrap();
    assert!(
        rules
            .lines()
            .any(|l| l.contains("-i ros0 -o ros0") && l.ends_with("-j DROP")),
        "{rules}"
    );
    vm.poweroff().unwrap();
    vm.passed();
}
