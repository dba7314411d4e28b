//! Helpers shared by the unit tests next to the code; compiled only for `cargo test`.
//! Integration tests have their own in tests/support/.

use http::{HeaderMap, HeaderValue};

/// A header map from `(name, value)` pairs, repeated names appended in order.
pub fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_static(v));
    }
    h
}
