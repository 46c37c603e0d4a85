//! PID 1's side of the admin API (DESIGN.md "API and CLI", boot step 10): opens the config
//! generation store before the config is read (its current generation is the local layer),
//! starts the API server on `/run/ros/ros.sock` in its own small tokio runtime once the node is
//! `ready`, and answers the requests the server forwards — against the fleet and the network —
//! without blocking the serve loop: what takes time runs on the fleet's runtime, the API's
//! runtime or a thread, and answers through the request's reply channel.
//!
//! Must not: reap, wait for children, or shut down by itself (a power request is handed back to
//! the serve loop, which runs the same ordered shutdown as a signal).

use crate::api::bridge::{BridgeNode, Request, Requests};
use crate::api::node::{Layers, NodeError};
use crate::api::{self, Engine, ServeOptions};
use crate::boot::kmsg;
use crate::config::generations::{self, Store};
use crate::config::{Config, LayerBody, LayerInput, Plan};
use crate::net::{self, NetService};
use crate::power::PowerAction;
use crate::supervisor::fleet::{self, Fleet};
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// The running API: its runtime (kept until `reboot(2)`) and the serve loop's request end.
pub struct ApiHost {
    rt: tokio::runtime::Runtime,
    requests: Requests,
}

/// Opens the generation store; `None` (logged) when it cannot be read, so boot goes on
/// without a local layer and without the API.
pub fn open_store() -> Option<Store> {
    match Store::open(Path::new(generations::DIR)) {
        Ok(store) => {
            for w in store.warnings() {
                log::warn!("config generations: {w}");
            }
            Some(store)
        }
        Err(e) => {
            log::error!("config generations: {e}; no local layer, no API");
            None
        }
    }
}

/// `inputs` with the store's boot generation as the local layer, just below the cmdline.
pub fn with_local(inputs: &[LayerInput], store: Option<&Store>) -> Vec<LayerInput> {
    let mut all = inputs.to_vec();
    if let Some(local) = store.and_then(Store::boot_layer) {
        let at = all
            .iter()
            .position(|i| matches!(i.body, LayerBody::Cmdline(_)))
            .unwrap_or(all.len());
        all.insert(at, local);
    }
    all
}

/// Starts the API server over `store`, with `inputs` (boot's layers without the local one)
/// and the `config` the node reached `ready` with. `None` (logged) when it cannot listen.
pub fn start(store: Store, inputs: &[LayerInput], config: &Config) -> Option<ApiHost> {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ros-api")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("ros API: runtime: {e}");
            return None;
        }
    };
    let (layers, _) = Layers::from_inputs(inputs);
    let started = rt.block_on(async {
        let (node, requests) = BridgeNode::new(layers, fleet::LOG_DIR.into(), kmsg::recent)
            .map_err(|e| e.to_string())?;
        let engine =
            Engine::new(store, Arc::new(node), config.clone()).map_err(|e| e.to_string())?;
        let listener = api::bind(&ServeOptions::default()).map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            if let Err(e) = api::serve(engine, listener, std::future::pending()).await {
                log::error!("{e}");
            }
        });
        Ok::<Requests, String>(requests)
    });
    match started {
        Ok(requests) => {
            log::info!("ros API on {}", api::SOCKET);
            Some(ApiHost { rt, requests })
        }
        Err(e) => {
            log::error!("ros API: {e}");
            None
        }
    }
}

fn unavailable(what: &str) -> NodeError {
    NodeError::Unavailable {
        what: what.to_string(),
        reason: "no container runtime on this boot".to_string(),
    }
}

/// True when `plan` changes the network (links or resolvers).
fn touches_network(plan: &Plan) -> bool {
    !plan.interfaces.is_empty() || plan.dns
}

/// True when `plan` changes containers or their fence.
fn touches_containers(plan: &Plan) -> bool {
    !plan.services.is_empty() || !plan.workloads.is_empty() || plan.limits_user.is_some()
}

