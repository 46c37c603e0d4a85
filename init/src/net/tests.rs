//! The reconciler against the fake netlink and scripted DHCP servers (virtual time).

use super::dhcp::fake::{FakeServer, Mode, Seen};
use super::netlink::fake::{Call, FakeNetlink};
use super::plan::{Link, Mac};
use super::*;
use crate::config::schema::{Interface, Match, Route};
use dhcproto::v4::{DhcpOption, MessageType};
use std::collections::BTreeMap;

#[derive(Default)]
struct RecordingHost {
    resolv: Mutex<Vec<String>>,
    hostnames: Mutex<Vec<String>>,
}

impl Host for RecordingHost {
    fn write_resolv_conf(&self, text: &str) -> Result<(), HostError> {
        if let Ok(mut r) = self.resolv.lock() {
            r.push(text.to_string());
        }
        Ok(())
    }
    fn set_hostname(&self, name: &str) -> Result<(), HostError> {
        if let Ok(mut h) = self.hostnames.lock() {
            h.push(name.to_string());
        }
        Ok(())
    }
}

impl RecordingHost {
    fn last_resolv(&self) -> String {
        self.resolv
            .lock()
            .ok()
            .and_then(|r| r.last().cloned())
            .unwrap_or_default()
    }
    fn hostnames(&self) -> Vec<String> {
        self.hostnames.lock().map(|h| h.clone()).unwrap_or_default()
    }
}

/// A scripted server per link name; the `Seen` of each stays readable.
#[derive(Default)]
struct FakeSockets {
    modes: BTreeMap<String, (Mode, Ipv4Addr)>,
    seen: Mutex<BTreeMap<String, Arc<Mutex<Seen>>>>,
}

impl FakeSockets {
    fn with(mut self, ifname: &str, mode: Mode, ip: [u8; 4]) -> Self {
        self.modes.insert(ifname.into(), (mode, Ipv4Addr::from(ip)));
        self
    }

    fn sent(&self, ifname: &str) -> Vec<MessageType> {
        self.seen
            .lock()
            .ok()
            .and_then(|s| s.get(ifname).cloned())
            .and_then(|s| s.lock().ok().map(|s| s.sent.iter().map(|x| x.0).collect()))
            .unwrap_or_default()
    }
}

impl Sockets for FakeSockets {
    fn open(&self, ifname: &str) -> io::Result<Box<dyn Transport>> {
        let Some(&(mode, ip)) = self.modes.get(ifname) else {
            return Err(io::Error::from_raw_os_error(libc::ENODEV));
        };
        let options = vec![
            DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)),
            DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 2, 2)]),
            DhcpOption::DomainNameServer(vec![Ipv4Addr::new(10, 0, 2, 3)]),
            DhcpOption::DomainName("lab.example".into()),
            DhcpOption::Hostname("from-dhcp".into()),
            DhcpOption::AddressLeaseTime(120),
            DhcpOption::Renewal(10),
        ];
        let server = FakeServer::new(mode, ip, options);
        if let Ok(mut s) = self.seen.lock() {
            s.insert(ifname.to_string(), server.seen.clone());
        }
        Ok(Box::new(server))
    }
}

fn link(index: u32, name: &str) -> Link {
    Link {
        index,
        name: name.into(),
        mac: Some(Mac([0x52, 0x54, 0, 0, 0, index as u8])),
        ethernet: true,
        loopback: false,
        kind: None,
    }
}

fn machine() -> Vec<Link> {
    vec![
        Link {
            index: 1,
            name: "lo".into(),
            mac: None,
            ethernet: false,
            loopback: true,
            kind: None,
        },
        link(2, "eth0"),
        link(3, "eth1"),
    ]
}

fn by_name(name: &str) -> Match {
    Match {
        name: Some(name.into()),
        mac: None,
    }
}

fn settings(ifaces: &[(&str, Interface)], hostname: Option<&str>) -> Settings {
    let mut network = NetworkConfig {
        nameservers: vec!["1.1.1.1".into()],
        ..NetworkConfig::default()
    };
    for (k, i) in ifaces {
        network.interfaces.insert((*k).into(), i.clone());
    }
    Settings {
        network,
        hostname: hostname.map(str::to_string),
    }
}

