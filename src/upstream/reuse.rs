//! When may an upstream connection carry another request after this response (RFC 9112 §9.3)?
//! Also reads the backend's `Keep-Alive: timeout=N, max=M` announcement.

use std::time::Duration;

use http::{HeaderMap, Method, StatusCode, Version, header};

use crate::middleware::hop_by_hop::connection_has;

/// Why a response leaves its connection unusable, if it does.
pub fn not_reusable_reason(
    method: &Method,
    status: StatusCode,
    version: Version,
    headers: &HeaderMap,
) -> Option<&'static str> {
    let connection = |token: &str| connection_has(headers, token);
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Some("upgraded");
    }
    if connection("close") {
        return Some("backend sent Connection: close");
    }
    if version == Version::HTTP_10 && !connection("keep-alive") {
        return Some("HTTP/1.0 response without Connection: keep-alive");
    }
    if is_close_delimited(method, status, version, headers) {
        return Some("response has neither Content-Length nor chunked framing (ends at close)");
    }
    None
}

/// A body with no length and no chunking ends only when the backend closes (RFC 9112 §6.3 item 8).
fn is_close_delimited(
    method: &Method,
    status: StatusCode,
    version: Version,
    headers: &HeaderMap,
) -> bool {
    let bodiless = method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if bodiless || headers.contains_key(header::CONTENT_LENGTH) {
        return false;
    }
    !(version == Version::HTTP_11 && headers.contains_key(header::TRANSFER_ENCODING))
}

const KEEP_ALIVE: http::HeaderName = http::HeaderName::from_static("keep-alive");

/// The `timeout` and `max` parameters of a `Keep-Alive` header, where present and valid.
pub fn keep_alive_params(headers: &HeaderMap) -> (Option<Duration>, Option<u32>) {
    let mut timeout = None;
    let mut max = None;
    for value in headers
        .get_all(KEEP_ALIVE)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        for param in value.split(',') {
            let Some((name, val)) = param.split_once('=') else {
                continue;
            };
            let val = val.trim().trim_matches('"');
            let name = name.trim();
            if name.eq_ignore_ascii_case("timeout") {
                timeout = val.parse::<u64>().ok().map(Duration::from_secs);
            } else if name.eq_ignore_ascii_case("max") {
                max = val.parse::<u32>().ok();
            }
        }
    }
    (timeout, max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::headers;
    #[test]
    fn http10_keepalive_with_length_is_reusable() {
        let h = headers(&[("connection", "keep-alive"), ("content-length", "5")]);
        assert_eq!(
            not_reusable_reason(&Method::GET, StatusCode::OK, Version::HTTP_10, &h),
            None
        );
    }

    #[test]
    fn http10_without_keepalive_is_not_reusable() {
        let h = headers(&[("content-length", "5")]);
        assert!(not_reusable_reason(&Method::GET, StatusCode::OK, Version::HTTP_10, &h).is_some());
    }

    #[test]
    fn close_delimited_body_is_not_reusable() {
        let h = headers(&[("connection", "keep-alive")]);
        assert!(not_reusable_reason(&Method::GET, StatusCode::OK, Version::HTTP_10, &h).is_some());
    }

    #[test]
    fn head_204_304_without_length_stay_reusable() {
        let h = headers(&[("connection", "keep-alive")]);
        assert_eq!(
            not_reusable_reason(&Method::HEAD, StatusCode::OK, Version::HTTP_10, &h),
            None
        );
        assert_eq!(
            not_reusable_reason(&Method::GET, StatusCode::NO_CONTENT, Version::HTTP_10, &h),
            None
        );
        assert_eq!(
            not_reusable_reason(&Method::GET, StatusCode::NOT_MODIFIED, Version::HTTP_10, &h),
            None
        );
    }

    #[test]
    fn connection_close_is_not_reusable() {
        let h = headers(&[("connection", "Close"), ("content-length", "1")]);
        assert!(not_reusable_reason(&Method::GET, StatusCode::OK, Version::HTTP_11, &h).is_some());
    }

    #[test]
    fn keep_alive_header_parameters_are_parsed() {
        let h = headers(&[("keep-alive", "timeout=5, max=100")]);
        assert_eq!(
            keep_alive_params(&h),
            (Some(Duration::from_secs(5)), Some(100))
        );
        let h = headers(&[("keep-alive", "max=abc")]);
        assert_eq!(keep_alive_params(&h), (None, None));
    }
}
