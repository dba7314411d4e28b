//! Exchange-level tests of the h1 codec on scripted I/O: every framing fed in pieces of every
//! size down to one byte, errors with their retry facts, and the reuse verdict at the body's end.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Version};
use http_body::Body;
use http_body_util::{BodyExt, Empty, Full};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::*;

/// A stream that returns its bytes in the given pieces, then end of file, and records writes.
#[derive(Debug, Default)]
struct Scripted {
    pieces: VecDeque<Vec<u8>>,
    written: Vec<u8>,
    writes: usize,
    write_error_after: Option<usize>,
}

impl Scripted {
    fn in_pieces(wire: &[u8], piece: usize) -> Scripted {
        let pieces = wire.chunks(piece.max(1)).map(<[u8]>::to_vec).collect();
        Scripted {
            pieces,
            ..Scripted::default()
        }
    }
}

impl AsyncRead for Scripted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(mut piece) = self.pieces.pop_front() {
            let n = piece.len().min(buf.remaining());
            buf.put_slice(&piece[..n]);
            if n < piece.len() {
                self.pieces.push_front(piece.split_off(n));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Scripted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.writes += 1;
        if let Some(limit) = self.write_error_after {
            if self.written.len() >= limit {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            let n = buf.len().min(limit - self.written.len());
            self.written.extend_from_slice(&buf[..n]);
            return Poll::Ready(Ok(n));
        }
        self.written.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What one exchange's response came to.
#[derive(Debug, PartialEq)]
struct Outcome {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: Vec<u8>,
    trailers: Option<HeaderMap>,
    reuse: Reuse,
}

async fn read_in_pieces(method: &Method, wire: &[u8], piece: usize) -> Result<Outcome, Error> {
    let io = Scripted::in_pieces(wire, piece);
    let (head, mut body) = read_response(io, method, &Limits::default()).await?;
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        match frame?.into_data() {
            Ok(d) => data.extend_from_slice(&d),
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    let (_, reuse) = body.finish();
    Ok(Outcome {
        status: head.status,
        version: head.version,
        headers: head.headers,
        body: data,
        trailers,
        reuse,
    })
}

/// Reads `wire` whole and in pieces of 1 to 16 bytes; all must agree. The whole's outcome.
async fn exchange(method: Method, wire: &[u8]) -> Result<Outcome, Error> {
    let whole = read_in_pieces(&method, wire, wire.len()).await;
    for piece in 1..=16 {
        let pieces = read_in_pieces(&method, wire, piece).await;
        assert_eq!(
            format!("{pieces:?}"),
            format!("{whole:?}"),
            "pieces of {piece} bytes"
        );
    }
    whole
}

async fn get(wire: &[u8]) -> Result<Outcome, Error> {
    exchange(Method::GET, wire).await
}

#[tokio::test]
async fn a_length_delimited_body_is_read_and_the_connection_reused() {
    let out = get(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello")
        .await
        .unwrap();
    assert_eq!(out.status, StatusCode::OK);
    assert_eq!(out.headers["x-a"], "1");
    assert_eq!(out.body, b"hello");
    assert_eq!(out.reuse, Reuse::Reusable);
}

#[tokio::test]
async fn a_chunked_body_with_trailers_is_read_and_the_connection_reused() {
    let wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 9\r\n\r\n";
    let out = get(wire).await.unwrap();
    assert_eq!(out.body, b"abcde");
    assert_eq!(out.trailers.unwrap()["x-t"], "9");
    assert_eq!(out.reuse, Reuse::Reusable);
}

#[tokio::test]
async fn a_close_delimited_body_runs_to_the_end_of_the_stream_and_closes() {
    let out = get(b"HTTP/1.1 200 OK\r\n\r\nall of this").await.unwrap();
    assert_eq!(out.body, b"all of this");
    assert!(matches!(out.reuse, Reuse::Close(_)));
}

#[tokio::test]
async fn a_head_response_has_no_body_despite_its_length() {
    let out = exchange(
        Method::HEAD,
        b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(out.body, b"");
    assert_eq!(out.reuse, Reuse::Reusable);
}

#[tokio::test]
async fn responses_204_and_304_have_no_body() {
    for status in ["204 No Content", "304 Not Modified"] {
        let wire = format!("HTTP/1.1 {status}\r\n\r\n");
        let out = get(wire.as_bytes()).await.unwrap();
        assert_eq!(out.body, b"", "{status}");
        assert_eq!(out.reuse, Reuse::Reusable, "{status}");
    }
}

#[tokio::test]
async fn interim_responses_are_skipped() {
    let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
    let out = get(wire).await.unwrap();
    assert_eq!(out.status, StatusCode::CREATED);
    assert!(!out.headers.contains_key("link"));
    assert_eq!(out.body, b"ok");
}

#[tokio::test]
async fn switching_protocols_is_returned_with_the_bytes_after_it() {
    let io = Scripted::in_pieces(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x00",
        7,
    );
    let (head, body) = read_response(io, &Method::GET, &Limits::default())
        .await
        .unwrap();
    assert_eq!(head.status, StatusCode::SWITCHING_PROTOCOLS);
    assert!(body.is_end_stream());
    let (_, early) = body.into_upgraded();
    assert!(b"\x81\x00".starts_with(&early));
}

/// Every field of `wire`'s head, as parsed by httparse alone.
fn every_field(wire: &[u8]) -> HeaderMap {
    let mut fields = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut fields);
    response.parse(wire).expect("a valid head");
    let mut map = HeaderMap::new();
    for field in response.headers.iter() {
        let name = http::HeaderName::from_bytes(field.name.as_bytes()).expect("a name");
        let value = http::HeaderValue::from_bytes(field.value).expect("a value");
        map.append(name, value);
    }
    map
}

#[tokio::test]
async fn the_fields_noted_while_reading_are_those_the_head_holds() {
    use crate::middleware::framing::FramingFields;
    use crate::middleware::hop_by_hop::ConnectionTokens;
    use crate::upstream::reuse::KeepAlive;

    let heads: [&[u8]; 4] = [
        b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\nCONNECTION: Keep-Alive\r\n\
          keep-alive: timeout=5\r\nKeep-Alive: max=7\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close, x-y\r\n\
          Connection: upgrade\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\ncontent-length: 4, 4\r\ntransfer-encoding: gzip\r\n\
          Transfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Other: 1\r\nServer: s\r\n\r\n",
    ];
    for wire in heads {
        let io = Scripted::in_pieces(wire, 5);
        let (_, body) = read_response(io, &Method::GET, &Limits::default())
            .await
            .unwrap();
        let every = every_field(wire);
        let expected = HeadFields {
            framing: FramingFields::of(&every),
            connection: ConnectionTokens::of(&every),
            keep_alive: KeepAlive::of(&every),
        };
        assert_eq!(
            *body.fields(),
            expected,
            "{}",
            String::from_utf8_lossy(wire)
        );
    }
}

#[tokio::test]
async fn the_connection_fields_the_client_consumed_are_not_handed_up() {
    let wire = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: Keep-Alive\r\n\
                 Keep-Alive: timeout=5, max=100\r\nConnection: upgrade\r\n\r\n";
    let io = Scripted::in_pieces(wire, 64);
    let (head, _) = read_response(io, &Method::GET, &Limits::default())
        .await
        .unwrap();
    let names: Vec<_> = head.headers.keys().map(|n| n.as_str()).collect();
    assert_eq!(names, ["content-length"]);
}

#[tokio::test]
async fn a_connection_line_naming_another_field_is_handed_up_for_the_proxy_to_strip() {
    let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\
                 Connection: close, x-hop\r\nX-Hop: 1\r\n\r\n";
    let io = Scripted::in_pieces(wire, 64);
    let (head, _) = read_response(io, &Method::GET, &Limits::default())
        .await
        .unwrap();
    let connection: Vec<_> = head.headers.get_all("connection").iter().collect();
    assert_eq!(connection, ["close, x-hop"]);
}

#[tokio::test]
async fn a_successful_connect_becomes_a_tunnel_that_is_not_reused() {
    let io = Scripted::in_pieces(b"HTTP/1.1 200 OK\r\n\r\n", 64);
    let (_, body) = read_response(io, &Method::CONNECT, &Limits::default())
        .await
        .unwrap();
    assert_eq!(
        body.finish().1,
        Reuse::Close("the connection became a tunnel")
    );
}

#[tokio::test]
async fn connection_close_and_http10_without_keep_alive_are_not_reused() {
    let close = get(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(close.reuse, Reuse::Close("backend sent Connection: close"));
    let http10 = get(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        http10.reuse,
        Reuse::Close("HTTP/1.0 response without Connection: keep-alive")
    );
}

#[tokio::test]
async fn http10_with_keep_alive_and_a_length_is_reused() {
    let out = get(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx")
        .await
        .unwrap();
    assert_eq!(out.version, Version::HTTP_10);
    assert_eq!(out.reuse, Reuse::Reusable);
}

#[tokio::test]
async fn bytes_past_the_end_of_the_response_prevent_reuse() {
    // One read brings the body and a pipelined head behind it.
    let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 200 OK\r\n";
    let out = read_in_pieces(&Method::GET, wire, wire.len())
        .await
        .unwrap();
    assert_eq!(out.body, b"x");
    assert_eq!(
        out.reuse,
        Reuse::Close("bytes arrived past the end of the response")
    );
}

#[tokio::test]
async fn bytes_after_a_bodiless_response_prevent_reuse() {
    let wire = b"HTTP/1.1 204 No Content\r\n\r\nstray";
    let out = read_in_pieces(&Method::GET, wire, wire.len())
        .await
        .unwrap();
    assert_eq!(
        out.reuse,
        Reuse::Close("bytes arrived past the end of the response")
    );
}

#[tokio::test]
async fn a_body_left_unread_prevents_reuse() {
    let io = Scripted::in_pieces(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhe", 64);
    let (_, body) = read_response(io, &Method::GET, &Limits::default())
        .await
        .unwrap();
    assert_eq!(
        body.finish().1,
        Reuse::Close("the body was not read to its end")
    );
}

#[tokio::test]
async fn a_close_before_any_response_byte_is_before_the_response() {
    let err = get(b"").await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::ClosedBeforeResponse),
        "{err:?}"
    );
    assert!(err.is_before_response());
    assert!(!err.is_unsent());
}

#[tokio::test]
async fn a_close_inside_the_head_is_after_the_response_started() {
    let err = get(b"HTTP/1.1 200 OK\r\nContent-Le").await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::IncompleteHead), "{err:?}");
    assert!(!err.is_before_response());
}

#[tokio::test]
async fn a_short_length_delimited_body_is_an_error() {
    let err = get(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhe")
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::IncompleteBody), "{err:?}");
}

#[tokio::test]
async fn a_truncated_chunked_body_is_an_error() {
    let err = get(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::IncompleteBody), "{err:?}");
}

#[tokio::test]
async fn length_with_chunked_is_refused_as_ambiguous() {
    let wire =
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let err = get(wire).await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::AmbiguousFraming(_)),
        "{err:?}"
    );
}

