//! Config layers: parsing one layer strictly, building the cmdline layer, and merging layers.
//!
//! Owns: `Layer` (a source name, its `toml::Table`, and its text when it has one, for lines),
//! the strict check of a layer on its own (schema + the single-layer rules of `validate`, every
//! error naming the key path and line), and the merge rules of DESIGN.md: later layers win;
//! tables merge key by key, recursively (so named tables such as `services.*` merge by name);
//! arrays and scalars are replaced whole; the defaults' `network.interfaces` apply only when no
//! later layer names an interface.
//! Must not: read files or the cmdline itself (boot code hands in text and pairs), or decide what
//! to do with a bad layer (`load` does).

use serde::de::DeserializeOwned;

use super::defaults;
use super::error::{line_of, one_line, render_path, ConfigError, PathSeg};
use super::keypath;
use super::schema::Config;
use super::spans;
use super::validate::{self, Scope};

/// Source name of the kernel cmdline layer.
pub const CMDLINE: &str = "cmdline";

/// One config layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    source: String,
    table: toml::Table,
    text: Option<String>,
}

impl Layer {
    /// Parses and strictly checks a layer from TOML text. `source` names it in errors (a file
    /// path, `fw_cfg`, …).
    pub fn parse(source: &str, text: &str) -> Result<Layer, ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            ConfigError::Syntax {
                key: spans::key_at_line(text, line.unwrap_or(1)),
                line,
                source_name: source.to_string(),
                reason: one_line(e.message()),
            }
        })?;
        let config: Config = deserialize(toml::Deserializer::new(text), source, Some(text))?;
        check(&config, Scope::Layer, source, Some(text))?;
        Ok(Layer {
            source: source.to_string(),
            table,
            text: Some(text.to_string()),
        })
    }

    /// Builds and strictly checks the cmdline layer from `ros.KEY=VALUE` pairs, given as
    /// `(KEY, VALUE)` without the `ros.` prefix. Keys follow `keypath` rules; values are TOML
    /// literals or else strings. Later pairs win.
    pub fn from_cmdline(pairs: &[(String, String)]) -> Result<Layer, ConfigError> {
        let mut table = toml::Table::new();
        for (key, value) in pairs {
            let segs = keypath::parse_key(key).map_err(|reason| ConfigError::KeyPath {
                key: key.clone(),
                source_name: CMDLINE.to_string(),
                reason,
            })?;
            insert(&mut table, &segs, keypath::parse_value(value), CMDLINE)?;
        }
        let config: Config = deserialize(toml::Value::Table(table.clone()), CMDLINE, None)?;
        check(&config, Scope::Layer, CMDLINE, None)?;
        Ok(Layer {
            source: CMDLINE.to_string(),
            table,
            text: None,
        })
    }

    /// The compiled-in defaults layer.
    pub fn defaults() -> Result<Layer, ConfigError> {
        Layer::parse(defaults::SOURCE, defaults::DEFAULTS)
    }

    /// Where this layer came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The layer's keys and values.
    pub fn table(&self) -> &toml::Table {
        &self.table
    }

    /// The 1-based line of `path` (or of its nearest present parent) in this layer's text.
    pub fn line_of(&self, path: &[PathSeg]) -> Option<usize> {
        self.text
            .as_deref()
            .and_then(|t| spans::line_of_path(t, path))
    }

    /// True if the layer has at least one `network.interfaces.*` entry.
    pub fn names_an_interface(&self) -> bool {
        self.table
            .get("network")
            .and_then(|n| n.get("interfaces"))
            .and_then(toml::Value::as_table)
            .is_some_and(|t| !t.is_empty())
    }
}

