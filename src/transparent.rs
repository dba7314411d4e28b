//! Transparent mode: connections the kernel redirected to longhaul (REDIRECT or TPROXY) are
//! checked against the allow-list and loop rules, then pooled per original destination when they
//! speak HTTP/1.x, or spliced as raw TCP when they do not.

mod allow;
mod destinations;
mod detect;
mod orig_dst;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::config::{Mode, TcpKeepaliveConfig, TransparentConfig};
use crate::metrics::{DeniedReason, METRICS, TunnelKind, UpstreamMetrics};
use crate::server::{ClientSettings, Stack};

use crate::tunnel;
use crate::upstream::Upstream;
pub use allow::AllowList;
pub use destinations::Destinations;
use detect::Detected;

/// The pool a transparent connection's requests go to, attached to each of its requests.
#[derive(Clone)]
pub struct Destination {
    pub upstream: Arc<Upstream>,
}

/// How often idle destination pools are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

pub struct Transparent {
    allow: AllowList,
    pub destinations: Destinations,
    detect_timeout: Duration,
    connect_timeout: Duration,
    mark: Option<u32>,
    /// Listening with IP_TRANSPARENT: the local address of a connection is its destination.
    tproxy: bool,
    /// Our own listeners: a connection whose original destination is one of them is a loop.
    listeners: Vec<SocketAddr>,
}

impl Transparent {
    /// The transparent handler when `[server] mode = "transparent"`.
    pub fn for_config(
        config: &crate::config::Config,
        listeners: &[SocketAddr],
    ) -> Option<Arc<Transparent>> {
        match (&config.server.mode, &config.transparent) {
            (Mode::Transparent, Some(t)) => Some(Transparent::new(t, listeners.to_vec())),
            _ => None,
        }
    }

    pub fn new(config: &TransparentConfig, listeners: Vec<SocketAddr>) -> Arc<Transparent> {
        export_rule_series(config);
        let t = Arc::new(Transparent {
            allow: AllowList::new(&config.allow),
            destinations: Destinations::new(config.clone()),
            detect_timeout: config.detect_timeout,
            connect_timeout: config.connect_timeout,
            mark: (config.mark != 0).then_some(config.mark),
            tproxy: config.tproxy,
            listeners,
        });
        let weak = Arc::downgrade(&t);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_INTERVAL).await;
                match weak.upgrade() {
                    Some(t) => t.destinations.sweep(),
                    None => return,
                }
            }
        });
        t
    }

    /// Serves one redirected connection.
    pub async fn handle(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        stack: Stack,
        settings: &ClientSettings,
        shutdown: watch::Receiver<bool>,
    ) {
        let dst = match orig_dst::original_destination(&stream, peer, self.tproxy) {
            Ok(Some(dst)) => dst,
            Ok(None) => return deny(peer, None, DeniedReason::NotRedirected),
            Err(e) => {
                tracing::debug!(client = %peer, error = %e, "no original destination");
                return deny(peer, None, DeniedReason::NoOriginalDst);
            }
        };
        if self.is_own_listener(dst) {
            return deny(peer, Some(dst), DeniedReason::Loop);
        }
        let Some(rule) = self.allow.allows(dst) else {
            return deny(peer, Some(dst), DeniedReason::NotAllowed);
        };
        match detect::detect(&stream, self.detect_timeout).await {
            Detected::Closed => {}
            Detected::Other => {
                let idle = settings.proxy_options.tunnel_idle_timeout;
                self.passthrough(stream, dst, &rule, idle).await
            }
            Detected::Http => match self.destinations.get(dst, &rule) {
                Ok(upstream) => {
                    let destination = Destination { upstream };
                    crate::server::serve_client(
                        crate::server::ClientStream::Registered(stream),
                        peer,
                        stack,
                        settings,
                        shutdown,
                        Some(destination),
                    )
                    .await;
                }
                Err(e) => {
                    tracing::warn!(destination = %dst, error = %e, "cannot pool destination");
                    deny(peer, Some(dst), DeniedReason::TooManyDestinations);
                }
            },
        }
    }

    fn is_own_listener(&self, dst: SocketAddr) -> bool {
        self.listeners.iter().any(|l| {
            *l == dst
                || (l.port() == dst.port()
                    && (l.ip().is_unspecified() || dst.ip().is_loopback() || l.ip() == dst.ip()))
        })
    }

    /// Not HTTP: splice bytes to the original destination; nothing is pooled.
    async fn passthrough(&self, client: TcpStream, dst: SocketAddr, rule: &str, idle: Duration) {
        METRICS
            .tcp_passthrough_connections_total
            .with_label_values(&[rule])
            .inc();
        let keepalive = TcpKeepaliveConfig::default();
        let connect = crate::upstream::connect_to(dst, &keepalive, self.mark);
        let server = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(server)) => server,
            Ok(Err(e)) => {
                return tracing::debug!(destination = %dst, error = %e, "passthrough connect failed");
            }
            Err(_) => return tracing::debug!(destination = %dst, "passthrough connect timed out"),
        };
        let end = tunnel::splice(TunnelKind::Passthrough, idle, client, server).await;
        tracing::debug!(destination = %dst, ?end, "passthrough closed");
    }
}

fn deny(peer: SocketAddr, dst: Option<SocketAddr>, reason: DeniedReason) {
    METRICS
        .transparent_denied_total
        .with_label_values(&[reason.as_str()])
        .inc();
    tracing::debug!(client = %peer, destination = ?dst, reason = reason.as_str(),
        "redirected connection refused");
}

/// Each allow rule is the `upstream` label of its destinations: its series exist at 0 from the
/// start (destination servers are not known until a client is redirected to one).
fn export_rule_series(config: &TransparentConfig) {
    for rule in &config.allow {
        METRICS
            .tcp_passthrough_connections_total
            .with_label_values(&[&rule.name]);
        UpstreamMetrics::new(&rule.name);
    }
}
