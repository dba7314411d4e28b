//! Byte tunnels: HTTP upgrades (101), CONNECT, and raw TCP passthrough. Once both sides are
//! plain byte streams, bytes flow both ways until either side closes.

use tokio::io::{AsyncRead, AsyncWrite, copy_bidirectional};

/// Copies bytes both ways until either side closes; returns (client->server, server->client).
pub async fn splice<A, B>(mut client: A, mut server: B) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    copy_bidirectional(&mut client, &mut server).await
}
