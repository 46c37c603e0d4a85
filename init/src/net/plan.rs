//! The network plan: `[network.interfaces.*]` plus the links the kernel has → what each link
//! should look like.
//!
//! Owns: binding interface keys to devices (`match = { mac }`, `{ name }`, a glob, or the key
//! itself as the name), the precedence between matches, the conflicts and missing devices (each
//! an error naming the key, e.g. `network.interfaces.b.match: matches eth0, already bound by
//! network.interfaces.a`), and turning the config's strings into typed addresses and routes.
//!
//! Binding rules. A MAC match beats an exact name match, which beats a glob; a glob yields
//! silently to a more specific match (so `e*` with DHCP plus one NIC bound by MAC means "DHCP on
//! every other NIC"), while two specific matches (or two globs) on one device are a conflict that
//! the stronger, then the first key in order, wins. Globs (`e*`, `en?`) only ever bind physical
//! Ethernet devices (ARPHRD_ETHER without a netlink link kind), never `lo`, bridges, veths or
//! other virtual links that containers create later; an exact name or a MAC binds any link but
//! `lo`. A key that binds no device is an error unless the interface is `optional`.
//!
//! Must not: touch the kernel, read files, or log; it is a pure function of its inputs and
//! returns its errors for the caller to report once.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

use crate::config::schema::{Interface, Network};

/// A 48-bit MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = ();

    /// Six hex pairs separated by `:` (or `-`), any case.
    fn from_str(s: &str) -> Result<Self, ()> {
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let part = parts.next().ok_or(())?;
            if part.len() != 2 {
                return Err(());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| ())?;
        }
        match parts.next() {
            None => Ok(Mac(out)),
            Some(_) => Err(()),
        }
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// One network device as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name (`eth0`).
    pub name: String,
    /// Hardware address, when it is a 6-byte one.
    pub mac: Option<Mac>,
    /// The link type is ARPHRD_ETHER.
    pub ethernet: bool,
    /// The link type is ARPHRD_LOOPBACK.
    pub loopback: bool,
    /// The netlink link kind (`veth`, `bridge`, `dummy`, …); `None` for hardware NICs.
    pub kind: Option<String>,
}

impl Link {
    /// A hardware Ethernet NIC (what a glob may bind).
    pub fn is_physical_ethernet(&self) -> bool {
        self.ethernet && !self.loopback && self.kind.is_none()
    }
}

/// Address family of a route or address.
fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

/// Who installed a route (shown by `ip route` as `proto static` / `proto dhcp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RouteOrigin {
    /// From the config.
    Static,
    /// From a DHCP lease.
    Dhcp,
}

/// A route on one link.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RouteSpec {
    /// Output interface index.
    pub oif: u32,
    /// Destination prefix (host bits cleared); `0.0.0.0/0` or `::/0` for a default route.
    pub to: IpNet,
    /// Next hop; a link-scope route when absent.
    pub via: Option<IpAddr>,
    /// Route metric (priority); the kernel's 0 when absent.
    pub metric: Option<u32>,
    /// Who installed it.
    pub origin: RouteOrigin,
}

impl fmt::Display for RouteSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.to.prefix_len() == 0 {
            write!(f, "default")?;
        } else {
            write!(f, "{}", self.to)?;
        }
        if let Some(via) = self.via {
            write!(f, " via {via}")?;
        }
        if let Some(metric) = self.metric {
            write!(f, " metric {metric}")?;
        }
        Ok(())
    }
}

/// What one link should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkPlan {
    /// The interface key (`public` of `[network.interfaces.public]`).
    pub key: String,
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub ifname: String,
    /// Hardware address (the DHCP client needs it).
    pub mac: Option<Mac>,
    /// MTU to set.
    pub mtu: Option<u32>,
    /// Static addresses (v4 and v6), with their prefix length.
    pub addresses: Vec<IpNet>,
    /// Static routes, the `gateway` as a default route among them.
    pub routes: Vec<RouteSpec>,
    /// Run a DHCPv4 client.
    pub dhcp: bool,
    /// `ready` does not wait for it.
    pub optional: bool,
}

