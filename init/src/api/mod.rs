//! api: the admin API of the running node (DESIGN.md, "API and CLI"): gRPC over the unix socket
//! `/run/ros/ros.sock`, mode 0600, root peers only.
//!
//! Owns: the protocol (`proto`, generated from `proto/ros/v1/api.proto`), the server and its peer
//! check (`server`), the config change engine over the generations store (`engine`), the seam
//! PID 1 implements (`node::Node`) and the node-side pieces that need neither the container
//! fleet nor the network (`host`: hostname, sysctl, modules; `logs`: following log files), and
//! `bridge::BridgeNode`, a ready-made `Node` that forwards what needs the fleet to PID 1's serve
//! loop as `bridge::Request`s.
//! Must not: be the CLI (`cli` is the client), or run containers or the network itself.
//!
//! How PID 1 runs it (see docs/api.md): `Store::open(generations::DIR)` before the config is
//! loaded (its `boot_layer` is the local layer); after `ready`, inside the API's tokio runtime,
//! `BridgeNode::new(layers, log_dir, kmsg::recent)`, `Engine::new(store, node, effective)`,
//! `server::bind`, then spawn `server::serve(engine, listener, shutdown)`; the serve loop polls
//! `Requests::fd` and answers `Requests::drain`.

pub mod bridge;
pub mod engine;
pub mod host;
pub mod logs;
pub mod node;
pub mod server;

pub use engine::{ChangeError, Edit, Engine, Options, Outcome};
pub use node::{Layers, LogQuery, LogStream, Node, NodeError, ServiceAction};
pub use server::{bind, check_peer, serve, ApiError, Listener, ServeOptions, SOCKET};

/// The generated gRPC messages, clients and servers of `proto/ros/v1/api.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("ros.v1");
}
