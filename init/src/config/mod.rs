//! config: the schema of `os-config.toml`, its layers, validation, and comment-keeping edits
//! (DESIGN.md, "Config: `os-config.toml`").
//!
//! Owns: turning layer texts and cmdline pairs into one valid `Config` (`load`, `effective`),
//! the strict per-layer check with key paths and lines (`Layer`), and editing one TOML document
//! while keeping its comments (`edit`).
//! Must not: read `/proc/cmdline`, fw_cfg or disks, or manage generations (boot code and the
//! generations store do); it is handed text and pairs, and returns values and errors.
//!
//! Limitations: a merged config is checked against the defaults and the layers given, so the
//! offline CLI (`ros config … --file`) checks cross-references against defaults + file only.

pub mod defaults;
pub mod edit;
pub mod error;
pub mod keypath;
pub mod layers;
pub mod load;
pub mod schema;
pub mod secret;
mod spans;
pub mod units;
pub mod validate;

pub use edit::{write_atomic, Document};
pub use error::{ConfigError, KeyPathError, PathSeg};
pub use layers::Layer;
pub use load::{effective, load, LayerBody, LayerInput, Loaded};
pub use schema::Config;
