//! cni: workload networking on the `ros0` bridge (issue 5), by the CNI specification 1.0.0,
//! with Debian's standard plugins (`/usr/lib/cni`: bridge + host-local, portmap, firewall,
//! loopback) and ros's own host firewall rules (`firewall`).
//!
//! Owns the lifecycle of one workload's network, keyed by the workload name (which is the CNI
//! container id and the name of its namespace):
//! - [`Cni::attach`]: a named network namespace (`netns`), then ADD across the loopback network
//!   and the `ros0` chain (each plugin gets the previous one's result as `prevResult`, portmap
//!   the `portMappings` runtime config), the final result cached under
//!   `<state>/results/<name>.json` (as libcni does) for CHECK and DEL; a failed ADD is undone.
//! - [`Cni::check`]: CHECK across both with the cached result.
//! - [`Cni::detach`]: DEL in reverse order with the cached result, then the namespace and the
//!   cache entry go. Every step runs even when an earlier one failed; the first error is
//!   returned. Safe to repeat.
//! - [`Cni::cleanup`]: at boot (or any time), detaches every workload that has a lease in
//!   host-local's store, a cached result or a namespace file but is not in the live set.
//! - [`Cni::apply_firewall`]: ros's chains (`firewall`), before the first attach.
//!
//! Every plugin run goes through a [`PluginRunner`] (PID 1: [`ReaperRunner`]); its errors name
//! the workload, the plugin and the command, and carry the plugin's CNI error object.
//! Must not: spawn or wait for processes itself, decide which workloads run (the fleet does), or
//! write a container's resolv.conf (the runtime does, from [`Attached::dns`]).
//!
//! Limitations: IPv4 only; one network (`ros0`); the interface in the workload is always
//! `eth0`. The kernel modules ([`MODULES`]) are loaded by [`load_modules`], which PID 1 calls
//! once before the first attach.

pub mod conflist;
pub mod firewall;
pub mod netns;
pub mod result;
pub mod runner;

use std::collections::BTreeSet;
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::boot::modules::{self, ModuleDb};
use crate::config::ports::PortMapping;
use crate::supervisor::reaper::Exit;
pub use conflist::{WorkloadNet, BRIDGE, CNI_VERSION};
pub use firewall::FirewallError;
use netns::NetnsError;
use result::{CniResult, Dns, ErrorObject, RawResult};
#[cfg(feature = "std-runner")]
pub use runner::StdRunner;
pub use runner::{Finished, Invocation, PluginRunner, ReaperRunner, RunError};

/// The interface name inside a workload.
pub const IFNAME: &str = "eth0";

/// Kernel modules the plugins and the rules need (images/modules.list ships them).
pub const MODULES: &[&str] = &[
    "bridge",
    "veth",
    "br_netfilter",
    "nf_tables",
    "nft_compat",
    "nft_chain_nat",
    "nft_ct",
    "nf_nat",
    "nf_conntrack",
    "nf_conntrack_netlink",
    "xt_MASQUERADE",
    "xt_nat",
    "xt_mark",
    "xt_comment",
    "xt_multiport",
    "xt_addrtype",
    "xt_conntrack",
    "xt_tcpudp",
];

/// PID 1's CNI state directory (see [`Paths::system`]).
pub const STATE_DIR: &str = "/run/ros/cni";

/// How long one plugin may run.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// A CNI operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach.
    Add,
    /// Verify.
    Check,
    /// Detach.
    Del,
}

