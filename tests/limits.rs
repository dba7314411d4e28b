//! Client-side limits: request head size (431), header read timeout (slowloris guard) and the cap
//! on concurrent client connections.

mod support;

use std::time::Duration;

use support::Stopwatch;
use support::backend::Backend;
use support::client::{self, Client};
use support::proxy::{Proxy, ProxyConfig};

#[test]
fn oversized_request_head_gets_431() {
    let backend = Backend::start();
    let proxy = Proxy::start(
        &ProxyConfig::single(&[backend.addr()]).server("max_request_head_bytes", "8192"),
    );
    let big = "v".repeat(20_000);
    let mut c = Client::connect(proxy.addr).expect("connect");
    let _ =
        c.send(format!("GET /big HTTP/1.0\r\nHost: test.local\r\nX-Big: {big}\r\n\r\n").as_bytes());
    let r = c
        .read_response(false)
        .expect("a response to the oversized head");
    assert_eq!(r.status, 431, "{}", r.body_str());
    assert_eq!(
        backend.request_count(),
        0,
        "an oversized head must not reach the backend"
    );

    // A head just under the limit still works.
    let ok = client::request(
        proxy.addr,
        format!(
            "GET /ok HTTP/1.0\r\nHost: test.local\r\nX-Small: {}\r\n\r\n",
            "v".repeat(4000)
        )
        .as_bytes(),
    );
    assert_eq!(ok.status, 200);
}

#[test]
fn silent_client_is_closed_after_header_read_timeout() {
    let backend = Backend::start();
    let proxy = Proxy::start(
        &ProxyConfig::single(&[backend.addr()]).server("header_read_timeout", "\"500ms\""),
    );
    let started = Stopwatch::start();
    let mut c = Client::connect(proxy.addr).expect("connect");
    assert!(
        c.wait_closed(Duration::from_secs(5)),
        "a client that sent nothing was still connected after 5 s (header_read_timeout 500ms)"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(400),
        "closed too early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "closed too late: {elapsed:?}"
    );
}

#[test]
fn partial_request_head_is_closed_after_header_read_timeout() {
    let backend = Backend::start();
    let proxy = Proxy::start(
        &ProxyConfig::single(&[backend.addr()]).server("header_read_timeout", "\"500ms\""),
    );
    let started = Stopwatch::start();
    let mut c = Client::connect(proxy.addr).expect("connect");
    c.send(b"GET /slowloris HTTP/1.0\r\nHost: test.local\r\n")
        .expect("send");
    // A 408 before closing is fine; what matters is that the connection goes away.
    let closed = {
        c.set_read_timeout(Duration::from_secs(5));
        match c.read_response(false) {
            Ok(r) => {
                assert_eq!(
                    r.status,
                    408,
                    "unexpected answer to a partial head: {}",
                    r.body_str()
                );
                c.wait_closed(Duration::from_secs(3))
            }
            Err(_) => true,
        }
    };
    assert!(closed, "a partial head kept the connection open");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(backend.request_count(), 0);
}

#[test]
fn max_connections_caps_concurrent_clients() {
    let backend = Backend::start();
    let proxy =
        Proxy::start(&ProxyConfig::single(&[backend.addr()]).server("max_connections", "2"));
    let keepalive = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n\r\n");

    let mut a = Client::connect(proxy.addr).expect("connect a");
    assert_eq!(
        a.roundtrip(keepalive("/a").as_bytes()).expect("a").status,
        200
    );
    let mut b = Client::connect(proxy.addr).expect("connect b");
    assert_eq!(
        b.roundtrip(keepalive("/b").as_bytes()).expect("b").status,
        200
    );

    // The third connection completes in the kernel backlog but must not be served.
    let mut c = Client::connect(proxy.addr).expect("connect c");
    c.send(keepalive("/c").as_bytes()).expect("send c");
    c.set_read_timeout(Duration::from_millis(700));
    assert!(
        c.read_response(false).is_err(),
        "a third client was served while max_connections = 2 were open"
    );
    assert_eq!(
        backend
            .requests()
            .iter()
            .filter(|r| r.target == "/c")
            .count(),
        0
    );
    let active = proxy.metric_or_zero("longhaul_downstream_connections_active", &[]);
    assert!(
        active <= 2.0,
        "longhaul_downstream_connections_active = {active}"
    );

    // Freeing a slot lets the waiting client in.
    drop(a);
    c.set_read_timeout(Duration::from_secs(5));
    let r = c
        .read_response(false)
        .expect("third client served once a slot freed");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, backend.expected_body("GET", "/c"));
    drop(b);
}

#[test]
fn max_concurrent_requests_sheds_load_with_503_and_retry_after() {
    let backend = Backend::builder().delay(Duration::from_millis(600)).start();
    let proxy = Proxy::start(
        &ProxyConfig::single(&[backend.addr()])
            .server("max_concurrent_requests", "2")
            .pool("max_size", "8"),
    );
    let addr = proxy.addr;
    let slow: Vec<_> = (0..2)
        .map(|i| std::thread::spawn(move || client::get10(addr, &format!("/slow/{i}"))))
        .collect();
    assert!(
        backend.wait_until(Duration::from_secs(3), |b| b.request_count() == 2),
        "the two slow requests never reached the backend"
    );
    let shed = client::get10(proxy.addr, "/shed");
    assert_eq!(shed.status, 503, "{}", shed.body_str());
    assert!(
        shed.has_header("retry-after"),
        "shed 503 without Retry-After: {:?}",
        shed.headers
    );
    for t in slow {
        assert_eq!(t.join().expect("slow client").status, 200);
    }
    assert_eq!(
        backend.request_count(),
        2,
        "the shed request never reached the backend"
    );
    assert_eq!(
        client::get10(proxy.addr, "/after").status,
        200,
        "capacity returns"
    );
}

#[test]
fn too_many_request_headers_get_431() {
    let backend = Backend::start();
    let proxy =
        Proxy::start(&ProxyConfig::single(&[backend.addr()]).server("max_request_headers", "100"));
    let mut raw = String::from("GET /many HTTP/1.0\r\nHost: test.local\r\n");
    for i in 0..150 {
        raw.push_str(&format!("X-H{i}: v\r\n"));
    }
    raw.push_str("\r\n");
    let r = client::request(proxy.addr, raw.as_bytes());
    assert_eq!(r.status, 431, "{}", r.body_str());
    assert_eq!(backend.request_count(), 0);
}

#[test]
fn overlong_request_target_is_refused() {
    let backend = Backend::start();
    let proxy = Proxy::start(
        &ProxyConfig::single(&[backend.addr()]).server("max_request_head_bytes", "16384"),
    );
    let target = format!("/{}", "u".repeat(40_000));
    let mut c = Client::connect(proxy.addr).expect("connect");
    let _ = c.send(format!("GET {target} HTTP/1.0\r\nHost: test.local\r\n\r\n").as_bytes());
    let r = c
        .read_response(false)
        .expect("an answer to an overlong target");
    assert!(
        r.status == 414 || r.status == 431,
        "40 kB request target got {}",
        r.status
    );
    assert_eq!(backend.request_count(), 0);
}
