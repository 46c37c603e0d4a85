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

use std::sync::Arc;
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
    network: Network,
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
        let network = runtime.block_on(async {
            let netlink = RtNetlink::connect()?;
            Network::start(settings, netlink, host, Arc::new(UdpSockets)).await
        })?;
        Ok(NetService { runtime, network })
    }

    /// The running network (status, events, config errors).
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// Blocks until `policy` is met, cannot be met, or `timeout` passes.
    pub fn wait(&self, policy: NetworkWait, timeout: Duration) -> WaitOutcome {
        self.runtime.block_on(self.network.wait(policy, timeout))
    }

    /// Releases every DHCP lease, waiting at most `timeout`. True when all were released in
    /// time.
    pub fn release(&self, timeout: Duration) -> bool {
        self.runtime.block_on(self.network.release(timeout))
    }
}
