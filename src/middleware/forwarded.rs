//! `X-Forwarded-For`, `X-Forwarded-Proto` (`https` from a TLS listener) and `Via` on the way
//! upstream, so the backend still learns who asked and how; `Via` on the way back too (RFC 9110 §7.6.3).

use std::net::{IpAddr, SocketAddr};

use http::{HeaderName, HeaderValue, Request, Response, Version, header};

/// The peer address of the client connection, put in request extensions by the server.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// The client connection came through a TLS listener: the backend is told `https`.
#[derive(Debug, Clone, Copy)]
pub struct ClientTls;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

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
        let mut value = Vec::with_capacity(48);
        if let Some(prior) = headers.get(&X_FORWARDED_FOR) {
            value.extend_from_slice(prior.as_bytes());
            value.extend_from_slice(b", ");
        }
        push_ip(&mut value, ip.to_canonical());
        if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(value)) {
            headers.insert(X_FORWARDED_FOR, value);
        }
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    append_via(headers, version);
    req
}

/// `ip` as text. IPv4 by hand: it runs for every request, and `Display` goes through core::fmt
/// (callgrind: 1.3k instructions).
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_written_as_display_writes_it() {
        let addrs = [
            "0.0.0.0",
            "10.0.100.9",
            "255.255.255.255",
            "127.0.0.1",
            "2001:db8::1",
        ];
        let written: Vec<String> = addrs
            .iter()
            .map(|a| {
                let mut out = Vec::new();
                push_ip(&mut out, a.parse().unwrap());
                String::from_utf8(out).unwrap()
            })
            .collect();
        assert_eq!(written, addrs);
    }
}
