//! Pooled connections the backend closed while they sat idle: the stale-close race must stay
//! invisible to clients for idempotent requests, and a non-idempotent request must never be sent
//! twice.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use support::Stopwatch;
use support::backend::{Backend, Closed, Request};
use support::client;
use support::proxy::{Proxy, ProxyConfig};

/// How many requests with `method` reached the backend (read after an answered probe).
fn sent_with_method(proxy: &Proxy, backend: &Backend, method: &str) -> usize {
    requests_before_a_probe(proxy, backend)
        .iter()
        .filter(|r| r.method == method)
        .count()
}

/// What the backend saw once a probe sent after the request under test has been answered: the
/// negative checks below without a sleep. A retry would have reached the backend before the proxy
/// answered the request it retried, so before the probe.
fn requests_before_a_probe(proxy: &Proxy, backend: &Backend) -> Vec<Request> {
    let probe = client::get10(proxy.addr, "/probe");
    assert_eq!(probe.status, 200, "probe: {}", probe.body_str());
    backend
        .requests()
        .into_iter()
        .filter(|r| r.target != "/probe")
        .collect()
}

/// Sends `bursts` bursts of `clients` x `per_client` short HTTP/1.0 GETs, pausing `pauses[i % len]`
/// between bursts; returns the client-visible errors.
fn bursts(
    proxy: &Proxy,
    backend: &Backend,
    bursts: usize,
    clients: usize,
    per_client: usize,
    pauses: &[u64],
) -> Vec<String> {
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let done = Arc::new(AtomicUsize::new(0));
    for b in 0..bursts {
        let workers: Vec<_> = (0..clients)
            .map(|c| {
                let errors = errors.clone();
                let done = done.clone();
                let addr = proxy.addr;
                let expected: Vec<(String, Vec<u8>)> = (0..per_client)
                    .map(|i| {
                        let path = format!("/b{b}/c{c}/r{i}");
                        let body = backend.expected_body("GET", &path);
                        (path, body)
                    })
                    .collect();
                thread::spawn(move || {
                    for (path, body) in expected {
                        let outcome = match client::try_get10(addr, &path) {
                            Ok(r) if r.status == 200 && r.body == body => None,
                            Ok(r) => Some(format!("{path}: {} {}", r.status, r.body_str().trim())),
                            Err(e) => Some(format!("{path}: {e}")),
                        };
                        if let Some(e) = outcome {
                            errors.lock().unwrap().push(e);
                        }
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("client thread");
        }
        if b + 1 < bursts {
            thread::sleep(Duration::from_millis(pauses[b % pauses.len()]));
        }
    }
    assert_eq!(done.load(Ordering::SeqCst), bursts * clients * per_client);
    errors.lock().unwrap().clone()
}

#[test]
fn stale_close_race_gives_no_client_errors() {
    // The backend drops connections idle for 200 ms and does not announce it; clients pause around
    // that value between bursts, so pooled connections are closed just before, during and after reuse.
    let backend = Backend::builder()
        .idle_close(Duration::from_millis(200))
        .start();
    let proxy = Proxy::start(
        &ProxyConfig::single(&[backend.addr()])
            .pool("max_size", "8")
            .pool("wait_timeout", "\"5s\""),
    );
    let started = Stopwatch::start();
    let errors = bursts(
        &proxy,
        &backend,
        20,
        10,
        10,
        &[150, 195, 200, 205, 210, 250, 199, 201],
    );
    assert!(
        errors.is_empty(),
        "{} of 2000 requests failed in the stale-close race, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert_eq!(
        backend.request_count(),
        2000,
        "each GET answered exactly once by the backend"
    );
    assert!(
        backend
            .connections()
            .iter()
            .any(|c| c.closed == Closed::IdleTimeout),
        "the backend never closed an idle connection: the test did not exercise the race"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn stale_close_race_with_unpredictable_backend_timeout_gives_no_client_errors() {
    // Every idle wait at the backend ends after a different 40..400 ms, so no learned timeout
    // keeps longhaul clear of the race: stale reused connections must be detected or retried.
    let backend = Backend::builder()
        .idle_close_between(Duration::from_millis(40), Duration::from_millis(400))
        .start();
    let proxy = Proxy::start(
        &ProxyConfig::single(&[backend.addr()])
            .pool("max_size", "8")
            .pool("wait_timeout", "\"5s\""),
    );
    let errors = bursts(
        &proxy,
        &backend,
        20,
        10,
        5,
        &[30, 60, 90, 120, 150, 200, 250, 300],
    );
    assert!(
        errors.is_empty(),
        "{} of 1000 requests failed against a backend with an unpredictable keep-alive timeout, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(
        backend
            .connections()
            .iter()
            .any(|c| c.closed == Closed::IdleTimeout)
    );
}

#[test]
fn stale_reset_race_gives_no_client_errors() {
    // Same race, but the backend resets (RST) idle connections instead of closing them cleanly.
    let backend = Backend::builder()
        .idle_close(Duration::from_millis(150))
        .rst()
        .start();
    let proxy = Proxy::start(
        &ProxyConfig::single(&[backend.addr()])
            .pool("max_size", "4")
            .pool("wait_timeout", "\"5s\""),
    );
    let errors = bursts(&proxy, &backend, 10, 5, 10, &[140, 150, 160, 200]);
    assert!(
        errors.is_empty(),
        "{} of 500 requests failed when idle connections were reset, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(
        backend
            .connections()
            .iter()
            .any(|c| c.closed == Closed::IdleTimeout)
    );
}

#[test]
fn post_on_connection_closed_after_read_gets_502_and_is_sent_once() {
    // Put a connection in the pool, then the backend reads the POST on it and closes without a word.
    let backend = Backend::builder()
        .close_without_answer(|req| req.method == "POST")
        .start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]).pool("max_size", "1"));
    assert_eq!(client::get10(proxy.addr, "/warm").status, 200);

    let started = Stopwatch::start();
    let r = client::request(
        proxy.addr,
        b"POST /charge HTTP/1.0\r\nHost: test.local\r\nContent-Length: 9\r\n\r\namount=10",
    );
    assert_eq!(r.status, 502, "{}", r.body_str());
    assert!(
        r.body_str().contains("legacy"),
        "the 502 body names the upstream: {:?}",
        r.body_str()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "502 took {:?}",
        started.elapsed()
    );

    let posts: Vec<_> = requests_before_a_probe(&proxy, &backend)
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(
        posts.len(),
        1,
        "a POST whose bytes were written must not be retried"
    );
    assert_eq!(posts[0].body, b"amount=10");
    assert_eq!(
        posts[0].index, 1,
        "the POST went out on the reused (pooled) connection"
    );
}

#[test]
fn get_on_reused_connection_closed_after_read_is_retried_on_a_new_one() {
    // The backend reads a GET that arrives on a reused connection and closes without answering:
    // zero response bytes on a reused connection and an idempotent method -> one retry, fresh connection.
    let backend = Backend::builder()
        .close_without_answer(|req| req.method == "GET" && req.index > 0 && req.target == "/flaky")
        .start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]).pool("max_size", "1"));
    assert_eq!(client::get10(proxy.addr, "/warm").status, 200);
    let r = client::get10(proxy.addr, "/flaky");
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.body, backend.expected_body("GET", "/flaky"));

    let flaky: Vec<_> = backend
        .requests()
        .into_iter()
        .filter(|r| r.target == "/flaky")
        .collect();
    assert_eq!(
        flaky.len(),
        2,
        "sent once on the stale connection, once on a new one"
    );
    assert_eq!(flaky[1].index, 0, "the retry used a new connection");
    let retries = proxy.metric_or_zero(
        "longhaul_upstream_retries_total",
        &[("upstream", "legacy"), ("reason", "stale_reused")],
    );
    assert_eq!(
        retries, 1.0,
        "longhaul_upstream_retries_total{{reason=\"stale_reused\"}}"
    );
}

