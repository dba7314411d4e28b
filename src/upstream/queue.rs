//! The bounded wait queue in front of one server's pool: at most `max_waiters` requests wait for
//! a permit of the adaptive gate and a free connection, in arrival order, for `wait_timeout`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use deadpool::managed::{Object, Pool, PoolError, TimeoutType, Timeouts};
use tokio::time::Instant;

use super::conn::{ConnManager, ConnectError};
use super::gate::{Gate, Permit};
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

/// A connection and, when the pool is adaptive, the gate's permit its lease holds.
pub struct Checkout {
    pub conn: Object<ConnManager>,
    pub permit: Option<Permit>,
}

/// Waiters queue on the gate's and deadpool's semaphores, both fair tokio `Semaphore`s: a
/// returned connection goes to the request that has waited longest, whichever idle connection
/// (LIFO) it then gets.
pub struct WaitQueue {
    waiting: AtomicUsize,
    max_waiters: usize,
    wait_timeout: Duration,
    /// `[upstream.pool] adaptive`: the learned limit in front of the pool.
    gate: Option<Arc<Gate>>,
}

impl WaitQueue {
    pub fn new(max_waiters: usize, wait_timeout: Duration, gate: Option<Arc<Gate>>) -> WaitQueue {
        WaitQueue {
            waiting: AtomicUsize::new(0),
            max_waiters,
            wait_timeout,
            gate,
        }
    }

    /// The adaptive limit now, if the pool has one.
    pub fn limit(&self) -> Option<usize> {
        self.gate.as_ref().map(|g| g.limit())
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// A permit of the gate, then a connection: each now if free, else a place in the queue.
    /// `started` is when the request began to wait (the caller times the whole wait).
    pub async fn checkout(
        &self,
        pool: &Pool<ConnManager>,
        metrics: &ServerMetrics,
        started: Instant,
    ) -> Result<Checkout, CheckoutError> {
        let permit = match &self.gate {
            Some(gate) => Some(self.enter(gate, metrics).await?),
            None => None,
        };
        let conn = self.connection(pool, metrics, started).await?;
        Ok(Checkout { conn, permit })
    }

    async fn enter(
        &self,
        gate: &Arc<Gate>,
        metrics: &ServerMetrics,
    ) -> Result<Permit, CheckoutError> {
        if let Some(permit) = gate.try_enter() {
            return Ok(permit);
        }
        let _place = self.join_or_reject(metrics)?;
        match tokio::time::timeout(self.wait_timeout, gate.enter()).await {
            Ok(permit) => Ok(permit),
            Err(_) => {
                metrics.rejected_wait_timeout.inc();
                Err(CheckoutError::WaitTimeout)
            }
        }
    }

    /// A connection of the pool within what is left of `wait_timeout` since `started`.
    async fn connection(
        &self,
        pool: &Pool<ConnManager>,
        metrics: &ServerMetrics,
        started: Instant,
    ) -> Result<Object<ConnManager>, CheckoutError> {
        let at_once = Timeouts {
            wait: Some(Duration::ZERO),
            ..pool.timeouts()
        };
        match pool.timeout_get(&at_once).await {
            Err(PoolError::Timeout(TimeoutType::Wait)) => {}
            other => return other.map_err(checkout_error),
        }
        let _place = self.join_or_reject(metrics)?;
        let left = Timeouts {
            wait: Some(self.wait_timeout.saturating_sub(started.elapsed())),
            ..pool.timeouts()
        };
        let result = pool.timeout_get(&left).await.map_err(checkout_error);
        if let Err(CheckoutError::WaitTimeout) = result {
            metrics.rejected_wait_timeout.inc();
        }
        result
    }

    fn join_or_reject(&self, metrics: &ServerMetrics) -> Result<Place<'_>, CheckoutError> {
        self.join().ok_or_else(|| {
            metrics.rejected_queue_full.inc();
            CheckoutError::QueueFull {
                waiting: self.waiting(),
            }
        })
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
