//! The netlink seam: the few kernel operations the network code needs, as the `Netlink` trait,
//! and its rtnetlink implementation (`RtNetlink`).
//!
//! Owns: listing links and addresses, link up and MTU, adding and deleting addresses and routes,
//! and turning rtnetlink's errors into `NetlinkError` values that name the operation and its
//! target. Adds are idempotent (replace semantics), deletes of what is already gone succeed, so
//! the reconciler may re-apply a plan.
//! Must not: decide anything. Business logic (plan, reconciler, DHCP client) talks to a
//! `dyn Netlink` and never opens a netlink socket; unit tests hand it `fake::FakeNetlink`.
//!
//! Limitations: routes go to the main table only; no VLANs, bonds or bridges yet.

use std::net::IpAddr;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkInfo, LinkLayerType};
use rtnetlink::packet_route::route::{RouteProtocol, RouteScope};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use super::plan::{Link, Mac, RouteOrigin, RouteSpec};

/// A netlink request that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetlinkError {
    /// The netlink socket could not be opened.
    #[error("netlink socket: {0}")]
    Connect(String),
    /// The kernel refused a request.
    #[error("{op} {target}: {}", std::io::Error::from_raw_os_error(*errno))]
    Kernel {
        /// What was asked (`add address`, `set mtu`, …).
        op: &'static str,
        /// What it was about (`192.168.10.5/24 on eth1`).
        target: String,
        /// The errno the kernel answered.
        errno: i32,
    },
    /// Anything else rtnetlink reported (bad message, closed connection).
    #[error("{op} {target}: {reason}")]
    Protocol {
        /// What was asked.
        op: &'static str,
        /// What it was about.
        target: String,
        /// rtnetlink's description.
        reason: String,
    },
}

/// The kernel operations the network code uses. Every future is `Send`, so callers may run them
/// in spawned tasks.
pub trait Netlink: Send + Sync {
    /// Every link, in index order.
    fn links(&self) -> BoxFuture<'_, Result<Vec<Link>, NetlinkError>>;
    /// Sets a link administratively up.
    fn set_up(&self, index: u32) -> BoxFuture<'_, Result<(), NetlinkError>>;
    /// Sets a link's MTU.
    fn set_mtu(&self, index: u32, mtu: u32) -> BoxFuture<'_, Result<(), NetlinkError>>;
    /// The addresses of a link (v4 and v6, link-local included).
    fn addresses(&self, index: u32) -> BoxFuture<'_, Result<Vec<IpNet>, NetlinkError>>;
    /// Adds (or replaces) an address on a link.
    fn add_address(&self, index: u32, addr: IpNet) -> BoxFuture<'_, Result<(), NetlinkError>>;
    /// Deletes an address from a link; an address already gone is not an error.
    fn del_address(&self, index: u32, addr: IpNet) -> BoxFuture<'_, Result<(), NetlinkError>>;
    /// Adds (or replaces) a route in the main table.
    fn add_route(&self, route: RouteSpec) -> BoxFuture<'_, Result<(), NetlinkError>>;
    /// Deletes a route; a route already gone is not an error.
    fn del_route(&self, route: RouteSpec) -> BoxFuture<'_, Result<(), NetlinkError>>;
}

/// `Netlink` over an rtnetlink connection.
#[derive(Clone)]
pub struct RtNetlink {
    handle: Handle,
}

impl RtNetlink {
    /// Opens a netlink socket in the caller's network namespace and spawns its connection task
    /// on the current tokio runtime. Must be called inside a runtime.
    pub fn connect() -> Result<Arc<Self>, NetlinkError> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| NetlinkError::Connect(e.to_string()))?;
        tokio::spawn(conn);
        Ok(Arc::new(RtNetlink { handle }))
    }
}

fn nl_error(op: &'static str, target: String, e: rtnetlink::Error) -> NetlinkError {
    match e {
        rtnetlink::Error::NetlinkError(msg) => match msg.to_io().raw_os_error() {
            Some(errno) => NetlinkError::Kernel { op, target, errno },
            None => NetlinkError::Protocol {
                op,
                target,
                reason: msg.to_string(),
            },
        },
        other => NetlinkError::Protocol {
            op,
            target,
            reason: other.to_string(),
        },
    }
}

fn is_errno(e: &NetlinkError, errno: i32) -> bool {
    matches!(e, NetlinkError::Kernel { errno: n, .. } if *n == errno)
}

fn route_message(
    route: &RouteSpec,
) -> Result<rtnetlink::packet_route::route::RouteMessage, NetlinkError> {
    let target = || route.to_string();
    // rtnetlink does not export its builder error type; only its text is kept.
    let bad = |reason: String| NetlinkError::Protocol {
        op: "build route",
        target: target(),
        reason,
    };
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(route.to.addr(), route.to.prefix_len())
        .map_err(|e| bad(e.to_string()))?
        .output_interface(route.oif)
        .protocol(match route.origin {
            RouteOrigin::Static => RouteProtocol::Static,
            RouteOrigin::Dhcp => RouteProtocol::Dhcp,
        });
    b = match route.via {
        Some(via) => b.gateway(via).map_err(|e| bad(e.to_string()))?,
        None => b.scope(RouteScope::Link),
    };
    if let Some(metric) = route.metric {
        b = b.priority(metric);
    }
    Ok(b.build())
}

