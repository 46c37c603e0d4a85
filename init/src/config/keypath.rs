//! Dotted key paths and values as typed on the CLI (`ros config set KEY VALUE`) and the kernel
//! cmdline (`ros.KEY=VALUE`).
//!
//! Owns: splitting a key path into segments, including the rule for the maps whose keys contain
//! dots (`sysctl`, `registries`: everything after the map's name is one key; for `registries` a
//! trailing Registry field name stays a field), quoted segments (`"…"` with `\"`/`\\`, `'…'`), and
//! reading a value as a TOML literal, else as a raw string.
//! Must not: look at a document or the schema beyond the names of those two maps and the
//! Registry fields.

use serde::de::IntoDeserializer;
use serde::Deserialize;

use super::error::KeyPathError;
use super::schema::REGISTRY_FIELDS;

/// Splits on dots outside quotes and unquotes the segments.
fn split(text: &str) -> Result<Vec<String>, KeyPathError> {
    if text.is_empty() {
        return Err(KeyPathError::Empty);
    }
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut segs = Vec::new();
    let mut i = 0;
    loop {
        let Some(&(start, c)) = chars.get(i) else {
            // A trailing dot.
            return Err(KeyPathError::EmptySegment { index: segs.len() });
        };
        let mut seg = String::new();
        if c == '"' || c == '\'' {
            i += 1;
            let mut closed = false;
            while let Some(&(at, ch)) = chars.get(i) {
                i += 1;
                if ch == c {
                    closed = true;
                    break;
                }
                if c == '"' && ch == '\\' {
                    match chars.get(i) {
                        Some(&(_, e @ ('"' | '\\'))) => {
                            seg.push(e);
                            i += 1;
                        }
                        _ => return Err(KeyPathError::BadEscape { at }),
                    }
                    continue;
                }
                seg.push(ch);
            }
            if !closed {
                return Err(KeyPathError::UnterminatedQuote { at: start });
            }
            match chars.get(i) {
                None | Some((_, '.')) => {}
                Some(&(at, found)) => return Err(KeyPathError::AfterQuote { at, found }),
            }
        } else {
            while let Some(&(_, ch)) = chars.get(i) {
                if ch == '.' {
                    break;
                }
                seg.push(ch);
                i += 1;
            }
        }
        if seg.is_empty() {
            return Err(KeyPathError::EmptySegment { index: segs.len() });
        }
        segs.push(seg);
        match chars.get(i) {
            None => return Ok(segs),
            // Skip the dot; the loop head reports a trailing one.
            Some(_) => i += 1,
        }
    }
}

/// Parses a dotted key path into its segments.
///
/// `sysctl.net.ipv4.ip_forward` → `["sysctl", "net.ipv4.ip_forward"]`;
/// `registries.10.0.2.100:5000.insecure` → `["registries", "10.0.2.100:5000", "insecure"]`;
/// quoted segments keep their dots: `registries."a.b:5000".insecure`.
pub fn parse_key(text: &str) -> Result<Vec<String>, KeyPathError> {
    let segs = split(text.trim())?;
    let Some((head, rest)) = segs.split_first() else {
        return Err(KeyPathError::Empty);
    };
    match head.as_str() {
        "sysctl" if rest.len() > 1 => Ok(vec![head.clone(), rest.join(".")]),
        "registries" if rest.len() > 1 => {
            let (last, middle) = match rest.split_last() {
                Some(parts) => parts,
                None => return Ok(segs),
            };
            if REGISTRY_FIELDS.contains(&last.as_str()) {
                Ok(vec![head.clone(), middle.join("."), last.clone()])
            } else {
                Ok(vec![head.clone(), rest.join(".")])
            }
        }
        _ => Ok(segs),
    }
}

/// Reads a CLI/cmdline value: a TOML literal (`1500`, `true`, `["a","b"]`, `{ name = "eth0" }`,
/// `"quoted"`) when it parses as one, else the raw text as a string (`eth0`, `10.0.0.0/8`).
pub fn parse_edit_value(text: &str) -> toml_edit::Value {
    match text.trim().parse::<toml_edit::Value>() {
        Ok(value) => value,
        Err(_) => toml_edit::Value::from(text),
    }
}

