//! Line numbers for key paths in a layer's text.
//!
//! Owns: finding the 1-based line of a key path (`network.interfaces.eth1.mtu`,
//! `storage.mounts[0].target`) in TOML text through toml_edit's spans, and naming the key at a
//! TOML syntax error. Used when an error carries no span of its own (semantic errors, errors found
//! on the merged config and traced back to a layer).
//! Must not: fail; an unknown path or unparsable text just gives `None` (or the nearest key).

use toml_edit::{ImDocument, InlineTable, Item, Table, Value};

use super::error::{line_of, PathSeg};

enum Node<'a> {
    Item(&'a Item),
    Table(&'a Table),
    Value(&'a Value),
}

fn span_line(text: &str, span: Option<std::ops::Range<usize>>) -> Option<usize> {
    span.map(|s| line_of(text, s.start))
}

fn in_table<'a>(text: &str, t: &'a Table, k: &str) -> Option<(Option<usize>, Node<'a>)> {
    t.get_key_value(k).map(|(key, item)| {
        let l = span_line(text, key.span()).or_else(|| span_line(text, item.span()));
        (l, Node::Item(item))
    })
}

fn in_inline<'a>(text: &str, t: &'a InlineTable, k: &str) -> Option<(Option<usize>, Node<'a>)> {
    t.get_key_value(k).map(|(key, item)| {
        let l = span_line(text, key.span()).or_else(|| span_line(text, item.span()));
        (l, Node::Item(item))
    })
}

/// The line of the deepest part of `path` present in `text`: the key's line when the key is
/// there, else the line of its nearest present parent. `None` if nothing is found.
pub fn line_of_path(text: &str, path: &[PathSeg]) -> Option<usize> {
    let doc = ImDocument::parse(text).ok()?;
    let mut node = Node::Table(doc.as_table());
    let mut line = None;
    for seg in path {
        let next = match (seg, node) {
            (PathSeg::Key(k), Node::Item(Item::Table(t)) | Node::Table(t)) => in_table(text, t, k),
            (
                PathSeg::Key(k),
                Node::Item(Item::Value(Value::InlineTable(t))) | Node::Value(Value::InlineTable(t)),
            ) => in_inline(text, t, k),
            (PathSeg::Index(i), Node::Item(Item::ArrayOfTables(a))) => a
                .get(*i)
                .map(|t| (span_line(text, t.span()), Node::Table(t))),
            (
                PathSeg::Index(i),
                Node::Item(Item::Value(Value::Array(a))) | Node::Value(Value::Array(a)),
            ) => a
                .get(*i)
                .map(|v| (span_line(text, v.span()), Node::Value(v))),
            _ => None,
        };
        match next {
            Some((l, n)) => {
                line = l.or(line);
                node = n;
            }
            None => break,
        }
    }
    line
}

/// The key a TOML syntax error at `line` is about: the table header in effect joined with the
/// key written on that line (`network.mtu`), or the line's first word at the document root.
pub fn key_at_line(text: &str, line: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let header = lines
        .iter()
        .take(line.saturating_sub(1))
        .rev()
        .map(|l| l.trim())
        .find(|l| l.starts_with('['))
        .map(|l| {
            let l = l.split('#').next().unwrap_or(l);
            l.trim_matches(|c: char| c == '[' || c == ']' || c.is_whitespace())
                .to_string()
        });
    let here = lines.get(line.saturating_sub(1)).map_or("", |l| l.trim());
    let here_key = if here.starts_with('[') {
        None
    } else {
        here.split_once('=')
            .map(|(k, _)| k.trim().to_string())
            .filter(|k| !k.is_empty())
    };
    match (header, here_key) {
        (Some(h), Some(k)) if !h.is_empty() => format!("{h}.{k}"),
        (_, Some(k)) => k,
        (Some(h), None) if !h.is_empty() => h,
        _ => here
            .split_whitespace()
            .next()
            .map_or_else(|| "version".to_string(), str::to_string),
    }
}