fn dhcp_on(name: &str) -> Interface {
    Interface {
        r#match: by_name(name),
        dhcp: true,
        ..Interface::default()
    }
}

fn static_eth1() -> Interface {
    Interface {
        r#match: by_name("eth1"),
        addresses: vec!["192.168.10.5/24".into(), "fd00:10::5/64".into()],
        gateway: Some("192.168.10.1".into()),
        routes: vec![Route {
            to: "10.0.0.0/8".into(),
            via: Some("192.168.10.254".into()),
            metric: Some(50),
        }],
        mtu: Some(9000),
        ..Interface::default()
    }
}

struct Env {
    nl: Arc<FakeNetlink>,
    host: Arc<RecordingHost>,
    sockets: Arc<FakeSockets>,
    net: Network,
}

async fn start(s: Settings, nl: FakeNetlink, sockets: FakeSockets) -> Env {
    let nl = Arc::new(nl);
    let host = Arc::new(RecordingHost::default());
    let sockets = Arc::new(sockets);
    let net = Network::start(s, nl.clone(), host.clone(), sockets.clone()).await;
    match net {
        Ok(net) => Env {
            nl,
            host,
            sockets,
            net,
        },
        Err(e) => panic!("{e}"),
    }
}

fn net(s: &str) -> IpNet {
    plan::parse_cidr(s).unwrap_or_else(|| plan::default_net(IpAddr::V4(Ipv4Addr::UNSPECIFIED)))
}

fn state_of(env: &Env, ifname: &str) -> Option<LinkState> {
    env.net
        .status()
        .into_iter()
        .find(|l| l.ifname == ifname)
        .map(|l| l.state)
}

#[tokio::test(start_paused = true)]
async fn test_static_link_is_configured_in_order_after_lo() {
    let env = start(
        settings(&[("private", static_eth1())], None),
        FakeNetlink::new(machine()),
        FakeSockets::default(),
    )
    .await;
    let out = env.net.wait(NetworkWait::All, Duration::from_secs(5)).await;
    assert!(out.satisfied, "{out:?}");
    assert_eq!(env.nl.calls()[0], Call::SetUp(1));
    let gw = RouteSpec {
        oif: 3,
        to: net("0.0.0.0/0"),
        via: Some(
            "192.168.10.1"
                .parse()
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        ),
        metric: None,
        origin: RouteOrigin::Static,
    };
    let calls = env.nl.calls_for(3);
    assert_eq!(calls.len(), 6, "{calls:?}");
    assert_eq!(
        calls[..5].to_vec(),
        [
            Call::SetMtu(3, 9000),
            Call::SetUp(3),
            Call::AddAddress(3, net("192.168.10.5/24")),
            Call::AddAddress(3, net("fd00:10::5/64")),
            Call::AddRoute(gw),
        ]
    );
    assert!(matches!(&calls[5], Call::AddRoute(r) if r.metric == Some(50)));
    assert_eq!(out.up, ["network.interfaces.private (eth1)"]);
    // The config's nameserver is written even without any lease.
    assert!(env.host.last_resolv().contains("nameserver 1.1.1.1\n"));
}

#[tokio::test(start_paused = true)]
async fn test_dhcp_lease_is_applied_with_dns_merged_and_hostname_from_dhcp() {
    let env = start(
        settings(&[("public", dhcp_on("eth0"))], None),
        FakeNetlink::new(machine()),
        FakeSockets::default().with("eth0", Mode::Answer, [10, 0, 2, 15]),
    )
    .await;
    let out = env
        .net
        .wait(NetworkWait::Any, Duration::from_secs(30))
        .await;
    assert!(out.satisfied, "{out:?}");
    assert!(out.elapsed < Duration::from_secs(1), "{out:?}");
    assert_eq!(env.nl.addresses_now(2), [net("10.0.2.15/24")]);
    let default = Call::AddRoute(RouteSpec {
        oif: 2,
        to: net("0.0.0.0/0"),
        via: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 2, 2))),
        metric: Some(DHCP_METRIC_BASE + 2),
        origin: RouteOrigin::Dhcp,
    });
    assert!(env.nl.calls_for(2).contains(&default));
    assert_eq!(
        env.host.last_resolv(),
        "# Written by ros from network.nameservers, network.search and DHCP; edits are lost.\n\
         nameserver 1.1.1.1\n\
         nameserver 10.0.2.3\n\
         search lab.example\n"
    );
    assert_eq!(env.host.hostnames(), ["from-dhcp"]);
}

