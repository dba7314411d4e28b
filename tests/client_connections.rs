//! How longhaul treats its own clients' connections (RFC 9112 §9.3): HTTP/1.0 without keep-alive is
//! answered then closed, keep-alive clients keep their connection, pipelined requests stay in order.

mod support;

use std::time::Duration;

use support::backend::{Backend, Reply};
use support::client::Client;
use support::proxy::{Proxy, ProxyConfig};

fn setup() -> (Backend, Proxy) {
    let backend = Backend::start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]));
    (backend, proxy)
}

#[test]
fn http10_client_without_keepalive_gets_response_then_close() {
    let (backend, proxy) = setup();
    let mut c = Client::connect(proxy.addr).expect("connect");
    let r = c
        .roundtrip(b"GET /once HTTP/1.0\r\nHost: test.local\r\n\r\n")
        .expect("response");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, backend.expected_body("GET", "/once"));
    assert!(
        c.wait_closed(Duration::from_secs(3)),
        "longhaul kept an HTTP/1.0 connection open that did not ask for keep-alive"
    );
}

#[test]
fn http10_client_with_keepalive_keeps_its_connection() {
    let (backend, proxy) = setup();
    let mut c = Client::connect(proxy.addr).expect("connect");
    let first = c
        .roundtrip(b"GET /k1 HTTP/1.0\r\nHost: test.local\r\nConnection: keep-alive\r\n\r\n")
        .expect("first response");
    assert_eq!(first.status, 200);
    assert!(
        !first.close_delimited,
        "a keep-alive response needs a length"
    );
    assert_eq!(first.body, backend.expected_body("GET", "/k1"));
    assert!(
        first
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("keep-alive")),
        "a 1.0 keep-alive response says so: {:?}",
        first.headers
    );
    assert!(
        !c.wait_closed(Duration::from_millis(300)),
        "connection closed after the first response"
    );
    let second = c
        .roundtrip(b"GET /k2 HTTP/1.0\r\nHost: test.local\r\n\r\n")
        .expect("second response on the same connection");
    assert_eq!(second.status, 200);
    assert_eq!(second.body, backend.expected_body("GET", "/k2"));
    assert!(
        c.wait_closed(Duration::from_secs(3)),
        "the second request did not ask for keep-alive"
    );
    assert_eq!(
        proxy.metric_or_zero("longhaul_downstream_connections_total", &[]),
        1.0
    );
}

#[test]
fn http11_client_connection_persists_by_default() {
    let (backend, proxy) = setup();
    let mut c = Client::connect(proxy.addr).expect("connect");
    for i in 0..5 {
        let path = format!("/p11/{i}");
        let r = c
            .roundtrip(format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n\r\n").as_bytes())
            .expect("response");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, backend.expected_body("GET", &path));
    }
    assert!(!c.wait_closed(Duration::from_millis(200)));
    assert_eq!(
        proxy.metric_or_zero("longhaul_downstream_connections_total", &[]),
        1.0
    );
}

#[test]
fn http11_pipelined_requests_are_answered_in_order() {
    // The first request is slow at the backend, so answering in completion order would reorder.
    let backend = Backend::builder()
        .responder(|req| {
            let body = format!("answer for {}", req.target);
            let reply = Reply::Raw {
                bytes: support::backend::http10_response(
                    200,
                    &[("Connection", "keep-alive")],
                    body.as_bytes(),
                ),
                keep_open: true,
            };
            if req.target == "/slow" {
                Reply::Delayed(Duration::from_millis(300), Box::new(reply))
            } else {
                reply
            }
        })
        .start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]));
    let mut c = Client::connect(proxy.addr).expect("connect");
    c.send(
        b"GET /slow HTTP/1.1\r\nHost: test.local\r\n\r\n\
          GET /fast1 HTTP/1.1\r\nHost: test.local\r\n\r\n\
          GET /fast2 HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n",
    )
    .expect("send pipeline");
    for target in ["/slow", "/fast1", "/fast2"] {
        let r = c.read_response(false).expect("pipelined response");
        assert_eq!(r.status, 200);
        assert_eq!(
            r.body_str(),
            format!("answer for {target}"),
            "responses out of order"
        );
    }
    assert!(
        c.wait_closed(Duration::from_secs(3)),
        "Connection: close on the last request"
    );
}

#[test]
fn keepalive_client_pausing_longer_than_header_read_timeout_is_not_cut() {
    // header_read_timeout guards the head of a request; a kept-alive client between requests is
    // governed by client_idle_timeout instead.
    let backend = Backend::start();
    let proxy = Proxy::start(
        &ProxyConfig::single(&[backend.addr()])
            .server("header_read_timeout", "\"300ms\"")
            .server("client_idle_timeout", "\"10s\""),
    );
    let mut c = Client::connect(proxy.addr).expect("connect");
    let req = b"GET /pause HTTP/1.1\r\nHost: test.local\r\n\r\n";
    assert_eq!(c.roundtrip(req).expect("first").status, 200);
    assert!(
        !c.wait_closed(Duration::from_millis(900)),
        "a keep-alive client idle for 900ms was closed (header_read_timeout 300ms, client_idle_timeout 10s)"
    );
    assert_eq!(c.roundtrip(req).expect("second").status, 200);
}