/// The whole plan: loopback, one entry per bound link, and the config errors met.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Index of `lo`, when there is one.
    pub loopback: Option<u32>,
    /// One entry per bound link, in interface key order, then link index.
    pub links: Vec<LinkPlan>,
    /// Non-optional interface keys that bound no link (also reported in `errors`).
    pub missing: Vec<String>,
    /// Every config error; the interfaces they concern are left out of `links`.
    pub errors: Vec<PlanError>,
}

/// A network config error; each names the key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Two interfaces bind the same device.
    #[error("{key}.match: matches {device}, already bound by {winner}")]
    Conflict {
        /// `network.interfaces.NAME` that lost.
        key: String,
        /// The device both match.
        device: String,
        /// `network.interfaces.NAME` that holds the device.
        winner: String,
    },
    /// A non-optional interface matches no device.
    #[error("{key}.match: no device matches {matcher} (set optional = true if it may be absent)")]
    NoDevice {
        /// `network.interfaces.NAME`.
        key: String,
        /// What it looked for (`name eth7`, `mac 52:54:00:12:34:56`).
        matcher: String,
    },
    /// A value that does not parse or does not fit (bad CIDR, mixed families).
    #[error("{key}: {reason}")]
    Invalid {
        /// Full key path (`network.interfaces.lan.addresses[0]`).
        key: String,
        /// Why.
        reason: String,
    },
    /// Static settings on a match that binds more than one device.
    #[error("{key}.match: binds {count} devices ({devices}), but static addresses and routes need exactly one")]
    StaticOnMany {
        /// `network.interfaces.NAME`.
        key: String,
        /// How many devices.
        count: usize,
        /// Their names.
        devices: String,
    },
}

impl PlanError {
    /// The `network.interfaces.NAME` (or deeper) key the error names.
    pub fn key(&self) -> &str {
        match self {
            PlanError::Conflict { key, .. }
            | PlanError::NoDevice { key, .. }
            | PlanError::Invalid { key, .. }
            | PlanError::StaticOnMany { key, .. } => key,
        }
    }
}

/// `*`, `?` and `[…]` glob matching of an interface name (fnmatch without flags).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn class(p: &[char], c: char) -> Option<(bool, usize)> {
        // p starts after '['; returns (matched, length of the class including ']').
        let mut i = 0;
        let negate = matches!(p.first(), Some('!') | Some('^'));
        if negate {
            i += 1;
        }
        let mut hit = false;
        let mut first = true;
        while i < p.len() {
            if p[i] == ']' && !first {
                return Some((hit != negate, i + 1));
            }
            first = false;
            if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
                hit |= p[i] <= c && c <= p[i + 2];
                i += 3;
            } else {
                hit |= p[i] == c;
                i += 1;
            }
        }
        None
    }
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|k| go(&p[1..], &n[k..])),
            Some('?') => !n.is_empty() && go(&p[1..], &n[1..]),
            Some('[') => match (
                n.first(),
                class(&p[1..], n.first().copied().unwrap_or('\0')),
            ) {
                (Some(_), Some((true, len))) => go(&p[1 + len..], &n[1..]),
                (Some(_), Some((false, _))) | (None, _) => false,
                (Some(&c), None) => c == '[' && go(&p[1..], &n[1..]),
            },
            Some(&c) => n.first() == Some(&c) && go(&p[1..], &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

/// How an interface picks its device, strongest first.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Matcher {
    /// By MAC (and, if given too, name or glob).
    Mac(Mac, Option<String>),
    /// By exact name.
    Name(String),
    /// By glob; physical Ethernet only.
    Glob(String),
}

impl Matcher {
    fn strength(&self) -> u8 {
        match self {
            Matcher::Mac(..) => 3,
            Matcher::Name(_) => 2,
            Matcher::Glob(_) => 1,
        }
    }

