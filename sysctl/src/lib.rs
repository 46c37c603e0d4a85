//! sysctl.d parsing and applying, plus the defaults ros ships.
//!
//! Owns the `key = value` format of sysctl.d(5) (comments with `#`/`;`, a leading `-` meaning
//! "ignore failure", keys with `.` or `/` separators) and writing values under a `/proc/sys`
//! root that callers pass in, so tests use a temp dir. It does not decide *which* settings
//! apply: the caller merges the shipped defaults with the config's `[sysctl]` table.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The defaults ros applies before the config's `[sysctl]` table, in file order.
pub const DEFAULTS: &[(&str, &str)] = &[("50-ros.conf", include_str!("../defaults/50-ros.conf"))];

/// One setting from a sysctl.d file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Key in dotted form (`net.ipv4.ip_forward`), whatever separator the file used.
    pub key: String,
    pub value: String,
    /// `-key = value`: a failure to apply is not an error.
    pub ignore_failure: bool,
    /// 1-based line in the source file.
    pub line: usize,
}

/// Errors of parsing or applying sysctl settings; each names the key or line at fault.
#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("{file} line {line}: expected `key = value`, got `{text}`")]
    Syntax {
        file: String,
        line: usize,
        text: String,
    },
    #[error("{file} line {line}: invalid key `{key}`")]
    BadKey {
        file: String,
        line: usize,
        key: String,
    },
    #[error("sysctl {key}: no such setting ({path})")]
    Unknown { key: String, path: PathBuf },
    #[error("sysctl {key} = {value}: {source}")]
    Write {
        key: String,
        value: String,
        source: io::Error,
    },
}

/// Normalises a key as written in a file or config (surrounding blanks dropped). Dotted and
/// slash forms are kept as written; `key_path` decides how to split them.
pub fn normalize_key(key: &str) -> String {
    key.trim().to_string()
}

/// True when every path component of `key` is a plausible sysctl name.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.split(['.', '/']).all(|c| {
            !c.is_empty()
                && c != ".."
                && c.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "_-:@+".contains(ch))
        })
}

/// Parses one sysctl.d file. `file` only names the source in errors.
pub fn parse(file: &str, text: &str) -> Result<Vec<Entry>, SysctlError> {
    let mut out = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        let Some((k, v)) = trimmed.split_once('=') else {
            return Err(SysctlError::Syntax {
                file: file.into(),
                line,
                text: trimmed.into(),
            });
        };
        let (ignore_failure, k) = match k.trim().strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, k),
        };
        let key = normalize_key(k);
        if !valid_key(&key) {
            return Err(SysctlError::BadKey {
                file: file.into(),
                line,
                key,
            });
        }
        out.push(Entry {
            key,
            value: v.trim().to_string(),
            ignore_failure,
            line,
        });
    }
    Ok(out)
}

/// The path of `key` under `proc_sys` (normally `/proc/sys`). With dotted keys every dot is a
/// separator; with slash keys (first separator `/`) dots are literal.
pub fn key_path(proc_sys: &Path, key: &str) -> PathBuf {
    let slash_form = match (key.find('/'), key.find('.')) {
        (Some(s), Some(d)) => s < d,
        (Some(_), None) => true,
        _ => false,
    };
    let rel = if slash_form {
        key.to_string()
    } else {
        key.replace('.', "/")
    };
    proc_sys.join(rel)
}

/// Merges the shipped defaults with `overrides` (later wins) into one ordered map.
/// Parsing errors in the shipped defaults are a build defect, caught by unit tests.
pub fn merged_settings(
    overrides: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, SysctlError> {
    let mut out = BTreeMap::new();
    for (file, text) in DEFAULTS {
        for e in parse(file, text)? {
            out.insert(e.key, e.value);
        }
    }
    for (k, v) in overrides {
        out.insert(normalize_key(k), v.clone());
    }
    Ok(out)
}

/// Writes one setting. A missing key is `Unknown` (so the caller can name it) rather than a
/// bare ENOENT.
pub fn apply_one(proc_sys: &Path, key: &str, value: &str) -> Result<(), SysctlError> {
    let path = key_path(proc_sys, key);
    if !path.exists() {
        return Err(SysctlError::Unknown {
            key: key.into(),
            path,
        });
    }
    // Some handlers (kernel.printk_devkmsg) insist on the trailing newline sysctl(8) writes.
    fs::write(&path, format!("{value}\n")).map_err(|source| SysctlError::Write {
        key: key.into(),
        value: value.into(),
        source,
    })
}

/// Applies every setting, continuing past failures; returns the failures so the caller logs
/// each once.
pub fn apply_all(proc_sys: &Path, settings: &BTreeMap<String, String>) -> Vec<SysctlError> {
    settings
        .iter()
        .filter_map(|(k, v)| apply_one(proc_sys, k, v).err())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_comments_ignore_prefix_and_both_separators() {
        let text = "# c\n; c\n\nnet.ipv4.ip_forward = 1\n-kernel/panic=10\n  vm.swappiness =  5 \n";
        let e = parse("t.conf", text).unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(
            e[0],
            Entry {
                key: "net.ipv4.ip_forward".into(),
                value: "1".into(),
                ignore_failure: false,
                line: 4
            }
        );
        assert_eq!(e[1].key, "kernel/panic");
        assert!(e[1].ignore_failure);
        assert_eq!(e[2].value, "5");
        assert_eq!(e[2].line, 6);
    }

    #[test]
    fn syntax_error_names_file_and_line() {
        let err = parse("x.conf", "a.b = 1\nnonsense\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.conf line 2: expected `key = value`, got `nonsense`"
        );
    }

    #[test]
    fn bad_key_is_refused() {
        let err = parse("x.conf", "net..x = 1\n").unwrap_err();
        assert!(matches!(err, SysctlError::BadKey { line: 1, .. }), "{err}");
        assert!(!valid_key("../etc/passwd"));
    }

    #[test]
    fn key_path_treats_dots_in_slash_form_as_literal() {
        let root = Path::new("/proc/sys");
        assert_eq!(
            key_path(root, "net.ipv4.ip_forward"),
            Path::new("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            key_path(root, "net/ipv4/conf/eth0.100/forwarding"),
            Path::new("/proc/sys/net/ipv4/conf/eth0.100/forwarding")
        );
    }

    #[test]
    fn shipped_defaults_parse_and_overrides_win() {
        let mut o = BTreeMap::new();
        o.insert("kernel.panic".to_string(), "99".to_string());
        let m = merged_settings(&o).unwrap();
        assert_eq!(m.get("kernel.panic").map(String::as_str), Some("99"));
        assert!(m.len() > 1, "defaults contribute settings");
    }

    #[test]
    fn apply_writes_values_and_names_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("net/ipv4")).unwrap();
        std::fs::write(dir.path().join("net/ipv4/ip_forward"), "0").unwrap();
        let mut s = BTreeMap::new();
        s.insert("net.ipv4.ip_forward".to_string(), "1".to_string());
        s.insert("no.such.key".to_string(), "1".to_string());
        let errs = apply_all(dir.path(), &s);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("net/ipv4/ip_forward")).unwrap(),
            "1\n"
        );
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0]
                .to_string()
                .starts_with("sysctl no.such.key: no such setting"),
            "{}",
            errs[0]
        );
    }
}
