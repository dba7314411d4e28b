//! A small load generator for the demo: N short HTTP/1.0 requests, each on its own TCP
//! connection (like `curl --http1.0` or `ab`), C at a time, with every latency recorded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Version, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A single request may take this long before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What one run measured.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub requests: usize,
    pub errors: usize,
    pub first_error: Option<String>,
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

/// Sends `total` GET requests to `addr`, `concurrency` at a time; `progress` is called per request.
pub async fn run(
    addr: SocketAddr,
    total: usize,
    concurrency: usize,
    progress: impl Fn() + Send + Sync + 'static,
) -> LoadReport {
    let next = Arc::new(AtomicUsize::new(0));
    let progress = Arc::new(progress);
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let next = next.clone();
        let progress = progress.clone();
        workers.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let t = Instant::now();
                match tokio::time::timeout(REQUEST_TIMEOUT, one_request(addr)).await {
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
        elapsed: started.elapsed(),
        latencies,
    }
}

/// One connection, one `GET / HTTP/1.0`, the whole body read, then close.
async fn one_request(addr: SocketAddr) -> Result<(), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
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
