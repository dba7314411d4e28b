//! A raw HTTP/1.0 / 1.1 client on std::net: sends exact bytes, reads whole responses (Content-Length,
//! chunked or close-delimited) with read timeouts, and tells whether the server closed afterwards.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::wire::{self, WireReader};

/// Default bound on every read.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Response {
    pub version: String,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body had no length and ended with the connection.
    pub close_delimited: bool,
    /// The body arrived chunked.
    pub chunked: bool,
    /// The trailer section of a chunked body (empty when none came).
    pub trailers: Vec<(String, String)>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        wire::header(&self.headers, name)
    }
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        wire::header_all(&self.headers, name)
    }
    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
    pub fn trailer(&self, name: &str) -> Option<&str> {
        wire::header(&self.trailers, name)
    }
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How a request's bytes are written: a limit must give the same answer every way.
#[derive(Debug, Clone, Copy)]
pub enum Delivery {
    /// One write.
    AtOnce,
    /// Writes of 1 to 4096 bytes, sizes drawn from `seed` (printed in failures to replay).
    RandomPieces { seed: u64 },
    /// 256-byte writes 1 ms apart: the proxy sees the head incomplete again and again.
    Trickle,
}

impl Delivery {
    /// Each way once, with a fresh seed for the random pieces.
    pub fn all() -> [Delivery; 3] {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        [
            Delivery::AtOnce,
            Delivery::RandomPieces { seed },
            Delivery::Trickle,
        ]
    }

    /// The sizes of the writes that carry `len` bytes.
    fn pieces(self, len: usize) -> Vec<usize> {
        let mut sizes = Vec::new();
        let mut state = match self {
            Delivery::AtOnce => return vec![len],
            Delivery::Trickle => 0,
            Delivery::RandomPieces { seed } => seed,
        };
        let mut left = len;
        while left > 0 {
            let size = match self {
                Delivery::Trickle => 256,
                _ => {
                    // xorshift64: reproducible from the seed, no dependency.
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state % 4096) as usize + 1
                }
            };
            sizes.push(size.min(left));
            left -= size.min(left);
        }
        sizes
    }
}

/// One client connection.
pub struct Client {
    reader: WireReader,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        stream.set_write_timeout(Some(READ_TIMEOUT))?;
        Ok(Client {
            reader: WireReader::new(stream),
        })
    }

    pub fn set_read_timeout(&self, timeout: Duration) {
        self.reader
            .stream()
            .set_read_timeout(Some(timeout))
            .expect("set read timeout");
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut s = self.reader.stream();
        s.write_all(bytes)?;
        s.flush()
    }

    /// Writes `bytes` the way `delivery` says. Stops at the first failed write (the proxy may
    /// answer and close before the last piece) and returns that error.
    pub fn send_delivered(&mut self, bytes: &[u8], delivery: Delivery) -> io::Result<()> {
        let mut rest = bytes;
        for size in delivery.pieces(bytes.len()) {
            let (piece, tail) = rest.split_at(size);
            self.send(piece)?;
            rest = tail;
            if matches!(delivery, Delivery::Trickle) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(())
    }

    /// Reads one response; `head` says the request was HEAD (no body follows).
    /// Interim 1xx responses (other than 101) are skipped.
    pub fn read_response(&mut self, head: bool) -> io::Result<Response> {
        loop {
            let raw = self.reader.read_head()?;
            let (start, headers) = wire::parse_head(&raw)?;
            let mut parts = start.splitn(3, ' ');
            let version = parts.next().unwrap_or("").to_string();
            let status: u16 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad status line {start:?}"),
                )
            })?;
            let reason = parts.next().unwrap_or("").to_string();
            if (100..200).contains(&status) && status != 101 {
                continue;
            }
            let mut resp = Response {
                version,
                status,
                reason,
                headers,
                body: Vec::new(),
                close_delimited: false,
                chunked: false,
                trailers: Vec::new(),
            };
            if head || status == 204 || status == 304 || status == 101 {
                return Ok(resp);
            }
            if wire::is_chunked(&resp.headers) {
                resp.chunked = true;
                (resp.body, resp.trailers) = self.reader.read_chunked_with_trailers()?;
            } else if let Some(n) = wire::content_length(&resp.headers)? {
                resp.body = self.reader.read_exact_bytes(n)?;
            } else {
                resp.close_delimited = true;
                resp.body = self.reader.read_to_eof()?;
            }
            return Ok(resp);
        }
    }

    /// Sends a request and reads its response.
    pub fn roundtrip(&mut self, raw: &[u8]) -> io::Result<Response> {
        self.send(raw)?;
        self.read_response(raw.starts_with(b"HEAD "))
    }

    /// Whether the server closes (EOF or reset) within `timeout` with nothing more to read.
    /// Returns false if the connection stays open, or if unexpected bytes arrive.
    pub fn wait_closed(&mut self, timeout: Duration) -> bool {
        if self.reader.buffered() > 0 {
            return false;
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.set_read_timeout(left);
            match self.reader.fill() {
                Ok(0) => return true,
                Ok(_) => return false,
                Err(e) if wire::is_timeout(&e) => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return true,
            }
        }
    }

    /// The underlying socket, for raw reads and writes.
    pub fn stream(&self) -> &TcpStream {
        self.reader.stream()
    }

    pub fn shutdown_write(&self) {
        let _ = self.reader.stream().shutdown(std::net::Shutdown::Write);
    }
}

