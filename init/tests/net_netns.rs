//! Host integration tests of the network code (init/src/net) in throwaway network namespaces:
//! veth pairs between a "client" namespace, where ros's own code runs (rtnetlink, UDP DHCP
//! client, the reconciler), and "server" namespaces, one with a real dnsmasq as DHCP server and
//! one whose DHCP server is silent. Traffic never leaves those namespaces.
//!
//! They need root, iproute2 and dnsmasq (Debian `dnsmasq-base`); without root they are skipped
//! with a message. Namespaces and dnsmasq are cleaned up by Drop guards, also on failure.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ros::config::schema::{Interface, Match, NetworkWait, Route};
use ros::net::dhcp::DhcpEvent;
use ros::net::host::{Host, HostError, SystemHost};
use ros::net::{LinkState, NetService, Settings};

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs a command, panicking with its output when it fails.
fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => panic!(
            "{}: {}\n{}",
            args.join(" "),
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("{}: {e}", args.join(" ")),
    }
}

/// A network namespace, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(role: &str) -> Netns {
        let name = format!(
            "ros-t{}-{}-{role}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        run(&["ip", "netns", "add", &name]);
        run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    /// `ip -n NS ARGS…`
    fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "-n", self.name.as_str()];
        full.extend_from_slice(args);
        run(&full)
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A veth pair: `client_if` (with `mac`) in `client`, `server_if` in `server` with `server_addr`.
fn veth(
    client: &Netns,
    client_if: &str,
    mac: &str,
    server: &Netns,
    server_if: &str,
    server_addr: &[&str],
) {
    run(&[
        "ip",
        "link",
        "add",
        client_if,
        "address",
        mac,
        "netns",
        &client.name,
        "type",
        "veth",
        "peer",
        "name",
        server_if,
        "netns",
        &server.name,
    ]);
    for a in server_addr {
        server.ip(&["addr", "add", a, "dev", server_if]);
    }
    server.ip(&["link", "set", server_if, "up"]);
}

/// dnsmasq as DHCP server in a namespace, killed on drop.
struct Dnsmasq {
    child: Child,
    log: PathBuf,
    leases: PathBuf,
}