impl ApiHost {
    /// Readable when requests wait.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.requests.fd()
    }

    /// Answers every waiting request; returns a power action asked for, for the serve loop.
    pub fn answer(
        &self,
        fleet: Option<&Fleet>,
        network: Option<&Arc<NetService>>,
        config_wait: (crate::config::schema::NetworkWait, Duration),
    ) -> Option<PowerAction> {
        let mut power = None;
        for request in self.requests.drain() {
            match request {
                Request::Reconcile {
                    new, plan, reply, ..
                } => self.reconcile(fleet, network, *new, *plan, config_wait, reply),
                Request::Services { reply } => {
                    let _ = reply.send(
                        fleet
                            .map(|f| f.rows(true))
                            .ok_or_else(|| unavailable("services")),
                    );
                }
                Request::Ps { reply } => {
                    let _ = reply.send(
                        fleet
                            .map(|f| f.rows(false))
                            .ok_or_else(|| unavailable("containers")),
                    );
                }
                Request::Service {
                    name,
                    action,
                    reply,
                } => match fleet {
                    Some(f) => f.service_action(name, action, reply),
                    None => {
                        let _ = reply.send(Err(unavailable(&format!("service {name}"))));
                    }
                },
                Request::Status { reply } => {
                    let _ = reply.send(Ok(status(fleet, network)));
                }
                Request::Power(action) => power = Some(action),
            }
        }
        power
    }

    fn reconcile(
        &self,
        fleet: Option<&Fleet>,
        network: Option<&Arc<NetService>>,
        new: Config,
        plan: Plan,
        (wait, timeout): (crate::config::schema::NetworkWait, Duration),
        reply: crate::api::bridge::Reply<Vec<String>>,
    ) {
        let (containers_tx, containers_rx) = oneshot::channel();
        match (fleet, touches_containers(&plan)) {
            (Some(f), true) => f.reconcile(new.clone(), plan.clone(), containers_tx),
            (None, true) => {
                let _ = containers_tx.send(Err(unavailable("containers")));
            }
            (_, false) => {
                let _ = containers_tx.send(Ok(Vec::new()));
            }
        }
        let net = network.filter(|_| touches_network(&plan)).cloned();
        let settings = net::Settings::from_config(&new);
        self.rt.spawn(async move {
            let mut lines = Vec::new();
            if let Some(net) = net {
                // The network's own runtime blocks; a thread of its own keeps it off ours.
                let (tx, rx) = oneshot::channel();
                std::thread::spawn(move || {
                    let _ = tx.send(net.reconfigure(settings, wait, timeout));
                });
                match rx.await {
                    Ok(Ok(l)) => lines.extend(l),
                    Ok(Err(e)) => {
                        let _ = reply.send(Err(NodeError::Failed {
                            what: "network".to_string(),
                            reason: e.to_string(),
                        }));
                        return;
                    }
                    Err(_) => lines.push("network: reconfiguration did not finish".to_string()),
                }
            }
            match containers_rx.await {
                Ok(Ok(l)) => lines.extend(l),
                Ok(Err(e)) => {
                    let _ = reply.send(Err(e));
                    return;
                }
                Err(_) => lines.push("containers: no answer".to_string()),
            }
            let _ = reply.send(Ok(lines));
        });
    }
}

/// `ros os status` facts the serve loop knows.
fn status(fleet: Option<&Fleet>, network: Option<&Arc<NetService>>) -> Vec<(String, String)> {
    let mut out = vec![("ready".to_string(), "yes".to_string())];
    if let Some(net) = network {
        let links: Vec<String> = net
            .network()
            .status()
            .iter()
            .map(|l| format!("{} {:?}", l.label(), l.state))
            .collect();
        out.push(("network".to_string(), links.join(", ")));
    }
    if let Some(f) = fleet {
        let rows = f.rows(false);
        let running = rows.iter().filter(|r| r.state == "running").count();
        out.push((
            "containers".to_string(),
            format!("{running} running of {}", rows.len()),
        ));
    }
    out
}
