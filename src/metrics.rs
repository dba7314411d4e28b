//! Every Prometheus metric longhaul exports, defined and registered in one place.
//! Label values are bounded: upstream names, configured server addresses and fixed enums only.
//!
//! Every series whose labels are known when its owner is built exists at 0 from then on: global
//! enums in `Metrics::new`, per upstream in `UpstreamMetrics::new`, per server in
//! `ServerMetrics::new` (each enum label has an `ALL` list; `children` resolves one series per
//! value). A new metric joins the handle that owns its labels the same way.

use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Buckets from 100 µs to 30 s: proxy overhead is sub-millisecond, backends are not.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Buckets from 10 µs to 5 s for the wait on a free pooled connection.
const POOL_WAIT_BUCKETS: &[f64] = &[
    0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 5.0,
];

pub struct Metrics {
    pub registry: Registry,
    pub downstream_connections_total: IntCounter,
    pub downstream_connections_active: IntGauge,
    pub requests_total: IntCounterVec,
    pub request_duration_seconds: HistogramVec,
    pub upstream_requests_total: IntCounterVec,
    pub upstream_connections_opened_total: IntCounterVec,
    pub upstream_connections_closed_total: IntCounterVec,
    pub pool_connections: IntGaugeVec,
    pub pool_max_connections: IntGaugeVec,
    pub pool_limit: IntGaugeVec,
    pub pool_waiters: IntGaugeVec,
    pub pool_wait_seconds: HistogramVec,
    pub pool_rejected_total: IntCounterVec,
    pub upstream_retries_total: IntCounterVec,
    pub upstream_errors_total: IntCounterVec,
    pub upstream_keepalive_timeout_seconds: prometheus::GaugeVec,
    pub upstream_server_up: IntGaugeVec,
    pub tcp_passthrough_connections_total: IntCounterVec,
    pub tunnels_total: IntCounterVec,
    pub tunnels_closed_total: IntCounterVec,
    pub upgrades_refused_total: IntCounterVec,
    pub transparent_denied_total: IntCounterVec,
    pub transparent_destinations: IntGauge,
    pub config_reloads_total: IntCounterVec,
    pub build_info: IntGaugeVec,
    pub tls: TlsMetrics,
}

