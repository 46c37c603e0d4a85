//! The compiled-in defaults: the lowest config layer, a useful node with no file at all.
//!
//! Owns: `DEFAULTS` (TOML text, source name `defaults`) and `fallback()`, the same config built
//! in Rust for the case that can only be a bug (the defaults themselves failing to load).
//! Must not: hold anything a node could not boot with; every value here must validate, which a
//! test checks.

use super::schema::{Config, Interface, Match};

/// Source name of the defaults layer, as errors and `Loaded::used` show it.
pub const SOURCE: &str = "defaults";

/// The compiled-in defaults layer.
// The console and syslog services (DESIGN.md) join these defaults with the issue that builds
// their images; until then the defaults define no services.
pub const DEFAULTS: &str = r#"# ros compiled-in defaults (lowest layer)
version = 1
hostname = "ros"

[storage.state]
device = "LABEL=ROS_STATE"   # state in RAM when no such disk is present
autoformat = false
wait_s = 0

[network]
wait = "any"

# DHCP on every Ethernet NIC. Dropped as soon as any later layer names an interface.
[network.interfaces.default]
match = { name = "e*" }
dhcp = true
optional = true

[limits.user]
max_containers = 250
memory = "75%"
pids = 20000
"#;

/// `DEFAULTS` as a `Config`, built without parsing. `load` returns this only if the defaults
/// themselves fail to load, which a test rules out; PID 1 must still get a config then.
pub fn fallback() -> Config {
    let mut config = Config::default();
    config.network.interfaces.insert(
        "default".to_string(),
        Interface {
            r#match: Match {
                name: Some("e*".to_string()),
                mac: None,
            },
            dhcp: true,
            optional: true,
            ..Interface::default()
        },
    );
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::layers::Layer;

    #[test]
    fn defaults_parse_strictly_as_a_layer() {
        let layer = Layer::defaults();
        assert_eq!(layer.as_ref().map(Layer::source).ok(), Some(SOURCE));
        assert!(layer.is_ok_and(|l| l.names_an_interface()));
    }

    #[test]
    fn defaults_define_no_services_yet() {
        assert!(fallback().services.is_empty());
    }
}
