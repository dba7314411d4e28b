//! The admin listener (/healthz, /readyz, /metrics, 404s), access log lines, and metric label
//! hygiene: labels never carry paths, client addresses or Host headers.

mod support;

use std::net::TcpListener;
use std::time::Duration;

use support::backend::Backend;
use support::client;
use support::proxy::{Proxy, ProxyConfig, log_field, log_message};

#[test]
fn healthz_and_readyz_with_a_live_backend() {
    let backend = Backend::start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]));
    let health = proxy.admin_get("/healthz");
    assert_eq!(health.status, 200);
    assert_eq!(health.body_str().trim(), "ok");
    let mut last = String::new();
    let ready = support::wait_until(Duration::from_secs(3), || {
        let r = proxy.admin_get("/readyz");
        last = format!("{} {}", r.status, r.body_str());
        r.status == 200
    });
    assert!(
        ready,
        "/readyz never became ready with a live backend: {last}"
    );
    assert!(last.contains("ready"), "{last}");
    assert_eq!(proxy.admin_get("/no-such-page").status, 404);
}

#[test]
fn readyz_names_an_unreachable_server() {
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let proxy = Proxy::start(&ProxyConfig::single(&[dead]));
    let r = proxy.admin_get("/readyz");
    assert_eq!(r.status, 503, "{}", r.body_str());
    let body = r.body_str();
    assert_eq!(
        body,
        format!("not ready\nupstream legacy: no server accepts connections ({dead})\n"),
        "/readyz names the upstream and the server that is down"
    );
}

#[test]
fn metrics_expose_build_info_and_pool_gauges() {
    let backend = Backend::start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]).pool("max_size", "3"));
    assert_eq!(client::get10(proxy.addr, "/m").status, 200);
    let text = proxy.metrics_text();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        support::proxy::metric_in(&text, "longhaul_build_info", &[("version", version)]),
        Some(1.0),
        "longhaul_build_info{{version=\"{version}\"}} 1"
    );
    let server = backend.addr().to_string();
    let labels = [("upstream", "legacy"), ("server", server.as_str())];
    assert_eq!(
        support::proxy::metric_in(&text, "longhaul_pool_max_connections", &labels),
        Some(3.0)
    );
    // The connection goes back to the pool just after the response: let the gauge settle.
    let mut idle = None;
    let settled = support::wait_until(Duration::from_secs(2), || {
        idle = proxy.metric(
            "longhaul_pool_connections",
            &[("upstream", "legacy"), ("state", "idle")],
        );
        idle == Some(1.0)
    });
    assert!(
        settled,
        "one idle pooled connection after one request, gauge says {idle:?}"
    );
    assert_eq!(
        support::proxy::metric_in(&text, "longhaul_upstream_server_up", &labels),
        Some(1.0)
    );
    for name in [
        "longhaul_request_duration_seconds_count",
        "longhaul_pool_wait_seconds_count",
    ] {
        assert!(
            support::proxy::metric_in(&text, name, &[("upstream", "legacy")])
                .is_some_and(|v| v >= 1.0),
            "{name} should count the request"
        );
    }
}

#[test]
fn metric_labels_never_carry_paths_hosts_or_client_addresses() {
    let backend = Backend::start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]).route(
        "routed.example",
        "/",
        "legacy",
    ));
    let ok = client::request(
        proxy.addr,
        b"GET /secret-path-abc HTTP/1.0\r\nHost: routed.example\r\n\r\n",
    );
    assert_eq!(ok.status, 200);
    let miss = client::request(
        proxy.addr,
        b"GET /other-path-xyz HTTP/1.0\r\nHost: unrouted-host.example\r\n\r\n",
    );
    assert_eq!(miss.status, 404);
    let text = proxy.metrics_text();
    for needle in [
        "secret-path-abc",
        "other-path-xyz",
        "routed.example",
        "unrouted-host.example",
    ] {
        assert!(!text.contains(needle), "/metrics carries {needle:?}");
    }
    // Client addresses: the backend address may appear as `server`, nothing else on 127.0.0.1.
    let server = backend.addr().to_string();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let without_server = line.replace(&server, "");
        assert!(
            !without_server.contains("127.0.0.1"),
            "a label carries a client address: {line}"
        );
    }
}

#[test]
fn access_log_line_per_request() {
    let backend = Backend::start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]));
    let r = client::request(
        proxy.addr,
        b"GET /logged?x=1 HTTP/1.0\r\nHost: test.local\r\nX-Request-Id: log-me-7\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let line = proxy
        .wait_for_log(Duration::from_secs(3), |v| {
            log_message(v) == Some("request")
                && log_field(v, "request_id").and_then(|x| x.as_str()) == Some("log-me-7")
        })
        .unwrap_or_else(|| {
            panic!(
                "no access log line with request_id log-me-7:\n{}",
                proxy.stderr_lines().join("\n")
            )
        });
    let field = |k: &str| {
        log_field(&line, k)
            .cloned()
            .unwrap_or(serde_json::Value::Null)
    };
    assert_eq!(field("method"), "GET", "{line}");
    assert!(
        field("path")
            .as_str()
            .is_some_and(|p| p.starts_with("/logged")),
        "{line}"
    );
    assert_eq!(field("status"), 200, "status is a JSON number: {line}");
    assert_eq!(field("upstream"), "legacy", "{line}");
    assert!(
        field("duration_ms").as_f64().is_some_and(|ms| ms >= 0.0),
        "duration_ms is a non-negative JSON number: {line}"
    );
}
