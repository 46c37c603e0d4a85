//! The typed schema of `os-config.toml` (DESIGN.md, "Config: `os-config.toml`").
//!
//! Owns: the serde structs and closed-set enums, every struct `deny_unknown_fields`, and the Rust
//! defaults that fill whatever a merged config leaves out. Every field has a default, so a single
//! layer (a partial document) deserialises too; that is how layers are checked strictly on their
//! own. Defaults here mirror `defaults::DEFAULTS` (which additionally names the DHCP interface).
//! Must not: check anything beyond types and shapes; semantic checks live in `validate`.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use super::secret::Secret;
use super::units::{string_map, sysctl_map, Memory, UserMemory};

/// The schema version this build understands.
pub const VERSION: u32 = 1;

fn version_one<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = i64::deserialize(d)?;
    if v == i64::from(VERSION) {
        Ok(VERSION)
    } else {
        Err(serde::de::Error::custom(format!(
            "unsupported config version {v}; this ros understands version {VERSION}"
        )))
    }
}

fn version_default() -> u32 {
    VERSION
}

fn yes() -> bool {
    true
}

/// The whole effective config (or one layer of it, with defaults filled in).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Must be 1. A layer may leave it out; the merged config always has it (from the defaults).
    #[serde(deserialize_with = "version_one", default = "version_default")]
    pub version: u32,
    /// RFC 1123 host name, at most 64 characters.
    pub hostname: String,
    /// Whether a layer above the compiled-in defaults set `hostname`. Not a key of the file
    /// (serde skips it, so it is neither accepted nor exported): `load::effective` fills it in,
    /// and DHCP may name the host only when it is false.
    #[serde(skip)]
    pub hostname_set: bool,
    /// Kernel modules to load.
    pub kernel: Kernel,
    /// sysctl key (`net.ipv4.ip_forward`) to value.
    #[serde(deserialize_with = "sysctl_map")]
    pub sysctl: BTreeMap<String, String>,
    /// State disk and extra mounts.
    pub storage: Storage,
    /// DNS, interfaces, and what `ready` waits for.
    pub network: Network,
    /// OS services: system namespace, may be privileged.
    pub services: BTreeMap<String, Container>,
    /// User workloads: user namespace, fenced, never privileged.
    pub workloads: BTreeMap<String, Container>,
    /// Registry host (`docker.io`, `10.0.2.100:5000`) to its settings.
    pub registries: BTreeMap<String, Registry>,
    /// Fences.
    pub limits: Limits,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            version: VERSION,
            hostname: "ros".to_string(),
            hostname_set: false,
            kernel: Kernel::default(),
            sysctl: BTreeMap::new(),
            storage: Storage::default(),
            network: Network::default(),
            services: BTreeMap::new(),
            workloads: BTreeMap::new(),
            registries: BTreeMap::new(),
            limits: Limits::default(),
        }
    }
}

/// `[kernel]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Kernel {
    /// Module names (`[A-Za-z0-9_-]+`), loaded in order.
    pub modules: Vec<String>,
}

/// `[storage]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Storage {
    /// The persistent state disk.
    pub state: StateDisk,
    /// Extra mounts, in order.
    pub mounts: Vec<Mount>,
    /// A `trying` config generation that does not reach `ready` within this many seconds is
    /// given up: the node reboots and the next boot marks it bad (state on disk only).
    pub boot_timeout_s: u64,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            state: StateDisk::default(),
            mounts: Vec::new(),
            boot_timeout_s: 300,
        }
    }
}

/// `[storage.state]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateDisk {
    /// `LABEL=…`, `UUID=…`, a path, or `none` (all state in RAM).
    pub device: String,
    /// Format the device if (and only if) it is blank.
    pub autoformat: bool,
    /// Seconds to wait for the device to appear; 0 means do not wait (state in RAM if absent).
    pub wait_s: u64,
}

impl Default for StateDisk {
    fn default() -> Self {
        StateDisk {
            device: "LABEL=ROS_STATE".to_string(),
            autoformat: false,
            wait_s: 0,
        }
    }
}

/// One `[[storage.mounts]]` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Mount {
    /// Device (`LABEL=DATA`, `/dev/vdb1`) or path.
    pub source: String,
    /// Absolute mount point.
    pub target: String,
    /// Filesystem type; probed when absent.
    pub fstype: Option<String>,
    /// Mount options (`noatime`, …).
    pub options: Vec<String>,
    /// A missing source is not an error.
    pub optional: bool,
}