impl Command {
    /// `ADD`, `CHECK`, `DEL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Check => "CHECK",
            Command::Del => "DEL",
        }
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A workload network failure, naming the workload and, for plugin failures, the plugin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CniError {
    /// The plugin failed and printed a CNI error object.
    #[error("workloads.{workload}: CNI {command} {plugin}: {error}")]
    Plugin {
        /// Workload name.
        workload: String,
        /// Plugin type.
        plugin: String,
        /// The operation.
        command: Command,
        /// What the plugin reported.
        error: Box<ErrorObject>,
    },
    /// The plugin failed without an error object.
    #[error("workloads.{workload}: CNI {command} {plugin}: {exit}: {stderr}")]
    PluginExit {
        /// Workload name.
        workload: String,
        /// Plugin type.
        plugin: String,
        /// The operation.
        command: Command,
        /// How it ended.
        exit: Exit,
        /// What it wrote on stderr.
        stderr: String,
    },
    /// The plugin succeeded but its result does not parse.
    #[error("workloads.{workload}: CNI {command} {plugin}: bad result: {reason}")]
    BadResult {
        /// Workload name.
        workload: String,
        /// Plugin type.
        plugin: String,
        /// The operation.
        command: Command,
        /// The parse error.
        reason: String,
    },
    /// The plugin could not be run.
    #[error("workloads.{workload}: CNI {command} {plugin}: {source}")]
    Run {
        /// Workload name.
        workload: String,
        /// Plugin type.
        plugin: String,
        /// The operation.
        command: Command,
        /// Why.
        source: RunError,
    },
    /// The ADD result lacks what a workload needs.
    #[error("workloads.{workload}: CNI ADD gave no address on {IFNAME}")]
    NoAddress {
        /// Workload name.
        workload: String,
    },
    /// CHECK without a cached ADD result.
    #[error("workloads.{workload}: not attached to {BRIDGE} (no cached CNI result)")]
    NotAttached {
        /// Workload name.
        workload: String,
    },
    /// The workload's namespace.
    #[error("workloads.{workload}: {source}")]
    Netns {
        /// Workload name.
        workload: String,
        /// Why.
        source: NetnsError,
    },
    /// A state file.
    #[error("{path}: {reason}")]
    State {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// ros's host rules.
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    /// A kernel module.
    #[error("workload networking: {0}")]
    Module(String),
    /// `[network.workloads]` does not hold.
    #[error(transparent)]
    Settings(#[from] conflist::SettingsError),
}

/// Where things are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The plugins (`CNI_PATH`).
    pub plugins: PathBuf,
    /// ros's CNI state: `ipam/` (host-local's `dataDir`) and `results/`.
    pub state: PathBuf,
    /// Workload namespaces.
    pub netns: PathBuf,
    /// `iptables`.
    pub iptables: PathBuf,
    /// `iptables-restore`.
    pub iptables_restore: PathBuf,
    /// `iptables-save`.
    pub iptables_save: PathBuf,
    /// `PATH` for plugins (they run `iptables`).
    pub path_env: String,
}

impl Paths {
    /// PID 1's: the plugins and iptables of the system image where it is mounted
    /// (`boot::sysimage::MOUNT_POINT`: `/usr/lib/cni` of the image, not of the root), state on
    /// `/run` (tmpfs: leases and namespaces cannot outlive a boot). `PATH` puts the image's
    /// `sbin` first, so the plugins' own `iptables`/`ip6tables` runs find the same binary.
    pub fn system() -> Paths {
        let image = Path::new(crate::boot::sysimage::MOUNT_POINT);
        let sbin = image.join("usr/sbin");
        Paths {
            plugins: image.join("usr/lib/cni"),
            state: STATE_DIR.into(),
            netns: netns::NETNS_DIR.into(),
            iptables: sbin.join("iptables"),
            iptables_restore: sbin.join("iptables-restore"),
            iptables_save: sbin.join("iptables-save"),
            path_env: format!(
                "{}:{}:/usr/sbin:/usr/bin:/sbin:/bin",
                sbin.display(),
                image.join("usr/bin").display()
            ),
        }
    }

    /// host-local's store.
    pub fn ipam(&self) -> PathBuf {
        self.state.join("ipam")
    }

    /// The result cache.
    pub fn results(&self) -> PathBuf {
        self.state.join("results")
    }
}

/// A workload's network as attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// Workload name.
    pub workload: String,
    /// Its namespace (for the OCI spec's network namespace path).
    pub netns: PathBuf,
    /// Its address on `eth0`.
    pub address: IpNet,
    /// Its default gateway (the bridge).
    pub gateway: Option<IpAddr>,
    /// resolv.conf for it: the result's DNS, else the host's resolvers.
    pub dns: Dns,
    /// The host side of its veth.
    pub host_veth: Option<String>,
    /// The published ports.
    pub ports: Vec<PortMapping>,
    /// The whole final result.
    pub result: CniResult,
}