/// The process-wide metrics, registered on first use.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let h = HistogramVec::new(opts, labels).expect("valid metric");
    r.register(Box::new(h.clone())).expect("registered once");
    h
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let active = IntGauge::new(
            "longhaul_downstream_connections_active",
            "Client connections open now.",
        )
        .expect("valid metric");
        r.register(Box::new(active.clone()))
            .expect("registered once");
        let destinations = IntGauge::new(
            "longhaul_transparent_destinations",
            "Original destinations with a pool now (transparent mode).",
        )
        .expect("valid metric");
        r.register(Box::new(destinations.clone()))
            .expect("registered once");
        let keepalive = prometheus::GaugeVec::new(
            Opts::new(
                "longhaul_upstream_keepalive_timeout_seconds",
                "Backend keep-alive timeout learned from Keep-Alive headers or observed idle closes.",
            ),
            &["upstream", "server"],
        )
        .expect("valid metric");
        r.register(Box::new(keepalive.clone()))
            .expect("registered once");
        let m = Metrics {
            downstream_connections_total: counter(
                &r,
                "longhaul_downstream_connections_total",
                "Client connections accepted.",
            ),
            downstream_connections_active: active,
            requests_total: counter_vec(
                &r,
                "longhaul_requests_total",
                "Client requests answered, by upstream and status code.",
                &["upstream", "code"],
            ),
            request_duration_seconds: histogram_vec(
                &r,
                "longhaul_request_duration_seconds",
                "Time from request receipt to response head, by upstream.",
                &["upstream"],
                LATENCY_BUCKETS,
            ),
            upstream_requests_total: counter_vec(
                &r,
                "longhaul_upstream_requests_total",
                "Requests sent upstream, on a new or a reused connection.",
                &["upstream", "server", "connection"],
            ),
            upstream_connections_opened_total: counter_vec(
                &r,
                "longhaul_upstream_connections_opened_total",
                "Upstream connections opened.",
                &["upstream", "server"],
            ),
            upstream_connections_closed_total: counter_vec(
                &r,
                "longhaul_upstream_connections_closed_total",
                "Upstream connections closed, by reason.",
                &["upstream", "server", "reason"],
            ),
            pool_connections: gauge_vec(
                &r,
                "longhaul_pool_connections",
                "Pooled upstream connections, idle or busy.",
                &["upstream", "server", "state"],
            ),
            pool_max_connections: gauge_vec(
                &r,
                "longhaul_pool_max_connections",
                "Configured pool size (max_size) per server.",
                &["upstream", "server"],
            ),
            pool_limit: gauge_vec(
                &r,
                "longhaul_pool_limit",
                "Connections per server in use at once: the learned limit (adaptive), else max_size.",
                &["upstream", "server"],
            ),
            pool_waiters: gauge_vec(
                &r,
                "longhaul_pool_waiters",
                "Requests waiting for a free pooled connection.",
                &["upstream", "server"],
            ),
            pool_wait_seconds: histogram_vec(
                &r,
                "longhaul_pool_wait_seconds",
                "Time to obtain a pooled upstream connection.",
                &["upstream"],
                POOL_WAIT_BUCKETS,
            ),
            pool_rejected_total: counter_vec(
                &r,
                "longhaul_pool_rejected_total",
                "Requests refused a pooled connection (503), by reason: queue_full or wait_timeout.",
                &["upstream", "server", "reason"],
            ),
            upstream_retries_total: counter_vec(
                &r,
                "longhaul_upstream_retries_total",
                "Requests re-sent on a fresh connection, by reason.",
                &["upstream", "reason"],
            ),
            upstream_errors_total: counter_vec(
                &r,
                "longhaul_upstream_errors_total",
                "Upstream failures answered to the client, by kind.",
                &["upstream", "kind"],
            ),
            upstream_keepalive_timeout_seconds: keepalive,
            upstream_server_up: gauge_vec(
                &r,
                "longhaul_upstream_server_up",
                "1 when the server is in rotation, 0 when ejected or unreachable.",
                &["upstream", "server"],
            ),
            tcp_passthrough_connections_total: counter_vec(
                &r,
                "longhaul_tcp_passthrough_connections_total",
                "Non-HTTP connections spliced as raw TCP (transparent mode).",
                &["upstream"],
            ),
            tunnels_total: counter_vec(
                &r,
                "longhaul_tunnels_total",
                "Upgrade and CONNECT tunnels opened, by kind.",
                &["upstream", "kind"],
            ),
            tunnels_closed_total: counter_vec(
                &r,
                "longhaul_tunnels_closed_total",
                "Upgrade, CONNECT and passthrough tunnels closed, by kind and reason.",
                &["kind", "reason"],
            ),
            upgrades_refused_total: counter_vec(
                &r,
                "longhaul_upgrades_refused_total",
                "Upgrade protocols stripped from requests ([server] upgrades), by protocol.",
                &["protocol"],
            ),
            transparent_denied_total: counter_vec(
                &r,
                "longhaul_transparent_denied_total",
                "Redirected connections refused, by reason.",
                &["reason"],
            ),
            transparent_destinations: destinations,
            config_reloads_total: counter_vec(
                &r,
                "longhaul_config_reloads_total",
                "Configuration reloads, by result.",
                &["result"],
            ),
            build_info: gauge_vec(
                &r,
                "longhaul_build_info",
                "Always 1; the version label says which build runs.",
                &["version"],
            ),
            tls: TlsMetrics::new(&r),
            registry: r,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m.export_global_series();
        m
    }

    /// Creates, at 0, the series of the families whose labels are fixed enums: everything an
    /// alert or a dashboard may ask for exists before the first event. Per upstream and per
    /// server series are created by `UpstreamMetrics::new` and `ServerMetrics::new`.
    fn export_global_series(&self) {
        for kind in TunnelKind::ALL {
            for end in TunnelEnd::ALL {
                self.tunnels_closed_total
                    .with_label_values(&[kind.as_str(), end.as_str()]);
            }
        }
        for protocol in UPGRADE_PROTOCOLS {
            self.upgrades_refused_total.with_label_values(&[protocol]);
        }
        for reason in DeniedReason::ALL {
            self.transparent_denied_total
                .with_label_values(&[reason.as_str()]);
        }
        for result in ["ok", "error"] {
            self.config_reloads_total.with_label_values(&[result]);
        }
        self.export_answered_series(NO_UPSTREAM);
    }

    /// `longhaul_requests_total` for the generated codes, and the latency histogram, of `upstream`.
    fn export_answered_series(&self, upstream: &str) {
        for code in GENERATED_CODES {
            self.requests_total.with_label_values(&[upstream, code]);
        }
        self.request_duration_seconds.with_label_values(&[upstream]);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut buf = Vec::with_capacity(16 * 1024);
        let encoder = TextEncoder::new();
        encoder
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding to memory cannot fail");
        String::from_utf8(buf).expect("text format is UTF-8")
    }
}

