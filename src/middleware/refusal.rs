//! What a guard layer returns: the inner service's response, or a refusal it made up front.
//! A refused request never reaches the inner service, and its client connection is closed.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{HeaderValue, Request, Response, StatusCode, header};
use pin_project_lite::pin_project;

use crate::body::ProxyBody;
use crate::error::error_response;
use crate::middleware::request_id;

/// An error response for `req` with `Connection: close`: after a malformed or oversized head
/// the rest of this connection's bytes cannot be trusted.
pub fn refuse<B>(status: StatusCode, why: &str, req: &Request<B>) -> Response<ProxyBody> {
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
    pub fn passed(fut: F) -> Self {
        GuardFuture::Passed { fut }
    }
    pub fn refused(resp: Response<ProxyBody>) -> Self {
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
