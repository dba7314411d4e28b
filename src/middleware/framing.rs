//! Which messages have ambiguous body framing or target host (request smuggling, RFC 9112 §6.1 and
//! §11.2; Host, RFC 9112 §3.2). hyper already rejects Transfer-Encoding on HTTP/1.0, a final coding
//! other than chunked, differing Content-Lengths, bad chunk sizes and malformed header lines; these
//! checks catch what hyper tolerates: a repeated or decorated `Transfer-Encoding` (`chunked,
//! chunked`, two header lines). `guard` refuses such requests; `upstream` such responses.

use http::{HeaderMap, HeaderValue, Request, Version, header};

/// Why a message's framing is ambiguous, if it is.
pub fn ambiguity(headers: &HeaderMap) -> Option<&'static str> {
    let mut te = headers.get_all(header::TRANSFER_ENCODING).iter();
    match (te.next(), te.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => Some("Transfer-Encoding appears more than once"),
        (Some(v), None) if !is_exactly_chunked(v) => {
            Some("Transfer-Encoding must be exactly `chunked`")
        }
        (Some(_), None) if headers.contains_key(header::CONTENT_LENGTH) => {
            Some("Content-Length together with Transfer-Encoding")
        }
        _ => None,
    }
}

/// RFC 9112 §3.2: an HTTP/1.1 request needs exactly one Host; any request at most one.
pub fn host_problem<B>(req: &Request<B>) -> Option<&'static str> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => Some("more than one Host header"),
        (None, None) if req.version() == Version::HTTP_11 => Some("HTTP/1.1 request without Host"),
        _ => None,
    }
}

fn is_exactly_chunked(value: &HeaderValue) -> bool {
    value
        .to_str()
        .is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::headers;

    #[test]
    fn plain_chunked_and_plain_length_are_fine() {
        assert_eq!(
            ambiguity(&headers(&[("transfer-encoding", "chunked")])),
            None
        );
        assert_eq!(
            ambiguity(&headers(&[("transfer-encoding", " Chunked ")])),
            None
        );
        assert_eq!(ambiguity(&headers(&[("content-length", "5")])), None);
    }

    #[test]
    fn repeated_transfer_encoding_is_ambiguous() {
        assert!(ambiguity(&headers(&[("transfer-encoding", "chunked, chunked")])).is_some());
        assert!(
            ambiguity(&headers(&[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked")
            ]))
            .is_some()
        );
        assert!(ambiguity(&headers(&[("transfer-encoding", "gzip, chunked")])).is_some());
    }

    #[test]
    fn length_with_transfer_encoding_is_ambiguous() {
        assert!(
            ambiguity(&headers(&[
                ("transfer-encoding", "chunked"),
                ("content-length", "3")
            ]))
            .is_some()
        );
    }
}
