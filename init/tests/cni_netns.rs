//! Host integration tests of workload networking (`ros::net::cni`) with the REAL CNI plugins and
//! iptables of the image: the pinned trixie `containernetworking-plugins` and `iptables`,
//! staged by `xtask::hostctr::prepare_rootfs` exactly as `system.erofs` holds them.
//!
//! Everything happens in throwaway network namespaces: a "host" namespace where ros's driver
//! and the plugins run (the `ros0` bridge, the nat/filter rules, host-local's store in a temp
//! dir), the workloads' namespaces it creates (files in a temp dir), and a "client" namespace
//! on a veth standing for the outside world. No packet leaves them.
//!
//! The plugins run on this host as they are (they need glibc ≥ 2.34). trixie's
//! `xtables-nft-multi` needs trixie's glibc, so `iptables` is a wrapper that starts it through
//! the staged tree's own dynamic loader (`ld.so --library-path … --argv0 iptables`), with
//! `XTABLES_LIBDIR` on the staged extensions: a missing extension in images/system.toml fails
//! here as it would in the image.
//!
//! Needs root, iproute2 and nsenter; without root they are skipped with a message. Namespaces,
//! mounts and the rules in them go away in Drop guards, also on failure.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ros::config::ports::{PortMapping, Protocol};
use ros::config::schema::WorkloadNetwork;
use ros::net::cni::{self, Attached, Cni, CniError, Paths, StdRunner, WorkloadNet};
use xtask::fetch;
use xtask::hostctr;
use xtask::layout::Layout;

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: needs root (network namespaces, mounts, iptables)");
    false
}

/// Runs a command, panicking with its output when it fails.
fn run(args: &[&str]) -> String {
    match Command::new(args[0]).args(&args[1..]).output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => panic!(
            "{}: {}\n{}{}",
            args.join(" "),
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("{}: {e}", args.join(" ")),
    }
}

/// The staged system tree (plugins, iptables, libraries), once per test binary.
fn rootfs() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let layout = Layout::discover();
        let (_, pkgs) = fetch::fetch_pinned(&layout, &mut |e| eprintln!("  {e}"))
            .unwrap_or_else(|e| panic!("fetching the pinned packages: {e}"));
        hostctr::prepare_rootfs(&layout, &pkgs).unwrap_or_else(|e| panic!("staging: {e}"))
    })
}

