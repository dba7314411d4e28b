//! HTTP/1.x wire parsing shared by the scripted backend and the raw test client.
//! Tests may hand-parse HTTP (src/ may not); this is deliberately small and strict enough to notice
//! framing mistakes: heads end at CRLF CRLF, bodies are Content-Length, chunked or close-delimited.

use std::io::{self, Read};
use std::net::TcpStream;
use std::time::Duration;

/// Largest head either side will accept before giving up (the proxy's limits are far below this).
pub const MAX_HEAD: usize = 1 << 20;

/// Field lines as `(name, value)` pairs, in arrival order.
pub type Fields = Vec<(String, String)>;

/// A buffered reader over a TCP stream that can hand back exact byte counts, lines and heads.
pub struct WireReader {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// Why a read stopped.
#[derive(Debug)]
pub enum WireError {
    /// The peer closed cleanly before any byte of the next message.
    Eof,
    /// The read timeout fired before any byte of the next message arrived.
    IdleTimeout,
    /// Anything else: a reset, a timeout mid-message, a malformed message.
    Io(io::Error),
}

impl From<io::Error> for WireError {
    fn from(e: io::Error) -> Self {
        WireError::Io(e)
    }
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Eof => write!(f, "peer closed the connection"),
            WireError::IdleTimeout => write!(f, "timed out waiting for data"),
            WireError::Io(e) => write!(f, "{e}"),
        }
    }
}

pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn unexpected_eof(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("connection closed in {what}"),
    )
}

impl WireReader {
    pub fn new(stream: TcpStream) -> Self {
        WireReader {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Bytes already received but not consumed.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The bytes received but not consumed, taken out of the buffer.
    pub fn take_buffered(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// One read from the socket into the buffer; Ok(0) on EOF.
    pub fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Waits (with `timeout`, None = block) for the first byte of a new message.
    pub fn wait_for_data(&mut self, timeout: Option<Duration>) -> Result<(), WireError> {
        if !self.buf.is_empty() {
            return Ok(());
        }
        self.stream.set_read_timeout(timeout)?;
        match self.fill() {
            Ok(0) => Err(WireError::Eof),
            Ok(_) => Ok(()),
            Err(e) if is_timeout(&e) => Err(WireError::IdleTimeout),
            Err(e) => Err(WireError::Io(e)),
        }
    }

    /// Reads through the blank line ending a head; returns the head without it.
    pub fn read_head(&mut self) -> io::Result<String> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                return String::from_utf8(head[..end].to_vec())
                    .map_err(|_| bad("head is not UTF-8"));
            }
            if self.buf.len() > MAX_HEAD {
                return Err(bad("head too large"));
            }
            if self.fill()? == 0 {
                return Err(unexpected_eof("a message head"));
            }
        }
    }

    /// Reads one CRLF-terminated line (without the CRLF).
    pub fn read_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..end + 2).collect();
                return String::from_utf8(line[..end].to_vec())
                    .map_err(|_| bad("line is not UTF-8"));
            }
            if self.buf.len() > MAX_HEAD {
                return Err(bad("line too long"));
            }
            if self.fill()? == 0 {
                return Err(unexpected_eof("a line"));
            }
        }
    }

    pub fn read_exact_bytes(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill()? == 0 {
                return Err(unexpected_eof(&format!(
                    "a {n}-byte body ({} bytes arrived)",
                    self.buf.len()
                )));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Decodes a chunked body (chunk extensions ignored, trailers discarded).
    pub fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        self.read_chunked_with_trailers().map(|(body, _)| body)
    }

    /// Decodes a chunked body and its trailer section (chunk extensions ignored).
    pub fn read_chunked_with_trailers(&mut self) -> io::Result<(Vec<u8>, Fields)> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line()?;
            let size_text = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| bad(format!("bad chunk size line {line:?}")))?;
            if size == 0 {
                return Ok((body, self.read_trailer_section()?));
            }
            body.extend(self.read_exact_bytes(size)?);
            let crlf = self.read_exact_bytes(2)?;
            if crlf != b"\r\n" {
                return Err(bad("chunk not followed by CRLF"));
            }
        }
    }

    /// Field lines after the last chunk, through the final empty line.
    fn read_trailer_section(&mut self) -> io::Result<Fields> {
        let mut fields = Vec::new();
        loop {
            let line = self.read_line()?;
            if line.is_empty() {
                return Ok(fields);
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| bad(format!("bad trailer line {line:?}")))?;
            fields.push((name.trim().to_string(), value.trim().to_string()));
        }
    }

    /// Reads until EOF (close-delimited body).
    pub fn read_to_eof(&mut self) -> io::Result<Vec<u8>> {
        while self.fill()? != 0 {}
        Ok(std::mem::take(&mut self.buf))
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Splits a head into its start line and (name, value) header pairs, in order.
pub fn parse_head(head: &str) -> io::Result<(String, Vec<(String, String)>)> {
    let mut lines = head.split("\r\n");
    let start = lines.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad(format!("header line without a colon: {line:?}")))?;
        headers.push((name.to_string(), value.trim().to_string()));
    }
    Ok((start, headers))
}

/// First value of a header, by case-insensitive name.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Every value of a header, by case-insensitive name.
pub fn header_all<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Whether a comma-separated header (e.g. Connection) lists `token`, case-insensitively.
pub fn header_has_token(headers: &[(String, String)], name: &str, token: &str) -> bool {
    header_all(headers, name)
        .iter()
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether the headers ask for a chunked body (Transfer-Encoding's last coding is chunked).
pub fn is_chunked(headers: &[(String, String)]) -> bool {
    header_all(headers, "transfer-encoding")
        .iter()
        .flat_map(|v| v.split(','))
        .next_back()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"))
}

pub fn content_length(headers: &[(String, String)]) -> io::Result<Option<usize>> {
    match header(headers, "content-length") {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| bad(format!("bad Content-Length {v:?}"))),
    }
}
