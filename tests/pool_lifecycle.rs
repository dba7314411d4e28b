//! When pooled connections are opened and retired: min_idle warm-up, max_requests (configured and
//! announced by the backend's `Keep-Alive: max=N`), max_lifetime and idle_timeout.

mod support;

use std::thread;
use std::time::Duration;

use support::backend::{Backend, Closed};
use support::client;
use support::proxy::{Proxy, ProxyConfig};

fn max_requests_per_connection(backend: &Backend) -> usize {
    backend
        .connections()
        .iter()
        .map(|c| c.requests.len())
        .max()
        .unwrap_or(0)
}

#[test]
fn min_idle_connections_are_opened_at_start() {
    let backend = Backend::start();
    let proxy = Proxy::start(
        &ProxyConfig::single(&[backend.addr()])
            .pool("max_size", "4")
            .pool("min_idle", "2"),
    );
    assert!(
        backend.wait_until(Duration::from_secs(3), |b| b.accepted() == 2),
        "min_idle = 2 should open 2 connections without traffic; backend accepted {}",
        backend.accepted()
    );
    // A fixed wait on purpose: a pool sweep that opens nothing leaves no trace; 1.2 s outlasts one
    // (every idle_timeout / 4, at most 1 s).
    thread::sleep(Duration::from_millis(1200));
    assert_eq!(backend.accepted(), 2, "no more than min_idle while idle");
    assert_eq!(backend.request_count(), 0, "warm-up sends no requests");
    let r = client::get10(proxy.addr, "/first");
    assert_eq!(r.status, 200);
    let first = backend
        .requests()
        .into_iter()
        .find(|r| r.target == "/first")
        .expect("/first arrived");
    assert!(
        first.conn < 2 && first.index == 0,
        "the first request should use a warm connection, used #{} (request {} on it)",
        first.conn,
        first.index
    );
}

#[test]
fn pool_max_requests_retires_connections() {
    let backend = Backend::start();
    let proxy = Proxy::start(
        &ProxyConfig::single(&[backend.addr()])
            .pool("max_size", "1")
            .pool("max_requests", "5"),
    );
    for i in 0..50 {
        let path = format!("/mr/{i}");
        let r = client::get10(proxy.addr, &path);
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.body, backend.expected_body("GET", &path));
    }
    assert_eq!(
        max_requests_per_connection(&backend),
        5,
        "max_requests = 5 per connection"
    );
    assert_eq!(backend.accepted(), 10);
    let retired = proxy.metric_or_zero(
        "longhaul_upstream_connections_closed_total",
        &[("upstream", "legacy"), ("reason", "max_requests")],
    );
    assert!(
        retired >= 9.0,
        "closed_total{{reason=\"max_requests\"}} = {retired}"
    );
}

#[test]
fn announced_keepalive_max_is_respected() {
    // The backend announces `Keep-Alive: timeout=30, max=3` but would accept more: staying within
    // the announcement is longhaul's job.
    let backend = Backend::builder().announce_keepalive(30, 3).start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]).pool("max_size", "1"));
    for i in 0..12 {
        let r = client::get10(proxy.addr, &format!("/ka/{i}"));
        assert_eq!(r.status, 200);
    }
    assert_eq!(backend.request_count(), 12);
    assert!(
        max_requests_per_connection(&backend) <= 3,
        "a connection carried {} requests after the backend announced max=3",
        max_requests_per_connection(&backend)
    );
}

#[test]
fn max_lifetime_retires_old_connections() {
    let backend = Backend::start();
    let proxy = Proxy::start(
        &ProxyConfig::single(&[backend.addr()])
            .pool("max_size", "1")
            .pool("max_lifetime", "\"300ms\""),
    );
    for i in 0..12 {
        let r = client::get10(proxy.addr, &format!("/life/{i}"));
        assert_eq!(r.status, 200);
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        backend.accepted() >= 3,
        "1.2 s of traffic with max_lifetime 300ms used {} connection(s)",
        backend.accepted()
    );
    assert!(
        max_requests_per_connection(&backend) <= 4,
        "a 300ms connection served {} requests 100ms apart",
        max_requests_per_connection(&backend)
    );
}

#[test]
fn idle_timeout_closes_idle_connections_from_the_proxy_side() {
    let backend = Backend::start();
    let proxy = Proxy::start(
        &ProxyConfig::single(&[backend.addr()])
            .pool("max_size", "2")
            .pool("idle_timeout", "\"200ms\""),
    );
    assert_eq!(client::get10(proxy.addr, "/idle").status, 200);
    assert!(
        backend.wait_until(Duration::from_secs(3), |b| b.connections()[0].closed
            == Closed::ByPeer),
        "the idle connection was not closed by longhaul: {:?}",
        backend.connections()[0].closed
    );
    let closed = proxy.metric_or_zero(
        "longhaul_upstream_connections_closed_total",
        &[("upstream", "legacy"), ("reason", "idle_timeout")],
    );
    assert_eq!(closed, 1.0, "closed_total{{reason=\"idle_timeout\"}}");
    // And the pool still works afterwards.
    assert_eq!(client::get10(proxy.addr, "/again").status, 200);
    assert_eq!(backend.accepted(), 2);
}
