//! `ConfigError`, the one error type of the config subsystem, and the key paths it names.
//!
//! Owns: the rendered form of every config error, `KEY (line L): REASON` when the line is known
//! and `KEY (SOURCE): REASON` otherwise (DESIGN.md's console line is `ros: config error: ` + this),
//! and the rendering of key paths (`network.interfaces.eth1.mtu`, `sysctl."net.ipv4.ip_forward"`,
//! `storage.mounts[0].target`).
//! Must not: print or log anything; callers log once, at their boundary.

use std::fmt;

/// One step of a key path inside a config document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSeg {
    /// A table key.
    Key(String),
    /// An array index (0-based).
    Index(usize),
}

/// Renders a key path: keys joined by `.`, keys that are not bare TOML keys quoted, array
/// indexes as `[N]`. The document root renders as `version` (the one key every layer may hold).
pub fn render_path(path: &[PathSeg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            PathSeg::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&quote_key(key));
            }
            PathSeg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    if out.is_empty() {
        out.push_str("version");
    }
    out
}

/// Plain key segments as a path.
pub fn keys_path(keys: &[String]) -> Vec<PathSeg> {
    keys.iter().cloned().map(PathSeg::Key).collect()
}

/// Renders plain key segments (no indexes) as a dotted path.
pub fn render_keys(keys: &[String]) -> String {
    render_path(&keys_path(keys))
}

/// Quotes `key` as a TOML basic string unless it is a bare key (`A-Za-z0-9_-`).
pub fn quote_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        return key.to_string();
    }
    let mut out = String::from("\"");
    for c in key.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The `(line L)` or `(SOURCE)` part of a rendered error.
struct At<'a>(&'a Option<usize>, &'a str);

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(line) => write!(f, "line {line}"),
            None => f.write_str(self.1),
        }
    }
}

/// Why a CLI or cmdline key path could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyPathError {
    /// The key path is the empty string.
    #[error("empty key")]
    Empty,
    /// Two dots in a row, or a dot at either end (`a..b`, `.a`, `a.`), or `""`.
    #[error("empty segment {index} in key path")]
    EmptySegment {
        /// 0-based index of the empty segment.
        index: usize,
    },
    /// A `"` or `'` quote that is never closed.
    #[error("unterminated quote starting at byte {at}")]
    UnterminatedQuote {
        /// Byte offset of the opening quote.
        at: usize,
    },
    /// Text right after a closing quote that is not a `.` (`"a"b`).
    #[error("unexpected character {found:?} after quoted key at byte {at}")]
    AfterQuote {
        /// Byte offset of the character.
        at: usize,
        /// The character.
        found: char,
    },
    /// An escape sequence in a `"…"` key that is not `\"` or `\\`.
    #[error("unsupported escape sequence at byte {at}")]
    BadEscape {
        /// Byte offset of the backslash.
        at: usize,
    },
}

/// Every error of the config subsystem. Display: `KEY (line L): REASON` or `KEY (SOURCE): REASON`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The text is not valid TOML. `key` is the table in effect at the error.
    #[error("{key} ({}): {reason}", At(.line, .source_name))]
    Syntax {
        /// Dotted key path.
        key: String,
        /// 1-based line, if known.
        line: Option<usize>,
        /// Layer source: file path, `fw_cfg`, `cmdline`, …
        source_name: String,
        /// What the TOML parser said.
        reason: String,
    },
    /// A key is unknown or a value has the wrong type (the serde schema rejected it).
    #[error("{key} ({}): {reason}", At(.line, .source_name))]
    Schema {
        /// Dotted key path.
        key: String,
        /// 1-based line, if known.
        line: Option<usize>,
        /// Layer source.
        source_name: String,
        /// What the schema said.
        reason: String,
    },
    /// A value has the right type but is not acceptable (bad hostname, dependency cycle, …).
    #[error("{key} ({}): {reason}", At(.line, .source_name))]
    Invalid {
        /// Dotted key path.
        key: String,
        /// 1-based line, if known.
        line: Option<usize>,
        /// Layer source (for a merged config: the topmost layer that set the key).
        source_name: String,
        /// Why.
        reason: String,
    },
    /// A key path given on the CLI or the kernel cmdline cannot be parsed.
    #[error("{key} ({source_name}): {reason}")]
    KeyPath {
        /// The key path as given.
        key: String,
        /// `cmdline`, or the file being edited.
        source_name: String,
        /// Why.
        reason: KeyPathError,
    },
    /// `unset` (or a lookup that needs a value) named a key that is not there.
    #[error("{key} ({source_name}): is not set")]
    NotSet {
        /// Dotted key path.
        key: String,
        /// The document the key was looked up in.
        source_name: String,
    },
}

