//! The two body types on the wire: `RequestBody` goes upstream (empty, buffered, or the client's
//! body streamed under a stall timeout); `ProxyBody` goes to the client (a short buffer or a pooled
//! upstream body that hands its connection back when it ends).

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::error::{BoxError, ProxyError};
use crate::middleware::upstreamed::Upstreamed;
use crate::upstream::PooledBody;

/// A request body on its way to a backend.
pub enum RequestBody {
    Empty,
    /// Fully buffered (de-chunked for an HTTP/1.0 backend); can be sent again on a retry.
    Full(Option<Bytes>),
    /// The client's body, streamed with its known length.
    Stream(StallGuard<Incoming>),
}

impl RequestBody {
    /// A copy for a retry, when the body is buffered (or absent).
    pub fn try_clone(&self) -> Option<RequestBody> {
        match self {
            RequestBody::Empty => Some(RequestBody::Empty),
            RequestBody::Full(b) => Some(RequestBody::Full(b.clone())),
            RequestBody::Stream(_) => None,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RequestBody::Stream(s) => Pin::new(s).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Full(b) => b.is_none(),
            RequestBody::Stream(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            RequestBody::Stream(s) => s.size_hint(),
        }
    }
}

/// A client body that fails with 408-class `BodyTimeout` when no bytes arrive for `timeout`.
pub struct StallGuard<B> {
    inner: B,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<B> StallGuard<B> {
    pub fn new(inner: B, timeout: Duration) -> StallGuard<B> {
        StallGuard {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

impl<B> Body for StallGuard<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let deadline = Instant::now() + this.timeout;
                this.deadline.as_mut().reset(deadline);
                Poll::Ready(frame.map(|f| f.map_err(|e| client_body_error(e.into()))))
            }
            Poll::Pending => {
                ready!(this.deadline.as_mut().poll(cx));
                Poll::Ready(Some(Err(ProxyError::BodyTimeout(this.timeout).into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn client_body_error(e: BoxError) -> BoxError {
    ProxyError::ClientBody(e.to_string()).into()
}

/// A response body on its way to a client, with what the proxy learned about the response on
/// its way back (`Upstreamed`): it rides with the body, not in an extension map (an insert
/// there boxes the value and allocates the map, about 460 instructions).
pub struct ProxyBody {
    source: Source,
    upstreamed: Option<Upstreamed>,
}

enum Source {
    /// A short body longhaul made itself (errors, admin pages).
    Full(Option<Bytes>),
    /// A backend's body; its lease decides the connection's fate when it ends.
    Upstream(PooledBody),
}

impl ProxyBody {
    pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
        ProxyBody::of(Source::Full(Some(bytes.into())))
    }

    pub fn empty() -> ProxyBody {
        ProxyBody::of(Source::Full(None))
    }

    pub fn upstream(body: PooledBody) -> ProxyBody {
        ProxyBody::of(Source::Upstream(body))
    }

    fn of(source: Source) -> ProxyBody {
        ProxyBody {
            source,
            upstreamed: None,
        }
    }

    /// The facts of the response this body belongs to, set by the proxy service.
    pub fn upstreamed(&self) -> Option<&Upstreamed> {
        self.upstreamed.as_ref()
    }

    pub fn upstreamed_mut(&mut self) -> Option<&mut Upstreamed> {
        self.upstreamed.as_mut()
    }

    pub fn set_upstreamed(&mut self, upstreamed: Upstreamed) {
        self.upstreamed = Some(upstreamed);
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().source {
            Source::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Source::Upstream(p) => Pin::new(p).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Full(b) => b.is_none(),
            Source::Upstream(p) => p.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Source::Upstream(p) => p.size_hint(),
        }
    }
}
