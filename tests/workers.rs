//! `[server] workers`: one event loop per worker, each with its own SO_REUSEPORT listener, all
//! sharing the pools (so `max_size` is a global cap), the limits, reload and drain.

mod support;

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use support::backend::Backend;
use support::client::{self, Client};
use support::proxy::{Proxy, ProxyConfig, log_field, log_message};

/// Logs each accepted client connection with the worker that accepted it.
const ACCEPT_LOG: &str = "\"info,longhaul::server=debug\"";

fn two_workers(backend: &Backend) -> ProxyConfig {
    ProxyConfig::single(&[backend.addr()])
        .server("workers", "2")
        .log("level", ACCEPT_LOG)
}

/// The workers that have logged `client connection accepted` so far.
fn accepting_workers(proxy: &Proxy) -> BTreeSet<u64> {
    proxy
        .log_lines()
        .iter()
        .filter(|v| log_message(v) == Some("client connection accepted"))
        .filter_map(|v| log_field(v, "worker").and_then(|w| w.as_u64()))
        .collect()
}

/// The `workers` field of the `longhaul started` line.
fn started_workers(proxy: &Proxy) -> Option<u64> {
    proxy
        .log_lines()
        .iter()
        .find(|v| log_message(v) == Some("longhaul started"))
        .and_then(|v| log_field(v, "workers").and_then(|w| w.as_u64()))
}

#[test]
fn without_a_workers_key_there_is_one_worker_per_core() {
    let backend = Backend::start();
    let text: String = ProxyConfig::single(&[backend.addr()])
        .render()
        .lines()
        .filter(|l| !l.starts_with("workers ="))
        .map(|l| format!("{l}\n"))
        .collect();
    let proxy = Proxy::start_raw(&text);
    let cores = thread::available_parallelism().expect("core count").get() as u64;
    assert_eq!(started_workers(&proxy), Some(cores));
}

#[test]
fn with_two_workers_both_event_loops_accept_connections() {
    let backend = Backend::start();
    let proxy = Proxy::start(&two_workers(&backend));
    assert_eq!(started_workers(&proxy), Some(2));
    // The kernel hashes each connection to one listener: 64 connections all landing on one of
    // two workers has odds of 2^-63.
    for i in 0..64 {
        let r = client::get10(proxy.addr, &format!("/c{i}"));
        assert_eq!(r.status, 200, "{}", r.body_str());
    }
    let all_logged = support::wait_until(Duration::from_secs(3), || {
        proxy
            .log_lines()
            .iter()
            .filter(|v| log_message(v) == Some("client connection accepted"))
            .count()
            == 64
    });
    assert!(all_logged, "not every accept was logged");
    assert_eq!(accepting_workers(&proxy), BTreeSet::from([0, 1]));
}

#[test]
fn with_two_workers_the_backend_never_sees_more_than_max_size_connections() {
    let backend = Backend::builder().delay(Duration::from_millis(20)).start();
    let max_size = 4;
    let proxy = Proxy::start(
        &two_workers(&backend)
            .pool("max_size", &max_size.to_string())
            .pool("wait_timeout", "\"10s\""),
    );
    let addr = proxy.addr;
    let clients: Vec<_> = (0..32)
        .map(|c| {
            thread::spawn(move || {
                (0..10)
                    .map(|i| client::try_get10(addr, &format!("/c{c}/r{i}")).map(|r| r.status))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let statuses: Vec<_> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client thread"))
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| matches!(s, Ok(200))).count(),
        320
    );
    assert_eq!(accepting_workers(&proxy), BTreeSet::from([0, 1]));
    assert_eq!(backend.request_count(), 320);
    assert_eq!(
        backend.accepted(),
        max_size,
        "32 concurrent clients on 2 workers, max_size {max_size}"
    );
}

#[test]
fn with_two_workers_sighup_reload_reaches_every_worker() {
    let backend = Backend::start();
    let base = two_workers(&backend);
    let proxy = Proxy::start(&base.clone().route("old.example", "/", "legacy"));
    let get = |host: &str| {
        client::request(
            proxy.addr,
            format!("GET /r HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes(),
        )
        .status
    };
    assert_eq!(get("new.example"), 404);
    std::fs::write(
        &proxy.config_path,
        base.route("new.example", "/", "legacy").render(),
    )
    .expect("rewrite config");
    proxy.signal("HUP");
    let reloaded = support::wait_until(Duration::from_secs(3), || get("new.example") == 200);
    assert!(reloaded, "the reloaded route never took effect");
    let before = proxy.log_lines().len();
    let after_reload: Vec<u16> = (0..64).map(|_| get("new.example")).collect();
    assert_eq!(after_reload, vec![200; 64]);
    let workers_after: BTreeSet<u64> = proxy.log_lines()[before..]
        .iter()
        .filter(|v| log_message(v) == Some("client connection accepted"))
        .filter_map(|v| log_field(v, "worker").and_then(|w| w.as_u64()))
        .collect();
    assert_eq!(workers_after, BTreeSet::from([0, 1]));
}

#[test]
fn with_two_workers_sigterm_drains_in_flight_requests_on_every_worker() {
    let backend = Backend::builder()
        .delay(Duration::from_millis(1500))
        .start();
    let mut proxy = Proxy::start(&two_workers(&backend).server("drain_timeout", "\"10s\""));
    let addr = proxy.addr;
    // Requests in flight until both workers hold at least one.
    let mut in_flight = Vec::new();
    while accepting_workers(&proxy).len() < 2 && in_flight.len() < 64 {
        let path = format!("/in-flight/{}", in_flight.len());
        in_flight.push(thread::spawn(move || client::try_get10(addr, &path)));
        let sent = in_flight.len();
        assert!(
            backend.wait_until(Duration::from_secs(3), |b| b.request_count() == sent),
            "request {sent} never reached the backend"
        );
    }
    assert_eq!(accepting_workers(&proxy), BTreeSet::from([0, 1]));
    proxy.signal("TERM");
    let refused = support::wait_until(Duration::from_secs(3), || {
        TcpStream::connect(addr).is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
    });
    assert!(refused, "a worker still accepts after SIGTERM");
    let sent = in_flight.len();
    let ok = in_flight
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .filter(|r| r.as_ref().is_ok_and(|r| r.status == 200))
        .count();
    assert_eq!(ok, sent, "in-flight requests answered after SIGTERM");
    let status = proxy.stop().expect("longhaul exits after draining");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn with_two_workers_one_free_connection_slot_serves_a_client_on_either_worker() {
    let backend = Backend::start();
    let proxy = Proxy::start(&two_workers(&backend).server("max_connections", "1"));
    // One slot, two listeners: each client must be served whichever worker the kernel picks,
    // not wait for the other worker's listener to see a connection.
    let statuses: Vec<u16> = (0..32)
        .map(|i| {
            let mut c = Client::connect(proxy.addr).expect("connect");
            c.set_read_timeout(Duration::from_secs(3));
            let request = format!("GET /one-slot/{i} HTTP/1.0\r\nHost: test.local\r\n\r\n");
            c.roundtrip(request.as_bytes()).map_or(0, |r| r.status)
        })
        .collect();
    assert_eq!(statuses, vec![200; 32]);
    assert_eq!(accepting_workers(&proxy), BTreeSet::from([0, 1]));
}
