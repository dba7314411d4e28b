//! Client-side limits: request head size and line size (431, 414) however the head's bytes
//! arrive, header read timeout (slowloris guard) and the cap on concurrent client connections.

mod support;

use std::time::Duration;

use support::Stopwatch;
use support::backend::Backend;
use support::client::{self, Client, Delivery, Response};
use support::proxy::{Proxy, ProxyConfig};

/// The defaults of `[server] max_request_head_bytes` and `max_request_header_bytes`.
const HEAD_BYTES: usize = 65_536;
const LINE_BYTES: usize = 8192;

/// An HTTP/1.0 GET of `target` with the given `name: value` header lines.
fn head_with(target: &str, headers: &[(String, String)]) -> Vec<u8> {
    let mut raw = format!("GET {target} HTTP/1.0\r\nHost: test.local\r\n");
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str("\r\n");
    raw.into_bytes()
}

/// One header line `X-Big: vvv…` of exactly `line_bytes` (without CRLF).
fn big_header(line_bytes: usize) -> Vec<(String, String)> {
    vec![("X-Big".into(), "v".repeat(line_bytes - "X-Big: ".len()))]
}

/// Header lines of `line_bytes` each (without CRLF), enough to make the head exactly `head_bytes`.
fn head_of_exactly(head_bytes: usize, line_bytes: usize) -> Vec<u8> {
    let fixed = head_with("/", &[]).len();
    let mut left = head_bytes - fixed;
    let mut headers = Vec::new();
    let mut i = 0;
    while left > 0 {
        let line = (line_bytes + 2).min(left);
        let name = format!("X-Pad{i:03}");
        headers.push((name.clone(), "p".repeat(line - name.len() - 4)));
        left -= line;
        i += 1;
    }
    let raw = head_with("/", &headers);
    assert_eq!(raw.len(), head_bytes, "test head built to the wrong size");
    raw
}

/// The start of a response body, for failure messages (an echoed 9 kB target is noise).
fn gist(r: &Response) -> String {
    r.body_str().chars().take(120).collect()
}

/// Sends `raw` on a new connection the way `how` says and reads the answer.
fn answer(proxy: &Proxy, raw: &[u8], how: Delivery) -> Response {
    let mut c = Client::connect(proxy.addr).expect("connect");
    // The proxy may answer and close before the last piece is written; the answer still counts.
    let _ = c.send_delivered(raw, how);
    c.read_response(false)
        .unwrap_or_else(|e| panic!("no answer to a {}-byte head sent {how:?}: {e}", raw.len()))
}

#[test]
fn a_header_line_over_max_request_header_bytes_gets_431_however_it_arrives() {
    let backend = Backend::start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]));
    let raw = head_with("/big", &big_header(10_000));
    for how in Delivery::all() {
        let r = answer(&proxy, &raw, how);
        assert_eq!(
            r.status,
            431,
            "10 kB header line sent {how:?}: {}",
            gist(&r)
        );
    }
    assert_eq!(
        backend.request_count(),
        0,
        "a refused head reached the backend"
    );
}

#[test]
fn a_header_line_of_exactly_max_request_header_bytes_is_served_however_it_arrives() {
    let backend = Backend::start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]));
    let header = big_header(LINE_BYTES);
    let raw = head_with("/at-limit", &header);
    for how in Delivery::all() {
        let r = answer(&proxy, &raw, how);
        assert_eq!(
            r.status,
            200,
            "8192-byte header line sent {how:?}: {}",
            gist(&r)
        );
    }
    let seen: Vec<usize> = backend
        .requests()
        .iter()
        .map(|r| r.header("x-big").map_or(0, str::len))
        .collect();
    assert_eq!(
        seen,
        vec![header[0].1.len(); 3],
        "the header reached the backend intact"
    );
}

#[test]
fn a_100_kb_header_gets_431_with_the_default_limits_however_it_arrives() {
    // The case from the report: one write of a 100 KB header was forwarded and answered 200.
    let backend = Backend::start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]));
    let raw = head_with("/huge", &big_header(100_000));
    for how in Delivery::all() {
        let r = answer(&proxy, &raw, how);
        assert_eq!(r.status, 431, "100 kB header sent {how:?}: {}", gist(&r));
    }
    assert_eq!(
        backend.request_count(),
        0,
        "a refused head reached the backend"
    );
}

