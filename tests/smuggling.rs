//! Request smuggling and desync: a request whose framing is ambiguous never reaches a pooled
//! upstream connection; it gets 400 and its client connection is closed. Ambiguous responses from
//! the backend give the client 502 and retire the backend connection.
//!
//! Every request test warms one pooled backend connection (`max_size = 1`) with `/before`, sends
//! the attack on its own client connection (HTTP/1.1, so a close is the proxy's decision, with a
//! pipelined `/smuggled` request behind it), then sends `/after`; the backend must have parsed
//! exactly `/before` and `/after` on that one connection and nothing else.

mod support;

use std::time::Duration;

use support::backend::{self, Backend, Reply, Request};
use support::client::{self, Client, Response};
use support::proxy::{Proxy, ProxyConfig};

/// A request the proxy must never forward, pipelined behind each attack.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: test.local\r\n\r\n";

fn proxy_for(backend: &Backend) -> Proxy {
    Proxy::start(&ProxyConfig::single(&[backend.addr()]).pool("max_size", "1"))
}

/// Sends `raw` on a fresh client connection; returns the first response (None if the proxy
/// closed without answering) and whether the proxy then closed the connection with nothing more.
fn attack(proxy: &Proxy, raw: &[u8]) -> (Option<Response>, bool) {
    let mut c = Client::connect(proxy.addr).expect("connect to the proxy");
    c.set_read_timeout(Duration::from_secs(5));
    // The proxy may close while we are still writing; what it answered is what counts.
    let _ = c.send(raw);
    let response = c.read_response(false).ok();
    let closed = c.wait_closed(Duration::from_secs(3));
    (response, closed)
}

fn targets(reqs: &[Request]) -> Vec<&str> {
    reqs.iter().map(|r| r.target.as_str()).collect()
}

/// The pooled backend connection carried exactly `/before` and `/after`, nothing else reached
/// the backend, and the response to `/after` is the backend's own.
fn assert_pool_untouched(proxy: &Proxy, backend: &Backend) {
    let after = client::get10(proxy.addr, "/after");
    assert_eq!(after.status, 200, "/after: {}", after.body_str());
    assert_eq!(after.body, backend.expected_body("GET", "/after"));
    let conns = backend.connections();
    let per_conn: Vec<Vec<&str>> = conns.iter().map(|c| targets(&c.requests)).collect();
    assert_eq!(
        per_conn,
        vec![vec!["/before", "/after"]],
        "the backend must parse exactly /before and /after on the one pooled connection"
    );
}

/// The whole scenario for a request the proxy must refuse with 400 and a close.
fn assert_rejected(raw: &[u8]) {
    let backend = Backend::start();
    let proxy = proxy_for(&backend);
    assert_eq!(client::get10(proxy.addr, "/before").status, 200);

    let (response, closed) = attack(&proxy, raw);
    let shown = String::from_utf8_lossy(raw);
    let r = response.unwrap_or_else(|| panic!("no response at all to {shown:?}"));
    assert_eq!(
        r.status,
        400,
        "request {shown:?} answered {} {:?}",
        r.status,
        r.body_str()
    );
    assert!(
        closed,
        "the connection stayed open (or sent more) after rejecting {shown:?}"
    );
    assert_pool_untouched(&proxy, &backend);
}

fn post11(headers: &str, body: &str) -> Vec<u8> {
    format!("POST /attack HTTP/1.1\r\nHost: test.local\r\n{headers}\r\n{body}{SMUGGLED}")
        .into_bytes()
}

// === Content-Length with Transfer-Encoding ===

#[test]
fn content_length_with_chunked_is_framed_by_chunked_and_closes_the_client_connection() {
    // hyper applies RFC 9112 §6.1 before longhaul sees the request: chunked wins, Content-Length
    // is dropped, the connection closes after the response. What must hold: the backend gets one
    // request whose body is the de-chunked `hello` with a matching Content-Length, never the raw
    // Content-Length (4, which would cut the chunk) and never the smuggled request.
    let backend = Backend::start();
    let proxy = proxy_for(&backend);
    assert_eq!(client::get10(proxy.addr, "/before").status, 200);

    let raw = post11(
        "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        "5\r\nhello\r\n0\r\n\r\n",
    );
    let (response, closed) = attack(&proxy, &raw);
    let r = response.expect("a response to CL + TE");
    assert_eq!(r.status, 200, "CL + TE answered {:?}", r.body_str());
    assert!(
        closed,
        "the client connection stayed open (or answered the smuggled request) after CL + TE"
    );

    let after = client::get10(proxy.addr, "/after");
    assert_eq!(after.status, 200);
    let conns = backend.connections();
    assert_eq!(conns.len(), 1, "one pooled backend connection");
    assert_eq!(
        targets(&conns[0].requests),
        vec!["/before", "/attack", "/after"],
        "the backend parsed the attack as one request and never saw /smuggled"
    );
    let attack = &conns[0].requests[1];
    assert!(
        !attack.chunked,
        "chunked framing reached the HTTP/1.0 backend"
    );
    assert_eq!(attack.body, b"hello", "the body must be the de-chunked one");
    assert_eq!(
        attack.header_all("content-length"),
        vec!["5"],
        "exactly one Content-Length, matching the de-chunked body"
    );
    assert!(!attack.has_header("transfer-encoding"));
}

