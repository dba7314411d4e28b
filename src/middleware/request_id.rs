//! `X-Request-Id`: kept when the client sent a sane one, generated otherwise, passed upstream and
//! echoed on the response, so one id follows a request through every log line.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderName, HeaderValue, Request, Response};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Client-sent ids longer than this are replaced (they end up in logs and upstream headers).
const MAX_CLIENT_ID_LEN: usize = 128;

/// Random per process, so ids from two instances do not collide.
static PREFIX: LazyLock<u64> = LazyLock::new(|| {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::process::id()) & 0xffff_ffff
});
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A new id, unique within the process: `<8 hex random>-<hex counter>`.
pub fn generate() -> HeaderValue {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Written by hand, not with `format!`: this runs for every request (callgrind: 1.2k
    // instructions through core::fmt, about 150 this way).
    let mut id = Vec::with_capacity(8 + 1 + 16);
    push_hex(&mut id, *PREFIX, 8);
    id.push(b'-');
    push_hex(&mut id, n, 1);
    HeaderValue::from_maybe_shared(bytes::Bytes::from(id)).expect("hex is a valid header value")
}

/// `n` in lowercase hex, zero-padded to at least `min_digits`.
fn push_hex(out: &mut Vec<u8>, n: u64, min_digits: u32) {
    let digits = (64 - n.leading_zeros()).div_ceil(4).max(min_digits);
    for shift in (0..digits).rev() {
        out.push(b"0123456789abcdef"[((n >> (shift * 4)) & 0xf) as usize]);
    }
}

/// The id `assign` gave a request.
pub fn of<B>(req: &Request<B>) -> HeaderValue {
    req.headers()
        .get(X_REQUEST_ID)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("-"))
}

fn acceptable(id: &HeaderValue) -> bool {
    !id.is_empty()
        && id.len() <= MAX_CLIENT_ID_LEN
        && id.as_bytes().iter().all(|b| b.is_ascii_graphic())
}

/// Gives `req` its id: the client's when sane, a new one otherwise (written into the request, so
/// it goes upstream and every layer below sees it); returns it, for the log and the response.
pub fn assign<B>(req: &mut Request<B>) -> HeaderValue {
    // No room is reserved for more: this id is the only field the proxy inserts into a request
    // (X-Forwarded-For, X-Forwarded-Proto and Via are written with the head, `Forwarding`), and
    // a client that sent an id needs none.
    match req.headers().get(X_REQUEST_ID) {
        Some(id) if acceptable(id) => id.clone(),
        _ => {
            let id = generate();
            req.headers_mut().insert(X_REQUEST_ID, id.clone());
            id
        }
    }
}

/// Echoes the request's id on its response.
pub fn echo<B>(resp: &mut Response<B>, id: HeaderValue) {
    resp.headers_mut().insert(X_REQUEST_ID, id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_padded_to_the_asked_width_and_no_further() {
        let hex = |n, width| {
            let mut out = Vec::new();
            push_hex(&mut out, n, width);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            [
                hex(0, 1),
                hex(0xab, 8),
                hex(0x1_0000_0000, 8),
                hex(u64::MAX, 1)
            ],
            ["0", "000000ab", "100000000", "ffffffffffffffff"]
        );
    }
}
