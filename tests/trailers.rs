//! Chunked responses with a trailer section (RFC 9112 §7.1.2): the pooled connection stays
//! reusable after one, and the trailer fields reach exactly the clients that asked for them
//! (HTTP/1.1 with `TE: trailers`); every other client gets the body without them.
//!
//! The backend speaks HTTP/1.1 (chunked needs it) and answers every request with `hello` and the
//! trailer field `X-Checksum: abc`, announced in its `Trailer` header unless a test says otherwise.

mod support;

use std::time::Duration;

use support::backend::{Backend, Reply};
use support::client::{self, Client, Response};
use support::proxy::{Proxy, ProxyConfig};

const HEAD: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTrailer: X-Checksum\r\n\
                    Transfer-Encoding: chunked\r\n\r\n";
const BODY_AND_TRAILERS: &str = "5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n";

/// Requests sent in each reuse test; one backend connection must carry them all.
const REQUESTS: usize = 3;

fn whole_response() -> Reply {
    Reply::Raw {
        bytes: format!("{HEAD}{BODY_AND_TRAILERS}").into_bytes(),
        keep_open: true,
    }
}

/// The same response with its trailer section split over several writes, 50 ms apart.
fn trailers_in_pieces() -> Reply {
    let pieces = [
        format!("{HEAD}5\r\nhello\r\n0\r\n"),
        "X-Check".to_string(),
        "sum: a".to_string(),
        "bc\r".to_string(),
        "\n".to_string(),
        "\r\n".to_string(),
    ];
    Reply::Pieces {
        pieces: pieces.into_iter().map(String::into_bytes).collect(),
        pause: Duration::from_millis(50),
        keep_open: true,
    }
}

/// The response of the issue: no `Trailer` header announces the field.
fn unannounced_trailers() -> Reply {
    Reply::Raw {
        bytes: format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{BODY_AND_TRAILERS}")
            .into_bytes(),
        keep_open: true,
    }
}

fn backend_replying(reply: fn() -> Reply) -> Backend {
    Backend::builder().responder(move |_| reply()).start()
}

fn proxy_for(backend: &Backend) -> Proxy {
    Proxy::start(&ProxyConfig::single(&[backend.addr()]).up("protocol", "\"http/1.1\""))
}

/// How many requests each backend connection carried.
fn requests_per_connection(backend: &Backend) -> Vec<usize> {
    backend
        .connections()
        .iter()
        .map(|c| c.requests.len())
        .collect()
}

fn get11(proxy: &Proxy, extra_headers: &str) -> Response {
    let mut c = Client::connect(proxy.addr).expect("connect to the proxy");
    c.roundtrip(format!("GET /t HTTP/1.1\r\nHost: test.local\r\n{extra_headers}\r\n").as_bytes())
        .expect("a response")
}

#[test]
fn chunked_response_with_trailers_keeps_its_pooled_connection() {
    let backend = backend_replying(whole_response);
    let proxy = proxy_for(&backend);
    for _ in 0..REQUESTS {
        let r = client::get10(proxy.addr, "/t");
        assert_eq!(r.body, b"hello");
    }
    assert_eq!(requests_per_connection(&backend), vec![REQUESTS]);
}

#[test]
fn chunked_response_with_trailers_is_not_counted_as_not_reusable() {
    let backend = backend_replying(whole_response);
    let proxy = proxy_for(&backend);
    for _ in 0..REQUESTS {
        assert_eq!(client::get10(proxy.addr, "/t").status, 200);
    }
    let closed = proxy.metric_or_zero(
        "longhaul_upstream_connections_closed_total",
        &[("reason", "not_reusable")],
    );
    assert_eq!(closed, 0.0);
}

#[test]
fn chunked_response_with_unannounced_trailers_keeps_its_pooled_connection() {
    let backend = backend_replying(unannounced_trailers);
    let proxy = proxy_for(&backend);
    for _ in 0..REQUESTS {
        let r = client::get10(proxy.addr, "/t");
        assert_eq!(r.body, b"hello");
    }
    assert_eq!(requests_per_connection(&backend), vec![REQUESTS]);
}

