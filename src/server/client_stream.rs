//! A client socket that joins the event loop only when it would block (HAProxy's speculative
//! I/O): a short request already waiting at accept is read, answered and closed with no epoll_ctl.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use socket2::{SockRef, Socket};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// A listener whose accepted sockets are not registered with the event loop yet.
pub struct Acceptor {
    listener: AsyncFd<Socket>,
}

impl Acceptor {
    #[allow(unsafe_code)]
    pub fn new(listener: TcpListener) -> io::Result<Acceptor> {
        let socket = Socket::from(listener.into_std()?);
        // SAFETY: the `Socket` owns its descriptor, which stays open and the same until the
        // `AsyncFd` that owns the `Socket` drops it.
        let listener = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Acceptor { listener })
    }

    /// The next client: non-blocking and close-on-exec from `accept4`, so no `fcntl` follows.
    pub async fn accept(&self) -> io::Result<(ClientStream, SocketAddr)> {
        loop {
            let mut ready = self.listener.readable().await?;
            let accepted = ready.try_io(|listener| {
                listener
                    .get_ref()
                    .accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            });
            let Ok(accepted) = accepted else { continue };
            let (socket, addr) = accepted?;
            let peer = addr
                .as_socket()
                .ok_or_else(|| io::Error::other("a client address that is not IP"))?;
            return Ok((ClientStream::Unregistered(socket.into()), peer));
        }
    }
}

/// A client connection: read and written directly until an operation would block, then a
/// tokio `TcpStream` (registered with the event loop) for the rest of its life.
pub enum ClientStream {
    Unregistered(std::net::TcpStream),
    Registered(TcpStream),
    /// Only while registering; an error there leaves the stream closed.
    Closed,
}

impl ClientStream {
    /// The tokio stream, registering it now (TLS, transparent mode and tunnels need one).
    pub fn into_tokio(self) -> io::Result<TcpStream> {
        match self {
            ClientStream::Unregistered(std) => TcpStream::from_std(std),
            ClientStream::Registered(stream) => Ok(stream),
            ClientStream::Closed => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// The registered stream, registering it first if need be.
    pub fn registered(&mut self) -> io::Result<&mut TcpStream> {
        if let ClientStream::Unregistered(_) = self {
            let ClientStream::Unregistered(std) = std::mem::replace(self, ClientStream::Closed)
            else {
                unreachable!("matched above")
            };
            *self = ClientStream::Registered(TcpStream::from_std(std)?);
        }
        match self {
            ClientStream::Registered(stream) => Ok(stream),
            _ => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// Reads what is there now without waiting; `WouldBlock` when nothing is.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ClientStream::Unregistered(std) => (&*std).read(buf),
            ClientStream::Registered(stream) => stream.try_read(buf),
            ClientStream::Closed => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// Runs `op` on the socket while unregistered; when it would block (or the stream is
    /// registered already), the registered stream to poll instead.
    fn speculate<T>(
        &mut self,
        op: impl FnOnce(&std::net::TcpStream) -> io::Result<T>,
    ) -> Speculated<'_, T> {
        if let ClientStream::Unregistered(std) = self {
            match op(std) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return Speculated::Done(done),
            }
        }
        match self.registered() {
            Ok(stream) => Speculated::Registered(stream),
            Err(e) => Speculated::Done(Err(e)),
        }
    }
}

enum Speculated<'a, T> {
    Done(io::Result<T>),
    /// Poll this, the event loop's stream, instead.
    Registered(&'a mut TcpStream),
}

impl AsyncRead for ClientStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // SAFETY (in the closure): `recv` writes at most `n` bytes into the unfilled part and
        // reports `n`; those bytes are then initialised, as `assume_init` requires.
        #[allow(unsafe_code)]
        let read = self.speculate(|std| {
            let n = SockRef::from(std).recv(unsafe { buf.unfilled_mut() })?;
            unsafe { buf.assume_init(n) };
            buf.advance(n);
            Ok(())
        });
        match read {
            Speculated::Done(result) => Poll::Ready(result),
            Speculated::Registered(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.speculate(|mut std| std.write(buf)) {
            Speculated::Done(result) => Poll::Ready(result),
            Speculated::Registered(stream) => Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.speculate(|mut std| std.write_vectored(bufs)) {
            Speculated::Done(result) => Poll::Ready(result),
            Speculated::Registered(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Unregistered(std) => Poll::Ready(std.shutdown(Shutdown::Write)),
            ClientStream::Registered(stream) => Pin::new(stream).poll_shutdown(cx),
            ClientStream::Closed => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn accepted_pair() -> (ClientStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = Acceptor::new(listener).unwrap();
        let (accepted, client) = tokio::join!(acceptor.accept(), TcpStream::connect(addr));
        (accepted.unwrap().0, client.unwrap())
    }

    #[tokio::test]
    async fn bytes_already_sent_are_read_without_registering() {
        let (mut server, mut client) = accepted_pair().await;
        client.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let mut got = [0u8; 64];
        let n = loop {
            match server.try_read(&mut got) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => tokio::task::yield_now().await,
                Err(e) => panic!("read failed: {e}"),
            }
        };
        assert_eq!(&got[..n], b"GET / HTTP/1.0\r\n\r\n");
        server.write_all(b"answer").await.unwrap();
        server.shutdown().await.unwrap();
        assert!(matches!(server, ClientStream::Unregistered(_)));
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"answer");
    }

    #[tokio::test]
    async fn a_read_that_would_block_registers_and_waits_for_the_bytes() {
        let (mut server, mut client) = accepted_pair().await;
        let reading = tokio::spawn(async move {
            let mut got = [0u8; 5];
            server.read_exact(&mut got).await.map(|_| (got, server))
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        client.write_all(b"hello").await.unwrap();
        let (got, server) = reading.await.unwrap().unwrap();
        assert_eq!(&got, b"hello");
        assert!(matches!(server, ClientStream::Registered(_)));
    }
}
