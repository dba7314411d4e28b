//! Whether a request line (414) or any one field line (431) is longer than
//! `max_request_header_bytes`, measured on the request as hyper parsed it; `guard` refuses it.
//! The whole head is bounded by hyper itself (`max_header_size` in `server`), however it arrived.

use http::{HeaderMap, Method, StatusCode, Uri};

/// `HTTP/1.0` and `HTTP/1.1` are both this long.
const VERSION_LEN: usize = "HTTP/1.1".len();

/// Header names longer than this are left out of the refusal's text.
const MAX_NAME_SHOWN: usize = 64;

/// Bytes of the request line `METHOD SP target SP HTTP/1.x`, without its CRLF.
pub fn request_line_len(method: &Method, uri: &Uri) -> usize {
    method.as_str().len() + 1 + target_len(uri) + 1 + VERSION_LEN
}

/// The request target as the client wrote it: origin form (path and query), authority form
/// (`CONNECT host:port`) or absolute form (`http://host/path`).
fn target_len(uri: &Uri) -> usize {
    uri.scheme_str().map_or(0, |s| s.len() + "://".len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len())
}

/// The longest field line `name: value` (without CRLF), as `(name, bytes)`.
pub fn longest_field_line(headers: &HeaderMap) -> Option<(&str, usize)> {
    headers
        .iter()
        .map(|(name, value)| (name.as_str(), name.as_str().len() + 2 + value.len()))
        .max_by_key(|&(_, len)| len)
}

/// Why the head breaks the line limit, and the status that says so.
pub fn line_problem(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    max_line: usize,
) -> Option<(StatusCode, String)> {
    let line = request_line_len(method, uri);
    if line > max_line {
        return Some((
            StatusCode::URI_TOO_LONG,
            format!(
                "the request line is {line} bytes, more than max_request_header_bytes ({max_line})"
            ),
        ));
    }
    match longest_field_line(headers) {
        Some((name, len)) if len > max_line => {
            let name = if name.len() <= MAX_NAME_SHOWN {
                name
            } else {
                "(a long name)"
            };
            Some((
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!(
                    "header field `{name}` is {len} bytes, more than max_request_header_bytes ({max_line})"
                ),
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::headers;

    fn uri(s: &str) -> Uri {
        s.parse().expect("a valid uri")
    }

    #[test]
    fn a_request_line_counts_method_target_version_and_two_spaces() {
        // "GET /index.html?q=1 HTTP/1.1"
        assert_eq!(request_line_len(&Method::GET, &uri("/index.html?q=1")), 28);
    }

    #[test]
    fn absolute_and_authority_targets_count_as_written() {
        // "GET http://example.com/a HTTP/1.1"
        assert_eq!(
            request_line_len(&Method::GET, &uri("http://example.com/a")),
            33
        );
        // "CONNECT example.com:443 HTTP/1.1"
        assert_eq!(
            request_line_len(&Method::CONNECT, &uri("example.com:443")),
            32
        );
    }

    #[test]
    fn a_field_line_counts_name_colon_space_and_value() {
        let h = headers(&[("host", "a"), ("x-long", "0123456789")]);
        assert_eq!(longest_field_line(&h), Some(("x-long", 18)));
    }

    #[test]
    fn a_line_at_the_limit_passes_and_one_byte_more_is_refused() {
        let at = headers(&[("x-long", "0123456789")]);
        assert_eq!(line_problem(&Method::GET, &uri("/"), &at, 18), None);
        let status = line_problem(&Method::GET, &uri("/"), &at, 17).map(|(s, _)| s);
        assert_eq!(status, Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
    }

    #[test]
    fn an_overlong_request_line_is_414() {
        let status =
            line_problem(&Method::GET, &uri("/0123456789"), &HeaderMap::new(), 20).map(|(s, _)| s);
        assert_eq!(status, Some(StatusCode::URI_TOO_LONG));
    }
}