/// `[network]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Network {
    /// DNS servers (IP addresses).
    pub nameservers: Vec<String>,
    /// DNS search domains.
    pub search: Vec<String>,
    /// What `ready` waits for.
    pub wait: NetworkWait,
    /// Give up waiting after this many seconds (then `ready` goes on without the network).
    pub wait_timeout_s: u64,
    /// Interface key (a name you choose) to its settings.
    pub interfaces: BTreeMap<String, Interface>,
    /// The workload bridge `ros0` (`net = "bridge"`).
    pub workloads: WorkloadNetwork,
}

/// `[network.workloads]`: the bridge network of workloads (docs/network.md "Workload
/// networking").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkloadNetwork {
    /// IPv4 subnet the workloads' addresses come from (CIDR, the network address); the bridge
    /// takes its first address as the workloads' gateway.
    pub subnet: String,
    /// Workloads cannot reach each other over the bridge.
    pub isolate: bool,
    /// Ports on the host that workloads may reach (`53/udp`, `9100`, tcp by default); every
    /// other connection from the bridge to the host is dropped.
    pub host_ports: Vec<String>,
}

/// The default workload subnet.
pub const DEFAULT_WORKLOAD_SUBNET: &str = "10.88.0.0/16";

impl Default for WorkloadNetwork {
    fn default() -> Self {
        WorkloadNetwork {
            subnet: DEFAULT_WORKLOAD_SUBNET.to_string(),
            isolate: false,
            host_ports: Vec::new(),
        }
    }
}

impl Default for Network {
    fn default() -> Self {
        Network {
            nameservers: Vec::new(),
            search: Vec::new(),
            wait: NetworkWait::Any,
            wait_timeout_s: 30,
            interfaces: BTreeMap::new(),
            workloads: WorkloadNetwork::default(),
        }
    }
}

/// `network.wait`: which interfaces must be configured before `ready`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkWait {
    /// At least one non-optional (or, if all are optional, any) interface is up.
    #[default]
    Any,
    /// Every non-optional interface is up.
    All,
    /// Do not wait.
    None,
}

/// `[network.interfaces.NAME]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Interface {
    /// Which links this entry binds to. Empty: the entry's key is the interface name.
    pub r#match: Match,
    /// Run a DHCPv4 client.
    pub dhcp: bool,
    /// Static addresses in CIDR form (`192.168.10.5/24`).
    pub addresses: Vec<String>,
    /// Default gateway.
    pub gateway: Option<String>,
    /// Static routes.
    pub routes: Vec<Route>,
    /// Link MTU.
    pub mtu: Option<u32>,
    /// `ready` does not wait for this interface, and its absence is not an error.
    pub optional: bool,
}

/// `match = { … }` of an interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Match {
    /// Interface name or glob (`eth0`, `e*`).
    pub name: Option<String>,
    /// MAC address (`52:54:00:12:34:56`).
    pub mac: Option<String>,
}

/// One static route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Route {
    /// Destination in CIDR form, or `default`.
    pub to: String,
    /// Next hop; a link route when absent.
    pub via: Option<String>,
    /// Route metric.
    pub metric: Option<u32>,
}

/// `[services.NAME]` and `[workloads.NAME]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Container {
    /// Image reference. Required for an enabled container (checked on the merged config).
    pub image: String,
    /// Replaces the image's entrypoint when set.
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's command when set.
    pub command: Option<Vec<String>>,
    /// Environment.
    #[serde(deserialize_with = "string_map")]
    pub env: BTreeMap<String, String>,
    /// Working directory; the image's when absent.
    pub working_dir: Option<String>,
    /// `user[:group]`; the image's when absent.
    pub user: Option<String>,
    /// Bind mounts.
    pub mounts: Vec<ContainerMount>,
    /// Network mode; absent means `host` for services and `bridge` for workloads
    /// (see [`Container::net_mode`]).
    pub net: Option<NetMode>,
    /// Published ports (`8080:80/tcp`), bridge only.
    pub ports: Vec<String>,
    /// Services only; rejected in workloads.
    pub privileged: bool,
    /// Capabilities added to / dropped from the default set.
    pub capabilities: Capabilities,
    /// Read-only root filesystem.
    pub read_only: bool,
    /// Memory limit; unlimited (within the namespace's fence) when absent.
    pub memory: Option<Memory>,
    /// CPU limit in CPUs (`0.5`).
    pub cpus: Option<f64>,
    /// pids limit.
    pub pids: Option<u64>,
    /// Restart policy.
    pub restart: Restart,
    /// Names that must be running (or, for one-shots, have exited 0) first. Services name
    /// services; workloads name workloads or services.
    pub depends_on: Vec<String>,
    /// Runs to completion (exit 0) instead of staying up.
    pub oneshot: bool,
    /// `false` turns off a container that a lower layer defines.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Seconds between SIGTERM and SIGKILL on stop.
    pub stop_timeout_s: u64,
    /// Which containerd shim runs the container: its own, or the one its kind shares.
    pub shim: Shim,
}

