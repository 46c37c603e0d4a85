//! What CNI plugins print: a result (spec 1.0.0: interfaces, ips, routes, dns) on success, an
//! error object (code, msg, details) on failure — parsed into typed values.
//!
//! Owns: the serde shapes of both and the rule of which one a plugin's output is. The raw JSON
//! of a result is kept next to its typed form, because the spec chains a plugin's result to
//! the next plugin (`prevResult`) as the plugin printed it, unknown fields included.
//! Must not: run plugins, or judge a result (that the address is in the subnet, …): the driver
//! and its callers do.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// One interface a plugin created or touched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Its name (in the namespace `sandbox`, or the host's when that is empty).
    pub name: String,
    /// Its MAC address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// The network namespace path it lives in; empty for the host's.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

/// One address a plugin assigned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with prefix length (`10.88.0.2/16`).
    pub address: IpNet,
    /// The gateway of that subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// One route a plugin installed in the namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteConfig {
    /// Destination (`0.0.0.0/0`).
    pub dst: IpNet,
    /// Next hop; the default gateway of the address when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// DNS settings for the workload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<IpAddr>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// resolv.conf options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// The workload's `/etc/resolv.conf`.
    pub fn resolv_conf(&self) -> String {
        let mut out = String::from("# Written by ros from the workload's CNI result.\n");
        for ns in &self.nameservers {
            out.push_str(&format!("nameserver {ns}\n"));
        }
        if let Some(domain) = &self.domain {
            out.push_str(&format!("domain {domain}\n"));
        }
        if !self.search.is_empty() {
            out.push_str(&format!("search {}\n", self.search.join(" ")));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }

    /// No settings at all.
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// A plugin's success result, typed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    /// The spec version it is written in.
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    /// Interfaces.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Addresses.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    /// Routes.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// DNS.
    #[serde(default)]
    pub dns: Dns,
}

impl CniResult {
    /// The address on the interface named `ifname` inside `sandbox` (the workload's own).
    pub fn address_in(&self, sandbox: &str, ifname: &str) -> Option<&IpConfig> {
        self.ips.iter().find(|ip| {
            ip.interface
                .and_then(|i| self.interfaces.get(i))
                .is_some_and(|i| i.name == ifname && i.sandbox == sandbox)
        })
    }

    /// The host side of the workload's veth: an interface outside any sandbox that is not the
    /// bridge.
    pub fn host_veth(&self, bridge: &str) -> Option<&Interface> {
        self.interfaces
            .iter()
            .find(|i| i.sandbox.is_empty() && i.name != bridge)
    }
}

/// The error object a failing plugin prints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorObject {
    /// Spec version.
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    /// Error code: 1–99 are the spec's, 100+ the plugin's.
    #[serde(default)]
    pub code: u32,
    /// Short message.
    #[serde(default)]
    pub msg: String,
    /// Longer explanation.
    #[serde(default)]
    pub details: String,
}

impl ErrorObject {
    /// The spec's name of a well-known code.
    pub fn code_name(&self) -> &'static str {
        match self.code {
            1 => "incompatible CNI version",
            2 => "unsupported field in network configuration",
            3 => "container unknown or does not exist",
            4 => "invalid necessary environment variables",
            5 => "I/O failure",
            6 => "failed to decode content",
            7 => "invalid network config",
            11 => "try again later",
            c if c >= 100 => "plugin-specific error",
            _ => "error",
        }
    }
}

impl std::fmt::Display for ErrorObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {}, {})", self.msg, self.code, self.code_name())?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

/// A result as printed (for `prevResult` and the cache) and typed.
#[derive(Debug, Clone, PartialEq)]
pub struct RawResult {
    /// Exactly what the plugin printed, as JSON.
    pub raw: serde_json::Value,
    /// Its typed reading.
    pub typed: CniResult,
}

impl RawResult {
    /// Parses a result from JSON text.
    pub fn parse(text: &[u8]) -> Result<RawResult, serde_json::Error> {
        let raw: serde_json::Value = serde_json::from_slice(text)?;
        let typed = serde_json::from_value(raw.clone())?;
        Ok(RawResult { raw, typed })
    }
}

