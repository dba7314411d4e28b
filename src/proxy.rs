//! The innermost service: routes a request, prepares its body for the upstream's protocol, sends
//! it through the upstream's pool, and turns a `ProxyError` into the response a client sees.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::request::Parts as RequestParts;
use http::{HeaderValue, Method, Request, Response, Uri, Version, header};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tower::Service;

use crate::body::{ProxyBody, RequestBody, StallGuard};
use crate::config::{Config, Protocol};
use crate::error::{BoxError, ProxyError, UpstreamFailure};
use crate::metrics::CloseReason;
use crate::middleware::forwarded::{ClientSide, Forwarding};
use crate::middleware::hop_by_hop::UpgradeRequest;
use crate::middleware::trailers::{self, AcceptsTrailers};
use crate::middleware::upstreamed::{ResponseFacts, Upstreamed};
use crate::route::{Router, normalize_host};
use crate::transparent::Destination;
use crate::upstream::Upstream;

mod upgrade;
mod upgrades;

pub use upgrades::UpgradeAllowList;

/// Everything a reload replaces at once: the routing table and the upstreams it points into.
pub struct Routing {
    pub router: Router,
    pub upstreams: Vec<Arc<Upstream>>,
}

impl Routing {
    /// Builds routing for `config`, keeping the warm pools of unchanged servers from `previous`.
    pub fn new(config: &Config, previous: Option<&Routing>) -> Routing {
        let upstreams: Vec<Arc<Upstream>> = config
            .upstream
            .iter()
            .map(|u| {
                let old = previous.and_then(|p| p.upstreams.iter().find(|o| o.name == u.name));
                Arc::new(Upstream::new(u, old, None))
            })
            .collect();
        let router = Router::new(&config.effective_routes(), |name| {
            upstreams.iter().position(|u| u.name == name)
        });
        Routing { router, upstreams }
    }

    /// Waits, at most `bound`, until every pool holds its `min_idle` connections or has given up
    /// opening them; returns whether that happened in time. A start accepts only after this, so
    /// the first requests after an upgrade do not all pay for a connect.
    pub async fn warm_up(&self, bound: std::time::Duration) -> bool {
        let every_pool = async {
            for sp in self.upstreams.iter().flat_map(|u| u.servers.iter()) {
                sp.warmed().await;
            }
        };
        tokio::time::timeout(bound, every_pool).await.is_ok()
    }

    /// Upstream connections open now, over every pool.
    pub fn pooled(&self) -> usize {
        self.upstreams
            .iter()
            .flat_map(|u| u.servers.iter())
            .map(|sp| sp.pool.status().size)
            .sum()
    }

    /// Closes pools that `next` no longer uses.
    pub fn retire_unused(&self, next: &Routing) {
        for old in &self.upstreams {
            let successor = next.upstreams.iter().find(|n| n.name == old.name);
            old.close_unused(successor.map(|s| &**s), CloseReason::Removed);
        }
    }
}

/// Per-request behaviour from `[server]`.
#[derive(Clone, Copy)]
pub struct ProxyOptions {
    /// A client body may pause at most this long.
    pub stall_timeout: std::time::Duration,
    /// Whether CONNECT is tunnelled (to routed upstreams only).
    pub allow_connect: bool,
    /// A tunnel with no bytes either way for this long is closed.
    pub tunnel_idle_timeout: std::time::Duration,
}

/// The innermost service: routes a request and forwards it. Each client connection has its own
/// (`for_client`), which knows the client and, in transparent mode, where it was going.
#[derive(Clone)]
pub struct Proxy {
    routing: Arc<ArcSwap<Routing>>,
    options: ProxyOptions,
    upgrades: Arc<UpgradeAllowList>,
    client: ClientSide,
    destination: Option<Destination>,
}

impl Proxy {
    pub fn new(
        routing: Arc<ArcSwap<Routing>>,
        options: ProxyOptions,
        upgrades: UpgradeAllowList,
    ) -> Proxy {
        Proxy {
            routing,
            options,
            upgrades: Arc::new(upgrades),
            client: ClientSide::default(),
            destination: None,
        }
    }

    /// This proxy, for the requests of one client connection.
    pub fn for_client(&self, client: ClientSide, destination: Option<Destination>) -> Proxy {
        Proxy {
            client,
            destination,
            ..self.clone()
        }
    }

    /// Keeps only the allowed protocols of an upgrade request; with none left, it is a plain one.
    fn screen_upgrade(&self, req: &mut Request<Incoming>) {
        if let Some(asked) = req.extensions_mut().remove::<UpgradeRequest>()
            && let Some(kept) = self.upgrades.admit(asked)
        {
            req.extensions_mut().insert(kept);
        }
    }
}

