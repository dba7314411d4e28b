//! Picks the certificate for a handshake: the one whose DNS names match the client's SNI (an exact
//! name before a wildcard), else the first configured. Swapped whole on reload.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::certs::LoadedCert;

#[derive(Debug)]
pub struct SniResolver {
    certs: ArcSwap<Vec<LoadedCert>>,
}

impl SniResolver {
    /// `certs` must not be empty (validation requires one).
    pub fn new(certs: Vec<LoadedCert>) -> SniResolver {
        SniResolver {
            certs: ArcSwap::from_pointee(certs),
        }
    }

    /// New handshakes use `certs` from now on.
    pub fn replace(&self, certs: Vec<LoadedCert>) {
        self.certs.store(Arc::new(certs));
    }

    /// The certificate for `server_name` (None: the client sent no SNI).
    pub fn choose(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.load();
        let matching = server_name.and_then(|name| {
            let exact = certs
                .iter()
                .find(|c| c.names.iter().any(|n| exact(n, name)));
            exact.or_else(|| {
                certs
                    .iter()
                    .find(|c| c.names.iter().any(|n| wildcard(n, name)))
            })
        });
        matching.or(certs.first()).map(|c| c.key.clone())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.choose(hello.server_name())
    }
}

fn exact(presented: &str, name: &str) -> bool {
    !presented.starts_with("*.") && presented.eq_ignore_ascii_case(name)
}

/// `*.example.com` covers exactly one more label: `a.example.com`, not `example.com` or
/// `a.b.example.com` (RFC 6125 §6.4.3).
fn wildcard(presented: &str, name: &str) -> bool {
    let Some(suffix) = presented.strip_prefix("*.") else {
        return false;
    };
    match name.split_once('.') {
        Some((label, rest)) => !label.is_empty() && rest.eq_ignore_ascii_case(suffix),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_covers_one_label() {
        assert!(wildcard("*.example.com", "a.example.com"));
        assert!(!wildcard("*.example.com", "example.com"));
        assert!(!wildcard("*.example.com", "a.b.example.com"));
        assert!(!wildcard("*.example.com", ".example.com"));
    }

    #[test]
    fn exact_names_ignore_case_and_never_match_a_wildcard_literally() {
        assert!(exact("www.example.com", "WWW.example.com"));
        assert!(!exact("*.example.com", "*.example.com"));
    }
}