    fn matches(&self, link: &Link) -> bool {
        if link.loopback {
            return false;
        }
        match self {
            Matcher::Mac(mac, name) => {
                link.mac == Some(*mac) && name.as_deref().is_none_or(|n| glob_match(n, &link.name))
            }
            Matcher::Name(name) => link.name == *name,
            Matcher::Glob(pattern) => {
                link.is_physical_ethernet() && glob_match(pattern, &link.name)
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Matcher::Mac(mac, None) => format!("mac {mac}"),
            Matcher::Mac(mac, Some(name)) => format!("mac {mac} and name {name}"),
            Matcher::Name(name) => format!("name {name}"),
            Matcher::Glob(pattern) => format!("name {pattern} (physical Ethernet devices)"),
        }
    }
}

/// The typed, not yet bound, settings of one interface.
struct Parsed {
    matcher: Matcher,
    addresses: Vec<IpNet>,
    /// Routes without their output interface (filled in when bound).
    routes: Vec<RouteSpec>,
}

fn parse_interface(name: &str, iface: &Interface) -> Result<Parsed, PlanError> {
    let key = format!("network.interfaces.{name}");
    let invalid = |field: String, reason: String| PlanError::Invalid {
        key: format!("{key}.{field}"),
        reason,
    };
    let matcher = match (&iface.r#match.mac, &iface.r#match.name) {
        (Some(mac), name) => {
            let mac = mac.parse::<Mac>().map_err(|()| {
                invalid(
                    "match.mac".into(),
                    format!("invalid MAC address {mac:?}: expected six hex pairs like 52:54:00:12:34:56"),
                )
            })?;
            Matcher::Mac(mac, name.clone())
        }
        (None, Some(name)) if is_glob(name) => Matcher::Glob(name.clone()),
        (None, Some(name)) => Matcher::Name(name.clone()),
        // The key itself is the interface name.
        (None, None) => Matcher::Name(name.to_string()),
    };
    let mut addresses = Vec::new();
    for (i, text) in iface.addresses.iter().enumerate() {
        let net = parse_cidr(text).ok_or_else(|| {
            invalid(
                format!("addresses[{i}]"),
                format!("invalid address {text:?}: expected CIDR form like 192.168.10.5/24"),
            )
        })?;
        addresses.push(net);
    }
    let mut routes = Vec::new();
    if let Some(gw) = &iface.gateway {
        let via: IpAddr = gw
            .parse()
            .map_err(|_| invalid("gateway".into(), format!("invalid IP address {gw:?}")))?;
        routes.push(RouteSpec {
            oif: 0,
            to: default_net(via),
            via: Some(via),
            metric: None,
            origin: RouteOrigin::Static,
        });
    }
    for (i, route) in iface.routes.iter().enumerate() {
        let via = match &route.via {
            Some(v) => Some(v.parse::<IpAddr>().map_err(|_| {
                invalid(
                    format!("routes[{i}].via"),
                    format!("invalid IP address {v:?}"),
                )
            })?),
            None => None,
        };
        let to = if route.to == "default" {
            default_net(via.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)))
        } else {
            parse_cidr(&route.to).map(|n| n.trunc()).ok_or_else(|| {
                invalid(
                    format!("routes[{i}].to"),
                    format!(
                        "invalid route destination {:?}: expected CIDR form or \"default\"",
                        route.to
                    ),
                )
            })?
        };
        if let Some(via) = via.filter(|v| !same_family(*v, to.addr())) {
            return Err(invalid(
                format!("routes[{i}].via"),
                format!("next hop {via} is not of the same address family as {to}"),
            ));
        }
        routes.push(RouteSpec {
            oif: 0,
            to,
            via,
            metric: route.metric,
            origin: RouteOrigin::Static,
        });
    }
    Ok(Parsed {
        matcher,
        addresses,
        routes,
    })
}

