//! A new client connection's first bytes (decrypted, on a TLS listener), read before hyper's
//! per-connection buffers (8 KiB read, 8 KiB write) exist, so a connection that has sent nothing
//! costs only its socket, its task (and its TLS session).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::ClientStream;

/// At most this much is read before hyper takes over; hyper reads the rest itself.
const FIRST_READ: usize = 2048;

/// Waits up to `limit` for the client's first bytes and reads them, with the one read hyper
/// would have made anyway. `None`: the client sent nothing in time. An EOF or a read error
/// gives empty bytes, and hyper meets the same end on its own first read.
pub async fn first_bytes(stream: &mut ClientStream, limit: Duration) -> Option<Bytes> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        // Tried before any wait: a short client's request is usually there at accept, and
        // the socket then never joins the event loop (no epoll_ctl). A read that would block
        // clears the readiness, so the wait that follows is real.
        match read_now(stream) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Ok(bytes) => return Some(bytes),
            Err(_) => return Some(Bytes::new()),
        }
        let registered = stream.registered().ok()?;
        tokio::time::timeout_at(deadline, registered.readable())
            .await
            .ok()?
            .ok()?;
    }
}

/// The same for a TLS connection: waits up to `limit` for the client's first decrypted bytes. Each
/// attempt reads into a stack buffer inside one poll, so nothing is held while the client is quiet.
pub async fn first_tls_bytes(tls: &mut TlsStream<TcpStream>, limit: Duration) -> Option<Bytes> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        // rustls may hold plaintext already (a request sent with the handshake's last flight).
        if let Some(first) = std::future::poll_fn(|cx| Poll::Ready(poll_read_now(tls, cx))).await {
            return Some(first);
        }
        tokio::time::timeout_at(deadline, tls.get_ref().0.readable())
            .await
            .ok()?
            .ok()?;
    }
}

/// One read attempt: Some(bytes) when it completed (empty at EOF or on an error, as for TCP),
/// None when nothing is ready (the socket's readiness is cleared, so waiting on it is real).
fn poll_read_now<S: AsyncRead + Unpin>(stream: &mut S, cx: &mut Context<'_>) -> Option<Bytes> {
    let mut buf = [0u8; FIRST_READ];
    let mut read = ReadBuf::new(&mut buf);
    match Pin::new(stream).poll_read(cx, &mut read) {
        Poll::Ready(Ok(())) => Some(Bytes::copy_from_slice(read.filled())),
        Poll::Ready(Err(_)) => Some(Bytes::new()),
        Poll::Pending => None,
    }
}

/// One non-blocking read into a stack buffer, so no buffer lives in the connection's future.
fn read_now(stream: &ClientStream) -> io::Result<Bytes> {
    let mut buf = [0u8; FIRST_READ];
    let n = stream.try_read(&mut buf)?;
    Ok(Bytes::copy_from_slice(&buf[..n]))
}

/// A stream whose first reads return bytes already read from it.
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Bytes, inner: S) -> Prefixed<S> {
        Prefixed { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn a_silent_client_gives_nothing_within_the_limit() {
        let (_client, server) = pair().await;
        let mut server = ClientStream::Registered(server);
        assert_eq!(
            first_bytes(&mut server, Duration::from_millis(50)).await,
            None
        );
    }

    #[tokio::test]
    async fn the_first_bytes_are_read_once_they_arrive() {
        let (mut client, server) = pair().await;
        let mut server = ClientStream::Registered(server);
        let reader = tokio::spawn(async move {
            let got = first_bytes(&mut server, Duration::from_secs(5)).await;
            (got, server)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.write_all(b"GET / HTTP/1.0\r\n").await.unwrap();
        let (got, _server) = reader.await.unwrap();
        assert_eq!(got.as_deref(), Some(&b"GET / HTTP/1.0\r\n"[..]));
    }

    #[tokio::test]
    async fn a_client_that_closed_gives_empty_bytes() {
        let (client, server) = pair().await;
        drop(client);
        let mut server = ClientStream::Registered(server);
        let got = first_bytes(&mut server, Duration::from_secs(5)).await;
        assert_eq!(got, Some(Bytes::new()));
    }

    #[tokio::test]
    async fn prefixed_reads_the_prefix_then_the_stream() {
        let (mut client, server) = pair().await;
        client.write_all(b" world").await.unwrap();
        drop(client);
        let mut stream = Prefixed::new(Bytes::from_static(b"hello"), server);
        let mut all = Vec::new();
        stream.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"hello world");
    }
}
