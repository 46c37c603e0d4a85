//! The network configuration of `ros0` as the CNI plugins read it: the conflist (bridge with
//! host-local IPAM, portmap, firewall), the loopback network, and the exact stdin of each plugin
//! call (spec 1.0.0: the plugin's own object plus `name`, `cniVersion`, `prevResult` and, for a
//! plugin that declares the capability, `runtimeConfig`).
//!
//! Owns: [`WorkloadNet`], the validated `[network.workloads]` settings with the DNS handed to
//! workloads, and every JSON document ros gives a plugin.
//! Must not: run anything or touch files; the driver does.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use ipnet::Ipv4Net;
use serde_json::{json, Map, Value};

use crate::config::ports::{HostPort, PortMapping};
use crate::config::schema::WorkloadNetwork;

/// The spec version ros speaks (the trixie plugins, 1.1.1, support it).
pub const CNI_VERSION: &str = "1.0.0";
/// The bridge, and the name of the network (the IPAM store's directory is named after it).
pub const BRIDGE: &str = "ros0";
/// The network name of the loopback attachment.
pub const LOOPBACK_NETWORK: &str = "ros-lo";
/// The chain the firewall plugin jumps to before its per-workload accepts; ros fills it
/// (isolation), the plugin only creates it.
pub const ADMIN_CHAIN: &str = "ROS-ADMIN";

/// `[network.workloads]`, checked, plus the resolvers workloads get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadNet {
    /// The workloads' subnet.
    pub subnet: Ipv4Net,
    /// The bridge's address in it (the first host address), the workloads' default gateway.
    pub gateway: Ipv4Addr,
    /// Workloads cannot reach each other.
    pub isolate: bool,
    /// Host ports workloads may reach.
    pub host_ports: Vec<HostPort>,
    /// Resolvers for workloads (the host's, loopback ones left out: a workload cannot reach
    /// the host's loopback).
    pub nameservers: Vec<IpAddr>,
    /// Search domains for workloads.
    pub search: Vec<String>,
}

/// A `[network.workloads]` value that does not hold (config validation rejects these first).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("network.workloads.{key}: {reason}")]
pub struct SettingsError {
    /// The key under `network.workloads`.
    pub key: &'static str,
    /// What is wrong.
    pub reason: String,
}

impl WorkloadNet {
    /// Checks `[network.workloads]` and takes the host's resolvers (`nameservers`, `search`:
    /// what the host's resolv.conf holds).
    pub fn new(
        config: &WorkloadNetwork,
        nameservers: &[IpAddr],
        search: &[String],
    ) -> Result<WorkloadNet, SettingsError> {
        let subnet: Ipv4Net = config.subnet.parse().map_err(|_| SettingsError {
            key: "subnet",
            reason: format!("invalid subnet {:?}", config.subnet),
        })?;
        let gateway = subnet
            .hosts()
            .next()
            .filter(|_| subnet.prefix_len() <= 29 && subnet.addr() == subnet.network())
            .ok_or_else(|| SettingsError {
                key: "subnet",
                reason: format!("{subnet} has no room for a gateway and workloads"),
            })?;
        let mut host_ports = Vec::new();
        for p in &config.host_ports {
            host_ports.push(HostPort::parse(p).map_err(|e| SettingsError {
                key: "host_ports",
                reason: e.to_string(),
            })?);
        }
        Ok(WorkloadNet {
            subnet,
            gateway,
            isolate: config.isolate,
            host_ports,
            nameservers: nameservers
                .iter()
                .copied()
                .filter(|a| !a.is_loopback())
                .collect(),
            search: search.to_vec(),
        })
    }

    /// Whether the host itself serves DNS to workloads (a resolver is the bridge address), so
    /// the host firewall lets port 53 through.
    pub fn host_serves_dns(&self) -> bool {
        self.nameservers.contains(&IpAddr::V4(self.gateway))
    }
}

/// The `ros0` conflist. `ipam_dir` is host-local's store (its `dataDir`).
pub fn conflist(net: &WorkloadNet, ipam_dir: &Path) -> Value {
    let mut bridge = json!({
        "type": "bridge",
        "bridge": BRIDGE,
        "isGateway": true,
        "ipMasq": true,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{
                "subnet": net.subnet.to_string(),
                "gateway": net.gateway.to_string(),
            }]],
            "routes": [{ "dst": "0.0.0.0/0" }],
            "dataDir": ipam_dir.display().to_string(),
        },
    });
    if !net.nameservers.is_empty() || !net.search.is_empty() {
        let mut dns = Map::new();
        if !net.nameservers.is_empty() {
            let servers: Vec<String> = net.nameservers.iter().map(|a| a.to_string()).collect();
            dns.insert("nameservers".into(), json!(servers));
        }
        if !net.search.is_empty() {
            dns.insert("search".into(), json!(net.search));
        }
        bridge["dns"] = Value::Object(dns);
    }
    json!({
        "cniVersion": CNI_VERSION,
        "name": BRIDGE,
        "plugins": [
            bridge,
            {
                "type": "portmap",
                "capabilities": { "portMappings": true },
                "snat": true,
            },
            {
                "type": "firewall",
                "backend": "iptables",
                "iptablesAdminChainName": ADMIN_CHAIN,
            },
        ],
    })
}

