//! What clients get when the upstream cannot answer: 502 (refused, reset, garbage), 503 (pool
//! exhausted), 504 (no response head in time), each with a short body naming the upstream, the
//! cause and the request id. (No route, 404, is in routing.rs.)

mod support;

use std::thread;
use std::time::Duration;

use support::Stopwatch;
use support::backend::Backend;
use support::client::{self, Response};
use support::faults::RefusingPort;
use support::proxy::{Proxy, ProxyConfig};

/// The error body names `what` (the upstream), says why in words containing one of `cause`, and
/// carries the response's request id.
fn assert_error_body(r: &Response, what: &str, cause: &[&str]) {
    let body = r.body_str();
    let lower = body.to_ascii_lowercase();
    assert!(
        lower.contains(&what.to_ascii_lowercase()),
        "{} body should name {what:?}: {body:?}",
        r.status
    );
    assert!(
        cause.iter().any(|c| lower.contains(c)),
        "{} body should give the cause (one of {cause:?}): {body:?}",
        r.status
    );
    let id = r
        .header("x-request-id")
        .unwrap_or_else(|| panic!("{} without X-Request-Id", r.status));
    assert!(
        body.contains(id),
        "{} body should carry the request id {id}: {body:?}",
        r.status
    );
}

#[test]
fn connect_refused_gives_502() {
    let dead = RefusingPort::new();
    let proxy = Proxy::start(&ProxyConfig::single(&[dead.addr]));
    let started = Stopwatch::start();
    let r = client::get10(proxy.addr, "/x");
    assert_eq!(r.status, 502, "{}", r.body_str());
    assert_error_body(&r, "legacy", &["connect", "refused"]);
    assert!(started.elapsed() < Duration::from_secs(5));
    let errors = proxy.metric_or_zero(
        "longhaul_upstream_errors_total",
        &[("upstream", "legacy"), ("kind", "connect")],
    );
    assert!(
        errors >= 1.0,
        "longhaul_upstream_errors_total{{kind=\"connect\"}} = {errors}"
    );
}

#[test]
fn a_failed_request_is_counted_under_its_upstream_with_the_status_the_client_got() {
    let dead = RefusingPort::new();
    let proxy = Proxy::start(&ProxyConfig::single(&[dead.addr]));

    let r = client::get10(proxy.addr, "/x");

    assert_eq!(r.status, 502, "{}", r.body_str());
    let counted = |upstream| {
        let labels = [("upstream", upstream), ("code", "502")];
        proxy.metric_or_zero("longhaul_requests_total", &labels)
    };
    assert_eq!(
        [counted("legacy"), counted("none")],
        [1.0, 0.0],
        "requests_total for 502 under upstream legacy and none"
    );
}

#[test]
fn response_timeout_gives_504() {
    let backend = Backend::builder().never_answer().start();
    let proxy =
        Proxy::start(&ProxyConfig::single(&[backend.addr()]).up("response_timeout", "\"300ms\""));
    let started = Stopwatch::start();
    let r = client::get10(proxy.addr, "/hang");
    let elapsed = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.body_str());
    assert_error_body(&r, "legacy", &["timeout", "timed out", "no response"]);
    assert!(
        elapsed >= Duration::from_millis(250),
        "504 before the timeout: {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(3), "504 took {elapsed:?}");
    assert_eq!(backend.request_count(), 1, "a timed-out GET is not retried");
}

#[test]
fn request_timeout_bounds_the_whole_request_with_504() {
    // The backend answers nothing; response_timeout is long, the whole-request guard is short.
    let backend = Backend::builder().never_answer().start();
    let proxy = Proxy::start(
        &ProxyConfig::single(&[backend.addr()])
            .up("response_timeout", "\"30s\"")
            .server("request_timeout", "\"400ms\""),
    );
    let started = Stopwatch::start();
    let r = client::get10(proxy.addr, "/hang");
    let elapsed = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.body_str());
    assert!(r.body_str().contains("request_timeout"), "{}", r.body_str());
    assert!(
        elapsed >= Duration::from_millis(350) && elapsed < Duration::from_secs(5),
        "504 after {elapsed:?}, request_timeout is 400ms"
    );
}

#[test]
fn pool_wait_timeout_gives_503() {
    let backend = Backend::builder()
        .delay(Duration::from_millis(1500))
        .start();
    let proxy = Proxy::start(
        &ProxyConfig::single(&[backend.addr()])
            .pool("max_size", "1")
            .pool("wait_timeout", "\"200ms\""),
    );
    let addr = proxy.addr;
    let busy = thread::spawn(move || client::get10(addr, "/busy"));
    assert!(
        backend.wait_until(Duration::from_secs(3), |b| b.request_count() == 1),
        "the first request never reached the backend"
    );
    let started = Stopwatch::start();
    let r = client::get10(proxy.addr, "/waiting");
    let elapsed = started.elapsed();
    assert_eq!(r.status, 503, "{}", r.body_str());
    assert_error_body(&r, "legacy", &["pool", "no free connection", "wait"]);
    assert!(
        elapsed < Duration::from_millis(1200),
        "503 should come after wait_timeout, took {elapsed:?}"
    );
    let first = busy.join().expect("busy client");
    assert_eq!(
        first.status, 200,
        "the request holding the connection still completes"
    );
    assert_eq!(
        backend.request_count(),
        1,
        "the 503 request never reached the backend"
    );
    let pool_timeouts = proxy.metric_or_zero(
        "longhaul_upstream_errors_total",
        &[("upstream", "legacy"), ("kind", "pool_timeout")],
    );
    assert_eq!(
        pool_timeouts, 1.0,
        "longhaul_upstream_errors_total{{kind=\"pool_timeout\"}}"
    );
}

#[test]
fn garbage_from_the_backend_gives_502() {
    let backend = Backend::builder()
        .responder(|_| support::backend::Reply::Raw {
            bytes: b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec(),
            keep_open: false,
        })
        .start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]));
    let r = client::get10(proxy.addr, "/garbage");
    assert_eq!(r.status, 502, "{}", r.body_str());
    assert_error_body(&r, "legacy", &["invalid", "protocol", "parse", "malformed"]);
    let protocol = proxy.metric_or_zero(
        "longhaul_upstream_errors_total",
        &[("upstream", "legacy"), ("kind", "protocol")],
    );
    assert!(
        protocol >= 1.0,
        "longhaul_upstream_errors_total{{kind=\"protocol\"}} = {protocol}"
    );
}

#[test]
fn reset_by_the_backend_gives_502() {
    let backend = Backend::builder()
        .close_without_answer(|_| true)
        .rst()
        .start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]));
    let r = client::get10(proxy.addr, "/reset");
    assert_eq!(r.status, 502, "{}", r.body_str());
    assert_error_body(&r, "legacy", &["reset", "closed", "connection"]);
}
