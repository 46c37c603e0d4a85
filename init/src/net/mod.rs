//! net: the host network, brought up natively by PID 1 (DESIGN.md boot step 7).
//!
//! Owns the reconciler: list the links, bring `lo` up, plan (`plan`), then configure every bound
//! link in its own task, in parallel — MTU, link up, static addresses and routes, then a DHCP
//! client (`dhcp`) when asked, whose leases it applies (address, default route, DNS, hostname)
//! and removes again (expiry, NAK, release at shutdown). It keeps a status per link and an event
//! log, writes `/etc/resolv.conf` whenever the merged DNS settings change (`resolv`, `host`), and
//! answers `network.wait` (`Network::wait`) with a bounded wait that never hangs boot.
//! Must not: open netlink or DHCP sockets itself (it is handed a `Netlink` and `Sockets`), log an
//! error more than once, or let one link's failure (a silent DHCP server, a refused route) hold
//! up another.
//!
//! Routing policy: a static `gateway` is a default route with the kernel's metric 0; a DHCP
//! router is a default route (`proto dhcp`) with metric `DHCP_METRIC_BASE + ifindex`, so several
//! DHCP uplinks coexist, the first NIC is preferred, and a static gateway wins over all of them.
//! Hostname policy: the DHCP host name (option 12) is set only when no config layer set
//! `hostname` (`Settings::hostname` is `None`); otherwise the config wins, and with neither the
//! node keeps the defaults' `ros`.
//!
//! Limitations: no live reconfiguration yet (a config change applies at the next boot), no
//! IPv6 autoconfiguration beyond the kernel's own SLAAC, no DHCPv6, no VLAN/bond/bridge devices.

pub mod cni;
pub mod dhcp;
pub mod host;
pub mod netlink;
pub mod plan;
pub mod resolv;
pub mod service;

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use ipnet::IpNet;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::schema::{Network as NetworkConfig, NetworkWait};
use crate::config::Config;
use dhcp::socket::UdpTransport;
use dhcp::{Client, DhcpClient, DhcpEvent, LeaseInfo, LostReason, Transport};
use host::{Host, HostError};
use netlink::{Netlink, NetlinkError};
use plan::{LinkPlan, PlanError, RouteOrigin, RouteSpec};

pub use service::NetService;

/// DHCP default routes get this metric plus the link's ifindex.
pub const DHCP_METRIC_BASE: u32 = 1024;

/// The event log keeps this many most recent entries (a link without carrier reports a failed
/// send every backoff period, for as long as it lasts).
const EVENT_LOG_MAX: usize = 1000;

/// The longest `wait` honours, whatever `network.wait_timeout_s` says.
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

/// Smallest MTU a DHCP server may set (RFC 2132 §5.1).
const MIN_DHCP_MTU: u16 = 576;

/// What the network needs from the effective config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `[network]`.
    pub network: NetworkConfig,
    /// The configured host name, or `None` when no layer set one (then DHCP may name the host).
    pub hostname: Option<String>,
}

impl Settings {
    /// The network settings of an effective config.
    pub fn from_config(config: &Config) -> Settings {
        Settings {
            network: config.network.clone(),
            hostname: config.hostname_set.then(|| config.hostname.clone()),
        }
    }
}