#[tokio::test(start_paused = true)]
async fn test_configured_hostname_wins_over_dhcp() {
    let env = start(
        settings(&[("public", dhcp_on("eth0"))], Some("node-1")),
        FakeNetlink::new(machine()),
        FakeSockets::default().with("eth0", Mode::Answer, [10, 0, 2, 15]),
    )
    .await;
    assert!(
        env.net
            .wait(NetworkWait::All, Duration::from_secs(30))
            .await
            .satisfied
    );
    assert!(env.host.hostnames().is_empty());
}

#[tokio::test(start_paused = true)]
async fn test_silent_dhcp_server_times_out_with_a_warning_while_the_other_link_works() {
    let env = start(
        settings(
            &[("private", static_eth1()), ("public", dhcp_on("eth0"))],
            None,
        ),
        FakeNetlink::new(machine()),
        FakeSockets::default().with("eth0", Mode::Silent, [10, 0, 2, 15]),
    )
    .await;
    // any: the static link is enough, at once.
    let any = env
        .net
        .wait(NetworkWait::Any, Duration::from_secs(10))
        .await;
    assert!(
        any.satisfied && any.elapsed < Duration::from_secs(1),
        "{any:?}"
    );
    // all: bounded by the timeout, and the warning names the silent link.
    let all = env
        .net
        .wait(NetworkWait::All, Duration::from_secs(10))
        .await;
    assert!(!all.satisfied && all.timed_out, "{all:?}");
    assert_eq!(all.elapsed, Duration::from_secs(10));
    assert_eq!(
        all.warning().as_deref(),
        Some(
            "network.wait = \"all\" not ready after 10.0s; going on without it: \
             network.interfaces.public (eth0) (no DHCP lease yet)"
        )
    );
    assert_eq!(state_of(&env, "eth1"), Some(LinkState::Configured));
    assert_eq!(state_of(&env, "eth0"), Some(LinkState::Pending));
    // The client keeps asking in the background.
    assert!(env.sockets.sent("eth0").len() >= 3);
    // none: returns at once.
    let none = env
        .net
        .wait(NetworkWait::None, Duration::from_secs(10))
        .await;
    assert!(none.satisfied && none.elapsed.is_zero());
}

#[tokio::test(start_paused = true)]
async fn test_a_refused_route_fails_its_link_only_and_all_gives_up_without_waiting() {
    let nl = FakeNetlink::new(machine());
    nl.fail_when(|c| match c {
        Call::AddRoute(r) if r.metric == Some(50) => Some(libc::ENETUNREACH),
        _ => None,
    });
    let env = start(
        settings(
            &[("private", static_eth1()), ("public", dhcp_on("eth0"))],
            None,
        ),
        nl,
        FakeSockets::default().with("eth0", Mode::Answer, [10, 0, 2, 15]),
    )
    .await;
    let all = env
        .net
        .wait(NetworkWait::All, Duration::from_secs(30))
        .await;
    assert!(!all.satisfied && !all.timed_out, "{all:?}");
    assert_eq!(state_of(&env, "eth0"), Some(LinkState::Configured));
    match state_of(&env, "eth1") {
        Some(LinkState::Failed(e)) => assert!(
            e.to_string()
                .starts_with("network.interfaces.private (eth1): add route AddRoute")
                && e.to_string().contains("unreachable"),
            "{e}"
        ),
        other => panic!("{other:?}"),
    }
    // The other steps of the failed link were still tried.
    assert!(env.nl.addresses_now(3).contains(&net("192.168.10.5/24")));
}

