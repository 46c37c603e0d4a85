//! The network as PID 1 runs it: a small multi-thread tokio runtime in background threads
//! (`ros-net`), owning the rtnetlink connection and the DHCP clients, driven from PID 1's main
//! thread with blocking calls.
//!
//! Owns: the runtime's lifetime (it lives as long as the `NetService`, i.e. until `reboot(2)`,
//! so DHCP renewals go on after `ready`) and the blocking entry points `start`, `wait` and
//! `release`. The runtime has no process or signal driver: PID 1's signalfd and single reaper
//! stay in the main thread, and the worker threads inherit its blocked signal mask.
//! Must not: be created inside another tokio runtime (`block_on` would panic), or spawn
//! processes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::schema::NetworkWait;

use super::host::{Host, SystemHost};
use super::netlink::RtNetlink;
use super::{NetError, Network, Settings, UdpSockets, WaitOutcome};

/// Worker threads: netlink requests and a few UDP sockets need little.
const WORKERS: usize = 2;

/// The running network and the runtime it runs in.
pub struct NetService {
    runtime: tokio::runtime::Runtime,
    network: Mutex<Arc<Network>>,
    host: Arc<dyn Host>,
}

impl NetService {
    /// Starts the node's network: `/etc/resolv.conf`, the real hostname, netlink, UDP sockets.
    pub fn start(settings: Settings) -> Result<NetService, NetError> {
        Self::start_with(settings, Arc::new(SystemHost::new()))
    }

    /// Starts the network with `host` applying resolv.conf and the hostname (tests point it at
    /// a temporary directory and leave the host's name alone). Uses the calling thread's
    /// network namespace.
    pub fn start_with(settings: Settings, host: Arc<dyn Host>) -> Result<NetService, NetError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .thread_name("ros-net")
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| NetError::Runtime(e.to_string()))?;
        let for_start = host.clone();
        let network = runtime.block_on(async {
            let netlink = RtNetlink::connect()?;
            Network::start(settings, netlink, for_start, Arc::new(UdpSockets)).await
        })?;
        Ok(NetService {
            runtime,
            network: Mutex::new(Arc::new(network)),
            host,
        })
    }

    /// The running network (status, events, config errors).
    pub fn network(&self) -> Arc<Network> {
        self.network
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Blocks until `policy` is met, cannot be met, or `timeout` passes.
    pub fn wait(&self, policy: NetworkWait, timeout: Duration) -> WaitOutcome {
        let network = self.network();
        self.runtime.block_on(network.wait(policy, timeout))
    }

    /// Releases every DHCP lease, waiting at most `timeout`. True when all were released in
    /// time.
    pub fn release(&self, timeout: Duration) -> bool {
        let network = self.network();
        self.runtime.block_on(network.release(timeout))
    }

    /// Applies a changed network config live (the admin API): every link is brought down
    /// from the old plan (leases released, static addresses and routes removed) and up from
    /// the new one, then waited for as `wait` says. Blocks; never call it from PID 1's serve
    /// loop or inside a tokio runtime. Returns one line per link of the new network.
    pub fn reconfigure(
        &self,
        settings: Settings,
        wait: NetworkWait,
        timeout: Duration,
    ) -> Result<Vec<String>, NetError> {
        let old = self.network();
        let host = self.host.clone();
        let network = self.runtime.block_on(async move {
            old.release(Duration::from_secs(2)).await;
            old.remove_static().await;
            let netlink = RtNetlink::connect()?;
            Network::start(settings, netlink, host, Arc::new(UdpSockets)).await
        })?;
        let network = Arc::new(network);
        *self.network.lock().unwrap_or_else(|p| p.into_inner()) = network.clone();
        let outcome = self.runtime.block_on(network.wait(wait, timeout));
        let mut lines: Vec<String> = network
            .config_errors()
            .iter()
            .map(|e| format!("network: config error: {e}"))
            .collect();
        lines.extend(outcome.up.iter().map(|l| format!("network: {l} up")));
        lines.extend(
            outcome
                .not_up
                .iter()
                .map(|l| format!("network: {l} not up")),
        );
        Ok(lines)
    }
}