#[tokio::test]
async fn differing_lengths_are_refused() {
    let err = get(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd")
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::BadContentLength), "{err:?}");
}

#[tokio::test]
async fn an_obs_fold_line_is_refused() {
    let err = get(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n  folded\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Parse(_)), "{err:?}");
}

#[tokio::test]
async fn bare_lf_line_ends_in_the_head_are_read_as_httparse_does() {
    let out = get(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok")
        .await
        .unwrap();
    assert_eq!(out.body, b"ok");
}

#[tokio::test]
async fn a_head_beyond_the_limit_is_refused() {
    let mut wire = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..60 {
        wire.extend_from_slice(format!("X-{i}: {}\r\n", "v".repeat(100)).as_bytes());
    }
    wire.extend_from_slice(b"\r\n");
    let limits = Limits {
        max_head_bytes: 4096,
        ..Limits::default()
    };
    let err = read_response(Scripted::in_pieces(&wire, 1000), &Method::GET, &limits)
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::HeadTooLarge { limit: 4096 }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_complete_head_beyond_the_limit_is_refused_however_the_buffer_grew() {
    // 4 KiB first, then the buffer grows by at least what the limit leaves (6,000 - 4,096);
    // the allocator may round that up, so the rest of a 7,000-byte head can arrive in one read.
    let mut wire = b"HTTP/1.1 200 OK\r\n".to_vec();
    wire.extend_from_slice(format!("X-Long: {}\r\n\r\n", "v".repeat(7000)).as_bytes());
    let limits = Limits {
        max_head_bytes: 6000,
        ..Limits::default()
    };
    let io = Scripted::in_pieces(&wire, wire.len());
    let err = read_response(io, &Method::GET, &limits).await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::HeadTooLarge { limit: 6000 }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_status_below_100_is_refused() {
    let err = get(b"HTTP/1.1 099 Odd\r\n\r\n").await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::BadStatus(99)), "{err:?}");
}

fn get_parts(uri: &str, version: Version) -> http::request::Parts {
    let mut req = Request::get(uri).header("host", "b").body(()).unwrap();
    *req.version_mut() = version;
    req.into_parts().0
}

/// The result, the bytes written and the number of write calls.
async fn written<B>(parts: &http::request::Parts, body: B) -> (Result<(), Error>, Vec<u8>, usize)
where
    B: http_body::Body,
    B::Error: Into<crate::error::BoxError>,
{
    let mut io = Scripted::default();
    let result = write_request(&mut io, &RequestHead::from_parts(parts, &[]), body).await;
    (result, io.written, io.writes)
}

#[tokio::test]
async fn a_request_without_a_body_has_no_framing_header() {
    let parts = get_parts("http://b/p?q=1", Version::HTTP_11);
    let (result, wire, writes) = written(&parts, Empty::<Bytes>::new()).await;
    result.unwrap();
    assert_eq!(wire, b"GET /p?q=1 HTTP/1.1\r\nhost: b\r\n\r\n");
    assert_eq!(writes, 1);
}

const XFF: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

/// The head `write_request` writes for a GET with `own` fields and `added` ones.
async fn head_with(own: &[(&'static str, &'static str)], added: &[AddedField<'_>]) -> String {
    let mut parts = get_parts("/", Version::HTTP_11);
    for (name, value) in own {
        parts
            .headers
            .append(*name, http::HeaderValue::from_static(value));
    }
    let mut io = Scripted::default();
    let head = RequestHead::from_parts(&parts, added);
    write_request(&mut io, &head, Empty::<Bytes>::new())
        .await
        .unwrap();
    String::from_utf8(io.written).unwrap()
}

#[tokio::test]
async fn an_added_field_replaces_the_requests_own_fields_of_that_name() {
    let connection = AddedField {
        name: &http::header::CONNECTION,
        value: b"keep-alive",
        appends: false,
    };
    let wire = head_with(&[("connection", "close"), ("accept", "*/*")], &[connection]).await;
    assert_eq!(
        wire,
        "GET / HTTP/1.1\r\nhost: b\r\naccept: */*\r\nconnection: keep-alive\r\n\r\n"
    );
}

#[tokio::test]
async fn an_appended_field_joins_every_own_value_before_ours_in_one_field() {
    let forwarded_for = AddedField {
        name: &XFF,
        value: b"10.0.0.9",
        appends: true,
    };
    let own = [
        ("x-forwarded-for", "1.1.1.1"),
        ("x-forwarded-for", "2.2.2.2, 3.3.3.3"),
    ];
    let wire = head_with(&own, &[forwarded_for]).await;
    assert_eq!(
        wire,
        "GET / HTTP/1.1\r\nhost: b\r\nx-forwarded-for: 1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9\r\n\r\n"
    );
}

#[tokio::test]
async fn a_known_length_body_gets_content_length_in_the_same_buffer() {
    let mut parts = get_parts("/up", Version::HTTP_11);
    parts.method = Method::POST;
    parts
        .headers
        .insert("content-length", "999".parse().unwrap());
    let (result, wire, writes) = written(&parts, Full::new(Bytes::from_static(b"abc"))).await;
    result.unwrap();
    assert_eq!(
        wire,
        b"POST /up HTTP/1.1\r\nhost: b\r\ncontent-length: 3\r\n\r\nabc"
    );
    assert_eq!(writes, 1, "head and a small body go out in one write");
}

/// A body of unknown length made of the given frames.
struct Frames(VecDeque<http_body::Frame<Bytes>>, Option<u64>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, io::Error>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.1
            .map(http_body::SizeHint::with_exact)
            .unwrap_or_default()
    }
}

fn streamed(pieces: &[&'static [u8]], trailers: Option<HeaderMap>) -> Frames {
    let mut frames: VecDeque<_> = pieces
        .iter()
        .map(|p| http_body::Frame::data(Bytes::from_static(p)))
        .collect();
    frames.extend(trailers.map(http_body::Frame::trailers));
    Frames(frames, None)
}

#[tokio::test]
async fn an_http11_body_of_unknown_length_is_chunked_with_its_trailers() {
    let mut parts = get_parts("/s", Version::HTTP_11);
    parts.method = Method::PUT;
    let mut trailers = HeaderMap::new();
    trailers.insert("x-sum", "7".parse().unwrap());
    let (result, wire, writes) = written(
        &parts,
        streamed(&[b"hello", b"", b"0123456789abcdef"], Some(trailers)),
    )
    .await;
    result.unwrap();
    let expected = b"PUT /s HTTP/1.1\r\nhost: b\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nx-sum: 7\r\n\r\n";
    assert_eq!(
        String::from_utf8_lossy(&wire),
        String::from_utf8_lossy(expected)
    );
    assert_eq!(
        writes, 1,
        "frames that are ready at once are gathered into one write"
    );
}

#[tokio::test]
async fn an_http10_body_of_unknown_length_is_refused_before_any_byte() {
    let mut parts = get_parts("/s", Version::HTTP_10);
    parts.method = Method::POST;
    let (result, wire, writes) = written(&parts, streamed(&[b"x"], None)).await;
    let err = result.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::UnframeableBody), "{err:?}");
    assert!(err.is_unsent());
    assert_eq!((wire.len(), writes), (0, 0));
}

