//! A pooled connection may only be reused when it is exactly at a message boundary: a client that
//! leaves mid-response, or a backend that sends more than it framed, must never make one client
//! read another client's response.

mod support;

use std::thread;
use std::time::Duration;

use support::backend::{self, Backend, Reply};
use support::client::{self, Client};
use support::proxy::{Proxy, ProxyConfig};

#[test]
fn client_leaving_mid_response_does_not_poison_the_pool() {
    let backend = Backend::builder().body_size(2_000_000).start();
    let proxy = Proxy::start(
        &ProxyConfig::single(&[backend.addr()])
            .pool("max_size", "1")
            .pool("wait_timeout", "\"5s\""),
    );
    for i in 0..10 {
        // Read only the start of a 2 MB response, then hang up.
        let mut c = Client::connect(proxy.addr).expect("connect");
        c.send(format!("GET /abandon/{i} HTTP/1.0\r\nHost: test.local\r\n\r\n").as_bytes())
            .expect("send");
        let mut head = [0u8; 64];
        let _ = std::io::Read::read(&mut c.stream(), &mut head);
        drop(c);

        let path = format!("/after/{i}");
        let r = client::get10(proxy.addr, &path);
        assert_eq!(r.status, 200, "request after abandoned response {i}");
        assert_eq!(
            &r.body[..r.body.len().min(40)],
            &backend.expected_body("GET", &path)[..40],
            "a client got bytes of another response"
        );
        assert_eq!(r.body.len(), 2_000_000);
    }
}

#[test]
fn bytes_after_a_framed_response_are_never_served_to_the_next_client() {
    // The backend appends a second, unsolicited response after a correctly framed one (a desync).
    let backend = Backend::builder()
        .responder(|req| {
            let mut bytes = backend::http10_response(
                200,
                &[("Connection", "keep-alive")],
                format!("real {}", req.target).as_bytes(),
            );
            if req.target.starts_with("/desync") {
                bytes.extend(backend::http10_response(
                    200,
                    &[("Connection", "keep-alive")],
                    b"SMUGGLED",
                ));
            }
            Reply::Raw {
                bytes,
                keep_open: true,
            }
        })
        .start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]).pool("max_size", "1"));
    for i in 0..5 {
        let r = client::get10(proxy.addr, &format!("/desync/{i}"));
        assert_eq!(r.body_str(), format!("real /desync/{i}"));
        // A fixed wait on purpose: it lets the extra bytes reach the idle pooled connection
        // before the next request; nothing signals bytes arriving on an idle connection.
        thread::sleep(Duration::from_millis(20));
        let path = format!("/next/{i}");
        let next = client::get10(proxy.addr, &path);
        assert_eq!(next.status, 200, "{}", next.body_str());
        assert_eq!(
            next.body_str(),
            format!("real {path}"),
            "the next client was served the backend's extra bytes"
        );
    }
}

#[test]
fn backend_5xx_is_passed_through_and_not_retried() {
    let backend = Backend::start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]));
    let r = client::get10(proxy.addr, "/status/500");
    assert_eq!(r.status, 500);
    assert_eq!(r.body, backend.expected_body("GET", "/status/500"));
    assert_eq!(
        backend.request_count(),
        1,
        "a backend answer is final, even a 500"
    );
    let after = client::get10(proxy.addr, "/ok");
    assert_eq!(after.status, 200);
    assert_eq!(
        backend.accepted(),
        1,
        "a 500 with keep-alive leaves the connection reusable"
    );
}

