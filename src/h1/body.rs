//! The response body as `http_body` frames (length-delimited, chunked, close-delimited) read
//! from the exchange's buffer and stream, and the verdict on the connection at its end.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::Method;
use http::response::Parts;
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncRead;
use tokio_util::io::poll_read_buf;

use super::chunked::{ChunkedDecoder, Event};
use super::{Error, ErrorKind, Framing, HeadFields, Limits, reuse};

/// Body reads top the buffer up by this much when it runs low.
const BODY_READ: usize = 16 * 1024;

/// May the connection carry another request once this response is read?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    Reusable,
    /// Close it, for this reason.
    Close(&'static str),
}

#[derive(Debug)]
enum Decoder {
    Length(u64),
    Chunked(ChunkedDecoder),
    CloseDelimited,
    Done,
    Failed,
}

/// A response body on its connection; [`ResponseBody::finish`] gives the connection back.
#[derive(Debug)]
pub struct ResponseBody<S> {
    io: S,
    buf: BytesMut,
    decoder: Decoder,
    reuse: Reuse,
    /// Why the response's own head rules out reuse (`Connection: close`, HTTP/1.0 without
    /// keep-alive, ...), apart from its framing.
    head_says: Option<&'static str>,
    /// The head's framing, `Connection` and `Keep-Alive` fields, read once.
    fields: HeadFields,
}

impl<S> ResponseBody<S> {
    pub(super) fn new(
        io: S,
        buf: BytesMut,
        framing: Framing,
        method: &Method,
        head: &Parts,
        fields: HeadFields,
        limits: &Limits,
    ) -> ResponseBody<S> {
        let headers_say = reuse::not_reusable_reason(
            method,
            head.status,
            head.version,
            &fields.framing,
            fields.connection,
        );
        let (decoder, framing_says) = match framing {
            Framing::Empty => (Decoder::Done, None),
            Framing::Tunnel => (Decoder::Done, Some("the connection became a tunnel")),
            Framing::Length(len) => (Decoder::Length(len), None),
            Framing::Chunked => {
                let chunked = ChunkedDecoder::new(limits.max_headers, limits.max_head_bytes);
                (Decoder::Chunked(chunked), None)
            }
            Framing::CloseDelimited => (Decoder::CloseDelimited, Some("the body ends at close")),
        };
        let reuse = match framing_says.or(headers_say) {
            Some(why) => Reuse::Close(why),
            None => Reuse::Reusable,
        };
        let mut body = ResponseBody {
            io,
            buf,
            decoder,
            reuse,
            head_says: headers_say,
            fields,
        };
        if matches!(body.decoder, Decoder::Done | Decoder::Length(0)) {
            body.end();
        }
        body
    }

    /// Why the response head itself rules out reusing the connection, if it does.
    pub fn not_reusable_by_head(&self) -> Option<&'static str> {
        self.head_says
    }

    /// What the response head's framing, `Connection` and `Keep-Alive` fields say.
    pub fn fields(&self) -> &HeadFields {
        &self.fields
    }

    /// The connection and whether it may carry another request. A body not read to its end,
    /// or one that failed, leaves the connection unusable. The read buffer is freed here.
    pub fn finish(self) -> (S, Reuse) {
        let reuse = match self.decoder {
            Decoder::Done => self.reuse,
            Decoder::Failed => Reuse::Close("the response failed"),
            _ => Reuse::Close("the body was not read to its end"),
        };
        (self.io, reuse)
    }

    /// The connection of a 101 or a CONNECT tunnel, with the bytes already read past the head.
    pub fn into_upgraded(self) -> (S, Bytes) {
        (self.io, self.buf.freeze())
    }

    fn end(&mut self) {
        self.decoder = Decoder::Done;
        if !self.buf.is_empty() && self.reuse == Reuse::Reusable {
            self.reuse = Reuse::Close("bytes arrived past the end of the response");
        }
    }

    fn fail(&mut self, kind: ErrorKind) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.decoder = Decoder::Failed;
        Poll::Ready(Some(Err(Error::reading(kind, true))))
    }

    fn take_length(&mut self) -> Bytes {
        let Decoder::Length(remaining) = &mut self.decoder else {
            unreachable!("only for a length-delimited body")
        };
        let n = usize::try_from(*remaining).map_or(self.buf.len(), |r| r.min(self.buf.len()));
        *remaining -= n as u64;
        let data = self.buf.split_to(n).freeze();
        if *remaining == 0 {
            self.end();
        }
        data
    }
}

impl<S: AsyncRead + Unpin> ResponseBody<S> {
    /// Reads more of the body into the buffer: `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, ErrorKind>> {
        if self.buf.capacity() - self.buf.len() < BODY_READ / 4 {
            self.buf.reserve(BODY_READ);
        }
        Poll::Ready(
            ready!(poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)).map_err(ErrorKind::Io),
        )
    }

    fn poll_chunked(&mut self) -> Result<Option<Option<Frame<Bytes>>>, ErrorKind> {
        let Decoder::Chunked(chunked) = &mut self.decoder else {
            unreachable!("only for a chunked body")
        };
        match chunked.decode(&mut self.buf)? {
            None => Ok(None),
            Some(Event::Data(data)) => Ok(Some(Some(Frame::data(data)))),
            Some(Event::End(trailers)) => {
                self.end();
                Ok(Some(trailers.map(Frame::trailers)))
            }
        }
    }
}

impl<S: AsyncRead + Unpin> Body for ResponseBody<S> {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        loop {
            let buffered = !this.buf.is_empty();
            match &this.decoder {
                Decoder::Done | Decoder::Failed => return Poll::Ready(None),
                Decoder::Length(_) if buffered => {
                    return Poll::Ready(Some(Ok(Frame::data(this.take_length()))));
                }
                Decoder::CloseDelimited if buffered => {
                    let data = this.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decoder::Chunked(_) if buffered => match this.poll_chunked() {
                    Ok(Some(frame)) => return Poll::Ready(frame.map(Ok)),
                    Ok(None) => {}
                    Err(kind) => return this.fail(kind),
                },
                _ => {}
            }
            match ready!(this.poll_fill(cx)) {
                Err(kind) => return this.fail(kind),
                Ok(0) if matches!(this.decoder, Decoder::CloseDelimited) => {
                    this.end();
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(ErrorKind::IncompleteBody),
                Ok(_) => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.decoder, Decoder::Done | Decoder::Failed)
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder {
            Decoder::Length(remaining) => SizeHint::with_exact(remaining),
            Decoder::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