/// Which side of the proxy a TLS handshake was made on: with a client (termination) or with a
/// backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsSide {
    Client,
    Upstream,
}

impl TlsSide {
    /// Every side, in declaration order (`side as usize` indexes it).
    pub const ALL: [TlsSide; 2] = [TlsSide::Client, TlsSide::Upstream];

    pub fn as_str(self) -> &'static str {
        match self {
            TlsSide::Client => "client",
            TlsSide::Upstream => "upstream",
        }
    }
}

/// `longhaul_tls_handshakes_total{side, result, resumed}` (all 8 series at 0 from start) and
/// `longhaul_tls_handshake_duration_seconds{side}`, resolved once.
pub struct TlsMetrics {
    /// Indexed `[side][ok][resumed]`.
    handshakes: [[[IntCounter; 2]; 2]; 2],
    duration: [Histogram; 2],
}

impl TlsMetrics {
    fn new(r: &Registry) -> TlsMetrics {
        let handshakes = counter_vec(
            r,
            "longhaul_tls_handshakes_total",
            "TLS handshakes, by side (client or upstream), result and whether the session was resumed.",
            &["side", "result", "resumed"],
        );
        let duration = histogram_vec(
            r,
            "longhaul_tls_handshake_duration_seconds",
            "Time a TLS handshake took, by side.",
            &["side"],
            LATENCY_BUCKETS,
        );
        TlsMetrics {
            handshakes: TlsSide::ALL.map(|side| {
                ["error", "ok"].map(|result| {
                    ["false", "true"].map(|resumed| {
                        handshakes.with_label_values(&[side.as_str(), result, resumed])
                    })
                })
            }),
            duration: TlsSide::ALL.map(|side| duration.with_label_values(&[side.as_str()])),
        }
    }

    /// Counts one handshake on `side` and how long it took.
    pub fn record(&self, side: TlsSide, ok: bool, resumed: bool, took: Duration) {
        self.handshakes[side as usize][ok as usize][resumed as usize].inc();
        self.duration[side as usize].observe(took.as_secs_f64());
    }
}

/// The `protocol` label values of `longhaul_upgrades_refused_total`: the Upgrade tokens met in
/// practice (IANA's registry plus `h2`), and `other` for anything else a client may send.
pub const UPGRADE_PROTOCOLS: [&str; 6] = ["websocket", "h2c", "h2", "http", "tls", "other"];

/// Counts one refused Upgrade protocol, by its name (`h2c`, `TLS`, ...; no version).
pub fn upgrade_refused(protocol: &[u8]) {
    let label = UPGRADE_PROTOCOLS
        .iter()
        .find(|known| known.as_bytes().eq_ignore_ascii_case(protocol))
        .unwrap_or(&"other");
    METRICS
        .upgrades_refused_total
        .with_label_values(&[label])
        .inc();
}

/// The `upstream` label of requests answered before (or without) routing: no route, shed,
/// timed out in the stack.
pub const NO_UPSTREAM: &str = "none";

/// The statuses longhaul answers with itself when an upstream fails or is saturated: their
/// `longhaul_requests_total` series exist at 0 for every upstream (and `none`) from the start, so
/// 5xx rates and ratios have data before the first failure. Other codes are the backend's (or
/// the client's) and appear when first answered.
pub const GENERATED_CODES: [&str; 3] = ["502", "503", "504"];

/// One child of `family` per value of a label enum (`fixed` labels first, the enum's last),
/// created now: each series is exported at 0 from the moment its owner is built.
fn children<L: Copy, const N: usize>(
    family: &IntCounterVec,
    fixed: &[&str],
    values: [L; N],
    label: fn(L) -> &'static str,
) -> [IntCounter; N] {
    values.map(|value| {
        let mut labels = fixed.to_vec();
        labels.push(label(value));
        family.with_label_values(&labels)
    })
}

