//! `X-Forwarded-For`, `X-Forwarded-Proto` (`https` from a TLS listener) and `Via` on the way
//! upstream, so the backend still learns who asked and how; `Via` on the way back too (RFC 9110 §7.6.3).

use std::net::SocketAddr;

use http::{HeaderValue, Request, Response, Version, header};

/// The peer address of the client connection, put in request extensions by the server.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// The client connection came through a TLS listener: the backend is told `https`.
#[derive(Debug, Clone, Copy)]
pub struct ClientTls;

const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";

/// The request-side mapping for `tower::util::MapRequestLayer`.
pub fn add_request_headers<B>(mut req: Request<B>) -> Request<B> {
    let client = req.extensions().get::<ClientAddr>().map(|c| c.0.ip());
    let proto = match req.extensions().get::<ClientTls>() {
        Some(ClientTls) => "https",
        None => "http",
    };
    let version = req.version();
    let headers = req.headers_mut();
    if let Some(ip) = client {
        let ip = ip.to_canonical().to_string();
        let value = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prior) => format!("{prior}, {ip}"),
            None => ip,
        };
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.insert(X_FORWARDED_FOR, value);
        }
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    append_via(headers, version);
    req
}

/// The HTTP version the backend answered with (the response head sent on may say another).
#[derive(Debug, Clone, Copy)]
pub struct UpstreamVersion(pub Version);

/// The response-side mapping for `tower::util::MapResponseLayer`.
pub fn add_response_headers<B>(mut resp: Response<B>) -> Response<B> {
    let version = match resp.extensions().get::<UpstreamVersion>() {
        Some(v) => v.0,
        None => resp.version(),
    };
    append_via(resp.headers_mut(), version);
    resp
}

fn append_via(headers: &mut http::HeaderMap, version: Version) {
    let ours = if version == Version::HTTP_10 {
        "1.0 longhaul"
    } else {
        "1.1 longhaul"
    };
    let value = match headers.get(header::VIA).and_then(|v| v.to_str().ok()) {
        Some(prior) => HeaderValue::try_from(format!("{prior}, {ours}")).ok(),
        None => Some(HeaderValue::from_static(ours)),
    };
    if let Some(value) = value {
        headers.insert(header::VIA, value);
    }
}
