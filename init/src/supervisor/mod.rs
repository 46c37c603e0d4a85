//! Supervision of PID 1's children and containers: the single reaper, the shells PID 1 runs
//! itself, the start/stop order (`graph`), the restart policy (`policy`) and the containers of
//! services and workloads (`fleet`), and the network of bridge workloads (`bridge_net`).

pub mod bridge_net;
pub mod daemons;
pub mod fence_ns;
pub mod fleet;
pub mod graph;
pub mod policy;
pub mod reaper;
pub mod shell;
pub mod waiters;

use crate::runtime::daemon::InstanceName;

/// Who owns a child of PID 1 (the token registered with the reaper).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// A shell on that tty.
    Shell(String),
    /// A containerd daemon.
    Containerd(InstanceName),
    /// A short-lived helper (a CNI plugin, iptables) whose spawner waits in `waiters`.
    Waiter(waiters::WaiterId),
}
