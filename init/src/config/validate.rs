//! Semantic checks of a deserialised config, after serde accepted its shape.
//!
//! Owns: the rules serde cannot express (host name syntax, sysctl key and module name syntax,
//! addresses, privileged workloads, bridge networking for services, ports outside bridge mode,
//! port syntax, the workload subnet and host ports) — checked on every layer alone — and the
//! rules that need the whole picture (an enabled container has an image, `depends_on` names
//! exist, no dependency cycle, no host port published twice, registry credentials come in
//! pairs) — checked on the merged config only. Registry hosts and mirrors must be `host[:port]`.
//! Must not: know about layers, sources or lines; it returns the key path and the reason, and the
//! caller locates them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::error::PathSeg;
use super::ports::{HostPort, PortMapping};
use super::schema::{Config, Container, Interface, Kind, NetMode, Registry, WorkloadNetwork};

/// What to check: a layer alone, or the merged config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Rules that hold for any single layer.
    Layer,
    /// Layer rules plus the cross-reference rules.
    Merged,
}

/// One failed rule: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path of the offending value.
    pub path: Vec<PathSeg>,
    /// Why it is wrong.
    pub reason: String,
}

fn at(keys: &[&str], reason: impl Into<String>) -> Problem {
    Problem {
        path: keys
            .iter()
            .map(|k| PathSeg::Key((*k).to_string()))
            .collect(),
        reason: reason.into(),
    }
}

fn ensure(ok: bool, keys: &[&str], reason: impl FnOnce() -> String) -> Result<(), Problem> {
    if ok {
        Ok(())
    } else {
        Err(at(keys, reason()))
    }
}

/// Checks `config`; the first problem found is returned.
pub fn check(config: &Config, scope: Scope) -> Result<(), Problem> {
    ensure(valid_hostname(&config.hostname), &["hostname"], || {
        format!(
            "invalid hostname {:?}: expected letters, digits and '-' in dot-separated labels \
             (RFC 1123), at most 64 characters",
            config.hostname
        )
    })?;
    for (i, module) in config.kernel.modules.iter().enumerate() {
        let ok = !module.is_empty()
            && module
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok {
            let mut p = at(
                &["kernel", "modules"],
                format!("invalid module name {module:?}: expected [A-Za-z0-9_-]+"),
            );
            p.path.push(PathSeg::Index(i));
            return Err(p);
        }
    }
    for (key, value) in &config.sysctl {
        ensure(valid_sysctl_key(key), &["sysctl", key], || {
            format!("invalid sysctl key {key:?}: expected names like net.ipv4.ip_forward")
        })?;
        ensure(!value.contains('\n'), &["sysctl", key], || {
            "a sysctl value must be a single line".to_string()
        })?;
    }
    let device = &config.storage.state.device;
    ensure(
        crate::storage::device::DeviceSpec::parse(device).is_some(),
        &["storage", "state", "device"],
        || format!("{device:?} is not LABEL=…, UUID=…, an absolute path or none"),
    )?;
    ensure(
        config.storage.boot_timeout_s >= 10,
        &["storage", "boot_timeout_s"],
        || {
            format!(
                "{} s is too short for a boot; at least 10",
                config.storage.boot_timeout_s
            )
        },
    )?;
    for (i, m) in config.storage.mounts.iter().enumerate() {
        let path = |field: &str| Problem {
            path: vec![
                PathSeg::Key("storage".into()),
                PathSeg::Key("mounts".into()),
                PathSeg::Index(i),
                PathSeg::Key(field.into()),
            ],
            reason: String::new(),
        };
        if m.source.is_empty() {
            return Err(Problem {
                reason: "a mount needs a source".into(),
                ..path("source")
            });
        }
        if !matches!(
            crate::storage::device::DeviceSpec::parse(&m.source),
            Some(crate::storage::device::DeviceSpec::Label(_))
                | Some(crate::storage::device::DeviceSpec::Uuid(_))
                | Some(crate::storage::device::DeviceSpec::Path(_))
        ) {
            let reason = format!(
                "mount source {:?} must be LABEL=…, UUID=… or an absolute path",
                m.source
            );
            return Err(Problem {
                reason,
                ..path("source")
            });
        }
        if !m.target.starts_with('/') {
            let reason = format!("mount target {:?} must be an absolute path", m.target);
            return Err(Problem {
                reason,
                ..path("target")
            });
        }
    }
    for (i, ns) in config.network.nameservers.iter().enumerate() {
        if ns.parse::<IpAddr>().is_err() {
            let mut p = at(
                &["network", "nameservers"],
                format!("invalid IP address {ns:?}"),
            );
            p.path.push(PathSeg::Index(i));
            return Err(p);
        }
    }
    for (name, iface) in &config.network.interfaces {
        check_interface(name, iface)?;
    }
    check_workload_network(&config.network.workloads)?;
    for (kind, map, section) in [
        (Kind::Service, &config.services, "services"),
        (Kind::Workload, &config.workloads, "workloads"),
    ] {
        for (name, c) in map {
            check_container(kind, section, name, c, scope)?;
        }
    }
    for (host, registry) in &config.registries {
        check_registry(host, registry, scope)?;
    }
    if scope == Scope::Merged {
        check_depends_on(config)?;
        check_published_ports(config)?;
    }
    Ok(())
}

