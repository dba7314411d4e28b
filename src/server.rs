//! Client side: listeners, the accept loop under the connection limit, the hyper HTTP/1 server
//! connection with its timeouts, the tower stack every request goes through, and graceful drain.

mod client_stream;
mod first_read;
mod stall;
mod timer;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tower::timeout::Timeout;
use tower::util::{MapRequest, MapRequestLayer, MapResponse, MapResponseLayer};
use tower::{ServiceBuilder, ServiceExt};

use crate::body::ProxyBody;
use crate::config::{ServerConfig, TcpKeepaliveConfig};
use crate::metrics::METRICS;
use crate::middleware::access_log::{AccessLog, AccessLogLayer};
use crate::middleware::forwarded::{self, ClientSide};
use crate::middleware::guard::{RequestGuard, RequestGuardLayer};
use crate::middleware::hop_by_hop;
use crate::middleware::shed::{Shed, ShedLayer};
use crate::proxy::{Proxy, ProxyOptions};
use crate::tls::TlsTerminator;
use crate::transparent::{Destination, Transparent};
use client_stream::Acceptor;
pub use client_stream::ClientStream;
use first_read::{Prefixed, first_head, first_tls_head};
use stall::StallGuardedIo;
use timer::ClientTimer;

/// hyper's own header-count limit when none is set.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// Accept queue length: bursts of short connections must not be refused by the kernel.
const LISTEN_BACKLOG: i32 = 4096;

/// Binds the admin listener: SO_REUSEADDR and a deep backlog, one socket.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = listening_socket(addr, false, false, None)?;
    TcpListener::from_std(socket.into())
}

/// Binds one worker's client listener with SO_REUSEPORT, so every worker can bind the same
/// address and the kernel spreads connections over them; `ip_transparent` accepts connections
/// for any address (TPROXY). Accepted client sockets inherit TCP_NODELAY and `keepalive` from it
/// (Linux copies them at accept), so no connection pays a setsockopt for them.
pub fn bind_shared(
    addr: SocketAddr,
    ip_transparent: bool,
    keepalive: &TcpKeepaliveConfig,
) -> std::io::Result<std::net::TcpListener> {
    Ok(listening_socket(addr, ip_transparent, true, Some(keepalive))?.into())
}

/// On a listener passed by socket activation: the options `bind_shared` sets before binding
/// (SO_REUSEPORT aside) that accepted client sockets inherit.
pub fn set_client_options(
    listener: &std::net::TcpListener,
    addr: SocketAddr,
    ip_transparent: bool,
    keepalive: &TcpKeepaliveConfig,
) -> std::io::Result<()> {
    let socket = socket2::SockRef::from(listener);
    socket.set_tcp_keepalive(&keepalive.socket_option())?;
    socket.set_tcp_nodelay(true)?;
    if ip_transparent {
        if addr.is_ipv4() {
            socket.set_ip_transparent_v4(true)?;
        } else {
            socket.set_ip_transparent_v6(true)?;
        }
    }
    socket.set_nonblocking(true)
}

/// The admin listener from a socket passed by socket activation.
pub fn adopt(listener: std::net::TcpListener) -> std::io::Result<TcpListener> {
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

fn listening_socket(
    addr: SocketAddr,
    ip_transparent: bool,
    reuse_port: bool,
    client_keepalive: Option<&TcpKeepaliveConfig>,
) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if let Some(keepalive) = client_keepalive {
        // A client that vanished (power loss behind a NAT) is noticed even on a silent tunnel.
        socket.set_tcp_keepalive(&keepalive.socket_option())?;
        socket.set_tcp_nodelay(true)?;
    }
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if ip_transparent {
        if addr.is_ipv4() {
            socket.set_ip_transparent_v4(true)?;
        } else {
            socket.set_ip_transparent_v6(true)?;
        }
    }
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket)
}

/// The tower stack every request goes through, as all connections share it (one concurrency
/// limit); `for_client` builds one connection's, whose proxy knows that client.
#[derive(Clone)]
pub struct Stack {
    proxy: Proxy,
    shed: ShedLayer,
    max_line_bytes: usize,
    request_timeout: Duration,
    access_log: bool,
}

pub fn stack(proxy: Proxy, server: &ServerConfig, access_log: bool) -> Stack {
    Stack {
        proxy,
        shed: ShedLayer::new(server.max_concurrent_requests),
        max_line_bytes: server.max_request_header_bytes,
        request_timeout: server.request_timeout,
        access_log,
    }
}