#[test]
fn client_leaving_before_the_response_does_not_leave_it_for_the_next_client() {
    // The backend answers slowly; the client gives up first. If that connection went back to the
    // pool, its late response would be read as the answer to the next request.
    let backend = Backend::builder()
        .responder(|req| {
            let reply = Reply::Raw {
                bytes: backend::http10_response(
                    200,
                    &[("Connection", "keep-alive")],
                    format!("answer for {}", req.target).as_bytes(),
                ),
                keep_open: true,
            };
            if req.target.starts_with("/slow") {
                Reply::Delayed(Duration::from_millis(400), Box::new(reply))
            } else {
                reply
            }
        })
        .start();
    let proxy = Proxy::start(
        &ProxyConfig::single(&[backend.addr()])
            .pool("max_size", "1")
            .pool("wait_timeout", "\"5s\""),
    );
    for i in 0..3 {
        let mut c = Client::connect(proxy.addr).expect("connect");
        c.send(format!("GET /slow/{i} HTTP/1.0\r\nHost: test.local\r\n\r\n").as_bytes())
            .expect("send");
        assert!(
            backend.wait_until(Duration::from_secs(3), |b| b
                .requests()
                .iter()
                .any(|r| r.target == format!("/slow/{i}"))),
            "the slow request never reached the backend"
        );
        drop(c);
        // A fixed wait on purpose: the proxy sees the client leave while the backend still owes
        // the response (400 ms); it signals nothing when it notices a client left.
        thread::sleep(Duration::from_millis(50));
        let path = format!("/next/{i}");
        let r = client::get10(proxy.addr, &path);
        assert_eq!(r.status, 200, "{}", r.body_str());
        assert_eq!(
            r.body_str(),
            format!("answer for {path}"),
            "a client received the abandoned request's response"
        );
    }
}

/// Asserts that no backend request carries another request's bytes in its body or target.
fn assert_no_request_inside_another(backend: &Backend) {
    for r in backend.requests() {
        let body = String::from_utf8_lossy(&r.body);
        assert!(
            !body.contains("HTTP/1.") && !r.target.contains(' '),
            "a request was glued into another one on a pooled connection: {} {} body {body:?}",
            r.method,
            r.target
        );
    }
}

#[test]
fn stalled_request_body_gets_408_and_its_connection_is_not_reused() {
    // The head and 10 of 100 body bytes went upstream; that connection is mid-request forever.
    let backend = Backend::start();
    let proxy = Proxy::start(
        &ProxyConfig::single(&[backend.addr()])
            .server("body_read_timeout", "\"300ms\"")
            .pool("max_size", "1")
            .pool("wait_timeout", "\"3s\""),
    );
    assert_eq!(client::get10(proxy.addr, "/warm").status, 200);
    let mut c = Client::connect(proxy.addr).expect("connect");
    c.send(b"POST /stall HTTP/1.0\r\nHost: test.local\r\nContent-Length: 100\r\n\r\n0123456789")
        .expect("send");
    match c.read_response(false) {
        Ok(r) => assert_eq!(r.status, 408, "{}", r.body_str()),
        Err(e) => panic!("no answer to a stalled body within the read timeout: {e}"),
    }
    for i in 0..3 {
        let path = format!("/after/{i}");
        let r = client::get10(proxy.addr, &path);
        assert_eq!(r.status, 200, "{}", r.body_str());
        assert_eq!(r.body, backend.expected_body("GET", &path));
    }
    assert_no_request_inside_another(&backend);
}

#[test]
fn client_leaving_mid_request_body_does_not_poison_the_pool() {
    let backend = Backend::start();
    let proxy = Proxy::start(
        &ProxyConfig::single(&[backend.addr()])
            .pool("max_size", "1")
            .pool("wait_timeout", "\"3s\""),
    );
    assert_eq!(client::get10(proxy.addr, "/warm").status, 200);
    for i in 0..3 {
        let mut c = Client::connect(proxy.addr).expect("connect");
        c.send(
            format!("POST /partial/{i} HTTP/1.0\r\nHost: test.local\r\nContent-Length: 1000\r\n\r\nonly-a-little")
                .as_bytes(),
        )
        .expect("send");
        // A fixed wait on purpose: the head and the partial body go upstream before the client
        // leaves; the backend records a request only once its body is complete.
        thread::sleep(Duration::from_millis(100));
        drop(c);
        let path = format!("/after/{i}");
        let r = client::get10(proxy.addr, &path);
        assert_eq!(r.status, 200, "{}", r.body_str());
        assert_eq!(r.body, backend.expected_body("GET", &path));
    }
    assert_no_request_inside_another(&backend);
}