/// Connects, sends `raw`, reads one response.
pub fn try_request(addr: SocketAddr, raw: &[u8]) -> io::Result<Response> {
    Client::connect(addr)?.roundtrip(raw)
}

/// Like `try_request`, panicking with context on failure.
pub fn request(addr: SocketAddr, raw: &[u8]) -> Response {
    try_request(addr, raw).unwrap_or_else(|e| {
        panic!(
            "request to {addr} failed: {e}\nrequest: {:?}",
            String::from_utf8_lossy(raw)
        )
    })
}

/// Sends `raw` on a new connection, reads the response, then waits up to `close_wait` for the
/// server to close; returns the response and whether it closed.
pub fn exchange(addr: SocketAddr, raw: &[u8], close_wait: Duration) -> (Response, bool) {
    let mut c = Client::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let r = c
        .roundtrip(raw)
        .unwrap_or_else(|e| panic!("request to {addr} failed: {e}"));
    let closed = c.wait_closed(close_wait);
    (r, closed)
}

/// A short legacy client: `GET path HTTP/1.0`, no keep-alive, one request per connection.
pub fn get10(addr: SocketAddr, path: &str) -> Response {
    request(
        addr,
        format!("GET {path} HTTP/1.0\r\nHost: test.local\r\n\r\n").as_bytes(),
    )
}

pub fn try_get10(addr: SocketAddr, path: &str) -> io::Result<Response> {
    try_request(
        addr,
        format!("GET {path} HTTP/1.0\r\nHost: test.local\r\n\r\n").as_bytes(),
    )
}

/// Short HTTP/1.0 clients sending `raw` in a loop from `clients` threads until stopped; stopped
/// (and joined) on drop.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    counts: std::sync::Arc<LoadCounts>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
pub struct LoadCounts {
    pub ok: std::sync::atomic::AtomicUsize,
    /// Failed requests and statuses other than 200.
    pub errors: std::sync::atomic::AtomicUsize,
    /// The first few failures, for the assertion message.
    pub first_errors: std::sync::Mutex<Vec<String>>,
}

impl LoadCounts {
    fn failed(&self, what: String) {
        self.errors
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut first = self.first_errors.lock().unwrap();
        if first.len() < 5 {
            first.push(what);
        }
    }
}

impl Load {
    pub fn start(addr: SocketAddr, clients: usize, raw: &[u8]) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let counts = std::sync::Arc::new(LoadCounts::default());
        let threads = (0..clients)
            .map(|_| {
                let (stop, counts, raw) = (stop.clone(), counts.clone(), raw.to_vec());
                std::thread::spawn(move || {
                    use std::sync::atomic::Ordering::SeqCst;
                    while !stop.load(SeqCst) {
                        match try_request(addr, &raw) {
                            Ok(r) if r.status == 200 => {
                                counts.ok.fetch_add(1, SeqCst);
                            }
                            Ok(r) => counts.failed(format!("{} {}", r.status, r.body_str())),
                            Err(e) => counts.failed(e.to_string()),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            counts,
            threads,
        }
    }

    /// `GET path HTTP/1.0` from `clients` threads.
    pub fn get10(addr: SocketAddr, clients: usize, path: &str) -> Load {
        let raw = format!("GET {path} HTTP/1.0\r\nHost: test.local\r\n\r\n");
        Load::start(addr, clients, raw.as_bytes())
    }

    pub fn ok(&self) -> usize {
        self.counts.ok.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn errors(&self) -> usize {
        self.counts.errors.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops the clients, waits for their last requests; returns (ok, errors, the first errors).
    pub fn finish(mut self) -> (usize, usize, Vec<String>) {
        self.halt();
        let first = self.counts.first_errors.lock().unwrap().clone();
        (self.ok(), self.errors(), first)
    }

    fn halt(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.halt();
    }
}
