//! Removes hop-by-hop headers (RFC 9110 §7.6.1) in both directions: they describe one connection,
//! and the client's connection is not the backend's. Framing is re-derived by hyper on each side.

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};

use super::trailers;

/// The settings of an h2c upgrade (RFC 9113 §3.2.1): connection-specific by definition.
pub const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Always connection-scoped, whether or not `Connection` names them.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HTTP2_SETTINGS,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
];

/// Strips hop-by-hop headers and every header the `Connection` header names. One pass over the
/// names present, then a removal for each doomed one: most heads hold one or two, and removing
/// every listed name instead costs a hash lookup each (callgrind: 1.2k instructions a head).
pub fn strip(headers: &mut HeaderMap) {
    let listed = headers.get_all(header::CONNECTION);
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| HOP_BY_HOP.contains(name) || lists(&listed, name))
        .cloned()
        .collect();
    for name in &doomed {
        headers.remove(name);
    }
}

/// Whether one of the `Connection` values lists `name` (case-insensitive). Bytes, not text: a
/// value with obs-text must still name the headers it lists.
fn lists(connection: &http::header::GetAll<'_, HeaderValue>, name: &HeaderName) -> bool {
    connection
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|token| {
            token
                .trim_ascii()
                .eq_ignore_ascii_case(name.as_str().as_bytes())
        })
}

/// The protocols a client asked to switch to (`Connection: upgrade` + `Upgrade: x, y`), kept
/// for the proxy before the headers that carried them are stripped; the proxy decides which
/// may pass (`[server] upgrades`).
#[derive(Debug, Clone)]
pub struct UpgradeRequest {
    pub protocols: HeaderValue,
    /// `HTTP2-Settings`, which an h2c upgrade carries along.
    pub http2_settings: Option<HeaderValue>,
}

/// The request-side mapping for `tower::util::MapRequestLayer`.
pub fn strip_request<B>(mut req: Request<B>) -> Request<B> {
    if let Some(upgrade) = requested_upgrade(req.headers()) {
        req.extensions_mut().insert(upgrade);
    }
    trailers::note_acceptance(&mut req);
    strip(req.headers_mut());
    req
}

/// The response-side mapping for `tower::util::MapResponseLayer`. A 101 keeps the `Upgrade`
/// header and says `Connection: upgrade`: that hop is the one switching protocols. A `Trailer`
/// announcement the proxy kept for this client is put back.
pub fn strip_response<B>(mut resp: Response<B>) -> Response<B> {
    let upgrade = (resp.status() == StatusCode::SWITCHING_PROTOCOLS)
        .then(|| resp.headers().get(header::UPGRADE).cloned())
        .flatten();
    strip(resp.headers_mut());
    trailers::reannounce(&mut resp);
    if let Some(protocol) = upgrade {
        resp.headers_mut().insert(header::UPGRADE, protocol);
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if resp.extensions().get::<CloseClient>().is_some() {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Set by the proxy on a response after which the client connection must close (its body
/// ends at close for an HTTP/1.0 client); becomes `Connection: close` once stripping is done.
#[derive(Debug, Clone, Copy)]
pub struct CloseClient;

/// Whether the `Connection` header lists `token` (case-insensitive), e.g. `close`, `upgrade`.
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

fn requested_upgrade(headers: &HeaderMap) -> Option<UpgradeRequest> {
    if !connection_has(headers, "upgrade") {
        return None;
    }
    Some(UpgradeRequest {
        protocols: headers.get(header::UPGRADE)?.clone(),
        http2_settings: headers.get(HTTP2_SETTINGS).cloned(),
    })
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
            "http2-settings",
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