/// The cache entry of one attachment.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cached {
    #[serde(rename = "cniVersion")]
    cni_version: String,
    workload: String,
    netns: PathBuf,
    ports: Vec<PortMapping>,
    result: Value,
}

/// One detach done by [`Cni::cleanup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cleaned {
    /// The workload (container id) that was not live.
    pub workload: String,
    /// How the detach went.
    pub outcome: Result<(), CniError>,
}

/// The CNI driver for `ros0`.
pub struct Cni {
    paths: Paths,
    net: WorkloadNet,
    runner: Arc<dyn PluginRunner>,
    timeout: Duration,
    /// One operation at a time: the 1.1.1 plugins create shared chains (`CNI-HOSTPORT-*`,
    /// `CNI-FORWARD`) check-then-create, which races between concurrent calls.
    serial: Mutex<()>,
}

/// Loads [`MODULES`] from `dir` (`/lib/modules/<release>`): built-ins and already loaded ones
/// count as loaded.
pub fn load_modules(db: &ModuleDb, dir: &Path) -> Result<(), CniError> {
    for m in MODULES {
        if db.is_builtin(m) {
            continue;
        }
        modules::load(db, dir, m).map_err(|e| CniError::Module(e.to_string()))?;
    }
    Ok(())
}

/// PID 1's start of workload networking, once, before the first workload: the kernel modules,
/// the driver over the system paths and the reaper, ros's host rules, and the boot cleanup
/// (nothing is live yet, so whatever state is found is detached; each failure is logged).
/// Must run on a worker thread, not the one that reaps (plugins and iptables run through
/// `runner`, whose exits that thread delivers).
pub fn start(
    config: &crate::config::schema::WorkloadNetwork,
    nameservers: &[IpAddr],
    search: &[String],
    runner: Arc<dyn PluginRunner>,
) -> Result<Cni, CniError> {
    let net = WorkloadNet::new(config, nameservers, search)?;
    let dir = modules::module_dir();
    let db = ModuleDb::load(&dir).map_err(|e| CniError::Module(e.to_string()))?;
    load_modules(&db, &dir)?;
    let cni = Cni::new(Paths::system(), net, runner);
    cni.apply_firewall()?;
    for c in cni.cleanup(&BTreeSet::new()) {
        match c.outcome {
            Ok(()) => log::info!("workloads.{}: stale network removed", c.workload),
            Err(e) => log::warn!("{e}"),
        }
    }
    Ok(cni)
}

fn state_err(path: &Path) -> impl FnOnce(String) -> CniError {
    let path = path.to_owned();
    move |reason| CniError::State { path, reason }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CniError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| state_err(dir)(e.to_string()))?;
    }
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes).map_err(|e| state_err(&tmp)(e.to_string()))?;
    fs::rename(&tmp, path).map_err(|e| state_err(path)(e.to_string()))
}

impl Cni {
    /// A driver for `net` with `paths`, running plugins through `runner`.
    pub fn new(paths: Paths, net: WorkloadNet, runner: Arc<dyn PluginRunner>) -> Cni {
        Cni {
            paths,
            net,
            runner,
            timeout: PLUGIN_TIMEOUT,
            serial: Mutex::new(()),
        }
    }

    fn serial(&self) -> MutexGuard<'_, ()> {
        self.serial.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The settings in use.
    pub fn network(&self) -> &WorkloadNet {
        &self.net
    }

    /// The `ros0` conflist handed to the plugins.
    pub fn conflist(&self) -> Value {
        conflist::conflist(&self.net, &self.paths.ipam())
    }

