//! Arbitrary route tables, hosts and paths into `Router`: lookups never panic, only name
//! upstreams that exist, and obey the matching rules (case and port do not matter; a named
//! host is only reported when the winning route is not `*`).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use longhaul::config::RouteConfig;
use longhaul::route::{Router, normalize_host};

#[derive(Debug, Arbitrary)]
struct Input {
    routes: Vec<(String, String, u8)>,
    host: Option<String>,
    path: String,
    port: u16,
}

const UPSTREAMS: [&str; 4] = ["a", "b", "c", "d"];

fuzz_target!(|input: Input| {
    let routes: Vec<RouteConfig> = input
        .routes
        .iter()
        .take(16)
        .map(|(host, prefix, up)| RouteConfig {
            host: host.clone(),
            path_prefix: prefix.clone(),
            // Index 4..=255 names an upstream that does not exist: such routes are dropped.
            upstream: UPSTREAMS
                .get(*up as usize)
                .copied()
                .unwrap_or("missing")
                .to_string(),
        })
        .collect();
    let router = Router::new(&routes, |n| UPSTREAMS.iter().position(|u| *u == n));
    let found = router.lookup(input.host.as_deref(), &input.path);
    if let Some(m) = found {
        assert!(m.upstream < UPSTREAMS.len());
        // The winning route's prefix must be a prefix of the path.
        assert!(
            routes
                .iter()
                .any(|r| UPSTREAMS[m.upstream] == r.upstream
                    && input.path.starts_with(&r.path_prefix)),
            "matched a route whose prefix the path does not start with"
        );
        if !m.host_named {
            assert!(routes.iter().any(|r| r.host == "*"));
        }
    }
    if let Some(host) = &input.host {
        let normalized = normalize_host(host);
        assert_eq!(normalized, normalized.to_ascii_lowercase());
        // A host without ':' (so no port to strip) gives the same answer with any port added,
        // and in upper case. (`[`-hosts are IPv6 literals: without `]` there is no port to see.)
        let plain = host.trim();
        if !plain.contains(':') && !plain.is_empty() && !plain.contains(['[', ']']) {
            let with_port = format!("{}:{}", plain.to_ascii_uppercase(), input.port);
            assert_eq!(
                router.lookup(Some(&with_port), &input.path),
                router.lookup(Some(plain), &input.path),
                "port or case changed the route for {plain:?}"
            );
        }
    }
});