/// What a failed plugin's stdout says: the error object, or nothing usable.
pub fn parse_error(stdout: &[u8]) -> Option<ErrorObject> {
    let obj: ErrorObject = serde_json::from_slice(stdout).ok()?;
    (obj.code != 0 || !obj.msg.is_empty()).then_some(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BRIDGE_RESULT: &str = include_str!("golden/01_bridge_result.json");

    #[test]
    fn a_bridge_result_parses_with_addresses_routes_and_interfaces() {
        let r = RawResult::parse(BRIDGE_RESULT.as_bytes()).map(|r| r.typed);
        let Ok(r) = r else {
            panic!("{r:?}");
        };
        assert_eq!(r.cni_version, "1.0.0");
        assert_eq!(r.interfaces.len(), 3);
        let ip = r.address_in("/run/ros/netns/web", "eth0");
        assert_eq!(
            ip.map(|i| (i.address.to_string(), i.gateway.map(|g| g.to_string()))),
            Some(("10.88.0.2/16".into(), Some("10.88.0.1".into())))
        );
        assert_eq!(r.routes[0].dst.to_string(), "0.0.0.0/0");
        assert_eq!(r.routes[0].gw, None);
        assert_eq!(
            r.host_veth("ros0").map(|i| i.name.as_str()),
            Some("veth1a2b3c4d")
        );
        assert!(r.dns.is_empty());
    }

    #[test]
    fn a_result_keeps_unknown_fields_for_prev_result() {
        let text = br#"{"cniVersion":"1.0.0","ips":[],"x-extra":{"k":1}}"#;
        let r = RawResult::parse(text);
        assert!(r.is_ok_and(|r| r.raw["x-extra"]["k"] == 1));
    }

    #[test]
    fn dns_and_empty_results_parse() {
        let text = br#"{"cniVersion":"1.0.0","dns":{"nameservers":["10.88.0.1","1.1.1.1"],"search":["lab"]}}"#;
        let r = RawResult::parse(text).map(|r| r.typed.dns);
        assert_eq!(
            r.ok().map(|d| (d.nameservers.len(), d.search)),
            Some((2, vec!["lab".to_string()]))
        );
        assert!(RawResult::parse(br#"{"cniVersion":"1.0.0"}"#).is_ok());
        assert!(RawResult::parse(b"not json").is_err());
        assert!(RawResult::parse(br#"{"ips":[{"address":"bad"}]}"#).is_err());
    }

    #[test]
    fn dns_renders_as_resolv_conf() {
        let d = Dns {
            nameservers: vec![IpAddr::from([10, 88, 0, 1]), IpAddr::from([1, 1, 1, 1])],
            domain: None,
            search: vec!["lab.example".into(), "corp.example".into()],
            options: vec!["ndots:2".into()],
        };
        assert_eq!(
            d.resolv_conf(),
            "# Written by ros from the workload's CNI result.\n\
             nameserver 10.88.0.1\n\
             nameserver 1.1.1.1\n\
             search lab.example corp.example\n\
             options ndots:2\n"
        );
    }

    #[test]
    fn error_objects_parse_and_render() {
        let text =
            br#"{"cniVersion":"1.0.0","code":7,"msg":"invalid config","details":"no subnet"}"#;
        let e = parse_error(text);
        assert_eq!(
            e.as_ref().map(|e| e.to_string()),
            Some("invalid config (code 7, invalid network config): no subnet".into())
        );
        let e = parse_error(br#"{"code":999,"msg":"failed to allocate for range 0: no IP addresses available in range set"}"#);
        assert_eq!(
            e.map(|e| e.to_string()),
            Some("failed to allocate for range 0: no IP addresses available in range set (code 999, plugin-specific error)".into())
        );
        assert_eq!(parse_error(b""), None);
        assert_eq!(parse_error(b"panic: runtime error"), None);
        assert_eq!(parse_error(b"{}"), None);
    }
}
