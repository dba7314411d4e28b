//! Routing by Host and path, and the Host header rules that keep longhaul from being an open
//! proxy: no route is a 404, absolute-form targets route by their authority (RFC 9112 §3.2.2),
//! and ambiguous Host headers are refused (RFC 9112 §3.2).

mod support;

use support::backend::Backend;
use support::client::{self, Response};
use support::proxy::{Proxy, ProxyConfig};

/// The 404 body names the cause and carries the request id.
fn assert_no_route_body(r: &Response) {
    let body = r.body_str();
    assert!(
        body.to_ascii_lowercase().contains("route"),
        "404 body should say there is no route: {body:?}"
    );
    let id = r.header("x-request-id").expect("404 without X-Request-Id");
    assert!(
        body.contains(id),
        "404 body should carry the request id {id}: {body:?}"
    );
}

/// The negative check without a sleep: a routed probe sent after the refused request is answered,
/// and it is the only request the backend has seen. Had the refused request been forwarded, its head
/// would have reached the backend before the proxy answered it, so before the probe.
fn assert_only_the_probe_reached(proxy: &Proxy, backend: &Backend, what: &str) {
    let probe = client::request(
        proxy.addr,
        b"GET /probe HTTP/1.0\r\nHost: app.example\r\n\r\n",
    );
    assert_eq!(probe.status, 200, "{what}: probe");
    let forwarded: Vec<String> = backend
        .requests()
        .iter()
        .map(|r| format!("{} (Host {})", r.target, r.header_all("host").join(" | ")))
        .collect();
    assert_eq!(
        forwarded,
        vec!["/probe (Host app.example)".to_string()],
        "{what} was forwarded"
    );
}

fn routed_proxy(backend: &Backend) -> Proxy {
    Proxy::start(&ProxyConfig::single(&[backend.addr()]).route("app.example", "/", "legacy"))
}

#[test]
fn no_route_gives_404() {
    let backend = Backend::start();
    let proxy = routed_proxy(&backend);
    let ok = client::request(proxy.addr, b"GET /r HTTP/1.0\r\nHost: app.example\r\n\r\n");
    assert_eq!(ok.status, 200, "the routed host works");
    let r = client::request(
        proxy.addr,
        b"GET /r HTTP/1.0\r\nHost: other.example\r\n\r\n",
    );
    assert_eq!(r.status, 404, "{}", r.body_str());
    assert_no_route_body(&r);
    assert_eq!(
        backend.request_count(),
        1,
        "the unrouted request was not forwarded"
    );
    let none = proxy.metric_or_zero(
        "longhaul_requests_total",
        &[("upstream", "none"), ("code", "404")],
    );
    assert_eq!(
        none, 1.0,
        "longhaul_requests_total{{upstream=\"none\",code=\"404\"}}"
    );
}

#[test]
fn absolute_form_request_to_unrouted_host_is_refused() {
    let backend = Backend::start();
    let proxy = routed_proxy(&backend);
    let r = client::request(
        proxy.addr,
        b"GET http://evil.example/steal HTTP/1.0\r\nHost: evil.example\r\n\r\n",
    );
    // No route names the URI's host, so it is the no-route answer (a 421 is only for a host the
    // default route would take but no route names).
    assert_eq!(r.status, 404, "{}", r.body_str());
    assert_no_route_body(&r);
    assert_only_the_probe_reached(
        &proxy,
        &backend,
        "an absolute-form request to an unrouted host",
    );
}

#[test]
fn absolute_form_authority_wins_over_a_routed_host_header() {
    // RFC 9112 §3.2.2: with an absolute-form target the Host header is ignored, so routing must
    // follow the URI's authority, not a Host header that happens to name a routed host.
    let backend = Backend::start();
    let proxy = routed_proxy(&backend);
    let r = client::request(
        proxy.addr,
        b"GET http://evil.example/steal HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n",
    );
    // No route names the URI's host, so it is the no-route answer (a 421 is only for a host the
    // default route would take but no route names).
    assert_eq!(r.status, 404, "{}", r.body_str());
    assert_no_route_body(&r);
    assert_only_the_probe_reached(&proxy, &backend, "a request routed by its Host header");
}

#[test]
fn absolute_form_request_to_a_routed_host_is_forwarded_in_origin_form() {
    let backend = Backend::start();
    let proxy = routed_proxy(&backend);
    let r = client::request(
        proxy.addr,
        b"GET http://app.example/page?q=1 HTTP/1.0\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.body_str());
    let up = &backend.requests()[0];
    assert_eq!(
        up.target, "/page?q=1",
        "an HTTP/1.0 backend expects origin-form"
    );
}

#[test]
fn duplicate_host_headers_get_400_and_are_not_forwarded() {
    // RFC 9112 §3.2: more than one Host line is a 400. Otherwise longhaul could route on one
    // value while the backend acts on the other.
    let backend = Backend::start();
    let proxy = routed_proxy(&backend);
    for raw in [
        &b"GET /h HTTP/1.1\r\nHost: app.example\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
            [..],
        &b"GET /h HTTP/1.1\r\nHost: evil.example\r\nHost: app.example\r\nConnection: close\r\n\r\n"
            [..],
    ] {
        let r = client::request(proxy.addr, raw);
        assert_eq!(
            r.status,
            400,
            "{:?} got {}: {}",
            String::from_utf8_lossy(raw),
            r.status,
            r.body_str()
        );
    }
    assert_only_the_probe_reached(&proxy, &backend, "a request with an ambiguous Host");
}

#[test]
fn host_matching_ignores_case_and_port() {
    let backend = Backend::start();
    let proxy = routed_proxy(&backend);
    for host in ["APP.Example", "app.example:80", "app.example:8080"] {
        let r = client::request(
            proxy.addr,
            format!("GET /h HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes(),
        );
        assert_eq!(
            r.status, 200,
            "Host: {host} did not match route app.example"
        );
    }
}

#[test]
fn absolute_form_request_forwards_the_targets_host_not_the_received_one() {
    // RFC 9112 §3.2.2: with an absolute-form target the received Host is ignored, and a proxy
    // generates Host from the target. Routing used the target; the backend must see the same.
    let backend = Backend::start();
    let proxy = routed_proxy(&backend);
    let r = client::request(
        proxy.addr,
        b"GET http://app.example/page HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.body_str());
    let up = &backend.requests()[0];
    assert_eq!(
        up.header_all("host"),
        vec!["app.example"],
        "{:?}",
        up.headers
    );
}

#[test]
fn http11_request_without_host_gets_400_but_http10_is_fine() {
    // RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400; HTTP/1.0 never required it.
    let backend = Backend::start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]));
    let r = client::request(
        proxy.addr,
        b"GET /nohost HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 400, "{}", r.body_str());
    let r10 = client::request(proxy.addr, b"GET /nohost10 HTTP/1.0\r\n\r\n");
    assert_eq!(r10.status, 200, "{}", r10.body_str());
    let targets: Vec<String> = backend
        .requests()
        .iter()
        .map(|r| r.target.clone())
        .collect();
    assert_eq!(targets, vec!["/nohost10"]);
}
