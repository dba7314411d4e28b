//! The differential oracle for longhaul's h1 client: the same response bytes, in the same
//! pieces, go to hyper's client and to `longhaul::h1`, and the two outcomes must agree.
//!
//! Shared by tests/h1_differential.rs (proptest) and fuzz/fuzz_targets/h1_response.rs
//! (`#[path]`-included), so both check one definition of "agree". Time is paused: a read that
//! would wait is seen when the runtime goes idle, never by a wall-clock sleep.

use std::collections::VecDeque;
use std::io;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Version};
use http_body::Body;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use longhaul::h1::{self, ErrorKind, Limits, RequestHead, Reuse};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long a read may wait before the backend is taken to have closed: paused time, so this
/// only says "once nothing else can run".
const STALL: Duration = Duration::from_secs(1);

/// A response head as a client sees it.
#[derive(Debug, PartialEq)]
pub struct Head {
    pub status: u16,
    pub version: Version,
    pub headers: HeaderMap,
    /// The body's exact length when the head says it: the framing, where it is observable.
    pub exact_len: Option<u64>,
}

/// A body read to its end, and whether the connection could carry another request.
#[derive(Debug, PartialEq)]
pub struct Tail {
    pub data: Vec<u8>,
    pub trailers: Option<HeaderMap>,
    pub reusable: bool,
}

#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// No usable head; for longhaul, whether it refused the framing as ambiguous.
    HeadError {
        ambiguous: bool,
    },
    BodyError(Head),
    Complete(Head, Tail),
}

/// `Ok` when the two clients agree, or differ only by a named exception; else why not.
pub fn agree(hyper: &Outcome, ours: &Outcome) -> Result<(), String> {
    match (hyper, ours) {
        // EXCEPTION (deliberately stricter than hyper and RFC 9112 §6.3 item 4): longhaul
        // refuses what `middleware::framing::ambiguity` flags (Transfer-Encoding beside
        // Content-Length, repeated or decorated Transfer-Encoding, a coding other than
        // `chunked`), as it does for requests; hyper reads it as chunked or to close.
        (Outcome::BodyError(_) | Outcome::Complete(..), Outcome::HeadError { ambiguous: true }) => {
            Ok(())
        }
        (Outcome::HeadError { .. }, Outcome::HeadError { ambiguous: false }) => Ok(()),
        (a, b) if a == b => Ok(()),
        _ => Err(format!("hyper: {hyper:#?}\nlonghaul: {ours:#?}")),
    }
}

/// Both outcomes for `pieces` answering a `method` request to `/`.
pub fn run(method: &Method, pieces: &[Vec<u8>]) -> (Outcome, Outcome) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let hyper = hyper_outcome(method, pieces).await;
        let ours = our_outcome(method, pieces).await;
        (hyper, ours)
    })
}

async fn hyper_outcome(method: &Method, pieces: &[Vec<u8>]) -> Outcome {
    let (io, backend) = Script::new(pieces);
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .expect("a handshake does no I/O");
    tokio::spawn(conn);
    let request = Request::builder()
        .method(method.clone())
        .uri("/")
        .header("host", "backend")
        .body(Empty::<Bytes>::new())
        .expect("a request");
    let response = match backend.until_stalled(send.send_request(request)).await {
        Ok(response) => response,
        Err(_) => return Outcome::HeadError { ambiguous: false },
    };
    let (parts, mut body) = response.into_parts();
    let head = Head {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: without_consumed_fields(parts.headers),
        exact_len: body.size_hint().exact(),
    };
    let Ok((data, trailers)) = read_to_end(&backend, &mut body).await else {
        return Outcome::BodyError(head);
    };
    // Ready for another request once everything has settled, with the backend still open?
    let reusable = matches!(tokio::time::timeout(STALL, send.ready()).await, Ok(Ok(())));
    Outcome::Complete(
        head,
        Tail {
            data,
            trailers,
            reusable,
        },
    )
}

/// EXCEPTION: longhaul's client does not hand up the connection fields it consumes
/// (`h1::fields::Noted::Consumed`): `Keep-Alive`, and `Connection` lines that name nothing but
/// `keep-alive` or `upgrade`. hyper's heads are compared without them.
fn without_consumed_fields(headers: HeaderMap) -> HeaderMap {
    let consumed = |name: &http::HeaderName, value: &http::HeaderValue| {
        name == "keep-alive"
            || name == http::header::CONNECTION
                && value
                    .as_bytes()
                    .split(|&b| b == b',')
                    .map(<[u8]>::trim_ascii)
                    .all(|t| {
                        t.is_empty()
                            || t.eq_ignore_ascii_case(b"keep-alive")
                            || t.eq_ignore_ascii_case(b"upgrade")
                    })
    };
    let mut kept = HeaderMap::with_capacity(headers.len());
    let mut current = None;
    for (name, value) in headers {
        if let Some(name) = name {
            current = Some(name);
        }
        let name = current
            .clone()
            .expect("a map's first value comes with its name");
        if !consumed(&name, &value) {
            kept.append(name, value);
        }
    }
    kept
}