/// A network failure, naming the interface key and link (or the file) at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    /// Listing links or bringing up `lo` failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// A static setting of a link could not be applied.
    #[error("network.interfaces.{key} ({ifname}): {source}")]
    Link {
        /// Interface key.
        key: String,
        /// Link name.
        ifname: String,
        /// The refused request.
        source: NetlinkError,
    },
    /// A DHCP lease could not be applied or removed.
    #[error("network.interfaces.{key} ({ifname}): DHCP lease {address}: {source}")]
    Lease {
        /// Interface key.
        key: String,
        /// Link name.
        ifname: String,
        /// The leased address.
        address: Ipv4Addr,
        /// The refused request.
        source: NetlinkError,
    },
    /// The DHCP client could not start on a link.
    #[error("network.interfaces.{key} ({ifname}): DHCP: {reason}")]
    Dhcp {
        /// Interface key.
        key: String,
        /// Link name.
        ifname: String,
        /// Why (socket error, no MAC address).
        reason: String,
    },
    /// A link's task panicked.
    #[error("network.interfaces.{key} ({ifname}): task panicked")]
    Panicked {
        /// Interface key.
        key: String,
        /// Link name.
        ifname: String,
    },
    /// resolv.conf or the hostname could not be set.
    #[error(transparent)]
    Host(#[from] HostError),
    /// The tokio runtime could not be built.
    #[error("network runtime: {0}")]
    Runtime(String),
}

/// Where a link stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// Being configured, or waiting for a DHCP lease.
    Pending,
    /// Static settings applied and, with DHCP, a lease applied.
    Configured,
    /// Something could not be applied; the error was logged.
    Failed(NetError),
    /// The DHCP lease was released (shutdown).
    Released,
}

/// The status of one bound link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkStatus {
    /// Interface key.
    pub key: String,
    /// Link name.
    pub ifname: String,
    /// `optional = true`.
    pub optional: bool,
    /// Where it stands.
    pub state: LinkState,
    /// The DHCP lease it holds.
    pub lease: Option<LeaseInfo>,
}

impl LinkStatus {
    pub fn label(&self) -> String {
        format!("network.interfaces.{} ({})", self.key, self.ifname)
    }
}

/// One entry of the network's event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetEvent {
    /// A link reached `Configured`.
    Configured {
        /// Link name.
        ifname: String,
    },
    /// A link failed.
    Failed {
        /// Link name.
        ifname: String,
        /// Why.
        error: NetError,
    },
    /// A DHCP client reported.
    Dhcp {
        /// Link name.
        ifname: String,
        /// What.
        event: Box<DhcpEvent>,
    },
    /// resolv.conf was written with this text.
    ResolvConf(String),
    /// The hostname was set from DHCP.
    Hostname(String),
}

impl NetEvent {
    /// `(link name, event)` when this is a DHCP client's report.
    pub fn dhcp(&self) -> Option<(&str, &DhcpEvent)> {
        match self {
            NetEvent::Dhcp { ifname, event } => Some((ifname.as_str(), event.as_ref())),
            NetEvent::Configured { .. }
            | NetEvent::Failed { .. }
            | NetEvent::ResolvConf(_)
            | NetEvent::Hostname(_) => None,
        }
    }
}

/// Opens the DHCP transport of a link.
pub trait Sockets: Send + Sync {
    /// The transport for `ifname`.
    fn open(&self, ifname: &str) -> io::Result<Box<dyn Transport>>;
}

/// Real UDP sockets (`dhcp::socket`).
pub struct UdpSockets;

impl Sockets for UdpSockets {
    fn open(&self, ifname: &str) -> io::Result<Box<dyn Transport>> {
        if UdpTransport::rp_filter_on(ifname) {
            log::warn!(
                "network: rp_filter is on for {ifname}; the first DHCP reply may be dropped \
                 (set net.ipv4.conf.all.rp_filter and net.ipv4.conf.{ifname}.rp_filter to 0)"
            );
        }
        Ok(Box::new(UdpTransport::open(ifname)?))
    }
}

impl Transport for Box<dyn Transport> {
    fn send<'a>(
        &'a mut self,
        bytes: &'a [u8],
        to: dhcp::Destination,
    ) -> BoxFuture<'a, io::Result<()>> {
        (**self).send(bytes, to)
    }
    fn recv(&mut self) -> BoxFuture<'_, io::Result<Vec<u8>>> {
        (**self).recv()
    }
}