/// How many distinct statuses of one upstream keep a resolved `longhaul_requests_total` child;
/// rarer ones are looked up by label per request.
const STATUS_SLOTS: usize = 8;

/// The request series of one `upstream` label (`longhaul_requests_total` by status and the
/// latency histogram), resolved once so recording a request does no label hashing.
pub struct RequestSeries {
    pub upstream: Arc<str>,
    duration: Histogram,
    /// Filled in the order statuses first occur; never changed after.
    statuses: [OnceLock<(u16, IntCounter)>; STATUS_SLOTS],
}

impl std::fmt::Debug for RequestSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestSeries")
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl RequestSeries {
    pub fn new(upstream: &str) -> RequestSeries {
        RequestSeries {
            upstream: Arc::from(upstream),
            duration: METRICS
                .request_duration_seconds
                .with_label_values(&[upstream]),
            statuses: Default::default(),
        }
    }

    /// Requests answered before (or without) routing.
    pub fn none() -> &'static RequestSeries {
        static NONE: LazyLock<RequestSeries> = LazyLock::new(|| RequestSeries::new(NO_UPSTREAM));
        &NONE
    }

    /// Counts one answered request and its duration.
    pub fn record(&self, status: http::StatusCode, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
        let code = status.as_u16();
        let resolve = || {
            let labels = [&*self.upstream, status.as_str()];
            METRICS.requests_total.with_label_values(&labels)
        };
        for slot in &self.statuses {
            let (held, counter) = slot.get_or_init(|| (code, resolve()));
            if *held == code {
                counter.inc();
                return;
            }
        }
        resolve().inc();
    }
}

/// Per-upstream metric children, resolved once so the request path does no label lookups.
/// Building it exports every series of the upstream at 0 (also for a reload's new upstreams).
#[derive(Clone)]
pub struct UpstreamMetrics {
    pub pool_wait: Histogram,
    pub retry_not_sent: IntCounter,
    pub retry_stale: IntCounter,
    pub retry_not_picked_up: IntCounter,
    errors: [IntCounter; ErrorKind::ALL.len()],
    tunnels: [IntCounter; TunnelKind::THROUGH_UPSTREAM.len()],
    pub retry_connect: IntCounter,
}

impl UpstreamMetrics {
    pub fn new(upstream: &str) -> UpstreamMetrics {
        let m = &*METRICS;
        m.export_answered_series(upstream);
        UpstreamMetrics {
            pool_wait: m.pool_wait_seconds.with_label_values(&[upstream]),
            retry_not_sent: m
                .upstream_retries_total
                .with_label_values(&[upstream, "not_sent"]),
            retry_stale: m
                .upstream_retries_total
                .with_label_values(&[upstream, "stale_reused"]),
            retry_not_picked_up: m
                .upstream_retries_total
                .with_label_values(&[upstream, "not_picked_up"]),
            errors: children(
                &m.upstream_errors_total,
                &[upstream],
                ErrorKind::ALL,
                ErrorKind::as_str,
            ),
            tunnels: children(
                &m.tunnels_total,
                &[upstream],
                TunnelKind::THROUGH_UPSTREAM,
                TunnelKind::as_str,
            ),
            retry_connect: m
                .upstream_retries_total
                .with_label_values(&[upstream, "connect"]),
        }
    }

    /// Counts one upstream failure answered to a client.
    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind as usize].inc();
    }

    /// Counts a tunnel that opened.
    pub fn tunnel(&self, kind: TunnelKind) {
        if let Some(opened) = self.tunnels.get(kind as usize) {
            opened.inc();
        }
    }
}

/// Per-server metric children, resolved once per pool.
#[derive(Clone)]
pub struct ServerMetrics {
    pub upstream: String,
    pub server: String,
    pub requests_new: IntCounter,
    pub requests_reused: IntCounter,
    pub opened: IntCounter,
    pub idle: IntGauge,
    pub busy: IntGauge,
    pub waiters: IntGauge,
    pub rejected_queue_full: IntCounter,
    pub rejected_wait_timeout: IntCounter,
    pub up: IntGauge,
    pub keepalive_timeout: prometheus::Gauge,
    /// The learned limit (`max_size` until a gate sets it).
    pub limit: IntGauge,
    closed: [IntCounter; CloseReason::ALL.len()],
}