#[test]
fn announced_keepalive_timeout_is_learned() {
    let backend = Backend::builder()
        .announce_keepalive(3, 100)
        .idle_close(Duration::from_secs(3))
        .start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]));
    assert_eq!(client::get10(proxy.addr, "/ka").status, 200);
    let learned = proxy.metric(
        "longhaul_upstream_keepalive_timeout_seconds",
        &[("upstream", "legacy")],
    );
    assert_eq!(learned, Some(3.0), "learned Keep-Alive: timeout=3");
    let pools = proxy.pools();
    assert_eq!(
        pools["upstreams"][0]["servers"][0]["keepalive_timeout_seconds"].as_f64(),
        Some(3.0),
        "{pools}"
    );
}

#[test]
fn post_on_connection_reset_after_read_gets_502_and_is_sent_once() {
    // As above, but the backend resets the connection (RST) instead of closing it.
    let backend = Backend::builder()
        .close_without_answer(|req| req.method == "POST")
        .rst()
        .start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]).pool("max_size", "1"));
    assert_eq!(client::get10(proxy.addr, "/warm").status, 200);
    let r = client::request(
        proxy.addr,
        b"POST /charge HTTP/1.0\r\nHost: test.local\r\nContent-Length: 9\r\n\r\namount=10",
    );
    assert_eq!(r.status, 502, "{}", r.body_str());
    let posts = sent_with_method(&proxy, &backend, "POST");
    assert_eq!(
        posts, 1,
        "a POST whose bytes were written must not be retried"
    );
    // The pool recovers: the next request gets a fresh connection.
    let after = client::get10(proxy.addr, "/after");
    assert_eq!(after.status, 200);
}

