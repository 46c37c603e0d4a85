//! The seam between the API and the live node: the `Node` trait that PID 1 implements (the real
//! reconcilers, the container fleet, the logs, power) and the API server calls.
//!
//! Owns: the trait, its error type and the small value types it speaks in, plus `Layers`, the
//! pure layer arithmetic behind `Node::effective` (boot's layers with a candidate local layer
//! between them). The rows are the protocol's own messages (`proto::Container`,
//! `proto::LogLine`), so what a node reports is what the CLI prints.
//! Must not: hold a node implementation; the real one lives with PID 1, fakes live in tests.

use std::pin::Pin;

use futures::Stream;

use super::proto;
use crate::config::load::{self, LayerBody, LayerInput};
use crate::config::{Config, ConfigError, Layer, Plan};
use crate::power::PowerAction;

/// A stream of log lines; ends when there is nothing more (or, following, when the client goes).
pub type LogStream = Pin<Box<dyn Stream<Item = proto::LogLine> + Send>>;

/// What `ros service start|stop|restart` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceAction {
    /// Start a stopped service.
    Start,
    /// Stop a running service (it stays stopped until started or the node reboots).
    Stop,
    /// Stop, then start.
    Restart,
}

impl ServiceAction {
    /// `start`, `stop`, `restart`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceAction::Start => "start",
            ServiceAction::Stop => "stop",
            ServiceAction::Restart => "restart",
        }
    }
}

/// Which logs `ros logs` / `ros service logs` wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogQuery {
    /// One service or workload; `None` for the boot log and every service.
    pub name: Option<String>,
    /// Keep the stream open and send new lines as they are written.
    pub follow: bool,
    /// Only the last N existing lines (per source); `None` for all of them.
    pub tail: Option<usize>,
}

/// A failure of the node; each carries what it was about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// No service, workload or log of that name.
    #[error("{kind} {name:?}: no such {kind}")]
    NotFound {
        /// `service`, `workload`, `log`, `generation`…
        kind: &'static str,
        /// The name asked for.
        name: String,
    },
    /// The node tried and failed (`what` names the item: `hostname`, `workload web`, …).
    #[error("{what}: {reason}")]
    Failed {
        /// The item.
        what: String,
        /// Why.
        reason: String,
    },
    /// This node cannot do that right now (no container runtime on this boot, …).
    #[error("{what}: not available: {reason}")]
    Unavailable {
        /// The item.
        what: String,
        /// Why.
        reason: String,
    },
}

/// The live node, as the API server sees it. PID 1 implements it once; every method may be
/// called from any task of the API's tokio runtime, concurrently, except `reconcile`, which the
/// server calls one at a time (under its change lock).
#[async_trait::async_trait]
pub trait Node: Send + Sync + 'static {
    /// The effective config with `local` as the local layer (`None`: no local layer), merged with
    /// the other layers exactly as boot merged them (defaults, image, user data below it; the
    /// kernel cmdline above it). A validation error names the key (and line of the layer).
    fn effective(&self, local: Option<&Layer>) -> Result<Config, ConfigError>;

    /// Makes the live node match `new`, coming from `old`; `plan` (= `Plan::between(old, new)`)
    /// says what differs, and only that may be touched: hostname, sysctl, modules, network,
    /// services, workloads. Returns one line per thing done, for the CLI. An error means `new`
    /// could not be applied; the server then marks its generation bad and reconciles back.
    async fn reconcile(
        &self,
        old: &Config,
        new: &Config,
        plan: &Plan,
    ) -> Result<Vec<String>, NodeError>;

    /// The configured services (system namespace), enabled or not, with their state.
    async fn services(&self) -> Result<Vec<proto::Container>, NodeError>;

    /// Starts, stops or restarts one service; returns a line saying what happened.
    async fn service(&self, name: &str, action: ServiceAction) -> Result<String, NodeError>;

    /// Every container of both namespaces (services and workloads) with its state.
    async fn ps(&self) -> Result<Vec<proto::Container>, NodeError>;

    /// Log lines: the boot log and every service's (`query.name == None`), or one service's.
    async fn logs(&self, query: LogQuery) -> Result<LogStream, NodeError>;

    /// Facts for `ros os status` (name, value), in display order: uptime, ready, network…
    /// The server adds the config generation fields itself.
    async fn status(&self) -> Vec<(String, String)>;

    /// Starts an ordered reboot or poweroff. Must return (so the reply reaches the client)
    /// before the node goes down: hand the request to PID 1's serve loop, do not shut down here.
    async fn power(&self, action: PowerAction) -> Result<(), NodeError>;
}

/// The layers around the local one, as boot read them: a ready-made `Node::effective` for PID 1.
/// Text layers (image, user data, `ros.config=`) go below the local layer, the kernel cmdline
/// above it, as in DESIGN.md's layer order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Layers {
    /// Below the local layer, lowest first (the compiled-in defaults are added by `effective`).
    pub below: Vec<Layer>,
    /// Above the local layer (the cmdline).
    pub above: Vec<Layer>,
}

impl Layers {
    /// Builds the layers from boot's inputs (without the local layer), skipping — and
    /// returning — those that fail their own check, as boot did.
    pub fn from_inputs(inputs: &[LayerInput]) -> (Layers, Vec<ConfigError>) {
        let mut layers = Layers::default();
        let mut errors = Vec::new();
        for input in inputs {
            match load::build(input) {
                Ok(layer) => match input.body {
                    LayerBody::Cmdline(_) => layers.above.push(layer),
                    LayerBody::Text(_) => layers.below.push(layer),
                },
                Err(e) => errors.push(e),
            }
        }
        (layers, errors)
    }

    /// The effective config with `local` between `below` and `above`.
    pub fn effective(&self, local: Option<&Layer>) -> Result<Config, ConfigError> {
        let mut all: Vec<Layer> = self.below.clone();
        all.extend(local.cloned());
        all.extend(self.above.iter().cloned());
        load::effective(&all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(source: &str, t: &str) -> LayerInput {
        LayerInput {
            source: source.into(),
            body: LayerBody::Text(t.into()),
        }
    }

    #[test]
    fn the_local_layer_goes_between_the_provisioned_layers_and_the_cmdline() {
        let (layers, errors) = Layers::from_inputs(&[
            text(
                "fw_cfg",
                "hostname = \"fw\"\n[sysctl]\n\"vm.swappiness\" = 1\n",
            ),
            text("broken", "hostname = = 1"),
            LayerInput {
                source: "cmdline".into(),
                body: LayerBody::Cmdline(vec![("sysctl.vm.swappiness".into(), "3".into())]),
            },
        ]);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].source_name(), "broken");
        let local = Layer::parse(
            "local",
            "hostname = \"local\"\n[sysctl]\n\"vm.swappiness\" = 2\n",
        )
        .unwrap();
        let c = layers.effective(Some(&local)).unwrap();
        assert_eq!(c.hostname, "local");
        assert_eq!(c.sysctl["vm.swappiness"], "3");
        let c = layers.effective(None).unwrap();
        assert_eq!(c.hostname, "fw");
        let bad = Layer::parse(
            "local",
            "[workloads.w]\nimage = \"w\"\ndepends_on = [\"db\"]\n",
        )
        .unwrap();
        let e = layers.effective(Some(&bad)).unwrap_err();
        assert_eq!(e.source_name(), "local");
        assert_eq!(e.key(), "workloads.w.depends_on");
    }
}
