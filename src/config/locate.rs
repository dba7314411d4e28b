//! Maps between positions in the TOML text and key paths like `upstream[0].pool.min_idle`,
//! so that every config error can name both the line and the key.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// 1-based line number of a byte offset.
pub fn line_of(source: &str, offset: usize) -> usize {
    let end = offset.min(source.len());
    source[..end].bytes().filter(|&b| b == b'\n').count() + 1
}

/// Line of the key named by `path` (dots and `[i]` indices), or of its nearest existing parent.
pub fn line_of_key(source: &str, path: &str) -> usize {
    let Ok(root) = DeTable::parse(source) else {
        return 1;
    };
    let mut table = root.get_ref();
    let mut best = 0..0;
    let mut segments = path.split('.').peekable();
    while let Some(segment) = segments.next() {
        let (name, index) = split_index(segment);
        let Some((key, value)) = table.get_key_value(name) else {
            break;
        };
        best = key.span();
        let mut value: &Spanned<DeValue<'_>> = value;
        if let Some(i) = index {
            match value.get_ref() {
                DeValue::Array(items) if i < items.len() => {
                    value = &items[i];
                    best = value.span();
                }
                _ => break,
            }
        }
        match value.get_ref() {
            DeValue::Table(inner) if segments.peek().is_some() => table = inner,
            _ => break,
        }
    }
    line_of(source, best.start)
}

/// The key path whose key or value contains `offset`, e.g. `upstream[0].servers`.
/// Tables are searched whatever their own span says: a table built from `[header]` lines
/// has a span that need not cover its keys.
pub fn key_at(source: &str, offset: usize) -> Option<String> {
    let root = DeTable::parse(source).ok()?;
    find_in_table(root.get_ref(), offset)
}

fn find_in_table(table: &DeTable<'_>, offset: usize) -> Option<String> {
    table.iter().find_map(|(key, value)| {
        let name = key.get_ref().to_string();
        if let Some(inner) = find_in_value(value, offset) {
            return Some(format!("{name}{inner}"));
        }
        (contains(&key.span(), offset) || contains(&value.span(), offset)).then_some(name)
    })
}

/// The rest of the path below `value` (starting with `.` or `[i]`), if the offset is inside it.
fn find_in_value(value: &Spanned<DeValue<'_>>, offset: usize) -> Option<String> {
    match value.get_ref() {
        DeValue::Table(inner) => find_in_table(inner, offset).map(|p| format!(".{p}")),
        DeValue::Array(items) => {
            items
                .iter()
                .enumerate()
                .find_map(|(i, item)| match find_in_value(item, offset) {
                    Some(inner) => Some(format!("[{i}]{inner}")),
                    None => contains(&item.span(), offset).then(|| format!("[{i}]")),
                })
        }
        _ => None,
    }
}

/// For text that does not parse: the bare key written at the start of the offset's line.
pub fn key_on_line(source: &str, offset: usize) -> Option<String> {
    let start = source[..offset.min(source.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let line = source[start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    bare.then(|| key.to_string())
}

fn contains(span: &Range<usize>, offset: usize) -> bool {
    span.start <= offset && offset < span.end.max(span.start + 1)
}

fn split_index(segment: &str) -> (&str, Option<usize>) {
    match segment.split_once('[') {
        Some((name, rest)) => (name, rest.trim_end_matches(']').parse().ok()),
        None => (segment, None),
    }
}
