//! A named upstream: its servers, one deadpool pool of keep-alive connections per server, the
//! balancer, and `forward`, which sends one request with the retry rules that keep it safe.

mod adaptive;
mod balance;
mod body;
mod conn;
mod gate;
mod health;
mod lease;
mod maintain;
mod queue;
mod retry;
pub(crate) mod reuse;
mod server;
mod stream;
mod tls;

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use deadpool::managed::{Pool, QueueMode};
use http::request::Parts as RequestParts;
use http::response::Parts;
use http::{Method, Request, Response, Version};

pub use body::{InFlight, PooledBody};
pub use conn::{ConnManager, ConnectError, PooledConn, connect_to};
pub use lease::{Lease, SendError};
pub use server::{Failure, Server, ServerSettings};
pub use stream::BackendStream;
pub use tls::{UpstreamTls, host_of};

use crate::body::RequestBody;
use crate::config::{Balance, Protocol, UpstreamConfig};
use crate::error::ProxyError;
use crate::h1::{self, AddedField, RequestHead, ResponseBody};
use crate::metrics::{CloseReason, RequestSeries, UpstreamMetrics};
use balance::Balancer;
use queue::{CheckoutError, WaitQueue};
use retry::{Attempt, Retries, Retry};

/// A server and its pool.
pub struct ServerPool {
    pub server: Arc<Server>,
    pub pool: Pool<ConnManager>,
    /// Requests waiting for a connection of this pool.
    queue: WaitQueue,
    /// Pool upkeep and, when configured, active health checks; aborted with the pool.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Set once upkeep's first round has opened `min_idle` connections.
    warmed: tokio::sync::watch::Receiver<bool>,
}

impl ServerPool {
    pub fn new(server: Server) -> ServerPool {
        let server = Arc::new(server);
        let pool = Pool::<ConnManager>::builder(ConnManager {
            server: server.clone(),
        })
        .max_size(server.settings.pool.max_size)
        .queue_mode(QueueMode::Lifo)
        .wait_timeout(Some(server.settings.pool.wait_timeout))
        // No recycle timeout: `ConnManager::recycle` does no I/O (the idle watcher already
        // knows whether the connection is alive), and a timeout would arm a timer per checkout.
        .recycle_timeout(None)
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .expect("a runtime is configured");
        let (warmed_tx, warmed) = tokio::sync::watch::channel(false);
        let upkeep = maintain::run(pool.clone(), server.clone(), warmed_tx);
        let mut tasks = vec![tokio::spawn(upkeep)];
        if let Some(path) = server.settings.health.path.clone() {
            tasks.push(tokio::spawn(health::run(server.clone(), path)));
        }
        let settings = &server.settings.pool;
        let gate = settings.adaptive.then(|| {
            // Weak: leases outlive a pool a reload removed, and the gate with them.
            let pool = pool.weak();
            let idle = Box::new(move || pool.upgrade().map_or(0, |p| p.status().available));
            Arc::new(gate::Gate::new(settings.max_size, &server.metrics, idle))
        });
        ServerPool {
            queue: WaitQueue::new(settings.max_waiters, settings.wait_timeout, gate),
            server,
            pool,
            tasks,
            warmed,
        }
    }

    /// Returns once the pool holds its `min_idle` connections, or upkeep gave up opening them.
    pub async fn warmed(&self) {
        let _ = self.warmed.clone().wait_for(|warm| *warm).await;
    }

    /// Stops maintenance and closes idle connections; busy ones close when their response ends.
    /// Each is counted as closed for `reason` (`removed` or `shutdown`).
    pub fn close(&self, reason: CloseReason) {
        self.tasks.iter().for_each(|t| t.abort());
        self.server.close_pool(reason);
        drop(self.pool.retain(|_, _| false));
        self.pool.close();
    }

    /// Idle, busy and waiting counts from the pool.
    pub fn usage(&self) -> PoolUsage {
        let status = self.pool.status();
        let busy = status.size - status.available;
        PoolUsage {
            idle: status.available,
            busy,
            waiters: self.queue.waiting(),
        }
    }

    /// Connections in use at once: the learned limit, or `max_size` when the pool is not adaptive.
    pub fn limit(&self) -> usize {
        self.queue
            .limit()
            .unwrap_or(self.server.settings.pool.max_size)
    }
}

