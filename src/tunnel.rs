//! Byte tunnels: HTTP upgrades (101), CONNECT, and raw TCP passthrough. Once both sides are
//! plain byte streams, bytes flow both ways until either side closes.

use tokio::io::{AsyncRead, AsyncWrite, copy_bidirectional};

use crate::metrics::METRICS;

/// Which kind of tunnel, for the `kind` label of `longhaul_tunnels_total`.
#[derive(Debug, Clone, Copy)]
pub enum TunnelKind {
    Upgrade,
    Connect,
}

impl TunnelKind {
    fn as_str(self) -> &'static str {
        match self {
            TunnelKind::Upgrade => "upgrade",
            TunnelKind::Connect => "connect",
        }
    }
}

/// Copies bytes both ways until either side closes; returns (client->server, server->client).
pub async fn splice<A, B>(mut client: A, mut server: B) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    copy_bidirectional(&mut client, &mut server).await
}

/// Counts a tunnel that opened.
pub fn count(upstream: &str, kind: TunnelKind) {
    METRICS
        .tunnels_total
        .with_label_values(&[upstream, kind.as_str()])
        .inc();
}