#[test]
fn long_content_length_with_chunked_cannot_swallow_the_next_request() {
    // TE.CL: a Content-Length longer than the chunked body would make a length-reading hop eat
    // the smuggled request as body. The body must end at the last chunk.
    let backend = Backend::start();
    let proxy = proxy_for(&backend);
    assert_eq!(client::get10(proxy.addr, "/before").status, 200);

    let body = "5\r\nhello\r\n0\r\n\r\n";
    let raw = post11(
        &format!(
            "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
            body.len() + SMUGGLED.len()
        ),
        body,
    );
    let (response, closed) = attack(&proxy, &raw);
    let r = response.expect("a response to TE + long CL");
    assert_eq!(r.status, 200, "TE + long CL answered {:?}", r.body_str());
    assert!(closed, "the client connection stayed open after TE + CL");
    let after = client::get10(proxy.addr, "/after");
    assert_eq!(after.status, 200);
    let conns = backend.connections();
    assert_eq!(conns.len(), 1);
    assert_eq!(
        targets(&conns[0].requests),
        vec!["/before", "/attack", "/after"],
        "the long Content-Length swallowed nothing and /smuggled never reached the backend"
    );
    let attack = &conns[0].requests[1];
    assert_eq!(attack.body, b"hello");
    assert_eq!(attack.header_all("content-length"), vec!["5"]);
}

// === Content-Length ===

#[test]
fn differing_content_length_headers_get_400_and_close() {
    assert_rejected(&post11(
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "hello!",
    ));
}

