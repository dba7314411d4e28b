//! Outermost accounting: one access-log line and the request metrics per request, and the one
//! place where errors from inner layers (load shed, timeout) become client responses.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::Instant;

use http::{Request, Response};
use tower::{Layer, Service};

use crate::body::ProxyBody;
use crate::error::{BoxError, rescue};
use crate::metrics::{METRICS, NO_UPSTREAM};
use crate::middleware::request_id;

/// The upstream a response came from, set by the proxy service for logs and labels.
#[derive(Debug, Clone)]
pub struct UpstreamName(pub Arc<str>);

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
    S: Service<Request<B>, Response = Response<ProxyBody>, Error = BoxError> + Send,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Load shedding sits inside: it is always ready and sheds in `call` instead.
        match self.inner.poll_ready(cx) {
            Poll::Ready(_) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let started = Instant::now();
        let id = request_id::of(&req);
        // Copied only when a log line will be written: the request moves into the inner service.
        let logged = self
            .enabled
            .then(|| (req.method().clone(), req.uri().path().to_owned()));
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = match fut.await {
                Ok(resp) => resp,
                Err(err) => rescue(&err, &id),
            };
            let upstream = resp.extensions().get::<UpstreamName>().map(|u| u.0.clone());
            let upstream = upstream.as_deref().unwrap_or(NO_UPSTREAM);
            let elapsed = started.elapsed();
            let status = resp.status();
            METRICS
                .requests_total
                .with_label_values(&[upstream, status.as_str()])
                .inc();
            METRICS
                .request_duration_seconds
                .with_label_values(&[upstream])
                .observe(elapsed.as_secs_f64());
            if let Some((method, path)) = logged {
                tracing::info!(
                    target: "longhaul::access",
                    method = %method, path = %path, status = status.as_u16(), upstream,
                    duration_ms = elapsed.as_secs_f64() * 1000.0,
                    request_id = id.to_str().unwrap_or("-"),
                    "request"
                );
            }
            Ok(resp)
        })
    }
}
