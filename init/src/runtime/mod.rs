//! The container runtime side of ros: the containerd client PID 1 uses to run OS services in
//! the system instance and workloads in the user instance (DESIGN.md "containerd: two
//! instances, two namespaces"; docs/runtime.md).
//!
//! - [`daemon`]: the two instances' paths, config file, command line and readiness wait (it
//!   never spawns containerd; PID 1 does, through its reaper).
//! - [`client`]: one connection, one namespace; the interceptor that stamps namespace and lease
//!   headers on every request.
//! - [`import`]: OCI archives into the content store, unpacked into snapshots; image configs.
//! - [`pull`]: images from registries (mirrors, insecure, credentials), client-side, stored
//!   through `import`'s content and unpack path.
//! - [`pool`]: shared connections to a containerd, lent to the containers' supervisors.
//! - [`containers`]: containers and their tasks: create, start, kill, wait, stop, delete, list.
//! - [`logs`]: stdout/stderr FIFOs per task copied into rotated per-container log files.
//! - [`spec`]: OCI runtime specs (pure).
//! - [`shared_shim`]: `containerd-shim-ros-v2`, the runtime of `shim = "shared"` containers
//!   (runc's v2 shim with a serialized, timer-free `start` for a shim group).
//!
//! Nothing here spawns a process or waits for a child.

pub mod bundled;
pub mod client;
pub mod containers;
pub mod daemon;
pub mod import;
pub mod logs;
pub mod pool;
pub mod pull;
pub mod shared_shim;
pub mod spec;

pub use client::{Client, ClientError};
