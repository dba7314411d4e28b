//! One pooled upstream connection (a plain or TLS `BackendStream` and what is known about it),
//! the deadpool `Manager` that dials and recycles it, and the one `dial` every backend connection goes through.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use socket2::Socket;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use super::server::{Failure, Server};
use super::stream::BackendStream;
use super::tls::HandshakeError;
use crate::clock;
use crate::config::TcpKeepaliveConfig;
use crate::metrics::{CloseReason, METRICS, TlsSide};

/// A keep-alive connection to one backend server, idle in the pool or leased to a request.
pub struct PooledConn {
    /// A cell so the pool's reaper, which sees idle connections by `&`, can let rustls process
    /// what arrived on an idle TLS one (`BackendStream::idle_is_dead`).
    stream: RefCell<BackendStream>,
    /// Requests sent on this connection so far.
    pub served: u32,
    /// `clock::now_ms()` when the connection was opened (`max_lifetime` counts from here).
    opened_ms: u64,
    /// `clock::now_ms()` when the connection last went idle (or was opened).
    idle_since_ms: u64,
    /// Frees the server's `max_connecting` slot when sent or dropped (see `hold_until_answered`).
    opening: Option<oneshot::Sender<()>>,
    fate: Fate,
}

/// Why a connection ended, counted once when it is dropped (with its connection, or alone
/// when the stream became a tunnel).
struct Fate {
    server: Arc<Server>,
    /// Why longhaul ended it; `None` while it may still be used.
    reason: Cell<Option<CloseReason>>,
}

impl Drop for Fate {
    fn drop(&mut self) {
        let reason = self
            .reason
            .get()
            .or_else(|| self.server.pool_closed())
            .unwrap_or(CloseReason::NotReusable);
        self.server.metrics.closed(reason);
    }
}

impl PooledConn {
    fn new(stream: BackendStream, server: Arc<Server>, slot: OwnedSemaphorePermit) -> PooledConn {
        server.metrics.opened.inc();
        let now = clock::now_ms();
        PooledConn {
            stream: RefCell::new(stream),
            served: 0,
            opened_ms: now,
            // Idle from birth: a warm connection nobody used must still expire.
            idle_since_ms: now,
            opening: Some(hold_until_answered(slot)),
            fate: Fate {
                server,
                reason: Cell::new(None),
            },
        }
    }

    /// The server answered on this connection (or it is being reused): it was accepted, so its
    /// `max_connecting` slot is free for the next connect.
    pub fn accepted(&mut self) {
        self.opening = None;
    }

    /// Marks the connection busy before a request is written on it.
    pub fn start_request(&mut self) {
        self.served += 1;
    }

    /// Marks the connection idle once its response was read to the end and it may be reused.
    pub fn went_idle(&mut self) {
        self.idle_since_ms = clock::now_ms();
    }

    /// Records why the connection ends (the first reason wins); counted when it is dropped.
    pub fn end(&self, reason: CloseReason) {
        if self.fate.reason.get().is_none() {
            self.fate.reason.set(Some(reason));
        }
    }

    /// The stream, for a tunnel: the connection is counted as closed for `reason` here.
    pub fn into_stream(self, reason: CloseReason) -> BackendStream {
        self.end(reason);
        self.stream.into_inner()
    }

    /// The stream, for the request that holds the connection.
    pub fn stream_mut(&mut self) -> &mut BackendStream {
        self.stream.get_mut()
    }

    pub fn server(&self) -> &Arc<Server> {
        &self.fate.server
    }

    /// The reason this idle connection must not be handed out again, if any. A backend's idle
    /// close is learned here, from how long the connection had been idle.
    pub fn expiry(&self) -> Option<CloseReason> {
        let server = self.server();
        // One clock read for both ages.
        let now = clock::now_ms();
        let idle_for = Duration::from_millis(now.saturating_sub(self.idle_since_ms));
        if self.peer_has_closed() {
            server.learn_observed_idle_close(idle_for);
            Some(CloseReason::PeerClosed)
        } else if Duration::from_millis(now.saturating_sub(self.opened_ms))
            >= server.settings.pool.max_lifetime
        {
            Some(CloseReason::MaxLifetime)
        } else if self.served >= server.request_budget() {
            Some(CloseReason::MaxRequests)
        } else if idle_for >= server.idle_limit() {
            Some(CloseReason::IdleTimeout)
        } else {
            None
        }
    }

    /// A FIN, an RST, a close_notify or stray bytes on an idle connection. Costs no syscall
    /// unless the reactor has seen the socket become readable since it last would-blocked.
    fn peer_has_closed(&self) -> bool {
        self.stream.borrow_mut().idle_is_dead()
    }
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, io::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The TLS handshake failed: the certificate, an alert, or the socket during it.
    #[error("{0}")]
    Tls(HandshakeError),
    /// `[upstream.tls]` gives this server no name TLS can verify.
    #[error("TLS: {0}")]
    TlsName(String),
}