impl Service<Request<Incoming>> for Proxy {
    type Response = Response<ProxyBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        if req.method() != Method::CONNECT {
            self.screen_upgrade(&mut req);
        }
        let routing = self.routing.load_full();
        let options = self.options;
        let client = self.client;
        let destination = self.destination.as_ref().map(|d| d.upstream.clone());
        Box::pin(async move {
            let selected = match destination {
                Some(upstream) => Ok(upstream),
                None => select_upstream(&routing, &req, options),
            };
            let upstream = match selected {
                Ok(found) => found,
                Err(e) => return Err(e.into()),
            };
            // Tunnels are rare: boxed, so their futures do not size every request's.
            let outcome = if req.method() == Method::CONNECT {
                let tunnel = Box::pin(upgrade::connect(&upstream, req, options)).await;
                tunnel.map(|resp| (resp, ResponseFacts::default()))
            } else if req.extensions().get::<UpgradeRequest>().is_some() {
                let switched = upgrade::switch_protocols(&upstream, req, options, client);
                let switched = Box::pin(switched).await;
                switched.map(|resp| (resp, ResponseFacts::default()))
            } else {
                // Split here: the request's parts stay in this future, and the proxy's
                // borrows them, instead of each future holding a copy.
                let (mut parts, incoming) = req.into_parts();
                proxy_request(&upstream, &mut parts, incoming, options, client).await
            };
            let series = upstream.requests.clone();
            let (mut resp, facts) = match outcome {
                Ok(answered) => answered,
                Err(error) => {
                    if let Some(kind) = error.upstream_kind() {
                        upstream.metrics.error(kind);
                    }
                    // `rescue` makes the response, with the request id, above the timeout.
                    return Err(UpstreamFailure { error, series }.into());
                }
            };
            resp.body_mut().set_upstreamed(Upstreamed { series, facts });
            Ok(resp)
        })
    }
}

/// The upstream for this request, refusing hosts an absolute-form request names but no route does.
fn select_upstream(
    routing: &Routing,
    req: &Request<Incoming>,
    options: ProxyOptions,
) -> Result<Arc<Upstream>, ProxyError> {
    if req.method() == Method::CONNECT && !options.allow_connect {
        return Err(ProxyError::MethodNotAllowed("CONNECT tunnels are disabled"));
    }
    let absolute_host = req.uri().authority().map(|a| a.host());
    let host = absolute_host.or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    });
    let found = routing
        .router
        .lookup(
            host,
            if req.method() == Method::CONNECT {
                "/"
            } else {
                req.uri().path()
            },
        )
        .ok_or(ProxyError::NoRoute)?;
    if let Some(h) = absolute_host
        && !found.host_named
    {
        return Err(ProxyError::ForeignHost(normalize_host(h)));
    }
    Ok(routing.upstreams[found.upstream].clone())
}

pub(crate) async fn proxy_request(
    upstream: &Upstream,
    parts: &mut RequestParts,
    incoming: Incoming,
    options: ProxyOptions,
    client: ClientSide,
) -> Result<(Response<ProxyBody>, ResponseFacts), ProxyError> {
    let client_version = parts.version;
    let accepts_trailers = parts.extensions.get::<AcceptsTrailers>().is_some();
    // RFC 9112 §3.2.2: for an absolute-form target, the target's authority is the host.
    if let Some(authority) = parts.uri.authority()
        && let Ok(host) = HeaderValue::try_from(authority.as_str())
    {
        parts.headers.insert(header::HOST, host);
    }
    if parts.uri.authority().is_some() {
        parts.uri = origin_form(&parts.uri);
    }
    if accepts_trailers && upstream.protocol == Protocol::Http11 {
        trailers::ask_backend(&mut parts.headers);
    }
    let body = request_body(upstream, &mut parts.headers, incoming, options).await?;
    let forwarding = Forwarding::of(parts, client);
    let resp = upstream.forward(parts, &forwarding.fields(), body).await?;
    // An HTTP/1.0 client can only learn where a body of unknown length ends from the close.
    let close_client =
        client_version == Version::HTTP_10 && resp.body().size_hint().exact().is_none();
    let facts = ResponseFacts {
        version: Some(resp.version()),
        close_client,
        trailers: trailers::to_announce(accepts_trailers, resp.headers()),
        connection: Some(resp.body().connection()),
    };
    let mut resp = resp.map(ProxyBody::upstream);
    // hyper decides the client's keep-alive from the client's request only when the response
    // head says HTTP/1.1; an HTTP/1.0 head without keep-alive makes it close after the response.
    *resp.version_mut() = if close_client {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    Ok((resp, facts))
}

/// The request body as the upstream's protocol needs it.
pub(crate) async fn request_body(
    upstream: &Upstream,
    headers: &mut http::HeaderMap,
    incoming: Incoming,
    options: ProxyOptions,
) -> Result<RequestBody, ProxyError> {
    if incoming.is_end_stream() {
        return Ok(RequestBody::Empty);
    }
    let guarded = StallGuard::new(incoming, options.stall_timeout);
    if guarded.size_hint().exact().is_some() || upstream.protocol == Protocol::Http11 {
        return Ok(RequestBody::Stream(guarded));
    }
    // A body of unknown length (chunked) cannot go to an HTTP/1.0 backend: hyper would send
    // none of it. De-chunk it into a Content-Length body, within the configured bound.
    let limit = upstream.max_buffered_body_bytes;
    let collected = Limited::new(guarded, limit).collect().await.map_err(|e| {
        if e.is::<http_body_util::LengthLimitError>() {
            ProxyError::BodyTooLarge { limit }
        } else if let Ok(p) = e.downcast::<ProxyError>() {
            *p
        } else {
            ProxyError::ClientBody("client body failed".into())
        }
    })?;
    let bytes: Bytes = collected.to_bytes();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    Ok(RequestBody::Full(Some(bytes)))
}

/// `http://host/p?q` -> `/p?q`; origin-form stays as it is.
pub(crate) fn origin_form(uri: &Uri) -> Uri {
    if uri.authority().is_none() {
        return uri.clone();
    }
    let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
    pq.parse().unwrap_or_else(|_| Uri::from_static("/"))
}
