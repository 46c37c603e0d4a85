//! The compiled-in defaults: the lowest config layer, a useful node with no file at all.
//!
//! Owns: `DEFAULTS` (TOML text, source name `defaults`) and `fallback()`, the same config built
//! in Rust for the case that can only be a bug (the defaults themselves failing to load).
//! Must not: hold anything a node could not boot with; every value here must validate, which a
//! test checks.

use super::schema::{Config, Container, ContainerMount, Interface, Match, NetMode};

/// Source name of the defaults layer, as errors and `Loaded::used` show it.
pub const SOURCE: &str = "defaults";

/// The compiled-in defaults layer.
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

# The system log: busybox syslogd on the host's /dev/log, rotated files in the host's /var/log.
[services.syslog]
image = "ros/syslog"
privileged = true
net = "host"
restart = "always"
stop_timeout_s = 5
mounts = [
  { source = "/dev", target = "/dev" },
  { source = "/var/log", target = "/var/log" },
]

# The admin console: a root shell with the ros CLI on the kernel's console tty. The CLI is the
# host's own binary, bind-mounted: always the node's version, and no 14 MiB copy in the image.
[services.console]
image = "ros/console"
privileged = true
net = "host"
restart = "always"
stop_timeout_s = 2
mounts = [
  { source = "/dev", target = "/dev" },
  { source = "/run/ros", target = "/run/ros" },
  { source = "/var/log", target = "/var/log" },
  { source = "/init", target = "/usr/bin/ros", read_only = true },
]

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
    let bind = |path: &str| ContainerMount {
        source: path.to_string(),
        target: path.to_string(),
        ..ContainerMount::default()
    };
    let service = |image: &str, mounts: Vec<ContainerMount>, stop_timeout_s| Container {
        image: image.to_string(),
        privileged: true,
        net: Some(NetMode::Host),
        mounts,
        stop_timeout_s,
        ..Container::default()
    };
    config.services.insert(
        "syslog".to_string(),
        service("ros/syslog", vec![bind("/dev"), bind("/var/log")], 5),
    );
    config.services.insert(
        "console".to_string(),
        service(
            "ros/console",
            vec![
                bind("/dev"),
                bind("/run/ros"),
                bind("/var/log"),
                ContainerMount {
                    source: "/init".to_string(),
                    target: "/usr/bin/ros".to_string(),
                    read_only: true,
                    ..ContainerMount::default()
                },
            ],
            2,
        ),
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
    fn defaults_run_syslog_and_the_console() {
        let config = crate::config::load::effective(&[Layer::defaults().unwrap()]).unwrap();
        let names: Vec<&String> = config.services.keys().collect();
        assert_eq!(names, ["console", "syslog"]);
        assert!(config.services.values().all(|s| s.privileged));
        // The console's CLI is the host's binary, read-only.
        let m = config.services["console"].mounts.last().unwrap();
        assert_eq!(
            (m.source.as_str(), m.target.as_str()),
            ("/init", "/usr/bin/ros")
        );
        assert!(m.read_only);
        assert_eq!(fallback().services, config.services);
    }
}
