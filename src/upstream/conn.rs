//! One pooled upstream connection (a hyper HTTP/1 client handle) and the deadpool `Manager` that
//! opens it with the configured socket options and decides at checkout whether it may be reused.

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use socket2::{SockRef, Socket};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use super::server::{Failure, Server};
use crate::body::RequestBody;
use crate::clock;
use crate::config::TcpKeepaliveConfig;
use crate::metrics::CloseReason;

/// A live keep-alive connection to one backend server.
pub struct UpstreamConn {
    pub sender: SendRequest<RequestBody>,
    /// A dup of the socket, only to peek for a FIN or RST the connection task has not seen yet.
    probe: Option<Socket>,
    /// Requests sent on this connection so far.
    pub served: u32,
    /// False once a response said the connection cannot carry another request.
    pub reusable: bool,
    /// Frees the server's `max_connecting` slot when sent or dropped (see `hold_until_answered`).
    opening: Option<oneshot::Sender<()>>,
    state: Arc<ConnState>,
}

/// What the connection task needs to know when the connection ends.
struct ConnState {
    /// `clock::now_ms()` when the connection went idle; 0 while it carries a request.
    idle_since_ms: AtomicU64,
    /// Why longhaul closed it, if longhaul did (a `CloseReason` + 1; 0 = the peer closed it).
    close_reason: AtomicU8,
}

impl UpstreamConn {
    /// The server answered on this connection (or it is being reused): it was accepted, so its
    /// `max_connecting` slot is free for the next connect.
    pub fn accepted(&mut self) {
        self.opening = None;
    }

    /// Marks the connection busy before a request is written on it.
    pub fn start_request(&mut self) {
        self.served += 1;
        self.state.idle_since_ms.store(0, Ordering::Relaxed);
    }

    /// Marks the connection idle once its response has been read to the end.
    pub fn finish_request(&self) {
        self.state
            .idle_since_ms
            .store(clock::now_ms(), Ordering::Relaxed);
    }

    /// Records why longhaul is about to drop this connection (counted once, when it closes).
    pub fn retire(&self, reason: CloseReason) {
        let code = reason as u8 + 1;
        let _ =
            self.state
                .close_reason
                .compare_exchange(0, code, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        match self.state.idle_since_ms.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            since => clock::since(since),
        }
    }

    /// The reason this idle connection must not be handed out again, if any.
    pub fn expiry(&self, server: &Server, metrics: &Metrics) -> Option<CloseReason> {
        if self.sender.is_closed() || self.peer_has_closed() {
            Some(CloseReason::PeerClosed)
        } else if !self.reusable {
            Some(CloseReason::NotReusable)
        } else if metrics.age() >= server.settings.pool.max_lifetime {
            Some(CloseReason::MaxLifetime)
        } else if self.served >= server.request_budget() {
            Some(CloseReason::MaxRequests)
        } else if self.idle_for() >= server.idle_limit() {
            Some(CloseReason::IdleTimeout)
        } else {
            None
        }
    }

