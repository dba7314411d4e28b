//! What the proxy service learned about a response on its way back, for the layers above it:
//! carried by the response's `ProxyBody`, set once (no extension-map insert per response).

use std::sync::Arc;

use http::{HeaderValue, Response, Version};

use crate::body::ProxyBody;
use crate::metrics::RequestSeries;
use crate::middleware::hop_by_hop::ConnectionTokens;

/// Set by the proxy on every response it produced, failures included.
#[derive(Clone)]
pub struct Upstreamed {
    /// The upstream's request series (resolved once per upstream), for logs and labels.
    pub series: Arc<RequestSeries>,
    pub facts: ResponseFacts,
}

/// Facts about an upstream's response; the defaults fit one the proxy made itself.
#[derive(Debug, Clone, Default)]
pub struct ResponseFacts {
    /// The HTTP version the backend answered with (the head sent on may say another).
    pub version: Option<Version>,
    /// The client connection must close after this response (its body ends at close for an
    /// HTTP/1.0 client); becomes `Connection: close` once stripping is done.
    pub close_client: bool,
    /// The backend's `Trailer` announcement, kept for a client that accepts trailers (hop-by-hop
    /// stripping removes it; hyper writes only the trailer fields the head announced).
    pub trailers: Vec<HeaderValue>,
    /// What the backend's `Connection` header said, read once for reuse (hop-by-hop stripping
    /// needs it again); `None` on a response the proxy made.
    pub connection: Option<ConnectionTokens>,
}

/// The facts on `resp`, if the proxy produced it.
pub fn of(resp: &Response<ProxyBody>) -> Option<&Upstreamed> {
    resp.body().upstreamed()
}

/// The facts on `resp`, to take from.
pub fn of_mut(resp: &mut Response<ProxyBody>) -> Option<&mut Upstreamed> {
    resp.body_mut().upstreamed_mut()
}
