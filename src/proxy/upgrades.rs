//! Which `Upgrade` protocols may reach a backend (`[server] upgrades`): an unlisted one (h2c
//! smuggling) is dropped, and a request left with none goes upstream as a plain request.

use http::HeaderValue;

use crate::metrics;
use crate::middleware::hop_by_hop::UpgradeRequest;

/// The configured protocol names, compared case-insensitively and whatever version a client
/// appends (`TLS/1.2` is `tls`).
#[derive(Debug, Clone)]
pub struct UpgradeAllowList {
    protocols: Vec<String>,
}

impl UpgradeAllowList {
    pub fn new(protocols: &[String]) -> UpgradeAllowList {
        UpgradeAllowList {
            protocols: protocols.to_vec(),
        }
    }

    /// The part of `asked` that may pass, or `None` when no protocol is left (RFC 9110 §7.8
    /// lets an intermediary ignore `Upgrade`). Each protocol dropped is counted as refused.
    pub fn admit(&self, asked: UpgradeRequest) -> Option<UpgradeRequest> {
        let mut kept: Vec<&[u8]> = Vec::new();
        for token in tokens(&asked.protocols) {
            if self.allows(protocol_name(token)) {
                kept.push(token);
            } else {
                metrics::upgrade_refused(protocol_name(token));
            }
        }
        if kept.is_empty() {
            return None;
        }
        let h2c = kept
            .iter()
            .any(|t| protocol_name(t).eq_ignore_ascii_case(b"h2c"));
        Some(UpgradeRequest {
            protocols: HeaderValue::from_bytes(&kept.join(&b", "[..])).ok()?,
            http2_settings: asked.http2_settings.filter(|_| h2c),
        })
    }

    fn allows(&self, name: &[u8]) -> bool {
        self.protocols
            .iter()
            .any(|p| p.as_bytes().eq_ignore_ascii_case(name))
    }
}

/// The comma-separated protocols of an `Upgrade` value, without blanks.
fn tokens(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// `h2c` of `h2c`, `TLS` of `TLS/1.2`.
fn protocol_name(token: &[u8]) -> &[u8] {
    token.split(|&b| b == b'/').next().unwrap_or(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(protocols: &'static str, settings: Option<&'static str>) -> UpgradeRequest {
        UpgradeRequest {
            protocols: HeaderValue::from_static(protocols),
            http2_settings: settings.map(HeaderValue::from_static),
        }
    }

    fn allow(names: &[&str]) -> UpgradeAllowList {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        UpgradeAllowList::new(&names)
    }

    #[test]
    fn an_unlisted_protocol_leaves_nothing_to_upgrade_to() {
        assert!(
            allow(&["websocket"])
                .admit(asked("h2c", Some("AAMAAABkAAQAAP__")))
                .is_none()
        );
    }

    #[test]
    fn a_listed_protocol_matches_whatever_its_case() {
        let kept = allow(&["websocket"]).admit(asked("WebSocket", None));
        assert_eq!(kept.expect("kept").protocols, "WebSocket");
    }

    #[test]
    fn of_several_protocols_only_the_listed_ones_are_kept() {
        let kept = allow(&["websocket", "tls"])
            .admit(asked("h2c, TLS/1.2 ,websocket", Some("AAMAAABkAAQAAP__")))
            .expect("kept");
        assert_eq!(kept.protocols, "TLS/1.2, websocket");
        assert!(kept.http2_settings.is_none(), "h2c's settings went with it");
    }

    #[test]
    fn an_allowed_h2c_keeps_its_settings() {
        let kept = allow(&["h2c"])
            .admit(asked("h2c", Some("AAMAAABkAAQAAP__")))
            .expect("kept");
        assert_eq!(kept.http2_settings.expect("settings"), "AAMAAABkAAQAAP__");
    }
}
