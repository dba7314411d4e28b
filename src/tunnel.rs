//! Byte tunnels: HTTP upgrades (101), CONNECT, and raw TCP passthrough. Once both sides are
//! plain byte streams, bytes flow both ways until either side closes or the tunnel idles out.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, copy_bidirectional};
use tokio::time::Instant;

use crate::metrics::{METRICS, TunnelEnd, TunnelKind};

/// Copies bytes both ways until both sides closed, either failed, or no byte moved for
/// `idle_timeout`; then both sides are closed (dropped) and the end is counted.
pub async fn splice<A, B>(
    kind: TunnelKind,
    idle_timeout: Duration,
    client: A,
    server: B,
) -> TunnelEnd
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new();
    let mut client = Watched::new(client, Side::Client, &activity);
    let mut server = Watched::new(server, Side::Upstream, &activity);
    let end = tokio::select! {
        copied = copy_bidirectional(&mut client, &mut server) => match copied {
            // Ends Ok only once both sides reached EOF, so one of them was first.
            Ok(_) => activity.first_closed().unwrap_or(TunnelEnd::ClientClosed),
            Err(_) => TunnelEnd::Error,
        },
        () = activity.idle_for(idle_timeout) => TunnelEnd::IdleTimeout,
    };
    METRICS
        .tunnels_closed_total
        .with_label_values(&[kind.as_str(), end.as_str()])
        .inc();
    end
}

#[derive(Debug, Clone, Copy)]
enum Side {
    Client = 1,
    Upstream = 2,
}

/// When a byte last arrived from either side, and which side reached EOF first.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    first_eof: AtomicU8,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            first_eof: AtomicU8::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn eof(&self, side: Side) {
        let _ =
            self.first_eof
                .compare_exchange(0, side as u8, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn first_closed(&self) -> Option<TunnelEnd> {
        match self.first_eof.load(Ordering::Relaxed) {
            1 => Some(TunnelEnd::ClientClosed),
            2 => Some(TunnelEnd::UpstreamClosed),
            _ => None,
        }
    }

    /// Resolves once no byte arrived for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// One side of a tunnel, reporting what it reads to the tunnel's `Activity`. Every byte written
/// to one side was read from the other, so reads alone tell whether the tunnel is idle.
struct Watched<'a, S> {
    inner: S,
    side: Side,
    activity: &'a Activity,
}

impl<'a, S> Watched<'a, S> {
    fn new(inner: S, side: Side, activity: &'a Activity) -> Watched<'a, S> {
        Watched {
            inner,
            side,
            activity,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            if buf.filled().len() > before {
                self.activity.touch();
            } else if buf.remaining() > 0 {
                self.activity.eof(self.side);
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, duplex};

    const IDLE: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn silent_tunnel_ends_as_idle_timeout() {
        let (client, _client_peer) = duplex(64);
        let (server, _server_peer) = duplex(64);
        let end = splice(
            TunnelKind::Upgrade,
            Duration::from_millis(50),
            client,
            server,
        )
        .await;
        assert_eq!(end, TunnelEnd::IdleTimeout);
    }

    #[tokio::test]
    async fn client_closing_first_is_client_closed() {
        let (client, client_peer) = duplex(64);
        let (server, mut server_peer) = duplex(64);
        let tunnel = tokio::spawn(splice(TunnelKind::Passthrough, IDLE, client, server));
        drop(client_peer);
        // The backend sees the EOF passed on, then closes too.
        let mut rest = Vec::new();
        server_peer.read_to_end(&mut rest).await.unwrap();
        drop(server_peer);
        assert_eq!(tunnel.await.unwrap(), TunnelEnd::ClientClosed);
    }

    #[tokio::test]
    async fn upstream_closing_first_is_upstream_closed() {
        let (client, mut client_peer) = duplex(64);
        let (server, server_peer) = duplex(64);
        let tunnel = tokio::spawn(splice(TunnelKind::Passthrough, IDLE, client, server));
        drop(server_peer);
        let mut rest = Vec::new();
        client_peer.read_to_end(&mut rest).await.unwrap();
        drop(client_peer);
        assert_eq!(tunnel.await.unwrap(), TunnelEnd::UpstreamClosed);
    }
}
