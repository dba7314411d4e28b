//! The core promise: many short HTTP/1.0 client connections reach the legacy backend over a few
//! long-lived pooled keep-alive connections, and the metrics tell the same story as the backend.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use support::backend::Backend;
use support::client;
use support::proxy::{Proxy, ProxyConfig};

const MAX_SIZE: usize = 4;

fn pooled_proxy(backend: &Backend, max_size: usize) -> Proxy {
    Proxy::start(
        &ProxyConfig::single(&[backend.addr()])
            .pool("max_size", &max_size.to_string())
            .pool("wait_timeout", "\"5s\""),
    )
}

#[test]
fn sequential_http10_clients_share_a_few_upstream_connections() {
    let backend = Backend::start();
    let proxy = pooled_proxy(&backend, MAX_SIZE);

    for i in 0..1000 {
        let path = format!("/item/{i}");
        let r = client::get10(proxy.addr, &path);
        assert_eq!(r.status, 200, "request {i}: {}", r.body_str());
        assert_eq!(
            r.body,
            backend.expected_body("GET", &path),
            "request {i} body"
        );
    }

    let requests = backend.requests();
    assert_eq!(
        requests.len(),
        1000,
        "backend saw every request exactly once"
    );
    assert!(
        backend.accepted() <= MAX_SIZE,
        "1000 short client connections used {} backend connections (max_size {MAX_SIZE})",
        backend.accepted()
    );
    for r in &requests {
        assert_eq!(r.version, "HTTP/1.0", "upstream requests speak HTTP/1.0");
        assert!(
            r.wants_keepalive(),
            "upstream request {} lacks Connection: keep-alive: {:?}",
            r.target,
            r.headers
        );
    }
}