#[tokio::test(start_paused = true)]
async fn test_release_gives_the_lease_back_and_removes_it() {
    let env = start(
        settings(&[("public", dhcp_on("eth0"))], None),
        FakeNetlink::new(machine()),
        FakeSockets::default().with("eth0", Mode::Answer, [10, 0, 2, 15]),
    )
    .await;
    assert!(
        env.net
            .wait(NetworkWait::All, Duration::from_secs(30))
            .await
            .satisfied
    );
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert!(env.net.release(Duration::from_secs(2)).await);
    assert_eq!(
        env.sockets.sent("eth0"),
        [
            MessageType::Discover,
            MessageType::Request,
            MessageType::Request,
            MessageType::Release
        ]
    );
    assert!(env.nl.addresses_now(2).is_empty());
    assert!(env
        .nl
        .calls_for(2)
        .iter()
        .any(|c| matches!(c, Call::DelRoute(r) if r.to.prefix_len() == 0)));
    assert_eq!(state_of(&env, "eth0"), Some(LinkState::Released));
    let renewed = env.net.events().iter().any(|e| {
        e.dhcp()
            .is_some_and(|(i, ev)| i == "eth0" && matches!(ev, DhcpEvent::Renewed { .. }))
    });
    assert!(renewed);
}

#[tokio::test(start_paused = true)]
async fn test_config_errors_are_reported_and_the_rest_comes_up() {
    let env = start(
        settings(
            &[
                ("a", dhcp_on("eth0")),
                ("b", dhcp_on("eth0")),
                ("gone", dhcp_on("eth7")),
            ],
            None,
        ),
        FakeNetlink::new(machine()),
        FakeSockets::default().with("eth0", Mode::Answer, [10, 0, 2, 15]),
    )
    .await;
    let errors: Vec<String> = env
        .net
        .config_errors()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        errors,
        [
            "network.interfaces.b.match: matches eth0, already bound by network.interfaces.a",
            "network.interfaces.gone.match: no device matches name eth7 (set optional = true if it may be absent)"
        ]
    );
    let any = env
        .net
        .wait(NetworkWait::Any, Duration::from_secs(30))
        .await;
    assert!(any.satisfied);
    let all = env
        .net
        .wait(NetworkWait::All, Duration::from_secs(30))
        .await;
    assert!(!all.satisfied && !all.timed_out);
    assert_eq!(all.not_up, ["network.interfaces.gone (no such device)"]);
}

#[tokio::test(start_paused = true)]
async fn test_defaults_with_no_nic_do_not_wait() {
    let s = Settings::from_config(&crate::config::defaults::fallback());
    let env = start(
        s,
        FakeNetlink::new(machine()[..1].to_vec()),
        FakeSockets::default(),
    )
    .await;
    let out = env
        .net
        .wait(NetworkWait::Any, Duration::from_secs(30))
        .await;
    assert!(out.satisfied && out.elapsed.is_zero(), "{out:?}");
    assert_eq!(env.nl.calls(), [Call::SetUp(1)]);
}

#[test]
fn test_lease_routes_reach_an_off_subnet_router_through_a_host_route() {
    let lease = LeaseInfo {
        address: Ipv4Addr::new(203, 0, 113, 7),
        prefix_len: 32,
        server: Ipv4Addr::new(169, 254, 169, 254),
        routers: vec![Ipv4Addr::new(203, 0, 113, 1)],
        dns: vec![],
        domain: None,
        search: vec![],
        hostname: None,
        mtu: None,
        lease_s: 3600,
        renew_s: None,
        rebind_s: None,
    };
    let routes: Vec<String> = lease_routes(2, &lease)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        routes,
        [
            "203.0.113.1/32 metric 1026",
            "default via 203.0.113.1 metric 1026"
        ]
    );
    let on_subnet = LeaseInfo {
        prefix_len: 24,
        ..lease
    };
    assert_eq!(lease_routes(2, &on_subnet).len(), 1);
}
