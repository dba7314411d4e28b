//! The lease on a scripted loopback backend: each verdict's fate for the connection, an idle
//! close noticed at checkout, and the retry rules as `forward` applies them.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::body::RequestBody;
use crate::config::Config;
use crate::error::ProxyError;
use crate::metrics::{CloseReason, METRICS};
use crate::upstream::{PooledBody, Upstream};

const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
const OK_CLOSE: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
const SHORT: &str = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab";
const LONG: &str = "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nstart";

/// What the backend does with one request.
#[derive(Clone, Copy)]
enum Act {
    Reply(&'static str),
    /// Reply, then close the connection at once.
    ReplyAndClose(&'static str),
    /// Read the request and close without a byte of response.
    Close,
    /// Read the request and never answer (until the proxy closes).
    Silent,
}

/// A backend that plays `script(connection, request)` and counts what it received.
struct Backend {
    addr: String,
    requests: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
}

impl Backend {
    async fn start(script: fn(usize, usize) -> Act) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound").to_string();
        let requests = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let (r, c) = (requests.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let n = c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, n, script, r.clone()));
            }
        });
        Backend {
            addr,
            requests,
            connections,
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn serve(
    mut stream: TcpStream,
    connection: usize,
    script: fn(usize, usize) -> Act,
    requests: Arc<AtomicUsize>,
) {
    for request in 0.. {
        if !read_request(&mut stream).await {
            return;
        }
        requests.fetch_add(1, Ordering::SeqCst);
        match script(connection, request) {
            Act::Reply(bytes) => {
                if stream.write_all(bytes.as_bytes()).await.is_err() {
                    return;
                }
            }
            Act::ReplyAndClose(bytes) => {
                let _ = stream.write_all(bytes.as_bytes()).await;
                return;
            }
            Act::Close => return,
            Act::Silent => {
                let _ = stream.read(&mut [0u8; 1]).await;
                return;
            }
        }
    }
}

/// Reads one request head and its Content-Length body; false at EOF.
async fn read_request(stream: &mut TcpStream) -> bool {
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => seen.push(byte[0]),
            _ => return false,
        }
    }
    let head = String::from_utf8_lossy(&seen).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse().expect("a length"));
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.is_ok()
}

fn upstream(name: &str, backend: &Backend) -> Upstream {
    upstream_with(name, backend, "")
}

/// An upstream with `settings` (lines of its `[[upstream]]` table) added.
fn upstream_with(name: &str, backend: &Backend, settings: &str) -> Upstream {
    let text = format!(
        "[[upstream]]\nname = \"{name}\"\nservers = [\"{}\"]\n{settings}\n[upstream.pool]\nmin_idle = 0\n",
        backend.addr
    );
    let config = Config::parse(&text, Path::new("unit.toml")).expect("valid config");
    Upstream::new(&config.upstream[0], None, None)
}

fn request(method: Method, body: RequestBody) -> Request<RequestBody> {
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = "/".parse().expect("a uri");
    req
}

async fn forward(
    upstream: &Upstream,
    req: Request<RequestBody>,
) -> Result<Response<PooledBody>, ProxyError> {
    let (mut head, body) = req.into_parts();
    upstream.forward(&mut head, &[], body).await
}

fn get() -> Request<RequestBody> {
    request(Method::GET, RequestBody::Empty)
}

async fn body_of(upstream: &Upstream, req: Request<RequestBody>) -> Bytes {
    let resp = forward(upstream, req).await.expect("a response");
    resp.into_body().collect().await.expect("a body").to_bytes()
}

fn closed(upstream: &Upstream, reason: CloseReason) -> u64 {
    let server = upstream.servers[0].server.address.as_str();
    METRICS
        .upstream_connections_closed_total
        .with_label_values(&[upstream.name.as_str(), server, reason.as_str()])
        .get()
}

fn idle(upstream: &Upstream) -> usize {
    upstream.servers[0].usage().idle
}

/// Waits (bounded) until `done` holds.
async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn a_reusable_response_gives_the_connection_back_to_the_pool() {
    let backend = Backend::start(|_, _| Act::Reply(OK)).await;
    let upstream = upstream("lease-reusable", &backend);

    assert_eq!(body_of(&upstream, get()).await, "ok");
    assert_eq!(body_of(&upstream, get()).await, "ok");

    assert_eq!(backend.connections(), 1);
    assert_eq!(upstream.servers[0].server.metrics.requests_reused.get(), 1);
    assert_eq!(idle(&upstream), 1);
}

#[tokio::test]
async fn a_close_verdict_closes_the_connection_as_not_reusable() {
    let backend = Backend::start(|_, _| Act::Reply(OK_CLOSE)).await;
    let upstream = upstream("lease-close-verdict", &backend);

    assert_eq!(body_of(&upstream, get()).await, "ok");

    assert_eq!(closed(&upstream, CloseReason::NotReusable), 1);
    assert_eq!(idle(&upstream), 0);
}

#[tokio::test]
async fn a_body_abandoned_before_its_end_closes_the_connection_as_not_reusable() {
    let backend = Backend::start(|_, _| Act::Reply(LONG)).await;
    let upstream = upstream("lease-abandoned", &backend);

    let resp = forward(&upstream, get()).await.expect("a response");
    drop(resp);

    assert_eq!(closed(&upstream, CloseReason::NotReusable), 1);
    assert_eq!(idle(&upstream), 0);
}

