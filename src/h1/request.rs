//! Writes a request: the head with the framing its body needs (Content-Length, or chunked for
//! HTTP/1.1 bodies of unknown length) and the fields this hop adds, then the body, coalescing
//! small pieces into few writes. An HTTP/1.0 request asks for keep-alive unless it says otherwise.

use std::future::poll_fn;
use std::pin::{Pin, pin};
use std::task::Poll;

use bytes::Buf;
use http::request::Parts;
use http::{HeaderMap, HeaderName, Method, Version, header};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{Error, ErrorKind};
use crate::error::BoxError;

/// Head and body bytes are gathered up to this size before a write; larger data is written
/// straight from its own buffer.
const COALESCE: usize = 16 * 1024;

/// What goes on the request line and in the header section.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a Method,
    /// Origin-form (`/path?query`), or the authority for CONNECT.
    pub target: &'a str,
    pub version: Version,
    /// Sent as they are, except Content-Length and Transfer-Encoding, which the body decides,
    /// and the names `added` carries.
    pub headers: &'a HeaderMap,
    /// Fields this hop adds, written after the request's own: no insert into `headers` (a
    /// hash and a possible growth of the map each) for what every request carries.
    pub added: &'a [AddedField<'a>],
}

/// A field the proxy adds to a request head (`X-Forwarded-For`, `Via`, `Connection`).
#[derive(Debug, Clone, Copy)]
pub struct AddedField<'a> {
    pub name: &'a HeaderName,
    pub value: &'a [u8],
    /// The request's own fields of this name are kept, joined in order before ours into one
    /// field (`X-Forwarded-For: client, proxy`); otherwise ours replaces them.
    pub appends: bool,
}

