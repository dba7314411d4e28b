//! The response body of a leased connection: it streams the lease's `h1::ResponseBody` and, at
//! its end, hands the connection back to the lease with the verdict the body reached.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use super::lease::Lease;
use super::server::Server;
use super::stream::BackendStream;
use crate::error::BoxError;
use crate::h1::ResponseBody;
use crate::metrics::CloseReason;
use crate::middleware::hop_by_hop::ConnectionTokens;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

pub struct PooledBody {
    /// `None` once the connection went back to its lease.
    inner: Option<Box<ResponseBody<Lease>>>,
    _in_flight: InFlight,
    /// What the response head's `Connection` header said (kept past the body's end).
    connection: ConnectionTokens,
}

impl PooledBody {
    /// A body whose connection goes back as soon as it ends; a 101's connection is kept for
    /// [`PooledBody::into_upgraded`].
    pub(super) fn new(
        inner: Box<ResponseBody<Lease>>,
        in_flight: InFlight,
        upgrading: bool,
    ) -> PooledBody {
        let mut body = PooledBody {
            connection: inner.fields().connection,
            inner: Some(inner),
            _in_flight: in_flight,
        };
        if !upgrading && body.is_end_stream() {
            body.release(false);
        }
        body
    }

    /// The body ended (or failed, or was abandoned): the lease decides what the verdict means.
    fn release(&mut self, failed: bool) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        let (lease, verdict) = inner.finish();
        if failed {
            lease.close(CloseReason::Error);
        } else {
            lease.finish(verdict);
        }
    }

    /// What the response head's `Connection` header said.
    pub fn connection(&self) -> ConnectionTokens {
        self.connection
    }

    /// The backend's stream (plain or TLS) after a 101, with the bytes it sent past the response head.
    pub fn into_upgraded(mut self) -> Option<(BackendStream, Bytes)> {
        let (lease, already_read) = self.inner.take()?.into_upgraded();
        Some((lease.into_tunnel(), already_read))
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = ready!(Pin::new(inner).poll_frame(cx));
        match &frame {
            Some(Err(_)) => self.release(true),
            // A trailer section is the last frame: hyper's server stops polling after it.
            Some(Ok(f)) if !f.is_trailers() && !self.is_end_stream() => {}
            _ => self.release(false),
        }
        Poll::Ready(frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // Read to its end, the verdict stands; otherwise the client went away mid-body and
        // `finish` says the connection cannot be reused.
        self.release(false);
    }
}

/// Counts a request in flight on a server for `least_conn`, until dropped.
pub struct InFlight(Arc<Server>);

impl InFlight {
    pub fn new(server: &Arc<Server>) -> InFlight {
        server.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(server.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
