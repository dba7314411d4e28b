//! The adaptive pool (issue #12): below `max_size`, the number of connections a server gets at
//! once follows how many it really serves; a prefork-like scripted backend plays the server.

mod support;

use std::time::Duration;

use support::backend::{Backend, BackendBuilder};
use support::client::Load;
use support::proxy::{Proxy, ProxyConfig, log_field, log_message};
use support::wait_until;

const MAX_SIZE: usize = 16;
const CLIENTS: usize = 24;
/// Bound on every wait for the limit to move.
const SETTLE: Duration = Duration::from_secs(20);

/// Serves `n` connections at a time; each closes after 1000 requests or 500 ms idle (as Apache's
/// MaxKeepAliveRequests and KeepAliveTimeout), so a connection waiting in its queue is picked up
/// in the end. Not sooner: a queue that turns over every few milliseconds (20 requests per
/// connection, at loopback rates) answers within the late threshold, and the server then does
/// serve more than `n` at once as far as any client can tell.
fn prefork(n: usize) -> BackendBuilder {
    Backend::builder()
        .serving_at_most(n)
        .close_after(1000)
        .idle_close(Duration::from_millis(500))
}

fn proxy(backend: &Backend, adaptive: bool) -> Proxy {
    Proxy::start(
        &ProxyConfig::single(&[backend.addr()])
            .pool("max_size", &MAX_SIZE.to_string())
            .pool("adaptive", &adaptive.to_string()),
    )
}

/// A backend that serves 4 connections at a time, a proxy in front of it, and `CLIENTS`
/// clients sending GETs through it until the returned `Load` is finished or dropped.
fn serving_four_under_load(adaptive: bool) -> (Backend, Proxy, Load) {
    let backend = prefork(4).start();
    let proxy = proxy(&backend, adaptive);
    let load = Load::get10(proxy.addr, CLIENTS, "/");
    (backend, proxy, load)
}

fn limit(proxy: &Proxy) -> f64 {
    proxy.metric_or_zero("longhaul_pool_limit", &[("upstream", "legacy")])
}

fn limit_reaches(proxy: &Proxy, cond: impl Fn(f64) -> bool) -> bool {
    wait_until(SETTLE, || cond(limit(proxy)))
}

#[test]
fn the_limit_falls_to_within_one_probe_of_the_four_connections_a_backend_serves() {
    let (_backend, proxy, _load) = serving_four_under_load(true);

    assert!(
        limit_reaches(&proxy, |l| l <= 5.0),
        "limit {} against a backend serving 4",
        limit(&proxy)
    );
}

#[test]
fn requests_beyond_the_limit_wait_in_longhaul_and_none_fails() {
    let (_backend, proxy, load) = serving_four_under_load(true);
    assert!(limit_reaches(&proxy, |l| l <= 5.0));
    assert!(wait_until(SETTLE, || load.ok() >= 2000));

    let (ok, errors, first) = load.finish();
    assert_eq!(errors, 0, "{errors} failed of {}: {first:?}", ok + errors);
}

#[test]
fn no_get_waits_behind_a_connection_a_small_device_never_picks_up() {
    // A device serving 4 connections and keeping them: a fifth waits in its accept queue for
    // as long as the load lasts. A GET sent on one moves to a served connection; had it stayed,
    // it would end in a 504 after response_timeout.
    let device = Backend::builder().serving_at_most(4).start();
    let proxy = Proxy::start(
        &ProxyConfig::single(&[device.addr()])
            .up("response_timeout", "\"5s\"")
            .pool("max_size", &MAX_SIZE.to_string())
            .pool("adaptive", "true"),
    );
    let load = Load::get10(proxy.addr, CLIENTS, "/");
    assert!(wait_until(SETTLE, || load.ok() >= 2000));

    let (ok, errors, first) = load.finish();

    assert_eq!(errors, 0, "{errors} failed of {}: {first:?}", ok + errors);
    let moved = proxy.metric_or_zero(
        "longhaul_upstream_retries_total",
        &[("upstream", "legacy"), ("reason", "not_picked_up")],
    );
    assert!(
        moved >= 1.0,
        "no request had to move: the test did not exercise it"
    );
}

