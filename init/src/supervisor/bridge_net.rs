//! Workload networking as the fleet drives it (`net = "bridge"`, docs/network.md "Workload
//! networking"): a cloneable handle over PID 1's CNI driver that the supervisors of bridge
//! workloads share.
//!
//! Owns: starting the driver once (`cni::start`: modules, ros's rules, the boot cleanup) on a
//! blocking thread of the fleet's runtime — eagerly when the boot config has bridge workloads,
//! else lazily at the first attach; retried at the next attach when it failed — and the two
//! per-task steps around it: [`BridgeNet::attach`] before a task starts (parses `ports`, runs
//! ADD, writes the container's resolv.conf under [`RESOLV_DIR`]) and [`BridgeNet::detach`]
//! after it ended (DEL, the resolv.conf goes). The paths the OCI spec joins are fixed per
//! container ([`BridgeNet::paths`]), so a restart's new task finds its new attachment at the
//! same place, and the address a workload had is asked for again (`Cni::attach_at`; a new one
//! when it is taken), so a restarted workload keeps its address.
//!
//! Must not: run on PID 1's reaping thread (every plugin runs through the reaper and waits for
//! the serve loop to deliver its exit; the driver calls run on `spawn_blocking` threads, and a
//! caller that blocks the main thread on a detach must keep reaping, as `Fleet::shutdown`
//! does), or decide when a workload runs (the supervisor does).
//!
//! Limitations: the workloads' resolvers are the host's as `/etc/resolv.conf` held when the
//! driver started (a DHCP change later is not followed); `[network.workloads]` is read once;
//! the remembered addresses live in memory (a reboot hands out addresses afresh).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::boot::kmsg;
use crate::config::ports::{PortError, PortMapping};
use crate::config::schema::WorkloadNetwork;
use crate::net::cni::{self, netns, Attached, Cni, CniError, PluginRunner};
use crate::net::resolv;
use crate::runtime::spec::BridgePaths;

/// Where each bridge workload's resolv.conf is written (`<name>.conf`).
pub const RESOLV_DIR: &str = "/run/ros/resolv";
/// The host's resolver settings workloads inherit.
const HOST_RESOLV: &str = "/etc/resolv.conf";

