//! A small load generator for the demo: N short HTTP/1.0 requests, each on its own TCP (or TLS,
//! full handshake each) connection (like `curl --http1.0` or `ab`), C at a time, every latency recorded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

use bytes::Bytes;
use http::{Request, Version, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A single request may take this long before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What one run measured.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub requests: usize,
    pub errors: usize,
    pub first_error: Option<String>,
    /// TLS handshakes the clients completed with the target (0 for plain HTTP).
    pub tls_handshakes: usize,
    pub elapsed: Duration,
    /// Sorted ascending.
    pub latencies: Vec<Duration>,
}

impl LoadReport {
    pub fn requests_per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The latency below which `q` (0..=1) of the requests finished.
    pub fn percentile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank =
            ((self.latencies.len() as f64 * q).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[rank - 1]
    }
}

/// Where the load goes: plain HTTP, or HTTPS with a full handshake per request (no resumption,
/// like a script that runs `curl` per request).
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Target {
    pub fn plain(addr: SocketAddr) -> Target {
        Target { addr, tls: None }
    }

    /// HTTPS to `addr`, trusting the CA certificates in `ca_pem`, verifying `name`.
    pub fn tls(addr: SocketAddr, ca_pem: &str, name: &str) -> Result<Target, String> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots
                .add(cert.map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        let name = ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
        Ok(Target {
            addr,
            tls: Some((TlsConnector::from(Arc::new(config)), name)),
        })
    }
}

/// Sends `total` GET requests to `target`, `concurrency` at a time; `progress` is called per request.
pub async fn run(
    target: Target,
    total: usize,
    concurrency: usize,
    progress: impl Fn() + Send + Sync + 'static,
) -> LoadReport {
    let next = Arc::new(AtomicUsize::new(0));
    let handshakes = Arc::new(AtomicUsize::new(0));
    let progress = Arc::new(progress);
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let next = next.clone();
        let handshakes = handshakes.clone();
        let progress = progress.clone();
        let target = target.clone();
        workers.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let t = Instant::now();
                match tokio::time::timeout(REQUEST_TIMEOUT, one_request(&target, &handshakes)).await
                {
                    Ok(Ok(())) => latencies.push(t.elapsed()),
                    Ok(Err(e)) => errors.push(e),
                    Err(_) => errors.push(format!("no response within {REQUEST_TIMEOUT:?}")),
                }
                progress();
            }
            (latencies, errors)
        });
    }
    let mut latencies = Vec::with_capacity(total);
    let mut errors = Vec::new();
    while let Some(done) = workers.join_next().await {
        let (l, e) = done.expect("load worker panicked");
        latencies.extend(l);
        errors.extend(e);
    }
    latencies.sort_unstable();
    LoadReport {
        requests: total,
        errors: errors.len(),
        first_error: errors.into_iter().next(),
        tls_handshakes: handshakes.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        latencies,
    }
}

/// One connection (TLS when the target is; `handshakes` counts the completed ones), one
/// `GET / HTTP/1.0`, the body read, then close.
async fn one_request(target: &Target, handshakes: &AtomicUsize) -> Result<(), String> {
    let stream = TcpStream::connect(target.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    match &target.tls {
        None => get(target.addr, stream).await,
        Some((connector, name)) => {
            let tls = connector
                .connect(name.clone(), stream)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            handshakes.fetch_add(1, Ordering::Relaxed);
            get(target.addr, tls).await
        }
    }
}

async fn get<IO>(addr: SocketAddr, io: IO) -> Result<(), String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let req = Request::builder()
        .version(Version::HTTP_10)
        .uri("/")
        .header(header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .expect("static request");
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    if !status.is_success() {
        return Err(format!("status {status}"));
    }
    Ok(())
}