    /// Peeks one byte without blocking: EOF or an error means the backend closed the socket;
    /// bytes on an idle connection mean it cannot be trusted either.
    fn peer_has_closed(&self) -> bool {
        let Some(probe) = &self.probe else {
            return false;
        };
        let mut buf = [MaybeUninit::<u8>::uninit(); 1];
        !matches!(probe.peek(&mut buf), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
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
    #[error("HTTP handshake failed: {0}")]
    Handshake(#[from] hyper::Error),
}

impl ConnectError {
    /// Refused, reset or timed out: nothing reached the server, so a new connect may be tried.
    pub fn is_retriable(&self) -> bool {
        matches!(self, ConnectError::Io(_) | ConnectError::Timeout(_))
    }
}

/// Opens and recycles connections to one server.
pub struct ConnManager {
    pub server: Arc<Server>,
}

impl managed::Manager for ConnManager {
    type Type = UpstreamConn;
    type Error = ConnectError;

    async fn create(&self) -> Result<UpstreamConn, ConnectError> {
        let server = &self.server;
        let Opened { stream, slot } = open(server).await?;
        // A connect only brings an ejected server back; health counts exchanges: a server that
        // accepts and then resets every request must still be ejected (`Upstream::accept`).
        let probe = SockRef::from(&stream).try_clone().ok();
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await?;
        let state = Arc::new(ConnState {
            // Idle from birth: a warm connection nobody used must still expire.
            idle_since_ms: AtomicU64::new(clock::now_ms()),
            close_reason: AtomicU8::new(0),
        });
        server.metrics.opened.inc();
        tokio::spawn(watch_connection(connection, state.clone(), server.clone()));
        Ok(UpstreamConn {
            sender,
            probe,
            served: 0,
            reusable: true,
            opening: Some(hold_until_answered(slot)),
            state,
        })
    }

    async fn recycle(
        &self,
        conn: &mut UpstreamConn,
        metrics: &Metrics,
    ) -> RecycleResult<ConnectError> {
        conn.accepted();
        if let Some(reason) = conn.expiry(&self.server, metrics) {
            conn.retire(reason);
            return Err(RecycleError::message(reason.as_str()));
        }
        // A healthy connection can be briefly not-ready right after its last response.
        if conn.sender.ready().await.is_err() {
            conn.retire(CloseReason::PeerClosed);
            return Err(RecycleError::message("closed"));
        }
        Ok(())
    }
}

/// Drives the hyper connection; when it ends, counts the close and learns from idle closes.
async fn watch_connection(
    connection: hyper::client::conn::http1::Connection<TokioIo<TcpStream>, RequestBody>,
    state: Arc<ConnState>,
    server: Arc<Server>,
) {
    let result = connection.with_upgrades().await;
    let reason = match state.close_reason.load(Ordering::Relaxed) {
        // Nobody on our side closed it (yet). While idle, that is the backend's keep-alive timer
        // (a FIN, an RST, or a stray 408 that hyper reports as an error). During an exchange, a
        // clean end means hyper saw the response refuse keep-alive, often before the proxy has
        // looked at the head; an error means the exchange broke.
        // Unless the pool itself was closed: then it went with its pool, idle or busy.
        0 => match (
            server.pool_closed(),
            state.idle_since_ms.load(Ordering::Relaxed),
        ) {
            (Some(reason), _) => reason,
            (None, 0) if result.is_err() => CloseReason::Error,
            (None, 0) => CloseReason::NotReusable,
            (None, idle_since) => {
                server.learn_observed_idle_close(clock::since(idle_since));
                CloseReason::PeerClosed
            }
        },
        code => CloseReason::ALL[(code - 1) as usize],
    };
    server.metrics.closed(reason);
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

/// A new TCP connection and the server's `max_connecting` slot it holds.
pub struct Opened {
    pub stream: TcpStream,
    pub slot: OwnedSemaphorePermit,
}

/// Opens a TCP connection for traffic and tells passive health how it went.
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

/// Opens a TCP connection to a server (for a probe), with the slot released once connected.
pub async fn connect(server: &Server) -> Result<TcpStream, ConnectError> {
    Ok(connect_holding_slot(server).await?.stream)
}

/// Waits for one of the server's `max_connecting` slots, then connects with the configured
/// socket options; `connect_timeout` bounds the connect itself.
async fn connect_holding_slot(server: &Server) -> Result<Opened, ConnectError> {
    let slot = server
        .connecting
        .clone()
        .acquire_owned()
        .await
        .expect("the connect semaphore is never closed");
    let addr = resolve(&server.address).await?;
    let timeout = server.settings.connect_timeout;
    let connecting = connect_to(addr, &server.settings.tcp_keepalive, server.settings.mark);
    match tokio::time::timeout(timeout, connecting).await {
        Ok(stream) => Ok(Opened {
            stream: stream?,
            slot,
        }),
        Err(_) => Err(ConnectError::Timeout(timeout)),
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
    use tokio::sync::Semaphore;

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