fn indexed(keys: &[&str], i: usize, reason: String) -> Problem {
    let mut p = at(keys, reason);
    p.path.push(PathSeg::Index(i));
    p
}

/// The smallest workload subnet: network, gateway, one workload, broadcast.
const MAX_WORKLOAD_PREFIX: u8 = 29;

fn check_workload_network(w: &WorkloadNetwork) -> Result<(), Problem> {
    let key = ["network", "workloads", "subnet"];
    let net = w.subnet.parse::<ipnet::Ipv4Net>().map_err(|_| {
        at(
            &key,
            format!(
                "invalid subnet {:?}: expected an IPv4 CIDR like 10.88.0.0/16",
                w.subnet
            ),
        )
    })?;
    ensure(net.network() == net.addr(), &key, || {
        format!(
            "invalid subnet {:?}: host bits are set (the network is {})",
            w.subnet,
            net.trunc()
        )
    })?;
    ensure(net.prefix_len() <= MAX_WORKLOAD_PREFIX, &key, || {
        format!(
            "subnet {:?} is too small: at most /{MAX_WORKLOAD_PREFIX}",
            w.subnet
        )
    })?;
    let mut seen = Vec::new();
    for (i, text) in w.host_ports.iter().enumerate() {
        let keys = ["network", "workloads", "host_ports"];
        let port = HostPort::parse(text).map_err(|e| indexed(&keys, i, e.to_string()))?;
        if seen.contains(&port) {
            return Err(indexed(&keys, i, format!("{port} is listed twice")));
        }
        seen.push(port);
    }
    Ok(())
}