impl Netlink for RtNetlink {
    fn links(&self) -> BoxFuture<'_, Result<Vec<Link>, NetlinkError>> {
        Box::pin(async move {
            let mut stream = self.handle.link().get().execute();
            let mut out = Vec::new();
            while let Some(msg) = stream
                .try_next()
                .await
                .map_err(|e| nl_error("list links", String::new(), e))?
            {
                let mut link = Link {
                    index: msg.header.index,
                    name: String::new(),
                    mac: None,
                    ethernet: msg.header.link_layer_type == LinkLayerType::Ether,
                    loopback: msg.header.link_layer_type == LinkLayerType::Loopback,
                    kind: None,
                };
                for attr in msg.attributes {
                    match attr {
                        LinkAttribute::IfName(name) => link.name = name,
                        LinkAttribute::Address(bytes) => {
                            link.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok().map(Mac);
                        }
                        LinkAttribute::LinkInfo(infos) => {
                            for info in infos {
                                if let LinkInfo::Kind(kind) = info {
                                    link.kind = Some(kind.to_string());
                                }
                            }
                        }
                        _ => {}
                    }
                }
                out.push(link);
            }
            out.sort_by_key(|l| l.index);
            Ok(out)
        })
    }

    fn set_up(&self, index: u32) -> BoxFuture<'_, Result<(), NetlinkError>> {
        Box::pin(async move {
            let msg = LinkUnspec::new_with_index(index).up().build();
            self.handle
                .link()
                .set(msg)
                .execute()
                .await
                .map_err(|e| nl_error("set up", format!("link {index}"), e))
        })
    }

    fn set_mtu(&self, index: u32, mtu: u32) -> BoxFuture<'_, Result<(), NetlinkError>> {
        Box::pin(async move {
            let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
            self.handle
                .link()
                .set(msg)
                .execute()
                .await
                .map_err(|e| nl_error("set mtu", format!("{mtu} on link {index}"), e))
        })
    }

    fn addresses(&self, index: u32) -> BoxFuture<'_, Result<Vec<IpNet>, NetlinkError>> {
        Box::pin(async move {
            let mut stream = self
                .handle
                .address()
                .get()
                .set_link_index_filter(index)
                .execute();
            let mut out = Vec::new();
            while let Some(msg) = stream
                .try_next()
                .await
                .map_err(|e| nl_error("list addresses", format!("of link {index}"), e))?
            {
                if msg.header.index != index {
                    continue;
                }
                // IFA_LOCAL is the address itself on point-to-point links; IFA_ADDRESS otherwise.
                let mut addr = None;
                for attr in &msg.attributes {
                    match attr {
                        AddressAttribute::Local(a) => addr = Some(*a),
                        AddressAttribute::Address(a) if addr.is_none() => addr = Some(*a),
                        _ => {}
                    }
                }
                if let Some(net) = addr.and_then(|a| IpNet::new(a, msg.header.prefix_len).ok()) {
                    out.push(net);
                }
            }
            Ok(out)
        })
    }

    fn add_address(&self, index: u32, addr: IpNet) -> BoxFuture<'_, Result<(), NetlinkError>> {
        Box::pin(async move {
            self.handle
                .address()
                .add(index, addr.addr(), addr.prefix_len())
                .replace()
                .execute()
                .await
                .map_err(|e| nl_error("add address", format!("{addr} on link {index}"), e))
        })
    }

    fn del_address(&self, index: u32, addr: IpNet) -> BoxFuture<'_, Result<(), NetlinkError>> {
        Box::pin(async move {
            // The add request builds exactly the message that names this address.
            let mut req = self
                .handle
                .address()
                .add(index, addr.addr(), addr.prefix_len());
            let msg = req.message_mut().clone();
            let r = self
                .handle
                .address()
                .del(msg)
                .execute()
                .await
                .map_err(|e| nl_error("delete address", format!("{addr} on link {index}"), e));
            match r {
                Err(e) if is_errno(&e, libc::EADDRNOTAVAIL) || is_errno(&e, libc::ENODEV) => Ok(()),
                other => other,
            }
        })
    }

    fn add_route(&self, route: RouteSpec) -> BoxFuture<'_, Result<(), NetlinkError>> {
        Box::pin(async move {
            let msg = route_message(&route)?;
            self.handle
                .route()
                .add(msg)
                .replace()
                .execute()
                .await
                .map_err(|e| nl_error("add route", format!("{route} on link {}", route.oif), e))
        })
    }

    fn del_route(&self, route: RouteSpec) -> BoxFuture<'_, Result<(), NetlinkError>> {
        Box::pin(async move {
            let msg = route_message(&route)?;
            let r =
                self.handle.route().del(msg).execute().await.map_err(|e| {
                    nl_error("delete route", format!("{route} on link {}", route.oif), e)
                });
            match r {
                Err(e) if is_errno(&e, libc::ESRCH) || is_errno(&e, libc::ENODEV) => Ok(()),
                other => other,
            }
        })
    }
}