#[tokio::test]
async fn a_connection_the_backend_closed_while_idle_is_counted_as_peer_closed_and_not_used() {
    let backend = Backend::start(|_, _| Act::ReplyAndClose(OK)).await;
    let upstream = upstream("lease-idle-close", &backend);
    assert_eq!(body_of(&upstream, get()).await, "ok");
    assert_eq!(idle(&upstream), 1, "the response allowed reuse");

    assert!(eventually(|| closed(&upstream, CloseReason::PeerClosed) == 1).await);
    assert_eq!(body_of(&upstream, get()).await, "ok");

    assert_eq!(backend.connections(), 2);
    assert_eq!(
        upstream.metrics.retry_stale.get(),
        0,
        "nothing was sent on it"
    );
}

#[tokio::test]
async fn a_get_on_a_reused_connection_that_closed_unanswered_is_retried_once() {
    let backend = Backend::start(|conn, req| match (conn, req) {
        (0, 0) => Act::Reply(OK),
        (0, _) => Act::Close,
        _ => Act::Reply(OK),
    })
    .await;
    let upstream = upstream("lease-stale-get", &backend);
    assert_eq!(body_of(&upstream, get()).await, "ok");

    assert_eq!(body_of(&upstream, get()).await, "ok");

    assert_eq!(upstream.metrics.retry_stale.get(), 1);
    assert_eq!(backend.requests(), 3);
    assert_eq!(closed(&upstream, CloseReason::PeerClosed), 1);
}

#[tokio::test]
async fn a_stale_retry_goes_on_a_new_connection_even_when_other_idle_ones_are_stale_too() {
    // Two connections answer once, then close on the next request without a response: the
    // stale-close race when the backend's idle timeout ends every pooled connection at once.
    let backend = Backend::start(|conn, req| match (conn, req) {
        (0 | 1, 0) => Act::Reply(OK),
        (0 | 1, _) => Act::Close,
        _ => Act::Reply(OK),
    })
    .await;
    let upstream = upstream("lease-stale-siblings", &backend);
    let first = forward(&upstream, get()).await.expect("a response");
    let second = forward(&upstream, get()).await.expect("a response");
    for resp in [first, second] {
        resp.into_body().collect().await.expect("a body");
    }
    assert_eq!(idle(&upstream), 2, "two reused connections idle");

    assert_eq!(body_of(&upstream, get()).await, "ok");

    assert_eq!(upstream.metrics.retry_stale.get(), 1);
    assert_eq!(
        backend.connections(),
        3,
        "the retry dialled a new connection"
    );
    assert_eq!(
        backend.requests(),
        4,
        "sent on one stale connection, then the new one"
    );
    assert_eq!(
        closed(&upstream, CloseReason::Replaced),
        1,
        "the other idle one gave its place"
    );
}

#[tokio::test]
async fn a_response_cut_short_closes_the_connection_as_error() {
    let backend = Backend::start(|_, _| Act::ReplyAndClose(SHORT)).await;
    let upstream = upstream("lease-cut-short", &backend);
    let resp = forward(&upstream, get()).await.expect("a response head");

    let body = resp.into_body().collect().await;

    assert!(body.is_err(), "the body ended before its Content-Length");
    assert_eq!(closed(&upstream, CloseReason::Error), 1);
}

#[tokio::test]
async fn a_get_that_fails_again_after_its_stale_retry_is_not_sent_a_third_time() {
    let backend = Backend::start(|conn, req| match (conn, req) {
        (0, 0) => Act::Reply(OK),
        _ => Act::Close,
    })
    .await;
    let upstream = upstream("lease-stale-twice", &backend);
    assert_eq!(body_of(&upstream, get()).await, "ok");

    let failed = forward(&upstream, get()).await;

    assert!(
        failed.is_err(),
        "the retry on a fresh connection failed too"
    );
    assert_eq!(upstream.metrics.retry_stale.get(), 1);
    assert_eq!(backend.requests(), 3);
}

#[tokio::test]
async fn a_post_is_never_sent_again_once_its_bytes_were_written() {
    let backend = Backend::start(|conn, req| match (conn, req) {
        (0, 0) => Act::Reply(OK),
        _ => Act::Close,
    })
    .await;
    let upstream = upstream("lease-post-once", &backend);
    assert_eq!(body_of(&upstream, get()).await, "ok");
    let post = request(Method::POST, RequestBody::Full(Some(Bytes::from("data"))));

    let failed = forward(&upstream, post).await;

    assert!(failed.is_err(), "the POST failed on the stale connection");
    assert_eq!(upstream.metrics.retry_stale.get(), 0);
    assert!(eventually(|| backend.requests() == 2).await);
    assert_eq!(backend.requests(), 2, "the POST reached the backend once");
}

#[tokio::test]
async fn a_response_timeout_closes_the_connection_as_error() {
    let backend = Backend::start(|_, _| Act::Silent).await;
    let upstream = upstream_with("lease-timeout", &backend, "response_timeout = \"100ms\"\n");

    let failed = forward(&upstream, get()).await;

    assert!(matches!(failed, Err(ProxyError::ResponseTimeout { .. })));
    assert_eq!(closed(&upstream, CloseReason::Error), 1);
    assert_eq!(closed(&upstream, CloseReason::PeerClosed), 0);
}