#[test]
fn idle_keepalive_client_is_closed_after_client_idle_timeout() {
    let backend = Backend::start();
    let proxy = Proxy::start(
        &ProxyConfig::single(&[backend.addr()])
            .server("client_idle_timeout", "\"400ms\"")
            .server("header_read_timeout", "\"10s\""),
    );
    let mut c = Client::connect(proxy.addr).expect("connect");
    let r = c
        .roundtrip(b"GET /idle HTTP/1.1\r\nHost: test.local\r\n\r\n")
        .expect("response");
    assert_eq!(r.status, 200);
    let started = support::Stopwatch::start();
    assert!(
        c.wait_closed(Duration::from_secs(5)),
        "an idle keep-alive client outlived client_idle_timeout 400ms by 5 s"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed after {:?}, before client_idle_timeout",
        started.elapsed()
    );
}

#[test]
fn expect_100_continue_is_answered_and_the_body_forwarded() {
    let backend = Backend::start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]));
    let mut c = Client::connect(proxy.addr).expect("connect");
    c.send(
        b"POST /expect HTTP/1.1\r\nHost: test.local\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
    )
    .expect("send head");
    // Wait for the interim response before sending the body, as strict clients do.
    c.set_read_timeout(Duration::from_secs(3));
    let mut interim = [0u8; 25];
    let mut got = 0;
    while got < interim.len() {
        match std::io::Read::read(&mut c.stream(), &mut interim[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    let text = String::from_utf8_lossy(&interim[..got]).to_string();
    assert!(
        text.starts_with("HTTP/1.1 100"),
        "no 100 Continue within 3 s, got {text:?}"
    );
    c.send(b"hello").expect("send body");
    // Read the rest of the interim response's blank line and then the final response.
    let r = c.read_response(false).expect("final response");
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(backend.requests()[0].body, b"hello");
}

#[test]
fn close_delimited_response_to_a_keepalive_http10_client_does_not_promise_keepalive() {
    // A body without a length ends with the connection (RFC 9112 §6.3), so the response must not
    // tell an HTTP/1.0 keep-alive client that the connection persists.
    let backend = Backend::builder()
        .framing(support::backend::Framing::CloseDelimited)
        .body_size(5000)
        .start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]));
    let mut c = Client::connect(proxy.addr).expect("connect");
    let r = c
        .roundtrip(b"GET /cd HTTP/1.0\r\nHost: test.local\r\nConnection: keep-alive\r\n\r\n")
        .expect("response");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, backend.expected_body("GET", "/cd"));
    // The backend's body has no length, so neither has the client's: it ends with the connection.
    assert!(
        r.close_delimited && !r.has_header("content-length") && !r.chunked,
        "the response was not close-delimited: {:?}",
        r.headers
    );
    assert!(
        !r.header_all("connection")
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("keep-alive")),
        "close-delimited response says `Connection: keep-alive`: {:?}",
        r.headers
    );
}

#[test]
fn http10_client_that_half_closes_after_sending_still_gets_the_response() {
    // Legacy tools (`nc -q`, old scripts) shut down their write side once the request is out.
    let backend = Backend::builder().delay(Duration::from_millis(300)).start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]));
    let mut c = Client::connect(proxy.addr).expect("connect");
    c.send(b"GET /half HTTP/1.0\r\nHost: test.local\r\n\r\n")
        .expect("send");
    c.shutdown_write();
    let r = c
        .read_response(false)
        .expect("a response after the client half-closed");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, backend.expected_body("GET", "/half"));
}

/// The `ss -tno` line of the proxy's end of the connection from `client`, if it is listed.
fn accepted_socket_line(
    proxy: std::net::SocketAddr,
    client: std::net::SocketAddr,
) -> Option<String> {
    let out = std::process::Command::new("ss")
        .args(["-tnoH", "state", "established"])
        .output()
        .expect("run `ss` (iproute2)");
    let (local, peer) = (proxy.to_string(), client.to_string());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            fields.get(2) == Some(&local.as_str()) && fields.get(3) == Some(&peer.as_str())
        })
        .map(str::to_string)
}

#[test]
fn accepted_client_socket_has_tcp_keepalive_set() {
    if !support::tools::have("ss") {
        return;
    }
    let (_backend, proxy) = setup();
    let c = Client::connect(proxy.addr).expect("connect");
    let client = c.stream().local_addr().expect("client address");
    let has_keepalive_timer =
        || accepted_socket_line(proxy.addr, client).is_some_and(|l| l.contains("timer:(keepalive"));
    assert!(
        support::wait_until(Duration::from_secs(5), has_keepalive_timer),
        "no keepalive timer on longhaul's end of the client connection: {:?}",
        accepted_socket_line(proxy.addr, client)
    );
}
