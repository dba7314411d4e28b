//! One backend server as the pool sees it: its address and settings, what was learned about its
//! keep-alive behaviour, its health (passive ejection), and its metric children.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use super::reuse::KeepAlive;
use super::tls::UpstreamTls;
use crate::clock;
use crate::config::{HealthConfig, PoolConfig, Protocol, TcpKeepaliveConfig};
use crate::metrics::{CloseReason, ServerMetrics};

/// Settings a server's connections are opened and reused with.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    pub protocol: Protocol,
    pub connect_timeout: Duration,
    pub pool: PoolConfig,
    pub tcp_keepalive: TcpKeepaliveConfig,
    pub health: HealthConfig,
    /// SO_MARK for upstream sockets (transparent mode's loop protection).
    pub mark: Option<u32>,
    /// `[upstream.tls]`, loaded: every connection handshakes with it.
    pub tls: Option<UpstreamTls>,
}

/// TLS handshakes made with one server, for `/pools`.
#[derive(Default)]
pub struct HandshakeCounts {
    pub full: AtomicU64,
    pub resumed: AtomicU64,
    pub failed: AtomicU64,
}

impl HandshakeCounts {
    pub fn record(&self, ok: bool, resumed: bool) {
        let counter = match (ok, resumed) {
            (false, _) => &self.failed,
            (true, true) => &self.resumed,
            (true, false) => &self.full,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Observed idle closes shorter than this are "closed after a response", not a keep-alive timer.
const MIN_OBSERVED_IDLE: Duration = Duration::from_millis(20);

/// Stay this fraction below the backend's keep-alive timeout, to leave room for RTT and timer slop.
const KEEPALIVE_SAFETY_NUM: u32 = 3;
const KEEPALIVE_SAFETY_DEN: u32 = 4;

pub struct Server {
    pub upstream: String,
    pub address: String,
    pub settings: ServerSettings,
    pub metrics: ServerMetrics,
    /// Requests in flight on this server (for least_conn).
    pub in_flight: AtomicUsize,
    /// Shortest backend keep-alive timeout seen (announced or observed), in ms; 0 = unknown.
    learned_keepalive_ms: AtomicU64,
    /// Request budget per connection the backend announced with `Keep-Alive: max=N`; 0 = none.
    learned_max_requests: AtomicU32,
    /// The last observed idle close not yet confirmed by a second one, in ms; 0 = none.
    unconfirmed_idle_close_ms: AtomicU64,
    /// Set once we have logged that this server does not keep connections alive.
    warned_not_reusable: AtomicBool,
    /// Why the pool was closed (a `CloseReason` + 1; 0 = still open).
    pool_closed: AtomicU8,
    health: Health,
    /// Slots for connections being opened (`max_connecting`): from the connect until the server
    /// has shown it accepted (a first response head, at most 250 ms), so a burst cannot overflow
    /// a small accept backlog whose dropped SYNs would each cost a 1 s retransmit.
    pub connecting: Arc<tokio::sync::Semaphore>,
    /// TLS handshakes with this server (full, resumed, failed).
    pub tls_handshakes: HandshakeCounts,
}

impl Server {
    pub fn new(upstream: &str, address: &str, settings: ServerSettings) -> Server {
        Server {
            upstream: upstream.to_string(),
            address: address.to_string(),
            metrics: ServerMetrics::new(upstream, address, settings.pool.max_size),
            connecting: Arc::new(tokio::sync::Semaphore::new(settings.pool.max_connecting)),
            settings,
            in_flight: AtomicUsize::new(0),
            learned_keepalive_ms: AtomicU64::new(0),
            learned_max_requests: AtomicU32::new(0),
            unconfirmed_idle_close_ms: AtomicU64::new(0),
            warned_not_reusable: AtomicBool::new(false),
            pool_closed: AtomicU8::new(0),
            health: Health::default(),
            tls_handshakes: HandshakeCounts::default(),
        }
    }

    /// Records that this server's pool is closing, so each of its connections, idle or still
    /// busy, is counted with `reason` when it ends.
    pub fn close_pool(&self, reason: CloseReason) {
        self.pool_closed.store(reason as u8 + 1, Ordering::Relaxed);
    }

    /// Why the pool was closed, once it was.
    pub fn pool_closed(&self) -> Option<CloseReason> {
        match self.pool_closed.load(Ordering::Relaxed) {
            0 => None,
            code => Some(CloseReason::ALL[(code - 1) as usize]),
        }
    }

    /// How long a connection may sit idle: the configured idle timeout, kept below the backend's.
    pub fn idle_limit(&self) -> Duration {
        let configured = self.settings.pool.idle_timeout;
        match self.learned_keepalive() {
            Some(backend) => configured.min(backend * KEEPALIVE_SAFETY_NUM / KEEPALIVE_SAFETY_DEN),
            None => configured,
        }
    }

    /// Requests a connection may carry: the configured budget, within the backend's `max`.
    pub fn request_budget(&self) -> u32 {
        match self.learned_max_requests.load(Ordering::Relaxed) {
            0 => self.settings.pool.max_requests,
            announced => self.settings.pool.max_requests.min(announced),
        }
    }

    pub fn learned_keepalive(&self) -> Option<Duration> {
        match self.learned_keepalive_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Records a `Keep-Alive: timeout=N, max=M` announcement.
    pub fn learn_announced(&self, announced: KeepAlive) {
        if let Some(t) = announced.timeout {
            self.learn_keepalive(t);
        }
        if let Some(m) = announced.max.filter(|&m| m > 0) {
            let prev = self.learned_max_requests.load(Ordering::Relaxed);
            if prev == 0 || m > prev {
                // The `max` a backend announces counts down per connection; the first, largest
                // value is its real budget.
                self.learned_max_requests.store(m, Ordering::Relaxed);
            }
        }
    }

    /// Records that the backend closed a connection that had been idle for `idle`. One early
    /// close proves nothing (a restart, a reaper); two closes at about the same idle time
    /// (within a quarter) are the backend's keep-alive timer, and the shorter one is learned.
    pub fn learn_observed_idle_close(&self, idle: Duration) {
        if idle < MIN_OBSERVED_IDLE {
            return;
        }
        let ms = idle.as_millis() as u64;
        let previous = self.unconfirmed_idle_close_ms.swap(ms, Ordering::Relaxed);
        if previous != 0 && ms.abs_diff(previous) <= previous / 4 {
            self.learn_keepalive(Duration::from_millis(ms.min(previous)));
        }
    }

    fn learn_keepalive(&self, timeout: Duration) {
        let ms = (timeout.as_millis() as u64).max(1);
        let prev = self.learned_keepalive_ms.load(Ordering::Relaxed);
        if prev == 0 || ms < prev {
            self.learned_keepalive_ms.store(ms, Ordering::Relaxed);
            self.metrics.keepalive_timeout.set(ms as f64 / 1000.0);
            tracing::info!(
                upstream = %self.upstream, server = %self.address, keepalive_ms = ms,
                idle_limit_ms = self.idle_limit().as_millis() as u64,
                "learned backend keep-alive timeout"
            );
        }
    }

    /// Logs, once per server, that responses from it cannot be reused.
    pub fn warn_not_reusable(&self, why: &str) {
        if !self.warned_not_reusable.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                upstream = %self.upstream, server = %self.address, reason = why,
                "backend does not keep connections alive; each request costs a new connection"
            );
        }
    }

    // === health (passive ejection) ===

    /// False while the server is ejected. A server never ejected costs no clock read.
    pub fn is_available(&self) -> bool {
        let until = self.health.ejected_until.load(Ordering::Relaxed);
        until == 0 || until <= clock::now_ms()
    }

    /// True when the server is in rotation (not ejected) and nothing has failed on it since
    /// its last success.
    pub fn is_healthy(&self) -> bool {
        self.is_available() && self.health.consecutive_failures.load(Ordering::Relaxed) == 0
    }

    /// A connection opened: an ejected server is back in rotation at once. It stays on
    /// probation (failures still count towards the next ejection) until an exchange succeeds.
    pub fn record_connected(&self) {
        if self.health.ejected_until.swap(0, Ordering::Relaxed) > clock::now_ms() {
            tracing::info!(upstream = %self.upstream, server = %self.address,
                "server accepted a connection; back in rotation");
        }
        self.metrics.up.set(1);
    }

    /// A response head arrived (`Upstream::accept`) or an active probe passed; a connect alone
    /// does not count (see `ConnManager::create`). The server is back in rotation for good.
    pub fn record_success(&self) {
        self.health.consecutive_failures.store(0, Ordering::Relaxed);
        if self.health.ejections.swap(0, Ordering::Relaxed) > 0 {
            self.health.ejected_until.store(0, Ordering::Relaxed);
            tracing::info!(upstream = %self.upstream, server = %self.address, "server back in rotation");
        }
        self.metrics.up.set(1);
    }

    /// Counts a failure; ejects the server after `max_failures` in a row. A server whose
    /// ejection just ended is on probation: one more failed *connect* (or probe) ejects it again,
    /// longer. A reset is counted but needs the usual run: a backend that drops the odd request
    /// must not bounce straight back out of rotation after an outage.
    pub fn record_failure(&self, kind: Failure) {
        let failures = self
            .health
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        let h = &self.settings.health;
        let on_probation = self.health.ejections.load(Ordering::Relaxed) > 0;
        if failures < h.max_failures && !(on_probation && kind == Failure::Unreachable) {
            return;
        }
        self.health.consecutive_failures.store(0, Ordering::Relaxed);
        let ejections = self.health.ejections.fetch_add(1, Ordering::Relaxed);
        let backoff = h
            .base_ejection
            .saturating_mul(1u32 << ejections.min(16))
            .min(h.max_ejection);
        self.health.ejected_until.store(
            clock::now_ms() + backoff.as_millis() as u64,
            Ordering::Relaxed,
        );
        self.metrics.up.set(0);
        tracing::warn!(
            upstream = %self.upstream, server = %self.address, failures,
            ejected_for_ms = backoff.as_millis() as u64, "server ejected"
        );
    }
}

/// What went wrong with a server, for passive health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Connect refused or timed out, or an active probe failed.
    Unreachable,
    /// The connection opened, then closed or reset before an answer.
    Reset,
}

#[derive(Default)]
struct Health {
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    /// `clock::now_ms()` until which the server is out of rotation.
    ejected_until: AtomicU64,
}