/// Two containers cannot publish the same host port and protocol.
fn check_published_ports(config: &Config) -> Result<(), Problem> {
    let mut owners: BTreeMap<(u16, &'static str), String> = BTreeMap::new();
    for (section, map) in [
        ("services", &config.services),
        ("workloads", &config.workloads),
    ] {
        for (name, c) in map {
            if !c.enabled {
                continue;
            }
            for (i, text) in c.ports.iter().enumerate() {
                let Ok(m) = PortMapping::parse(text) else {
                    continue; // reported by check_container
                };
                let key = (m.host, m.protocol.as_str());
                let me = format!("{section}.{name}");
                if let Some(other) = owners.insert(key, me) {
                    return Err(indexed(
                        &[section, name, "ports"],
                        i,
                        format!(
                            "host port {}/{} is already published by {other}",
                            m.host, m.protocol
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// `host[:port]` as a registry reference names it: a DNS name (`registry-1.docker.io`,
/// `localhost`), an IPv4 address or a bracketed IPv6 address, and an optional port 1..=65535.
/// No scheme, no path.
pub fn valid_registry_host(text: &str) -> bool {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => ("", Some(port)),
                None => return false,
            },
        }
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok_and(|n| n > 0)
    });
    let host_ok = (host.is_empty() && text.starts_with('['))
        || (!host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            }));
    port_ok && host_ok
}

fn check_registry(host: &str, r: &Registry, scope: Scope) -> Result<(), Problem> {
    const HINT: &str =
        "expected host[:port] like registry.example.com or 10.0.2.100:5000 (no scheme, no path)";
    ensure(valid_registry_host(host), &["registries", host], || {
        format!("invalid registry {host:?}: {HINT}")
    })?;
    for (i, m) in r.mirrors.iter().enumerate() {
        if !valid_registry_host(m) {
            let mut p = at(
                &["registries", host, "mirrors"],
                format!("invalid mirror {m:?}: {HINT}"),
            );
            p.path.push(PathSeg::Index(i));
            return Err(p);
        }
        if m == host {
            let mut p = at(
                &["registries", host, "mirrors"],
                "a registry cannot be its own mirror",
            );
            p.path.push(PathSeg::Index(i));
            return Err(p);
        }
    }
    if let Some(user) = &r.username {
        ensure(
            !user.is_empty() && !user.contains(':') && !user.contains(char::is_control),
            &["registries", host, "username"],
            || "a username must be non-empty, without ':' or control characters".to_string(),
        )?;
    }
    if scope == Scope::Merged {
        // Layers may split the pair (username in the image's file, password on the cmdline).
        ensure(
            r.username.is_none() || r.password.is_some(),
            &["registries", host, "username"],
            || "a username needs a password".to_string(),
        )?;
        ensure(
            r.password.is_none() || r.username.is_some(),
            &["registries", host, "password"],
            || "a password needs a username".to_string(),
        )?;
    }
    Ok(())
}

fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn valid_sysctl_key(key: &str) -> bool {
    !key.is_empty()
        && key.split(['.', '/']).all(|seg| {
            !seg.is_empty()
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-:@+".contains(c))
        })
}

fn valid_cidr(text: &str) -> bool {
    let Some((addr, len)) = text.split_once('/') else {
        return false;
    };
    match (addr.parse::<IpAddr>(), len.parse::<u8>()) {
        (Ok(IpAddr::V4(_)), Ok(l)) => l <= 32,
        (Ok(IpAddr::V6(_)), Ok(l)) => l <= 128,
        _ => false,
    }
}

fn valid_mac(text: &str) -> bool {
    let parts: Vec<&str> = text.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

fn check_interface(name: &str, iface: &Interface) -> Result<(), Problem> {
    let ifs = "interfaces";
    ensure(!name.is_empty(), &["network", ifs, name], || {
        "an interface key must not be empty".to_string()
    })?;
    if let Some(mac) = &iface.r#match.mac {
        ensure(
            valid_mac(mac),
            &["network", ifs, name, "match", "mac"],
            || {
                format!(
                    "invalid MAC address {mac:?}: expected six hex pairs like 52:54:00:12:34:56"
                )
            },
        )?;
    }
    if let Some(pattern) = &iface.r#match.name {
        ensure(
            !pattern.is_empty() && pattern.len() < 16,
            &["network", ifs, name, "match", "name"],
            || format!("invalid interface name {pattern:?}: expected 1 to 15 characters"),
        )?;
    }
    for (i, addr) in iface.addresses.iter().enumerate() {
        if !valid_cidr(addr) {
            let mut p = at(
                &["network", ifs, name, "addresses"],
                format!("invalid address {addr:?}: expected CIDR form like 192.168.10.5/24"),
            );
            p.path.push(PathSeg::Index(i));
            return Err(p);
        }
    }
    if let Some(gw) = &iface.gateway {
        ensure(
            gw.parse::<IpAddr>().is_ok(),
            &["network", ifs, name, "gateway"],
            || format!("invalid IP address {gw:?}"),
        )?;
    }
    for (i, route) in iface.routes.iter().enumerate() {
        let seg = |field: &str| {
            vec![
                PathSeg::Key("network".into()),
                PathSeg::Key(ifs.into()),
                PathSeg::Key(name.into()),
                PathSeg::Key("routes".into()),
                PathSeg::Index(i),
                PathSeg::Key(field.into()),
            ]
        };
        if route.to != "default" && !valid_cidr(&route.to) {
            let reason = format!(
                "invalid route destination {:?}: expected CIDR form or \"default\"",
                route.to
            );
            return Err(Problem {
                path: seg("to"),
                reason,
            });
        }
        if let Some(via) = route.via.as_ref().filter(|v| v.parse::<IpAddr>().is_err()) {
            return Err(Problem {
                path: seg("via"),
                reason: format!("invalid IP address {via:?}"),
            });
        }
    }
    if let Some(mtu) = iface.mtu {
        ensure(
            (68..=65535).contains(&mtu),
            &["network", ifs, name, "mtu"],
            || format!("invalid MTU {mtu}: expected 68 to 65535"),
        )?;
    }
    Ok(())
}

fn check_container(
    kind: Kind,
    section: &str,
    name: &str,
    c: &Container,
    scope: Scope,
) -> Result<(), Problem> {
    let valid_name = name
        .chars()
        .next()
        .is_some_and(|f| f.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "_.-".contains(ch));
    ensure(valid_name, &[section, name], || {
        format!("invalid name {name:?}: expected [A-Za-z0-9][A-Za-z0-9_.-]*")
    })?;
    ensure(
        !(kind == Kind::Workload && c.privileged),
        &[section, name, "privileged"],
        || "privileged is only allowed for services, not workloads".to_string(),
    )?;
    // The bridge is for workloads: a service starts before `ready`, while PID 1's main thread
    // (which delivers the CNI plugins' exits) waits for it, and services and workloads would
    // share one namespace of CNI container ids.
    ensure(
        !(kind == Kind::Service && c.net == Some(NetMode::Bridge)),
        &[section, name, "net"],
        || "net = \"bridge\" is for workloads; a service uses \"host\" or \"none\"".to_string(),
    )?;
    ensure(
        c.ports.is_empty() || c.net_mode(kind) == NetMode::Bridge,
        &[section, name, "ports"],
        || "ports can only be published with net = \"bridge\"".to_string(),
    )?;
    for (i, text) in c.ports.iter().enumerate() {
        if let Err(e) = PortMapping::parse(text) {
            return Err(indexed(&[section, name, "ports"], i, e.to_string()));
        }
    }
    if let Some(cpus) = c.cpus {
        ensure(
            cpus.is_finite() && cpus > 0.0,
            &[section, name, "cpus"],
            || format!("invalid cpus {cpus}: expected a number greater than 0"),
        )?;
    }
    for (i, m) in c.mounts.iter().enumerate() {
        if !m.target.starts_with('/') {
            let path = vec![
                PathSeg::Key(section.into()),
                PathSeg::Key(name.into()),
                PathSeg::Key("mounts".into()),
                PathSeg::Index(i),
                PathSeg::Key("target".into()),
            ];
            let reason = format!("mount target {:?} must be an absolute path", m.target);
            return Err(Problem { path, reason });
        }
    }
    if scope == Scope::Merged {
        ensure(
            !c.enabled || !c.image.is_empty(),
            &[section, name, "image"],
            || "an enabled container needs an image".to_string(),
        )?;
    }
    Ok(())
}

/// A node of the dependency graph: (section, name).
type Node<'a> = (&'a str, &'a str);

fn check_depends_on(config: &Config) -> Result<(), Problem> {
    let mut edges: BTreeMap<Node<'_>, Vec<Node<'_>>> = BTreeMap::new();
    for (section, map) in [
        ("services", &config.services),
        ("workloads", &config.workloads),
    ] {
        for (name, c) in map {
            let mut deps = Vec::new();
            for dep in &c.depends_on {
                let target = if section == "workloads" && config.workloads.contains_key(dep) {
                    ("workloads", dep.as_str())
                } else if config.services.contains_key(dep) {
                    ("services", dep.as_str())
                } else {
                    let what = if section == "workloads" {
                        "workload or service"
                    } else {
                        "service"
                    };
                    return Err(at(
                        &[section, name, "depends_on"],
                        format!("depends on {dep:?}, but no {what} has that name"),
                    ));
                };
                deps.push(target);
            }
            edges.insert((section, name.as_str()), deps);
        }
    }
    // Depth-first search; a dependency already on the stack closes a cycle.
    let mut done: Vec<Node<'_>> = Vec::new();
    for &start in edges.keys() {
        let mut stack: Vec<(Node<'_>, usize)> = vec![(start, 0)];
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            let deps = edges.get(&node).map_or(&[][..], Vec::as_slice);
            let Some(&dep) = deps.get(*next) else {
                done.push(node);
                stack.pop();
                continue;
            };
            *next += 1;
            if done.contains(&dep) {
                continue;
            }
            if let Some(pos) = stack.iter().position(|(n, _)| *n == dep) {
                let mut names: Vec<&str> = stack[pos..].iter().map(|((_, n), _)| *n).collect();
                names.push(dep.1);
                // Blame the edge that closes the cycle.
                let (section, closer) = node;
                return Err(at(
                    &[section, closer, "depends_on"],
                    format!("depends_on cycle: {}", names.join(" -> ")),
                ));
            }
            stack.push((dep, 0));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(f: impl FnOnce(&mut Config)) -> Option<String> {
        let mut c = Config::default();
        f(&mut c);
        check(&c, Scope::Merged).err().map(|p| {
            format!(
                "{}: {}",
                super::super::error::render_path(&p.path),
                p.reason
            )
        })
    }

    #[test]
    fn default_config_passes() {
        assert_eq!(problem(|_| {}), None);
    }

    #[test]
    fn storage_devices_and_sources_are_checked_with_their_path() {
        assert_eq!(
            problem(|c| c.storage.state.device = "sdb".into()).as_deref(),
            Some("storage.state.device: \"sdb\" is not LABEL=…, UUID=…, an absolute path or none")
        );
        assert_eq!(problem(|c| c.storage.state.device = "none".into()), None);
        assert_eq!(
            problem(|c| c.storage.boot_timeout_s = 3).as_deref(),
            Some("storage.boot_timeout_s: 3 s is too short for a boot; at least 10")
        );
        let m = crate::config::schema::Mount {
            source: "data".into(),
            target: "/data".into(),
            ..Default::default()
        };
        assert_eq!(
            problem(|c| c.storage.mounts.push(m.clone())).as_deref(),
            Some("storage.mounts[0].source: mount source \"data\" must be LABEL=…, UUID=… or an absolute path")
        );
    }

    #[test]
    fn hostnames_follow_rfc_1123() {
        assert!(valid_hostname("node-1"));
        assert!(valid_hostname("node-1.example.com"));
        assert!(!valid_hostname("-node"));
        assert!(!valid_hostname("node_1"));
        assert!(!valid_hostname(""));
        assert!(!valid_hostname("a..b"));
        assert!(!valid_hostname(&"a".repeat(65)));
        assert!(valid_hostname(&"a".repeat(63)));
    }

    #[test]
    fn sysctl_keys_look_like_keys() {
        assert!(valid_sysctl_key("net.ipv4.ip_forward"));
        assert!(valid_sysctl_key("net/ipv4/conf/eth0.100/rp_filter"));
        assert!(!valid_sysctl_key("net..x"));
        assert!(!valid_sysctl_key("has space"));
        assert!(!valid_sysctl_key(""));
    }

    #[test]
    fn interface_values_are_checked_with_their_path() {
        use crate::config::schema::{Interface, Route};
        let bad = |iface: Interface| {
            problem(|c| {
                c.network.interfaces.insert("lan".into(), iface);
            })
        };
        let i = Interface {
            addresses: vec!["10.0.0.1".into()],
            ..Interface::default()
        };
        assert_eq!(
            bad(i),
            Some("network.interfaces.lan.addresses[0]: invalid address \"10.0.0.1\": expected CIDR form like 192.168.10.5/24".into())
        );
        let mut i = Interface::default();
        i.r#match.mac = Some("52:54:00:12:34".into());
        assert!(bad(i).is_some_and(|p| p.starts_with("network.interfaces.lan.match.mac: ")));
        let i = Interface {
            routes: vec![Route {
                to: "default".into(),
                via: Some("gw".into()),
                metric: None,
            }],
            ..Interface::default()
        };
        assert_eq!(
            bad(i),
            Some("network.interfaces.lan.routes[0].via: invalid IP address \"gw\"".into())
        );
        let i = Interface {
            mtu: Some(10),
            ..Interface::default()
        };
        assert!(bad(i).is_some_and(|p| p.starts_with("network.interfaces.lan.mtu: ")));
    }

    #[test]
    fn workload_network_is_checked_naming_the_key() {
        let p = problem(|c| c.network.workloads.subnet = "10.88.0.0".into());
        assert_eq!(
            p,
            Some("network.workloads.subnet: invalid subnet \"10.88.0.0\": expected an IPv4 CIDR like 10.88.0.0/16".into())
        );
        let p = problem(|c| c.network.workloads.subnet = "10.88.0.1/16".into());
        assert_eq!(
            p,
            Some("network.workloads.subnet: invalid subnet \"10.88.0.1/16\": host bits are set (the network is 10.88.0.0/16)".into())
        );
        let p = problem(|c| c.network.workloads.subnet = "fd00::/64".into());
        assert!(p.is_some_and(|p| p.starts_with("network.workloads.subnet: ")));
        let p = problem(|c| c.network.workloads.subnet = "10.1.2.0/30".into());
        assert!(p.is_some_and(|p| p.contains("too small")));
        assert_eq!(
            problem(|c| c.network.workloads.subnet = "172.30.0.0/24".into()),
            None
        );
        let p = problem(|c| c.network.workloads.host_ports = vec!["53/udp".into(), "x".into()]);
        assert_eq!(
            p,
            Some("network.workloads.host_ports[1]: invalid port \"x\" in \"x\": expected a number from 1 to 65535".into())
        );
        let p =
            problem(|c| c.network.workloads.host_ports = vec!["53/udp".into(), "53/udp".into()]);
        assert_eq!(
            p,
            Some("network.workloads.host_ports[1]: 53/udp is listed twice".into())
        );
        assert_eq!(
            problem(|c| c.network.workloads.host_ports = vec!["53/udp".into(), "53".into()]),
            None
        );
    }

    #[test]
    fn workload_ports_parse_and_do_not_collide() {
        use crate::config::schema::Container;
        let w = |ports: &[&str]| Container {
            image: "i".into(),
            ports: ports.iter().map(|p| p.to_string()).collect(),
            ..Container::default()
        };
        let p = problem(|c| {
            c.workloads
                .insert("web".into(), w(&["8080:80/tcp", "8443:443/sctp"]));
        });
        assert_eq!(
            p,
            Some("workloads.web.ports[1]: invalid protocol \"sctp\" in \"8443:443/sctp\": expected tcp or udp".into())
        );
        let p = problem(|c| {
            c.workloads.insert("a".into(), w(&["8080:80/tcp"]));
            c.workloads.insert("b".into(), w(&["8081:80", "8080:8080"]));
        });
        assert_eq!(
            p,
            Some(
                "workloads.b.ports[1]: host port 8080/tcp is already published by workloads.a"
                    .into()
            )
        );
        let p = problem(|c| {
            c.workloads.insert("a".into(), w(&["8080:80/tcp"]));
            c.workloads.insert("b".into(), w(&["8080:80/udp"]));
        });
        assert_eq!(p, None);
    }

    #[test]
    fn ports_need_bridge_networking() {
        use crate::config::schema::{Container, NetMode};
        let p = problem(|c| {
            c.services.insert(
                "s".into(),
                Container {
                    image: "i".into(),
                    ports: vec!["80:80/tcp".into()],
                    ..Container::default()
                },
            );
        });
        assert_eq!(
            p,
            Some("services.s.ports: ports can only be published with net = \"bridge\"".into())
        );
        let p = problem(|c| {
            c.services.insert(
                "s".into(),
                Container {
                    image: "i".into(),
                    net: Some(NetMode::Bridge),
                    ports: vec!["80:80".into()],
                    ..Container::default()
                },
            );
        });
        assert_eq!(
            p,
            Some(
                "services.s.net: net = \"bridge\" is for workloads; a service uses \"host\" or \"none\""
                    .into()
            )
        );
        let p = problem(|c| {
            c.workloads.insert(
                "w".into(),
                Container {
                    image: "i".into(),
                    ports: vec!["80:80".into()],
                    ..Container::default()
                },
            );
        });
        assert_eq!(p, None, "workloads default to the bridge");
    }

    #[test]
    fn registry_hosts_are_host_and_port() {
        for ok in [
            "docker.io",
            "10.0.2.100:5000",
            "localhost:5000",
            "registry-1.docker.io",
            "[::1]:5000",
            "[fd00::1]",
        ] {
            assert!(valid_registry_host(ok), "{ok}");
        }
        for bad in [
            "", "http://x", "x/y", "x:0", "x:99999", "x:", "-x", "a..b", "[::1", "::1", "x y",
        ] {
            assert!(!valid_registry_host(bad), "{bad}");
        }
    }

    #[test]
    fn registry_errors_name_the_key() {
        use crate::config::schema::Registry;
        use crate::config::secret::Secret;
        let bad = |host: &str, r: Registry| {
            problem(|c| {
                c.registries.insert(host.into(), r);
            })
        };
        let r = Registry {
            mirrors: vec!["http://m:5000".into()],
            ..Registry::default()
        };
        assert_eq!(
            bad("10.0.2.100:5000", r),
            Some("registries.\"10.0.2.100:5000\".mirrors[0]: invalid mirror \"http://m:5000\": expected host[:port] like registry.example.com or 10.0.2.100:5000 (no scheme, no path)".into())
        );
        assert!(bad("a/b", Registry::default())
            .is_some_and(|p| p.starts_with("registries.\"a/b\": invalid registry")));
        let r = Registry {
            username: Some("u".into()),
            ..Registry::default()
        };
        assert_eq!(
            bad("r.example", r),
            Some("registries.\"r.example\".username: a username needs a password".into())
        );
        let r = Registry {
            password: Some(Secret::new("pw-not-shown")),
            ..Registry::default()
        };
        let p = bad("r.example", r).unwrap();
        assert_eq!(
            p,
            "registries.\"r.example\".password: a password needs a username"
        );
        let r = Registry {
            username: Some("u".into()),
            password: Some(Secret::new("pw")),
            insecure: true,
            mirrors: vec!["127.0.0.1:5000".into()],
        };
        assert_eq!(bad("r.example", r), None);
        // A single layer may carry half of the pair.
        let mut c = Config::default();
        c.registries.insert(
            "r.example".into(),
            Registry {
                username: Some("u".into()),
                ..Registry::default()
            },
        );
        assert_eq!(check(&c, Scope::Layer), Ok(()));
    }
}