impl Drop for ServerPool {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

pub struct PoolUsage {
    pub idle: usize,
    pub busy: usize,
    pub waiters: usize,
}

pub struct Upstream {
    pub name: String,
    pub protocol: Protocol,
    pub response_timeout: Duration,
    pub max_buffered_body_bytes: usize,
    /// Failed connects are retried this long (`[upstream] retry_window`).
    retry_window: Duration,
    pub servers: Vec<Arc<ServerPool>>,
    balancer: Balancer,
    /// Bounds on a response head from this upstream's servers.
    limits: h1::Limits,
    pub metrics: UpstreamMetrics,
    /// Its requests' series, named by this upstream (the access log's `upstream`).
    pub requests: Arc<RequestSeries>,
}

impl Upstream {
    /// Builds the upstream, reusing pools from `previous` whose server and settings are unchanged.
    pub fn new(
        config: &UpstreamConfig,
        previous: Option<&Arc<Upstream>>,
        mark: Option<u32>,
    ) -> Upstream {
        let settings = ServerSettings {
            protocol: config.protocol,
            connect_timeout: config.connect_timeout,
            pool: config.pool.clone(),
            tcp_keepalive: config.tcp_keepalive.clone(),
            health: config.health.clone(),
            mark,
            tls: config.tls.as_ref().and_then(|t| t.loaded.clone()),
        };
        if settings.tls.as_ref().is_some_and(|t| !t.verify()) {
            tracing::warn!(upstream = %config.name,
                "[upstream.tls] verify = false: backend certificates are not checked");
        }
        let kept = |address: &str| {
            previous?
                .servers
                .iter()
                .find(|sp| sp.server.address == address && sp.server.settings == settings)
                .cloned()
        };
        let servers = config
            .servers
            .iter()
            .map(|address| {
                kept(address).unwrap_or_else(|| {
                    Arc::new(ServerPool::new(Server::new(
                        &config.name,
                        address,
                        settings.clone(),
                    )))
                })
            })
            .collect::<Vec<_>>();
        Upstream {
            name: config.name.clone(),
            protocol: config.protocol,
            response_timeout: config.response_timeout,
            max_buffered_body_bytes: config.max_buffered_body_bytes,
            retry_window: config.retry_window,
            balancer: Balancer::new(match config.balance {
                Balance::RoundRobin => balance::Strategy::RoundRobin,
                Balance::LeastConn => balance::Strategy::LeastConn,
            }),
            limits: h1::Limits::default(),
            metrics: UpstreamMetrics::new(&config.name),
            requests: Arc::new(RequestSeries::new(&config.name)),
            servers,
        }
    }

    /// Closes the pools of servers that `next` does not carry over (after a reload), or every
    /// pool when there is no `next`, and removes their gauges; `reason` says why.
    pub fn close_unused(&self, next: Option<&Upstream>, reason: CloseReason) {
        for sp in &self.servers {
            let carried = next.is_some_and(|n| n.servers.iter().any(|s| Arc::ptr_eq(s, sp)));
            if !carried {
                sp.close(reason);
                sp.server.metrics.remove();
            }
        }
    }