/// How `wait` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitOutcome {
    /// The policy waited for.
    pub policy: NetworkWait,
    /// The policy is met.
    pub satisfied: bool,
    /// The timeout passed first.
    pub timed_out: bool,
    /// Time spent waiting.
    pub elapsed: Duration,
    /// Configured links (`network.interfaces.KEY (IFNAME)`).
    pub up: Vec<String>,
    /// Links (or keys) the policy counted that are not up, each with why.
    pub not_up: Vec<String>,
}

impl WaitOutcome {
    /// The warning to log when the policy was not met, naming what is missing.
    pub fn warning(&self) -> Option<String> {
        if self.satisfied {
            return None;
        }
        let policy = match self.policy {
            NetworkWait::Any => "any",
            NetworkWait::All => "all",
            NetworkWait::None => "none",
        };
        let how = if self.timed_out {
            format!("not ready after {:.1}s", self.elapsed.as_secs_f64())
        } else {
            "cannot be met".to_string()
        };
        Some(format!(
            "network.wait = \"{policy}\" {how}; going on without it: {}",
            self.not_up.join(", ")
        ))
    }
}

#[derive(Default)]
struct State {
    links: BTreeMap<String, LinkStatus>,
    events: Vec<NetEvent>,
    resolv: Option<String>,
    hostname: Option<String>,
}

struct Shared {
    netlink: Arc<dyn Netlink>,
    host: Arc<dyn Host>,
    settings: Settings,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        {
            let mut s = self.lock();
            f(&mut s);
            let extra = s.events.len().saturating_sub(EVENT_LOG_MAX);
            s.events.drain(..extra);
        }
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn set_state(&self, ifname: &str, state: LinkState) {
        let event = match &state {
            LinkState::Configured => Some(NetEvent::Configured {
                ifname: ifname.to_string(),
            }),
            LinkState::Failed(error) => {
                log::error!("network: {error}");
                Some(NetEvent::Failed {
                    ifname: ifname.to_string(),
                    error: error.clone(),
                })
            }
            LinkState::Pending | LinkState::Released => None,
        };
        self.update(|s| {
            if let Some(l) = s.links.get_mut(ifname) {
                l.state = state;
            }
            s.events.extend(event);
        });
    }

    /// Rewrites resolv.conf and the DHCP hostname when what the leases say changed.
    fn refresh_host(&self) {
        let (text, dhcp_name) = {
            let s = self.lock();
            let mut bound: Vec<&LinkStatus> =
                s.links.values().filter(|l| l.lease.is_some()).collect();
            bound.sort_by(|a, b| (&a.key, &a.ifname).cmp(&(&b.key, &b.ifname)));
            let leases: Vec<resolv::LeaseDns> = bound
                .iter()
                .filter_map(|l| l.lease.as_ref())
                .map(|lease| resolv::LeaseDns {
                    nameservers: lease.dns.iter().map(|a| IpAddr::V4(*a)).collect(),
                    search: if lease.search.is_empty() {
                        lease.domain.iter().cloned().collect()
                    } else {
                        lease.search.clone()
                    },
                })
                .collect();
            let net = &self.settings.network;
            let dns = resolv::merge(&net.nameservers, &net.search, &leases);
            let text = resolv::render(&dns);
            let text = (s.resolv.as_deref() != Some(text.as_str())).then_some(text);
            let name = if self.settings.hostname.is_none() {
                bound
                    .iter()
                    .find_map(|l| l.lease.as_ref().and_then(|x| x.hostname.clone()))
                    .filter(|n| valid_hostname(n) && s.hostname.as_ref() != Some(n))
            } else {
                None
            };
            (text, name)
        };
        if let Some(text) = text {
            match self.host.write_resolv_conf(&text) {
                Ok(()) => self.update(|s| {
                    s.resolv = Some(text.clone());
                    s.events.push(NetEvent::ResolvConf(text));
                }),
                Err(e) => log::error!("network: {e}"),
            }
        }
        if let Some(name) = dhcp_name {
            match self.host.set_hostname(&name) {
                Ok(()) => {
                    log::info!("network: hostname {name} (from DHCP)");
                    self.update(|s| {
                        s.hostname = Some(name.clone());
                        s.events.push(NetEvent::Hostname(name));
                    });
                }
                Err(e) => log::error!("network: {e}"),
            }
        }
    }
}

