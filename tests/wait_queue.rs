//! The wait queue in front of a server's pool: a burst larger than `max_size` waits its turn (up
//! to `wait_timeout`, default 5 s) instead of failing; waiters are served in arrival order; past
//! `max_waiters` a request gets 503 with `Retry-After` at once. Both rejections are counted in
//! `longhaul_pool_rejected_total{reason}`, whose series exist from start-up.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use support::backend::{self, Backend, Reply};
use support::client::{self, Response};
use support::proxy::{Proxy, ProxyConfig};

/// How often a held `/hold` request checks `release`, and how many times at most: a failed test
/// must not leave the backend's threads waiting forever (30 s).
const HOLD_POLL: Duration = Duration::from_millis(5);
const MAX_HOLD_POLLS: u32 = 6_000;

/// A backend that holds `/hold` requests until `release` is set (for at most 30 s) and answers
/// others at once.
fn gated_backend(release: Arc<AtomicBool>) -> Backend {
    Backend::builder()
        .responder(move |req| {
            if req.target.starts_with("/hold") {
                for _ in 0..MAX_HOLD_POLLS {
                    if release.load(Ordering::SeqCst) {
                        break;
                    }
                    thread::sleep(HOLD_POLL);
                }
            }
            let body = format!("ok {}\n", req.target);
            Reply::Raw {
                bytes: backend::http10_response(
                    200,
                    &[("Connection", "keep-alive")],
                    body.as_bytes(),
                ),
                keep_open: true,
            }
        })
        .start()
}

fn get_in_thread(addr: SocketAddr, path: &str) -> thread::JoinHandle<Response> {
    let path = path.to_string();
    thread::spawn(move || client::get10(addr, &path))
}

fn waiters(proxy: &Proxy) -> f64 {
    proxy.metric_or_zero("longhaul_pool_waiters", &[("upstream", "legacy")])
}

fn rejected(proxy: &Proxy, reason: &str) -> Option<f64> {
    proxy.metric(
        "longhaul_pool_rejected_total",
        &[("upstream", "legacy"), ("reason", reason)],
    )
}

#[test]
fn a_burst_of_six_slow_requests_on_a_pool_of_two_all_succeed_on_two_connections() {
    let backend = Backend::builder().delay(Duration::from_millis(500)).start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]).pool("max_size", "2"));
    let burst: Vec<_> = (0..6)
        .map(|i| get_in_thread(proxy.addr, &format!("/burst/{i}")))
        .collect();
    let statuses: Vec<u16> = burst
        .into_iter()
        .map(|t| t.join().expect("client thread").status)
        .collect();
    assert_eq!(statuses, [200; 6], "every request of the burst is served");
    assert_eq!(
        backend.accepted(),
        2,
        "the backend sees at most max_size connections"
    );
}

#[test]
fn waiters_are_served_in_arrival_order() {
    let release = Arc::new(AtomicBool::new(false));
    let backend = gated_backend(release.clone());
    let proxy = Proxy::start(
        &ProxyConfig::single(&[backend.addr()])
            .pool("max_size", "1")
            .pool("wait_timeout", "\"10s\""),
    );
    // Warm the single connection, then hold it.
    assert_eq!(client::get10(proxy.addr, "/warm").status, 200);
    let hold = get_in_thread(proxy.addr, "/hold");
    assert!(
        backend.wait_until(Duration::from_secs(5), |b| b.request_count() == 2),
        "the held request reached the backend"
    );
    // Queue five waiters one after another, each only once the previous one is waiting.
    let mut queued = Vec::new();
    for i in 0..5 {
        queued.push(get_in_thread(proxy.addr, &format!("/waiter/{i}")));
        let want = (i + 1) as f64;
        assert!(
            support::wait_until(Duration::from_secs(5), || waiters(&proxy) == want),
            "waiter {i} joined the queue (longhaul_pool_waiters = {})",
            waiters(&proxy)
        );
    }
    release.store(true, Ordering::SeqCst);
    assert_eq!(hold.join().expect("client thread").status, 200);
    for (i, t) in queued.into_iter().enumerate() {
        assert_eq!(t.join().expect("client thread").status, 200, "waiter {i}");
    }
    let order: Vec<String> = backend.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(
        order,
        [
            "/warm",
            "/hold",
            "/waiter/0",
            "/waiter/1",
            "/waiter/2",
            "/waiter/3",
            "/waiter/4"
        ],
        "the one connection served its waiters first come, first served"
    );
    assert_eq!(backend.accepted(), 1);
}

