//! The simulated legacy backend: an HTTP/1.0 (or 1.1) server, plain or TLS, that charges a fixed
//! cost for every new connection and serves keep-alive requests quickly. Used by the demo, benches and tests.

mod tls;

pub use tls::{SIM_TLS_NAMES, SimIdentity, SimTls, SimTlsError};

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::config::Protocol;
use crate::middleware::hop_by_hop::ConnectionTokens;

/// How the simulated backend behaves.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub listen: SocketAddr,
    pub stats_listen: Option<SocketAddr>,
    /// Paid once per accepted connection before its first response (fork, TLS, a far backend).
    pub conn_cost: Duration,
    /// Paid by every request before its response (a backend that takes time to answer).
    pub response_delay: Duration,
    /// Idle keep-alive connections are closed after this; announced in `Keep-Alive: timeout=`.
    pub keepalive_timeout: Duration,
    /// Requests per connection, then `Connection: close`; 0 = unlimited.
    pub max_requests: u32,
    /// Connections served at once (a small device); more wait in the accept queue. 0 = unlimited.
    pub max_connections: usize,
    pub body_size: usize,
    /// The version the backend answers with.
    pub protocol: Protocol,
    /// Speak TLS with a certificate generated at start (`Sim::tls_ca_pem` signed it).
    pub tls: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: "127.0.0.1:8000".parse().expect("literal"),
            stats_listen: None,
            conn_cost: Duration::from_millis(5),
            response_delay: Duration::ZERO,
            keepalive_timeout: Duration::from_secs(5),
            max_requests: 0,
            max_connections: 0,
            body_size: 1024,
            protocol: Protocol::Http10,
            tls: false,
        }
    }
}

/// What the backend has seen.
#[derive(Debug, Default, Serialize)]
pub struct SimStats {
    pub connections_accepted: AtomicU64,
    pub requests: AtomicU64,
    /// TLS handshakes completed (full or resumed), and how many of them resumed a session.
    pub tls_handshakes: AtomicU64,
    pub tls_resumed: AtomicU64,
}

impl SimStats {
    pub fn connections(&self) -> u64 {
        self.connections_accepted.load(Ordering::Relaxed)
    }
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
    pub fn tls_handshakes(&self) -> u64 {
        self.tls_handshakes.load(Ordering::Relaxed)
    }
}

/// A running simulated backend; stops when dropped.
pub struct Sim {
    pub addr: SocketAddr,
    pub stats_addr: Option<SocketAddr>,
    pub stats: Arc<SimStats>,
    /// With `tls`: the PEM of the CA that signed the backend's certificate.
    pub tls_ca_pem: Option<String>,
    /// With `tls`: the backend's certificate chain and key.
    pub tls_identity: Option<SimIdentity>,
    stop: watch::Sender<bool>,
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl Sim {
    pub async fn start(config: SimConfig) -> std::io::Result<Sim> {
        let tls = match config.tls {
            true => Some(SimTls::generate().map_err(std::io::Error::other)?),
            false => None,
        };
        let listener = crate::server::bind(config.listen)?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(SimStats::default());
        let (stop, stop_rx) = watch::channel(false);
        let stats_addr = match config.stats_listen {
            Some(a) => {
                let l = crate::server::bind(a)?;
                let bound = l.local_addr()?;
                tokio::spawn(serve_stats(l, stats.clone(), stop_rx.clone()));
                Some(bound)
            }
            None => None,
        };
        let body = Bytes::from(vec![b'x'; config.body_size]);
        let tls_ca_pem = tls.as_ref().map(|t| t.ca_pem.clone());
        let tls_identity = tls.as_ref().map(|t| t.identity.clone());
        let acceptor = tls.map(|t| TlsAcceptor::from(t.config));
        tokio::spawn(accept(
            listener,
            Arc::new(config),
            acceptor,
            body,
            stats.clone(),
            stop_rx,
        ));
        Ok(Sim {
            addr,
            stats_addr,
            stats,
            tls_ca_pem,
            tls_identity,
            stop,
        })
    }
}

async fn accept(
    listener: TcpListener,
    config: Arc<SimConfig>,
    tls: Option<TlsAcceptor>,
    body: Bytes,
    stats: Arc<SimStats>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = (config.max_connections > 0)
        .then(|| Arc::new(tokio::sync::Semaphore::new(config.max_connections)));
    loop {
        // A device that serves N connections calls accept only while fewer are open.
        let slot = match &slots {
            Some(slots) => tokio::select! {
                slot = slots.clone().acquire_owned() => Some(slot.expect("never closed")),
                () = crate::server::stopping(&mut stop) => return,
            },
            None => None,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => { tokio::time::sleep(Duration::from_millis(10)).await; continue; }
            },
            () = crate::server::stopping(&mut stop) => return,
        };
        stats.connections_accepted.fetch_add(1, Ordering::Relaxed);
        let (config, body, stats, tls) = (config.clone(), body.clone(), stats.clone(), tls.clone());
        let stop = stop.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _ = stream.set_nodelay(true);
            tokio::time::sleep(config.conn_cost).await;
            let Some(acceptor) = tls else {
                return serve(stream, config, body, stats, stop).await;
            };
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            stats.tls_handshakes.fetch_add(1, Ordering::Relaxed);
            if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                stats.tls_resumed.fetch_add(1, Ordering::Relaxed);
            }
            serve(tls, config, body, stats, stop).await
        });
    }
}

/// Serves HTTP on one accepted connection (plain or TLS) until it ends or the backend stops.
async fn serve<IO>(
    io: IO,
    config: Arc<SimConfig>,
    body: Bytes,
    stats: Arc<SimStats>,
    mut stop: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let keepalive_timeout = config.keepalive_timeout;
    let served = Arc::new(AtomicU32::new(0));
    let service = service_fn(move |req| {
        let n = served.fetch_add(1, Ordering::Relaxed) + 1;
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let resp = respond(&config, &req, n, body.clone());
        let delay = config.response_delay;
        async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(keepalive_timeout)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = crate::server::stopping(&mut stop) => {}
    }
}

/// The response for the `n`th request on a connection.
fn respond(
    config: &SimConfig,
    req: &Request<Incoming>,
    n: u32,
    body: Bytes,
) -> Response<Full<Bytes>> {
    let wants_keepalive = match req.version() {
        Version::HTTP_10 => ConnectionTokens::of(req.headers()).keep_alive,
        _ => !ConnectionTokens::of(req.headers()).close,
    };
    let last = config.max_requests != 0 && n >= config.max_requests;
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = StatusCode::OK;
    if config.protocol == Protocol::Http10 {
        *resp.version_mut() = Version::HTTP_10;
    }
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if wants_keepalive && !last {
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        let mut announce = format!("timeout={}", config.keepalive_timeout.as_secs().max(1));
        if config.max_requests != 0 {
            announce.push_str(&format!(", max={}", config.max_requests - n));
        }
        if let Ok(v) = HeaderValue::try_from(announce) {
            headers.insert("keep-alive", v);
        }
    } else {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

async fn serve_stats(listener: TcpListener, stats: Arc<SimStats>, mut stop: watch::Receiver<bool>) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            () = crate::server::stopping(&mut stop) => return,
        };
        let stats = stats.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let resp = if req.uri().path() == "/stats" {
                    let json = serde_json::to_string(&*stats).expect("serializable");
                    let mut r = Response::new(Full::new(Bytes::from(json)));
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    r
                } else {
                    let mut r = Response::new(Full::new(Bytes::from_static(b"not found\n")));
                    *r.status_mut() = StatusCode::NOT_FOUND;
                    r
                };
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
