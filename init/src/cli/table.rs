//! Output for people and for scripts: aligned tables, short durations, times, and JSON.
//!
//! Owns: the table layout (a header row in capitals, columns separated by two spaces, padded to
//! the widest cell, no trailing blanks) and the JSON encoding of replies (`-o json`: one JSON
//! document per command; streamed lines are one JSON object per line).
//! Must not: talk to the daemon or decide what a command prints.

use serde::Serialize;

/// How to print.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned tables and plain lines, for people.
    #[default]
    Table,
    /// JSON, for scripts.
    Json,
}

/// An aligned table of `rows` under `headers`, ending with a newline.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            out.push_str(cell);
            if i + 1 < cells.len() {
                let pad = widths.get(i).copied().unwrap_or(0) - cell.chars().count();
                out.push_str(&" ".repeat(pad));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// `value` as pretty JSON.
pub fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// `value` as one line of JSON.
pub fn json_line<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// A short human duration: `45s`, `12m3s`, `5h2m`, `3d4h`.
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

/// Unix milliseconds as `2026-01-02 03:04:05` (UTC); `-` for 0.
pub fn time(unix_ms: u64) -> String {
    if unix_ms == 0 {
        return "-".to_string();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    let s = crate::runtime::logs::rfc3339(t);
    // 2026-01-02T03:04:05.678Z → 2026-01-02 03:04:05
    s.get(..19).map(|p| p.replace('T', " ")).unwrap_or(s)
}

/// Parses `--try` durations: `20s`, `2m`, `1h`, `500ms`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid duration {text:?}: expected a number and a unit, like 20s")
    })?;
    let ms = match unit {
        "ms" => n,
        "" | "s" => n.saturating_mul(1000),
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        other => {
            return Err(format!(
                "invalid duration {text:?}: unknown unit {other:?} (use ms, s, m or h)"
            ))
        }
    };
    if ms == 0 {
        return Err(format!("invalid duration {text:?}: must be more than 0"));
    }
    Ok(std::time::Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_trim_the_last() {
        let rows = vec![
            vec![
                "system".to_string(),
                "syslog".to_string(),
                "running".to_string(),
            ],
            vec![
                "user".to_string(),
                "web-frontend".to_string(),
                String::new(),
            ],
        ];
        assert_eq!(
            render(&["NAMESPACE", "NAME", "STATE"], &rows),
            "NAMESPACE  NAME          STATE\nsystem     syslog        running\nuser       web-frontend\n"
        );
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(45), "45s");
        assert_eq!(duration(723), "12m3s");
        assert_eq!(duration(18_120), "5h2m");
        assert_eq!(duration(3 * 86_400 + 4 * 3600 + 5), "3d4h");
    }

    #[test]
    fn try_durations_parse_with_units() {
        assert_eq!(
            parse_duration("20s"),
            Ok(std::time::Duration::from_secs(20))
        );
        assert_eq!(
            parse_duration("2m"),
            Ok(std::time::Duration::from_secs(120))
        );
        assert_eq!(
            parse_duration("1h"),
            Ok(std::time::Duration::from_secs(3600))
        );
        assert_eq!(
            parse_duration("500ms"),
            Ok(std::time::Duration::from_millis(500))
        );
        assert_eq!(parse_duration("7"), Ok(std::time::Duration::from_secs(7)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn times_are_utc_seconds() {
        assert_eq!(time(0), "-");
        assert_eq!(time(1_767_323_045_678), "2026-01-02 03:04:05");
    }
}