#[test]
fn get_that_keeps_failing_is_retried_at_most_once() {
    // Every /doomed request is read and dropped. On a reused connection one retry on a new
    // connection is allowed; when that fails too, the client gets 502 and no more attempts.
    let backend = Backend::builder()
        .close_without_answer(|req| req.target == "/doomed")
        .start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]).pool("max_size", "2"));
    assert_eq!(client::get10(proxy.addr, "/warm").status, 200);
    let r = client::get10(proxy.addr, "/doomed");
    assert_eq!(r.status, 502, "{}", r.body_str());
    let attempts = requests_before_a_probe(&proxy, &backend)
        .iter()
        .filter(|r| r.target == "/doomed")
        .count();
    // The pool hands out its most recently used connection first (LIFO): /doomed goes on the
    // connection /warm used (reused, so retried once), then on a fresh one (not retried).
    assert_eq!(
        attempts, 2,
        "/doomed reached the backend {attempts} times; exactly one retry is allowed"
    );
}

#[test]
fn get_on_fresh_connection_closed_after_read_is_not_retried() {
    // Nothing was pooled: a failure on a brand-new connection is the backend's answer, not a stale
    // connection, so it is not retried.
    let backend = Backend::builder()
        .close_without_answer(|req| req.target == "/doomed")
        .start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]));
    let r = client::get10(proxy.addr, "/doomed");
    assert_eq!(r.status, 502, "{}", r.body_str());
    assert_eq!(
        requests_before_a_probe(&proxy, &backend).len(),
        1,
        "a failure on a fresh connection was retried"
    );
}

#[test]
fn retried_put_carries_its_whole_body() {
    // PUT is idempotent: on a stale reused connection it may be retried, but only with its body.
    let backend = Backend::builder()
        .close_without_answer(|req| req.method == "PUT" && req.index > 0)
        .start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]).pool("max_size", "1"));
    assert_eq!(client::get10(proxy.addr, "/warm").status, 200);
    let body = "k=v&".repeat(500);
    // Chunked, so the proxy buffers the body for its HTTP/1.0 backend: a buffered body can be
    // sent again; a streamed one cannot, and is never retried.
    let r = client::request(
        proxy.addr,
        format!(
            "PUT /doc HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\
             Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    let puts: Vec<_> = requests_before_a_probe(&proxy, &backend)
        .into_iter()
        .filter(|r| r.method == "PUT")
        .collect();
    // The one pooled connection served /warm, so the PUT on it is dropped and retried once, on
    // a fresh connection, which answers; the retry carries the whole de-chunked body.
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(puts.len(), 2, "one dropped PUT and its retry");
    assert_eq!(
        puts[1].body,
        body.as_bytes(),
        "the retry lost the request body"
    );
    assert_eq!(
        puts[1].header("content-length"),
        Some(body.len().to_string().as_str())
    );
}

#[test]
fn a_put_with_a_streamed_body_is_not_retried_and_is_sent_once() {
    // PUT is idempotent, but a Content-Length body is streamed to the backend, not kept: once
    // sent it cannot be sent again, so a stale reused connection gives 502.
    let backend = Backend::builder()
        .close_without_answer(|req| req.method == "PUT" && req.index > 0)
        .start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]).pool("max_size", "1"));
    assert_eq!(client::get10(proxy.addr, "/warm").status, 200);
    let r = client::request(
        proxy.addr,
        b"PUT /doc HTTP/1.0\r\nHost: test.local\r\nContent-Length: 4\r\n\r\nk=v&",
    );
    assert_eq!(r.status, 502, "{}", r.body_str());
    let puts = sent_with_method(&proxy, &backend, "PUT");
    assert_eq!(puts, 1, "the streamed PUT reached the backend {puts} times");
}

#[test]
fn one_early_close_does_not_collapse_reuse() {
    // The backend keeps idle connections 5 s, but once recycles a worker: its first connection
    // is closed 150 ms after its first response. One outlier must not become the keep-alive
    // timeout for good, or every later pause longer than it costs a new connection.
    let backend = Backend::builder()
        .idle_close_with(|conn, served| {
            if conn == 0 && served == 1 {
                Some(Duration::from_millis(150))
            } else {
                Some(Duration::from_secs(5))
            }
        })
        .start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]).pool("max_size", "1"));
    assert_eq!(client::get10(proxy.addr, "/first").status, 200);
    assert!(
        backend.wait_until(Duration::from_secs(2), |b| b.connections()[0].closed
            == Closed::IdleTimeout),
        "the backend did not recycle its first connection"
    );
    for i in 0..8 {
        thread::sleep(Duration::from_millis(300));
        let r = client::get10(proxy.addr, &format!("/later/{i}"));
        assert_eq!(r.status, 200, "{}", r.body_str());
    }
    assert!(
        backend.accepted() <= 3,
        "after one early close, 8 requests 300 ms apart used {} backend connections \
         (learned keep-alive timeout {:?} s)",
        backend.accepted(),
        proxy.metric("longhaul_upstream_keepalive_timeout_seconds", &[])
    );
}