impl Stack {
    /// The stack of one client connection. Outermost first; each layer says why it sits where
    /// it does.
    pub fn for_client(&self, client: ClientSide, destination: Option<Destination>) -> ClientStack {
        ServiceBuilder::new()
            // First: gives the request its id, so every log line, error body and upstream
            // request carries it; sees every outcome, shed and timed-out requests included,
            // and turns errors into responses.
            .layer(AccessLogLayer {
                enabled: self.access_log,
            })
            // An overlong request line or field line, or ambiguous framing, is refused before
            // anything acts on it, above all before it can reach a shared upstream connection.
            .layer(RequestGuardLayer {
                max_line_bytes: self.max_line_bytes,
            })
            // Past the concurrency limit, answer 503 at once instead of queueing without bound.
            .layer(self.shed.clone())
            // A guard on the whole request: pool wait, retries and the backend's response head.
            .timeout(self.request_timeout)
            // Connection-scoped headers never cross the proxy, in either direction. Ours are
            // added after stripping on both ways, so a `Connection: via` from either peer cannot
            // remove them; on requests they are written with the head (`forwarded::Forwarding`).
            .layer(MapRequestLayer::new(
                hop_by_hop::strip_request as RequestMap,
            ))
            .layer(MapResponseLayer::new(rewrite_response as ResponseMap))
            .service(self.proxy.for_client(client, destination))
    }
}

/// A response's way out: the backend's connection-scoped headers go, then ours (`Via`) come.
/// One layer for both: each layer moves the response once more.
fn rewrite_response(resp: http::Response<ProxyBody>) -> http::Response<ProxyBody> {
    forwarded::add_response_headers(hop_by_hop::strip_response(resp))
}

type RequestMap = fn(http::Request<Incoming>) -> http::Request<Incoming>;
type ResponseMap = fn(http::Response<ProxyBody>) -> http::Response<ProxyBody>;
/// Header rewriting around the proxy service.
type Rewrite = MapRequest<MapResponse<Proxy, ResponseMap>, RequestMap>;
/// The request guard, load shedding past the concurrency limit, and the request timeout.
type Guarded = RequestGuard<Shed<Timeout<Rewrite>>>;
/// One client connection's stack, named so it can be cloned per request without boxing.
pub type ClientStack = AccessLog<Guarded>;

/// Client connection settings, from `[server]`.
#[derive(Clone)]
pub struct ClientSettings {
    pub header_read_timeout: Duration,
    pub client_idle_timeout: Duration,
    pub keepalive: bool,
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub send_timeout: Duration,
    pub proxy_options: ProxyOptions,
}

impl ClientSettings {
    pub fn from_config(s: &ServerConfig) -> ClientSettings {
        ClientSettings {
            header_read_timeout: s.header_read_timeout,
            client_idle_timeout: s.client_idle_timeout,
            keepalive: s.client_keepalive,
            max_head_bytes: s.max_request_head_bytes,
            max_headers: s.max_request_headers,
            send_timeout: s.send_timeout,
            proxy_options: ProxyOptions {
                stall_timeout: s.body_read_timeout,
                allow_connect: s.allow_connect,
                tunnel_idle_timeout: s.tunnel_idle_timeout,
            },
        }
    }
}

/// What every accept loop shares, whichever worker it runs on: one stack (so one concurrency
/// limit), one connection limit, one shutdown signal, one TLS configuration.
#[derive(Clone)]
pub struct Serving {
    pub stack: Stack,
    pub settings: Arc<ClientSettings>,
    pub limit: Arc<Semaphore>,
    pub shutdown: watch::Receiver<bool>,
    pub transparent: Option<Arc<Transparent>>,
    /// Terminates TLS on the `tls_listen` listeners.
    pub tls: Option<Arc<TlsTerminator>>,
}

