//! Header rewriting: hop-by-hop headers (RFC 9110 §7.6.1) are stripped in both directions,
//! forwarding headers are added, and every request carries a request id end to end.

mod support;

use support::backend::{self, Backend, Reply};
use support::client;
use support::proxy::{Proxy, ProxyConfig};

const HOP_BY_HOP: &[&str] = &[
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "transfer-encoding",
    "x-hop-secret",
];

#[test]
fn hop_by_hop_request_headers_are_stripped() {
    let backend = Backend::start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]));
    let r = client::request(
        proxy.addr,
        b"GET /h HTTP/1.0\r\nHost: test.local\r\nConnection: keep-alive, X-Hop-Secret\r\n\
          X-Hop-Secret: do-not-forward\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n\
          TE: trailers\r\nTrailer: X-Checksum\r\nUpgrade: websocket\r\nX-End-To-End: yes\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let reqs = backend.requests();
    assert_eq!(reqs.len(), 1);
    let up = &reqs[0];
    for name in HOP_BY_HOP {
        assert!(
            !up.has_header(name),
            "hop-by-hop `{name}` reached the backend: {:?}",
            up.headers
        );
    }
    assert_eq!(
        up.header("x-end-to-end"),
        Some("yes"),
        "end-to-end headers pass"
    );
    let connection = up.header_all("connection").join(",").to_ascii_lowercase();
    assert_eq!(
        connection, "keep-alive",
        "longhaul sets its own Connection upstream"
    );
}

#[test]
fn hop_by_hop_response_headers_are_stripped() {
    let backend = Backend::builder()
        .responder(|_| Reply::Raw {
            bytes: backend::http10_response(
                200,
                &[
                    ("Connection", "keep-alive, X-Hop-Secret"),
                    ("X-Hop-Secret", "backend-internal"),
                    ("Keep-Alive", "timeout=5, max=100"),
                    ("Proxy-Connection", "keep-alive"),
                    ("Upgrade", "h2c"),
                    ("Trailer", "X-Checksum"),
                    ("X-End-To-End", "yes"),
                ],
                b"body",
            ),
            keep_open: true,
        })
        .start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]));
    let r = client::get10(proxy.addr, "/h");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"body");
    for name in HOP_BY_HOP {
        assert!(
            !r.has_header(name),
            "hop-by-hop `{name}` reached the client: {:?}",
            r.headers
        );
    }
    assert_eq!(r.header("x-end-to-end"), Some("yes"));
    // The client did not ask for keep-alive: the backend's `Connection: keep-alive` must not leak.
    for value in r.header_all("connection") {
        assert!(
            !value.to_ascii_lowercase().contains("keep-alive")
                && !value.to_ascii_lowercase().contains("x-hop"),
            "backend Connection header leaked to a non-keep-alive client: {value:?}"
        );
    }
}

#[test]
fn forwarding_headers_and_request_id_are_added() {
    let backend = Backend::start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]));
    let first = client::get10(proxy.addr, "/f1");
    let second = client::get10(proxy.addr, "/f2");
    assert_eq!(first.status, 200);
    let reqs = backend.requests();
    assert_eq!(reqs.len(), 2);
    let up = &reqs[0];
    assert_eq!(
        up.header("x-forwarded-for"),
        Some("127.0.0.1"),
        "{:?}",
        up.headers
    );
    assert_eq!(up.header("x-forwarded-proto"), Some("http"));
    assert!(
        up.header("via").is_some_and(|v| v.contains("longhaul")),
        "upstream Via: {:?}",
        up.header("via")
    );
    let id = up.header("x-request-id").expect("upstream X-Request-Id");
    assert!(!id.is_empty());
    assert_eq!(
        first.header("x-request-id"),
        Some(id),
        "the client sees the same request id"
    );
    assert!(
        first.header("via").is_some_and(|v| v.contains("longhaul")),
        "response Via: {:?}",
        first.header("via")
    );
    let id2 = reqs[1].header("x-request-id").expect("second X-Request-Id");
    assert_ne!(id, id2, "request ids are unique");
    assert_eq!(second.header("x-request-id"), Some(id2));
}

