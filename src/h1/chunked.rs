//! The chunked transfer coding of a response body (RFC 9112 §7.1): a byte-at-a-time state
//! machine over the exchange's read buffer, strict CRLF, bounded extensions and trailers.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

use super::ErrorKind;

/// Chunk extensions are skipped, but at most this many bytes of them in one body (as hyper).
const MAX_EXTENSION_BYTES: u64 = 16 * 1024;

/// What the decoder produced from the buffer.
#[derive(Debug, PartialEq)]
pub(super) enum Event {
    Data(Bytes),
    /// The last chunk and the trailer section were read; the body is complete.
    End(Option<HeaderMap>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    SizeStart,
    Size,
    SizeLws,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// After the last chunk's size line, and after each trailer field line.
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

#[derive(Debug)]
pub(super) struct ChunkedDecoder {
    state: State,
    size: u64,
    extension_bytes: u64,
    trailers: Option<BytesMut>,
    trailer_lines: usize,
    max_trailer_lines: usize,
    max_trailer_bytes: usize,
}

impl ChunkedDecoder {
    pub(super) fn new(max_trailer_lines: usize, max_trailer_bytes: usize) -> ChunkedDecoder {
        ChunkedDecoder {
            state: State::SizeStart,
            size: 0,
            extension_bytes: 0,
            trailers: None,
            trailer_lines: 0,
            max_trailer_lines,
            max_trailer_bytes,
        }
    }

    /// Consumes what it can of `buf`: `Ok(None)` when it needs more bytes.
    pub(super) fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, ErrorKind> {
        while !buf.is_empty() {
            if self.state == State::Data {
                return Ok(Some(Event::Data(self.take_data(buf))));
            }
            let byte = buf.get_u8();
            self.state = self.step(byte)?;
            if self.state == State::Done {
                let trailers = self
                    .trailers
                    .take()
                    .map(|t| parse_trailers(&t, self.trailer_lines));
                return trailers.transpose().map(|t| Some(Event::End(t)));
            }
        }
        Ok(None)
    }

    fn take_data(&mut self, buf: &mut BytesMut) -> Bytes {
        let n = usize::try_from(self.size).map_or(buf.len(), |size| size.min(buf.len()));
        self.size -= n as u64;
        if self.size == 0 {
            self.state = State::DataCr;
        }
        buf.split_to(n).freeze()
    }

    fn step(&mut self, byte: u8) -> Result<State, ErrorKind> {
        use State::*;
        Ok(match (self.state, byte) {
            (SizeStart | Size, _) if byte.is_ascii_hexdigit() => self.push_digit(byte)?,
            (SizeStart, _) => return Err(ErrorKind::Chunk("chunk size is not a hex number")),
            (Size | SizeLws, b' ' | b'\t') => SizeLws,
            (Size | SizeLws, b';') => Extension,
            (Size | SizeLws, b'\r') => SizeLf,
            (Size | SizeLws, _) => return Err(ErrorKind::Chunk("invalid byte in the size line")),
            (Extension, b'\r') => SizeLf,
            (Extension, b'\n') => return Err(ErrorKind::Chunk("bare LF in a chunk extension")),
            (Extension, _) => self.count_extension_byte()?,
            (SizeLf, b'\n') if self.size == 0 => TrailerStart,
            (SizeLf, b'\n') => Data,
            (SizeLf, _) => return Err(ErrorKind::Chunk("size line not ended by CRLF")),
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => SizeStart,
            (DataCr | DataLf, _) => {
                return Err(ErrorKind::Chunk("chunk data not followed by CRLF"));
            }
            (TrailerStart, b'\r') => self.keep_trailer_byte(byte, EndLf)?,
            (TrailerLine, b'\r') => self.keep_trailer_byte(byte, TrailerLf)?,
            (TrailerStart | TrailerLine, _) => self.keep_trailer_byte(byte, TrailerLine)?,
            (TrailerLf, b'\n') => self.end_trailer_line()?,
            (TrailerLf, _) => return Err(ErrorKind::Trailers("field line not ended by CRLF")),
            (EndLf, b'\n') => self.keep_trailer_byte(byte, Done)?,
            (EndLf, _) => return Err(ErrorKind::Chunk("last chunk not ended by CRLF")),
            (Data | Done, _) => unreachable!("data and the end are not read byte by byte"),
        })
    }

    fn push_digit(&mut self, byte: u8) -> Result<State, ErrorKind> {
        let digit = u64::from((byte as char).to_digit(16).expect("a hex digit"));
        self.size = self
            .size
            .checked_mul(16)
            .and_then(|s| s.checked_add(digit))
            .ok_or(ErrorKind::Chunk("chunk size overflows"))?;
        Ok(State::Size)
    }

    fn count_extension_byte(&mut self) -> Result<State, ErrorKind> {
        self.extension_bytes += 1;
        if self.extension_bytes >= MAX_EXTENSION_BYTES {
            return Err(ErrorKind::Chunk("chunk extensions longer than 16 KiB"));
        }
        Ok(State::Extension)
    }

    /// Keeps a byte of the trailer section (from its first field line on) for `httparse`.
    fn keep_trailer_byte(&mut self, byte: u8, next: State) -> Result<State, ErrorKind> {
        let starts_section = self.state == State::TrailerStart && next != State::EndLf;
        if let Some(kept) = self.trailers.as_mut() {
            kept.put_u8(byte);
            if kept.len() > self.max_trailer_bytes {
                return Err(ErrorKind::Trailers("trailer section too large"));
            }
        } else if starts_section {
            self.trailers = Some(BytesMut::from(&[byte][..]));
        }
        Ok(next)
    }

    fn end_trailer_line(&mut self) -> Result<State, ErrorKind> {
        if self.trailer_lines >= self.max_trailer_lines {
            return Err(ErrorKind::Trailers("too many trailer fields"));
        }
        self.trailer_lines += 1;
        self.keep_trailer_byte(b'\n', State::TrailerStart)
    }
}

/// The trailer section, `lines` field lines and the empty line, as a header map.
fn parse_trailers(section: &[u8], lines: usize) -> Result<HeaderMap, ErrorKind> {
    let mut fields = vec![httparse::EMPTY_HEADER; lines];
    let fields = match httparse::parse_headers(section, &mut fields) {
        Ok(httparse::Status::Complete((_, fields))) => fields,
        Ok(httparse::Status::Partial) => return Err(ErrorKind::Trailers("incomplete")),
        Err(_) => return Err(ErrorKind::Trailers("malformed field line")),
    };
    let mut trailers = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| ErrorKind::Trailers("invalid field name"))?;
        let value = HeaderValue::from_bytes(field.value)
            .map_err(|_| ErrorKind::Trailers("invalid field value"))?;
        trailers.append(name, value);
    }
    Ok(trailers)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` to a decoder `piece` bytes at a time; the data, the trailers, or the error.
    fn decode_in_pieces(
        wire: &[u8],
        piece: usize,
    ) -> Result<(Vec<u8>, Option<HeaderMap>), ErrorKind> {
        let mut decoder = ChunkedDecoder::new(100, 16 * 1024);
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        for bytes in wire.chunks(piece) {
            buf.extend_from_slice(bytes);
            while let Some(event) = decoder.decode(&mut buf)? {
                match event {
                    Event::Data(d) => data.extend_from_slice(&d),
                    Event::End(trailers) => return Ok((data, trailers)),
                }
            }
        }
        Err(ErrorKind::IncompleteBody)
    }

    fn decode(wire: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>), ErrorKind> {
        let whole = decode_in_pieces(wire, wire.len().max(1));
        for piece in 1..wire.len().min(8) {
            assert_eq!(
                format!("{:?}", decode_in_pieces(wire, piece)),
                format!("{whole:?}"),
                "pieces of {piece} bytes"
            );
        }
        whole
    }

    #[test]
    fn chunks_are_joined_in_any_pieces() {
        let (data, trailers) = decode(b"5\r\nhello\r\n1;a=b\r\n!\r\n0\r\n\r\n").unwrap();
        assert_eq!(data, b"hello!");
        assert_eq!(trailers, None);
    }

    #[test]
    fn upper_and_lower_case_hex_sizes_are_read() {
        let (data, _) = decode(b"A\r\n0123456789\r\na\r\n0123456789\r\n0\r\n\r\n").unwrap();
        assert_eq!(data.len(), 20);
    }

    #[test]
    fn whitespace_after_the_size_and_extensions_are_skipped() {
        let (data, _) = decode(b"3 \t;name=\"quoted;value\"\r\nabc\r\n0;last\r\n\r\n").unwrap();
        assert_eq!(data, b"abc");
    }

    #[test]
    fn the_trailer_section_becomes_a_header_map() {
        let (data, trailers) =
            decode(b"1\r\nx\r\n0\r\nGrpc-Status: 0\r\nX-A: 1\r\nx-a: 2\r\n\r\n").unwrap();
        assert_eq!(data, b"x");
        let trailers = trailers.unwrap();
        assert_eq!(trailers["grpc-status"], "0");
        let a: Vec<_> = trailers.get_all("x-a").iter().collect();
        assert_eq!(a, ["1", "2"]);
    }

    #[test]
    fn bare_lf_after_a_size_is_refused() {
        assert!(matches!(
            decode(b"1\nx\r\n0\r\n\r\n"),
            Err(ErrorKind::Chunk(_))
        ));
    }

    #[test]
    fn bare_lf_after_data_is_refused() {
        assert!(matches!(
            decode(b"1\r\nx\n0\r\n\r\n"),
            Err(ErrorKind::Chunk(_))
        ));
    }

    #[test]
    fn bare_lf_in_an_extension_is_refused() {
        assert!(matches!(
            decode(b"1;a\nx\r\n0\r\n\r\n"),
            Err(ErrorKind::Chunk(_))
        ));
    }

    #[test]
    fn data_longer_than_its_size_is_refused() {
        assert!(matches!(
            decode(b"1\r\nxy\r\n0\r\n\r\n"),
            Err(ErrorKind::Chunk(_))
        ));
    }

    #[test]
    fn a_missing_or_signed_size_is_refused() {
        assert!(matches!(decode(b"\r\n"), Err(ErrorKind::Chunk(_))));
        assert!(matches!(decode(b"-1\r\n"), Err(ErrorKind::Chunk(_))));
        assert!(matches!(decode(b"0x1\r\n"), Err(ErrorKind::Chunk(_))));
    }

    #[test]
    fn a_size_beyond_64_bits_is_refused() {
        assert!(matches!(
            decode(b"10000000000000000\r\n"),
            Err(ErrorKind::Chunk(_))
        ));
    }

    #[test]
    fn extensions_are_bounded_over_the_whole_body() {
        let mut wire = Vec::new();
        for _ in 0..3 {
            wire.extend_from_slice(b"1;");
            wire.extend(std::iter::repeat_n(b'e', 6000));
            wire.extend_from_slice(b"\r\nx\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        assert!(matches!(
            decode_in_pieces(&wire, 4096),
            Err(ErrorKind::Chunk(_))
        ));
    }

    #[test]
    fn a_malformed_trailer_line_is_refused() {
        let result = decode(b"0\r\nno colon here\r\n\r\n");
        assert!(matches!(result, Err(ErrorKind::Trailers(_))), "{result:?}");
    }

    #[test]
    fn too_many_trailer_fields_are_refused() {
        let mut decoder = ChunkedDecoder::new(2, 16 * 1024);
        let mut buf = BytesMut::from(&b"0\r\na: 1\r\nb: 2\r\nc: 3\r\n\r\n"[..]);
        assert!(matches!(
            decoder.decode(&mut buf),
            Err(ErrorKind::Trailers(_))
        ));
    }

    #[test]
    fn bytes_after_the_last_chunk_stay_in_the_buffer() {
        let mut decoder = ChunkedDecoder::new(100, 16 * 1024);
        let mut buf = BytesMut::from(&b"0\r\n\r\nHTTP/1.1"[..]);
        assert_eq!(decoder.decode(&mut buf).unwrap(), Some(Event::End(None)));
        assert_eq!(&buf[..], b"HTTP/1.1");
    }
}
