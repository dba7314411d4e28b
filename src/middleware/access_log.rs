//! Outermost accounting: the request's id (`request_id`), one access-log line and the request
//! metrics per request, and the one place where errors from inner layers (load shed, timeout,
//! a failed upstream) become client responses.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::time::Instant;

use http::{HeaderValue, Method, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::body::ProxyBody;
use crate::error::{BoxError, rescue};
use crate::metrics::RequestSeries;
use crate::middleware::{request_id, upstreamed};

#[derive(Clone)]
pub struct AccessLogLayer {
    pub enabled: bool,
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;
    fn layer(&self, inner: S) -> AccessLog<S> {
        AccessLog {
            inner,
            enabled: self.enabled,
        }
    }
}

#[derive(Clone)]
pub struct AccessLog<S> {
    inner: S,
    enabled: bool,
}

impl<S, B> Service<Request<B>> for AccessLog<S>
where
    S: Service<Request<B>, Response = Response<ProxyBody>, Error = BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Load shedding sits inside: it is always ready and sheds in `call` instead.
        match self.inner.poll_ready(cx) {
            Poll::Ready(_) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let started = Instant::now();
        let id = request_id::assign(&mut req);
        // Copied only when a log line will be written: the request moves into the inner service.
        let logged = self
            .enabled
            .then(|| (req.method().clone(), req.uri().path().to_owned()));
        ResponseFuture {
            inner: self.inner.call(req),
            started,
            id,
            logged,
        }
    }
}

pin_project! {
    /// The inner service's future, then the metrics and the log line. A named future rather
    /// than a boxed `async` block: no allocation or copy of the inner future per request.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        started: Instant,
        id: HeaderValue,
        logged: Option<(Method, String)>,
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ProxyBody>, BoxError>>,
{
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut resp = match ready!(this.inner.poll(cx)) {
            Ok(resp) => resp,
            Err(err) => rescue(&err, this.id),
        };
        record(&resp, *this.started, this.id, this.logged.take());
        // Polled no more once ready: the id moves onto the response.
        let id = std::mem::replace(this.id, HeaderValue::from_static("-"));
        request_id::echo(&mut resp, id);
        Poll::Ready(Ok(resp))
    }
}

/// The request metrics, and the access-log line when it is enabled.
fn record(
    resp: &Response<ProxyBody>,
    started: Instant,
    id: &HeaderValue,
    logged: Option<(Method, String)>,
) {
    let series = match upstreamed::of(resp) {
        Some(u) => &*u.series,
        None => RequestSeries::none(),
    };
    let upstream = &*series.upstream;
    let elapsed = started.elapsed();
    let status = resp.status();
    series.record(status, elapsed);
    if let Some((method, path)) = logged {
        tracing::info!(
            target: "longhaul::access",
            method = %method, path = %path, status = status.as_u16(), upstream,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            request_id = id.to_str().unwrap_or("-"),
            "request"
        );
    }
}
