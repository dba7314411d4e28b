//! Trailer fields on the way to the client: only an HTTP/1.1 client that sent `TE: trailers` gets
//! them, so the fact is noted before `TE` is stripped and the backend's `Trailer` re-announced.

use http::header::{self, HeaderValue};
use http::{HeaderMap, Request, Version};

/// On a request whose client accepts a trailer section (HTTP/1.1 with `TE: trailers`).
#[derive(Debug, Clone, Copy)]
pub struct AcceptsTrailers;

/// Notes whether the client accepts trailers; called before hop-by-hop stripping removes `TE`.
pub fn note_acceptance<B>(req: &mut Request<B>) {
    if req.version() == Version::HTTP_11 && te_lists_trailers(req.headers()) {
        req.extensions_mut().insert(AcceptsTrailers);
    }
}

/// Tells an HTTP/1.1 backend that this hop takes trailers (some send them only when asked).
/// `TE` is hop-by-hop, so `Connection` names it (RFC 9110 §10.1.4).
pub fn ask_backend(headers: &mut HeaderMap) {
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("te"));
}

/// The backend's `Trailer` values, kept for a client that accepts trailers; none otherwise.
pub fn to_announce(client_accepts: bool, backend: &HeaderMap) -> Vec<HeaderValue> {
    if !client_accepts {
        return Vec::new();
    }
    backend.get_all(header::TRAILER).iter().cloned().collect()
}

/// Puts the kept announcement back after stripping.
pub fn reannounce(headers: &mut HeaderMap, kept: Vec<HeaderValue>) {
    for value in kept {
        headers.append(header::TRAILER, value);
    }
}

fn te_lists_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|member| member.split(|&b| b == b';').next())
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::headers;

    fn request(version: Version, te: Option<&str>) -> Request<()> {
        let mut b = Request::builder().version(version);
        if let Some(te) = te {
            b = b.header(header::TE, te);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn http11_client_with_te_trailers_accepts_them() {
        let mut req = request(Version::HTTP_11, Some("gzip, Trailers"));
        note_acceptance(&mut req);
        assert!(req.extensions().get::<AcceptsTrailers>().is_some());
    }

    #[test]
    fn http11_client_without_te_trailers_does_not() {
        let mut req = request(Version::HTTP_11, Some("gzip"));
        note_acceptance(&mut req);
        assert!(req.extensions().get::<AcceptsTrailers>().is_none());
    }

    #[test]
    fn http10_client_never_accepts_trailers() {
        let mut req = request(Version::HTTP_10, Some("trailers"));
        note_acceptance(&mut req);
        assert!(req.extensions().get::<AcceptsTrailers>().is_none());
    }

    #[test]
    fn announcement_is_kept_only_for_an_accepting_client() {
        let h = headers(&[("trailer", "X-Checksum")]);
        assert_eq!(
            to_announce(true, &h),
            [HeaderValue::from_static("X-Checksum")]
        );
        assert!(to_announce(false, &h).is_empty());
        assert!(to_announce(true, &HeaderMap::new()).is_empty());
    }
}