impl ConnectError {
    /// Refused, reset or timed out: nothing reached the server, so a new connect may be tried.
    /// A TLS failure is not: another try meets the same certificate.
    pub fn is_retriable(&self) -> bool {
        matches!(self, ConnectError::Io(_) | ConnectError::Timeout(_))
    }
}

/// Opens and recycles connections to one server.
pub struct ConnManager {
    pub server: Arc<Server>,
}

impl ConnManager {
    /// A new connection outside the pool (upgrades), counted like a pooled one.
    pub async fn dial(&self) -> Result<PooledConn, ConnectError> {
        let Opened { stream, slot } = open(&self.server).await?;
        let handshook = stream.is_tls();
        // A connect only brings an ejected server back; health counts exchanges: a server that
        // accepts and then resets every request must still be ejected (`Upstream::accept`).
        let mut conn = PooledConn::new(stream, self.server.clone(), slot);
        if handshook {
            // The server's handshake messages were its answer: it accepted the connection.
            conn.accepted();
        }
        Ok(conn)
    }
}

impl managed::Manager for ConnManager {
    type Type = PooledConn;
    type Error = ConnectError;

    /// Boxed: a dial (TCP connect, TLS handshake) is kilobytes of state, and unboxed it would
    /// size every checkout's future, which each request moves several times, though almost
    /// every checkout finds an idle connection (callgrind: ~2k instructions of memcpy).
    fn create(&self) -> impl Future<Output = Result<PooledConn, ConnectError>> + Send {
        Box::pin(self.dial())
    }

    async fn recycle(&self, conn: &mut PooledConn, _: &Metrics) -> RecycleResult<ConnectError> {
        conn.accepted();
        match conn.expiry() {
            Some(reason) => {
                conn.end(reason);
                Err(RecycleError::message(reason.as_str()))
            }
            None => Ok(()),
        }
    }
}

/// A connected socket only shows that the kernel completed the handshake; the connection may
/// still wait in the server's accept queue. Its slot is held until the server answers on it, but
/// no longer than this, so a slow first response does not stall the pool's growth.
const MAX_ACCEPT_WAIT: Duration = Duration::from_millis(250);

/// Holds `slot` until the returned sender fires or is dropped, or `MAX_ACCEPT_WAIT` passes.
fn hold_until_answered(slot: OwnedSemaphorePermit) -> oneshot::Sender<()> {
    let (answered, wait) = oneshot::channel();
    tokio::spawn(async move {
        let _ = tokio::time::timeout(MAX_ACCEPT_WAIT, wait).await;
        drop(slot);
    });
    answered
}

/// A new connection and the server's `max_connecting` slot it holds.
pub struct Opened {
    pub stream: BackendStream,
    pub slot: OwnedSemaphorePermit,
}

/// Opens a connection (TCP, then TLS when configured) for traffic and tells passive health how it went.
pub async fn open(server: &Server) -> Result<Opened, ConnectError> {
    match connect_holding_slot(server).await {
        Ok(opened) => {
            server.record_connected();
            Ok(opened)
        }
        Err(e) => {
            server.record_failure(Failure::Unreachable);
            Err(e)
        }
    }
}

/// Opens a connection to a server (for a probe), with the slot released once connected.
pub async fn connect(server: &Server) -> Result<BackendStream, ConnectError> {
    Ok(connect_holding_slot(server).await?.stream)
}

/// Waits for one of the server's `max_connecting` slots, then connects with the configured
/// socket options and, for a TLS upstream, handshakes; `connect_timeout` bounds both.
async fn connect_holding_slot(server: &Server) -> Result<Opened, ConnectError> {
    let slot = server
        .connecting
        .clone()
        .acquire_owned()
        .await
        .expect("the connect semaphore is never closed");
    let timeout = server.settings.connect_timeout;
    match tokio::time::timeout(timeout, connect_stream(server)).await {
        Ok(stream) => Ok(Opened {
            stream: stream?,
            slot,
        }),
        Err(_) => Err(ConnectError::Timeout(timeout)),
    }
}

