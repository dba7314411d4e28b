//! The admin listener: /metrics, /healthz, /readyz, /pools and the live status page at /.
//! Read-only views of the running proxy; it never touches client traffic.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::METRICS;
use crate::proxy::Routing;
use crate::transparent::Transparent;
use crate::upstream::{ServerPool, Upstream};

const STATUS_PAGE: &str = include_str!("admin/status.html");

/// How long /readyz waits when it probes a server that has no open connection.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the admin views read: the routed upstreams and, in transparent mode, the destinations.
#[derive(Clone)]
pub struct Sources {
    pub routing: Arc<ArcSwap<Routing>>,
    pub transparent: Option<Arc<Transparent>>,
}

impl Sources {
    /// Every upstream with a pool right now.
    fn upstreams(&self) -> Vec<Arc<Upstream>> {
        let mut all = self.routing.load().upstreams.clone();
        if let Some(t) = &self.transparent {
            all.extend(t.destinations.upstreams());
        }
        all
    }
}

pub async fn serve(listener: TcpListener, sources: Sources, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue; }
            },
            _ = shutdown.changed() => return,
        };
        let sources = sources.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let upstreams = sources.upstreams();
                async move { Ok::<_, Infallible>(handle(req, &upstreams).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(req: Request<Incoming>, upstreams: &[Arc<Upstream>]) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    match req.uri().path() {
        "/metrics" => {
            refresh_pool_gauges(upstreams);
            respond(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                METRICS.encode(),
            )
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => readiness(upstreams).await,
        "/pools" => respond(
            StatusCode::OK,
            "application/json",
            serde_json::to_string(&pools(upstreams)).expect("serializable"),
        ),
        "/" => respond(StatusCode::OK, "text/html; charset=utf-8", STATUS_PAGE),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz, /readyz, /pools or /\n",
        ),
    }
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", body)
}

/// Pool gauges are read from deadpool when scraped, so the request path never updates them.
pub fn refresh_pool_gauges(upstreams: &[Arc<Upstream>]) {
    for upstream in upstreams {
        for sp in &upstream.servers {
            let usage = sp.usage();
            let m = &sp.server.metrics;
            m.idle.set(usage.idle as i64);
            m.busy.set(usage.busy as i64);
            m.waiters.set(usage.waiters as i64);
        }
    }
}

/// 200 when every upstream has a server that accepts connections; 503 naming those that don't.
async fn readiness(upstreams: &[Arc<Upstream>]) -> Response<Full<Bytes>> {
    let mut not_ready = Vec::new();
    for upstream in upstreams {
        let mut reachable = false;
        for sp in &upstream.servers {
            if server_reachable(sp).await {
                reachable = true;
                break;
            }
        }
        if !reachable {
            let servers: Vec<&str> = upstream
                .servers
                .iter()
                .map(|s| s.server.address.as_str())
                .collect();
            not_ready.push(format!(
                "upstream {}: no server accepts connections ({})",
                upstream.name,
                servers.join(", ")
            ));
        }
    }
    if not_ready.is_empty() {
        text(StatusCode::OK, "ready\n")
    } else {
        respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            format!("not ready\n{}\n", not_ready.join("\n")),
        )
    }
}

/// A server with a live pooled connection is reachable; otherwise try a TCP connect.
async fn server_reachable(sp: &ServerPool) -> bool {
    let usage = sp.usage();
    if sp.server.is_healthy() && usage.idle + usage.busy > 0 {
        return true;
    }
    let connect = tokio::net::TcpStream::connect(sp.server.address.as_str());
    matches!(
        tokio::time::timeout(READY_PROBE_TIMEOUT, connect).await,
        Ok(Ok(_))
    )
}

#[derive(Serialize)]
pub struct PoolsView {
    pub upstreams: Vec<UpstreamView>,
}

#[derive(Serialize)]
pub struct UpstreamView {
    pub name: String,
    pub protocol: &'static str,
    pub servers: Vec<ServerView>,
}

#[derive(Serialize)]
pub struct ServerView {
    pub address: String,
    pub max_size: usize,
    /// Connections in use at once: the learned limit (`adaptive`), else `max_size`.
    pub limit: usize,
    pub idle: usize,
    pub busy: usize,
    pub waiters: usize,
    pub opened: u64,
    pub requests: u64,
    pub reused: u64,
    pub reuse_ratio: f64,
    pub keepalive_timeout_seconds: Option<f64>,
    pub healthy: bool,
    /// Connections to this server speak TLS (`[upstream.tls]`).
    pub tls: bool,
    /// TLS handshakes that succeeded (full or resumed), and those that failed.
    pub tls_handshakes: u64,
    pub tls_handshake_errors: u64,
    /// Resumed / successful handshakes; null before the first one.
    pub tls_resumed_ratio: Option<f64>,
}

pub fn pools(upstreams: &[Arc<Upstream>]) -> PoolsView {
    PoolsView {
        upstreams: upstreams
            .iter()
            .map(|u| UpstreamView {
                name: u.name.clone(),
                protocol: u.protocol.as_str(),
                servers: u.servers.iter().map(|sp| server_view(sp)).collect(),
            })
            .collect(),
    }
}

fn server_view(sp: &ServerPool) -> ServerView {
    let usage = sp.usage();
    let m = &sp.server.metrics;
    let reused = m.requests_reused.get();
    let requests = reused + m.requests_new.get();
    let counts = &sp.server.tls_handshakes;
    let resumed = counts.resumed.load(Relaxed);
    let handshakes = resumed + counts.full.load(Relaxed);
    ServerView {
        address: sp.server.address.clone(),
        max_size: sp.server.settings.pool.max_size,
        limit: sp.limit(),
        idle: usage.idle,
        busy: usage.busy,
        waiters: usage.waiters,
        opened: m.opened.get(),
        requests,
        reused,
        reuse_ratio: if requests == 0 {
            0.0
        } else {
            reused as f64 / requests as f64
        },
        keepalive_timeout_seconds: sp.server.learned_keepalive().map(|d| d.as_secs_f64()),
        healthy: sp.server.is_healthy(),
        tls: sp.server.settings.tls.is_some(),
        tls_handshakes: handshakes,
        tls_handshake_errors: counts.failed.load(Relaxed),
        tls_resumed_ratio: (handshakes > 0).then(|| resumed as f64 / handshakes as f64),
    }
}
