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

/// The key path whose value contains `offset`, e.g. `upstream[0].servers`.
pub fn key_at(source: &str, offset: usize) -> Option<String> {
    let root = DeTable::parse(source).ok()?;
    let mut path = String::new();
    walk_table(root.get_ref(), offset, &mut path);
    (!path.is_empty()).then_some(path)
}

fn walk_table(table: &DeTable<'_>, offset: usize, path: &mut String) {
    for (key, value) in table.iter() {
        if contains(&key.span(), offset) || contains(&value.span(), offset) {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(key.get_ref());
            walk_value(value, offset, path);
            return;
        }
    }
}

fn walk_value(value: &Spanned<DeValue<'_>>, offset: usize, path: &mut String) {
    match value.get_ref() {
        DeValue::Table(inner) => walk_table(inner, offset, path),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if contains(&item.span(), offset) {
                    path.push_str(&format!("[{i}]"));
                    walk_value(item, offset, path);
                    return;
                }
            }
        }
        _ => {}
    }
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