impl ServerMetrics {
    pub fn new(upstream: &str, server: &str, max_size: usize) -> ServerMetrics {
        let m = &*METRICS;
        let labels = [upstream, server];
        m.pool_max_connections
            .with_label_values(&labels)
            .set(max_size as i64);
        let up = m.upstream_server_up.with_label_values(&labels);
        up.set(1);
        let limit = m.pool_limit.with_label_values(&labels);
        limit.set(max_size as i64);
        ServerMetrics {
            upstream: upstream.to_string(),
            server: server.to_string(),
            requests_new: m
                .upstream_requests_total
                .with_label_values(&[upstream, server, "new"]),
            requests_reused: m
                .upstream_requests_total
                .with_label_values(&[upstream, server, "reused"]),
            opened: m
                .upstream_connections_opened_total
                .with_label_values(&labels),
            idle: m
                .pool_connections
                .with_label_values(&[upstream, server, "idle"]),
            busy: m
                .pool_connections
                .with_label_values(&[upstream, server, "busy"]),
            waiters: m.pool_waiters.with_label_values(&labels),
            rejected_queue_full: m.pool_rejected_total.with_label_values(&[
                upstream,
                server,
                "queue_full",
            ]),
            rejected_wait_timeout: m.pool_rejected_total.with_label_values(&[
                upstream,
                server,
                "wait_timeout",
            ]),
            up,
            limit,
            keepalive_timeout: m
                .upstream_keepalive_timeout_seconds
                .with_label_values(&labels),
            closed: children(
                &m.upstream_connections_closed_total,
                &labels,
                CloseReason::ALL,
                CloseReason::as_str,
            ),
        }
    }

    /// Counts one closed upstream connection.
    pub fn closed(&self, reason: CloseReason) {
        self.closed[reason as usize].inc();
    }

    /// Removes this server's series, when a reload drops the server.
    pub fn remove(&self) {
        let m = &*METRICS;
        let labels = [self.upstream.as_str(), self.server.as_str()];
        let _ = m.pool_max_connections.remove_label_values(&labels);
        let _ = m.pool_limit.remove_label_values(&labels);
        let _ = m.upstream_server_up.remove_label_values(&labels);
        let _ = m.pool_waiters.remove_label_values(&labels);
        let _ = m
            .upstream_keepalive_timeout_seconds
            .remove_label_values(&labels);
        for state in ["idle", "busy"] {
            let _ = m
                .pool_connections
                .remove_label_values(&[&self.upstream, &self.server, state]);
        }
        for reason in ["queue_full", "wait_timeout"] {
            let _ =
                m.pool_rejected_total
                    .remove_label_values(&[&self.upstream, &self.server, reason]);
        }
    }
}

/// Why an upstream connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    IdleTimeout,
    MaxLifetime,
    MaxRequests,
    PeerClosed,
    NotReusable,
    Error,
    /// An idle connection whose place a fresh one took: a request retried after a stale
    /// connection must not meet another one (`Upstream::forward`).
    Replaced,
    /// A reload dropped the server: its pool was closed.
    Removed,
    /// longhaul is shutting down.
    Shutdown,
}

impl CloseReason {
    /// Every reason, in declaration order (`reason as usize` indexes it).
    pub const ALL: [CloseReason; 9] = [
        CloseReason::IdleTimeout,
        CloseReason::MaxLifetime,
        CloseReason::MaxRequests,
        CloseReason::PeerClosed,
        CloseReason::NotReusable,
        CloseReason::Error,
        CloseReason::Replaced,
        CloseReason::Removed,
        CloseReason::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::MaxLifetime => "max_lifetime",
            CloseReason::MaxRequests => "max_requests",
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::NotReusable => "not_reusable",
            CloseReason::Error => "error",
            CloseReason::Replaced => "replaced",
            CloseReason::Removed => "removed",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// The `kind` label of `longhaul_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    PoolTimeout,
    PoolFull,
    Connect,
    Timeout,
    Reset,
    Protocol,
}

impl ErrorKind {
    /// Every kind, in declaration order (`kind as usize` indexes it).
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::PoolTimeout,
        ErrorKind::PoolFull,
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::Reset,
        ErrorKind::Protocol,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::PoolTimeout => "pool_timeout",
            ErrorKind::PoolFull => "pool_full",
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Reset => "reset",
            ErrorKind::Protocol => "protocol",
        }
    }
}