impl Dnsmasq {
    fn start(ns: &Netns, dir: &Path, args: &[&str]) -> Dnsmasq {
        let log = dir.join("dnsmasq.log");
        let leases = dir.join("dnsmasq.leases");
        let pid = dir.join("dnsmasq.pid");
        let stderr = File::create(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.name, "dnsmasq"])
            .args([
                "--no-daemon",
                "--conf-file=/dev/null",
                "--port=0",
                "--user=root",
                "--bind-interfaces",
                "--log-dhcp",
                "--log-facility=-",
                "--dhcp-authoritative",
            ])
            .arg(format!("--pid-file={}", pid.display()))
            .arg(format!("--dhcp-leasefile={}", leases.display()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("dnsmasq: {e} (install it: apt-get install dnsmasq-base)"));
        Dnsmasq { child, log, leases }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// resolv.conf in a temporary directory; hostnames recorded, never set on the host.
struct TestHost {
    files: SystemHost,
    hostnames: Mutex<Vec<String>>,
}

impl Host for TestHost {
    fn write_resolv_conf(&self, text: &str) -> Result<(), HostError> {
        self.files.write_resolv_conf(text)
    }
    fn set_hostname(&self, name: &str) -> Result<(), HostError> {
        if let Ok(mut h) = self.hostnames.lock() {
            h.push(name.to_string());
        }
        Ok(())
    }
}

/// Starts ros's network inside `ns`: a thread enters the namespace, then builds the runtime
/// (whose threads inherit it) and opens its sockets there.
fn start_in(ns: &Netns, settings: Settings, host: Arc<TestHost>) -> NetService {
    let path = ns.path();
    let t = std::thread::spawn(move || {
        let f = File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns: {e}"));
        NetService::start_with(settings, host)
    });
    match t.join() {
        Ok(Ok(service)) => service,
        Ok(Err(e)) => panic!("start: {e}"),
        Err(_) => panic!("start thread panicked"),
    }
}

fn by_mac(mac: &str) -> Match {
    Match {
        name: None,
        mac: Some(mac.into()),
    }
}

fn waited_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

#[test]
fn static_addresses_v4_v6_routes_with_metrics_and_mtu() {
    if !is_root() {
        eprintln!("skipped: needs root (network namespaces)");
        return;
    }
    let client = Netns::new("c");
    let server = Netns::new("s");
    veth(
        &client,
        "lan0",
        "02:00:00:aa:00:01",
        &server,
        "peer0",
        &["192.168.50.1/24"],
    );
    // A second NIC created first, so the MAC-matched one is not the first in enumeration order.
    veth(&client, "lan1", "02:00:00:aa:00:02", &server, "peer1", &[]);

    let mut settings = Settings {
        network: Default::default(),
        hostname: Some("node-1".into()),
    };
    settings.network.interfaces.insert(
        "private".into(),
        Interface {
            r#match: by_mac("02:00:00:AA:00:02"),
            addresses: vec!["192.168.51.5/24".into(), "fd00:51::5/64".into()],
            gateway: Some("192.168.51.1".into()),
            routes: vec![
                Route {
                    to: "10.99.0.0/16".into(),
                    via: Some("192.168.51.254".into()),
                    metric: Some(50),
                },
                Route {
                    to: "fd00:99::/64".into(),
                    via: Some("fd00:51::1".into()),
                    metric: Some(70),
                },
            ],
            mtu: Some(1400),
            ..Interface::default()
        },
    );
    settings.network.interfaces.insert(
        "other".into(),
        Interface {
            r#match: by_mac("02:00:00:aa:00:01"),
            addresses: vec!["192.168.50.5/24".into()],
            ..Interface::default()
        },
    );
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let host = Arc::new(TestHost {
        files: SystemHost::with_resolv_conf(&dir.path().join("resolv.conf")),
        hostnames: Mutex::new(Vec::new()),
    });
    let service = start_in(&client, settings, host.clone());
    let out = service.wait(NetworkWait::All, Duration::from_secs(10));
    assert!(out.satisfied, "{out:?}");

    let addr = client.ip(&["addr", "show", "dev", "lan1"]);
    assert!(addr.contains("mtu 1400"), "{addr}");
    assert!(addr.contains("state UP") || addr.contains(",UP"), "{addr}");
    assert!(addr.contains("inet 192.168.51.5/24"), "{addr}");
    assert!(addr.contains("inet6 fd00:51::5/64"), "{addr}");
    let v4 = client.ip(&["-4", "route", "show", "dev", "lan1"]);
    assert!(v4.contains("default via 192.168.51.1 proto static"), "{v4}");
    assert!(
        v4.contains("10.99.0.0/16 via 192.168.51.254 proto static metric 50"),
        "{v4}"
    );
    let v6 = client.ip(&["-6", "route", "show", "dev", "lan1"]);
    assert!(
        v6.contains("fd00:99::/64 via fd00:51::1 proto static metric 70"),
        "{v6}"
    );
    // The other NIC got only its own address: MAC matching, not enumeration order.
    let other = client.ip(&["-4", "addr", "show", "dev", "lan0"]);
    assert!(other.contains("inet 192.168.50.5/24"), "{other}");
    assert!(!other.contains("192.168.51.5"), "{other}");
    assert!(host.hostnames.lock().is_ok_and(|h| h.is_empty()));
    assert!(service.release(Duration::from_secs(2)));
}

#[test]
fn dhcp_lease_renewal_release_dns_merge_and_a_silent_server() {
    if !is_root() {
        eprintln!("skipped: needs root (network namespaces)");
        return;
    }
    let client = Netns::new("c");
    let server = Netns::new("s");
    let silent = Netns::new("q");
    let mac = "02:00:00:bb:00:01";
    veth(&client, "up0", mac, &server, "srv0", &["192.168.60.1/24"]);
    veth(
        &client,
        "quiet0",
        "02:00:00:bb:00:02",
        &silent,
        "srv1",
        &["192.168.61.1/24"],
    );
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dnsmasq = Dnsmasq::start(
        &server,
        dir.path(),
        &[
            "--interface=srv0",
            // dnsmasq pings a new address for 3 s before offering it; nothing to find here.
            "--no-ping",
            "--dhcp-range=192.168.60.100,192.168.60.150,255.255.255.0,2m",
            // T1 = 10 s so a renewal happens within the test.
            "--dhcp-option=58,10",
            "--dhcp-option=option:router,192.168.60.1",
            "--dhcp-option=option:dns-server,192.168.60.53",
            "--dhcp-option=option:domain-search,lab.example",
            &format!("--dhcp-host={mac},ros-from-dhcp"),
        ],
    );
    // dnsmasq is up once it logs its DHCP range.
    assert!(
        waited_until(Duration::from_secs(5), || dnsmasq
            .log()
            .contains("DHCP, IP range")),
        "dnsmasq did not start: {}",
        dnsmasq.log()
    );

    let mut settings = Settings {
        network: Default::default(),
        hostname: None,
    };
    settings.network.nameservers = vec!["1.1.1.1".into()];
    settings.network.search = vec!["corp.example".into()];
    settings.network.interfaces.insert(
        "uplink".into(),
        Interface {
            r#match: by_mac(mac),
            dhcp: true,
            ..Interface::default()
        },
    );
    settings.network.interfaces.insert(
        "quiet".into(),
        Interface {
            r#match: Match {
                name: Some("quiet0".into()),
                mac: None,
            },
            dhcp: true,
            ..Interface::default()
        },
    );
    let resolv = dir.path().join("resolv.conf");
    let host = Arc::new(TestHost {
        files: SystemHost::with_resolv_conf(&resolv),
        hostnames: Mutex::new(Vec::new()),
    });
    let service = start_in(&client, settings, host.clone());

    // wait = "any": the DHCP link is enough; this is how long a lease takes.
    let any = service.wait(NetworkWait::Any, Duration::from_secs(10));
    assert!(any.satisfied, "{any:?}");
    eprintln!("DHCP lease after {:.3}s", any.elapsed.as_secs_f64());

    // wait = "all" with a silent server: bounded by the timeout, with a warning naming it.
    let out = service.wait(NetworkWait::All, Duration::from_secs(4));
    assert!(!out.satisfied && out.timed_out, "{out:?}");
    assert!(out.elapsed < Duration::from_secs(5), "{out:?}");
    let warning = out.warning().unwrap_or_default();
    assert!(
        warning.contains("network.interfaces.quiet (quiet0) (no DHCP lease yet)"),
        "{warning}"
    );
    assert_eq!(out.up, ["network.interfaces.uplink (up0)"], "{out:?}");
    let status = service.network().status();
    let state = |ifname: &str| {
        status
            .iter()
            .find(|l| l.ifname == ifname)
            .map(|l| l.state.clone())
    };
    assert_eq!(state("up0"), Some(LinkState::Configured));
    assert_eq!(state("quiet0"), Some(LinkState::Pending));
    // The lease, as `ip` shows it.
    let addr = client.ip(&["-4", "addr", "show", "dev", "up0"]);
    assert!(addr.contains("inet 192.168.60.1"), "{addr}");
    assert!(addr.contains("/24"), "{addr}");
    let leased = addr
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_default()
        .to_string();
    let routes = client.ip(&["-4", "route"]);
    assert!(
        routes.contains("default via 192.168.60.1 dev up0 proto dhcp metric 10"),
        "{routes}"
    );
    assert!(!routes.contains("quiet0 proto dhcp"), "{routes}");
    // DNS: the config first, then DHCP's.
    assert_eq!(
        std::fs::read_to_string(&resolv).unwrap_or_default(),
        "# Written by ros from network.nameservers, network.search and DHCP; edits are lost.\n\
         nameserver 1.1.1.1\n\
         nameserver 192.168.60.53\n\
         search corp.example lab.example\n"
    );
    // No hostname in the config: DHCP's is used.
    assert_eq!(
        host.hostnames.lock().map(|h| h.clone()).unwrap_or_default(),
        ["ros-from-dhcp"]
    );

    // Renewal at T1 = 10 s: the client's own log and dnsmasq's agree.
    let renewed = waited_until(Duration::from_secs(15), || {
        service.network().events().iter().any(|e| {
            e.dhcp()
                .is_some_and(|(i, ev)| i == "up0" && matches!(ev, DhcpEvent::Renewed { .. }))
        })
    });
    assert!(renewed, "no renewal: {:?}", service.network().events());
    let log = dnsmasq.log();
    assert!(
        log.matches(&format!("DHCPACK(srv0) {leased}")).count() >= 2,
        "{log}"
    );

    // The silent link is still asking, in the background.
    let asked = service.network().events().iter().any(|e| {
        e.dhcp()
            .is_some_and(|(i, ev)| i == "quiet0" && matches!(ev, DhcpEvent::NoAnswer { .. }))
    });
    assert!(asked);

    // Release on shutdown: dnsmasq sees it and forgets the lease; the address is gone.
    assert!(service.release(Duration::from_secs(2)));
    assert!(
        waited_until(Duration::from_secs(3), || dnsmasq
            .log()
            .contains(&format!("DHCPRELEASE(srv0) {leased}"))),
        "{}",
        dnsmasq.log()
    );
    assert!(waited_until(Duration::from_secs(3), || {
        !std::fs::read_to_string(&dnsmasq.leases)
            .unwrap_or_default()
            .contains(&leased)
    }));
    let addr = client.ip(&["-4", "addr", "show", "dev", "up0"]);
    assert!(!addr.contains(&leased), "{addr}");
    assert!(!client.ip(&["-4", "route"]).contains("default"));
}