#[test]
fn unannounced_trailer_fields_are_not_sent_on() {
    // hyper writes only trailer fields the response head announced; the body still arrives whole.
    let backend = backend_replying(unannounced_trailers);
    let proxy = proxy_for(&backend);
    let r = get11(&proxy, "TE: trailers\r\nConnection: TE\r\n");
    assert_eq!((r.body.as_slice(), r.trailers.len()), (&b"hello"[..], 0));
}

#[test]
fn trailers_reach_an_http11_client_that_sent_te_trailers() {
    let backend = backend_replying(whole_response);
    let proxy = proxy_for(&backend);
    let r = get11(&proxy, "TE: trailers\r\nConnection: TE\r\n");
    assert_eq!(r.trailer("x-checksum"), Some("abc"), "{r:?}");
}

#[test]
fn trailers_are_announced_to_an_http11_client_that_sent_te_trailers() {
    let backend = backend_replying(whole_response);
    let proxy = proxy_for(&backend);
    let r = get11(&proxy, "TE: trailers\r\nConnection: TE\r\n");
    assert_eq!(r.header("trailer"), Some("X-Checksum"), "{r:?}");
}

#[test]
fn http11_client_without_te_gets_the_body_without_trailers() {
    let backend = backend_replying(whole_response);
    let proxy = proxy_for(&backend);
    let r = get11(&proxy, "");
    assert_eq!((r.body.as_slice(), r.trailers.len()), (&b"hello"[..], 0));
}

#[test]
fn http11_client_without_te_is_not_announced_trailers() {
    let backend = backend_replying(whole_response);
    let proxy = proxy_for(&backend);
    let r = get11(&proxy, "");
    assert_eq!(r.header("trailer"), None, "{r:?}");
}

#[test]
fn http10_client_gets_the_body_without_trailers() {
    let backend = backend_replying(whole_response);
    let proxy = proxy_for(&backend);
    // TE: trailers means nothing to HTTP/1.0: its body ends at close, with no trailer section.
    let r = client::request(
        proxy.addr,
        b"GET /t HTTP/1.0\r\nHost: test.local\r\nTE: trailers\r\n\r\n",
    );
    assert_eq!(r.body, b"hello", "{r:?}");
    assert_eq!(r.header("trailer"), None, "{r:?}");
}

#[test]
fn trailer_section_in_pieces_keeps_the_pooled_connection() {
    let backend = backend_replying(trailers_in_pieces);
    let proxy = proxy_for(&backend);
    for _ in 0..REQUESTS {
        let r = client::get10(proxy.addr, "/t");
        assert_eq!(r.body, b"hello");
    }
    assert_eq!(requests_per_connection(&backend), vec![REQUESTS]);
}

#[test]
fn trailer_section_in_pieces_reaches_a_te_trailers_client_whole() {
    let backend = backend_replying(trailers_in_pieces);
    let proxy = proxy_for(&backend);
    let r = get11(&proxy, "TE: trailers\r\nConnection: TE\r\n");
    assert_eq!(
        (r.body.as_slice(), r.trailer("x-checksum")),
        (&b"hello"[..], Some("abc")),
        "{r:?}"
    );
}

#[test]
fn backend_is_asked_for_trailers_on_behalf_of_a_client_that_accepts_them() {
    let backend = backend_replying(whole_response);
    let proxy = proxy_for(&backend);
    get11(&proxy, "TE: trailers\r\nConnection: TE\r\n");
    let sent = &backend.requests()[0];
    assert_eq!(
        (sent.header("te"), sent.header("connection")),
        (Some("trailers"), Some("te"))
    );
}

#[test]
fn backend_is_not_asked_for_trailers_for_a_client_without_te() {
    let backend = backend_replying(whole_response);
    let proxy = proxy_for(&backend);
    get11(&proxy, "");
    assert_eq!(backend.requests()[0].header("te"), None);
}