/// `iptables`, `iptables-restore`, … running the image's xtables-nft-multi through the image's
/// loader; the directory goes first on the plugins' PATH.
fn wrappers(dir: &Path, root: &Path) -> PathBuf {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap_or_else(|e| panic!("{e}"));
    let lib = root.join("usr/lib/x86_64-linux-gnu");
    for name in [
        "iptables",
        "ip6tables",
        "iptables-restore",
        "iptables-save",
        "ip6tables-restore",
        "ip6tables-save",
    ] {
        let script = format!(
            "#!/bin/sh\nexport XTABLES_LIBDIR={lib}/xtables\nexec {lib}/ld-linux-x86-64.so.2 --library-path {lib} --argv0 {name} {multi} \"$@\"\n",
            lib = lib.display(),
            multi = root.join("usr/sbin/xtables-nft-multi").display(),
        );
        let path = bin.join(name);
        fs::write(&path, script).unwrap_or_else(|e| panic!("{e}"));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    bin
}

/// A network namespace made with `ip netns`, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(role: &str) -> Netns {
        let name = format!(
            "ros-cni-t{}-{}-{role}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        run(&["ip", "netns", "add", &name]);
        run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "-n", self.name.as_str()];
        full.extend_from_slice(args);
        run(&full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs `f` on a thread that entered the network namespace at `ns`; processes it spawns (the
/// plugins) and threads it starts are in that namespace too.
fn in_netns<T: Send>(ns: &Path, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(ns).unwrap_or_else(|e| panic!("{}: {e}", ns.display()));
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {}: {e}", ns.display()));
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// `nsenter --net=NS CMD…`
fn nsenter(ns: &Path, args: &[&str]) -> String {
    let net = format!("--net={}", ns.display());
    let mut full = vec!["nsenter", net.as_str()];
    full.extend_from_slice(args);
    run(&full)
}

/// A TCP server in a namespace that answers each connection with the peer address it saw,
/// until dropped (bounded: at most 60 s).
struct Server {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(ns: &Path, addr: SocketAddr) -> Server {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let ns = ns.to_owned();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let file = File::open(&ns).unwrap_or_else(|e| panic!("{}: {e}", ns.display()));
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns: {e}"));
            let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
            listener
                .set_nonblocking(true)
                .unwrap_or_else(|e| panic!("{e}"));
            let _ = ready_tx.send(());
            let end = Instant::now() + Duration::from_secs(60);
            while !flag.load(Ordering::SeqCst) && Instant::now() < end {
                match listener.accept() {
                    Ok((mut conn, peer)) => {
                        let _ = conn.write_all(peer.ip().to_string().as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("server on {addr} did not start: {e}"));
        Server {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP server in a namespace that answers each datagram with the sender's address, until
/// dropped (bounded: at most 60 s).
struct UdpServer {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UdpServer {
    fn start(ns: &Path, addr: SocketAddr) -> UdpServer {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let ns = ns.to_owned();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let file = File::open(&ns).unwrap_or_else(|e| panic!("{}: {e}", ns.display()));
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns: {e}"));
            let sock = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind udp {addr}: {e}"));
            sock.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap_or_else(|e| panic!("{e}"));
            let _ = ready_tx.send(());
            let end = Instant::now() + Duration::from_secs(60);
            let mut buf = [0u8; 512];
            while !flag.load(Ordering::SeqCst) && Instant::now() < end {
                if let Ok((_, peer)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(peer.ip().to_string().as_bytes(), peer);
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("udp server on {addr} did not start: {e}"));
        UdpServer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends a datagram from namespace `ns` to `addr`; the answer, or the error (1.5 s timeout).
fn ask_udp(ns: &Path, addr: SocketAddr) -> Result<String, String> {
    in_netns(ns, || {
        let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_millis(1500)))
            .map_err(|e| e.to_string())?;
        sock.send_to(b"?", addr).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 512];
        let (n, _) = sock.recv_from(&mut buf).map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
}

/// Connects from namespace `ns` to `addr`; the peer address the server saw, or the error.
fn connect(ns: &Path, addr: SocketAddr) -> Result<String, String> {
    in_netns(ns, || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(1500))
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    })
}

fn sock(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// ros's driver in a throwaway "host" namespace, with its state and workload namespaces in a
/// temp dir. Drop detaches whatever is left and deletes the namespace.
struct Host {
    ns: Netns,
    dir: tempfile::TempDir,
    cni: Cni,
}

impl Host {
    fn new(config: WorkloadNetwork, nameservers: &[&str]) -> Host {
        let root = rootfs();
        let ns = Netns::new("h");
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let bin = wrappers(dir.path(), root);
        let paths = Paths {
            plugins: root.join("usr/lib/cni"),
            state: dir.path().join("state"),
            netns: dir.path().join("netns"),
            iptables: bin.join("iptables"),
            iptables_restore: bin.join("iptables-restore"),
            iptables_save: bin.join("iptables-save"),
            path_env: format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display()),
        };
        let ns_ips: Vec<IpAddr> = nameservers.iter().filter_map(|a| a.parse().ok()).collect();
        let net = WorkloadNet::new(&config, &ns_ips, &["lab.example".to_string()])
            .unwrap_or_else(|e| panic!("{e}"));
        let cni = Cni::new(paths, net, Arc::new(StdRunner));
        Host { ns, dir, cni }
    }

    /// Runs `f` with the driver, in the host namespace.
    fn with<T: Send>(&self, f: impl FnOnce(&Cni) -> T + Send) -> T {
        in_netns(&self.ns.path(), || f(&self.cni))
    }

    fn attach(&self, name: &str, ports: &[PortMapping]) -> Attached {
        self.with(|c| c.attach(name, ports))
            .unwrap_or_else(|e| panic!("attach {name}: {e}"))
    }

    fn iptables_save(&self) -> String {
        let bin = self.dir.path().join("bin/iptables-save");
        nsenter(&self.ns.path(), &[bin.to_string_lossy().as_ref()])
    }

    /// Workload → address, as host-local's store holds them.
    fn leases(&self) -> BTreeSet<(String, Ipv4Addr)> {
        cni::ipam_owners(&self.dir.path().join("state/ipam/ros0"))
            .into_iter()
            .map(|(ip, id)| (id, ip))
            .collect()
    }

    fn ns_of(&self, workload: &str) -> PathBuf {
        self.dir.path().join("netns").join(workload)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let done = self.with(|c| c.cleanup(&BTreeSet::new()));
        for d in done {
            if let Err(e) = d.outcome {
                eprintln!("cleanup {}: {e}", d.workload);
            }
        }
        // Whatever a failed cleanup left mounted.
        for name in cni::netns::list(&self.dir.path().join("netns")) {
            let _ = nix::mount::umount2(
                &self.dir.path().join("netns").join(name),
                nix::mount::MntFlags::MNT_DETACH,
            );
        }
    }
}

fn tcp(host: u16, container: u16) -> PortMapping {
    PortMapping {
        host,
        container,
        protocol: Protocol::Tcp,
    }
}

fn v4(a: &Attached) -> Ipv4Addr {
    match a.address.addr() {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => panic!("IPv6 address {v6}"),
    }
}

const UPLINK: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);

#[test]
fn workloads_get_addresses_reach_each_other_publish_ports_and_are_fenced_from_the_host() {
    if !is_root() {
        return;
    }
    let host = Host::new(
        WorkloadNetwork {
            host_ports: vec!["9100".into()],
            ..WorkloadNetwork::default()
        },
        &["1.1.1.1", "127.0.0.53"],
    );
    // The outside world: a client on a veth to the host's "uplink".
    let client = Netns::new("c");
    run(&[
        "ip",
        "link",
        "add",
        "uplink0",
        "netns",
        &host.ns.name,
        "type",
        "veth",
        "peer",
        "name",
        "wan0",
        "netns",
        &client.name,
    ]);
    host.ns
        .ip(&["addr", "add", "198.51.100.1/24", "dev", "uplink0"]);
    host.ns.ip(&["link", "set", "uplink0", "up"]);
    client.ip(&["addr", "add", "198.51.100.2/24", "dev", "wan0"]);
    client.ip(&["link", "set", "wan0", "up"]);

    host.with(|c| c.apply_firewall())
        .unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let a = host.attach(
        "a",
        &[
            tcp(8080, 80),
            PortMapping {
                host: 5353,
                container: 53,
                protocol: Protocol::Udp,
            },
        ],
    );
    eprintln!("attach a: {:.3}s", started.elapsed().as_secs_f64());
    let b = host.attach("b", &[]);

    // ADD: an address in the subnet, the bridge as gateway, a default route, the host's
    // resolvers (loopback ones left out).
    let subnet: ipnet::Ipv4Net = "10.88.0.0/16".parse().unwrap_or_else(|e| panic!("{e}"));
    for w in [&a, &b] {
        assert!(subnet.contains(&v4(w)), "{w:?}");
        assert_eq!(w.address.prefix_len(), 16, "{w:?}");
        assert_eq!(w.gateway, Some(IpAddr::V4(GATEWAY)), "{w:?}");
        assert_eq!(w.netns, host.ns_of(&w.workload));
        assert_eq!(
            w.dns.nameservers,
            vec!["1.1.1.1".parse::<IpAddr>().unwrap_or(IpAddr::V4(UPLINK))]
        );
        assert!(w.host_veth.is_some(), "{w:?}");
        assert!(w
            .dns
            .resolv_conf()
            .contains("nameserver 1.1.1.1\nsearch lab.example\n"));
    }
    assert_ne!(a.address, b.address);
    let addr = nsenter(&a.netns, &["ip", "-4", "addr", "show", "dev", "eth0"]);
    assert!(addr.contains(&format!("inet {}", a.address)), "{addr}");
    let routes = nsenter(&a.netns, &["ip", "-4", "route"]);
    assert!(
        routes.contains("default via 10.88.0.1 dev eth0"),
        "{routes}"
    );
    let lo = nsenter(&a.netns, &["ip", "link", "show", "lo"]);
    assert!(lo.contains("UP"), "loopback up: {lo}");
    let bridge = host.ns.ip(&["-4", "addr", "show", "dev", "ros0"]);
    assert!(bridge.contains("inet 10.88.0.1/16"), "{bridge}");

    // Workload to workload, by address.
    let sb = Server::start(&b.netns, sock(IpAddr::V4(v4(&b)), 7000));
    assert_eq!(
        connect(&a.netns, sock(IpAddr::V4(v4(&b)), 7000)),
        Ok(v4(&a).to_string())
    );
    drop(sb);

    // Published port 8080 → a:80, from outside (PREROUTING) and from the host itself (OUTPUT).
    let sa = Server::start(&a.netns, sock(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 80));
    let outside = connect(&client.path(), sock(IpAddr::V4(UPLINK), 8080));
    assert_eq!(
        outside,
        Ok(CLIENT.to_string()),
        "published port from outside"
    );
    let local = connect(&host.ns.path(), sock(IpAddr::V4(UPLINK), 8080));
    assert!(local.is_ok(), "published port from the host: {local:?}");
    // … and from another workload, through the host's address (hairpin).
    let hairpin = connect(&b.netns, sock(IpAddr::V4(UPLINK), 8080));
    assert!(
        hairpin.is_ok(),
        "published port from workload b: {hairpin:?}"
    );

    // … and the UDP one, 5353 → a:53.
    let ua = UdpServer::start(&a.netns, sock(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 53));
    assert_eq!(
        ask_udp(&client.path(), sock(IpAddr::V4(UPLINK), 5353)),
        Ok(CLIENT.to_string()),
        "published UDP port from outside"
    );
    drop(ua);

    // Outbound: masqueraded behind the host's address.
    let sc = Server::start(&client.path(), sock(IpAddr::V4(CLIENT), 7001));
    assert_eq!(
        connect(&a.netns, sock(IpAddr::V4(CLIENT), 7001)),
        Ok(UPLINK.to_string()),
        "outbound traffic is masqueraded"
    );
    drop(sc);

    // The host itself: only host_ports answer; the rest is dropped (a timeout, not a reset).
    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let _h1 = Server::start(&host.ns.path(), sock(any, 9100));
    let _h2 = Server::start(&host.ns.path(), sock(any, 9999));
    assert!(connect(&a.netns, sock(IpAddr::V4(GATEWAY), 9100)).is_ok());
    for target in [GATEWAY, UPLINK] {
        let r = connect(&a.netns, sock(IpAddr::V4(target), 9999));
        assert!(
            r.is_err(),
            "workload reached the host at {target}:9999: {r:?}"
        );
    }
    // DNS on the host is not for workloads unless a workload resolver is the bridge address.
    let _dns = UdpServer::start(&host.ns.path(), sock(any, 53));
    assert!(ask_udp(&a.netns, sock(IpAddr::V4(GATEWAY), 53)).is_err());
    // The host still reaches its own listeners (the rules only match ros0).
    assert!(connect(&host.ns.path(), sock(IpAddr::V4(UPLINK), 9999)).is_ok());

    if std::env::var_os("ROS_TEST_SHOW_RULES").is_some() {
        eprintln!("{}", host.iptables_save());
    }
    // CHECK on live workloads.
    host.with(|c| c.check("a"))
        .unwrap_or_else(|e| panic!("{e}"));
    host.with(|c| c.check("b"))
        .unwrap_or_else(|e| panic!("{e}"));

    // The store holds exactly the live workloads.
    let expect: BTreeSet<(String, Ipv4Addr)> =
        [("a".to_string(), v4(&a)), ("b".to_string(), v4(&b))].into();
    assert_eq!(host.leases(), expect);
    let rules = host.iptables_save();
    assert!(rules.contains("--dport 8080"), "{rules}");

    // DEL: b's lease and namespace go, a stays; then a's port rules go with a.
    host.with(|c| c.detach("b"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        host.leases(),
        [("a".to_string(), v4(&a))].into_iter().collect()
    );
    assert!(!host.ns_of("b").exists());
    host.with(|c| c.check("a"))
        .unwrap_or_else(|e| panic!("{e}"));
    drop(sa);
    host.with(|c| c.detach("a"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(host.leases().is_empty());
    let rules = host.iptables_save();
    assert!(!rules.contains("--dport 8080"), "port rules left: {rules}");
    assert!(!rules.contains("CNI-DN-"), "portmap chains left: {rules}");
    let masq: Vec<&str> = rules
        .lines()
        .filter(|l| l.starts_with("-A POSTROUTING") && l.contains("10.88."))
        .collect();
    assert!(masq.is_empty(), "masquerade rules left: {masq:?}");
    // A second DEL is harmless.
    host.with(|c| c.detach("a"))
        .unwrap_or_else(|e| panic!("{e}"));
    // CHECK of a detached workload says so.
    assert!(matches!(
        host.with(|c| c.check("a")),
        Err(CniError::NotAttached { .. })
    ));
}

#[test]
fn isolated_workloads_do_not_reach_each_other() {
    if !is_root() {
        return;
    }
    // The host serves DNS to workloads (their resolver is the bridge address).
    let host = Host::new(
        WorkloadNetwork {
            isolate: true,
            ..WorkloadNetwork::default()
        },
        &["10.88.0.1"],
    );
    host.with(|c| c.apply_firewall())
        .unwrap_or_else(|e| panic!("{e}"));
    let a = host.attach("a", &[]);
    let b = host.attach("b", &[]);
    let _sb = Server::start(&b.netns, sock(IpAddr::V4(v4(&b)), 7000));
    let r = connect(&a.netns, sock(IpAddr::V4(v4(&b)), 7000));
    assert!(r.is_err(), "isolated workloads connected: {r:?}");
    // … but each still reaches the host's DNS, and nothing else on the host.
    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let _dns = UdpServer::start(&host.ns.path(), sock(any, 53));
    assert_eq!(
        ask_udp(&a.netns, sock(IpAddr::V4(GATEWAY), 53)),
        Ok(v4(&a).to_string())
    );
    let _other = Server::start(&host.ns.path(), sock(any, 9999));
    assert!(connect(&a.netns, sock(IpAddr::V4(GATEWAY), 9999)).is_err());
    let rules = host.iptables_save();
    assert!(
        rules.contains("-A ROS-ADMIN -i ros0 -o ros0"),
        "isolation rule: {rules}"
    );
    // Applying the firewall again replaces ros's chains, it does not append to them.
    host.with(|c| c.apply_firewall())
        .unwrap_or_else(|e| panic!("{e}"));
    let again = host.iptables_save();
    assert_eq!(again.matches("-A ROS-ADMIN").count(), 1, "{again}");
    assert_eq!(
        again.matches("-j ROS-WORKLOADS-INPUT").count(),
        1,
        "{again}"
    );
    host.with(|c| c.check("a"))
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn boot_cleanup_removes_stale_leases_rules_and_namespaces() {
    if !is_root() {
        return;
    }
    let host = Host::new(WorkloadNetwork::default(), &[]);
    host.with(|c| c.apply_firewall())
        .unwrap_or_else(|e| panic!("{e}"));
    let first = host.attach("live", &[tcp(8081, 80)]);
    // Attaching again (a restart whose detach was lost) replaces the first attachment.
    let live = host.attach("live", &[tcp(8081, 80)]);
    let _ = first;
    let stale = host.attach("stale", &[tcp(8082, 80)]);
    // A workload that crashed with its namespace gone, and an empty namespace placeholder.
    let crashed = host.attach("crashed", &[tcp(8083, 80)]);
    cni::netns::delete(&host.dir.path().join("netns"), "crashed").unwrap_or_else(|e| panic!("{e}"));
    fs::write(host.ns_of("ghost"), "").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(host.leases().len(), 3);

    let keep: BTreeSet<String> = ["live".to_string()].into();
    let done = host.with(|c| c.cleanup(&keep));
    let names: Vec<&str> = done.iter().map(|d| d.workload.as_str()).collect();
    assert_eq!(names, ["crashed", "ghost", "stale"]);
    for d in &done {
        assert!(d.outcome.is_ok(), "{}: {:?}", d.workload, d.outcome);
    }
    assert_eq!(
        host.leases(),
        [("live".to_string(), v4(&live))].into_iter().collect()
    );
    assert_eq!(cni::netns::list(&host.dir.path().join("netns")), ["live"]);
    let rules = host.iptables_save();
    assert!(rules.contains("--dport 8081"), "{rules}");
    assert!(!rules.contains("--dport 8082"), "{rules}");
    assert!(!rules.contains("--dport 8083"), "{rules}");
    for gone in [&stale, &crashed] {
        let ip = v4(gone).to_string();
        let left: Vec<&str> = rules.lines().filter(|l| l.contains(&ip)).collect();
        assert!(left.is_empty(), "rules of {} left: {left:?}", gone.workload);
    }
    host.with(|c| c.check("live"))
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_reattached_workload_gets_the_address_it_asks_for_unless_it_is_taken() {
    if !is_root() {
        return;
    }
    let host = Host::new(WorkloadNetwork::default(), &[]);
    host.with(|c| c.apply_firewall())
        .unwrap_or_else(|e| panic!("{e}"));
    let a = host.attach("a", &[tcp(8084, 80)]);
    let b = host.attach("b", &[]);
    host.with(|c| c.detach("a"))
        .unwrap_or_else(|e| panic!("{e}"));
    // host-local is round-robin: a plain attach would take the address after b's.
    let again = host
        .with(|c| c.attach_at("a", &[tcp(8084, 80)], Some(a.address.addr())))
        .unwrap_or_else(|e| panic!("attach_at a: {e}"));
    assert_eq!(again.address, a.address);
    // b's address is taken: host-local's error, and nothing of c is left behind.
    let err = host.with(|c| c.attach_at("c", &[], Some(b.address.addr())));
    match &err {
        Err(CniError::Plugin { workload, .. }) => assert_eq!(workload, "c"),
        other => panic!("expected a plugin error, got {other:?}"),
    }
    eprintln!("{}", err.err().map(|e| e.to_string()).unwrap_or_default());
    assert!(!host.ns_of("c").exists());
    assert_eq!(
        host.leases(),
        [("a".to_string(), v4(&a)), ("b".to_string(), v4(&b))]
            .into_iter()
            .collect()
    );
    host.with(|c| c.check("a"))
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn an_exhausted_subnet_fails_add_with_the_plugin_error_and_leaves_nothing() {
    if !is_root() {
        return;
    }
    // /29: .1 is the gateway, .2–.6 for workloads.
    let host = Host::new(
        WorkloadNetwork {
            subnet: "10.99.0.0/29".into(),
            ..WorkloadNetwork::default()
        },
        &[],
    );
    for i in 0..5 {
        host.attach(&format!("w{i}"), &[]);
    }
    let err = host.with(|c| c.attach("w5", &[]));
    match &err {
        Err(CniError::Plugin {
            workload,
            plugin,
            error,
            ..
        }) => {
            assert_eq!((workload.as_str(), plugin.as_str()), ("w5", "bridge"));
            assert!(error.msg.contains("no IP addresses available"), "{error:?}");
        }
        other => panic!("expected a bridge plugin error, got {other:?}"),
    }
    eprintln!("{}", err.err().map(|e| e.to_string()).unwrap_or_default());
    assert!(
        !host.ns_of("w5").exists(),
        "failed attach left its namespace"
    );
    assert_eq!(host.leases().len(), 5);
}