/// `0.0.0.0/0` or `::/0`, in the family of `like`.
pub fn default_net(like: IpAddr) -> IpNet {
    match like {
        IpAddr::V4(_) => IpNet::V4(ipnet::Ipv4Net::default()),
        IpAddr::V6(_) => IpNet::V6(ipnet::Ipv6Net::default()),
    }
}

/// `addr/len`, keeping the host bits of `addr` (an interface address, not a network).
pub fn parse_cidr(text: &str) -> Option<IpNet> {
    let (addr, len) = text.split_once('/')?;
    IpNet::new(addr.parse().ok()?, len.parse().ok()?).ok()
}

/// Binds the configured interfaces to `links` and types their settings.
pub fn plan(config: &Network, links: &[Link]) -> Plan {
    let mut out = Plan {
        loopback: links
            .iter()
            .find(|l| l.loopback || l.name == "lo")
            .map(|l| l.index),
        ..Plan::default()
    };
    let mut parsed: BTreeMap<&str, (Parsed, &Interface)> = BTreeMap::new();
    for (name, iface) in &config.interfaces {
        match parse_interface(name, iface) {
            Ok(p) => {
                parsed.insert(name, (p, iface));
            }
            Err(e) => out.errors.push(e),
        }
    }
    // Claims per link: (strength, key) — the strongest, then the first key in order, wins.
    let mut claims: BTreeMap<u32, Vec<(u8, &str)>> = BTreeMap::new();
    for (name, (p, _)) in &parsed {
        for link in links.iter().filter(|l| p.matcher.matches(l)) {
            claims
                .entry(link.index)
                .or_default()
                .push((p.matcher.strength(), name));
        }
    }
    let mut bound: BTreeMap<&str, Vec<&Link>> = BTreeMap::new();
    for link in links {
        let Some(list) = claims.get_mut(&link.index) else {
            continue;
        };
        list.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
        let Some(&(top, winner)) = list.first() else {
            continue;
        };
        bound.entry(winner).or_default().push(link);
        for &(strength, loser) in list.iter().skip(1) {
            // A glob quietly yields to a more specific match; anything else is a conflict.
            if strength == 1 && top > 1 {
                continue;
            }
            out.errors.push(PlanError::Conflict {
                key: format!("network.interfaces.{loser}"),
                device: link.name.clone(),
                winner: format!("network.interfaces.{winner}"),
            });
        }
    }
    for (name, (p, iface)) in &parsed {
        let key = format!("network.interfaces.{name}");
        let devices = bound.remove(name).unwrap_or_default();
        let claimed_any = claims.values().any(|c| c.iter().any(|(_, k)| k == name));
        if devices.is_empty() {
            if !claimed_any && !iface.optional {
                out.errors.push(PlanError::NoDevice {
                    key: key.clone(),
                    matcher: p.matcher.describe(),
                });
                out.missing.push(key);
            }
            continue;
        }
        let has_static = !p.addresses.is_empty() || !p.routes.is_empty();
        if has_static && devices.len() > 1 {
            out.errors.push(PlanError::StaticOnMany {
                key,
                count: devices.len(),
                devices: devices
                    .iter()
                    .map(|l| l.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
            continue;
        }
        for link in devices {
            out.links.push(LinkPlan {
                key: (*name).to_string(),
                index: link.index,
                ifname: link.name.clone(),
                mac: link.mac,
                mtu: iface.mtu,
                addresses: p.addresses.clone(),
                routes: p
                    .routes
                    .iter()
                    .map(|r| RouteSpec {
                        oif: link.index,
                        ..r.clone()
                    })
                    .collect(),
                dhcp: iface.dhcp,
                optional: iface.optional,
            });
        }
    }
    out.errors.sort_by(|a, b| a.key().cmp(b.key()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::{Match, Route};

    fn link(index: u32, name: &str, mac: &str) -> Link {
        Link {
            index,
            name: name.into(),
            mac: mac.parse().ok(),
            ethernet: true,
            loopback: false,
            kind: None,
        }
    }

    fn lo() -> Link {
        Link {
            index: 1,
            name: "lo".into(),
            mac: Some(Mac([0; 6])),
            ethernet: false,
            loopback: true,
            kind: None,
        }
    }

    fn veth(index: u32, name: &str) -> Link {
        Link {
            kind: Some("veth".into()),
            ..link(index, name, "aa:bb:cc:00:00:01")
        }
    }

    /// lo, eth0 (…:01), eth1 (…:02), a container bridge and veth.
    fn machine() -> Vec<Link> {
        vec![
            lo(),
            link(2, "eth0", "52:54:00:00:00:01"),
            link(3, "eth1", "52:54:00:00:00:02"),
            Link {
                kind: Some("bridge".into()),
                ..link(4, "ebr0", "52:54:00:00:00:09")
            },
            veth(5, "eveth1"),
        ]
    }

    fn by_name(name: &str) -> Match {
        Match {
            name: Some(name.into()),
            mac: None,
        }
    }

    fn by_mac(mac: &str) -> Match {
        Match {
            name: None,
            mac: Some(mac.into()),
        }
    }

    fn net(ifaces: &[(&str, Interface)]) -> Network {
        let mut n = Network::default();
        for (k, i) in ifaces {
            n.interfaces.insert((*k).into(), i.clone());
        }
        n
    }

    fn bound(plan: &Plan) -> Vec<(String, String)> {
        plan.links
            .iter()
            .map(|l| (l.key.clone(), l.ifname.clone()))
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| ((*a).to_string(), (*b).to_string()))
            .collect()
    }

    #[test]
    fn test_glob_matching() {
        assert!(glob_match("e*", "eth0"));
        assert!(glob_match("e*", "enp0s3"));
        assert!(!glob_match("e*", "lo"));
        assert!(glob_match("en?", "en0"));
        assert!(!glob_match("en?", "en10"));
        assert!(glob_match("eth[0-2]", "eth1"));
        assert!(!glob_match("eth[!0-2]", "eth1"));
        assert!(glob_match("eth[!0-2]", "eth7"));
        assert!(glob_match("*", ""));
        assert!(glob_match("eth0", "eth0"));
        assert!(!glob_match("eth0", "eth01"));
    }

    #[test]
    fn test_mac_parses_and_prints_lowercase() {
        let mac: Result<Mac, ()> = "52:54:00:AB:cd:0F".parse();
        assert_eq!(mac.map(|m| m.to_string()), Ok("52:54:00:ab:cd:0f".into()));
        assert!("52:54:00:ab:cd".parse::<Mac>().is_err());
        assert!("52:54:00:ab:cd:0f:00".parse::<Mac>().is_err());
    }

    #[test]
    fn test_defaults_bind_every_physical_ethernet_nic_only() {
        let config = crate::config::defaults::fallback();
        let p = plan(&config.network, &machine());
        assert_eq!(
            bound(&p),
            pairs(&[("default", "eth0"), ("default", "eth1")])
        );
        assert!(p.links.iter().all(|l| l.dhcp && l.optional));
        assert_eq!(p.loopback, Some(1));
        assert_eq!(p.errors, vec![]);
    }

    #[test]
    fn test_defaults_with_no_nic_are_not_an_error() {
        let config = crate::config::defaults::fallback();
        let p = plan(&config.network, &[lo()]);
        assert!(p.links.is_empty());
        assert_eq!(p.errors, vec![]);
        assert!(p.missing.is_empty());
    }

    #[test]
    fn test_mac_wins_over_enumeration_order() {
        // The public NIC is eth1 on this boot (order swapped); the MAC still finds it.
        let n = net(&[
            (
                "public",
                Interface {
                    r#match: by_mac("52:54:00:00:00:02"),
                    dhcp: true,
                    ..Interface::default()
                },
            ),
            (
                "private",
                Interface {
                    r#match: by_mac("52:54:00:00:00:01"),
                    addresses: vec!["192.168.10.5/24".into()],
                    ..Interface::default()
                },
            ),
        ]);
        let p = plan(&n, &machine());
        assert_eq!(bound(&p), pairs(&[("private", "eth0"), ("public", "eth1")]));
        assert_eq!(p.errors, vec![]);
    }

    #[test]
    fn test_key_is_the_name_when_match_is_empty() {
        let n = net(&[("eth1", Interface::default())]);
        assert_eq!(bound(&plan(&n, &machine())), pairs(&[("eth1", "eth1")]));
    }

    #[test]
    fn test_exact_name_and_mac_bind_virtual_links_but_globs_do_not() {
        let n = net(&[
            (
                "v",
                Interface {
                    r#match: by_name("eveth1"),
                    ..Interface::default()
                },
            ),
            (
                "all",
                Interface {
                    r#match: by_name("e*"),
                    dhcp: true,
                    ..Interface::default()
                },
            ),
        ]);
        let p = plan(&n, &machine());
        assert_eq!(
            bound(&p),
            pairs(&[("all", "eth0"), ("all", "eth1"), ("v", "eveth1")])
        );
    }

    #[test]
    fn test_glob_yields_quietly_to_a_specific_match() {
        let n = net(&[
            (
                "a-uplinks",
                Interface {
                    r#match: by_name("e*"),
                    dhcp: true,
                    ..Interface::default()
                },
            ),
            (
                "private",
                Interface {
                    r#match: by_mac("52:54:00:00:00:01"),
                    addresses: vec!["10.1.0.1/24".into()],
                    ..Interface::default()
                },
            ),
        ]);
        let p = plan(&n, &machine());
        assert_eq!(
            bound(&p),
            pairs(&[("a-uplinks", "eth1"), ("private", "eth0")])
        );
        assert_eq!(p.errors, vec![]);
    }

    #[test]
    fn test_two_interfaces_on_one_device_is_an_error_naming_the_key() {
        let n = net(&[
            (
                "a",
                Interface {
                    r#match: by_name("eth0"),
                    ..Interface::default()
                },
            ),
            (
                "b",
                Interface {
                    r#match: by_name("eth0"),
                    dhcp: true,
                    ..Interface::default()
                },
            ),
        ]);
        let p = plan(&n, &machine());
        assert_eq!(bound(&p), pairs(&[("a", "eth0")]));
        assert_eq!(
            p.errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["network.interfaces.b.match: matches eth0, already bound by network.interfaces.a"]
        );
    }

    #[test]
    fn test_mac_beats_name_in_a_conflict_whatever_the_key_order() {
        let n = net(&[
            (
                "a",
                Interface {
                    r#match: by_name("eth0"),
                    ..Interface::default()
                },
            ),
            (
                "z",
                Interface {
                    r#match: by_mac("52:54:00:00:00:01"),
                    ..Interface::default()
                },
            ),
        ]);
        let p = plan(&n, &machine());
        assert_eq!(bound(&p), pairs(&[("z", "eth0")]));
        assert_eq!(
            p.errors[0].to_string(),
            "network.interfaces.a.match: matches eth0, already bound by network.interfaces.z"
        );
    }

    #[test]
    fn test_two_globs_on_one_device_conflict() {
        let glob = |g: &str| Interface {
            r#match: by_name(g),
            dhcp: true,
            ..Interface::default()
        };
        let p = plan(&net(&[("a", glob("e*")), ("b", glob("eth1"))]), &machine());
        assert_eq!(bound(&p), pairs(&[("a", "eth0"), ("b", "eth1")]));
        let p = plan(&net(&[("a", glob("e*")), ("b", glob("eth?"))]), &machine());
        assert_eq!(p.errors.len(), 2);
        assert_eq!(p.errors[0].key(), "network.interfaces.b");
    }

    #[test]
    fn test_unknown_device_is_an_error_unless_optional() {
        let n = net(&[
            (
                "gone",
                Interface {
                    r#match: by_mac("52:54:00:99:99:99"),
                    ..Interface::default()
                },
            ),
            (
                "maybe",
                Interface {
                    r#match: by_name("eth9"),
                    optional: true,
                    ..Interface::default()
                },
            ),
        ]);
        let p = plan(&n, &machine());
        assert!(p.links.is_empty());
        assert_eq!(p.missing, ["network.interfaces.gone"]);
        assert_eq!(
            p.errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["network.interfaces.gone.match: no device matches mac 52:54:00:99:99:99 (set optional = true if it may be absent)"]
        );
    }

    #[test]
    fn test_bad_cidr_names_the_key_and_drops_only_that_interface() {
        let n = net(&[
            (
                "bad",
                Interface {
                    r#match: by_name("eth0"),
                    addresses: vec!["10.0.0.1/24".into(), "10.0.0.300/24".into()],
                    ..Interface::default()
                },
            ),
            (
                "good",
                Interface {
                    r#match: by_name("eth1"),
                    dhcp: true,
                    ..Interface::default()
                },
            ),
        ]);
        let p = plan(&n, &machine());
        assert_eq!(bound(&p), pairs(&[("good", "eth1")]));
        assert_eq!(
            p.errors[0].to_string(),
            "network.interfaces.bad.addresses[1]: invalid address \"10.0.0.300/24\": expected CIDR form like 192.168.10.5/24"
        );
    }

    #[test]
    fn test_static_settings_become_typed_routes_on_the_bound_link() {
        let n = net(&[(
            "lan",
            Interface {
                r#match: by_name("eth1"),
                addresses: vec!["192.168.10.5/24".into(), "fd00:10::5/64".into()],
                gateway: Some("192.168.10.1".into()),
                routes: vec![
                    Route {
                        to: "10.1.2.3/8".into(),
                        via: Some("192.168.10.254".into()),
                        metric: Some(50),
                    },
                    Route {
                        to: "fd00:20::/64".into(),
                        via: Some("fd00:10::1".into()),
                        metric: None,
                    },
                    Route {
                        to: "172.16.0.0/12".into(),
                        via: None,
                        metric: Some(7),
                    },
                ],
                mtu: Some(9000),
                ..Interface::default()
            },
        )]);
        let p = plan(&n, &machine());
        assert_eq!(p.errors, vec![]);
        let l = &p.links[0];
        assert_eq!((l.index, l.mtu), (3, Some(9000)));
        assert_eq!(
            l.addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["192.168.10.5/24", "fd00:10::5/64"]
        );
        assert!(l.routes.iter().all(|r| r.oif == 3));
        assert_eq!(
            l.routes.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                "default via 192.168.10.1",
                "10.0.0.0/8 via 192.168.10.254 metric 50",
                "fd00:20::/64 via fd00:10::1",
                "172.16.0.0/12 metric 7"
            ]
        );
    }

    #[test]
    fn test_route_via_of_the_other_family_is_an_error() {
        let n = net(&[(
            "lan",
            Interface {
                r#match: by_name("eth1"),
                routes: vec![Route {
                    to: "10.0.0.0/8".into(),
                    via: Some("fd00::1".into()),
                    metric: None,
                }],
                ..Interface::default()
            },
        )]);
        let p = plan(&n, &machine());
        assert_eq!(p.errors[0].key(), "network.interfaces.lan.routes[0].via");
    }

    #[test]
    fn test_static_addresses_on_a_glob_binding_two_devices_is_an_error() {
        let n = net(&[(
            "lan",
            Interface {
                r#match: by_name("eth*"),
                addresses: vec!["10.0.0.1/24".into()],
                ..Interface::default()
            },
        )]);
        let p = plan(&n, &machine());
        assert!(p.links.is_empty());
        assert_eq!(
            p.errors[0].to_string(),
            "network.interfaces.lan.match: binds 2 devices (eth0, eth1), but static addresses and routes need exactly one"
        );
    }
}
