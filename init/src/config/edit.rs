//! Edits of one config document that keep its comments and layout, and the atomic file writer.
//!
//! Owns: `Document` (a toml_edit `DocumentMut` plus its source name) with `get`, `set`,
//! `set_all` and `unset`; every edit is made on a copy, the whole result is checked strictly as
//! a layer, and only then adopted — a refused edit leaves the document unchanged. New tables are
//! normal `[section]` tables (intermediates implicit), never inline, for sections and named
//! tables; a replaced value keeps its comment. `write_atomic` writes a file so that a crash
//! leaves either the old or the new text, never a mix.
//! Must not: merge layers or know about generations; the CLI and the generations store decide
//! which document to edit and where it lives.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use toml_edit::{DocumentMut, Item, Table, Value};

use super::error::{line_of, one_line, render_keys, ConfigError};
use super::layers::Layer;
use super::spans;

/// Text of a new local layer.
pub const NEW_FILE: &str = "version = 1\n";

/// One TOML config document being edited.
#[derive(Debug, Clone)]
pub struct Document {
    source: String,
    doc: DocumentMut,
}

/// True for the positions that are sections of their own: top-level tables and the entries of
/// the named maps (`network.interfaces.*`, `services.*`, `workloads.*`, `registries.*`).
fn is_section(key: &[String]) -> bool {
    match key {
        [_] => true,
        [map, _] => matches!(map.as_str(), "services" | "workloads" | "registries"),
        [net, ifs, _] => net == "network" && ifs == "interfaces",
        _ => false,
    }
}

fn kind_of(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Value(v) => v.type_name(),
        Item::Table(_) => "table",
        Item::ArrayOfTables(_) => "array of tables",
    }
}

impl Document {
    /// Parses `text` (syntax only; the strict check runs after each edit).
    pub fn parse(source: &str, text: &str) -> Result<Document, ConfigError> {
        let doc = text.parse::<DocumentMut>().map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            ConfigError::Syntax {
                key: spans::key_at_line(text, line.unwrap_or(1)),
                line,
                source_name: source.to_string(),
                reason: one_line(e.message()),
            }
        })?;
        Ok(Document {
            source: source.to_string(),
            doc,
        })
    }

    /// A new document holding only `version = 1`.
    pub fn new_layer(source: &str) -> Document {
        Document {
            source: source.to_string(),
            doc: NEW_FILE.parse().unwrap_or_default(),
        }
    }

    /// The document's text.
    pub fn text(&self) -> String {
        self.doc.to_string()
    }

    /// Checks the whole document strictly as a layer.
    pub fn validate(&self) -> Result<Layer, ConfigError> {
        Layer::parse(&self.source, &self.text())
    }

    /// The document's own value at `key`, if set.
    pub fn value(&self, key: &[String]) -> Option<toml::Value> {
        let table: toml::Table = toml::from_str(&self.text()).ok()?;
        lookup(&table, key).cloned()
    }

    /// The document's own value at `key`, rendered for printing (see [`render`]).
    pub fn get(&self, key: &[String]) -> Option<String> {
        self.value(key).map(|v| render(&v))
    }

    /// Sets `key` to `value`, creating intermediate tables. Refused (document unchanged) if the
    /// result does not pass the strict layer check.
    pub fn set(&mut self, key: &[String], value: Value) -> Result<(), ConfigError> {
        self.set_all(&[(key.to_vec(), value)])
    }

    /// Applies several sets, checks once; all or nothing.
    pub fn set_all(&mut self, edits: &[(Vec<String>, Value)]) -> Result<(), ConfigError> {
        let mut next = self.doc.clone();
        for (key, value) in edits {
            self.set_in(&mut next, key, value.clone())?;
        }
        self.adopt(next)
    }

    /// Removes `key`; an error naming the key if it is not set.
    pub fn unset(&mut self, key: &[String]) -> Result<(), ConfigError> {
        let not_set = || ConfigError::NotSet {
            key: render_keys(key),
            source_name: self.source.clone(),
        };
        let Some((last, parents)) = key.split_last() else {
            return Err(not_set());
        };
        let mut next = self.doc.clone();
        let mut cur = next.as_item_mut();
        for seg in parents {
            if cur.get(seg.as_str()).is_none() {
                return Err(not_set());
            }
            cur = match cur.get_mut(seg.as_str()) {
                Some(item) => item,
                None => return Err(not_set()),
            };
        }
        let removed = match cur {
            Item::Table(t) => t.remove(last).is_some(),
            Item::Value(Value::InlineTable(t)) => t.remove(last).is_some(),
            _ => false,
        };
        if !removed {
            return Err(not_set());
        }
        self.adopt(next)
    }

    fn adopt(&mut self, next: DocumentMut) -> Result<(), ConfigError> {
        Layer::parse(&self.source, &next.to_string())?;
        self.doc = next;
        Ok(())
    }

    fn set_in(
        &self,
        doc: &mut DocumentMut,
        key: &[String],
        value: Value,
    ) -> Result<(), ConfigError> {
        let Some((last, parents)) = key.split_last() else {
            return Ok(());
        };
        let text = doc.to_string();
        let not_table = |depth: usize, item: &Item| {
            let prefix = &key[..depth];
            ConfigError::Invalid {
                key: render_keys(prefix),
                line: spans::line_of_path(&text, &super::error::keys_path(prefix)),
                source_name: self.source.clone(),
                reason: format!("is a {}, not a table", kind_of(item)),
            }
        };
        let mut cur = doc.as_item_mut();
        for (i, seg) in parents.iter().enumerate() {
            let inline_parent = cur.is_inline_table();
            if !cur.is_table_like() {
                return Err(not_table(i, cur));
            }
            let Some(child) = cur.get_mut(seg.as_str()) else {
                return Err(not_table(i, &Item::None));
            };
            if child.is_none() {
                *child = if inline_parent {
                    Item::Value(Value::InlineTable(toml_edit::InlineTable::new()))
                } else {
                    let mut t = Table::new();
                    t.set_implicit(true);
                    Item::Table(t)
                };
            }
            cur = child;
        }
        if !cur.is_table_like() {
            return Err(not_table(parents.len(), cur));
        }
        let inline_parent = cur.is_inline_table();
        let Some(slot) = cur.get_mut(last.as_str()) else {
            return Err(not_table(parents.len(), &Item::None));
        };
        let added = slot.is_none();
        *slot = match (value, &*slot) {
            (Value::InlineTable(t), old) if !inline_parent && is_section(key) => {
                let mut table = t.into_table();
                if let Item::Table(old) = old {
                    table.decor_mut().clone_from(old.decor());
                    if let Some(p) = old.position() {
                        table.set_position(p);
                    }
                }
                Item::Table(table)
            }
            (mut value, Item::Value(old)) => {
                *value.decor_mut() = old.decor().clone();
                Item::Value(value)
            }
            (value, _) => Item::Value(value),
        };
        if added {
            // A key added to an inline table gets the table's default spacing.
            if let Some(t) = cur.as_inline_table_mut() {
                t.fmt();
            }
        }
        Ok(())
    }
}

