//! Test plumbing for the tunnel and transparent-mode tests: scripted TCP backends and a
//! raw-socket client (longhaul itself runs as a `support::proxy::Proxy`).
// Wall-clock time is right in tests: the proxy under test is another process, out of reach of tokio's clock.
#![allow(dead_code, clippy::disallowed_types)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Every socket read or write in these tests gives up after this.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// What a scripted backend does after the optional HTTP exchange.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum After {
    /// Echo every byte until the peer closes, then close.
    Echo,
    /// Echo one read's worth of bytes, then close.
    EchoOnceThenClose,
    /// Close at once.
    Close,
}

#[derive(Clone, Debug)]
pub enum Script {
    /// Echo every byte until the peer closes, then close.
    Echo,
    /// Send a banner first (a server-first protocol), then echo.
    BannerThenEcho(Vec<u8>),
    /// Read one HTTP request head, write `response` verbatim, then `after`.
    Respond { response: Vec<u8>, after: After },
}

#[derive(Default)]
struct Shared {
    accepts: AtomicUsize,
    peer_closed: AtomicUsize,
    received: Mutex<Vec<u8>>,
}

/// A TCP server run by a script on std threads; stopped and joined on drop.
pub struct ScriptedServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ScriptedServer {
    pub fn start(addr: &str, script: Script) -> ScriptedServer {
        let listener =
            TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind scripted server {addr}: {e}"));
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (shared, stop) = (shared.clone(), stop.clone());
            thread::spawn(move || {
                let mut conns = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            shared.accepts.fetch_add(1, Ordering::SeqCst);
                            let (shared, stop, script) =
                                (shared.clone(), stop.clone(), script.clone());
                            conns.push(thread::spawn(move || {
                                serve(stream, &script, &shared, &stop)
                            }));
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(5))
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
                for c in conns {
                    let _ = c.join();
                }
            })
        };
        ScriptedServer {
            addr,
            shared,
            stop,
            thread: Some(thread),
        }
    }

    /// Connections accepted so far.
    pub fn accepts(&self) -> usize {
        self.shared.accepts.load(Ordering::SeqCst)
    }

    /// Every byte received so far, all connections, in arrival order.
    pub fn received(&self) -> Vec<u8> {
        self.shared.received.lock().expect("lock").clone()
    }

    /// Waits until `n` connections saw their peer close first.
    pub fn wait_peer_closed(&self, n: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.shared.peer_closed.load(Ordering::SeqCst) >= n {
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

enum Got {
    Bytes(usize),
    Eof,
    Stopped,
}

/// One read that wakes up every 50ms to notice `stop`.
fn read_some(stream: &mut TcpStream, buf: &mut [u8], stop: &AtomicBool) -> Got {
    loop {
        if stop.load(Ordering::SeqCst) {
            return Got::Stopped;
        }
        match stream.read(buf) {
            Ok(0) => return Got::Eof,
            Ok(n) => return Got::Bytes(n),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Got::Eof,
        }
    }
}

fn serve(mut stream: TcpStream, script: &Script, shared: &Shared, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let mut buf = [0u8; 16 * 1024];
    let record = |bytes: &[u8]| {
        shared
            .received
            .lock()
            .expect("lock")
            .extend_from_slice(bytes)
    };
    let mut after = After::Echo;
    match script {
        Script::Echo => {}
        Script::BannerThenEcho(banner) => {
            if stream.write_all(banner).is_err() {
                return;
            }
        }
        Script::Respond {
            response,
            after: then,
        } => {
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match read_some(&mut stream, &mut buf, stop) {
                    Got::Bytes(n) => {
                        record(&buf[..n]);
                        head.extend_from_slice(&buf[..n]);
                    }
                    Got::Eof => {
                        shared.peer_closed.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    Got::Stopped => return,
                }
            }
            if stream.write_all(response).is_err() {
                return;
            }
            after = *then;
            let end = head
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("found")
                + 4;
            let early = &head[end..];
            if !early.is_empty() && after != After::Close {
                let _ = stream.write_all(early);
                if after == After::EchoOnceThenClose {
                    return;
                }
            }
        }
    }
    if after == After::Close {
        return;
    }
    loop {
        match read_some(&mut stream, &mut buf, stop) {
            Got::Bytes(n) => {
                record(&buf[..n]);
                if stream.write_all(&buf[..n]).is_err() || after == After::EchoOnceThenClose {
                    return;
                }
            }
            Got::Eof => {
                shared.peer_closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
            Got::Stopped => return,
        }
    }
}

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
