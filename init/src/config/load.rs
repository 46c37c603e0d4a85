//! The effective config: defaults + layers, merged and checked as a whole; and the boot loader
//! that always ends with a valid config.
//!
//! Owns: `effective` (merge on top of the compiled-in defaults, deserialise, cross-reference
//! checks, and blaming an error on the topmost layer that set the key) and `load` (skip a layer
//! that fails on its own; if the merge fails, drop layers one at a time from the top until it
//! validates; never fail, never panic — PID 1 calls this).
//! Must not: log or print (the caller logs `Loaded::errors` once), read files, or know which
//! layer is the local generation.

use super::defaults;
use super::error::{render_path, ConfigError, PathSeg};
use super::layers::{self, Layer};
use super::schema::Config;
use super::validate::{self, Scope};

/// What a layer is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerBody {
    /// TOML text (image file, fw_cfg, user data, local generation).
    Text(String),
    /// `ros.KEY=VALUE` pairs from the kernel cmdline, as `(KEY, VALUE)` without `ros.`.
    Cmdline(Vec<(String, String)>),
}

/// One layer as boot code found it, lowest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInput {
    /// Source name for errors: a file path, `fw_cfg`, `cmdline`, …
    pub source: String,
    /// The layer itself.
    pub body: LayerBody,
}

/// The result of `load`: always a valid config, and what went wrong on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The effective config.
    pub config: Config,
    /// Every error met, in order; each is one `ros: config error: …` line.
    pub errors: Vec<ConfigError>,
    /// Sources of the layers applied, lowest first (starting with `defaults`).
    pub used: Vec<String>,
}

/// How deep `path` goes into `table`.
fn depth(table: &toml::Table, path: &[PathSeg]) -> usize {
    let mut cur: Option<&toml::Value> = None;
    for (i, seg) in path.iter().enumerate() {
        let next = match (seg, cur) {
            (PathSeg::Key(k), None) => table.get(k),
            (PathSeg::Key(k), Some(toml::Value::Table(t))) => t.get(k),
            (PathSeg::Index(n), Some(toml::Value::Array(a))) => a.get(*n),
            _ => None,
        };
        match next {
            Some(v) => cur = Some(v),
            None => return i,
        }
    }
    path.len()
}

/// Re-locates an error found on the merged config in the layer that set the key: the topmost
/// layer holding the deepest part of the path.
fn blame(
    all: &[&Layer],
    path: &[PathSeg],
    make: impl FnOnce(String, Option<usize>, String) -> ConfigError,
) -> ConfigError {
    let mut best: Option<(&Layer, usize)> = None;
    for layer in all {
        let d = depth(layer.table(), path);
        if d > 0 && best.is_none_or(|(_, b)| d >= b) {
            best = Some((layer, d));
        }
    }
    let (source, line) = match best {
        Some((layer, _)) => (layer.source().to_string(), layer.line_of(path)),
        None => (defaults::SOURCE.to_string(), None),
    };
    make(render_path(path), line, source)
}

/// The effective config of `layers` (lowest first) on top of the compiled-in defaults. Each
/// layer should already have passed its own strict check (`Layer::parse`/`from_cmdline`); this
/// adds the checks that need the whole picture.
pub fn effective(layers: &[Layer]) -> Result<Config, ConfigError> {
    let defaults = Layer::defaults()?;
    let merged = layers::merge(&defaults, layers);
    let mut all: Vec<&Layer> = vec![&defaults];
    all.extend(layers.iter());
    if !merged.contains_key("version") {
        return Err(ConfigError::Invalid {
            key: "version".into(),
            line: None,
            source_name: defaults::SOURCE.into(),
            reason: "missing (expected version = 1)".into(),
        });
    }
    let mut config: Config = layers::deserialize_raw(toml::Value::Table(merged)).map_err(|f| {
        blame(&all, &f.path, |key, line, source_name| {
            ConfigError::Schema {
                key,
                line,
                source_name,
                reason: f.reason.clone(),
            }
        })
    })?;
    validate::check(&config, Scope::Merged).map_err(|p| {
        blame(&all, &p.path, |key, line, source_name| {
            ConfigError::Invalid {
                key,
                line,
                source_name,
                reason: p.reason.clone(),
            }
        })
    })?;
    config.hostname_set = layers.iter().any(|l| l.table().contains_key("hostname"));
    Ok(config)
}

/// Builds one layer from its input.
pub fn build(input: &LayerInput) -> Result<Layer, ConfigError> {
    match &input.body {
        LayerBody::Text(text) => Layer::parse(&input.source, text),
        LayerBody::Cmdline(pairs) => Layer::from_cmdline(pairs),
    }
}

