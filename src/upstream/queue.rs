//! The bounded wait queue in front of one server's pool: at most `max_waiters` requests wait for
//! a free connection, in arrival order, for `wait_timeout`; past either, the request is rejected.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use deadpool::managed::{Object, Pool, PoolError, TimeoutType, Timeouts};

use super::conn::{ConnManager, ConnectError};
use crate::metrics::ServerMetrics;

/// Why no connection was handed out.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("{0}")]
    Connect(ConnectError),
    #[error("{waiting} requests already wait for a connection")]
    QueueFull { waiting: usize },
    #[error("no free connection within wait_timeout")]
    WaitTimeout,
    /// The pool was closed (a reload removed the server) or failed otherwise.
    #[error("{0}")]
    Unavailable(String),
}

/// Waiters queue on deadpool's semaphore, a fair tokio `Semaphore`: a returned connection goes
/// to the request that has waited longest, whichever idle connection (LIFO) it then gets.
pub struct WaitQueue {
    waiting: AtomicUsize,
    max_waiters: usize,
}

impl WaitQueue {
    pub fn new(max_waiters: usize) -> WaitQueue {
        WaitQueue {
            waiting: AtomicUsize::new(0),
            max_waiters,
        }
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// A connection now if one is free (or may be opened), else a place in the queue.
    pub async fn checkout(
        &self,
        pool: &Pool<ConnManager>,
        metrics: &ServerMetrics,
    ) -> Result<Object<ConnManager>, CheckoutError> {
        let at_once = Timeouts {
            wait: Some(Duration::ZERO),
            ..pool.timeouts()
        };
        match pool.timeout_get(&at_once).await {
            Err(PoolError::Timeout(TimeoutType::Wait)) => {}
            other => return other.map_err(checkout_error),
        }
        let Some(_place) = self.join() else {
            metrics.rejected_queue_full.inc();
            return Err(CheckoutError::QueueFull {
                waiting: self.waiting(),
            });
        };
        let result = pool.get().await.map_err(checkout_error);
        if let Err(CheckoutError::WaitTimeout) = result {
            metrics.rejected_wait_timeout.inc();
        }
        result
    }

    fn join(&self) -> Option<Place<'_>> {
        let before = self.waiting.fetch_add(1, Ordering::Relaxed);
        let place = Place(&self.waiting);
        (before < self.max_waiters).then_some(place)
    }
}

/// A place in the queue, given up on drop (served, timed out, or the client went away).
struct Place<'a>(&'a AtomicUsize);

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn checkout_error(e: PoolError<ConnectError>) -> CheckoutError {
    match e {
        PoolError::Backend(e) => CheckoutError::Connect(e),
        PoolError::Timeout(TimeoutType::Wait) => CheckoutError::WaitTimeout,
        other => CheckoutError::Unavailable(other.to_string()),
    }
}