/// RFC 1123 host name check for names a DHCP server sends.
fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// The routes a DHCP lease installs on link `index`: a host route to the router when it lies
/// outside the leased subnet, then the default route.
pub fn lease_routes(index: u32, lease: &LeaseInfo) -> Vec<RouteSpec> {
    let mut out = Vec::new();
    let Some(router) = lease.routers.first().copied() else {
        return out;
    };
    let subnet = IpNet::new(IpAddr::V4(lease.address), lease.prefix_len).ok();
    if !subnet.is_some_and(|n| n.contains(&IpAddr::V4(router))) {
        out.push(RouteSpec {
            oif: index,
            to: IpNet::new(IpAddr::V4(router), 32)
                .unwrap_or_else(|_| plan::default_net(IpAddr::V4(router))),
            via: None,
            metric: Some(DHCP_METRIC_BASE.saturating_add(index)),
            origin: RouteOrigin::Dhcp,
        });
    }
    out.push(RouteSpec {
        oif: index,
        to: plan::default_net(IpAddr::V4(router)),
        via: Some(IpAddr::V4(router)),
        metric: Some(DHCP_METRIC_BASE.saturating_add(index)),
        origin: RouteOrigin::Dhcp,
    });
    out
}

/// Applies one link's DHCP events.
struct LinkLeases {
    shared: Arc<Shared>,
    link: LinkPlan,
}

impl LinkLeases {
    fn lease_error(&self, lease: &LeaseInfo, source: NetlinkError) -> NetError {
        NetError::Lease {
            key: self.link.key.clone(),
            ifname: self.link.ifname.clone(),
            address: lease.address,
            source,
        }
    }

    async fn apply(&self, lease: &LeaseInfo) -> Result<(), NetError> {
        let nl = &self.shared.netlink;
        let index = self.link.index;
        let addr = IpNet::new(IpAddr::V4(lease.address), lease.prefix_len)
            .unwrap_or_else(|_| plan::default_net(IpAddr::V4(lease.address)));
        if let Some(mtu) = lease
            .mtu
            .filter(|m| *m >= MIN_DHCP_MTU && self.link.mtu.is_none())
        {
            nl.set_mtu(index, u32::from(mtu))
                .await
                .map_err(|e| self.lease_error(lease, e))?;
        }
        nl.add_address(index, addr)
            .await
            .map_err(|e| self.lease_error(lease, e))?;
        for route in lease_routes(index, lease) {
            nl.add_route(route)
                .await
                .map_err(|e| self.lease_error(lease, e))?;
        }
        // The configured routes of a DHCP link (a `gateway` among them) usually need the
        // lease's subnet to be reachable, so they go in once the lease is.
        for route in &self.link.routes {
            nl.add_route(route.clone())
                .await
                .map_err(|e| self.lease_error(lease, e))?;
        }
        Ok(())
    }

    async fn remove(&self, lease: &LeaseInfo) {
        let nl = &self.shared.netlink;
        let index = self.link.index;
        for route in lease_routes(index, lease).into_iter().rev() {
            if let Err(e) = nl.del_route(route).await {
                log::warn!("network: {}", self.lease_error(lease, e));
            }
        }
        if let Ok(addr) = IpNet::new(IpAddr::V4(lease.address), lease.prefix_len) {
            if let Err(e) = nl.del_address(index, addr).await {
                log::warn!("network: {}", self.lease_error(lease, e));
            }
        }
    }

    fn describe(&self, lease: &LeaseInfo) -> String {
        let router = lease
            .routers
            .first()
            .map(|r| format!(", router {r}"))
            .unwrap_or_default();
        format!(
            "{}/{} from {}{router}, lease {}s",
            lease.address, lease.prefix_len, lease.server, lease.lease_s
        )
    }

