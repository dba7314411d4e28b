//! Arbitrary header lists into `hop_by_hop::strip` and `framing::ambiguity`, checking the
//! invariants of tests/properties.rs on every input:
//! - after `strip`, no hop-by-hop header and no header named in Connection remains, and every
//!   other header keeps its values in the same order;
//! - `ambiguity` flags any Transfer-Encoding other than one exactly-`chunked` value, any TE with
//!   Content-Length, and never a message without TE.
#![no_main]

use std::collections::HashSet;

use arbitrary::Arbitrary;
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use longhaul::middleware::{framing, hop_by_hop};

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
];

/// Names the fuzzer can pick by index, so that Connection tokens and headers overlap often.
const NAMES: [&str; 12] = [
    "connection",
    "transfer-encoding",
    "content-length",
    "te",
    "keep-alive",
    "upgrade",
    "x-secret",
    "host",
    "proxy-connection",
    "trailer",
    "via",
    "proxy-authenticate",
];

#[derive(Debug, Arbitrary)]
enum Name {
    Known(u8),
    Raw(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
struct Input {
    headers: Vec<(Name, Vec<u8>)>,
}

fuzz_target!(|input: Input| {
    let mut before = HeaderMap::new();
    for (name, value) in input.headers.iter().take(32) {
        let name = match name {
            Name::Known(i) => HeaderName::from_static(NAMES[*i as usize % NAMES.len()]),
            Name::Raw(bytes) => match HeaderName::from_bytes(bytes) {
                Ok(n) => n,
                Err(_) => continue,
            },
        };
        let Ok(value) = HeaderValue::from_bytes(value) else {
            continue;
        };
        before.append(name, value);
    }

    // Framing verdict, before stripping (what the guard sees).
    let te: Vec<&HeaderValue> = before.get_all("transfer-encoding").iter().collect();
    let has_cl = before.contains_key("content-length");
    let exactly_chunked = |v: &HeaderValue| {
        v.to_str()
            .is_ok_and(|s| s.trim().eq_ignore_ascii_case("chunked"))
    };
    let expected = match te.as_slice() {
        [] => false,
        [one] => !exactly_chunked(one) || has_cl,
        _ => true,
    };
    let verdict = framing::ambiguity(&before);
    assert_eq!(verdict.is_some(), expected, "{before:?} -> {verdict:?}");

    // Stripping.
    let named: HashSet<String> = before
        .get_all("connection")
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
        .map(|n| n.as_str().to_string())
        .collect();
    let mut after = before.clone();
    hop_by_hop::strip(&mut after);
    let mut kept = 0;
    for name in before.keys() {
        let hop = HOP_BY_HOP.contains(&name.as_str()) || named.contains(name.as_str());
        let new: Vec<&HeaderValue> = after.get_all(name).iter().collect();
        if hop {
            assert!(new.is_empty(), "{name} survived strip: {after:?}");
        } else {
            let old: Vec<&HeaderValue> = before.get_all(name).iter().collect();
            assert_eq!(old, new, "{name} changed");
            kept += old.len();
        }
    }
    assert_eq!(after.len(), kept);
    // Stripped headers never carry ambiguous framing: no Transfer-Encoding is left.
    assert!(framing::ambiguity(&after).is_none());
});
