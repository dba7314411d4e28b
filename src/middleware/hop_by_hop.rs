//! Removes hop-by-hop headers (RFC 9110 §7.6.1) in both directions: they describe one connection,
//! and the client's connection is not the backend's. Framing is re-derived by hyper on each side.

use http::{HeaderMap, HeaderName, Request, Response, header};

/// Always connection-scoped, whether or not `Connection` names them.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
];

/// Strips hop-by-hop headers and every header the `Connection` header names.
pub fn strip(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// The request-side mapping for `tower::util::MapRequestLayer`.
pub fn strip_request<B>(mut req: Request<B>) -> Request<B> {
    strip(req.headers_mut());
    req
}

/// The response-side mapping for `tower::util::MapResponseLayer`.
pub fn strip_response<B>(mut resp: Response<B>) -> Response<B> {
    strip(resp.headers_mut());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn removes_fixed_hop_by_hop_headers() {
        let mut h = HeaderMap::new();
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "upgrade",
        ] {
            h.insert(HeaderName::from_static(name), HeaderValue::from_static("x"));
        }
        h.insert("x-end-to-end", HeaderValue::from_static("kept"));
        strip(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-end-to-end"));
    }

    #[test]
    fn removes_headers_named_in_connection() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, X-Secret , x-other"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-other", HeaderValue::from_static("2"));
        h.insert("x-kept", HeaderValue::from_static("3"));
        strip(&mut h);
        assert!(!h.contains_key("x-secret") && !h.contains_key("x-other"));
        assert!(h.contains_key("x-kept"));
    }
}
