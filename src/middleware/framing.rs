//! Which messages have ambiguous body framing or target host (request smuggling, RFC 9112 §6.1 and
//! §11.2; Host, RFC 9112 §3.2). hyper already rejects Transfer-Encoding on HTTP/1.0, a final coding
//! other than chunked, differing Content-Lengths, bad chunk sizes and malformed header lines; these
//! checks catch what hyper tolerates: a repeated or decorated `Transfer-Encoding` (`chunked,
//! chunked`, two header lines). `guard` refuses such requests; `upstream` such responses.

use http::{HeaderMap, Request, Version, header};

/// What a head's `Transfer-Encoding` and `Content-Length` fields say, noted field by field (as
/// a head is read, or from a map with [`FramingFields::of`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FramingFields {
    /// `Transfer-Encoding` lines seen (counted up to 2: more than one is already ambiguous).
    transfer_encodings: u8,
    /// The first `Transfer-Encoding` line is exactly `chunked`.
    exactly_chunked: bool,
    length: Length,
}

/// The `Content-Length` all values (lines and comma-separated list members) agree on.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Length {
    #[default]
    Absent,
    Agreed(u64),
    /// A value is not `1*DIGIT`, overflows, or differs from another.
    Invalid,
}

impl FramingFields {
    /// The framing fields of a complete map.
    pub fn of(headers: &HeaderMap) -> FramingFields {
        let mut fields = FramingFields::default();
        for value in headers.get_all(header::TRANSFER_ENCODING) {
            fields.note_transfer_encoding(value.as_bytes());
        }
        for value in headers.get_all(header::CONTENT_LENGTH) {
            fields.note_content_length(value.as_bytes());
        }
        fields
    }

    /// One `Transfer-Encoding` line's value.
    pub fn note_transfer_encoding(&mut self, value: &[u8]) {
        if self.transfer_encodings == 0 {
            self.exactly_chunked = value.trim_ascii().eq_ignore_ascii_case(b"chunked");
        }
        self.transfer_encodings = (self.transfer_encodings + 1).min(2);
    }

    /// One `Content-Length` line's value.
    pub fn note_content_length(&mut self, value: &[u8]) {
        for member in value.split(|&b| b == b',') {
            self.length = match (self.length, decimal(member.trim_ascii())) {
                (Length::Invalid, _) | (_, None) => Length::Invalid,
                (Length::Absent, Some(n)) => Length::Agreed(n),
                (Length::Agreed(agreed), Some(n)) if agreed == n => Length::Agreed(n),
                (Length::Agreed(_), Some(_)) => Length::Invalid,
            };
        }
    }

    pub fn has_transfer_encoding(&self) -> bool {
        self.transfer_encodings > 0
    }

    pub fn has_content_length(&self) -> bool {
        self.length != Length::Absent
    }

    /// The length every `Content-Length` value agrees on; `None` when absent or invalid.
    pub fn content_length(&self) -> Option<u64> {
        match self.length {
            Length::Agreed(n) => Some(n),
            Length::Absent | Length::Invalid => None,
        }
    }

    /// Why these fields make the message's framing ambiguous, if they do.
    pub fn ambiguity(&self) -> Option<&'static str> {
        match self.transfer_encodings {
            0 => None,
            1 if !self.exactly_chunked => Some("Transfer-Encoding must be exactly `chunked`"),
            1 if self.has_content_length() => {
                Some("Content-Length together with Transfer-Encoding")
            }
            1 => None,
            _ => Some("Transfer-Encoding appears more than once"),
        }
    }
}

/// Why a message's framing is ambiguous, if it is. `Content-Length` is read only beside a
/// `Transfer-Encoding`: a request's length is hyper's to check.
pub fn ambiguity(headers: &HeaderMap) -> Option<&'static str> {
    let mut fields = FramingFields::default();
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        fields.note_transfer_encoding(value.as_bytes());
    }
    if fields.has_transfer_encoding() {
        for value in headers.get_all(header::CONTENT_LENGTH) {
            fields.note_content_length(value.as_bytes());
        }
    }
    fields.ambiguity()
}

/// `1*DIGIT` without sign or overflow.
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let digit = (b as char).to_digit(10)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
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