    fn set_lease(&self, lease: Option<LeaseInfo>, state: LinkState) {
        let ifname = self.link.ifname.clone();
        self.shared.update(|s| {
            if let Some(l) = s.links.get_mut(&ifname) {
                l.lease = lease;
            }
        });
        self.shared.set_state(&ifname, state);
    }
}

impl dhcp::LeaseHandler for LinkLeases {
    fn handle(&self, event: DhcpEvent) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let who = format!(
                "network.interfaces.{} ({})",
                self.link.key, self.link.ifname
            );
            match &event {
                DhcpEvent::Bound(lease) => match self.apply(lease).await {
                    Ok(()) => {
                        log::info!("network: {who}: DHCP lease {}", self.describe(lease));
                        self.set_lease(Some(lease.clone()), LinkState::Configured);
                    }
                    Err(e) => self.set_lease(Some(lease.clone()), LinkState::Failed(e)),
                },
                DhcpEvent::Renewed { previous, lease } | DhcpEvent::Rebound { previous, lease } => {
                    let moved = previous.address != lease.address
                        || previous.prefix_len != lease.prefix_len
                        || previous.routers.first() != lease.routers.first();
                    if moved {
                        self.remove(previous).await;
                    }
                    // Re-applied even when unchanged (idempotent): heals an address or route
                    // removed behind our back.
                    let applied = self.apply(lease).await;
                    log::info!(
                        "network: {who}: DHCP lease extended: {}",
                        self.describe(lease)
                    );
                    let state = applied.map_or_else(LinkState::Failed, |()| LinkState::Configured);
                    self.set_lease(Some(lease.clone()), state);
                }
                DhcpEvent::Lost { lease, why } => {
                    self.remove(lease).await;
                    let state = match why {
                        LostReason::Released => {
                            log::info!("network: {who}: DHCP lease {} released", lease.address);
                            LinkState::Released
                        }
                        LostReason::Expired | LostReason::Nak => {
                            log::warn!(
                                "network: {who}: DHCP lease {} lost ({why:?}); asking again",
                                lease.address
                            );
                            LinkState::Pending
                        }
                    };
                    self.set_lease(None, state);
                }
                DhcpEvent::NoAnswer { attempts } => {
                    log::info!("network: {who}: no DHCP answer yet ({attempts} DISCOVERs)");
                }
                DhcpEvent::Failed(e) => log::warn!("network: {who}: {e}"),
            }
            self.shared.update(|s| {
                s.events.push(NetEvent::Dhcp {
                    ifname: self.link.ifname.clone(),
                    event: Box::new(event),
                });
            });
            self.shared.refresh_host();
        })
    }
}

/// Applies the static part of a link's plan: MTU, up, addresses, routes. Every step is tried;
/// the first failure is returned (the others are logged).
async fn apply_static(nl: &dyn Netlink, link: &LinkPlan) -> Result<(), NetError> {
    let mut first: Option<NetError> = None;
    let mut note = |r: Result<(), NetlinkError>| {
        if let Err(source) = r {
            let e = NetError::Link {
                key: link.key.clone(),
                ifname: link.ifname.clone(),
                source,
            };
            match &first {
                None => first = Some(e),
                Some(_) => log::error!("network: {e}"),
            }
        }
    };
    if let Some(mtu) = link.mtu {
        note(nl.set_mtu(link.index, mtu).await);
    }
    note(nl.set_up(link.index).await);
    for addr in &link.addresses {
        note(nl.add_address(link.index, *addr).await);
    }
    // A DHCP link's routes wait for its lease (see `LinkLeases::apply`).
    if !link.dhcp {
        for route in &link.routes {
            note(nl.add_route(route.clone()).await);
        }
    }
    first.map_or(Ok(()), Err)
}

