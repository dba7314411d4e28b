//! HTTP/1.0 framing between longhaul and a legacy backend: which responses let a connection go
//! back to the pool (RFC 9112 §9.3), close-delimited bodies (§6.3), and request bodies a 1.0
//! backend can read (Content-Length only).

mod support;

use std::time::Duration;

use support::backend::{self, Backend, Framing, Reply};
use support::client::{self, Client};
use support::proxy::{Proxy, ProxyConfig};

fn proxy_for(backend: &Backend, max_size: usize) -> Proxy {
    Proxy::start(&ProxyConfig::single(&[backend.addr()]).pool("max_size", &max_size.to_string()))
}

/// The negative check without a sleep: a probe sent after the rejected request is answered, and it
/// is the only request the backend has seen. Had the rejected request been forwarded, its head would
/// have reached the backend before the proxy answered it, so before the probe.
fn assert_only_the_probe_reached(proxy: &Proxy, backend: &Backend, why: &str) {
    assert_eq!(
        client::get10(proxy.addr, "/probe").status,
        200,
        "{why}: probe"
    );
    let targets: Vec<String> = backend.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, vec!["/probe".to_string()], "{why}");
}

/// Asserts no backend connection carried more than one request.
fn assert_no_reuse(backend: &Backend) {
    for c in backend.connections() {
        assert!(
            c.requests.len() <= 1,
            "backend connection {} was reused for {:?}",
            c.id,
            c.requests
                .iter()
                .map(|r| r.target.clone())
                .collect::<Vec<_>>()
        );
    }
}

/// Waits (bounded) until `longhaul_upstream_connections_closed_total{reason}` reaches `want`.
fn assert_closed_reason(proxy: &Proxy, reason: &str, want: usize) {
    let mut got = 0.0;
    let counted = support::wait_until(Duration::from_secs(2), || {
        got = proxy.metric_or_zero(
            "longhaul_upstream_connections_closed_total",
            &[("upstream", "legacy"), ("reason", reason)],
        );
        got == want as f64
    });
    let all: Vec<String> = proxy
        .metrics_text()
        .lines()
        .filter(|l| l.starts_with("longhaul_upstream_connections_closed_total"))
        .map(String::from)
        .collect();
    assert!(
        counted,
        "closed_total{{reason=\"{reason}\"}} = {got}, want {want}; all: {all:#?}"
    );
}

#[test]
fn close_delimited_body_arrives_whole_and_connection_is_not_reused() {
    let backend = Backend::builder()
        .framing(Framing::CloseDelimited)
        .body_size(200_000)
        .start();
    let proxy = proxy_for(&backend, 2);
    for i in 0..5 {
        let path = format!("/big/{i}");
        let r = client::get10(proxy.addr, &path);
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 200_000, "request {i}: body length");
        assert_eq!(
            r.body,
            backend.expected_body("GET", &path),
            "request {i}: body content"
        );
    }
    assert_eq!(backend.request_count(), 5);
    assert_eq!(
        backend.accepted(),
        5,
        "each close-delimited response costs its connection"
    );
    assert_no_reuse(&backend);
}

#[test]
fn connection_close_from_backend_retires_connection() {
    // The backend says `Connection: close` but leaves the socket open: only the header can stop reuse.
    let backend = Backend::builder()
        .responder(|req| Reply::Raw {
            bytes: backend::http10_response(200, &[("Connection", "close")], req.target.as_bytes()),
            keep_open: true,
        })
        .start();
    let proxy = proxy_for(&backend, 2);
    for i in 0..4 {
        let path = format!("/c/{i}");
        let r = client::get10(proxy.addr, &path);
        assert_eq!(r.status, 200);
        assert_eq!(r.body_str(), path);
    }
    assert_eq!(backend.request_count(), 4);
    assert_no_reuse(&backend);
    assert_closed_reason(&proxy, "not_reusable", 4);
}

#[test]
fn http10_response_without_keepalive_is_not_reused() {
    // A 1.0 response without `Connection: keep-alive` means close (RFC 9112 §9.3), even if the
    // sloppy server leaves the socket open.
    let backend = Backend::builder().ignore_keepalive().start();
    let proxy = proxy_for(&backend, 2);
    for i in 0..4 {
        let path = format!("/nk/{i}");
        let r = client::get10(proxy.addr, &path);
        assert_eq!(r.status, 200);
        assert_eq!(r.body, backend.expected_body("GET", &path));
    }
    assert_eq!(backend.request_count(), 4);
    assert_no_reuse(&backend);
    assert_closed_reason(&proxy, "not_reusable", 4);
}

#[test]
fn head_204_and_304_keep_the_connection_reusable() {
    let backend = Backend::start();
    let proxy = proxy_for(&backend, 1);

    let get = client::get10(proxy.addr, "/a");
    assert_eq!(get.status, 200);

    let head = client::request(proxy.addr, b"HEAD /a HTTP/1.0\r\nHost: test.local\r\n\r\n");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("content-length"),
        Some(
            backend
                .expected_body("GET", "/a")
                .len()
                .to_string()
                .as_str()
        ),
        "HEAD keeps the representation's Content-Length"
    );

    let no_content = client::get10(proxy.addr, "/status/204");
    assert_eq!(no_content.status, 204);
    assert!(no_content.body.is_empty());

    let not_modified = client::request(
        proxy.addr,
        b"GET /status/304 HTTP/1.0\r\nHost: test.local\r\nIf-Modified-Since: Sat, 01 Jan 2000 00:00:00 GMT\r\n\r\n",
    );
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());

    let after = client::get10(proxy.addr, "/after");
    assert_eq!(after.status, 200);
    assert_eq!(after.body, backend.expected_body("GET", "/after"));

    assert_eq!(backend.request_count(), 5);
    assert_eq!(
        backend.accepted(),
        1,
        "GET, HEAD, 204, 304 and GET should share one backend connection: {:?}",
        backend
            .connections()
            .iter()
            .map(|c| c
                .requests
                .iter()
                .map(|r| r.target.clone())
                .collect::<Vec<_>>())
            .collect::<Vec<_>>()
    );
}