/// Which kind of tunnel, for the `kind` label of `longhaul_tunnels_total` (upgrade and connect,
/// per upstream) and `longhaul_tunnels_closed_total` (all three).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelKind {
    Upgrade,
    Connect,
    Passthrough,
}

impl TunnelKind {
    /// Every kind, in declaration order (`kind as usize` indexes it).
    pub const ALL: [TunnelKind; 3] = [
        TunnelKind::Upgrade,
        TunnelKind::Connect,
        TunnelKind::Passthrough,
    ];
    /// The kinds opened through a routed upstream; passthrough is counted per allow rule in
    /// `longhaul_tcp_passthrough_connections_total`.
    pub const THROUGH_UPSTREAM: [TunnelKind; 2] = [TunnelKind::Upgrade, TunnelKind::Connect];

    pub fn as_str(self) -> &'static str {
        match self {
            TunnelKind::Upgrade => "upgrade",
            TunnelKind::Connect => "connect",
            TunnelKind::Passthrough => "passthrough",
        }
    }
}

/// Why a tunnel ended, for the `reason` label of `longhaul_tunnels_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelEnd {
    /// No bytes either way for `tunnel_idle_timeout`.
    IdleTimeout,
    /// The client closed its side first.
    ClientClosed,
    /// The backend closed its side first.
    UpstreamClosed,
    /// A read or write failed on either side (reset, keepalive timeout, ...).
    Error,
}

impl TunnelEnd {
    pub const ALL: [TunnelEnd; 4] = [
        TunnelEnd::IdleTimeout,
        TunnelEnd::ClientClosed,
        TunnelEnd::UpstreamClosed,
        TunnelEnd::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TunnelEnd::IdleTimeout => "idle_timeout",
            TunnelEnd::ClientClosed => "client_closed",
            TunnelEnd::UpstreamClosed => "upstream_closed",
            TunnelEnd::Error => "error",
        }
    }
}

/// Why a redirected connection was refused (transparent mode), for
/// `longhaul_transparent_denied_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeniedReason {
    NotRedirected,
    NoOriginalDst,
    Loop,
    NotAllowed,
    TooManyDestinations,
}

impl DeniedReason {
    pub const ALL: [DeniedReason; 5] = [
        DeniedReason::NotRedirected,
        DeniedReason::NoOriginalDst,
        DeniedReason::Loop,
        DeniedReason::NotAllowed,
        DeniedReason::TooManyDestinations,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeniedReason::NotRedirected => "not_redirected",
            DeniedReason::NoOriginalDst => "no_original_dst",
            DeniedReason::Loop => "loop",
            DeniedReason::NotAllowed => "not_allowed",
            DeniedReason::TooManyDestinations => "too_many_destinations",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_is_counted_under_its_own_label_beyond_the_resolved_slots() {
        let series = RequestSeries::new("series-test");
        let codes: Vec<u16> = (200..200 + STATUS_SLOTS as u16 + 3).collect();
        for (i, code) in codes.iter().enumerate() {
            let status = http::StatusCode::from_u16(*code).unwrap();
            for _ in 0..=i {
                series.record(status, Duration::from_millis(1));
            }
        }
        for (i, code) in codes.iter().enumerate() {
            let labels = ["series-test", &code.to_string()];
            let counted = METRICS.requests_total.with_label_values(&labels).get();
            assert_eq!(counted, i as u64 + 1, "status {code}");
        }
        let observed = METRICS
            .request_duration_seconds
            .with_label_values(&["series-test"])
            .get_sample_count();
        assert_eq!(observed, (1..=codes.len() as u64).sum::<u64>());
    }

    #[test]
    fn label_enums_are_indexed_by_their_discriminant() {
        for (i, r) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
        }
        for (i, k) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i, "{k:?}");
        }
        for (i, k) in TunnelKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i, "{k:?}");
        }
        for (i, s) in TlsSide::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i, "{s:?}");
        }
    }
}