async fn run_link(
    shared: Arc<Shared>,
    sockets: Arc<dyn Sockets>,
    link: LinkPlan,
    stop: watch::Receiver<bool>,
) {
    if let Err(e) = apply_static(shared.netlink.as_ref(), &link).await {
        if !link.dhcp {
            shared.set_state(&link.ifname, LinkState::Failed(e));
            return;
        }
        // A static part that failed (say, a bad extra address) must not cost the link its lease.
        log::error!("network: {e}; asking DHCP all the same");
    }
    if !link.dhcp {
        log::info!(
            "network: network.interfaces.{} ({}) configured",
            link.key,
            link.ifname
        );
        shared.set_state(&link.ifname, LinkState::Configured);
        return;
    }
    let dhcp_error = |reason: String| NetError::Dhcp {
        key: link.key.clone(),
        ifname: link.ifname.clone(),
        reason,
    };
    let Some(mac) = link.mac else {
        let e = dhcp_error("the link has no Ethernet address".into());
        shared.set_state(&link.ifname, LinkState::Failed(e));
        return;
    };
    let transport = match sockets.open(&link.ifname) {
        Ok(t) => t,
        Err(e) => {
            let e = dhcp_error(format!("socket: {e}"));
            shared.set_state(&link.ifname, LinkState::Failed(e));
            return;
        }
    };
    let client = Client {
        mac,
        hostname: shared.settings.hostname.clone(),
    };
    let ifname = link.ifname.clone();
    let handler = Arc::new(LinkLeases {
        shared: shared.clone(),
        link,
    });
    DhcpClient::new(&ifname, client, transport, handler, stop)
        .run()
        .await;
}

/// The running network: per-link tasks, their status and event log.
pub struct Network {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    plan: plan::Plan,
}