#[test]
fn past_max_waiters_a_request_gets_503_with_retry_after_at_once() {
    let release = Arc::new(AtomicBool::new(false));
    let backend = gated_backend(release.clone());
    let proxy = Proxy::start(
        &ProxyConfig::single(&[backend.addr()])
            .pool("max_size", "1")
            .pool("max_waiters", "1")
            .pool("wait_timeout", "\"30s\""),
    );
    let hold = get_in_thread(proxy.addr, "/hold");
    assert!(backend.wait_until(Duration::from_secs(5), |b| b.request_count() == 1));
    let waiter = get_in_thread(proxy.addr, "/waiter");
    assert!(support::wait_until(Duration::from_secs(5), || waiters(
        &proxy
    ) == 1.0));

    let refused = client::get10(proxy.addr, "/one-too-many");
    assert_eq!(refused.status, 503, "{}", refused.body_str());
    assert_eq!(refused.header("Retry-After"), Some("1"));
    assert!(
        refused.body_str().contains("max_waiters"),
        "the body names the limit: {}",
        refused.body_str()
    );
    // "At once": answered while the held request and the waiter are both still pending.
    assert!(!hold.is_finished() && !waiter.is_finished());
    assert_eq!(rejected(&proxy, "queue_full"), Some(1.0));
    assert_eq!(rejected(&proxy, "wait_timeout"), Some(0.0));

    release.store(true, Ordering::SeqCst);
    assert_eq!(hold.join().expect("client thread").status, 200);
    assert_eq!(waiter.join().expect("client thread").status, 200);
    let targets: Vec<String> = backend.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(
        targets,
        ["/hold", "/waiter"],
        "the refused request never left"
    );
}

#[test]
fn a_request_that_waits_past_wait_timeout_gets_503_with_retry_after() {
    let release = Arc::new(AtomicBool::new(false));
    let backend = gated_backend(release.clone());
    let proxy = Proxy::start(
        &ProxyConfig::single(&[backend.addr()])
            .pool("max_size", "1")
            .pool("wait_timeout", "\"300ms\""),
    );
    let hold = get_in_thread(proxy.addr, "/hold");
    assert!(backend.wait_until(Duration::from_secs(5), |b| b.request_count() == 1));

    let started = support::Stopwatch::start();
    let late = client::get10(proxy.addr, "/late");
    let waited = started.elapsed();
    assert_eq!(late.status, 503, "{}", late.body_str());
    assert_eq!(late.header("Retry-After"), Some("1"));
    assert!(
        late.body_str().contains("no free connection within 300ms"),
        "{}",
        late.body_str()
    );
    assert!(
        waited >= Duration::from_millis(300),
        "answered after {waited:?}"
    );
    assert!(!hold.is_finished(), "the held request is still pending");
    assert_eq!(rejected(&proxy, "wait_timeout"), Some(1.0));
    assert_eq!(rejected(&proxy, "queue_full"), Some(0.0));

    release.store(true, Ordering::SeqCst);
    assert_eq!(hold.join().expect("client thread").status, 200);
}

#[test]
fn rejection_series_are_exported_at_zero_before_any_traffic() {
    let a = Backend::start();
    let b = Backend::start();
    let proxy = Proxy::start(&ProxyConfig::single(&[a.addr(), b.addr()]));
    for server in [a.addr().to_string(), b.addr().to_string()] {
        for reason in ["queue_full", "wait_timeout"] {
            assert_eq!(
                proxy.metric(
                    "longhaul_pool_rejected_total",
                    &[
                        ("upstream", "legacy"),
                        ("server", server.as_str()),
                        ("reason", reason)
                    ],
                ),
                Some(0.0),
                "{server} {reason}"
            );
        }
    }
    assert_eq!(a.request_count() + b.request_count(), 0);
}