#[test]
fn the_pools_page_shows_the_limit_next_to_max_size() {
    let (_backend, proxy, _load) = serving_four_under_load(true);
    assert!(limit_reaches(&proxy, |l| l <= 5.0));

    let pools = proxy.pools();
    let server = &pools["upstreams"][0]["servers"][0];
    assert_eq!(server["max_size"], MAX_SIZE, "{pools}");
    assert!(
        server["limit"]
            .as_u64()
            .is_some_and(|l| l < MAX_SIZE as u64),
        "{pools}"
    );
}

#[test]
fn the_log_says_why_the_limit_fell_below_max_size() {
    let (_backend, proxy, _load) = serving_four_under_load(true);

    let line = proxy.wait_for_log(SETTLE, |l| {
        log_message(l).is_some_and(|m| m.starts_with("pool limit below max_size"))
    });
    let line = line.unwrap_or_else(|| panic!("no such line in {}", proxy.stderr()));
    let message = log_message(&line).unwrap_or_default();
    assert!(message.contains("unanswered"), "{line}");
    assert_eq!(
        log_field(&line, "max_size"),
        Some(&MAX_SIZE.into()),
        "{line}"
    );
}

#[test]
fn the_limit_grows_when_the_backend_serves_more_connections() {
    let (backend, proxy, _load) = serving_four_under_load(true);
    assert!(limit_reaches(&proxy, |l| l <= 5.0));

    backend.set_serving(10);

    assert!(
        limit_reaches(&proxy, |l| l >= 10.0),
        "limit {} once the backend serves 10",
        limit(&proxy)
    );
}

#[test]
fn the_limit_recovers_to_max_size_once_the_backend_serves_everything() {
    let (backend, proxy, _load) = serving_four_under_load(true);
    assert!(limit_reaches(&proxy, |l| l <= 5.0));

    backend.set_serving(usize::MAX);

    assert!(
        limit_reaches(&proxy, |l| l == MAX_SIZE as f64),
        "limit {} once the backend serves everything",
        limit(&proxy)
    );
}

#[test]
fn a_backend_that_serves_everything_gets_the_full_pool_under_load() {
    let backend = Backend::builder().delay(Duration::from_millis(5)).start();
    let proxy = proxy(&backend, true);
    let _load = Load::get10(proxy.addr, CLIENTS, "/");

    assert!(
        wait_until(SETTLE, || backend.accepted() >= MAX_SIZE),
        "{} connections opened of max_size {MAX_SIZE}, limit {}",
        backend.accepted(),
        limit(&proxy)
    );
}

#[test]
fn posts_held_back_by_the_limit_are_each_sent_once() {
    let backend = prefork(4).start();
    let proxy = proxy(&backend, true);
    let raw = b"POST /form HTTP/1.0\r\nHost: test.local\r\nContent-Length: 3\r\n\r\nabc";
    let load = Load::start(proxy.addr, CLIENTS, raw);
    assert!(limit_reaches(&proxy, |l| l <= 5.0));
    let (ok, errors, first) = load.finish();

    assert_eq!(errors, 0, "{first:?}");
    assert!(
        wait_until(SETTLE, || backend.request_count() == ok),
        "{} POSTs reached the backend for {ok} answered",
        backend.request_count()
    );
}

#[test]
fn with_adaptive_off_the_limit_is_max_size() {
    let (backend, proxy, _load) = serving_four_under_load(false);
    assert!(wait_until(SETTLE, || backend.request_count() >= 500));

    assert_eq!(limit(&proxy), MAX_SIZE as f64);
}

#[test]
fn with_adaptive_off_the_pool_opens_max_size_connections_whatever_the_backend_serves() {
    let (backend, _proxy, _load) = serving_four_under_load(false);

    assert!(
        wait_until(SETTLE, || backend.accepted() >= MAX_SIZE),
        "{} connections opened of max_size {MAX_SIZE}",
        backend.accepted()
    );
}