impl Network {
    /// Brings the network up: `lo`, then every planned link in its own task. Returns once the
    /// tasks are started (see `wait`); fails only when the links cannot even be listed. Config
    /// errors are in `config_errors()`, for the caller to report once. Must run inside a tokio
    /// runtime, which must outlive the `Network`.
    pub async fn start(
        settings: Settings,
        netlink: Arc<dyn Netlink>,
        host: Arc<dyn Host>,
        sockets: Arc<dyn Sockets>,
    ) -> Result<Network, NetError> {
        let links = netlink.links().await?;
        let plan = plan::plan(&settings.network, &links);
        if let Some(lo) = plan.loopback {
            netlink.set_up(lo).await?;
        }
        let (changed, _) = watch::channel(0u64);
        let (stop, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            netlink,
            host,
            settings,
            state: Mutex::new(State::default()),
            changed,
        });
        shared.update(|s| {
            for l in &plan.links {
                s.links.insert(
                    l.ifname.clone(),
                    LinkStatus {
                        key: l.key.clone(),
                        ifname: l.ifname.clone(),
                        optional: l.optional,
                        state: LinkState::Pending,
                        lease: None,
                    },
                );
            }
        });
        let mut tasks = Vec::new();
        for link in plan.links.iter().cloned() {
            let (key, ifname) = (link.key.clone(), link.ifname.clone());
            let inner = tokio::spawn(run_link(
                shared.clone(),
                sockets.clone(),
                link,
                stop_rx.clone(),
            ));
            let sup = shared.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = inner.await {
                    if e.is_panic() {
                        let error = NetError::Panicked {
                            key,
                            ifname: ifname.clone(),
                        };
                        sup.set_state(&ifname, LinkState::Failed(error));
                    }
                }
            }));
        }
        // The config's own nameservers apply before any lease.
        shared.refresh_host();
        Ok(Network {
            shared,
            stop,
            tasks: Mutex::new(tasks),
            plan,
        })
    }

    /// The config errors met while binding interfaces to links, each naming its key.
    pub fn config_errors(&self) -> &[PlanError] {
        &self.plan.errors
    }

    /// The status of every bound link, by link name.
    pub fn status(&self) -> Vec<LinkStatus> {
        self.shared.lock().links.values().cloned().collect()
    }

    /// What happened so far, in order (the most recent `EVENT_LOG_MAX` entries).
    pub fn events(&self) -> Vec<NetEvent> {
        self.shared.lock().events.clone()
    }

    /// `(settled, satisfied)` of `policy` now, with the labels of what is up and what is not.
    fn judge(&self, policy: NetworkWait) -> (bool, bool, Vec<String>, Vec<String>) {
        let links = self.status();
        let up: Vec<String> = links
            .iter()
            .filter(|l| l.state == LinkState::Configured)
            .map(LinkStatus::label)
            .collect();
        let non_optional: Vec<&LinkStatus> = links.iter().filter(|l| !l.optional).collect();
        let missing = &self.plan.missing;
        let counted: Vec<&LinkStatus> = match policy {
            NetworkWait::None => return (true, true, up, Vec::new()),
            NetworkWait::Any if non_optional.is_empty() && missing.is_empty() => {
                links.iter().collect()
            }
            NetworkWait::Any | NetworkWait::All => non_optional,
        };
        let mut not_up: Vec<String> = missing
            .iter()
            .map(|k| format!("{k} (no such device)"))
            .collect();
        for l in &counted {
            match &l.state {
                LinkState::Configured => {}
                LinkState::Pending if l.lease.is_none() && self.wants_dhcp(&l.ifname) => {
                    not_up.push(format!("{} (no DHCP lease yet)", l.label()));
                }
                LinkState::Pending => not_up.push(format!("{} (not configured yet)", l.label())),
                LinkState::Failed(_) => not_up.push(format!("{} (failed)", l.label())),
                LinkState::Released => not_up.push(format!("{} (released)", l.label())),
            }
        }
        let pending = counted.iter().any(|l| l.state == LinkState::Pending);
        let configured = counted
            .iter()
            .filter(|l| l.state == LinkState::Configured)
            .count();
        let satisfied = match policy {
            NetworkWait::Any => configured > 0 || (counted.is_empty() && missing.is_empty()),
            _ => configured == counted.len() && missing.is_empty(),
        };
        (satisfied || !pending, satisfied, up, not_up)
    }

    fn wants_dhcp(&self, ifname: &str) -> bool {
        self.plan.links.iter().any(|l| l.ifname == ifname && l.dhcp)
    }

    /// Waits until `policy` is met, cannot be met any more, or `timeout` (at most a day)
    /// passes. Never longer.
    pub async fn wait(&self, policy: NetworkWait, timeout: Duration) -> WaitOutcome {
        let start = Instant::now();
        let deadline = start + timeout.min(MAX_WAIT);
        let mut changes = self.shared.changed.subscribe();
        loop {
            changes.borrow_and_update();
            let (settled, satisfied, up, not_up) = self.judge(policy);
            let timed_out = !settled && Instant::now() >= deadline;
            if settled || timed_out {
                return WaitOutcome {
                    policy,
                    satisfied,
                    timed_out,
                    elapsed: start.elapsed(),
                    up,
                    not_up,
                };
            }
            // A timeout here just loops once more and reports.
            let _ = tokio::time::timeout_at(deadline, changes.changed()).await;
        }
    }

    /// Removes what the plan configured statically (addresses, then routes), once the links'
    /// tasks are stopped (`release`): the config that replaces it starts from a clean link.
    pub async fn remove_static(&self) {
        for link in &self.plan.links {
            for route in &link.routes {
                let _ = self.shared.netlink.del_route(route.clone()).await;
            }
            for addr in &link.addresses {
                if let Err(e) = self.shared.netlink.del_address(link.index, *addr).await {
                    log::debug!("network: {}: remove {addr}: {e}", link.ifname);
                }
            }
        }
    }

    /// Stops every DHCP client, releasing its lease (DHCPRELEASE, address and routes removed),
    /// and waits at most `timeout` for them. True when all finished in time.
    pub async fn release(&self, timeout: Duration) -> bool {
        let _ = self.stop.send(true);
        let tasks: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        tokio::time::timeout(timeout, futures::future::join_all(tasks))
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests;