impl<'a> RequestHead<'a> {
    /// The head of `parts`: its URI's path and query (its authority for CONNECT), and `added`.
    pub fn from_parts(parts: &'a Parts, added: &'a [AddedField<'a>]) -> RequestHead<'a> {
        let target = if parts.method == Method::CONNECT {
            parts.uri.authority().map_or("", |a| a.as_str())
        } else {
            parts.uri.path_and_query().map_or("/", |pq| pq.as_str())
        };
        RequestHead {
            method: &parts.method,
            target,
            version: parts.version,
            headers: &parts.headers,
            added,
        }
    }
}

/// How the request body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFraming {
    /// No body and no framing header (a GET with no body).
    None,
    Length(u64),
    Chunked,
}

/// Writes `head` and `body` to `io` and flushes it. An HTTP/1.0 request whose body has no
/// known length is refused before any byte is written (`ErrorKind::UnframeableBody`): HTTP/1.0
/// has no chunked coding, so the caller must buffer such a body (or send it as HTTP/1.1).
pub async fn write_request<S, B>(io: &mut S, head: &RequestHead<'_>, body: B) -> Result<(), Error>
where
    S: AsyncWrite + Unpin,
    B: Body,
    B::Error: Into<BoxError>,
{
    let framing = body_framing(head, &body).map_err(|k| Error::writing(k, true))?;
    let mut writer = Writer {
        io,
        out: encode_head(head, framing),
        written: false,
    };
    if framing != BodyFraming::None {
        // Boxed: the body loop's state is most of an exchange's future, which every request
        // moves several times, and most requests (GET, HEAD) have no body.
        Box::pin(writer.body(framing, body)).await?;
    }
    writer.flush().await
}

fn body_framing<B: Body>(head: &RequestHead<'_>, body: &B) -> Result<BodyFraming, ErrorKind> {
    let carries_content = matches!(*head.method, Method::POST | Method::PUT | Method::PATCH);
    match body.size_hint().exact() {
        _ if body.is_end_stream() && !carries_content => Ok(BodyFraming::None),
        Some(0) if !carries_content => Ok(BodyFraming::None),
        Some(len) => Ok(BodyFraming::Length(len)),
        None if head.version == Version::HTTP_10 => Err(ErrorKind::UnframeableBody),
        None => Ok(BodyFraming::Chunked),
    }
}

fn encode_head(head: &RequestHead<'_>, framing: BodyFraming) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + head.headers.len() * 32);
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target.as_bytes());
    out.extend_from_slice(match head.version {
        Version::HTTP_10 => b" HTTP/1.0\r\n",
        _ => b" HTTP/1.1\r\n",
    });
    // The request's own values of appended fields, by index into `head.added`; empty (no
    // allocation) unless the client sent such a field.
    let mut prior: Vec<(usize, &[u8])> = Vec::new();
    let mut says_connection = false;
    for (name, value) in head.headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        says_connection |= name == header::CONNECTION;
        if let Some(i) = head.added.iter().position(|a| a.name == name) {
            if head.added[i].appends {
                prior.push((i, value.as_bytes()));
            }
            continue;
        }
        field(&mut out, name.as_str().as_bytes(), value.as_bytes());
    }
    for (i, added) in head.added.iter().enumerate() {
        out.extend_from_slice(added.name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        for (_, value) in prior.iter().filter(|(of, _)| *of == i) {
            out.extend_from_slice(value);
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(added.value);
        out.extend_from_slice(b"\r\n");
        says_connection |= added.name == header::CONNECTION;
    }
    // An HTTP/1.0 connection closes after each response unless the request asks to keep it.
    if head.version == Version::HTTP_10 && !says_connection {
        field(&mut out, b"connection", b"keep-alive");
    }
    match framing {
        BodyFraming::None => {}
        BodyFraming::Length(len) => field(&mut out, b"content-length", len.to_string().as_bytes()),
        BodyFraming::Chunked => field(&mut out, b"transfer-encoding", b"chunked"),
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The request bytes not yet written, and whether any were.
struct Writer<'io, S> {
    io: &'io mut S,
    out: Vec<u8>,
    written: bool,
}

impl<S: AsyncWrite + Unpin> Writer<'_, S> {
    async fn body<B>(&mut self, framing: BodyFraming, body: B) -> Result<(), Error>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        let mut body = pin!(body);
        let mut sent = 0u64;
        let mut trailers = None;
        if framing != BodyFraming::None {
            while let Some(frame) = self.next_frame(body.as_mut()).await? {
                match frame.into_data() {
                    Ok(data) => sent += self.data(framing, data).await?,
                    Err(frame) => trailers = frame.into_trailers().ok(),
                }
            }
        }
        match framing {
            BodyFraming::Chunked => self.last_chunk(trailers),
            BodyFraming::Length(declared) if sent != declared => {
                return Err(self.error(ErrorKind::BodyLengthMismatch { declared, sent }));
            }
            _ => {}
        }
        Ok(())
    }

    /// The next body frame; what is gathered goes out first if the body makes us wait.
    async fn next_frame<B>(
        &mut self,
        mut body: Pin<&mut B>,
    ) -> Result<Option<Frame<B::Data>>, Error>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        let ready = poll_fn(|cx| match body.as_mut().poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(Some(frame)),
            Poll::Pending => Poll::Ready(None),
        })
        .await;
        let frame = match ready {
            Some(frame) => frame,
            None => {
                self.flush().await?;
                body.frame().await
            }
        };
        frame
            .transpose()
            .map_err(|e| self.error(ErrorKind::RequestBody(e.into())))
    }

    /// Gathers or writes one data frame; its length.
    async fn data(&mut self, framing: BodyFraming, mut data: impl Buf) -> Result<u64, Error> {
        let len = data.remaining();
        if len == 0 {
            return Ok(0);
        }
        if framing == BodyFraming::Chunked {
            self.out
                .extend_from_slice(format!("{len:x}\r\n").as_bytes());
        }
        if self.out.len() + len > COALESCE {
            self.write_gathered().await?;
        }
        while data.has_remaining() {
            let piece = data.chunk();
            let n = piece.len();
            if self.out.len() + n <= COALESCE {
                self.out.extend_from_slice(piece);
            } else {
                self.write_all(piece).await?;
            }
            data.advance(n);
        }
        if framing == BodyFraming::Chunked {
            self.out.extend_from_slice(b"\r\n");
        }
        Ok(len as u64)
    }

    fn last_chunk(&mut self, trailers: Option<HeaderMap>) {
        self.out.extend_from_slice(b"0\r\n");
        for (name, value) in trailers.iter().flatten() {
            field(&mut self.out, name.as_str().as_bytes(), value.as_bytes());
        }
        self.out.extend_from_slice(b"\r\n");
    }

    async fn write_gathered(&mut self) -> Result<(), Error> {
        let out = std::mem::take(&mut self.out);
        self.write_all(&out).await?;
        self.out = out;
        self.out.clear();
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Error> {
        self.write_gathered().await?;
        self.io.flush().await.map_err(|e| self.error(e.into()))
    }

    /// Writes all of `bytes`, noting whether any byte left.
    async fn write_all(&mut self, mut bytes: &[u8]) -> Result<(), Error> {
        while !bytes.is_empty() {
            match self.io.write(bytes).await {
                Ok(0) => {
                    return Err(
                        self.error(std::io::Error::from(std::io::ErrorKind::WriteZero).into())
                    );
                }
                Ok(n) => {
                    self.written = true;
                    bytes = &bytes[n..];
                }
                Err(e) => return Err(self.error(e.into())),
            }
        }
        Ok(())
    }

    fn error(&self, kind: ErrorKind) -> Error {
        Error::writing(kind, !self.written)
    }
}