/// Loads the effective config for boot. Never fails: a layer that fails its own check is
/// skipped (error recorded) and the others still apply; if the merged config fails, layers are
/// dropped one at a time from the top until it validates, down to the defaults alone.
pub fn load(inputs: Vec<LayerInput>) -> Loaded {
    let mut errors = Vec::new();
    let mut good = Vec::new();
    for input in &inputs {
        match build(input) {
            Ok(layer) => good.push(layer),
            Err(e) => errors.push(e),
        }
    }
    for n in (0..=good.len()).rev() {
        match effective(&good[..n]) {
            Ok(config) => {
                let mut used = vec![defaults::SOURCE.to_string()];
                used.extend(good[..n].iter().map(|l| l.source().to_string()));
                return Loaded {
                    config,
                    errors,
                    used,
                };
            }
            Err(e) => {
                if !errors.contains(&e) {
                    errors.push(e);
                }
            }
        }
    }
    Loaded {
        config: defaults::fallback(),
        errors,
        used: vec![defaults::SOURCE.to_string()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::{Kind, NetMode, NetworkWait, Shim};
    use crate::config::units::{Memory, UserMemory};

    fn layer(source: &str, text: &str) -> Layer {
        match Layer::parse(source, text) {
            Ok(l) => l,
            Err(e) => panic!("{e}"),
        }
    }

    fn text(source: &str, text: &str) -> LayerInput {
        LayerInput {
            source: source.into(),
            body: LayerBody::Text(text.into()),
        }
    }

    #[test]
    fn defaults_alone_are_valid_and_match_the_rust_fallback() {
        let config = match effective(&[]) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(config, defaults::fallback());
        assert_eq!(config.hostname, "ros");
        assert_eq!(config.network.wait, NetworkWait::Any);
        assert_eq!(config.limits.user.memory, UserMemory::Percent(75));
        assert!(config.network.interfaces["default"].dhcp);
    }

    #[test]
    fn design_example_gives_a_fully_filled_config() {
        let l = layer(
            "os-config.toml",
            include_str!("../../tests/golden/01_design_example.toml"),
        );
        let c = match effective(&[l]) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(c.hostname, "node-1");
        assert_eq!(c.sysctl["net.ipv4.ip_forward"], "1");
        assert_eq!(
            c.network.interfaces.keys().collect::<Vec<_>>(),
            ["private", "public"]
        );
        assert_eq!(c.network.interfaces["private"].mtu, Some(9000));
        let web = &c.workloads["web"];
        assert_eq!(web.memory, Some(Memory(256 << 20)));
        assert_eq!(web.net_mode(Kind::Workload), NetMode::Bridge);
        assert_eq!(c.services["syslog"].net_mode(Kind::Service), NetMode::Host);
        assert!(web.enabled);
        assert_eq!(web.stop_timeout_s, 10);
    }

    #[test]
    fn enabled_false_stays_a_value_for_the_consumer() {
        let low = layer("image", "[services.ntp]\nimage = \"ros/ntp\"\n");
        let high = layer("local", "[services.ntp]\nenabled = false\n");
        let c = match effective(&[low, high]) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert!(!c.services["ntp"].enabled);
        assert_eq!(c.services["ntp"].image, "ros/ntp");
    }

    #[test]
    fn dependency_cycle_names_the_services_in_it() {
        let l = layer(
            "local",
            "[services.a]\nimage = \"a\"\ndepends_on = [\"b\"]\n\n[services.b]\nimage = \"b\"\ndepends_on = [\"c\"]\n\n[services.c]\nimage = \"c\"\ndepends_on = [\"a\"]\n\n[services.d]\nimage = \"d\"\ndepends_on = [\"a\"]\n",
        );
        let e = effective(&[l]).err();
        assert_eq!(
            e.map(|e| e.to_string()),
            Some("services.c.depends_on (line 11): depends_on cycle: a -> b -> c -> a".to_string())
        );
    }

    #[test]
    fn self_dependency_and_workload_cycles_are_found() {
        let l = layer(
            "local",
            "[workloads.w]\nimage = \"w\"\ndepends_on = [\"w\"]\n",
        );
        let e = effective(&[l]).err();
        assert_eq!(
            e.map(|e| e.reason()),
            Some("depends_on cycle: w -> w".to_string())
        );
    }

    #[test]
    fn unknown_dependency_is_blamed_on_the_layer_that_set_it() {
        let low = layer("image", "[workloads.web]\nimage = \"nginx\"\n");
        let high = layer(
            "fw_cfg",
            "# user data\n[workloads.web]\ndepends_on = [\"db\"]\n",
        );
        let e = effective(&[low, high]).err();
        let e = e.as_ref();
        assert_eq!(e.map(ConfigError::source_name), Some("fw_cfg"));
        assert_eq!(
            e.map(ToString::to_string),
            Some("workloads.web.depends_on (line 3): depends on \"db\", but no workload or service has that name".to_string())
        );
    }

    #[test]
    fn workload_network_merges_key_by_key_and_errors_name_key_and_line() {
        let low = layer(
            "image",
            "[network.workloads]\nsubnet = \"172.30.0.0/16\"\nhost_ports = [\"53/udp\"]\n",
        );
        let high = layer("local", "[network.workloads]\nisolate = true\n");
        let c = match effective(&[low, high]) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(c.network.workloads.subnet, "172.30.0.0/16");
        assert!(c.network.workloads.isolate);
        assert_eq!(c.network.workloads.host_ports, ["53/udp"]);
        assert_eq!(
            effective(&[]).map(|c| c.network.workloads.subnet).ok(),
            Some("10.88.0.0/16".to_string())
        );
        // A layer is checked on its own: the error names the key and the line in it.
        let bad = Layer::parse(
            "local",
            "[network.workloads]\n# comment\nsubnet = \"10.88.0.0/33\"\n",
        );
        assert_eq!(
            bad.err().map(|e| e.to_string()),
            Some("network.workloads.subnet (line 3): invalid subnet \"10.88.0.0/33\": expected an IPv4 CIDR like 10.88.0.0/16".to_string())
        );
        let ports = Layer::parse(
            "local",
            "[workloads.web]\nimage = \"w\"\nports = [\"8080:80/tcp\", \"80\"]\n",
        );
        assert_eq!(
            ports.err().map(|e| e.to_string()),
            Some("workloads.web.ports[1] (line 3): invalid port mapping \"80\": expected HOST:CONTAINER[/tcp|/udp], like \"8080:80/tcp\"".to_string())
        );
        assert!(
            Layer::parse("local", "[network.workloads]\nbridge = \"br0\"\n")
                .is_err_and(|e| e.to_string().contains("unknown field `bridge`"))
        );
    }

    #[test]
    fn workloads_may_depend_on_services() {
        let l = layer("local", "[services.db]\nimage = \"db\"\n[workloads.web]\nimage = \"w\"\ndepends_on = [\"db\"]\n");
        assert!(effective(&[l]).is_ok());
    }

    #[test]
    fn shim_is_its_own_unless_a_container_asks_to_share_and_a_bad_value_names_the_key() {
        let l = layer(
            "local",
            "[workloads.a]\nimage = \"a\"\nshim = \"shared\"\n[workloads.b]\nimage = \"b\"\n",
        );
        let c = match effective(&[l]) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(c.workloads["a"].shim, Shim::Shared);
        assert_eq!(c.workloads["b"].shim, Shim::Own);
        let bad = Layer::parse("local", "[workloads.a]\nimage = \"a\"\nshim = \"mine\"\n").err();
        assert_eq!(
            bad.map(|e| e.to_string()).as_deref(),
            Some("workloads.a.shim (line 3): unknown variant `mine`, expected `own` or `shared`")
        );
    }

    #[test]
    fn enabled_container_without_image_is_an_error_on_the_merged_config() {
        let l = layer("cmdline-ish", "[services.x]\nrestart = \"no\"\n");
        let e = effective(std::slice::from_ref(&l)).err();
        assert_eq!(
            e.map(|e| e.key().to_string()),
            Some("services.x.image".to_string())
        );
        let off = layer("off", "[services.x]\nenabled = false\n");
        assert!(effective(&[off]).is_ok());
    }

    #[test]
    fn load_applies_every_layer_type_in_order() {
        let loaded = load(vec![
            text(
                "/usr/share/ros/os-config.toml",
                "hostname = \"image\"\n[kernel]\nmodules = [\"overlay\"]\n",
            ),
            text("fw_cfg", "hostname = \"fw\"\n"),
            text(
                "/var/lib/ros/config/gen-3.toml",
                "version = 1\nhostname = \"local\"\n[sysctl]\n\"vm.swappiness\" = 10\n",
            ),
            LayerInput {
                source: "cmdline".into(),
                body: LayerBody::Cmdline(vec![("sysctl.net.ipv4.ip_forward".into(), "1".into())]),
            },
        ]);
        assert_eq!(loaded.errors, vec![]);
        assert_eq!(
            loaded.used,
            [
                "defaults",
                "/usr/share/ros/os-config.toml",
                "fw_cfg",
                "/var/lib/ros/config/gen-3.toml",
                "cmdline"
            ]
        );
        let c = &loaded.config;
        assert_eq!(c.hostname, "local");
        assert_eq!(c.kernel.modules, ["overlay"]);
        assert_eq!(c.sysctl["vm.swappiness"], "10");
        assert_eq!(c.sysctl["net.ipv4.ip_forward"], "1");
    }

    #[test]
    fn hostname_set_tells_a_configured_name_from_the_default() {
        assert!(!effective(&[]).is_ok_and(|c| c.hostname_set));
        let other = layer("image", "[kernel]\nmodules = [\"x\"]\n");
        assert!(effective(&[other]).is_ok_and(|c| !c.hostname_set));
        // Even the default's own value counts once a layer names it.
        let named = layer("fw_cfg", "hostname = \"ros\"\n");
        assert!(effective(&[named]).is_ok_and(|c| c.hostname_set && c.hostname == "ros"));
        let cmdline = Layer::from_cmdline(&[("hostname".into(), "n1".into())]);
        assert!(cmdline
            .and_then(|l| effective(&[l]))
            .is_ok_and(|c| c.hostname_set && c.hostname == "n1"));
    }

    #[test]
    fn load_skips_a_bad_layer_and_applies_the_rest() {
        let loaded = load(vec![
            text("image", "hostname = \"image\"\n"),
            text(
                "fw_cfg",
                "hostname = \"fw\"\n[network]\nwait = \"sometimes\"\n",
            ),
            LayerInput {
                source: "cmdline".into(),
                body: LayerBody::Cmdline(vec![("kernel.modules".into(), "[\"dummy\"]".into())]),
            },
        ]);
        assert_eq!(loaded.used, ["defaults", "image", "cmdline"]);
        assert_eq!(loaded.config.hostname, "image");
        assert_eq!(loaded.config.kernel.modules, ["dummy"]);
        assert_eq!(loaded.errors.len(), 1);
        assert_eq!(loaded.errors[0].source_name(), "fw_cfg");
        assert_eq!(loaded.errors[0].key(), "network.wait");
        assert_eq!(loaded.errors[0].line(), Some(3));
    }

    #[test]
    fn load_drops_layers_from_the_top_until_the_merge_validates() {
        // Each layer is fine alone; together the top one closes a cycle.
        let loaded = load(vec![
            text(
                "image",
                "[services.a]\nimage = \"a\"\ndepends_on = [\"b\"]\n[services.b]\nimage = \"b\"\n",
            ),
            text("local", "hostname = \"local\"\n"),
            text("top", "[services.b]\ndepends_on = [\"a\"]\n"),
        ]);
        assert_eq!(loaded.used, ["defaults", "image", "local"]);
        assert_eq!(loaded.config.hostname, "local");
        assert_eq!(loaded.errors.len(), 1);
        assert_eq!(loaded.errors[0].source_name(), "top");
        assert!(loaded.errors[0].reason().contains("depends_on cycle"));
    }

    #[test]
    fn load_with_everything_broken_still_gives_the_defaults() {
        let loaded = load(vec![text("x", "version = = 1"), text("y", "[nope]\n")]);
        assert_eq!(loaded.used, ["defaults"]);
        assert_eq!(loaded.config, defaults::fallback());
        assert_eq!(loaded.errors.len(), 2);
        assert!(matches!(loaded.errors[0], ConfigError::Syntax { .. }));
        assert_eq!(loaded.errors[1].to_string(), "nope (line 1): unknown field `nope`, expected one of `version`, `hostname`, `kernel`, `sysctl`, `storage`, `network`, `services`, `workloads`, `registries`, `limits`");
    }

    #[test]
    fn effective_config_serialises_back_to_toml() {
        let c = defaults::fallback();
        let v = toml::Value::try_from(&c);
        let t = match v {
            Ok(toml::Value::Table(t)) => t,
            other => panic!("{other:?}"),
        };
        assert_eq!(t["limits"]["user"]["memory"], toml::Value::from("75%"));
        assert_eq!(
            t["network"]["interfaces"]["default"]["match"]["name"],
            toml::Value::from("e*")
        );
        assert!(t["network"]["interfaces"]["default"].get("mtu").is_none());
    }
}