#[test]
fn differing_content_length_headers_on_an_http10_request_get_400_and_close() {
    // Keep-alive asked, so a close is a decision.
    assert_rejected(
        b"POST /attack HTTP/1.0\r\nHost: test.local\r\nConnection: keep-alive\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    );
}

#[test]
fn differing_content_lengths_in_one_header_get_400_and_close() {
    assert_rejected(&post11("Content-Length: 5, 6\r\n", "hello!"));
}

// === Transfer-Encoding ===

#[test]
fn chunked_followed_by_identity_gets_400_and_close() {
    assert_rejected(&post11(
        "Transfer-Encoding: chunked, identity\r\n",
        "5\r\nhello\r\n0\r\n\r\n",
    ));
}

#[test]
fn xchunked_transfer_encoding_gets_400_and_close() {
    assert_rejected(&post11(
        "Transfer-Encoding: xchunked\r\n",
        "5\r\nhello\r\n0\r\n\r\n",
    ));
}

#[test]
fn chunked_repeated_in_one_header_gets_400_and_close() {
    assert_rejected(&post11(
        "Transfer-Encoding: chunked, chunked\r\n",
        "5\r\nhello\r\n0\r\n\r\n",
    ));
}

#[test]
fn two_transfer_encoding_headers_get_400_and_close() {
    assert_rejected(&post11(
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "5\r\nhello\r\n0\r\n\r\n",
    ));
}

#[test]
fn transfer_encoding_on_http10_request_gets_400_and_close() {
    // HTTP/1.0 has no chunked coding (RFC 9112 §6.1). Keep-alive asked, so a close is a decision.
    let raw = format!(
        "POST /attack HTTP/1.0\r\nHost: test.local\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n{SMUGGLED}"
    );
    assert_rejected(raw.as_bytes());
}

// === header syntax ===

#[test]
fn whitespace_between_header_name_and_colon_gets_400_and_close() {
    assert_rejected(&post11(
        "Content-Length: 5\r\nTransfer-Encoding : chunked\r\n",
        "0\r\n\r\n",
    ));
}

#[test]
fn obs_fold_continuation_line_gets_400_and_close() {
    assert_rejected(&post11(
        "Content-Length: 5\r\nX-Folded: first\r\n chunked\r\n",
        "hello",
    ));
}

#[test]
fn bare_cr_inside_a_header_value_gets_400_and_close() {
    assert_rejected(&post11(
        "X-Note: a\rTransfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        "hello",
    ));
}

#[test]
fn bare_lf_ends_a_header_line_and_reaches_the_backend_as_crlf() {
    // RFC 9112 §2.2 lets a recipient take a bare LF as a line end, and hyper's parser does (it has
    // no option to refuse it). A desync needs the next hop to parse differently; longhaul writes
    // every header line again with CRLF, so the backend parses exactly what longhaul parsed:
    // two headers, one request, its 5-byte body. (Rejecting with 400 would need a second,
    // hand-written parse of the head, which longhaul does not do.)
    let backend = Backend::start();
    let proxy = proxy_for(&backend);
    let raw = b"POST /attack HTTP/1.1\r\nHost: test.local\r\nX-Note: a\nX-Injected: yes\r\n\
Content-Length: 5\r\nConnection: close\r\n\r\nhello";
    let r = client::request(proxy.addr, raw);
    assert_eq!(r.status, 200, "{}", r.body_str());
    let seen = backend.requests();
    assert_eq!(
        seen.len(),
        1,
        "the backend parsed exactly one request: {seen:?}"
    );
    assert_eq!(seen[0].target, "/attack");
    assert_eq!(seen[0].header("x-note"), Some("a"));
    assert_eq!(seen[0].header("x-injected"), Some("yes"));
    assert_eq!(seen[0].body, b"hello");
}

#[test]
fn nul_inside_a_header_value_gets_400_and_close() {
    assert_rejected(&post11("X-Note: a\0b\r\nContent-Length: 5\r\n", "hello"));
}

// === chunked body syntax ===

#[test]
fn chunk_size_with_0x_prefix_gets_400_and_close() {
    assert_rejected(&post11(
        "Transfer-Encoding: chunked\r\n",
        "0x10\r\n0123456789abcdef\r\n0\r\n\r\n",
    ));
}

#[test]
fn chunk_size_with_plus_sign_gets_400_and_close() {
    assert_rejected(&post11(
        "Transfer-Encoding: chunked\r\n",
        "+5\r\nhello\r\n0\r\n\r\n",
    ));
}

#[test]
fn overflowing_chunk_size_gets_400_and_close() {
    // 2^68 + 5: wraps to 5 in a 64-bit parser that ignores overflow.
    assert_rejected(&post11(
        "Transfer-Encoding: chunked\r\n",
        "100000000000000005\r\nhello\r\n0\r\n\r\n",
    ));
}

#[test]
fn over_long_chunk_extension_gets_400_and_close() {
    let ext = "x".repeat(64 * 1024);
    assert_rejected(&post11(
        "Transfer-Encoding: chunked\r\n",
        &format!("5;ext={ext}\r\nhello\r\n0\r\n\r\n"),
    ));
}

// === ambiguous responses from the backend ===

/// A backend answering `/bad` with `bad_response` (keeping the socket open, so reuse would show)
/// and everything else with a clean keep-alive response. The client must get 502 for `/bad`, and
/// `/next` must go out on a new backend connection: the first one carried `/bad` only.
fn assert_response_rejected(bad_response: &'static [u8]) {
    let backend = Backend::builder()
        .responder(move |req| {
            let bytes = if req.target == "/bad" {
                bad_response.to_vec()
            } else {
                backend::http10_response(200, &[("Connection", "keep-alive")], b"clean")
            };
            Reply::Raw {
                bytes,
                keep_open: true,
            }
        })
        .start();
    let proxy = proxy_for(&backend);
    let shown = String::from_utf8_lossy(bad_response);

    let r = client::get10(proxy.addr, "/bad");
    assert_eq!(
        r.status,
        502,
        "response {shown:?} reached the client as {} {:?}",
        r.status,
        r.body_str()
    );
    assert!(
        r.body_str().contains("legacy"),
        "502 body names the upstream: {:?}",
        r.body_str()
    );

    let next = client::get10(proxy.addr, "/next");
    assert_eq!(next.status, 200, "{}", next.body_str());
    assert_eq!(next.body, b"clean");
    let per_conn: Vec<Vec<String>> = backend
        .connections()
        .iter()
        .map(|c| c.requests.iter().map(|q| q.target.clone()).collect())
        .collect();
    assert_eq!(
        per_conn,
        vec![vec!["/bad".to_string()], vec!["/next".to_string()]],
        "after {shown:?} the connection must be retired and /next sent on a new one"
    );
    assert_eq!(backend.accepted(), 2);
    let protocol_errors = proxy.metric_or_zero(
        "longhaul_upstream_errors_total",
        &[("upstream", "legacy"), ("kind", "protocol")],
    );
    assert_eq!(protocol_errors, 1.0, "one protocol error counted");
}

#[test]
fn backend_response_with_content_length_and_chunked_gets_502_and_retires_the_connection() {
    assert_response_rejected(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
}

#[test]
fn backend_response_with_differing_content_lengths_gets_502_and_retires_the_connection() {
    assert_response_rejected(
        b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\nConnection: keep-alive\r\n\r\nhello!",
    );
}

#[test]
fn http10_backend_response_with_transfer_encoding_gets_502_and_retires_the_connection() {
    assert_response_rejected(
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
}

#[test]
fn backend_response_with_repeated_chunked_gets_502_and_retires_the_connection() {
    assert_response_rejected(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
}

#[test]
fn backend_response_with_a_coding_before_chunked_gets_502_and_retires_the_connection() {
    assert_response_rejected(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
}

#[test]
fn backend_response_with_two_transfer_encoding_headers_gets_502_and_retires_the_connection() {
    assert_response_rejected(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
}
