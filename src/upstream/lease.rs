//! A connection checked out for one request: it owns the socket while the request's own task
//! writes the request and reads the response, and it alone decides the connection's fate.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::conn::{ConnManager, PooledConn};
use super::gate::Permit;
use super::stream::BackendStream;
use crate::body::RequestBody;
use crate::h1::{self, Limits, RequestHead, ResponseBody, Reuse};
use crate::metrics::CloseReason;
use deadpool::managed::Object;
use http::response::Parts;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Where the leased connection goes back to.
enum Held {
    /// Checked out of a pool: back to it when reusable.
    Pooled(Object<ConnManager>),
    /// Opened for this request alone (upgrades): closed after it.
    Own(PooledConn),
}

/// One connection leased to one request. Dropped without a verdict (a failed or abandoned
/// exchange), the connection closes as `peer_closed` if the backend closed or reset it before
/// any response byte, else as `error` (a broken response, a response timeout, a cancel).
///
/// Its state is boxed once: a lease moves through every future of an exchange (checkout,
/// send, write, read, the response body), and 8 bytes move where 240 would.
pub struct Lease {
    state: Box<State>,
}

struct State {
    held: Option<Held>,
    /// Whether the connection carried a request before this one (the stale-retry fact).
    reused: bool,
    /// A response byte arrived.
    answered: bool,
    /// A read saw EOF or an error, or a write failed: the backend closed or reset it.
    peer_gone: bool,
    /// The adaptive gate's permit (given back after the connection, when the lease drops); told
    /// when the first response byte arrives.
    permit: Option<Permit>,
}

/// A failed exchange and what a retry may rely on.
#[derive(Debug)]
pub struct SendError {
    /// The connection had carried requests before (a stale keep-alive connection is possible).
    pub reused: bool,
    /// No request byte was written.
    pub unsent: bool,
    pub cause: h1::Error,
}

impl SendError {
    /// The adaptive gate wrote the fresh connection off before any response byte.
    pub fn not_picked_up() -> SendError {
        SendError {
            reused: false,
            unsent: false,
            cause: h1::Error::abandoned(h1::ErrorKind::NotPickedUp),
        }
    }

    /// Nothing of the response arrived (the failure a stale connection causes).
    pub fn before_response(&self) -> bool {
        self.cause.is_before_response()
    }
}

impl Lease {
    pub fn pooled(conn: Object<ConnManager>, permit: Option<Permit>) -> Lease {
        Lease::new(Held::Pooled(conn), permit)
    }

    pub fn dedicated(conn: PooledConn) -> Lease {
        Lease::new(Held::Own(conn), None)
    }

    fn new(held: Held, permit: Option<Permit>) -> Lease {
        let mut lease = Lease {
            state: Box::new(State {
                held: Some(held),
                reused: false,
                answered: false,
                peer_gone: false,
                permit,
            }),
        };
        let conn = lease.conn();
        let reused = conn.served > 0;
        conn.start_request();
        lease.state.reused = reused;
        if let Some(permit) = lease.state.permit.as_mut() {
            permit.sending(reused);
        }
        lease
    }

    pub fn reused(&self) -> bool {
        self.state.reused
    }

    /// For a fresh connection under the adaptive gate: notified if the gate writes it off
    /// unanswered (`gate::Permit::not_picked_up`).
    pub fn not_picked_up(&self) -> Option<super::gate::NotPickedUp> {
        self.state.permit.as_ref()?.not_picked_up()
    }

    fn conn(&mut self) -> &mut PooledConn {
        match self
            .state
            .held
            .as_mut()
            .expect("a lease holds its connection until it ends")
        {
            Held::Pooled(object) => object,
            Held::Own(conn) => conn,
        }
    }

    /// The server answered: the connection's `max_connecting` slot is free, and a failure from
    /// now on is an error of the exchange, not a connection the backend closed.
    fn answered(&mut self) {
        if self.state.answered {
            return;
        }
        self.state.answered = true;
        self.conn().accepted();
        if let Some(permit) = self.state.permit.as_mut() {
            permit.answered();
        }
    }

    /// Writes `head` and `body`, then reads the response head; the body follows on the lease.
    pub async fn exchange(
        mut self,
        head: &RequestHead<'_>,
        body: RequestBody,
        limits: &Limits,
    ) -> Result<(Parts, Box<ResponseBody<Lease>>), SendError> {
        let reused = self.state.reused;
        let failed = |cause: h1::Error| SendError {
            reused,
            unsent: cause.is_unsent(),
            cause,
        };
        h1::write_request(&mut self, head, body)
            .await
            .map_err(failed)?;
        h1::read_response(self, head.method, limits)
            .await
            .map_err(failed)
    }

    /// The response ended with `verdict`: the one place a connection's fate is decided.
    pub fn finish(mut self, verdict: Reuse) {
        match (self.state.held.take(), verdict) {
            (Some(Held::Pooled(mut object)), Reuse::Reusable) => {
                object.went_idle();
                drop(object);
            }
            (Some(held), Reuse::Reusable) => close(held, CloseReason::NotReusable),
            (Some(held), Reuse::Close(_)) => close(held, CloseReason::NotReusable),
            (None, _) => {}
        }
    }

    /// Closes the connection for `reason` (a failed response, a lost framing).
    pub fn close(mut self, reason: CloseReason) {
        if let Some(held) = self.state.held.take() {
            close(held, reason);
        }
    }

    /// The socket of a 101 or CONNECT exchange: it leaves the pool and becomes a tunnel.
    pub fn into_tunnel(mut self) -> BackendStream {
        let conn = match self
            .state
            .held
            .take()
            .expect("a lease holds its connection")
        {
            Held::Pooled(object) => Object::take(object),
            Held::Own(conn) => conn,
        };
        conn.into_stream(CloseReason::NotReusable)
    }

    fn stream(self: Pin<&mut Self>) -> Pin<&mut BackendStream> {
        Pin::new(self.get_mut().conn().stream_mut())
    }
}

fn close(held: Held, reason: CloseReason) {
    let conn = match held {
        Held::Pooled(object) => Object::take(object),
        Held::Own(conn) => conn,
    };
    conn.end(reason);
}

impl State {
    /// Why the connection closes when the lease is dropped without a verdict.
    fn unanswered_reason(&self) -> CloseReason {
        if self.peer_gone && !self.answered {
            CloseReason::PeerClosed
        } else {
            CloseReason::Error
        }
    }
}

impl Drop for State {
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            close(held, self.unanswered_reason());
        }
    }
}

impl AsyncRead for Lease {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = self.get_mut();
        let read = Pin::new(this.conn().stream_mut()).poll_read(cx, buf);
        match &read {
            Poll::Ready(Ok(())) if buf.filled().len() > before => this.answered(),
            Poll::Ready(Ok(())) if buf.remaining() == 0 => {}
            // EOF or an error: the backend closed or reset the connection.
            Poll::Ready(_) => this.state.peer_gone = true,
            Poll::Pending => {}
        }
        read
    }
}

impl AsyncWrite for Lease {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(this.conn().stream_mut()).poll_write(cx, buf);
        if let Poll::Ready(Err(_)) = written {
            this.state.peer_gone = true;
        }
        written
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