async fn our_outcome(method: &Method, pieces: &[Vec<u8>]) -> Outcome {
    let (mut io, backend) = Script::new(pieces);
    let (parts, ()) = Request::builder()
        .method(method.clone())
        .uri("/")
        .header("host", "backend")
        .body(())
        .expect("a request")
        .into_parts();
    h1::write_request(
        &mut io,
        &RequestHead::from_parts(&parts, &[]),
        Empty::<Bytes>::new(),
    )
    .await
    .expect("the script takes every write");
    let limits = Limits::default();
    let (parts, mut body) = match backend
        .until_stalled(h1::read_response(io, method, &limits))
        .await
    {
        Ok(response) => response,
        Err(e) => {
            let ambiguous = matches!(e.kind(), ErrorKind::AmbiguousFraming(_));
            return Outcome::HeadError { ambiguous };
        }
    };
    let head = Head {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: parts.headers,
        exact_len: body.size_hint().exact(),
    };
    let Ok((data, trailers)) = read_to_end(&backend, &mut body).await else {
        return Outcome::BodyError(head);
    };
    let (mut io, reuse) = body.finish();
    // What the lease's idle watcher adds: bytes or a close already waiting on the socket.
    let reusable = reuse == Reuse::Reusable && quiet(&mut io);
    Outcome::Complete(
        head,
        Tail {
            data,
            trailers,
            reusable,
        },
    )
}

type Collected = (Vec<u8>, Option<HeaderMap>);

async fn read_to_end<B>(backend: &Backend, body: &mut B) -> Result<Collected, B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(frame) = backend.until_stalled(body.frame()).await {
        match frame?.into_data() {
            Ok(bytes) => data.extend_from_slice(&bytes),
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    Ok((data, trailers))
}

/// Nothing to read and no close: one poll that does not wait.
fn quiet<S: AsyncRead + Unpin>(io: &mut S) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(Waker::noop());
    Pin::new(io).poll_read(&mut cx, &mut buf).is_pending()
}

#[derive(Default)]
struct Wire {
    pieces: VecDeque<Vec<u8>>,
    /// The backend answers once the request's end (the empty line) was written.
    asked: bool,
    written: Vec<u8>,
    closed: bool,
    reader: Option<Waker>,
}

/// The backend's end of a scripted connection: it closes when the client waits for more.
#[derive(Clone)]
struct Backend(Arc<Mutex<Wire>>);

impl Backend {
    fn close(&self) {
        let mut wire = self.0.lock().expect("wire lock");
        wire.closed = true;
        if let Some(reader) = wire.reader.take() {
            reader.wake();
        }
    }

    /// Runs `fut`; if it waits with every piece delivered, the backend closes, once.
    async fn until_stalled<F: Future>(&self, fut: F) -> F::Output {
        let mut fut = pin!(fut);
        if let Ok(out) = tokio::time::timeout(STALL, fut.as_mut()).await {
            return out;
        }
        self.close();
        tokio::time::timeout(STALL, fut)
            .await
            .expect("a client hangs after the backend closed")
    }
}

/// The client's end: once the request is written, each read returns at most one scripted
/// piece; writes are taken whole.
struct Script(Backend);

impl Script {
    fn new(pieces: &[Vec<u8>]) -> (Script, Backend) {
        let wire = Wire {
            pieces: pieces.iter().filter(|p| !p.is_empty()).cloned().collect(),
            ..Wire::default()
        };
        let backend = Backend(Arc::new(Mutex::new(wire)));
        (Script(backend.clone()), backend)
    }
}

impl AsyncRead for Script {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut wire = self.0.0.lock().expect("wire lock");
        if !wire.asked && !wire.closed {
            wire.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let Some(mut piece) = wire.pieces.pop_front() else {
            if wire.closed {
                return Poll::Ready(Ok(()));
            }
            wire.reader = Some(cx.waker().clone());
            return Poll::Pending;
        };
        let n = piece.len().min(buf.remaining());
        buf.put_slice(&piece[..n]);
        if n < piece.len() {
            wire.pieces.push_front(piece.split_off(n));
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Script {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut wire = self.0.0.lock().expect("wire lock");
        wire.written.extend_from_slice(buf);
        if !wire.asked && wire.written.ends_with(b"\r\n\r\n") {
            wire.asked = true;
            if let Some(reader) = wire.reader.take() {
                reader.wake();
            }
        }
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
