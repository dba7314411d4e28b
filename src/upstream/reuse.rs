//! When may an upstream connection carry another request after this response (RFC 9112 §9.3)?
//! Also reads the backend's `Keep-Alive: timeout=N, max=M` announcement.

use std::time::Duration;

use http::{HeaderMap, HeaderName, Method, StatusCode, Version};

use crate::middleware::framing::FramingFields;
use crate::middleware::hop_by_hop::ConnectionTokens;

/// Why a response leaves its connection unusable, if it does; `framing` and `connection` are
/// what its framing fields and its `Connection` header say (read once, as its head is read).
pub fn not_reusable_reason(
    method: &Method,
    status: StatusCode,
    version: Version,
    framing: &FramingFields,
    connection: ConnectionTokens,
) -> Option<&'static str> {
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Some("upgraded");
    }
    if connection.close {
        return Some("backend sent Connection: close");
    }
    if version == Version::HTTP_10 && !connection.keep_alive {
        return Some("HTTP/1.0 response without Connection: keep-alive");
    }
    if is_close_delimited(method, status, version, framing) {
        return Some("response has neither Content-Length nor chunked framing (ends at close)");
    }
    None
}

/// A body with no length and no chunking ends only when the backend closes (RFC 9112 §6.3 item 8).
fn is_close_delimited(
    method: &Method,
    status: StatusCode,
    version: Version,
    framing: &FramingFields,
) -> bool {
    let bodiless = method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if bodiless || framing.has_content_length() {
        return false;
    }
    !(version == Version::HTTP_11 && framing.has_transfer_encoding())
}

/// The `Keep-Alive` header's name (not one of `http`'s standard names).
pub const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// The `timeout` and `max` parameters of a `Keep-Alive` header, where present and valid.
/// Read as bytes: it comes with nearly every HTTP/1.0 keep-alive response.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KeepAlive {
    pub timeout: Option<Duration>,
    pub max: Option<u32>,
}

impl KeepAlive {
    /// The parameters of a complete map's `Keep-Alive` lines.
    pub fn of(headers: &HeaderMap) -> KeepAlive {
        let mut keep_alive = KeepAlive::default();
        for value in headers.get_all(KEEP_ALIVE) {
            keep_alive.note(value.as_bytes());
        }
        keep_alive
    }

    /// One `Keep-Alive` line's value: later parameters win.
    pub fn note(&mut self, value: &[u8]) {
        for param in value.split(|&b| b == b',') {
            let Some(eq) = param.iter().position(|&b| b == b'=') else {
                continue;
            };
            let name = param[..eq].trim_ascii();
            let val = unquote(param[eq + 1..].trim_ascii());
            if name.eq_ignore_ascii_case(b"timeout") {
                self.timeout = number::<u64>(val).map(Duration::from_secs);
            } else if name.eq_ignore_ascii_case(b"max") {
                self.max = number::<u32>(val);
            }
        }
    }
}

fn unquote(value: &[u8]) -> &[u8] {
    match value {
        [b'"', inner @ .., b'"'] => inner,
        other => other,
    }
}

fn number<T: std::str::FromStr>(digits: &[u8]) -> Option<T> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::headers;

    /// `not_reusable_reason` with the tokens read from the same headers, as its caller does.
    fn verdict(
        method: &Method,
        status: StatusCode,
        version: Version,
        h: &HeaderMap,
    ) -> Option<&'static str> {
        not_reusable_reason(
            method,
            status,
            version,
            &FramingFields::of(h),
            ConnectionTokens::of(h),
        )
    }

    #[test]
    fn http10_keepalive_with_length_is_reusable() {
        let h = headers(&[("connection", "keep-alive"), ("content-length", "5")]);
        assert_eq!(
            verdict(&Method::GET, StatusCode::OK, Version::HTTP_10, &h),
            None
        );
    }

    #[test]
    fn http10_without_keepalive_is_not_reusable() {
        let h = headers(&[("content-length", "5")]);
        assert!(verdict(&Method::GET, StatusCode::OK, Version::HTTP_10, &h).is_some());
    }

    #[test]
    fn close_delimited_body_is_not_reusable() {
        let h = headers(&[("connection", "keep-alive")]);
        assert!(verdict(&Method::GET, StatusCode::OK, Version::HTTP_10, &h).is_some());
    }

    #[test]
    fn head_204_304_without_length_stay_reusable() {
        let h = headers(&[("connection", "keep-alive")]);
        assert_eq!(
            verdict(&Method::HEAD, StatusCode::OK, Version::HTTP_10, &h),
            None
        );
        assert_eq!(
            verdict(&Method::GET, StatusCode::NO_CONTENT, Version::HTTP_10, &h),
            None
        );
        assert_eq!(
            verdict(&Method::GET, StatusCode::NOT_MODIFIED, Version::HTTP_10, &h),
            None
        );
    }

    #[test]
    fn connection_close_is_not_reusable() {
        let h = headers(&[("connection", "Close"), ("content-length", "1")]);
        assert!(verdict(&Method::GET, StatusCode::OK, Version::HTTP_11, &h).is_some());
    }

    fn announced(timeout_secs: Option<u64>, max: Option<u32>) -> KeepAlive {
        KeepAlive {
            timeout: timeout_secs.map(Duration::from_secs),
            max,
        }
    }

    #[test]
    fn keep_alive_header_parameters_are_parsed() {
        let h = headers(&[("keep-alive", "timeout=5, max=100")]);
        assert_eq!(KeepAlive::of(&h), announced(Some(5), Some(100)));
        let h = headers(&[("keep-alive", "max=abc")]);
        assert_eq!(KeepAlive::of(&h), KeepAlive::default());
        let h = headers(&[("keep-alive", "Timeout = \"7\" ,MAX=3")]);
        assert_eq!(KeepAlive::of(&h), announced(Some(7), Some(3)));
    }
}