impl ConfigError {
    /// The dotted key path the error is about.
    pub fn key(&self) -> &str {
        match self {
            ConfigError::Syntax { key, .. }
            | ConfigError::Schema { key, .. }
            | ConfigError::Invalid { key, .. }
            | ConfigError::KeyPath { key, .. }
            | ConfigError::NotSet { key, .. } => key,
        }
    }

    /// The 1-based line in the layer's text, when known.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Syntax { line, .. }
            | ConfigError::Schema { line, .. }
            | ConfigError::Invalid { line, .. } => *line,
            ConfigError::KeyPath { .. } | ConfigError::NotSet { .. } => None,
        }
    }

    /// The layer the error came from: a file path, `fw_cfg`, `cmdline`, `defaults`, …
    pub fn source_name(&self) -> &str {
        match self {
            ConfigError::Syntax { source_name, .. }
            | ConfigError::Schema { source_name, .. }
            | ConfigError::Invalid { source_name, .. }
            | ConfigError::KeyPath { source_name, .. }
            | ConfigError::NotSet { source_name, .. } => source_name,
        }
    }

    /// The reason alone, without key and location.
    pub fn reason(&self) -> String {
        match self {
            ConfigError::Syntax { reason, .. }
            | ConfigError::Schema { reason, .. }
            | ConfigError::Invalid { reason, .. } => reason.clone(),
            ConfigError::KeyPath { reason, .. } => reason.to_string(),
            ConfigError::NotSet { .. } => "is not set".to_string(),
        }
    }
}

/// A parser message as one line (console lines are line-based): lines joined with `; `.
pub fn one_line(msg: &str) -> String {
    msg.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// 1-based line of byte offset `at` in `text`.
pub fn line_of(text: &str, at: usize) -> usize {
    let end = at.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_with_line_is_key_line_reason() {
        let e = ConfigError::Schema {
            key: "network.interfaces.eth1.mtu".into(),
            line: Some(12),
            source_name: "/etc/x.toml".into(),
            reason: "invalid type: string \"big\", expected u32".into(),
        };
        assert_eq!(
            e.to_string(),
            "network.interfaces.eth1.mtu (line 12): invalid type: string \"big\", expected u32"
        );
        assert_eq!(e.source_name(), "/etc/x.toml");
    }

    #[test]
    fn display_without_line_names_the_source() {
        let e = ConfigError::Invalid {
            key: "hostname".into(),
            line: None,
            source_name: "cmdline".into(),
            reason: "bad".into(),
        };
        assert_eq!(e.to_string(), "hostname (cmdline): bad");
    }

    #[test]
    fn paths_quote_dotted_keys_and_show_indexes() {
        let p = [
            PathSeg::Key("sysctl".into()),
            PathSeg::Key("net.ipv4.ip_forward".into()),
        ];
        assert_eq!(render_path(&p), "sysctl.\"net.ipv4.ip_forward\"");
        let p = [
            PathSeg::Key("storage".into()),
            PathSeg::Key("mounts".into()),
            PathSeg::Index(0),
            PathSeg::Key("target".into()),
        ];
        assert_eq!(render_path(&p), "storage.mounts[0].target");
        assert_eq!(render_path(&[]), "version");
    }

    #[test]
    fn parser_messages_become_one_line() {
        assert_eq!(
            one_line("invalid string\nexpected `\"`, `'`\n"),
            "invalid string; expected `\"`, `'`"
        );
    }

    #[test]
    fn line_of_counts_newlines_before_offset() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 99), 3);
    }
}