    fn tools(&self) -> firewall::Tools<'_> {
        firewall::Tools {
            iptables: &self.paths.iptables,
            iptables_restore: &self.paths.iptables_restore,
            iptables_save: &self.paths.iptables_save,
            path_env: &self.paths.path_env,
        }
    }

    /// Writes ros's host rules for the bridge (see `firewall`).
    pub fn apply_firewall(&self) -> Result<(), CniError> {
        let _one = self.serial();
        Ok(firewall::apply(
            self.runner.as_ref(),
            &self.tools(),
            &self.net,
        )?)
    }

    fn cache_path(&self, workload: &str) -> PathBuf {
        self.paths.results().join(format!("{workload}.json"))
    }

    fn netns_err(workload: &str) -> impl FnOnce(NetnsError) -> CniError {
        let workload = workload.to_string();
        move |source| CniError::Netns { workload, source }
    }

    /// Runs one plugin of `list` with `CNI_ARGS` = `args`; returns its parsed result for ADD.
    #[allow(clippy::too_many_arguments)]
    fn exec(
        &self,
        command: Command,
        workload: &str,
        netns: Option<&Path>,
        ifname: &str,
        list: &Value,
        plugin: &Value,
        prev: Option<&Value>,
        runtime: &Map<String, Value>,
        args: &str,
    ) -> Result<Option<RawResult>, CniError> {
        let kind = conflist::plugin_type(plugin);
        let stdin = conflist::plugin_stdin(list, plugin, prev, runtime);
        let env = vec![
            ("CNI_COMMAND".to_string(), command.as_str().to_string()),
            ("CNI_CONTAINERID".to_string(), workload.to_string()),
            (
                "CNI_NETNS".to_string(),
                netns.map(|p| p.display().to_string()).unwrap_or_default(),
            ),
            ("CNI_IFNAME".to_string(), ifname.to_string()),
            ("CNI_ARGS".to_string(), args.to_string()),
            (
                "CNI_PATH".to_string(),
                self.paths.plugins.display().to_string(),
            ),
            ("PATH".to_string(), self.paths.path_env.clone()),
        ];
        let inv = Invocation {
            program: self.paths.plugins.join(&kind),
            args: Vec::new(),
            env,
            stdin: serde_json::to_vec(&stdin).unwrap_or_default(),
            timeout: self.timeout,
        };
        let done = self.runner.run(&inv).map_err(|source| CniError::Run {
            workload: workload.to_string(),
            plugin: kind.clone(),
            command,
            source,
        })?;
        if !done.success() {
            return Err(match result::parse_error(&done.stdout) {
                Some(error) => CniError::Plugin {
                    workload: workload.to_string(),
                    plugin: kind,
                    command,
                    error: Box::new(error),
                },
                None => CniError::PluginExit {
                    workload: workload.to_string(),
                    plugin: kind,
                    command,
                    exit: done.exit,
                    stderr: done.stderr_text(),
                },
            });
        }
        if command != Command::Add {
            return Ok(None);
        }
        RawResult::parse(&done.stdout)
            .map(Some)
            .map_err(|e| CniError::BadResult {
                workload: workload.to_string(),
                plugin: kind,
                command,
                reason: e.to_string(),
            })
    }

    fn runtime_config(ports: &[PortMapping]) -> Map<String, Value> {
        let mut rt = Map::new();
        rt.insert("portMappings".into(), conflist::port_mappings(ports));
        rt
    }

    /// ADD across a conflist with `CNI_ARGS` = `args`; the final result.
    fn add_list(
        &self,
        workload: &str,
        netns: &Path,
        ifname: &str,
        list: &Value,
        ports: &[PortMapping],
        args: &str,
    ) -> Result<Option<RawResult>, CniError> {
        let runtime = Self::runtime_config(ports);
        let mut prev: Option<RawResult> = None;
        for plugin in conflist::plugins(list) {
            let got = self.exec(
                Command::Add,
                workload,
                Some(netns),
                ifname,
                list,
                &plugin,
                prev.as_ref().map(|r| &r.raw),
                &runtime,
                args,
            )?;
            if got.is_some() {
                prev = got;
            }
        }
        Ok(prev)
    }

    /// Creates the workload's namespace and attaches it to `ros0` with `ports` published.
    /// Leftovers of an earlier run of the same workload (a crash, a lost DEL) are detached
    /// first. On failure everything done is undone and the error returned.
    pub fn attach(&self, workload: &str, ports: &[PortMapping]) -> Result<Attached, CniError> {
        self.attach_at(workload, ports, None)
    }

    /// [`Cni::attach`], asking host-local for `address` when given (`CNI_ARGS`
    /// `IgnoreUnknown=1;IP=<address>` on the `ros0` chain, so the other plugins ignore it): a
    /// restarted workload gets its address back. When the address is not free, host-local's
    /// error is returned (and everything undone); the caller may attach again without it.
    pub fn attach_at(
        &self,
        workload: &str,
        ports: &[PortMapping],
        address: Option<IpAddr>,
    ) -> Result<Attached, CniError> {
        let args = address
            .map(|a| format!("IgnoreUnknown=1;IP={a}"))
            .unwrap_or_default();
        let _one = self.serial();
        let ns_path =
            netns::path(&self.paths.netns, workload).map_err(Self::netns_err(workload))?;
        if self.cache_path(workload).exists() || fs::symlink_metadata(&ns_path).is_ok() {
            log::info!("workloads.{workload}: detaching a leftover network first");
            if let Err(e) = self.detach_locked(workload) {
                log::warn!("{e}");
            }
        }
        let ns = netns::create(&self.paths.netns, workload).map_err(Self::netns_err(workload))?;
        match self.add_all(workload, &ns, ports, &args) {
            Ok(a) => Ok(a),
            Err(e) => {
                // The spec: a failed ADD is followed by a DEL of everything.
                if let Err(undo) = self.del_all(workload, Some(&ns), ports, None) {
                    log::warn!("undoing the failed attach: {undo}");
                }
                let _ = netns::delete(&self.paths.netns, workload);
                let _ = fs::remove_file(self.cache_path(workload));
                Err(e)
            }
        }
    }

    fn add_all(
        &self,
        workload: &str,
        ns: &Path,
        ports: &[PortMapping],
        args: &str,
    ) -> Result<Attached, CniError> {
        self.add_list(workload, ns, "lo", &conflist::loopback(), &[], "")?;
        let raw = self
            .add_list(workload, ns, IFNAME, &self.conflist(), ports, args)?
            .ok_or_else(|| CniError::NoAddress {
                workload: workload.to_string(),
            })?;
        let cached = Cached {
            cni_version: CNI_VERSION.to_string(),
            workload: workload.to_string(),
            netns: ns.to_owned(),
            ports: ports.to_vec(),
            result: raw.raw.clone(),
        };
        let path = self.cache_path(workload);
        let text =
            serde_json::to_vec_pretty(&cached).map_err(|e| state_err(&path)(e.to_string()))?;
        write_atomic(&path, &text)?;
        let sandbox = ns.display().to_string();
        let typed = raw.typed;
        let ip = typed
            .address_in(&sandbox, IFNAME)
            .or_else(|| typed.ips.first())
            .ok_or_else(|| CniError::NoAddress {
                workload: workload.to_string(),
            })?;
        let dns = if typed.dns.is_empty() {
            Dns {
                nameservers: self.net.nameservers.clone(),
                search: self.net.search.clone(),
                ..Dns::default()
            }
        } else {
            typed.dns.clone()
        };
        Ok(Attached {
            workload: workload.to_string(),
            netns: ns.to_owned(),
            address: ip.address,
            gateway: ip.gateway,
            dns,
            host_veth: typed.host_veth(BRIDGE).map(|i| i.name.clone()),
            ports: ports.to_vec(),
            result: typed.clone(),
        })
    }

    fn read_cache(&self, workload: &str) -> Result<Option<Cached>, CniError> {
        let path = self.cache_path(workload);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| state_err(&path)(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(state_err(&path)(e.to_string())),
        }
    }

    /// The address of an attached workload on `eth0`, from the result cache; `None` when it
    /// is not attached (or the cache does not parse). Does not wait for a running operation.
    pub fn address_of(&self, workload: &str) -> Option<IpNet> {
        cached_address(&self.cache_path(workload))
    }

    /// CHECK: the workload's interfaces, address, routes, lease and rules are as ADD left them.
    pub fn check(&self, workload: &str) -> Result<(), CniError> {
        let _one = self.serial();
        let cached = self
            .read_cache(workload)?
            .ok_or_else(|| CniError::NotAttached {
                workload: workload.to_string(),
            })?;
        let runtime = Self::runtime_config(&cached.ports);
        let lo = conflist::loopback();
        for plugin in conflist::plugins(&lo) {
            self.exec(
                Command::Check,
                workload,
                Some(&cached.netns),
                "lo",
                &lo,
                &plugin,
                None,
                &Map::new(),
                "",
            )?;
        }
        let list = self.conflist();
        for plugin in conflist::plugins(&list) {
            let checked = self.exec(
                Command::Check,
                workload,
                Some(&cached.netns),
                IFNAME,
                &list,
                &plugin,
                Some(&cached.result),
                &runtime,
                "",
            );
            match checked {
                Err(CniError::Plugin {
                    ref plugin,
                    ref error,
                    ..
                }) if plugin == "portmap" && error.msg.starts_with("could not check ipv6") => {
                    self.check_ports_v4(workload, &cached)?;
                }
                other => {
                    other?;
                }
            }
        }
        Ok(())
    }

    /// ros's CHECK of published ports, for an IPv4-only workload: portmap 1.1.1 checks the
    /// IPv6 chain too whenever ip6tables works, and that chain never exists for IPv4.
    fn check_ports_v4(&self, workload: &str, cached: &Cached) -> Result<(), CniError> {
        let result: CniResult = serde_json::from_value(cached.result.clone())
            .map_err(|e| state_err(&self.cache_path(workload))(e.to_string()))?;
        let v4 = result.ips.iter().find_map(|ip| match ip.address.addr() {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        });
        let has_v6 = result.ips.iter().any(|ip| ip.address.addr().is_ipv6());
        let fail = |reason: String| CniError::Plugin {
            workload: workload.to_string(),
            plugin: "portmap".to_string(),
            command: Command::Check,
            error: Box::new(ErrorObject {
                cni_version: CNI_VERSION.to_string(),
                code: 999,
                msg: reason,
                details: "checked by ros in the nat table".to_string(),
            }),
        };
        let (Some(addr), false) = (v4, has_v6) else {
            return Err(fail("could not check ipv6 dnat".to_string()));
        };
        let save = firewall::save_nat(self.runner.as_ref(), &self.tools())?;
        firewall::check_published(&save, workload, addr, &cached.ports).map_err(fail)
    }

    /// DEL across the chain in reverse, then the loopback; every plugin runs, the first error
    /// is returned.
    fn del_all(
        &self,
        workload: &str,
        ns: Option<&Path>,
        ports: &[PortMapping],
        prev: Option<&Value>,
    ) -> Result<(), CniError> {
        let runtime = Self::runtime_config(ports);
        let list = self.conflist();
        let mut first: Option<CniError> = None;
        let mut plugins = conflist::plugins(&list);
        plugins.reverse();
        for plugin in &plugins {
            if let Err(e) = self.exec(
                Command::Del,
                workload,
                ns,
                IFNAME,
                &list,
                plugin,
                prev,
                &runtime,
                "",
            ) {
                first.get_or_insert(e);
            }
        }
        if ns.is_some() {
            let lo = conflist::loopback();
            for plugin in conflist::plugins(&lo) {
                if let Err(e) = self.exec(
                    Command::Del,
                    workload,
                    ns,
                    "lo",
                    &lo,
                    &plugin,
                    None,
                    &Map::new(),
                    "",
                ) {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Detaches the workload: DEL (with the cached result, when there is one), then its
    /// namespace and cache entry. Safe to call again, and for a workload never attached.
    pub fn detach(&self, workload: &str) -> Result<(), CniError> {
        let _one = self.serial();
        self.detach_locked(workload)
    }

    fn detach_locked(&self, workload: &str) -> Result<(), CniError> {
        let ns_path =
            netns::path(&self.paths.netns, workload).map_err(Self::netns_err(workload))?;
        let cached = self.read_cache(workload).unwrap_or_else(|e| {
            log::warn!("{e}; detaching without the cached result");
            None
        });
        let ns = netns::is_mounted(&ns_path).then_some(ns_path.as_path());
        let (ports, prev) = match &cached {
            Some(c) => (c.ports.clone(), Some(&c.result)),
            None => (Vec::new(), None),
        };
        let mut del = self.del_all(workload, ns, &ports, prev);
        if del.is_ok() {
            // The bridge plugin leaves the masquerade rules when the namespace is gone.
            match firewall::remove_masquerade_leftovers(
                self.runner.as_ref(),
                &self.tools(),
                workload,
            ) {
                Ok(true) => log::info!("workloads.{workload}: removed leftover masquerade rules"),
                Ok(false) => {}
                Err(e) => del = Err(e.into()),
            }
        }
        let gone = netns::delete(&self.paths.netns, workload).map_err(Self::netns_err(workload));
        if del.is_ok() {
            let path = self.cache_path(workload);
            if let Err(e) = fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(state_err(&path)(e.to_string()));
                }
            }
        }
        del.and(gone)
    }

    /// Every workload ros holds network state for: leases in host-local's store, cached
    /// results and namespace files.
    pub fn known(&self) -> BTreeSet<String> {
        let mut ids: BTreeSet<String> = ipam_owners(&self.paths.ipam().join(BRIDGE))
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        if let Ok(entries) = fs::read_dir(self.paths.results()) {
            for e in entries.filter_map(Result::ok) {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(id) = name.strip_suffix(".json") {
                    ids.insert(id.to_string());
                }
            }
        }
        ids.extend(netns::list(&self.paths.netns));
        ids
    }

    /// Detaches every workload with network state that is not in `live` (boot: nothing is
    /// live yet). Returns what was done, one entry per workload.
    pub fn cleanup(&self, live: &BTreeSet<String>) -> Vec<Cleaned> {
        let _one = self.serial();
        self.known()
            .into_iter()
            .filter(|id| !live.contains(id))
            .filter(|id| netns::path(&self.paths.netns, id).is_ok())
            .map(|id| {
                let outcome = self.detach_locked(&id);
                Cleaned {
                    workload: id,
                    outcome,
                }
            })
            .collect()
    }
}

/// The `eth0` address in one result cache entry.
fn cached_address(path: &Path) -> Option<IpNet> {
    let cached: Cached = serde_json::from_slice(&fs::read(path).ok()?).ok()?;
    let result: CniResult = serde_json::from_value(cached.result).ok()?;
    let sandbox = cached.netns.display().to_string();
    result
        .address_in(&sandbox, IFNAME)
        .or_else(|| result.ips.first())
        .map(|ip| ip.address)
}

/// The address PID 1's driver gave workload `name` (its result cache under [`STATE_DIR`]),
/// for `ros ps` and the like; `None` when it is not attached. Cheap (one small file on
/// tmpfs), callable from any thread.
pub fn address_of(name: &str) -> Option<IpNet> {
    if netns::path(Path::new(netns::NETNS_DIR), name).is_err() {
        return None;
    }
    cached_address(&Paths::system().results().join(format!("{name}.json")))
}

/// host-local's leases in `dir` (`<dataDir>/<network>`): one file per address, named by it,
/// holding the container id (and, since 0.9, the interface on a second line).
pub fn ipam_owners(dir: &Path) -> Vec<(Ipv4Addr, String)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(Ipv4Addr, String)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let ip: Ipv4Addr = e.file_name().to_str()?.parse().ok()?;
            let text = fs::read_to_string(e.path()).ok()?;
            let id = text.lines().next()?.trim().to_string();
            (!id.is_empty()).then_some((ip, id))
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests;
