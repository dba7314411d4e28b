//! A new client connection's first request head (decrypted, on a TLS listener), read before
//! hyper's per-connection buffers (8 KiB read, 8 KiB write) exist, so a connection that has sent
//! nothing, or only part of a head, costs only its socket, its task, those bytes (and its TLS
//! session).

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::ClientStream;

/// One read takes at most this much; a head that needs more is read on until it is complete.
const FIRST_READ: usize = 2048;

/// Fields an incomplete-looking head is parsed with to tell whether it is complete; a head
/// with more goes to hyper at once (it applies the real `max_request_headers`).
const PARSED_FIELDS: usize = 128;

/// Waits up to `limit` for the client's first request head and reads it, usually with the one
/// read hyper would have made anyway. A head that arrives in pieces (a slow client) is gathered
/// here, in a buffer its size, not in hyper's 8 KiB ones, until it is complete or reaches
/// `max_bytes` (hyper then answers 431). `None`: no complete head in time (hyper would close
/// without an answer too). An EOF or a read error gives what came before it, and hyper meets
/// the same end on its own first read.
pub async fn first_head(
    stream: &mut ClientStream,
    limit: Duration,
    max_bytes: usize,
) -> Option<Bytes> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut head = HeadSoFar::default();
    loop {
        // Tried before any wait: a short client's request is usually there at accept, and
        // the socket then never joins the event loop (no epoll_ctl). A read that would block
        // clears the readiness, so the wait that follows is real.
        match read_now(stream, &mut head) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Ok(()) if !head.ready_for_hyper(max_bytes) => {}
            Ok(()) | Err(_) => return Some(head.bytes.freeze()),
        }
        let registered = stream.registered().ok()?;
        tokio::time::timeout_at(deadline, registered.readable())
            .await
            .ok()?
            .ok()?;
    }
}

/// The same for a TLS connection: its first decrypted request head. Each attempt reads into a
/// stack buffer inside one poll, so nothing but the head's bytes is held while the client is
/// quiet.
pub async fn first_tls_head(
    tls: &mut TlsStream<TcpStream>,
    limit: Duration,
    max_bytes: usize,
) -> Option<Bytes> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut head = HeadSoFar::default();
    loop {
        // rustls may hold plaintext already (a request sent with the handshake's last flight).
        let read = std::future::poll_fn(|cx| Poll::Ready(poll_read_now(tls, cx, &mut head))).await;
        match read {
            None => {}
            Some(Ok(())) if !head.ready_for_hyper(max_bytes) => continue,
            Some(_) => return Some(head.bytes.freeze()),
        }
        tokio::time::timeout_at(deadline, tls.get_ref().0.readable())
            .await
            .ok()?
            .ok()?;
    }
}

/// The first head's bytes as they arrive.
#[derive(Default)]
struct HeadSoFar {
    bytes: BytesMut,
    /// The last read brought nothing: the client closed.
    ended: bool,
}

impl HeadSoFar {
    fn add(&mut self, read: &[u8]) {
        self.ended = read.is_empty();
        self.bytes.extend_from_slice(read);
    }

    /// Whether hyper should take over: the client closed, the bytes reached `max_bytes`, or
    /// the head is complete (or broken: hyper answers that). A head that ends the bytes is
    /// complete without parsing, the common case; otherwise `httparse` says.
    fn ready_for_hyper(&self, max_bytes: usize) -> bool {
        let bytes = &self.bytes[..];
        if self.ended || bytes.len() >= max_bytes {
            return true;
        }
        if bytes.ends_with(b"\r\n\r\n") || bytes.ends_with(b"\n\n") {
            return true;
        }
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; PARSED_FIELDS];
        let mut request = httparse::Request::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut request,
            bytes,
            &mut fields,
        );
        !matches!(parsed, Ok(httparse::Status::Partial))
    }
}