/// The value at `key` in `table`.
pub fn lookup<'a>(table: &'a toml::Table, key: &[String]) -> Option<&'a toml::Value> {
    let (first, rest) = key.split_first()?;
    let mut cur = table.get(first)?;
    for seg in rest {
        cur = cur.as_table()?.get(seg)?;
    }
    Some(cur)
}

/// Renders a value for `ros config get`: scalars plainly (strings without quotes), arrays and
/// tables as TOML.
pub fn render(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Table(t) => toml::to_string(t)
            .unwrap_or_else(|_| value.to_string())
            .trim_end()
            .to_string(),
        other => other.to_string(),
    }
}

/// Writes `text` to `path` atomically: a temporary file in the same directory, fsync, rename
/// over `path`, fsync the directory. An existing file's permissions are kept.
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config".to_string());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let _ = fs::remove_file(&tmp);
        let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        if let Ok(meta) = fs::metadata(path) {
            file.set_permissions(meta.permissions())?;
        }
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::keypath::{parse_edit_value, parse_key};

    fn doc(text: &str) -> Document {
        match Document::parse("os-config.toml", text) {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        }
    }

    fn key(k: &str) -> Vec<String> {
        match parse_key(k) {
            Ok(k) => k,
            Err(e) => panic!("{e}"),
        }
    }

    fn set(d: &mut Document, k: &str, v: &str) {
        if let Err(e) = d.set(&key(k), parse_edit_value(v)) {
            panic!("{k} = {v}: {e}");
        }
    }

    #[test]
    fn set_keeps_comments_and_layout_golden() {
        let mut d = doc(include_str!("../../tests/golden/02_config_set.in"));
        set(&mut d, "network.interfaces.private.mtu", "1500");
        set(&mut d, "hostname", "node-2");
        set(&mut d, "sysctl.net.ipv4.ip_forward", "1");
        set(&mut d, "registries.10.0.2.100:5000.insecure", "true");
        set(&mut d, "services.web.image", "nginx");
        set(
            &mut d,
            "network.interfaces.eth2",
            "{ match = { name = \"eth2\" }, dhcp = true }",
        );
        set(
            &mut d,
            "network.interfaces.private.match.mac",
            "52:54:00:12:34:56",
        );
        assert_eq!(
            d.text(),
            include_str!("../../tests/golden/02_config_set.out")
        );
    }

    #[test]
    fn set_on_a_new_layer_creates_normal_tables() {
        let mut d = Document::new_layer("new.toml");
        set(&mut d, "network.interfaces.eth1.mtu", "9000");
        set(&mut d, "sysctl.\"net.ipv4.ip_forward\"", "1");
        assert_eq!(
            d.text(),
            "version = 1\n\n[network.interfaces.eth1]\nmtu = 9000\n\n[sysctl]\n\"net.ipv4.ip_forward\" = 1\n"
        );
    }

    #[test]
    fn set_of_an_invalid_value_is_refused_and_the_text_is_unchanged() {
        let text = "version = 1\n\n[network.interfaces.eth1]\nmtu = 9000 # jumbo\n";
        let mut d = doc(text);
        let e = d
            .set(&key("network.interfaces.eth1.mtu"), parse_edit_value("big"))
            .err();
        assert_eq!(
            e.map(|e| e.to_string()),
            Some(
                "network.interfaces.eth1.mtu (line 4): invalid type: string \"big\", expected u32"
                    .to_string()
            )
        );
        let e = d
            .set(&key("network.interfaces.eth1.mtuu"), parse_edit_value("1"))
            .err();
        assert_eq!(
            e.map(|e| e.key().to_string()),
            Some("network.interfaces.eth1.mtuu".to_string())
        );
        let e = d
            .set(&key("workloads.web.privileged"), parse_edit_value("true"))
            .err();
        assert_eq!(
            e.map(|e| e.key().to_string()),
            Some("workloads.web.privileged".to_string())
        );
        assert_eq!(d.text(), text);
    }

    #[test]
    fn set_all_is_all_or_nothing() {
        let text = "version = 1\n";
        let mut d = doc(text);
        let edits = vec![
            (key("hostname"), parse_edit_value("good")),
            (key("network.wait"), parse_edit_value("sometimes")),
        ];
        let e = d.set_all(&edits).err();
        assert_eq!(
            e.map(|e| e.key().to_string()),
            Some("network.wait".to_string())
        );
        assert_eq!(d.text(), text);
    }

    #[test]
    fn set_below_a_scalar_names_the_scalar() {
        let mut d = doc("hostname = \"a\"\n");
        let e = d.set(&key("hostname.x"), parse_edit_value("1")).err();
        assert_eq!(
            e.map(|e| e.to_string()),
            Some("hostname (line 1): is a string, not a table".to_string())
        );
    }

    #[test]
    fn unset_removes_the_key_and_keeps_the_rest() {
        let mut d = doc("# top\nversion = 1\nhostname = \"a\" # name\n\n[services.a]\nimage = \"a\"\n\n[services.b] # b\nimage = \"b\"\n");
        if let Err(e) = d.unset(&key("hostname")) {
            panic!("{e}");
        }
        if let Err(e) = d.unset(&key("services.a")) {
            panic!("{e}");
        }
        assert_eq!(
            d.text(),
            "# top\nversion = 1\n\n[services.b] # b\nimage = \"b\"\n"
        );
    }

    #[test]
    fn unset_of_an_absent_key_names_it() {
        let mut d = doc("version = 1\n");
        let e = d.unset(&key("network.interfaces.eth1.mtu")).err();
        assert_eq!(
            e.map(|e| e.to_string()),
            Some("network.interfaces.eth1.mtu (os-config.toml): is not set".to_string())
        );
        assert_eq!(d.text(), "version = 1\n");
    }

    #[test]
    fn get_prints_scalars_plainly_and_tables_as_toml() {
        let d = doc("hostname = \"node-1\"\n[kernel]\nmodules = [\"a\", \"b\"]\n[network.interfaces.x]\nmtu = 1500\ndhcp = true\n");
        assert_eq!(d.get(&key("hostname")).as_deref(), Some("node-1"));
        assert_eq!(
            d.get(&key("network.interfaces.x.mtu")).as_deref(),
            Some("1500")
        );
        assert_eq!(
            d.get(&key("kernel.modules")).as_deref(),
            Some("[\"a\", \"b\"]")
        );
        assert_eq!(
            d.get(&key("network.interfaces.x")).as_deref(),
            Some("dhcp = true\nmtu = 1500")
        );
        assert_eq!(d.get(&key("network.interfaces.y")), None);
    }

    #[test]
    fn write_atomic_replaces_the_file_and_keeps_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        let path = dir.path().join("os-config.toml");
        assert!(write_atomic(&path, "version = 1\n").is_ok());
        assert!(fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).is_ok());
        assert!(write_atomic(&path, "version = 1\nhostname = \"b\"\n").is_ok());
        assert_eq!(
            fs::read_to_string(&path).ok().as_deref(),
            Some("version = 1\nhostname = \"b\"\n")
        );
        let mode = fs::metadata(&path)
            .map(|m| m.permissions().mode() & 0o777)
            .ok();
        assert_eq!(mode, Some(0o600));
        let names: Vec<_> = fs::read_dir(dir.path())
            .map(|r| r.filter_map(Result::ok).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert_eq!(names, ["os-config.toml"]);
    }

    #[test]
    fn write_atomic_into_a_missing_directory_fails_cleanly() {
        let path = Path::new("/nonexistent-ros-test-dir/os-config.toml");
        assert!(write_atomic(path, "x").is_err());
    }
}
