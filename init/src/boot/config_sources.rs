//! Where boot finds the config layers that do not live on the state disk (DESIGN.md boot step
//! 5): the image file, QEMU fw_cfg, `ros.config=` and the kernel cmdline overrides.
//!
//! Owns the discovery and reading of those sources, in layer order. Parsing, validation and
//! merging belong to `config`; this module never interprets a key.

use super::cmdline::Cmdline;
use crate::config::{self, LayerBody, LayerInput, Loaded};
use std::path::Path;

/// The layer the image ships.
pub const IMAGE_CONFIG: &str = "/usr/share/ros/os-config.toml";
/// The provisioned user data QEMU passes with `-fw_cfg name=opt/ros/os-config.toml,file=…`.
pub const FW_CFG_CONFIG: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/ros/os-config.toml/raw";

fn text_layer(source: &str, path: &Path) -> Option<LayerInput> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(LayerInput {
            source: source.to_string(),
            body: LayerBody::Text(text),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            log::error!("config source {source} ({}): {e}", path.display());
            None
        }
    }
}

/// The inputs in layer order (defaults are compiled in and added by `config::load`).
pub fn inputs(cmdline: &Cmdline) -> Vec<LayerInput> {
    let mut out = Vec::new();
    out.extend(text_layer(IMAGE_CONFIG, Path::new(IMAGE_CONFIG)));
    out.extend(text_layer("fw_cfg", Path::new(FW_CFG_CONFIG)));
    if let Some(src) = &cmdline.config {
        if src.contains("://") {
            log::warn!("ros.config={src}: URLs are not supported yet; only local paths");
        } else {
            let layer = text_layer(src, Path::new(src));
            if layer.is_none() {
                log::error!("ros.config={src}: no such file");
            }
            out.extend(layer);
        }
    }
    if !cmdline.overrides.is_empty() {
        out.push(LayerInput {
            source: "cmdline".into(),
            body: LayerBody::Cmdline(cmdline.overrides.clone()),
        });
    }
    out
}

/// Reads every source and computes the effective config; never fails (bad layers are skipped
/// and reported in `Loaded::errors`).
pub fn load(cmdline: &Cmdline) -> Loaded {
    config::load(inputs(cmdline))
}