/// One read attempt into `head`: Some(Ok) when it completed (nothing added at EOF), Some(Err)
/// on an error, None when nothing is ready (the socket's readiness is cleared, so waiting on
/// it is real).
fn poll_read_now<S: AsyncRead + Unpin>(
    stream: &mut S,
    cx: &mut Context<'_>,
    head: &mut HeadSoFar,
) -> Option<io::Result<()>> {
    let mut buf = [0u8; FIRST_READ];
    let mut read = ReadBuf::new(&mut buf);
    match Pin::new(stream).poll_read(cx, &mut read) {
        Poll::Ready(Ok(())) => {
            head.add(read.filled());
            Some(Ok(()))
        }
        Poll::Ready(Err(e)) => Some(Err(e)),
        Poll::Pending => None,
    }
}

/// One non-blocking read into `head`, through a stack buffer, so no buffer lives in the
/// connection's future.
fn read_now(stream: &ClientStream, head: &mut HeadSoFar) -> io::Result<()> {
    let mut buf = [0u8; FIRST_READ];
    let n = stream.try_read(&mut buf)?;
    head.add(&buf[..n]);
    Ok(())
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

    const MAX: usize = 8 * 1024;

    /// `first_head` on the server side of a new connection, in its own task.
    fn read_first_head(
        server: TcpStream,
        limit: Duration,
    ) -> tokio::task::JoinHandle<Option<Bytes>> {
        tokio::spawn(async move {
            let mut server = ClientStream::Registered(server);
            first_head(&mut server, limit, MAX).await
        })
    }

    #[tokio::test]
    async fn a_silent_client_gives_nothing_within_the_limit() {
        let (_client, server) = pair().await;
        let got = read_first_head(server, Duration::from_millis(50)).await;
        assert_eq!(got.unwrap(), None);
    }

    #[tokio::test]
    async fn a_head_sent_at_once_is_read_at_once() {
        let (mut client, server) = pair().await;
        let reader = read_first_head(server, Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let got = reader.await.unwrap();
        assert_eq!(got.as_deref(), Some(&b"GET / HTTP/1.0\r\n\r\n"[..]));
    }

    #[tokio::test]
    async fn a_head_sent_in_pieces_is_gathered_until_it_is_complete() {
        let (mut client, server) = pair().await;
        let reader = read_first_head(server, Duration::from_secs(5));
        for piece in [&b"GET / HTTP/1.1\r\n"[..], b"Host: a\r\n", b"\r\n"] {
            client.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let got = reader.await.unwrap();
        assert_eq!(
            got.as_deref(),
            Some(&b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..])
        );
    }

    #[tokio::test]
    async fn a_head_and_part_of_a_body_in_one_read_go_to_hyper_as_they_are() {
        let (mut client, server) = pair().await;
        let sent = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\npart";
        client.write_all(sent).await.unwrap();
        let got = read_first_head(server, Duration::from_secs(5)).await;
        assert_eq!(got.unwrap().as_deref(), Some(&sent[..]));
    }

    #[tokio::test]
    async fn a_partial_head_past_the_limit_gives_nothing() {
        let (mut client, server) = pair().await;
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
            .await
            .unwrap();
        let got = read_first_head(server, Duration::from_millis(100)).await;
        assert_eq!(got.unwrap(), None);
    }

    #[tokio::test]
    async fn a_partial_head_reaching_max_bytes_goes_to_hyper_for_its_431() {
        let (mut client, server) = pair().await;
        let mut long = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
        long.resize(MAX + 100, b'a');
        let reader = read_first_head(server, Duration::from_secs(5));
        client.write_all(&long).await.unwrap();
        let got = reader.await.unwrap().expect("handed over before the limit");
        assert!(got.len() >= MAX, "{} bytes", got.len());
    }

    #[tokio::test]
    async fn a_client_that_closed_mid_head_gives_what_it_sent() {
        let (mut client, server) = pair().await;
        client.write_all(b"GET / HT").await.unwrap();
        drop(client);
        let got = read_first_head(server, Duration::from_secs(5)).await;
        assert_eq!(got.unwrap().as_deref(), Some(&b"GET / HT"[..]));
    }

    #[tokio::test]
    async fn a_client_that_closed_gives_empty_bytes() {
        let (client, server) = pair().await;
        drop(client);
        let got = read_first_head(server, Duration::from_secs(5)).await;
        assert_eq!(got.unwrap(), Some(Bytes::new()));
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
