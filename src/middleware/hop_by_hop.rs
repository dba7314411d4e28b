//! Removes hop-by-hop headers (RFC 9110 §7.6.1) in both directions: they describe one connection,
//! and the client's connection is not the backend's. Framing is re-derived by hyper on each side.

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};

use super::{trailers, upstreamed};
use crate::body::ProxyBody;

/// The settings of an h2c upgrade (RFC 9113 §3.2.1): connection-specific by definition.
pub const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Always connection-scoped, whether or not `Connection` names them.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HTTP2_SETTINGS,
    crate::upstream::reuse::KEEP_ALIVE,
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
];

/// The index of `name` in `HOP_BY_HOP`, by one match on the name's text.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        "connection" => 0,
        "http2-settings" => 1,
        "keep-alive" => 2,
        "proxy-connection" => 3,
        "te" => 4,
        "trailer" => 5,
        "transfer-encoding" => 6,
        "upgrade" => 7,
        "proxy-authenticate" => 8,
        _ => return None,
    })
}

/// Strips hop-by-hop headers and every header the `Connection` header names. One pass over the
/// names present marks the fixed ones; only a `Connection` that lists other names (rare) costs
/// a lookup per name it lists. No allocation for the common heads.
pub fn strip(headers: &mut HeaderMap) {
    strip_read(headers, None);
}

/// `strip`, given what the `Connection` header says when the caller read it already.
fn strip_read(headers: &mut HeaderMap, tokens: Option<ConnectionTokens>) {
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name) {
            present |= 1 << i;
        }
    }
    if present & 1 != 0
        && tokens
            .unwrap_or_else(|| ConnectionTokens::of(headers))
            .others
    {
        remove_listed(headers);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Removes the headers that the `Connection` header lists by name. Only names present are
/// copied out (a lookup by `&str` allocates nothing), so `Connection: close` costs no allocation.
fn remove_listed(headers: &mut HeaderMap) {
    let present: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|token| std::str::from_utf8(token.trim_ascii()).ok())
        .filter(|token| !token.is_empty() && headers.contains_key(*token))
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .collect();
    for name in &present {
        headers.remove(name);
    }
}

/// What a head's `Connection` header says (RFC 9110 §7.6.1), read in one pass. Tokens are
/// compared as bytes, case-insensitively: a value with obs-text still names what it lists.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionTokens {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
    /// It lists a name outside the fixed hop-by-hop set, `close` included (a header may be
    /// named so): a header to strip as well, where present.
    pub others: bool,
}

impl ConnectionTokens {
    pub fn of(headers: &HeaderMap) -> ConnectionTokens {
        let mut tokens = ConnectionTokens::default();
        for value in headers.get_all(header::CONNECTION) {
            tokens.note_value(value.as_bytes());
        }
        tokens
    }

    /// What another line (or head) says as well.
    pub fn merge(&mut self, other: ConnectionTokens) {
        self.close |= other.close;
        self.keep_alive |= other.keep_alive;
        self.upgrade |= other.upgrade;
        self.others |= other.others;
    }

    /// One `Connection` line's value.
    pub fn note_value(&mut self, value: &[u8]) {
        for token in value.split(|&b| b == b',') {
            self.note(token.trim_ascii());
        }
    }

    fn note(&mut self, token: &[u8]) {
        if token.eq_ignore_ascii_case(b"close") {
            self.close = true;
            self.others = true;
        } else if token.eq_ignore_ascii_case(b"keep-alive") {
            self.keep_alive = true;
        } else if token.eq_ignore_ascii_case(b"upgrade") {
            self.upgrade = true;
        } else if !token.is_empty() {
            self.others = true;
        }
    }
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
    let tokens = ConnectionTokens::of(req.headers());
    if let Some(upgrade) = requested_upgrade(req.headers(), tokens) {
        req.extensions_mut().insert(upgrade);
    }
    trailers::note_acceptance(&mut req);
    strip_read(req.headers_mut(), Some(tokens));
    req
}

/// The response-side mapping for `tower::util::MapResponseLayer`. A 101 keeps the `Upgrade`
/// header and says `Connection: upgrade`: that hop is the one switching protocols. A `Trailer`
/// announcement the proxy kept for this client is put back.
pub fn strip_response(mut resp: Response<ProxyBody>) -> Response<ProxyBody> {
    let upgrade = (resp.status() == StatusCode::SWITCHING_PROTOCOLS)
        .then(|| resp.headers().get(header::UPGRADE).cloned())
        .flatten();
    let (close_client, kept_trailers, connection) = match upstreamed::of_mut(&mut resp) {
        Some(u) => {
            let facts = &mut u.facts;
            let trailers = std::mem::take(&mut facts.trailers);
            (facts.close_client, trailers, facts.connection)
        }
        None => (false, Vec::new(), None),
    };
    strip_read(resp.headers_mut(), connection);
    trailers::reannounce(resp.headers_mut(), kept_trailers);
    if let Some(protocol) = upgrade {
        resp.headers_mut().insert(header::UPGRADE, protocol);
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if close_client {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

fn requested_upgrade(headers: &HeaderMap, tokens: ConnectionTokens) -> Option<UpgradeRequest> {
    if !tokens.upgrade {
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

    #[test]
    fn the_index_of_each_fixed_name_is_its_place_in_the_list() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i), "{name}");
        }
        assert_eq!(hop_by_hop_index(&header::HOST), None);
    }

    #[test]
    fn removes_every_fixed_name_however_many_are_present() {
        let mut h = HeaderMap::new();
        for name in HOP_BY_HOP.iter().chain([&header::HOST]) {
            h.append(name.clone(), HeaderValue::from_static("x"));
            h.append(name.clone(), HeaderValue::from_static("y"));
        }
        strip(&mut h);
        assert_eq!(h.keys().collect::<Vec<_>>(), [&header::HOST]);
        assert_eq!(h.get_all(header::HOST).iter().count(), 2);
    }

    #[test]
    fn connection_tokens_are_read_case_insensitively_in_one_pass() {
        let mut h = HeaderMap::new();
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("Keep-Alive, ,UPGRADE"),
        );
        h.append(header::CONNECTION, HeaderValue::from_static(" close "));
        let expected = ConnectionTokens {
            close: true,
            keep_alive: true,
            upgrade: true,
            others: true,
        };
        assert_eq!(ConnectionTokens::of(&h), expected);
    }

    #[test]
    fn only_names_outside_the_fixed_set_count_as_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(!ConnectionTokens::of(&h).others);
        h.append(header::CONNECTION, HeaderValue::from_static("x-trace"));
        assert!(ConnectionTokens::of(&h).others);
    }

    #[test]
    fn a_header_named_close_goes_when_connection_says_close() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        h.insert("close", HeaderValue::from_static(""));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip(&mut h);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["x-kept"]);
    }
}