#[test]
fn concurrent_http10_clients_share_a_few_upstream_connections() {
    let backend = Backend::start();
    let max_size = 8;
    let proxy = pooled_proxy(&backend, max_size);
    let errors = Arc::new(AtomicUsize::new(0));
    let addr = proxy.addr;

    let workers: Vec<_> = (0..50)
        .map(|w| {
            let errors = errors.clone();
            let expected: Vec<(String, Vec<u8>)> = (0..20)
                .map(|i| {
                    let path = format!("/w{w}/r{i}");
                    let body = backend.expected_body("GET", &path);
                    (path, body)
                })
                .collect();
            thread::spawn(move || {
                for (path, body) in expected {
                    match client::try_get10(addr, &path) {
                        Ok(r) if r.status == 200 && r.body == body => {}
                        Ok(r) => {
                            eprintln!("{path}: {} {:?}", r.status, r.body_str());
                            errors.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => {
                            eprintln!("{path}: {e}");
                            errors.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("client thread");
    }

    assert_eq!(errors.load(Ordering::SeqCst), 0, "client-visible errors");
    assert_eq!(backend.request_count(), 1000);
    assert!(
        backend.accepted() <= max_size,
        "50 concurrent clients used {} backend connections (max_size {max_size})",
        backend.accepted()
    );
}

#[test]
fn upstream_connection_count_metric_matches_backend_accepts() {
    let backend = Backend::start();
    let proxy = Proxy::start(
        &ProxyConfig::single(&[backend.addr()])
            .pool("max_size", "4")
            .pool("min_idle", "2"),
    );
    let clients = 200;
    for i in 0..clients {
        let r = client::get10(proxy.addr, &format!("/m/{i}"));
        assert_eq!(r.status, 200);
    }

    // min_idle refills may still be in flight: let the two counts settle, then compare.
    let mut last = (0.0, 0);
    let settled = support::wait_until(Duration::from_secs(3), || {
        let opened = proxy.metric_or_zero(
            "longhaul_upstream_connections_opened_total",
            &[("upstream", "legacy")],
        );
        last = (opened, backend.accepted());
        opened == backend.accepted() as f64
    });
    assert!(
        settled,
        "longhaul_upstream_connections_opened_total = {} but the backend accepted {}",
        last.0, last.1
    );

    let downstream = proxy.metric_or_zero("longhaul_downstream_connections_total", &[]);
    assert_eq!(
        downstream, clients as f64,
        "longhaul_downstream_connections_total counts client connections (admin scrapes excluded)"
    );
    let upstream_requests = proxy.metric_or_zero(
        "longhaul_upstream_requests_total",
        &[("upstream", "legacy")],
    );
    assert_eq!(upstream_requests, backend.request_count() as f64);
    let reused = proxy.metric_or_zero(
        "longhaul_upstream_requests_total",
        &[("upstream", "legacy"), ("connection", "reused")],
    );
    assert!(
        reused >= (clients - 4) as f64,
        "reused requests {reused} of {clients}"
    );
    let ok = proxy.metric_or_zero(
        "longhaul_requests_total",
        &[("upstream", "legacy"), ("code", "200")],
    );
    assert_eq!(
        ok, clients as f64,
        "longhaul_requests_total{{code=\"200\"}}"
    );
    let max = proxy.metric_or_zero("longhaul_pool_max_connections", &[("upstream", "legacy")]);
    assert_eq!(max, 4.0, "longhaul_pool_max_connections reports max_size");
}

#[test]
fn pools_endpoint_reports_reuse_per_server() {
    let backend = Backend::start();
    let proxy = pooled_proxy(&backend, 2);
    for i in 0..100 {
        assert_eq!(client::get10(proxy.addr, &format!("/p/{i}")).status, 200);
    }
    let pools = proxy.pools();
    let upstream = pools["upstreams"]
        .as_array()
        .and_then(|a| a.iter().find(|u| u["name"] == "legacy"))
        .unwrap_or_else(|| panic!("no upstream `legacy` in /pools: {pools}"));
    assert_eq!(upstream["protocol"], "http/1.0");
    let server = &upstream["servers"][0];
    assert_eq!(server["address"], backend.addr().to_string(), "{pools}");
    assert_eq!(server["max_size"], 2, "{pools}");
    assert_eq!(
        server["opened"].as_u64(),
        Some(backend.accepted() as u64),
        "{pools}"
    );
    assert_eq!(server["requests"].as_u64(), Some(100), "{pools}");
    let ratio = server["reuse_ratio"].as_f64().unwrap_or(0.0);
    assert!(
        ratio >= 0.9,
        "reuse_ratio {ratio} after 100 requests over max_size 2: {pools}"
    );
    assert!(
        server["busy"].as_u64() == Some(0),
        "nothing in flight: {pools}"
    );
}

#[test]
fn http11_clients_sending_connection_close_still_share_upstream_connections() {
    let backend = Backend::start();
    let proxy = pooled_proxy(&backend, 2);
    for i in 0..50 {
        let path = format!("/close/{i}");
        let r = client::request(
            proxy.addr,
            format!("GET {path} HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.body, backend.expected_body("GET", &path));
    }
    assert!(
        backend.accepted() <= 2,
        "the client's `Connection: close` leaked upstream: {} backend connections",
        backend.accepted()
    );
    assert!(backend.requests().iter().all(|r| r.wants_keepalive()));
}

#[test]
fn mixed_methods_and_bodies_share_pooled_connections() {
    let backend = Backend::start();
    let proxy = pooled_proxy(&backend, 2);
    for i in 0..60 {
        let body = format!("payload-{i}-{}", "z".repeat(i * 37));
        let (raw, method, path) = match i % 4 {
            0 => (
                format!("GET /g/{i} HTTP/1.0\r\nHost: t\r\n\r\n"),
                "GET",
                format!("/g/{i}"),
            ),
            1 => (
                format!(
                    "POST /p/{i} HTTP/1.0\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ),
                "POST",
                format!("/p/{i}"),
            ),
            2 => (
                format!("HEAD /h/{i} HTTP/1.0\r\nHost: t\r\n\r\n"),
                "HEAD",
                format!("/h/{i}"),
            ),
            _ => (
                format!(
                    "PUT /u/{i} HTTP/1.0\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ),
                "PUT",
                format!("/u/{i}"),
            ),
        };
        let r = client::request(proxy.addr, raw.as_bytes());
        assert_eq!(r.status, 200, "{method} {path}");
        if method != "HEAD" {
            assert_eq!(
                r.body,
                backend.expected_body(method, &path),
                "{method} {path}"
            );
        }
    }
    assert!(
        backend.accepted() <= 2,
        "{} backend connections",
        backend.accepted()
    );
    for req in backend.requests() {
        if req.method == "POST" || req.method == "PUT" {
            let i: usize = req.target.rsplit('/').next().unwrap().parse().unwrap();
            let expected = format!("payload-{i}-{}", "z".repeat(i * 37));
            assert_eq!(
                req.body,
                expected.as_bytes(),
                "{} {}",
                req.method,
                req.target
            );
        }
    }
}

#[test]
fn idle_keepalive_clients_do_not_pin_upstream_connections() {
    // An upstream connection belongs to a request, not to a client connection: kept-alive clients
    // sitting idle must not exhaust a pool of one.
    let backend = Backend::start();
    let proxy = Proxy::start(
        &ProxyConfig::single(&[backend.addr()])
            .pool("max_size", "1")
            .pool("wait_timeout", "\"300ms\""),
    );
    let mut idle_clients = Vec::new();
    for i in 0..5 {
        let mut c = client::Client::connect(proxy.addr).expect("connect");
        let r = c
            .roundtrip(format!("GET /idle/{i} HTTP/1.1\r\nHost: test.local\r\n\r\n").as_bytes())
            .expect("response");
        assert_eq!(r.status, 200, "keep-alive client {i}: {}", r.body_str());
        idle_clients.push(c);
    }
    let r = client::get10(proxy.addr, "/short");
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(backend.accepted(), 1);
    drop(idle_clients);
}

#[test]
fn downstream_gauges_return_to_zero_after_clients_leave() {
    let backend = Backend::start();
    let proxy = pooled_proxy(&backend, 4);
    let addr = proxy.addr;
    let workers: Vec<_> = (0..8)
        .map(|w| {
            thread::spawn(move || {
                for i in 0..10 {
                    assert_eq!(client::get10(addr, &format!("/g/{w}/{i}")).status, 200);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("client thread");
    }
    let mut last = (f64::NAN, f64::NAN);
    let settled = support::wait_until(Duration::from_secs(3), || {
        let active = proxy.metric_or_zero("longhaul_downstream_connections_active", &[]);
        let busy = proxy.metric_or_zero(
            "longhaul_pool_connections",
            &[("upstream", "legacy"), ("state", "busy")],
        );
        last = (active, busy);
        active == 0.0 && busy == 0.0
    });
    assert!(
        settled,
        "after all clients left: downstream_connections_active = {}, pool busy = {}",
        last.0, last.1
    );
    assert_eq!(
        proxy.metric_or_zero("longhaul_downstream_connections_total", &[]),
        80.0
    );
}
