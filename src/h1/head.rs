//! Reads a response head with `httparse` into `http::response::Parts`: a bounded, per-exchange
//! buffer, interim 1xx responses skipped (101 returned), header values sliced without copying.
//! The connection fields the client consumes (`Keep-Alive`, and `Connection` lines naming only
//! `keep-alive` or `upgrade`) are noted, not handed up: the proxy would only strip them.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::response::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::fields::Noted;
use super::framing::framing;
use super::{Error, ErrorKind, HeadFields, ResponseBody};

/// The read buffer's first allocation: most response heads fit in one read of this.
pub(super) const HEAD_BUF_START: usize = 4 * 1024;

/// Bounds on what a backend may send in one response head (and in a trailer section).
#[derive(Debug, Clone)]
pub struct Limits {
    /// The largest head, status line to empty line, in bytes (64 KiB by default).
    pub max_head_bytes: usize,
    /// The most header fields in a head or in a trailer section (100 by default, as hyper).
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_head_bytes: 64 * 1024,
            max_headers: 100,
        }
    }
}

/// Reads the final response head to a request with `method`; the body follows on `io`.
pub async fn read_response<S: AsyncRead + Unpin>(
    mut io: S,
    method: &Method,
    limits: &Limits,
) -> Result<(Parts, Box<ResponseBody<S>>), Error> {
    let mut buf = BytesMut::with_capacity(HEAD_BUF_START.min(limits.max_head_bytes));
    let mut started = false;
    loop {
        while let Some((parts, fields)) =
            parse_head(&mut buf, limits).map_err(|k| Error::reading(k, true))?
        {
            if parts.status.is_informational() && parts.status != StatusCode::SWITCHING_PROTOCOLS {
                continue;
            }
            let framing = framing(method, parts.status, parts.version, &fields.framing)
                .map_err(|k| Error::reading(k, true))?;
            // Boxed here, once: the body (with its stream and buffer) is hundreds of bytes,
            // and the response moves up through several layers.
            let body = ResponseBody::new(io, buf, framing, method, &parts, fields, limits);
            let body = Box::new(body);
            return Ok((parts, body));
        }
        if buf.len() >= limits.max_head_bytes {
            let limit = limits.max_head_bytes;
            return Err(Error::reading(ErrorKind::HeadTooLarge { limit }, true));
        }
        if buf.len() == buf.capacity() {
            buf.reserve(buf.capacity().min(limits.max_head_bytes - buf.len()));
        }
        let n = io
            .read_buf(&mut buf)
            .await
            .map_err(|e| Error::reading(e.into(), started))?;
        if n == 0 {
            let kind = if started {
                ErrorKind::IncompleteHead
            } else {
                ErrorKind::ClosedBeforeResponse
            };
            return Err(Error::reading(kind, started));
        }
        started = true;
    }
}

/// Header fields parsed into a stack array up to this many; a larger `max_headers` uses the heap.
const STACK_FIELDS: usize = 128;

/// Room for the fields the proxy adds to a response head (`Via`, `X-Request-Id`, ...), so the
/// map does not grow when they are inserted.
const ADDED_FIELDS: usize = 4;

/// Where one field's name and value lie in the head's bytes.
#[derive(Clone, Copy)]
struct FieldSpan {
    name: (usize, usize),
    value: (usize, usize),
}

/// One complete head from the front of `buf`, which then holds what follows it, with its
/// framing and connection fields.
fn parse_head(
    buf: &mut BytesMut,
    limits: &Limits,
) -> Result<Option<(Parts, HeadFields)>, ErrorKind> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut on_stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_FIELDS];
    let mut on_heap = Vec::new();
    let fields = if limits.max_headers <= STACK_FIELDS {
        &mut on_stack[..limits.max_headers]
    } else {
        on_heap.resize_with(limits.max_headers, MaybeUninit::uninit);
        &mut on_heap[..]
    };
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        fields,
    )?;
    let len = match parsed {
        // A read may bring more than the limit when the allocator rounds the buffer up.
        httparse::Status::Complete(len) if len > limits.max_head_bytes => {
            return Err(ErrorKind::HeadTooLarge {
                limit: limits.max_head_bytes,
            });
        }
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let code = response.code.expect("a complete head has a status");
    let status = StatusCode::from_u16(code).map_err(|_| ErrorKind::BadStatus(code))?;
    let version = match response.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let base = buf.as_ptr() as usize;
    let span = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        (start, start + s.len())
    };
    let count = response.headers.len();
    let mut spans_on_stack = [const { MaybeUninit::<FieldSpan>::uninit() }; STACK_FIELDS];
    let mut spans_on_heap = Vec::new();
    let spans: &[FieldSpan] = if count <= STACK_FIELDS {
        for (field, slot) in response.headers.iter().zip(spans_on_stack.iter_mut()) {
            slot.write(FieldSpan {
                name: span(field.name.as_bytes()),
                value: span(field.value),
            });
        }
        let written = &spans_on_stack[..count];
        // SAFETY: `MaybeUninit<T>` has `T`'s layout, and the loop above wrote each of these
        // `count` slots (one per parsed field). Uninitialised, not zeroed: zeroing 128 spans
        // cost 4k instructions a response.
        #[allow(unsafe_code)]
        unsafe {
            &*(written as *const [MaybeUninit<FieldSpan>] as *const [FieldSpan])
        }
    } else {
        spans_on_heap.extend(response.headers.iter().map(|field| FieldSpan {
            name: span(field.name.as_bytes()),
            value: span(field.value),
        }));
        &spans_on_heap
    };
    // The head's bytes stay where they are: the spans index the frozen head.
    let head = buf.split_to(len).freeze();
    let (headers, fields) = header_map(&head, spans)?;
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    Ok(Some((parts, fields)))
}

/// The header map, each value a slice of the head's own bytes, and the fields the exchange
/// decides on, noted on the way.
fn header_map(head: &Bytes, spans: &[FieldSpan]) -> Result<(HeaderMap, HeadFields), ErrorKind> {
    let mut headers = HeaderMap::with_capacity(spans.len() + ADDED_FIELDS);
    let mut fields = HeadFields::default();
    for field in spans {
        let name = HeaderName::from_bytes(&head[field.name.0..field.name.1])
            .map_err(|_| ErrorKind::BadHeader("invalid field name"))?;
        let value = head.slice(field.value.0..field.value.1);
        if fields.note(&name, &value) == Noted::Consumed {
            continue;
        }
        // SAFETY: httparse accepted this value, and the bytes it accepts in a value (HTAB,
        // SP to `~`, obs-text 0x80-0xFF) are exactly those `HeaderValue` allows; hyper builds
        // its own heads' values the same way. Checking again cost 90 instructions a field.
        #[allow(unsafe_code)]
        let value = unsafe { HeaderValue::from_maybe_shared_unchecked(value) };
        headers.append(name, value);
    }
    Ok((headers, fields))
}