/// [`parse_edit_value`], as a `toml::Value` for building a layer table.
pub fn parse_value(text: &str) -> toml::Value {
    let edit = parse_edit_value(text);
    toml::Value::deserialize(edit.into_deserializer())
        .unwrap_or_else(|_| toml::Value::String(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> Vec<String> {
        match parse_key(text) {
            Ok(segs) => segs,
            Err(e) => panic!("{text}: {e}"),
        }
    }

    #[test]
    fn plain_keys_split_on_dots() {
        assert_eq!(
            key("network.interfaces.eth1.mtu"),
            ["network", "interfaces", "eth1", "mtu"]
        );
        assert_eq!(key("hostname"), ["hostname"]);
    }

    #[test]
    fn sysctl_keys_keep_their_dots() {
        assert_eq!(
            key("sysctl.net.ipv4.ip_forward"),
            ["sysctl", "net.ipv4.ip_forward"]
        );
        assert_eq!(key("sysctl.vm"), ["sysctl", "vm"]);
        assert_eq!(key("sysctl"), ["sysctl"]);
    }

    #[test]
    fn registries_keys_keep_their_dots_and_a_trailing_field() {
        assert_eq!(
            key("registries.10.0.2.100:5000.insecure"),
            ["registries", "10.0.2.100:5000", "insecure"]
        );
        assert_eq!(key("registries.docker.io"), ["registries", "docker.io"]);
        assert_eq!(
            key("registries.docker.io.mirrors"),
            ["registries", "docker.io", "mirrors"]
        );
    }

    #[test]
    fn quoted_keys_are_accepted_anywhere() {
        assert_eq!(
            key("sysctl.\"net.ipv4.ip_forward\""),
            ["sysctl", "net.ipv4.ip_forward"]
        );
        assert_eq!(
            key("registries.\"a.b:5000\".insecure"),
            ["registries", "a.b:5000", "insecure"]
        );
        assert_eq!(
            key("network.interfaces.'my.nic'.dhcp"),
            ["network", "interfaces", "my.nic", "dhcp"]
        );
        assert_eq!(
            key(r#"services."a\"b".image"#),
            ["services", "a\"b", "image"]
        );
    }

    #[test]
    fn empty_segments_and_bad_quotes_are_typed_errors() {
        assert_eq!(parse_key(""), Err(KeyPathError::Empty));
        assert_eq!(
            parse_key("a..b"),
            Err(KeyPathError::EmptySegment { index: 1 })
        );
        assert_eq!(
            parse_key(".a"),
            Err(KeyPathError::EmptySegment { index: 0 })
        );
        assert_eq!(
            parse_key("a."),
            Err(KeyPathError::EmptySegment { index: 1 })
        );
        assert_eq!(
            parse_key("sysctl.\"net.ipv4"),
            Err(KeyPathError::UnterminatedQuote { at: 7 })
        );
        assert_eq!(
            parse_key("a.\"b\"c"),
            Err(KeyPathError::AfterQuote { at: 5, found: 'c' })
        );
        assert_eq!(
            parse_key("a.\"\""),
            Err(KeyPathError::EmptySegment { index: 1 })
        );
    }

    #[test]
    fn values_parse_as_toml_literals_else_strings() {
        assert_eq!(parse_value("1500"), toml::Value::Integer(1500));
        assert_eq!(parse_value("true"), toml::Value::Boolean(true));
        assert_eq!(parse_value("0.5"), toml::Value::Float(0.5));
        assert_eq!(
            parse_value(r#"["a","b"]"#),
            toml::Value::Array(vec!["a".into(), "b".into()])
        );
        let table = parse_value(r#"{ name = "eth0" }"#);
        assert_eq!(table.get("name"), Some(&toml::Value::from("eth0")));
        assert_eq!(parse_value("\"quoted\""), toml::Value::from("quoted"));
        assert_eq!(parse_value("eth0"), toml::Value::from("eth0"));
        assert_eq!(parse_value("10.0.0.0/8"), toml::Value::from("10.0.0.0/8"));
        assert_eq!(parse_value("1\nx = 2"), toml::Value::from("1\nx = 2"));
        assert_eq!(parse_value(""), toml::Value::from(""));
    }
}
