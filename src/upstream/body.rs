//! The response body of a pooled connection: it holds the connection while the body streams and
//! hands it back to the pool only when the body ended cleanly and the connection is reusable.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use deadpool::managed::Object;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::conn::ConnManager;
use super::server::Server;
use crate::error::BoxError;
use crate::metrics::CloseReason;

pub struct PooledBody {
    inner: Incoming,
    conn: Option<Object<ConnManager>>,
    _in_flight: InFlight,
}

impl PooledBody {
    pub(super) fn new(
        inner: Incoming,
        conn: Object<ConnManager>,
        in_flight: InFlight,
    ) -> PooledBody {
        let mut body = PooledBody {
            inner,
            conn: Some(conn),
            _in_flight: in_flight,
        };
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    /// The response is complete: the connection goes back to the pool, or closes if it must.
    fn release(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if conn.reusable {
            conn.finish_request();
            drop(conn);
        } else {
            conn.retire(CloseReason::NotReusable);
            drop(Object::take(conn));
        }
    }

    /// The response did not complete: the connection is mid-message and cannot be reused.
    fn discard(&mut self, reason: CloseReason) {
        if let Some(conn) = self.conn.take() {
            conn.retire(reason);
            drop(Object::take(conn));
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            None => self.release(),
            Some(Err(_)) => self.discard(CloseReason::Error),
            // A trailer section is the last frame: the message is complete, and hyper's server
            // stops polling the body after it.
            Some(Ok(f)) if f.is_trailers() || self.inner.is_end_stream() => self.release(),
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.release();
        } else {
            // The client went away before the body was read to the end.
            self.discard(CloseReason::NotReusable);
        }
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