#[test]
fn a_head_over_max_request_head_bytes_gets_431_however_it_arrives() {
    // Every line is under max_request_header_bytes; only their sum is over the head limit.
    let backend = Backend::start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]));
    let raw = head_of_exactly(HEAD_BYTES + 1, 7000);
    for how in Delivery::all() {
        let r = answer(&proxy, &raw, how);
        assert_eq!(r.status, 431, "65537-byte head sent {how:?}: {}", gist(&r));
    }
    assert_eq!(
        backend.request_count(),
        0,
        "a refused head reached the backend"
    );
}

#[test]
fn a_head_of_exactly_max_request_head_bytes_is_served_however_it_arrives() {
    let backend = Backend::start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]));
    let raw = head_of_exactly(HEAD_BYTES, 7000);
    for how in Delivery::all() {
        let r = answer(&proxy, &raw, how);
        assert_eq!(r.status, 200, "65536-byte head sent {how:?}: {}", gist(&r));
    }
    assert_eq!(backend.request_count(), 3);
}

#[test]
fn a_request_line_over_8_kib_gets_414_however_it_arrives() {
    let backend = Backend::start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]));
    let target = format!("/{}", "u".repeat(9000));
    let raw = head_with(&target, &[]);
    for how in Delivery::all() {
        let r = answer(&proxy, &raw, how);
        assert_eq!(
            r.status,
            414,
            "9 kB request target sent {how:?}: {}",
            gist(&r)
        );
    }
    assert_eq!(
        backend.request_count(),
        0,
        "a refused head reached the backend"
    );
}

#[test]
fn a_request_line_of_exactly_8_kib_is_served() {
    let backend = Backend::start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]));
    // "GET " + target + " HTTP/1.0" is the request line.
    let target = format!("/{}", "u".repeat(LINE_BYTES - "GET  HTTP/1.0".len() - 1));
    let r = answer(&proxy, &head_with(&target, &[]), Delivery::AtOnce);
    assert_eq!(r.status, 200, "{}", gist(&r));
    assert_eq!(backend.requests()[0].target, target);
}

#[test]
fn the_client_connection_closes_after_a_head_limit_refusal() {
    // nginx closes on 400-class head errors too: what follows an oversized head is not trusted.
    let backend = Backend::start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]));
    let keepalive = |target: &str, headers: &[(String, String)]| {
        let raw = head_with(target, headers);
        String::from_utf8(raw)
            .expect("ascii")
            .replacen("HTTP/1.0", "HTTP/1.1", 1)
            .into_bytes()
    };
    let long_target = format!("/{}", "u".repeat(9000));
    for (what, raw, status) in [
        (
            "a long header line",
            keepalive("/line", &big_header(10_000)),
            431,
        ),
        ("a long request line", keepalive(&long_target, &[]), 414),
    ] {
        let (r, closed) = client::exchange(proxy.addr, &raw, Duration::from_secs(3));
        assert_eq!(r.status, status, "{what}: {}", gist(&r));
        assert!(
            closed,
            "the keep-alive connection stayed open after {what} got {status}"
        );
    }
}

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
fn more_header_lines_than_max_request_headers_get_431_and_the_connection_closes() {
    let backend = Backend::start();
    let proxy =
        Proxy::start(&ProxyConfig::single(&[backend.addr()]).server("max_request_headers", "20"));
    let get_with = |path: &str, extra_lines: usize| {
        let lines: String = (0..extra_lines).map(|i| format!("X-H{i}: v\r\n")).collect();
        format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n{lines}\r\n").into_bytes()
    };
    let (r, closed) = client::exchange(proxy.addr, &get_with("/many", 30), Duration::from_secs(3));
    assert_eq!(r.status, 431, "{}", r.body_str());
    assert!(closed, "the connection stayed open after 431");
    assert_eq!(
        backend.request_count(),
        0,
        "a 431 request reached the backend"
    );

    // Under the limit (Host + 15) is served.
    let ok = client::request(proxy.addr, &get_with("/few", 15));
    assert_eq!(ok.status, 200, "{}", ok.body_str());
    assert_eq!(backend.request_count(), 1);
}

#[test]
fn a_request_target_longer_than_max_request_head_bytes_gets_431() {
    // The whole head is over its limit before the request line is even complete: 431, not 414.
    let backend = Backend::start();
    let proxy = Proxy::start(
        &ProxyConfig::single(&[backend.addr()]).server("max_request_head_bytes", "16384"),
    );
    let raw = head_with(&format!("/{}", "u".repeat(40_000)), &[]);
    for how in Delivery::all() {
        let r = answer(&proxy, &raw, how);
        assert_eq!(
            r.status,
            431,
            "40 kB request target sent {how:?}: {}",
            gist(&r)
        );
    }
    assert_eq!(backend.request_count(), 0);
}