#[test]
fn x_forwarded_for_appends_the_client_address() {
    let backend = Backend::start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]));
    let r = client::request(
        proxy.addr,
        b"GET /xff HTTP/1.0\r\nHost: test.local\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let up = &backend.requests()[0];
    let xff = up.header_all("x-forwarded-for").join(", ");
    assert_eq!(xff, "203.0.113.7, 127.0.0.1");
}

#[test]
fn request_id_sent_by_the_client_is_kept() {
    let backend = Backend::start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]));
    let r = client::request(
        proxy.addr,
        b"GET /rid HTTP/1.0\r\nHost: test.local\r\nX-Request-Id: client-chosen-42\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id"), Some("client-chosen-42"));
    let up = &backend.requests()[0];
    assert_eq!(up.header_all("x-request-id"), vec!["client-chosen-42"]);
}

#[test]
fn request_target_reaches_the_backend_unchanged() {
    let backend = Backend::start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]));
    let r = client::request(
        proxy.addr,
        b"GET /a/b%20c?x=1&y=%2F HTTP/1.0\r\nHost: legacy.example:8000\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let up = &backend.requests()[0];
    assert_eq!(up.target, "/a/b%20c?x=1&y=%2F");
    assert!(
        up.has_header("host"),
        "upstream request without Host: {:?}",
        up.headers
    );
}

#[test]
fn via_names_the_protocol_version_each_message_was_received_with() {
    // RFC 9110 §7.6.3: received-protocol is the version of the message longhaul received:
    // the client's on the request, the backend's (HTTP/1.0 here) on the response.
    let backend = Backend::start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]));
    let r10 = client::get10(proxy.addr, "/v10");
    let r11 = client::request(
        proxy.addr,
        b"GET /v11 HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n",
    );
    let reqs = backend.requests();
    assert_eq!(
        reqs[0].header("via"),
        Some("1.0 longhaul"),
        "request from a 1.0 client"
    );
    assert_eq!(
        reqs[1].header("via"),
        Some("1.1 longhaul"),
        "request from a 1.1 client"
    );
    assert_eq!(
        r10.header("via"),
        Some("1.0 longhaul"),
        "response from a 1.0 backend"
    );
    assert_eq!(
        r11.header("via"),
        Some("1.0 longhaul"),
        "response from a 1.0 backend"
    );
}

/// The `Via` lines an HTTP/1.0 client gets when the backend answers with `fields`.
fn response_via_lines(fields: &[(&str, &str)]) -> Vec<String> {
    let response = backend::http10_response(200, fields, b"body");
    let backend = Backend::builder()
        .responder(move |_| Reply::Raw {
            bytes: response.clone(),
            keep_open: true,
        })
        .start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]));
    let r = client::get10(proxy.addr, "/via");
    assert_eq!(r.status, 200);
    r.header_all("via").into_iter().map(str::to_owned).collect()
}

#[test]
fn backend_connection_via_does_not_remove_longhauls_via_on_the_response() {
    // `Connection: via` names the backend's own hop: it goes, and longhaul's Via is added after.
    let via = response_via_lines(&[
        ("Connection", "keep-alive, via"),
        ("Via", "1.0 backend-cache"),
    ]);
    assert_eq!(via, ["1.0 longhaul"]);
}

#[test]
fn a_backends_via_lines_are_all_kept_and_longhauls_comes_last() {
    let via = response_via_lines(&[
        ("Connection", "keep-alive"),
        ("Via", "1.0 cache-a"),
        ("Via", "1.1 cache-b"),
    ]);
    assert_eq!(via, ["1.0 cache-a", "1.1 cache-b", "1.0 longhaul"]);
}

#[test]
fn client_connection_via_does_not_remove_longhauls_via_on_the_request() {
    let backend = Backend::start();
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr()]));
    let r = client::request(
        proxy.addr,
        b"GET /via HTTP/1.1\r\nHost: test.local\r\nConnection: close, via\r\n\
          Via: 1.1 client-side-proxy\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let reqs = backend.requests();
    assert_eq!(
        reqs[0].header_all("via"),
        vec!["1.1 longhaul"],
        "{:?}",
        reqs[0].headers
    );
}
