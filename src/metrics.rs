//! Every Prometheus metric longhaul exports, defined and registered in one place.
//! Label values are bounded: upstream names, configured server addresses and fixed enums only.

use std::sync::LazyLock;

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
    pub pool_waiters: IntGaugeVec,
    pub pool_wait_seconds: HistogramVec,
    pub pool_rejected_total: IntCounterVec,
    pub upstream_retries_total: IntCounterVec,
    pub upstream_errors_total: IntCounterVec,
    pub upstream_keepalive_timeout_seconds: prometheus::GaugeVec,
    pub upstream_server_up: IntGaugeVec,
    pub tcp_passthrough_connections_total: IntCounterVec,
    pub tunnels_total: IntCounterVec,
    pub transparent_denied_total: IntCounterVec,
    pub transparent_destinations: IntGauge,
    pub config_reloads_total: IntCounterVec,
    pub build_info: IntGaugeVec,
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
            registry: r,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m
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

/// Per-upstream metric children, resolved once so the request path does no label lookups.
#[derive(Clone)]
pub struct UpstreamMetrics {
    pub pool_wait: Histogram,
    pub request_duration: Histogram,
    pub retry_not_sent: IntCounter,
    pub retry_stale: IntCounter,
    pub retry_connect: IntCounter,
}

impl UpstreamMetrics {
    pub fn new(upstream: &str) -> UpstreamMetrics {
        let m = &*METRICS;
        UpstreamMetrics {
            pool_wait: m.pool_wait_seconds.with_label_values(&[upstream]),
            request_duration: m.request_duration_seconds.with_label_values(&[upstream]),
            retry_not_sent: m
                .upstream_retries_total
                .with_label_values(&[upstream, "not_sent"]),
            retry_stale: m
                .upstream_retries_total
                .with_label_values(&[upstream, "stale_reused"]),
            retry_connect: m
                .upstream_retries_total
                .with_label_values(&[upstream, "connect"]),
        }
    }

    /// Counts one upstream failure of the given kind.
    pub fn error(upstream: &str, kind: &str) {
        METRICS
            .upstream_errors_total
            .with_label_values(&[upstream, kind])
            .inc();
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
            keepalive_timeout: m
                .upstream_keepalive_timeout_seconds
                .with_label_values(&labels),
        }
    }

    /// Counts one closed upstream connection.
    pub fn closed(&self, reason: CloseReason) {
        METRICS
            .upstream_connections_closed_total
            .with_label_values(&[&self.upstream, &self.server, reason.as_str()])
            .inc();
    }

    /// Removes this server's series, when a reload drops the server.
    pub fn remove(&self) {
        let m = &*METRICS;
        let labels = [self.upstream.as_str(), self.server.as_str()];
        let _ = m.pool_max_connections.remove_label_values(&labels);
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
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::MaxLifetime => "max_lifetime",
            CloseReason::MaxRequests => "max_requests",
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::NotReusable => "not_reusable",
            CloseReason::Error => "error",
        }
    }
}
