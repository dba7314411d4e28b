//! Refuses, before anything acts on it, a request whose head is over a line limit (414/431) or
//! whose framing or host is ambiguous (400); a refused request never reaches the inner service,
//! and its client connection is closed.

use std::borrow::Cow;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{HeaderValue, Request, Response, StatusCode, header};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::body::ProxyBody;
use crate::error::error_response;
use crate::middleware::framing::{ambiguity, host_problem};
use crate::middleware::head_limits::line_problem;
use crate::middleware::request_id;

/// Why `req` must be refused, and with which status; `None` lets it through.
fn problem<B>(req: &Request<B>, max_line_bytes: usize) -> Option<(StatusCode, Cow<'static, str>)> {
    if let Some((status, why)) =
        line_problem(req.method(), req.uri(), req.headers(), max_line_bytes)
    {
        return Some((status, why.into()));
    }
    let why = ambiguity(req.headers()).or_else(|| host_problem(req))?;
    Some((StatusCode::BAD_REQUEST, why.into()))
}

#[derive(Clone)]
pub struct RequestGuardLayer {
    /// `[server] max_request_header_bytes`.
    pub max_line_bytes: usize,
}

impl<S> Layer<S> for RequestGuardLayer {
    type Service = RequestGuard<S>;
    fn layer(&self, inner: S) -> RequestGuard<S> {
        RequestGuard {
            inner,
            max_line_bytes: self.max_line_bytes,
        }
    }
}

#[derive(Clone)]
pub struct RequestGuard<S> {
    inner: S,
    max_line_bytes: usize,
}

impl<S, B> Service<Request<B>> for RequestGuard<S>
where
    S: Service<Request<B>, Response = Response<ProxyBody>>,
{
    type Response = Response<ProxyBody>;
    type Error = S::Error;
    type Future = GuardFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match problem(&req, self.max_line_bytes) {
            None => GuardFuture::passed(self.inner.call(req)),
            Some((status, why)) => GuardFuture::refused(refuse(status, &why, &req)),
        }
    }
}

/// An error response for `req` with `Connection: close`: after a malformed or oversized head
/// the rest of this connection's bytes cannot be trusted.
fn refuse<B>(status: StatusCode, why: &str, req: &Request<B>) -> Response<ProxyBody> {
    let mut resp = error_response(status, why, &request_id::of(req));
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

pin_project! {
    #[project = Projection]
    pub enum GuardFuture<F> {
        Passed { #[pin] fut: F },
        Refused { resp: Option<Response<ProxyBody>> },
    }
}

impl<F> GuardFuture<F> {
    fn passed(fut: F) -> Self {
        GuardFuture::Passed { fut }
    }
    fn refused(resp: Response<ProxyBody>) -> Self {
        GuardFuture::Refused { resp: Some(resp) }
    }
}

impl<F, E> Future for GuardFuture<F>
where
    F: Future<Output = Result<Response<ProxyBody>, E>>,
{
    type Output = Result<Response<ProxyBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Projection::Passed { fut } => Poll::Ready(ready!(fut.poll(cx))),
            Projection::Refused { resp } => {
                Poll::Ready(Ok(resp.take().expect("polled after completion")))
            }
        }
    }
}
