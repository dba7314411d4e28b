//! What the proxy service learned about a response on its way back, for the layers above it:
//! one response extension, inserted once, instead of one per fact (each insert hashes and boxes).

use std::sync::Arc;

use http::{HeaderValue, Response, Version};

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
pub fn of<B>(resp: &Response<B>) -> Option<&Upstreamed> {
    resp.extensions().get::<Upstreamed>()
}

/// The facts on `resp`, to take from.
pub fn of_mut<B>(resp: &mut Response<B>) -> Option<&mut Upstreamed> {
    resp.extensions_mut().get_mut::<Upstreamed>()
}
