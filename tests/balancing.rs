//! Several servers behind one upstream: each gets its own pool, traffic is spread, and a dead
//! server is taken out of rotation.

mod support;

use std::net::TcpListener;

use support::backend::Backend;
use support::client;
use support::proxy::{Proxy, ProxyConfig};

#[test]
fn round_robin_spreads_requests_over_servers_each_with_its_own_pool() {
    let a = Backend::start();
    let b = Backend::start();
    let proxy = Proxy::start(
        &ProxyConfig::single(&[a.addr(), b.addr()])
            .up("balance", "\"round_robin\"")
            .pool("max_size", "2"),
    );
    for i in 0..100 {
        let path = format!("/rr/{i}");
        let r = client::get10(proxy.addr, &path);
        assert_eq!(r.status, 200);
        assert_eq!(r.body, a.expected_body("GET", &path));
    }
    assert_eq!(a.request_count() + b.request_count(), 100);
    assert!(
        a.request_count() >= 40 && b.request_count() >= 40,
        "round robin split {} / {}",
        a.request_count(),
        b.request_count()
    );
    assert!(
        a.accepted() <= 2 && b.accepted() <= 2,
        "per-server max_size 2: {} / {}",
        a.accepted(),
        b.accepted()
    );
    for backend in [&a, &b] {
        let server = backend.addr().to_string();
        let opened = proxy.metric_or_zero(
            "longhaul_upstream_connections_opened_total",
            &[("upstream", "legacy"), ("server", server.as_str())],
        );
        assert_eq!(
            opened,
            backend.accepted() as f64,
            "opened_total for {server}"
        );
    }
}

#[test]
fn dead_server_is_ejected_and_traffic_goes_to_the_live_one() {
    let live = Backend::start();
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let proxy = Proxy::start(&ProxyConfig::single(&[dead, live.addr()]).pool("max_size", "2"));
    let mut failures = 0;
    for i in 0..60 {
        let r = client::get10(proxy.addr, &format!("/ej/{i}"));
        if r.status != 200 {
            failures += 1;
            assert_eq!(r.status, 502, "{}", r.body_str());
            assert!(
                i < 20,
                "request {i} still failed after the dead server should be ejected"
            );
        }
    }
    assert!(
        failures <= 5,
        "{failures} client-visible failures (health.max_failures = 5)"
    );
    let dead_s = dead.to_string();
    let up = proxy.metric(
        "longhaul_upstream_server_up",
        &[("server", dead_s.as_str())],
    );
    assert_eq!(
        up,
        Some(0.0),
        "longhaul_upstream_server_up for the dead server"
    );
    let live_s = live.addr().to_string();
    let up = proxy.metric(
        "longhaul_upstream_server_up",
        &[("server", live_s.as_str())],
    );
    assert_eq!(up, Some(1.0));
}