/// The loopback network: `lo` up in the workload's namespace.
pub fn loopback() -> Value {
    json!({
        "cniVersion": CNI_VERSION,
        "name": LOOPBACK_NETWORK,
        "plugins": [{ "type": "loopback" }],
    })
}

/// CNI's `portMappings` runtime config for `ports`.
pub fn port_mappings(ports: &[PortMapping]) -> Value {
    Value::Array(
        ports
            .iter()
            .map(|p| {
                json!({
                    "hostPort": p.host,
                    "containerPort": p.container,
                    "protocol": p.protocol.as_str(),
                })
            })
            .collect(),
    )
}

/// The plugins of a conflist (empty when it has none).
pub fn plugins(list: &Value) -> Vec<Value> {
    list.get("plugins")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// The `type` of a plugin object.
pub fn plugin_type(plugin: &Value) -> String {
    plugin
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// What one plugin call reads on stdin: the plugin's object with the network's `name` and
/// `cniVersion`, the previous result when there is one, and `runtimeConfig` holding only the
/// capabilities the plugin declares.
pub fn plugin_stdin(
    list: &Value,
    plugin: &Value,
    prev_result: Option<&Value>,
    runtime: &Map<String, Value>,
) -> Value {
    let mut conf = match plugin {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    for key in ["name", "cniVersion"] {
        if let Some(v) = list.get(key) {
            conf.insert(key.into(), v.clone());
        }
    }
    if let Some(prev) = prev_result {
        conf.insert("prevResult".into(), prev.clone());
    }
    let wanted: Map<String, Value> = plugin
        .get("capabilities")
        .and_then(Value::as_object)
        .map(|caps| {
            runtime
                .iter()
                .filter(|(k, _)| caps.get(*k).and_then(Value::as_bool) == Some(true))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    if !wanted.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(wanted));
    }
    Value::Object(conf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ports::Protocol;

    fn golden(text: &str) -> Value {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("golden file: {e}"))
    }

    fn net(config: WorkloadNetwork, ns: &[&str]) -> WorkloadNet {
        let ns: Vec<IpAddr> = ns.iter().filter_map(|a| a.parse().ok()).collect();
        WorkloadNet::new(&config, &ns, &["lab.example".into()]).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn default_conflist_matches_golden() {
        let n = net(WorkloadNetwork::default(), &["1.1.1.1", "127.0.0.53"]);
        assert_eq!(n.gateway, Ipv4Addr::new(10, 88, 0, 1));
        let got = conflist(&n, Path::new("/run/ros/cni/ipam"));
        let want = golden(include_str!("golden/02_conflist_default.json"));
        assert_eq!(
            got,
            want,
            "got:\n{}",
            serde_json::to_string_pretty(&got).unwrap_or_default()
        );
    }

    #[test]
    fn portmap_stdin_carries_prev_result_and_only_declared_runtime_config() {
        let n = net(
            WorkloadNetwork {
                subnet: "172.30.0.0/24".into(),
                ..WorkloadNetwork::default()
            },
            &[],
        );
        let list = conflist(&n, Path::new("/run/ros/cni/ipam"));
        let prev = golden(include_str!("golden/01_bridge_result.json"));
        let mut runtime = Map::new();
        runtime.insert(
            "portMappings".into(),
            port_mappings(&[PortMapping {
                host: 8080,
                container: 80,
                protocol: Protocol::Tcp,
            }]),
        );
        let ps = plugins(&list);
        assert_eq!(
            ps.iter().map(plugin_type).collect::<Vec<_>>(),
            ["bridge", "portmap", "firewall"]
        );
        let got = plugin_stdin(&list, &ps[1], Some(&prev), &runtime);
        let want = golden(include_str!("golden/03_portmap_stdin.json"));
        assert_eq!(
            got,
            want,
            "got:\n{}",
            serde_json::to_string_pretty(&got).unwrap_or_default()
        );
        // The firewall declares no capability: no runtimeConfig for it.
        let fw = plugin_stdin(&list, &ps[2], Some(&prev), &runtime);
        assert!(fw.get("runtimeConfig").is_none());
        assert_eq!(fw["name"], "ros0");
        // The first plugin gets no prevResult.
        let first = plugin_stdin(&list, &ps[0], None, &runtime);
        assert!(first.get("prevResult").is_none());
        assert_eq!(first["ipam"]["ranges"][0][0]["gateway"], "172.30.0.1");
    }

    #[test]
    fn settings_are_checked_and_dns_served_by_the_host_is_seen() {
        let bad = WorkloadNetwork {
            subnet: "10.0.0.0/30".into(),
            ..WorkloadNetwork::default()
        };
        assert!(WorkloadNet::new(&bad, &[], &[]).is_err_and(|e| e.key == "subnet"));
        let bad = WorkloadNetwork {
            host_ports: vec!["x".into()],
            ..WorkloadNetwork::default()
        };
        assert!(WorkloadNet::new(&bad, &[], &[])
            .is_err_and(|e| e.to_string().starts_with("network.workloads.host_ports: ")));
        assert!(!net(WorkloadNetwork::default(), &["1.1.1.1"]).host_serves_dns());
        assert!(net(WorkloadNetwork::default(), &["10.88.0.1"]).host_serves_dns());
    }
}