impl Default for Container {
    fn default() -> Self {
        Container {
            image: String::new(),
            entrypoint: None,
            command: None,
            env: BTreeMap::new(),
            working_dir: None,
            user: None,
            mounts: Vec::new(),
            net: None,
            ports: Vec::new(),
            privileged: false,
            capabilities: Capabilities::default(),
            read_only: false,
            memory: None,
            cpus: None,
            pids: None,
            restart: Restart::Always,
            depends_on: Vec::new(),
            oneshot: false,
            enabled: true,
            stop_timeout_s: 10,
            shim: Shim::Own,
        }
    }
}

/// Which of the two maps a container comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `[services.*]`.
    Service,
    /// `[workloads.*]`.
    Workload,
}

impl Container {
    /// The network mode, with the per-kind default applied.
    pub fn net_mode(&self, kind: Kind) -> NetMode {
        match (self.net, kind) {
            (Some(net), _) => net,
            (None, Kind::Service) => NetMode::Host,
            (None, Kind::Workload) => NetMode::Bridge,
        }
    }
}

/// Container network mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetMode {
    /// The host's network namespace.
    Host,
    /// Loopback only.
    None,
    /// The ros bridge, with NAT and published ports.
    Bridge,
}

/// The containerd shim (`containerd-shim-runc-v2`) a container's task runs under. A shim is a
/// ~20 MiB Go process (~5 MiB of it its own heap); one per container is most of what a small
/// container costs the node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shim {
    /// A shim of its own, as `ctr run` and Docker do: its fate is its own.
    #[default]
    Own,
    /// One shim for the services that share, one for the workloads that share (runc v2 shim
    /// grouping). If that shim dies, every container in it exits and is restarted by its
    /// policy. Such containers run under ros's `io.containerd.ros.v2`, whose start joins the
    /// group's shim without runc's 100 ms probe (docs/runtime.md "Shared shims").
    Shared,
}

/// Restart policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Restart {
    /// Restart whenever it exits (with backoff).
    #[default]
    #[serde(rename = "always")]
    Always,
    /// Restart when it exits non-zero or is killed.
    #[serde(rename = "on-failure")]
    OnFailure,
    /// Never restart.
    #[serde(rename = "no")]
    No,
}

/// One bind mount of a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContainerMount {
    /// Host path.
    pub source: String,
    /// Path in the container.
    pub target: String,
    /// Extra mount options.
    pub options: Vec<String>,
    /// Mount read-only.
    pub read_only: bool,
}

/// `capabilities = { add = [], drop = [] }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Capabilities {
    /// Capabilities to add (`CAP_NET_ADMIN` or `NET_ADMIN`).
    pub add: Vec<String>,
    /// Capabilities to drop.
    pub drop: Vec<String>,
}

/// `[registries."HOST[:PORT]"]`: how to reach one registry (the key is the host a reference
/// names, `docker.io` for Docker Hub). Loopback hosts are reached over plain HTTP even without
/// `insecure` (as Docker does for 127.0.0.0/8).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Registry {
    /// HTTPS without certificate verification, falling back to plain HTTP.
    pub insecure: bool,
    /// `host[:port]` endpoints tried in order before the registry itself. Each is reached with
    /// its own `[registries."MIRROR"]` settings, if any (credentials are never sent to a mirror
    /// from the registry's table).
    pub mirrors: Vec<String>,
    /// Basic credentials (the registry's token flow is followed with them).
    pub username: Option<String>,
    /// Never shown in logs, errors or `Debug`; exported as written.
    pub password: Option<Secret>,
}

/// The field names of [`Registry`], used by the key path parser.
pub const REGISTRY_FIELDS: [&str; 4] = ["insecure", "mirrors", "username", "password"];

/// `[limits]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// The fence around all workloads together.
    pub user: UserLimits,
}

/// `[limits.user]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UserLimits {
    /// Most workload containers that may exist at once.
    pub max_containers: u32,
    /// Memory for all workloads together.
    pub memory: UserMemory,
    /// pids for all workloads together.
    pub pids: u64,
}

impl Default for UserLimits {
    fn default() -> Self {
        UserLimits {
            max_containers: 250,
            memory: UserMemory::Percent(75),
            pids: 20000,
        }
    }
}
