//! The kernel command line: splitting `/proc/cmdline` into words (with the kernel's double-quote
//! rule) and picking out the `ros.*` keys.
//!
//! Owns only parsing. It does not interpret config overrides (the config module does) and does
//! not read files itself; callers pass the text, so tests need no /proc.

/// What ros takes from the kernel command line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cmdline {
    /// `ros.config=` URL or path of provisioned user data.
    pub config: Option<String>,
    /// `ros.state=`: the state device, or `none`.
    pub state: Option<String>,
    /// `ros.debug_shell=ttyS1[,ttyS0]`: ttys that get a root debug shell.
    pub debug_shells: Vec<String>,
    /// `ros.<config.key>=value` overrides, in order, key without the `ros.` prefix.
    pub overrides: Vec<(String, String)>,
}

/// Splits a command line into words the way the kernel does: blanks separate words and double
/// quotes group blanks into a word. Quotes stay in the word; `value` strips a pair that encloses
/// the whole value, as the kernel does for `key="a b"`.
pub fn split_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut has_word = false;
    for ch in text.chars() {
        match ch {
            '"' => {
                in_quotes = !in_quotes;
                cur.push(ch);
                has_word = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if has_word {
                    words.push(std::mem::take(&mut cur));
                    has_word = false;
                }
            }
            c => {
                cur.push(c);
                has_word = true;
            }
        }
    }
    if has_word {
        words.push(cur);
    }
    words
}

/// `"a b"` → `a b`; anything else as it is (`["a","b"]` keeps its inner quotes).
fn unquote(v: &str) -> &str {
    match v.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) if !inner.contains('"') => inner,
        _ => v,
    }
}

/// Parses the text of `/proc/cmdline`. Words that are not `ros.*` are ignored; a `ros.*` word
/// with no `=` is an override with the value `true` (a flag).
pub fn parse(text: &str) -> Cmdline {
    let mut out = Cmdline::default();
    for word in split_words(text) {
        let Some(rest) = word.strip_prefix("ros.") else {
            continue;
        };
        let (key, value) = match rest.split_once('=') {
            Some((k, v)) => (k.to_string(), unquote(v).to_string()),
            None => (rest.to_string(), "true".to_string()),
        };
        if key.is_empty() {
            continue;
        }
        match key.as_str() {
            "config" => out.config = Some(value),
            "state" => out.state = Some(value),
            "debug_shell" => {
                out.debug_shells = value
                    .split(',')
                    .map(|t| t.trim().trim_start_matches("/dev/").to_string())
                    .filter(|t| !t.is_empty())
                    .collect();
            }
            _ => out.overrides.push((key, value)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_blanks_and_keeps_quoted_blanks() {
        assert_eq!(
            split_words("console=ttyS0  ros.x=\"a b\" quiet\n"),
            vec!["console=ttyS0", "ros.x=\"a b\"", "quiet"]
        );
        assert_eq!(
            parse("ros.hostname=\"a b\"").overrides,
            vec![("hostname".to_string(), "a b".to_string())]
        );
        assert!(split_words("   ").is_empty());
    }

    #[test]
    fn picks_boot_keys_and_overrides_in_order() {
        let c = parse(
            "BOOT_IMAGE=/vmlinuz console=ttyS0 ros.debug_shell=ttyS1,/dev/ttyS0 ros.hostname=n1 \
             ros.sysctl.net.ipv4.ip_forward=1 ros.state=none ros.config=/x.toml ros.hostname=n2",
        );
        assert_eq!(c.debug_shells, vec!["ttyS1", "ttyS0"]);
        assert_eq!(c.state.as_deref(), Some("none"));
        assert_eq!(c.config.as_deref(), Some("/x.toml"));
        assert_eq!(
            c.overrides,
            vec![
                ("hostname".to_string(), "n1".to_string()),
                ("sysctl.net.ipv4.ip_forward".to_string(), "1".to_string()),
                ("hostname".to_string(), "n2".to_string()),
            ]
        );
    }

    #[test]
    fn flag_without_value_means_true_and_empty_key_is_ignored() {
        let c = parse("ros.network.wait ros.=x ros.kernel.modules=[\"a\",\"b\"]");
        assert_eq!(
            c.overrides,
            vec![
                ("network.wait".to_string(), "true".to_string()),
                ("kernel.modules".to_string(), "[\"a\",\"b\"]".to_string()),
            ]
        );
    }

    #[test]
    fn no_ros_words_gives_empty_cmdline() {
        assert_eq!(parse("root=/dev/vda quiet"), Cmdline::default());
    }
}