/// Accepts clients on `worker`'s listener until shutdown, at most `limit` at a time across all
/// workers. Each connection is served on this loop, where it was accepted. `tls`: the listener
/// is one of `tls_listen`, and each connection starts with a TLS handshake.
pub async fn accept_loop(listener: TcpListener, serving: Serving, worker: usize, tls: bool) {
    let Serving {
        stack,
        settings,
        limit,
        shutdown,
        transparent,
        tls: terminator,
    } = serving;
    let terminator = if tls { terminator } else { None };
    // Dropped when shutdown comes, even while a connection waits for its slot: from then on new
    // clients are refused at once (or reach the new process) instead of queueing for a reset.
    let mut listener = match Acceptor::new(listener) {
        Ok(acceptor) => Some(acceptor),
        Err(e) => {
            tracing::error!(worker, error = %e, "cannot watch the listener; it accepts nothing");
            return;
        }
    };
    // One wait for the stop, kept across accepts: a fresh `changed()` per accept would join and
    // leave the watch's waiter list for every client (callgrind: about 120 instructions each).
    let mut watching = shutdown.clone();
    let stop = stopping(&mut watching);
    tokio::pin!(stop);
    while let Some(accepting) = &listener {
        let accepted = tokio::select! {
            accepted = accepting.accept() => accepted,
            () = &mut stop => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // The slot is taken after accepting: a loop holding a free slot while its own listener
        // is quiet would starve a client queued on another worker's listener. Past the limit,
        // each worker holds at most this one connection; the rest wait in the kernel backlog.
        // Not cut short by a drain: this client connected before the listener closed (or was
        // handed to a new process), and dropping it now would reset its unread request. A drain
        // that holds every permit lets this wait end only when the process is done.
        let permit = match limit.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => tokio::select! {
                permit = limit.clone().acquire_owned() => permit.expect("never closed"),
                // `stop` is not polled again: the loop ends with this connection.
                () = &mut stop => {
                    listener = None;
                    limit.clone().acquire_owned().await.expect("never closed")
                }
            },
        };
        tracing::debug!(worker, client = %peer, tls, "client connection accepted");
        let stack = stack.clone();
        let settings = settings.clone();
        let shutdown = shutdown.clone();
        let transparent = transparent.clone();
        let terminator = terminator.clone();
        // Boxed once: spawning moves what it is given several times (callgrind: 7k
        // instructions of memcpy per connection for a 6 KiB future). The TLS and transparent
        // arms are boxed again so a plain connection's future stays small.
        tokio::spawn(Box::pin(async move {
            match (terminator, transparent) {
                (Some(tls), _) => {
                    Box::pin(serve_tls(stream, peer, stack, &settings, shutdown, &tls)).await
                }
                (None, Some(t)) => {
                    if let Some(stream) = registered(stream, peer) {
                        Box::pin(t.handle(stream, peer, stack, &settings, shutdown)).await
                    }
                }
                (None, None) => serve_client(stream, peer, stack, &settings, shutdown, None).await,
            }
            drop(permit);
        }));
    }
}

/// The client's socket registered with the event loop now: TLS and transparent mode need a
/// tokio stream from the start. None (logged) if registering failed.
fn registered(stream: ClientStream, peer: SocketAddr) -> Option<TcpStream> {
    match stream.into_tokio() {
        Ok(stream) => Some(stream),
        Err(e) => {
            tracing::debug!(client = %peer, error = %e, "cannot register the client connection");
            None
        }
    }
}

/// Counts a client connection in the downstream metrics while it lives.
struct Counted;

impl Counted {
    fn new() -> Counted {
        METRICS.downstream_connections_total.inc();
        METRICS.downstream_connections_active.inc();
        Counted
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        METRICS.downstream_connections_active.dec();
    }
}

/// Serves one plain client connection until it closes, or drains it on shutdown.
pub async fn serve_client(
    mut stream: ClientStream,
    peer: SocketAddr,
    stack: Stack,
    settings: &ClientSettings,
    shutdown: watch::Receiver<bool>,
    destination: Option<Destination>,
) {
    let _counted = Counted::new();
    // hyper's buffers are built only once the client has sent a whole request head; a client
    // without one within header_read_timeout is closed without an answer, as hyper itself would
    // do. A drain does not cut this wait short: the client connected before the listener closed
    // (or was handed to a new process) and its request is owed an answer.
    let started = tokio::time::Instant::now();
    let Some(first) = first_head(
        &mut stream,
        settings.header_read_timeout,
        settings.max_head_bytes,
    )
    .await
    else {
        return;
    };
    let client = Client {
        peer,
        destination,
        tls: false,
        head_time_left: time_left(settings.header_read_timeout, started),
    };
    // Boxed: hyper's connection state is kilobytes, and a client that has sent nothing yet
    // should not hold it (bench mem-client); the future above is small until here.
    Box::pin(serve_http(
        Prefixed::new(first, stream),
        client,
        stack,
        settings,
        shutdown,
    ))
    .await;
}