#[tokio::test]
async fn a_large_body_is_written_after_the_head_without_copying_into_it() {
    let mut parts = get_parts("/big", Version::HTTP_11);
    parts.method = Method::POST;
    let big = Bytes::from(vec![b'z'; 100_000]);
    let (result, wire, writes) = written(&parts, Full::new(big)).await;
    result.unwrap();
    let head = b"POST /big HTTP/1.1\r\nhost: b\r\ncontent-length: 100000\r\n\r\n";
    assert_eq!(&wire[..head.len()], head);
    assert_eq!(wire.len(), head.len() + 100_000);
    assert_eq!(writes, 2, "the head, then the body from its own buffer");
}

#[tokio::test]
async fn a_write_failure_after_some_bytes_is_not_unsent() {
    let parts = get_parts("/", Version::HTTP_11);
    let mut io = Scripted {
        write_error_after: Some(5),
        ..Scripted::default()
    };
    let err = write_request(
        &mut io,
        &RequestHead::from_parts(&parts, &[]),
        Empty::<Bytes>::new(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Io(_)), "{err:?}");
    assert!(!err.is_unsent());
}

#[tokio::test]
async fn a_write_failure_before_any_byte_is_unsent() {
    let parts = get_parts("/", Version::HTTP_11);
    let mut io = Scripted {
        write_error_after: Some(0),
        ..Scripted::default()
    };
    let err = write_request(
        &mut io,
        &RequestHead::from_parts(&parts, &[]),
        Empty::<Bytes>::new(),
    )
    .await
    .unwrap_err();
    assert!(err.is_unsent());
}

#[tokio::test]
async fn a_body_shorter_than_its_declared_length_is_an_error() {
    let mut parts = get_parts("/", Version::HTTP_11);
    parts.method = Method::POST;
    let mut body = streamed(&[b"ab"], None);
    body.1 = Some(5);
    let (result, _, _) = written(&parts, body).await;
    let err = result.unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::BodyLengthMismatch {
                declared: 5,
                sent: 2
            }
        ),
        "{err:?}"
    );
}