/// A scripted, recording `Netlink` for unit tests.
#[cfg(test)]
pub mod fake {
    use super::*;
    use std::sync::Mutex;

    /// One recorded call.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Call {
        /// `set_up(index)`.
        SetUp(u32),
        /// `set_mtu(index, mtu)`.
        SetMtu(u32, u32),
        /// `add_address(index, addr)`.
        AddAddress(u32, IpNet),
        /// `del_address(index, addr)`.
        DelAddress(u32, IpNet),
        /// `add_route(route)`.
        AddRoute(RouteSpec),
        /// `del_route(route)`.
        DelRoute(RouteSpec),
    }

    type Rule = Box<dyn Fn(&Call) -> Option<i32> + Send + Sync>;

    /// Links it lists, calls it records, errnos it injects.
    #[derive(Default)]
    pub struct FakeNetlink {
        /// What `links()` returns.
        pub links: Vec<Link>,
        calls: Mutex<Vec<Call>>,
        fail: Mutex<Vec<Rule>>,
    }

    impl FakeNetlink {
        /// A fake listing `links`.
        pub fn new(links: Vec<Link>) -> Self {
            FakeNetlink {
                links,
                ..FakeNetlink::default()
            }
        }

        /// Makes every call for which `rule` returns `Some(errno)` fail with that errno.
        pub fn fail_when(&self, rule: impl Fn(&Call) -> Option<i32> + Send + Sync + 'static) {
            if let Ok(mut f) = self.fail.lock() {
                f.push(Box::new(rule));
            }
        }

        /// Every call so far, in order.
        pub fn calls(&self) -> Vec<Call> {
            self.calls.lock().map(|c| c.clone()).unwrap_or_default()
        }

        /// The calls that concern link `index`, in order.
        pub fn calls_for(&self, index: u32) -> Vec<Call> {
            self.calls()
                .into_iter()
                .filter(|c| match c {
                    Call::SetUp(i)
                    | Call::SetMtu(i, _)
                    | Call::AddAddress(i, _)
                    | Call::DelAddress(i, _) => *i == index,
                    Call::AddRoute(r) | Call::DelRoute(r) => r.oif == index,
                })
                .collect()
        }

        fn record(&self, op: &'static str, call: Call) -> Result<(), NetlinkError> {
            let errno = self
                .fail
                .lock()
                .ok()
                .and_then(|rules| rules.iter().find_map(|r| r(&call)));
            let target = format!("{call:?}");
            if let Ok(mut c) = self.calls.lock() {
                c.push(call);
            }
            match errno {
                Some(errno) => Err(NetlinkError::Kernel { op, target, errno }),
                None => Ok(()),
            }
        }

        /// The addresses currently on link `index`, replaying the recorded calls.
        pub fn addresses_now(&self, index: u32) -> Vec<IpNet> {
            let mut out = Vec::new();
            for c in self.calls() {
                match c {
                    Call::AddAddress(i, a) if i == index && !out.contains(&a) => out.push(a),
                    Call::DelAddress(i, a) if i == index => out.retain(|x| *x != a),
                    _ => {}
                }
            }
            out
        }
    }

    impl Netlink for FakeNetlink {
        fn links(&self) -> BoxFuture<'_, Result<Vec<Link>, NetlinkError>> {
            let links = self.links.clone();
            Box::pin(async move { Ok(links) })
        }
        fn set_up(&self, index: u32) -> BoxFuture<'_, Result<(), NetlinkError>> {
            Box::pin(async move { self.record("set up", Call::SetUp(index)) })
        }
        fn set_mtu(&self, index: u32, mtu: u32) -> BoxFuture<'_, Result<(), NetlinkError>> {
            Box::pin(async move { self.record("set mtu", Call::SetMtu(index, mtu)) })
        }
        fn addresses(&self, index: u32) -> BoxFuture<'_, Result<Vec<IpNet>, NetlinkError>> {
            Box::pin(async move { Ok(self.addresses_now(index)) })
        }
        fn add_address(&self, index: u32, addr: IpNet) -> BoxFuture<'_, Result<(), NetlinkError>> {
            Box::pin(async move { self.record("add address", Call::AddAddress(index, addr)) })
        }
        fn del_address(&self, index: u32, addr: IpNet) -> BoxFuture<'_, Result<(), NetlinkError>> {
            Box::pin(async move { self.record("delete address", Call::DelAddress(index, addr)) })
        }
        fn add_route(&self, route: RouteSpec) -> BoxFuture<'_, Result<(), NetlinkError>> {
            Box::pin(async move { self.record("add route", Call::AddRoute(route)) })
        }
        fn del_route(&self, route: RouteSpec) -> BoxFuture<'_, Result<(), NetlinkError>> {
            Box::pin(async move { self.record("delete route", Call::DelRoute(route)) })
        }
    }
}