/// Serves one client of a TLS listener: the handshake, then HTTP as on any connection. A failed
/// or timed-out handshake closes the connection; it is counted and logged at debug.
async fn serve_tls(
    stream: ClientStream,
    peer: SocketAddr,
    stack: Stack,
    settings: &ClientSettings,
    shutdown: watch::Receiver<bool>,
    terminator: &TlsTerminator,
) {
    let _counted = Counted::new();
    let Some(stream) = registered(stream, peer) else {
        return;
    };
    // As on plain connections, a drain lets the handshake and the first request arrive (each
    // bounded by its own timeout): the client connected before the listener closed.
    let mut tls = match terminator.accept(stream).await {
        Ok(tls) => tls,
        Err(e) => {
            tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
            return;
        }
    };
    // As on plain connections: hyper's buffers only once the client has sent a request head.
    let started = tokio::time::Instant::now();
    let Some(first) = first_tls_head(
        &mut tls,
        settings.header_read_timeout,
        settings.max_head_bytes,
    )
    .await
    else {
        return;
    };
    let client = Client {
        peer,
        destination: None,
        tls: true,
        head_time_left: time_left(settings.header_read_timeout, started),
    };
    Box::pin(serve_http(
        Prefixed::new(first, tls),
        client,
        stack,
        settings,
        shutdown,
    ))
    .await;
}

/// What is left of `limit` since `started`, at least 1 ms (hyper needs a positive timeout).
fn time_left(limit: Duration, started: tokio::time::Instant) -> Duration {
    limit
        .saturating_sub(started.elapsed())
        .max(Duration::from_millis(1))
}

/// What the proxy knows of a client connection once its first head is in.
struct Client {
    peer: SocketAddr,
    destination: Option<Destination>,
    /// The connection came through a TLS listener (`X-Forwarded-Proto: https`).
    tls: bool,
    /// What is left of header_read_timeout for the first request head.
    head_time_left: Duration,
}

/// The hyper HTTP/1 server connection over `io`, until it closes, or drained on shutdown.
async fn serve_http<I>(
    io: I,
    client: Client,
    stack: Stack,
    settings: &ClientSettings,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Client {
        peer,
        destination,
        tls,
        head_time_left,
    } = client;
    let first_request = FirstRequest::default();
    let seen = first_request.clone();
    let client_side = ClientSide {
        addr: Some(peer),
        tls,
    };
    let stack = stack.for_client(client_side, destination);
    let service = service_fn(move |req: http::Request<Incoming>| {
        seen.arrived();
        crate::allocator::note_request();
        let svc = stack.clone();
        async move { svc.oneshot(req).await.map_err(|e: Infallible| match e {}) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(ClientTimer::new(
            head_time_left,
            settings.client_idle_timeout,
        ))
        .header_read_timeout(head_time_left)
        // The whole head, however its bytes arrive: `max_header_size` bounds a head parsed
        // complete from one read, `max_buf_size` one still incomplete. Over either, hyper
        // answers 431 and closes the connection.
        .max_header_size(settings.max_head_bytes)
        .max_buf_size(settings.max_head_bytes)
        .keep_alive(settings.keepalive)
        .half_close(true);
    // hyper parses into a stack array of its default size; any explicit limit, even the same
    // one, makes it fill a fresh array per request (callgrind: 1.4 M instructions per 2,100).
    if settings.max_headers != HYPER_DEFAULT_MAX_HEADERS {
        builder.max_headers(settings.max_headers);
    }
    let conn = builder
        .serve_connection(
            TokioIo::new(StallGuardedIo::new(io, settings.send_timeout)),
            service,
        )
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stopping(&mut shutdown) => {
            // hyper closes a connection at once if no request has started on it: wait for
            // the first one (hyper bounds that by the head timeout), then close after its answer.
            tokio::select! {
                result = conn.as_mut() => result,
                () = first_request.wait(head_time_left) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(client = %peer, error = %e, "client connection ended with an error");
    }
}

/// Whether hyper has handed a client connection's first request to the service yet.
#[derive(Clone, Default)]
struct FirstRequest(Arc<tokio::sync::Notify>);

impl FirstRequest {
    fn arrived(&self) {
        self.0.notify_one();
    }

    /// Resolves once a request has arrived (at once if one already has), or after `limit`.
    async fn wait(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.0.notified()).await;
    }
}

/// Resolves once shutdown has been signalled.
pub async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
