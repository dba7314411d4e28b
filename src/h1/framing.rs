//! How a response's body is delimited (RFC 9112 §6.3), decided from the request method and the
//! response head alone, with longhaul's rejection of ambiguous framing (`framing::ambiguity`).

use http::{HeaderMap, Method, StatusCode, Version};

use super::ErrorKind;
use crate::middleware::framing::FramingFields;

/// Where a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: HEAD, 1xx, 204, 304 (§6.3 items 1).
    Empty,
    /// A 2xx answer to CONNECT: the connection becomes a tunnel (§6.3 item 2).
    Tunnel,
    /// Transfer-Encoding: chunked (§6.3 item 4).
    Chunked,
    /// Content-Length bytes (§6.3 item 6).
    Length(u64),
    /// Everything until the server closes (§6.3 item 8).
    CloseDelimited,
}

/// The framing of a response to `method` with `headers`, or why it cannot be trusted.
pub fn response_framing(
    method: &Method,
    status: StatusCode,
    version: Version,
    headers: &HeaderMap,
) -> Result<Framing, ErrorKind> {
    framing(method, status, version, &FramingFields::of(headers))
}

/// The framing of a response to `method` whose head's framing fields are `fields`.
pub(super) fn framing(
    method: &Method,
    status: StatusCode,
    version: Version,
    fields: &FramingFields,
) -> Result<Framing, ErrorKind> {
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || method == Method::HEAD
    {
        return Ok(Framing::Empty);
    }
    if method == Method::CONNECT && status.is_success() {
        return Ok(Framing::Tunnel);
    }
    if fields.has_transfer_encoding() {
        // §6.1: Transfer-Encoding in an HTTP/1.0 message means the framing is faulty.
        if version == Version::HTTP_10 {
            return Err(ErrorKind::TransferEncodingInHttp10);
        }
        // Stricter than §6.3 item 4 (which would read a non-chunked coding to close), as for
        // requests: only one `Transfer-Encoding: chunked` and no Content-Length beside it.
        return match fields.ambiguity() {
            Some(why) => Err(ErrorKind::AmbiguousFraming(why)),
            None => Ok(Framing::Chunked),
        };
    }
    if fields.has_content_length() {
        return fields
            .content_length()
            .map(Framing::Length)
            .ok_or(ErrorKind::BadContentLength);
    }
    Ok(Framing::CloseDelimited)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::headers;

    fn framing(method: Method, status: u16, pairs: &[(&'static str, &'static str)]) -> Framing {
        let status = StatusCode::from_u16(status).unwrap();
        response_framing(&method, status, Version::HTTP_11, &headers(pairs)).unwrap()
    }

    fn refusal(version: Version, pairs: &[(&'static str, &'static str)]) -> ErrorKind {
        response_framing(&Method::GET, StatusCode::OK, version, &headers(pairs)).unwrap_err()
    }

    #[test]
    fn head_1xx_204_304_have_no_body_whatever_their_headers() {
        let cl = [("content-length", "10")];
        assert_eq!(framing(Method::HEAD, 200, &cl), Framing::Empty);
        assert_eq!(framing(Method::GET, 103, &cl), Framing::Empty);
        assert_eq!(framing(Method::GET, 204, &cl), Framing::Empty);
        assert_eq!(
            framing(Method::GET, 304, &[("transfer-encoding", "chunked")]),
            Framing::Empty
        );
    }

    #[test]
    fn success_to_connect_is_a_tunnel_and_failure_has_a_body() {
        assert_eq!(framing(Method::CONNECT, 200, &[]), Framing::Tunnel);
        let cl = [("content-length", "3")];
        assert_eq!(framing(Method::CONNECT, 407, &cl), Framing::Length(3));
    }

    #[test]
    fn chunked_wins_over_nothing_and_length_is_read() {
        let te = [("transfer-encoding", "Chunked")];
        assert_eq!(framing(Method::GET, 200, &te), Framing::Chunked);
        assert_eq!(
            framing(Method::GET, 200, &[("content-length", "42")]),
            Framing::Length(42)
        );
        assert_eq!(framing(Method::GET, 200, &[]), Framing::CloseDelimited);
    }

    #[test]
    fn repeated_identical_lengths_are_one_length() {
        let lines = [("content-length", "7"), ("content-length", "7")];
        assert_eq!(framing(Method::GET, 200, &lines), Framing::Length(7));
        assert_eq!(
            framing(Method::GET, 200, &[("content-length", "7, 7")]),
            Framing::Length(7)
        );
    }

    #[test]
    fn differing_signed_or_empty_lengths_are_refused() {
        for bad in ["7, 8", "+7", "-1", "", "0x10", "18446744073709551616"] {
            let kind = refusal(Version::HTTP_11, &[("content-length", bad)]);
            assert!(
                matches!(kind, ErrorKind::BadContentLength),
                "{bad:?}: {kind:?}"
            );
        }
    }

    #[test]
    fn length_beside_chunked_is_ambiguous() {
        let pairs = [("transfer-encoding", "chunked"), ("content-length", "3")];
        let kind = refusal(Version::HTTP_11, &pairs);
        assert!(matches!(kind, ErrorKind::AmbiguousFraming(_)), "{kind:?}");
    }

    #[test]
    fn a_coding_other_than_exactly_chunked_is_ambiguous() {
        for te in ["gzip", "gzip, chunked", "chunked, chunked"] {
            let kind = refusal(Version::HTTP_11, &[("transfer-encoding", te)]);
            assert!(
                matches!(kind, ErrorKind::AmbiguousFraming(_)),
                "{te}: {kind:?}"
            );
        }
    }

    #[test]
    fn transfer_encoding_in_http10_is_faulty() {
        let kind = refusal(Version::HTTP_10, &[("transfer-encoding", "chunked")]);
        assert!(
            matches!(kind, ErrorKind::TransferEncodingInHttp10),
            "{kind:?}"
        );
    }
}