    /// Sends `req` to a server and returns its response, retrying only where that is safe:
    /// failed connects within `retry_window` (nothing was sent), a request of which no byte was
    /// written, and once an idempotent request with a replayable body when a reused connection
    /// failed before any response byte (then on a connection that never carried a request), and
    /// such a request again when the adaptive gate finds the server is not picking up the new
    /// connection it went out on. The request head is borrowed by every attempt, never
    /// copied; a buffered body is a reference-counted `Bytes`. `added` are the fields this hop
    /// adds to the head (`middleware::forwarded`).
    pub async fn forward(
        &self,
        parts: &mut RequestParts,
        added: &[AddedField<'_>],
        mut body: RequestBody,
    ) -> Result<Response<PooledBody>, ProxyError> {
        parts.version = self.version();
        let head = RequestHead::from_parts(parts, added);
        let idempotent = is_idempotent(head.method);
        let mut retries = Retries::new(self.retry_window);
        loop {
            let fresh = retries.needs_fresh_connection();
            let (sp, lease) = self
                .connected(&mut retries, |sp| self.checkout(sp, fresh))
                .await?;
            let server = &sp.server;
            let (sending, replayable) = match body.try_clone() {
                Some(copy) => (copy, true),
                None => (std::mem::replace(&mut body, RequestBody::Empty), false),
            };
            let rescuable = idempotent && replayable && retries.may_leave_unpicked_connection();
            let error = match self.send(server, lease, &head, sending, rescuable).await? {
                Ok(resp) => return Ok(resp),
                Err(error) => error,
            };
            if let Some(client_err) = client_body_failure(&error.cause) {
                return Err(client_err);
            }
            let attempt = Attempt {
                reused: error.reused,
                unsent: error.unsent,
                before_response: error.before_response(),
                not_picked_up: matches!(error.cause.kind(), h1::ErrorKind::NotPickedUp),
                idempotent,
                replayable,
            };
            match retries.after_send_failure(attempt) {
                Retry::Unsent => self.metrics.retry_not_sent.inc(),
                Retry::Stale => {
                    tracing::debug!(upstream = %self.name, server = %server.address,
                        error = %error.cause,
                        "reused connection failed before a response; retrying on another");
                    self.metrics.retry_stale.inc();
                }
                Retry::NotPickedUp => {
                    tracing::debug!(upstream = %self.name, server = %server.address,
                        "the server is not picking up a new connection; moving the request");
                    self.metrics.retry_not_picked_up.inc();
                }
                Retry::No => {
                    if !error.reused {
                        server.record_failure(Failure::Reset);
                    }
                    return Err(self.classify(server, &error.cause));
                }
            }
        }
    }

    /// One exchange on `lease` within `response_timeout`: the response, or why it failed. A
    /// `rescuable` request (safe to send again) leaves a new connection the adaptive gate finds
    /// the server is not picking up, instead of waiting in the server's accept queue.
    async fn send(
        &self,
        server: &Arc<Server>,
        lease: Lease,
        head: &RequestHead<'_>,
        body: RequestBody,
        rescuable: bool,
    ) -> Result<Result<Response<PooledBody>, SendError>, ProxyError> {
        if lease.reused() {
            server.metrics.requests_reused.inc();
        } else {
            server.metrics.requests_new.inc();
        }
        let in_flight = InFlight::new(server);
        let not_picked_up = lease.not_picked_up().filter(|_| rescuable);
        let exchange = lease.exchange(head, body, &self.limits);
        // Pinned once: both arms await the same future instead of each holding a copy.
        let mut timed = pin!(tokio::time::timeout(self.response_timeout, exchange));
        let outcome = match not_picked_up {
            None => timed.await,
            Some(signal) => tokio::select! {
                biased;
                outcome = &mut timed => outcome,
                () = signal.wait() => {
                    // Dropping the exchange closes the connection (and it leaves the server's queue).
                    return Ok(Err(SendError::not_picked_up()));
                }
            },
        };
        match outcome {
            Ok(Ok((parts, body))) => Ok(Ok(self.accept(parts, body, server, in_flight)?)),
            Ok(Err(error)) => Ok(Err(error)),
            Err(_) => Err(ProxyError::ResponseTimeout {
                upstream: self.name.clone(),
                server: server.address.clone(),
                after: self.response_timeout,
            }),
        }
    }

    /// Picks a server and gets a connection to it with `open`. A connect that was refused,
    /// reset or timed out reached nothing, so it is retried (on another server first, if there
    /// is one) while `retries` allows; any other failure is final.
    async fn connected<'a, T, F>(
        &'a self,
        retries: &mut Retries,
        mut open: impl FnMut(&'a ServerPool) -> F,
    ) -> Result<(&'a ServerPool, T), ProxyError>
    where
        F: Future<Output = Result<T, CheckoutError>>,
    {
        let mut failed = None;
        loop {
            let sp = self.pick(failed)?;
            let error = match open(sp).await {
                Ok(opened) => return Ok((sp, opened)),
                Err(CheckoutError::Connect(e)) if e.is_retriable() => e,
                Err(other) => return Err(self.checkout_error(&sp.server, other)),
            };
            let Some(delay) = retries.after_connect_failure() else {
                return Err(self.connect_error(&sp.server, error));
            };
            tracing::debug!(upstream = %self.name, server = %sp.server.address, error = %error,
                retry_in_ms = delay.as_millis() as u64, "connect failed; retrying");
            self.metrics.retry_connect.inc();
            failed = Some(sp);
            tokio::time::sleep(delay).await;
        }
    }

    /// Sends one request on a connection of its own, outside the pool (upgrades): the
    /// connection ends with this exchange or becomes a tunnel (`PooledBody::into_upgraded`).
    pub async fn send_dedicated(
        &self,
        req: Request<RequestBody>,
        added: &[AddedField<'_>],
    ) -> Result<Response<PooledBody>, ProxyError> {
        let mut retries = Retries::new(self.retry_window);
        let (sp, conn) = self
            .connected(&mut retries, |sp| async move {
                sp.pool
                    .manager()
                    .dial()
                    .await
                    .map_err(CheckoutError::Connect)
            })
            .await?;
        let (parts, body) = req.into_parts();
        let head = RequestHead::from_parts(&parts, added);
        match self
            .send(&sp.server, Lease::dedicated(conn), &head, body, false)
            .await?
        {
            Ok(resp) => Ok(resp),
            Err(error) => Err(self.classify(&sp.server, &error.cause)),
        }
    }

    /// A connection to a server of this upstream (CONNECT tunnels): TLS when the upstream is.
    pub async fn connect_raw(&self) -> Result<BackendStream, ProxyError> {
        let mut retries = Retries::new(self.retry_window);
        let (_, opened) = self
            .connected(&mut retries, |sp| async move {
                conn::open(&sp.server).await.map_err(CheckoutError::Connect)
            })
            .await?;
        // A tunnel's first bytes may come from either side: connected is accepted enough.
        Ok(opened.stream)
    }

    fn pick(&self, avoid: Option<&ServerPool>) -> Result<&ServerPool, ProxyError> {
        self.balancer
            .pick(&self.servers, avoid)
            .ok_or_else(|| ProxyError::NoHealthyServer {
                upstream: self.name.clone(),
            })
    }

    fn connect_error(&self, server: &Server, e: ConnectError) -> ProxyError {
        match e {
            ConnectError::Timeout(after) => ProxyError::ConnectTimeout {
                upstream: self.name.clone(),
                server: server.address.clone(),
                after,
            },
            other => ProxyError::Connect {
                upstream: self.name.clone(),
                server: server.address.clone(),
                cause: other.to_string(),
            },
        }
    }

    /// The version this upstream speaks; an HTTP/1.0 request asks for keep-alive
    /// (`h1::write_request`).
    fn version(&self) -> Version {
        match self.protocol {
            Protocol::Http10 => Version::HTTP_10,
            Protocol::Http11 => Version::HTTP_11,
        }
    }

    /// A connection of `sp`'s pool; with `fresh`, one that never carried a request: an idle
    /// one handed out gives its place to a new connection (the global `max_size` holds).
    async fn checkout(&self, sp: &ServerPool, fresh: bool) -> Result<Lease, CheckoutError> {
        let started = Instant::now();
        let result = sp
            .queue
            .checkout(&sp.pool, &sp.server.metrics, started)
            .await;
        self.metrics
            .pool_wait
            .observe(started.elapsed().as_secs_f64());
        let mut checkout = result?;
        if fresh && checkout.conn.served > 0 {
            // Boxed, as in `ConnManager::create`: kilobytes of dial state would size every
            // checkout's future, which each request moves, for a path few take.
            let new = Box::pin(sp.pool.manager().dial()).await;
            let displaced =
                std::mem::replace(&mut *checkout.conn, new.map_err(CheckoutError::Connect)?);
            displaced.end(CloseReason::Replaced);
        }
        Ok(Lease::pooled(checkout.conn, checkout.permit))
    }

    fn checkout_error(&self, server: &Server, e: CheckoutError) -> ProxyError {
        match e {
            CheckoutError::Connect(e) => self.connect_error(server, e),
            CheckoutError::QueueFull { waiting } => ProxyError::PoolFull {
                upstream: self.name.clone(),
                server: server.address.clone(),
                waiting,
            },
            CheckoutError::WaitTimeout => ProxyError::PoolTimeout {
                upstream: self.name.clone(),
                waited: server.settings.pool.wait_timeout,
            },
            CheckoutError::Unavailable(cause) => ProxyError::Connect {
                upstream: self.name.clone(),
                server: server.address.clone(),
                cause,
            },
        }
    }

    /// Checks a response head, learns what the backend announced, and wraps the body so the
    /// lease decides the connection's fate when it ends.
    fn accept(
        &self,
        parts: Parts,
        body: Box<ResponseBody<Lease>>,
        server: &Arc<Server>,
        in_flight: InFlight,
    ) -> Result<Response<PooledBody>, ProxyError> {
        let fields = *body.fields();
        if let Some(why) = fields.framing.ambiguity() {
            // The connection's framing is lost: whatever follows on it cannot be trusted.
            body.finish().0.close(CloseReason::Error);
            return Err(ProxyError::Protocol {
                upstream: self.name.clone(),
                server: server.address.clone(),
                cause: why.to_string(),
            });
        }
        server.learn_announced(fields.keep_alive);
        let upgrading = parts.status == http::StatusCode::SWITCHING_PROTOCOLS;
        if !upgrading && let Some(why) = body.not_reusable_by_head() {
            server.warn_not_reusable(why);
        }
        server.record_success();
        let body = PooledBody::new(body, in_flight, upgrading);
        Ok(Response::from_parts(parts, body))
    }

    fn classify(&self, server: &Server, error: &h1::Error) -> ProxyError {
        use h1::ErrorKind as K;
        let upstream = self.name.clone();
        let address = server.address.clone();
        let cause = error.to_string();
        match error.kind() {
            K::Io(_)
            | K::ClosedBeforeResponse
            | K::IncompleteHead
            | K::IncompleteBody
            | K::RequestBody(_) => ProxyError::Reset {
                upstream,
                server: address,
                cause,
            },
            _ => ProxyError::Protocol {
                upstream,
                server: address,
                cause,
            },
        }
    }
}

/// RFC 9110 §9.2.2: methods whose repetition has the same effect as one request.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// If the request failed because the client's body failed (stalled, aborted), that error.
fn client_body_failure(error: &h1::Error) -> Option<ProxyError> {
    let h1::ErrorKind::RequestBody(cause) = error.kind() else {
        return None;
    };
    Some(match cause.downcast_ref::<ProxyError>() {
        Some(ProxyError::BodyTimeout(d)) => ProxyError::BodyTimeout(*d),
        Some(other) => ProxyError::ClientBody(other.to_string()),
        None => ProxyError::ClientBody(cause.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::config::Config;
    use crate::metrics::METRICS;

    /// An upstream named `name` whose one server accepts connections and holds them open.
    async fn upstream_holding_connections(name: &str) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("bound");
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let text = format!(
            "[[upstream]]\nname = \"{name}\"\nservers = [\"{addr}\"]\n\n[upstream.pool]\nmin_idle = 0\n"
        );
        let config = Config::parse(&text, Path::new("unit.toml")).expect("valid config");
        Upstream::new(&config.upstream[0], None, None)
    }

    fn closed(upstream: &Upstream, reason: CloseReason) -> u64 {
        let server = upstream.servers[0].server.address.as_str();
        METRICS
            .upstream_connections_closed_total
            .with_label_values(&[upstream.name.as_str(), server, reason.as_str()])
            .get()
    }

    async fn wait_closed(upstream: &Upstream, reason: CloseReason, count: u64) -> bool {
        for _ in 0..500 {
            if closed(upstream, reason) == count {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn idle_connections_closed_at_shutdown_are_counted_as_shutdown() {
        let upstream = upstream_holding_connections("unit-shutdown").await;
        drop(upstream.servers[0].pool.get().await.expect("connects"));

        upstream.close_unused(None, CloseReason::Shutdown);

        assert!(wait_closed(&upstream, CloseReason::Shutdown, 1).await);
        assert_eq!(closed(&upstream, CloseReason::IdleTimeout), 0);
    }

    #[tokio::test]
    async fn busy_connections_of_a_closed_pool_are_counted_with_its_reason_when_they_end() {
        let upstream = upstream_holding_connections("unit-busy-removed").await;
        let busy = upstream.servers[0].pool.get().await.expect("connects");

        upstream.close_unused(None, CloseReason::Removed);
        drop(busy);

        assert!(wait_closed(&upstream, CloseReason::Removed, 1).await);
        assert_eq!(closed(&upstream, CloseReason::PeerClosed), 0);
    }
}