/// TCP to the server, then the TLS handshake when its upstream has `[upstream.tls]`.
async fn connect_stream(server: &Server) -> Result<BackendStream, ConnectError> {
    let addr = resolve(&server.address).await?;
    let tcp = connect_to(addr, &server.settings.tcp_keepalive, server.settings.mark).await?;
    let Some(tls) = &server.settings.tls else {
        return Ok(BackendStream::Plain(tcp));
    };
    let name = tls
        .name_for(&server.address)
        .map_err(ConnectError::TlsName)?;
    let started = Instant::now();
    let shaken = tls.handshake(name, tcp).await;
    let resumed = shaken.as_ref().is_ok_and(|(_, resumed)| *resumed);
    METRICS.tls.record(
        TlsSide::Upstream,
        shaken.is_ok(),
        resumed,
        started.elapsed(),
    );
    server.tls_handshakes.record(shaken.is_ok(), resumed);
    match shaken {
        Ok((stream, _)) => Ok(BackendStream::Tls(Box::new(stream))),
        Err(e) => {
            tracing::debug!(upstream = %server.upstream, server = %server.address, error = %e,
                "TLS handshake failed");
            Err(ConnectError::Tls(e))
        }
    }
}

/// Opens a TCP connection with TCP_NODELAY, SO_KEEPALIVE and, when given, SO_MARK.
pub async fn connect_to(
    addr: SocketAddr,
    ka: &TcpKeepaliveConfig,
    mark: Option<u32>,
) -> Result<TcpStream, ConnectError> {
    let socket = Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_tcp_keepalive(&ka.socket_option())?;
    socket.set_tcp_nodelay(true)?;
    if let Some(mark) = mark {
        socket.set_mark(mark)?;
    }
    socket.set_nonblocking(true)?;
    let socket = TcpSocket::from_std_stream(socket.into());
    Ok(socket.connect(addr).await?)
}

async fn resolve(address: &str) -> Result<SocketAddr, ConnectError> {
    if let Ok(addr) = address.parse() {
        return Ok(addr);
    }
    let mut addrs = tokio::net::lookup_host(address)
        .await
        .map_err(|e| ConnectError::Resolve(address.to_string(), e))?;
    addrs.next().ok_or_else(|| {
        ConnectError::Resolve(
            address.to_string(),
            io::Error::new(io::ErrorKind::NotFound, "no addresses"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::stream::idle_stream_is_dead;
    use tokio::sync::Semaphore;

    /// A connected pair of loopback streams: (ours, the peer's).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (peer, _) = listener.accept().await.unwrap();
        (ours, peer)
    }

    /// Polls `check` for up to a second (the reactor needs a turn to see the peer's packet).
    async fn eventually(check: impl Fn() -> bool) -> bool {
        for _ in 0..100 {
            if check() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn a_quiet_idle_stream_is_alive() {
        let (ours, _peer) = pair().await;
        tokio::task::yield_now().await;
        assert!(!idle_stream_is_dead(&ours));
    }

    #[tokio::test]
    async fn an_idle_stream_whose_peer_closed_is_dead() {
        let (ours, peer) = pair().await;
        drop(peer);
        assert!(eventually(|| idle_stream_is_dead(&ours)).await);
    }

    #[tokio::test]
    async fn an_idle_stream_with_stray_bytes_is_dead() {
        let (ours, mut peer) = pair().await;
        tokio::io::AsyncWriteExt::write_all(&mut peer, b"HTTP/1.1 408 Request Timeout\r\n")
            .await
            .unwrap();
        assert!(eventually(|| idle_stream_is_dead(&ours)).await);
        drop(peer);
    }

    #[tokio::test]
    async fn a_stale_readiness_after_a_fully_read_response_is_not_a_close() {
        let (mut ours, mut peer) = pair().await;
        tokio::io::AsyncWriteExt::write_all(&mut peer, b"ok")
            .await
            .unwrap();
        let mut two = [0u8; 2];
        tokio::io::AsyncReadExt::read_exact(&mut ours, &mut two)
            .await
            .unwrap();
        assert!(!idle_stream_is_dead(&ours), "readable, but nothing to read");
        assert!(!idle_stream_is_dead(&ours), "and quiet after that");
        drop(peer);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connect_slot_is_freed_when_the_server_answers() {
        let slots = Arc::new(Semaphore::new(1));
        let answered = hold_until_answered(slots.clone().acquire_owned().await.unwrap());
        tokio::task::yield_now().await;
        assert_eq!(slots.available_permits(), 0, "held while unanswered");
        let _ = answered.send(());
        let freed = tokio::time::timeout(Duration::from_millis(1), slots.acquire()).await;
        assert!(freed.is_ok(), "freed at once by the answer");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connect_slot_is_freed_after_max_accept_wait_without_an_answer() {
        let slots = Arc::new(Semaphore::new(1));
        let _answered = hold_until_answered(slots.clone().acquire_owned().await.unwrap());
        let early = tokio::time::timeout(MAX_ACCEPT_WAIT / 2, slots.acquire()).await;
        assert!(early.is_err(), "still held halfway through MAX_ACCEPT_WAIT");
        let later = tokio::time::timeout(MAX_ACCEPT_WAIT, slots.acquire()).await;
        assert!(later.is_ok(), "freed once MAX_ACCEPT_WAIT passed");
    }
}