/// A step of a bridge workload's network that failed.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// A published port does not parse (validation rejects it first).
    #[error("workloads.{workload}.ports[{index}]: {source}")]
    Port {
        workload: String,
        index: usize,
        source: PortError,
    },
    /// The driver could not start (modules, rules or settings).
    #[error("workload networking did not start: {0}")]
    Start(CniError),
    /// ADD, DEL or their state.
    #[error(transparent)]
    Cni(#[from] CniError),
    /// The container's resolv.conf.
    #[error("workloads.{workload}: resolv.conf {path}: {source}")]
    Resolv {
        workload: String,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The blocking thread running the step ended without an answer.
    #[error("workloads.{workload}: network {step} did not finish: {reason}")]
    Thread {
        workload: String,
        step: &'static str,
        reason: String,
    },
}

/// How the driver is made: `cni::start` in PID 1, something else in tests.
type Starter = dyn Fn() -> Result<Cni, CniError> + Send + Sync;

struct Inner {
    start: Box<Starter>,
    resolv_dir: PathBuf,
    netns_dir: PathBuf,
    driver: tokio::sync::Mutex<Option<Arc<Cni>>>,
    /// The address each workload had at its last attach.
    last: Mutex<BTreeMap<String, IpAddr>>,
}

/// The handle: clone it into every bridge workload's supervisor.
#[derive(Clone)]
pub struct BridgeNet {
    inner: Arc<Inner>,
}

impl BridgeNet {
    /// PID 1's: `cni::start` with `settings`, the host's resolvers (read from
    /// `/etc/resolv.conf` when it starts) and `runner` (a `ReaperRunner`).
    pub fn new(settings: WorkloadNetwork, runner: Arc<dyn PluginRunner>) -> BridgeNet {
        let start = move || {
            let text = std::fs::read_to_string(HOST_RESOLV).unwrap_or_default();
            let dns = resolv::parse(&text);
            cni::start(&settings, &dns.nameservers, &dns.search, runner.clone())
        };
        Self::with_starter(
            Box::new(start),
            Path::new(RESOLV_DIR),
            Path::new(netns::NETNS_DIR),
        )
    }

    /// A handle whose driver comes from `start`, writing resolv.conf files into `resolv_dir`;
    /// `netns_dir` must be the driver's namespace directory.
    pub fn with_starter(start: Box<Starter>, resolv_dir: &Path, netns_dir: &Path) -> BridgeNet {
        BridgeNet {
            inner: Arc::new(Inner {
                start,
                resolv_dir: resolv_dir.to_owned(),
                netns_dir: netns_dir.to_owned(),
                driver: tokio::sync::Mutex::new(None),
                last: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// Where workload `name`'s namespace and resolv.conf are, for its OCI spec.
    pub fn paths(&self, name: &str) -> BridgePaths {
        BridgePaths {
            netns: self.inner.netns_dir.join(name),
            resolv_conf: self.resolv_path(name),
        }
    }

    fn resolv_path(&self, name: &str) -> PathBuf {
        self.inner.resolv_dir.join(format!("{name}.conf"))
    }

    /// The driver, started now if it is not yet (one start at a time; a failed start is tried
    /// again by the next caller).
    async fn driver(&self) -> Result<Arc<Cni>, BridgeError> {
        let mut slot = self.inner.driver.lock().await;
        if let Some(cni) = slot.as_ref() {
            return Ok(cni.clone());
        }
        let started = Instant::now();
        let inner = self.inner.clone();
        let cni = tokio::task::spawn_blocking(move || (inner.start)())
            .await
            .map_err(|e| BridgeError::Thread {
                workload: "*".into(),
                step: "start",
                reason: e.to_string(),
            })?
            .map_err(BridgeError::Start)?;
        let net = cni.network();
        kmsg::console(&format!(
            "workload networking: {} {} (gateway {}, isolate = {}) ready in {:.3}s",
            cni::BRIDGE,
            net.subnet,
            net.gateway,
            net.isolate,
            started.elapsed().as_secs_f64()
        ));
        let cni = Arc::new(cni);
        *slot = Some(cni.clone());
        Ok(cni)
    }

    /// Starts the driver ahead of the first attach (boot, when bridge workloads are
    /// configured), so its cost overlaps containerd's start and the image imports. A failure
    /// goes to the console; the workloads' attaches try again.
    pub async fn start(&self) {
        if let Err(e) = self.driver().await {
            kmsg::console(&e.to_string());
        }
    }

    /// Attaches workload `name` with `ports` (the config's strings) published and writes its
    /// resolv.conf; returns the attachment. Leftovers of an earlier task are detached first
    /// (by the driver). On failure nothing stays attached.
    pub async fn attach(&self, name: &str, ports: &[String]) -> Result<Attached, BridgeError> {
        let mut mappings = Vec::new();
        for (index, text) in ports.iter().enumerate() {
            mappings.push(
                PortMapping::parse(text).map_err(|source| BridgeError::Port {
                    workload: name.to_string(),
                    index,
                    source,
                })?,
            );
        }
        let cni = self.driver().await?;
        let workload = name.to_string();
        let want = self.last_address(name);
        let attached = tokio::task::spawn_blocking(move || {
            match cni.attach_at(&workload, &mappings, want) {
                Err(e) if want.is_some() => {
                    log::info!("workloads.{workload}: previous address not available ({e}); taking a new one");
                    cni.attach(&workload, &mappings)
                }
                other => other,
            }
        })
            .await
            .map_err(|e| BridgeError::Thread {
                workload: name.to_string(),
                step: "attach",
                reason: e.to_string(),
            })??;
        if let Ok(mut last) = self.inner.last.lock() {
            last.insert(name.to_string(), attached.address.addr());
        }
        let path = self.resolv_path(name);
        if let Err(source) = write_resolv(&path, &attached.dns.resolv_conf()) {
            // The attachment is useless without it: undo.
            let _ = self.detach(name).await;
            return Err(BridgeError::Resolv {
                workload: name.to_string(),
                path,
                source,
            });
        }
        Ok(attached)
    }

    /// The address workload `name` had at its last attach (asked for again at the next).
    pub fn last_address(&self, name: &str) -> Option<IpAddr> {
        self.inner
            .last
            .lock()
            .ok()
            .and_then(|l| l.get(name).copied())
    }

    /// Detaches workload `name` (DEL with the cached result) and removes its resolv.conf.
    /// Nothing to do while the driver never started (nothing can be attached then).
    pub async fn detach(&self, name: &str) -> Result<(), BridgeError> {
        let Some(cni) = self.inner.driver.lock().await.clone() else {
            return Ok(());
        };
        let workload = name.to_string();
        let detached = tokio::task::spawn_blocking(move || cni.detach(&workload))
            .await
            .map_err(|e| BridgeError::Thread {
                workload: name.to_string(),
                step: "detach",
                reason: e.to_string(),
            })?;
        match std::fs::remove_file(self.resolv_path(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                detached?;
                return Err(BridgeError::Resolv {
                    workload: name.to_string(),
                    path: self.resolv_path(name),
                    source,
                });
            }
        }
        Ok(detached?)
    }
}

/// The address a bridge workload shows (`ros ps`): its `eth0` address without the prefix.
pub fn address_of(name: &str) -> Option<IpAddr> {
    cni::address_of(name).map(|a| a.addr())
}

/// Writes a resolv.conf through a temporary file and a rename (a running container keeps the
/// file it bind-mounted; the next task mounts the new one).
fn write_resolv(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("conf.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never_started(dir: &Path) -> BridgeNet {
        BridgeNet::with_starter(
            Box::new(|| {
                Err(CniError::Module(
                    "module bridge: not found in /lib/modules/x".into(),
                ))
            }),
            &dir.join("resolv"),
            &dir.join("netns"),
        )
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn test_paths_are_fixed_per_workload() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let b = never_started(dir.path());
        assert_eq!(
            b.paths("web"),
            BridgePaths {
                netns: dir.path().join("netns/web"),
                resolv_conf: dir.path().join("resolv/web.conf"),
            }
        );
    }

    #[test]
    fn test_bad_port_names_the_key_and_a_failed_start_says_so() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let b = never_started(dir.path());
        let rt = rt();
        let err = rt
            .block_on(b.attach("web", &["8080:80/tcp".into(), "80:x".into()]))
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "workloads.web.ports[1]: invalid port \"x\" in \"80:x\": expected a number from 1 to 65535"
            )
        );
        let err = rt
            .block_on(b.attach("web", &["8080:80/tcp".into()]))
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "workload networking did not start: workload networking: module bridge: not found in /lib/modules/x"
            )
        );
        // Never started: nothing is attached, so a detach has nothing to do.
        assert!(rt.block_on(b.detach("web")).is_ok());
    }

    #[test]
    fn test_resolv_conf_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("resolv/web.conf");
        write_resolv(&path, "nameserver 10.0.2.3\n").unwrap_or_else(|e| panic!("{e}"));
        write_resolv(&path, "nameserver 1.1.1.1\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap_or_default(),
            "nameserver 1.1.1.1\n"
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("resolv"))
                .map(|d| d.count())
                .unwrap_or(0),
            1
        );
    }
}
