//! The raw-socket client of the tunnel and transparent-mode tests: bounded connects, reading a
//! response head, exact byte counts and end of stream (their backend is `support::backend`).
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::backend::Backend;

/// Every socket read or write in these tests gives up after this.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A client connection with bounded reads and writes.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s
}

/// A response head: status code, raw text, headers (names lowercased).
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    pub raw: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }
}

/// Reads up to the end of a response head; returns it and any bytes read past it.
pub fn read_head(stream: &mut TcpStream) -> (Head, Vec<u8>) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(p) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        match stream.read(&mut buf) {
            Ok(0) => panic!(
                "connection closed before a full response head: {:?}",
                String::from_utf8_lossy(&data)
            ),
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "reading a response head: {e}; got so far: {:?}",
                String::from_utf8_lossy(&data)
            ),
        }
    };
    let raw = String::from_utf8_lossy(&data[..end]).into_owned();
    let mut lines = raw.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {raw:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (
        Head {
            status,
            raw,
            headers,
        },
        data[end..].to_vec(),
    )
}

/// Exactly `n` bytes, or a panic naming what arrived.
pub fn read_exactly(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match stream.read(&mut out[got..]) {
            Ok(0) => panic!("closed after {got} of {n} bytes: {:?}", &out[..got]),
            Ok(k) => got += k,
            Err(e) => panic!("after {got} of {n} bytes: {e}"),
        }
    }
    out
}

/// The peer closes: the next read returns end of stream (a reset also counts as closed).
pub fn expect_eof(stream: &mut TcpStream) {
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("expected the connection to close, got {:?}", &buf[..n]),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("expected the connection to close within {IO_TIMEOUT:?}: {e}"),
    }
}

/// The bytes a client receives until the server closes (or resets) the connection.
pub fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return out,
            Err(e) => panic!(
                "reading until close: {e}; got {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

/// A one-shot HTTP/1.0 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = connect(addr);
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"));
    let data = read_to_close(&mut s);
    let text = String::from_utf8_lossy(&data).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("GET {path} from {addr}: no response head in {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    (status, body.to_string())
}

/// The backend got `GET /chat HTTP/1.1` asking to upgrade to websocket.
pub fn assert_websocket_upgrade_reached(backend: &Backend) {
    let requests = backend.requests();
    let first = requests
        .first()
        .expect("the upgrade request reached the backend");
    assert_eq!(
        (
            first.method.as_str(),
            first.target.as_str(),
            first.version.as_str(),
            first.header("upgrade")
        ),
        ("GET", "/chat", "HTTP/1.1", Some("websocket"))
    );
}