#[test]
fn backend_closing_after_n_requests_is_invisible_to_clients() {
    // Like Apache's MaxKeepAliveRequests: the 3rd response on a connection says `Connection: close`.
    let backend = Backend::builder().close_after(3).start();
    let proxy = proxy_for(&backend, 1);
    for i in 0..30 {
        let path = format!("/n/{i}");
        let r = client::get10(proxy.addr, &path);
        assert_eq!(r.status, 200, "request {i}: {}", r.body_str());
        assert_eq!(r.body, backend.expected_body("GET", &path));
    }
    assert_eq!(backend.request_count(), 30);
    for c in backend.connections() {
        assert!(
            c.requests.len() <= 3,
            "connection {} carried {} requests",
            c.id,
            c.requests.len()
        );
    }
    assert_eq!(backend.accepted(), 10, "30 requests, 3 per connection");
}

#[test]
fn chunked_client_body_reaches_http10_backend_with_content_length() {
    let backend = Backend::start();
    let proxy = proxy_for(&backend, 2);
    let r = client::request(
        proxy.addr,
        b"POST /upload HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.body_str());
    let reqs = backend.requests();
    assert_eq!(reqs.len(), 1);
    let req = &reqs[0];
    assert!(
        !req.chunked,
        "a chunked body slipped through to an HTTP/1.0 backend"
    );
    assert!(!req.has_header("transfer-encoding"), "{:?}", req.headers);
    assert_eq!(req.version, "HTTP/1.0");
    assert_eq!(req.header("content-length"), Some("11"));
    assert_eq!(req.body, b"hello world");
}

#[test]
fn chunked_client_body_over_buffer_limit_gets_413() {
    let backend = Backend::start();
    let proxy =
        Proxy::start(&ProxyConfig::single(&[backend.addr()]).up("max_buffered_body_bytes", "1024"));
    let mut raw = b"POST /upload HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        .to_vec();
    for _ in 0..8 {
        raw.extend_from_slice(b"200\r\n");
        raw.extend_from_slice(&[b'x'; 512]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let mut c = Client::connect(proxy.addr).expect("connect");
    // The proxy may answer before reading everything; a failed write is fine, the answer is not.
    let _ = c.send(&raw);
    let r = c
        .read_response(false)
        .expect("a response to the oversized body");
    assert_eq!(r.status, 413, "{}", r.body_str());
    assert_only_the_probe_reached(
        &proxy,
        &backend,
        "an oversized body must not reach the backend",
    );
}

#[test]
fn content_length_body_is_forwarded_exactly() {
    let backend = Backend::start();
    let proxy = proxy_for(&backend, 2);
    let body: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let mut raw = format!(
        "POST /form HTTP/1.0\r\nHost: test.local\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    let r = client::request(proxy.addr, &raw);
    assert_eq!(r.status, 200);
    let reqs = backend.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].header("content-length"), Some("50000"));
    assert!(reqs[0].body == body, "POST body changed on the way");
}

#[test]
fn chunked_http11_backend_response_reaches_http10_client_whole() {
    let backend = Backend::builder()
        .framing(Framing::Chunked11)
        .body_size(10_000)
        .start();
    let proxy = Proxy::start(
        &ProxyConfig::single(&[backend.addr()])
            .up("protocol", "\"http/1.1\"")
            .pool("max_size", "1"),
    );
    for i in 0..3 {
        let path = format!("/ch/{i}");
        let r = client::get10(proxy.addr, &path);
        assert_eq!(r.status, 200);
        assert!(!r.chunked, "an HTTP/1.0 client cannot read chunked");
        assert!(!r.has_header("transfer-encoding"));
        assert_eq!(r.body, backend.expected_body("GET", &path));
    }
    let reqs = backend.requests();
    assert_eq!(reqs.len(), 3);
    assert!(
        reqs.iter().all(|r| r.version == "HTTP/1.1"),
        "protocol http/1.1 sends HTTP/1.1"
    );
    assert_eq!(
        backend.accepted(),
        1,
        "chunked 1.1 responses keep the connection"
    );
}

#[test]
fn not_modified_with_content_length_has_no_body_and_keeps_the_connection() {
    // A 304 may carry the representation's Content-Length; no body follows it (RFC 9110 §8.6).
    let backend = Backend::builder()
        .responder(|req| {
            let bytes = if req.target == "/cached" {
                b"HTTP/1.0 304 Not Modified\r\nContent-Length: 1234\r\nConnection: keep-alive\r\n\r\n".to_vec()
            } else {
                backend::http10_response(200, &[("Connection", "keep-alive")], req.target.as_bytes())
            };
            Reply::Raw { bytes, keep_open: true }
        })
        .start();
    let proxy = proxy_for(&backend, 1);
    let r = client::request(
        proxy.addr,
        b"GET /cached HTTP/1.0\r\nHost: test.local\r\nIf-None-Match: \"x\"\r\n\r\n",
    );
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    let next = client::get10(proxy.addr, "/next");
    assert_eq!(next.status, 200, "{}", next.body_str());
    assert_eq!(next.body_str(), "/next");
    assert_eq!(
        backend.accepted(),
        1,
        "the 304 left the connection reusable"
    );
}