/// Sets `segs` to `value` in `table`, creating intermediate tables.
pub fn insert(
    table: &mut toml::Table,
    segs: &[String],
    value: toml::Value,
    source: &str,
) -> Result<(), ConfigError> {
    let Some((last, parents)) = segs.split_last() else {
        return Ok(());
    };
    let mut cur = table;
    for (i, seg) in parents.iter().enumerate() {
        let entry = cur
            .entry(seg.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = match entry {
            toml::Value::Table(t) => t,
            other => {
                let path: Vec<PathSeg> = segs[..=i].iter().cloned().map(PathSeg::Key).collect();
                return Err(ConfigError::Invalid {
                    key: render_path(&path),
                    line: None,
                    source_name: source.to_string(),
                    reason: format!("is a {}, not a table", other.type_str()),
                });
            }
        };
    }
    cur.insert(last.clone(), value);
    Ok(())
}

/// Converts a serde_path_to_error path to ours.
fn path_of(path: &serde_path_to_error::Path) -> Vec<PathSeg> {
    path.iter()
        .filter_map(|seg| match seg {
            serde_path_to_error::Segment::Seq { index } => Some(PathSeg::Index(*index)),
            serde_path_to_error::Segment::Map { key } => Some(PathSeg::Key(key.clone())),
            serde_path_to_error::Segment::Enum { variant } => Some(PathSeg::Key(variant.clone())),
            serde_path_to_error::Segment::Unknown => None,
        })
        .collect()
}

/// The error type of the two toml deserialisers: message and span.
pub trait TomlDeError: serde::de::Error {
    /// The bare message.
    fn message_text(&self) -> String;
    /// Byte range in the text, when the deserialiser knows it.
    fn span_range(&self) -> Option<std::ops::Range<usize>>;
}

impl TomlDeError for toml::de::Error {
    fn message_text(&self) -> String {
        one_line(self.message())
    }
    fn span_range(&self) -> Option<std::ops::Range<usize>> {
        self.span()
    }
}

/// A schema error before it is located: key path, message, and span when known.
#[derive(Debug, Clone)]
pub struct SchemaFailure {
    /// Key path of the offending value.
    pub path: Vec<PathSeg>,
    /// The deserialiser's message.
    pub reason: String,
    /// Byte range in the text, when known.
    pub span: Option<std::ops::Range<usize>>,
}

/// Deserialises `de` into `T`, tracking the key path of an error.
pub fn deserialize_raw<'de, D, T>(de: D) -> Result<T, SchemaFailure>
where
    D: serde::Deserializer<'de>,
    D::Error: TomlDeError,
    T: DeserializeOwned,
{
    serde_path_to_error::deserialize(de).map_err(|e| SchemaFailure {
        path: path_of(e.path()),
        reason: e.inner().message_text(),
        span: e.inner().span_range(),
    })
}

/// Deserialises `de` into `T`, turning an error into `ConfigError::Schema` with key path and
/// (when `text` is given) line: from the error's span, else from the key's position.
pub fn deserialize<'de, D, T>(de: D, source: &str, text: Option<&str>) -> Result<T, ConfigError>
where
    D: serde::Deserializer<'de>,
    D::Error: TomlDeError,
    T: DeserializeOwned,
{
    deserialize_raw(de).map_err(|f| {
        let line = text.and_then(|t| {
            f.span
                .as_ref()
                .map(|s| line_of(t, s.start))
                .or_else(|| spans::line_of_path(t, &f.path))
        });
        ConfigError::Schema {
            key: render_path(&f.path),
            line,
            source_name: source.to_string(),
            reason: f.reason,
        }
    })
}

/// Runs the semantic checks, locating a problem in `text` when given.
fn check(
    config: &Config,
    scope: Scope,
    source: &str,
    text: Option<&str>,
) -> Result<(), ConfigError> {
    validate::check(config, scope).map_err(|p| ConfigError::Invalid {
        key: render_path(&p.path),
        line: text.and_then(|t| spans::line_of_path(t, &p.path)),
        source_name: source.to_string(),
        reason: p.reason,
    })
}

/// Merges `over` into `base`: tables key by key, recursively; anything else replaced whole.
pub fn merge_into(base: &mut toml::Table, over: &toml::Table) {
    for (key, value) in over {
        match (base.get_mut(key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_into(b, o),
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

/// Merges `defaults` and then `layers` in order (later wins). The defaults' interfaces are
/// dropped when any layer names an interface.
pub fn merge(defaults: &Layer, layers: &[Layer]) -> toml::Table {
    let mut base = defaults.table.clone();
    if layers.iter().any(Layer::names_an_interface) {
        if let Some(toml::Value::Table(net)) = base.get_mut("network") {
            net.remove("interfaces");
        }
    }
    for layer in layers {
        merge_into(&mut base, &layer.table);
    }
    base
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(text: &str) -> Layer {
        match Layer::parse("test.toml", text) {
            Ok(l) => l,
            Err(e) => panic!("{e}"),
        }
    }

    fn err(text: &str) -> ConfigError {
        match Layer::parse("test.toml", text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e,
        }
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn design_example_parses_as_a_layer() {
        let l = layer(include_str!("../../tests/golden/01_design_example.toml"));
        assert_eq!(l.source(), "test.toml");
        assert!(l.names_an_interface());
    }

    #[test]
    fn layer_without_version_is_accepted() {
        layer("hostname = \"node-1\"\n");
    }

    #[test]
    fn wrong_version_names_version_and_line() {
        let e = err("# hi\nversion = 2\n");
        assert_eq!(e.key(), "version");
        assert_eq!(e.line(), Some(2));
        assert!(e.reason().contains("unsupported config version 2"), "{e}");
    }

    #[test]
    fn unknown_key_names_its_path_and_line() {
        let text =
            "version = 1\n\n[network.interfaces.eth1]\nmatch = { name = \"eth1\" }\nmtuu = 9000\n";
        let e = err(text);
        assert!(matches!(e, ConfigError::Schema { .. }), "{e:?}");
        assert_eq!(e.key(), "network.interfaces.eth1.mtuu");
        assert_eq!(e.line(), Some(5));
        assert_eq!(e.source_name(), "test.toml");
        assert!(
            e.to_string()
                .starts_with("network.interfaces.eth1.mtuu (line 5): unknown field `mtuu`"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_renders_exactly() {
        let text = "version = 1\n\n\n\n\n\n\n\n\n\n[network.interfaces.eth1]\nmtu = \"big\"\n";
        assert_eq!(
            err(text).to_string(),
            "network.interfaces.eth1.mtu (line 12): invalid type: string \"big\", expected u32"
        );
    }

    #[test]
    fn unknown_key_inside_an_inline_table_and_array_of_tables() {
        let e = err("[network.interfaces.a]\nmatch = { nam = \"eth0\" }\n");
        assert_eq!(e.key(), "network.interfaces.a.match.nam");
        assert_eq!(e.line(), Some(2));
        let e = err("[[storage.mounts]]\nsource = \"a\"\ntarget = \"/a\"\n\n[[storage.mounts]]\nsource = \"b\"\ntarget = \"/b\"\nfs = \"ext4\"\n");
        assert_eq!(e.key(), "storage.mounts[1].fs");
        assert_eq!(e.line(), Some(8));
    }

    #[test]
    fn syntax_error_names_the_line() {
        let e = err("version = 1\n[network]\nmtu = = 3\n");
        assert!(matches!(e, ConfigError::Syntax { .. }), "{e:?}");
        assert_eq!(e.line(), Some(3));
        assert_eq!(e.key(), "network.mtu");
    }

    #[test]
    fn semantic_error_in_a_layer_names_key_and_line() {
        let e = err("version = 1\nhostname = \"bad_name!\"\n");
        assert!(matches!(e, ConfigError::Invalid { .. }), "{e:?}");
        assert_eq!(e.key(), "hostname");
        assert_eq!(e.line(), Some(2));
        let e = err("[sysctl]\n\"net.ipv4.ip_forward\" = 1\n\"bad key\" = 2\n");
        assert_eq!(e.key(), "sysctl.\"bad key\"");
        assert_eq!(e.line(), Some(3));
        let e = err("[kernel]\nmodules = [\"ok\", \"no/slash\"]\n");
        assert_eq!(e.key(), "kernel.modules[1]");
        assert_eq!(e.line(), Some(2));
        let e = err("[workloads.web]\nimage = \"nginx\"\nmemory = \"lots\"\n");
        assert_eq!(e.key(), "workloads.web.memory");
        assert_eq!(e.line(), Some(3));
    }

    #[test]
    fn privileged_workload_is_rejected_clearly() {
        let e = err("[workloads.web]\nimage = \"nginx\"\nprivileged = true\n");
        assert_eq!(
            e.to_string(),
            "workloads.web.privileged (line 3): privileged is only allowed for services, not workloads"
        );
        layer("[services.web]\nimage = \"nginx\"\nprivileged = true\n");
    }

    #[test]
    fn sysctl_values_may_be_integers_or_bools() {
        let l =
            layer("[sysctl]\n\"net.ipv4.ip_forward\" = 1\n\"kernel.x\" = true\n\"vm.y\" = \"3\"\n");
        assert_eq!(
            l.table()["sysctl"]["net.ipv4.ip_forward"],
            toml::Value::Integer(1)
        );
        let config: Config = match toml::Value::Table(l.table().clone()).try_into() {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(config.sysctl["net.ipv4.ip_forward"], "1");
        assert_eq!(config.sysctl["kernel.x"], "1");
        assert_eq!(config.sysctl["vm.y"], "3");
    }

    #[test]
    fn cmdline_layer_uses_keypath_rules_and_toml_values() {
        let l = match Layer::from_cmdline(&pairs(&[
            ("sysctl.net.ipv4.ip_forward", "1"),
            ("registries.10.0.2.100:5000.insecure", "true"),
            ("network.interfaces.eth0.match", "{ name = \"eth0\" }"),
            ("network.interfaces.eth0.addresses", "[\"10.0.0.2/24\"]"),
            ("hostname", "node-7"),
        ])) {
            Ok(l) => l,
            Err(e) => panic!("{e}"),
        };
        let t = l.table();
        assert_eq!(l.source(), "cmdline");
        assert_eq!(t["sysctl"]["net.ipv4.ip_forward"], toml::Value::Integer(1));
        assert_eq!(
            t["registries"]["10.0.2.100:5000"]["insecure"],
            toml::Value::Boolean(true)
        );
        assert_eq!(
            t["network"]["interfaces"]["eth0"]["match"]["name"],
            toml::Value::from("eth0")
        );
        assert_eq!(t["hostname"], toml::Value::from("node-7"));
    }

    #[test]
    fn cmdline_errors_name_the_key_and_cmdline() {
        let e = Layer::from_cmdline(&pairs(&[("hostname", "-bad-")])).err();
        assert_eq!(
            e.map(|e| e.to_string()),
            Some("hostname (cmdline): invalid hostname \"-bad-\": expected letters, digits and '-' in dot-separated labels (RFC 1123), at most 64 characters".to_string())
        );
        let e = Layer::from_cmdline(&pairs(&[("network.interfaces.eth0.mtu", "big")])).err();
        assert_eq!(
            e.map(|e| e.to_string()),
            Some(
                "network.interfaces.eth0.mtu (cmdline): invalid type: string \"big\", expected u32"
                    .to_string()
            )
        );
        let e = Layer::from_cmdline(&pairs(&[("a..b", "1")])).err();
        assert_eq!(
            e.map(|e| e.to_string()),
            Some("a..b (cmdline): empty segment 1 in key path".to_string())
        );
        let e = Layer::from_cmdline(&pairs(&[("hostname", "x"), ("hostname.y", "1")])).err();
        assert_eq!(
            e.map(|e| e.to_string()),
            Some("hostname (cmdline): is a string, not a table".to_string())
        );
    }

    #[test]
    fn merge_replaces_scalars_and_arrays_and_merges_tables() {
        let low = layer("hostname = \"a\"\n[kernel]\nmodules = [\"x\", \"y\"]\n[storage.state]\ndevice = \"/dev/vda\"\nwait_s = 5\n");
        let high =
            layer("hostname = \"b\"\n[kernel]\nmodules = [\"z\"]\n[storage.state]\nwait_s = 9\n");
        let defaults = layer("version = 1\n[network.interfaces.default]\ndhcp = true\n");
        let m = merge(&defaults, &[low, high]);
        assert_eq!(m["hostname"], toml::Value::from("b"));
        assert_eq!(m["kernel"]["modules"], toml::Value::Array(vec!["z".into()]));
        assert_eq!(
            m["storage"]["state"]["device"],
            toml::Value::from("/dev/vda")
        );
        assert_eq!(m["storage"]["state"]["wait_s"], toml::Value::Integer(9));
        assert_eq!(
            m["network"]["interfaces"]["default"]["dhcp"],
            toml::Value::Boolean(true)
        );
    }

    #[test]
    fn named_tables_merge_by_name() {
        let low =
            layer("[services.a]\nimage = \"a\"\nrestart = \"no\"\n[services.b]\nimage = \"b\"\n");
        let high = layer("[services.a]\nenabled = false\n[services.c]\nimage = \"c\"\n");
        let m = merge(&layer(""), &[low, high]);
        let s = &m["services"];
        assert_eq!(s["a"]["image"], toml::Value::from("a"));
        assert_eq!(s["a"]["restart"], toml::Value::from("no"));
        assert_eq!(s["a"]["enabled"], toml::Value::Boolean(false));
        assert!(s.get("b").is_some() && s.get("c").is_some());
    }

    #[test]
    fn default_interfaces_are_dropped_when_a_layer_names_one() {
        let defaults =
            layer("[network]\nwait = \"any\"\n[network.interfaces.default]\ndhcp = true\n");
        let other = layer("[network]\nnameservers = [\"1.1.1.1\"]\n");
        let m = merge(&defaults, std::slice::from_ref(&other));
        assert!(m["network"]["interfaces"].get("default").is_some());
        let named = layer("[network.interfaces.lan]\nmatch = { name = \"eth1\" }\n");
        let m = merge(&defaults, &[other, named]);
        let ifs = m["network"]["interfaces"]
            .as_table()
            .map(|t| t.keys().cloned().collect::<Vec<_>>());
        assert_eq!(ifs, Some(vec!["lan".to_string()]));
        assert_eq!(m["network"]["wait"], toml::Value::from("any"));
    }
}
