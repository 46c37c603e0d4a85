//! config: the schema of `os-config.toml`, its layers, validation, and comment-keeping edits
//! (DESIGN.md, "Config: `os-config.toml`").
//!
//! Owns: turning layer texts and cmdline pairs into one valid `Config` (`load`, `effective`),
//! the strict per-layer check with key paths and lines (`Layer`), and editing one TOML document
//! while keeping its comments (`edit`), the local layer's numbered generations on disk
//! (`generations`) and what a change changes (`plan`).
//! Must not: read `/proc/cmdline`, fw_cfg or disks (boot code does), or reconcile anything
//! (the API server and PID 1 do); apart from `generations`, it is handed text and pairs, and
//! returns values and errors.
//!
//! Limitations: a merged config is checked against the defaults and the layers given, so the
//! offline CLI (`ros config … --file`) checks cross-references against defaults + file only.

pub mod defaults;
pub mod edit;
pub mod error;
pub mod generations;
pub mod keypath;
pub mod layers;
pub mod load;
pub mod plan;
pub mod ports;
pub mod schema;
pub mod secret;
mod spans;
pub mod units;
pub mod validate;

pub use edit::{write_atomic, Document};
pub use error::{ConfigError, KeyPathError, PathSeg};
pub use layers::Layer;
pub use load::{effective, load, LayerBody, LayerInput, Loaded};
pub use plan::Plan;
pub use schema::Config;
