//! A scripted legacy HTTP/1.0 backend on raw std::net sockets, one thread per connection.
//! It records every request exactly as it arrived (per accepted connection) and counts accepted
//! connections, so tests can compare what longhaul sent with what the client asked for.
//!
//! Default responder: `HTTP/1.0 200 OK` with Content-Length, body `ok <METHOD> <target>\n` (padded
//! with `body_size`), headers `X-Backend-Conn` / `X-Backend-Req` naming the connection and the
//! request's position on it, and `Connection: keep-alive` only when the request asked for it.
//! A target `/status/NNN...` answers with that status (204 and 304 without a body).
//!
//! `serving_at_most(n)` makes it a prefork-like server: every TCP connection is accepted, but only
//! `n` are read from at a time, each until it closes; the others wait (an accept queue).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::wire::{self, WireError, WireReader};

/// Bound on reading the rest of a request once its first byte arrived.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// One request as the backend parsed it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub target: String,
    /// "HTTP/1.0" or "HTTP/1.1" as sent.
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The request arrived with `Transfer-Encoding: chunked` (an HTTP/1.0 backend cannot read that).
    pub chunked: bool,
    /// Index of the backend connection it arrived on (0 = first accepted).
    pub conn: usize,
    /// Position on that connection (0 = first request on it).
    pub index: usize,
    /// Global arrival order across all connections.
    pub seq: usize,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        wire::header(&self.headers, name)
    }
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        wire::header_all(&self.headers, name)
    }
    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
    /// RFC 9112 §9.3: 1.0 persists only with `Connection: keep-alive`; 1.1 unless `close`.
    pub fn wants_keepalive(&self) -> bool {
        if self.version == "HTTP/1.0" {
            wire::header_has_token(&self.headers, "connection", "keep-alive")
        } else {
            !wire::header_has_token(&self.headers, "connection", "close")
        }
    }
}

/// How a backend connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// Still open.
    Open,
    /// The proxy closed it (EOF while waiting for a request).
    ByPeer,
    /// The backend's idle keep-alive timeout closed it.
    IdleTimeout,
    /// The backend closed it after a response (no keep-alive, close-delimited, close_after).
    AfterResponse,
    /// A script closed it without answering.
    Scripted,
    /// The backend was stopped.
    Stopped,
    /// A read or write failed (reset, malformed request, timeout mid-request).
    Error(String),
}

/// A backend connection and what arrived on it.
#[derive(Debug, Clone)]
pub struct ConnRecord {
    pub id: usize,
    pub peer: SocketAddr,
    pub requests: Vec<Request>,
    pub closed: Closed,
}

/// How the default responder frames its bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `HTTP/1.0` with Content-Length (keep-alive when asked).
    ContentLength,
    /// `HTTP/1.0` without a length: the body ends when the backend closes.
    CloseDelimited,
    /// `HTTP/1.1` with `Transfer-Encoding: chunked`.
    Chunked11,
}

/// What a custom responder wants done with a request.
pub enum Reply {
    /// Write these exact bytes; then keep reading requests (`keep_open`) or close with FIN.
    Raw { bytes: Vec<u8>, keep_open: bool },
    /// Write these byte pieces one by one with `pause` between them (a response that arrives in
    /// separate TCP segments); then keep reading requests (`keep_open`) or close with FIN.
    Pieces {
        pieces: Vec<Vec<u8>>,
        pause: Duration,
        keep_open: bool,
    },
    /// Sleep, then reply.
    Delayed(Duration, Box<Reply>),
    /// Close without answering (FIN, or RST when the backend is built with `rst()`).
    Close,
    /// Never answer; hold the connection until the peer closes it or the backend stops.
    Hang,
    /// Write `response` (a 101, say), then carry raw bytes as `then` says: a tunnel's far end.
    Tunnel { response: Vec<u8>, then: Echo },
}

/// How a backend answers raw bytes (after a `Reply::Tunnel`, or from the start with `raw_echo`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Echo {
    /// Every byte back until the peer closes, then close.
    UntilClosed,
    /// One read's worth of bytes back, then close.
    OnceThenClose,
}

type Responder = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;
type Predicate = Arc<dyn Fn(&Request) -> bool + Send + Sync>;
type IdleFn = Arc<dyn Fn(usize, usize) -> Option<Duration> + Send + Sync>;

/// Behaviour of a backend; see the builder methods.
#[derive(Clone)]
pub struct BackendBuilder {
    framing: Framing,
    announce_keepalive: Option<(u64, u32)>,
    idle_close: Option<Duration>,
    idle_close_max: Option<Duration>,
    idle_close_fn: Option<IdleFn>,
    close_after: Option<usize>,
    delay: Option<Duration>,
    never_answer: bool,
    close_without_answer: Option<Predicate>,
    rst: bool,
    ignore_keepalive: bool,
    body_size: usize,
    responder: Option<Responder>,
    serving: usize,
    /// Not HTTP: write this banner (maybe empty) on accept, then echo (`raw_echo`).
    raw_banner: Option<Vec<u8>>,
}

impl Default for BackendBuilder {
    fn default() -> Self {
        BackendBuilder {
            framing: Framing::ContentLength,
            announce_keepalive: None,
            idle_close: None,
            idle_close_max: None,
            idle_close_fn: None,
            close_after: None,
            delay: None,
            never_answer: false,
            close_without_answer: None,
            rst: false,
            ignore_keepalive: false,
            body_size: 0,
            responder: None,
            serving: usize::MAX,
            raw_banner: None,
        }
    }
}

impl BackendBuilder {
    pub fn framing(mut self, framing: Framing) -> Self {
        self.framing = framing;
        self
    }
    /// Adds `Keep-Alive: timeout=N, max=M` to keep-alive responses.
    pub fn announce_keepalive(mut self, timeout_secs: u64, max: u32) -> Self {
        self.announce_keepalive = Some((timeout_secs, max));
        self
    }
    /// Closes a connection that stays idle between requests for this long.
    pub fn idle_close(mut self, after: Duration) -> Self {
        self.idle_close = Some(after);
        self
    }
    /// Closes idle connections after a pseudo-random time in `min..max`, different for every
    /// wait, so a proxy cannot learn the timeout and must survive the stale-close race itself.
    pub fn idle_close_between(mut self, min: Duration, max: Duration) -> Self {
        self.idle_close = Some(min);
        self.idle_close_max = Some(max);
        self
    }
    /// Idle timeout chosen per wait: `f(connection id, requests served on it)`; None = no limit.
    pub fn idle_close_with(
        mut self,
        f: impl Fn(usize, usize) -> Option<Duration> + Send + Sync + 'static,
    ) -> Self {
        self.idle_close_fn = Some(Arc::new(f));
        self
    }
    /// Answers the n-th request on a connection with `Connection: close`, then closes.
    pub fn close_after(mut self, requests: usize) -> Self {
        self.close_after = Some(requests);
        self
    }
    /// Waits this long before answering every request.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }
    /// Reads requests but never answers them.
    pub fn never_answer(mut self) -> Self {
        self.never_answer = true;
        self
    }
    /// Reads a request matching `pred`, then closes without answering.
    pub fn close_without_answer(
        mut self,
        pred: impl Fn(&Request) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.close_without_answer = Some(Arc::new(pred));
        self
    }
    /// Closes connections (idle timeout, scripted closes) with RST (SO_LINGER 0) instead of FIN.
    pub fn rst(mut self) -> Self {
        self.rst = true;
        self
    }
    /// Answers `HTTP/1.0` without `Connection: keep-alive` even when asked, but leaves the socket
    /// open (a sloppy server): a proxy that reuses it anyway shows up as a second request on it.
    pub fn ignore_keepalive(mut self) -> Self {
        self.ignore_keepalive = true;
        self
    }
    /// Pads default bodies to at least this many bytes (deterministic content).
    pub fn body_size(mut self, bytes: usize) -> Self {
        self.body_size = bytes;
        self
    }
    /// Reads from at most `n` connections at a time, each until it closes (see the header);
    /// `Backend::set_serving` changes `n` while it runs.
    pub fn serving_at_most(mut self, n: usize) -> Self {
        self.serving = n;
        self
    }
    /// Speaks no HTTP: writes `banner` on accept (a server-first protocol; empty for a
    /// client-first one), then echoes every byte until the peer closes.
    pub fn raw_echo(mut self, banner: &[u8]) -> Self {
        self.raw_banner = Some(banner.to_vec());
        self
    }
    /// Answers every request with `response` (a 101, say), then echoes raw bytes as `then`
    /// says: the far end of a tunnel.
    pub fn tunnel(self, response: &[u8], then: Echo) -> Self {
        let response = response.to_vec();
        self.responder(move |_| Reply::Tunnel {
            response: response.clone(),
            then,
        })
    }
    /// Replaces the default responder entirely.
    pub fn responder(mut self, f: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Self {
        self.responder = Some(Arc::new(f));
        self
    }

    pub fn start(self) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend listener");
        self.serve(listener)
    }

    /// Starts on a chosen address, e.g. where a stopped backend listened (a restart); retries
    /// the bind for up to 3 s while the port is still in use.
    pub fn start_on(self, addr: SocketAddr) -> Backend {
        let deadline = Instant::now() + Duration::from_secs(3);
        let listener = loop {
            match TcpListener::bind(addr) {
                Ok(l) => break l,
                Err(e) if Instant::now() >= deadline => panic!("binding {addr}: {e}"),
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        };
        self.serve(listener)
    }

    fn serve(self, listener: TcpListener) -> Backend {
        let addr = listener.local_addr().expect("backend local addr");
        let shared = Arc::new(Shared {
            serving: Serving::new(self.serving),
            behaviour: self,
            stop: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
            seq: AtomicUsize::new(0),
            answered: AtomicUsize::new(0),
            raw_bytes: Mutex::new(Vec::new()),
            conns: Mutex::new(Vec::new()),
            streams: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
        });
        let listener_handle = listener.try_clone().expect("clone backend listener");
        let accept_shared = shared.clone();
        let accept = thread::Builder::new()
            .name("backend-accept".into())
            .spawn(move || accept_loop(listener, accept_shared))
            .expect("spawn backend accept thread");
        Backend {
            addr,
            shared,
            listener: listener_handle,
            accept: Some(accept),
        }
    }
}

/// How many connections are read from at once, and the limit (`serving_at_most`); waiting
/// connections are picked up in the order they were accepted, as from a listen queue.
struct Serving {
    state: Mutex<ServingState>,
    changed: Condvar,
}

struct ServingState {
    limit: usize,
    served: usize,
    waiting: std::collections::VecDeque<usize>,
}

impl Serving {
    fn new(limit: usize) -> Serving {
        Serving {
            state: Mutex::new(ServingState {
                limit,
                served: 0,
                waiting: Default::default(),
            }),
            changed: Condvar::new(),
        }
    }

    /// Waits for connection `id`'s turn among the served; false if the backend stopped first.
    fn enter(&self, id: usize, stop: &AtomicBool) -> bool {
        let mut state = self.state.lock().unwrap();
        state.waiting.push_back(id);
        while state.served >= state.limit || state.waiting.front() != Some(&id) {
            if stop.load(Ordering::SeqCst) {
                state.waiting.retain(|&w| w != id);
                self.changed.notify_all();
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, Duration::from_millis(20))
                .unwrap()
                .0;
        }
        state.waiting.pop_front();
        state.served += 1;
        self.changed.notify_all();
        true
    }

    fn leave(&self) {
        self.state.lock().unwrap().served -= 1;
        self.changed.notify_all();
    }

    fn set_limit(&self, limit: usize) {
        self.state.lock().unwrap().limit = limit;
        self.changed.notify_all();
    }

    fn served(&self) -> usize {
        self.state.lock().unwrap().served
    }
}

struct Shared {
    serving: Serving,
    behaviour: BackendBuilder,
    stop: AtomicBool,
    accepted: AtomicUsize,
    seq: AtomicUsize,
    /// Replies written in full.
    answered: AtomicUsize,
    /// Raw bytes received (`raw_echo`, or after a `Reply::Tunnel`), all connections, in order.
    raw_bytes: Mutex<Vec<u8>>,
    conns: Mutex<Vec<ConnRecord>>,
    /// Clones of open sockets so `Drop` can shut them down; removed before a connection closes
    /// so that closing the thread's own handle really closes the socket (and RST really resets).
    streams: Mutex<HashMap<usize, TcpStream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// A running scripted backend; stopped (listener closed, connections shut, threads joined) on drop.
pub struct Backend {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// The listening socket, shut down at a stop to wake the blocked accept.
    listener: TcpListener,
    accept: Option<JoinHandle<()>>,
}

impl Backend {
    pub fn builder() -> BackendBuilder {
        BackendBuilder::default()
    }

    /// A default keep-alive, Content-Length backend.
    pub fn start() -> Backend {
        BackendBuilder::default().start()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// A snapshot of every accepted connection and its requests.
    pub fn connections(&self) -> Vec<ConnRecord> {
        self.shared.conns.lock().unwrap().clone()
    }

    /// Every request received, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        let mut all: Vec<Request> = self
            .connections()
            .into_iter()
            .flat_map(|c| c.requests)
            .collect();
        all.sort_by_key(|r| r.seq);
        all
    }

    /// Changes how many connections are read from at once (`serving_at_most`).
    pub fn set_serving(&self, n: usize) {
        self.shared.serving.set_limit(n);
    }

    /// Connections being read from now (at most the `serving_at_most` limit).
    pub fn serving(&self) -> usize {
        self.shared.serving.served()
    }

    pub fn request_count(&self) -> usize {
        self.shared.seq.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until `cond` holds; returns whether it did.
    pub fn wait_until(&self, timeout: Duration, cond: impl Fn(&Backend) -> bool) -> bool {
        super::wait_until(timeout, || cond(self))
    }

    /// Raw bytes received so far (`raw_echo`, or after a `Reply::Tunnel`), all connections.
    pub fn raw_bytes(&self) -> Vec<u8> {
        self.shared.raw_bytes.lock().unwrap().clone()
    }

    /// Waits (bounded) until `n` connections were closed by their peer first.
    pub fn wait_peer_closed(&self, n: usize, within: Duration) -> bool {
        self.wait_until(within, |b| {
            b.connections()
                .iter()
                .filter(|c| c.closed == Closed::ByPeer)
                .count()
                >= n
        })
    }

    /// Stops as a restarted server does (listener closed, every connection shut at once; see
    /// `Drop`) and returns how many requests it had read but not answered.
    pub fn stop(self) -> usize {
        let shared = Arc::clone(&self.shared);
        drop(self);
        shared.seq.load(Ordering::SeqCst) - shared.answered.load(Ordering::SeqCst)
    }

    /// The body the default responder sends for a request.
    pub fn expected_body(&self, method: &str, target: &str) -> Vec<u8> {
        default_body(method, target, self.shared.behaviour.body_size)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept() so the loop sees the stop flag: on Linux, shutting a
        // listening socket down makes accept fail at once (a connect to wake it could be
        // redirected elsewhere by a test's netfilter rules).
        let _ = socket2::SockRef::from(&self.listener).shutdown(Shutdown::Read);
        if let Some(accept) = self.accept.take() {
            join_bounded(accept, Duration::from_secs(5));
        }
        for stream in self.shared.streams.lock().unwrap().values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let threads: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.shared.threads.lock().unwrap());
        let deadline = Instant::now() + Duration::from_secs(5);
        for t in threads {
            join_bounded(t, deadline.saturating_duration_since(Instant::now()));
        }
    }
}

fn join_bounded(handle: JoinHandle<()>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !handle.is_finished() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    if handle.is_finished() {
        let _ = handle.join();
    }
    // Otherwise leave it detached: it only holds a shut-down socket.
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(pair) => pair,
            Err(_) if shared.stop.load(Ordering::SeqCst) => return,
            Err(_) => {
                thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let _ = stream.set_nodelay(true);
        let id = {
            let mut conns = shared.conns.lock().unwrap();
            let id = conns.len();
            conns.push(ConnRecord {
                id,
                peer,
                requests: Vec::new(),
                closed: Closed::Open,
            });
            conns.len() - 1
        };
        if let Ok(clone) = stream.try_clone() {
            shared.streams.lock().unwrap().insert(id, clone);
        }
        let conn_shared = shared.clone();
        let handle = thread::Builder::new()
            .name(format!("backend-conn-{id}"))
            .spawn(move || serve(stream, id, conn_shared))
            .expect("spawn backend connection thread");
        shared.threads.lock().unwrap().push(handle);
    }
}

/// How `serve` ends a connection.
enum End {
    Fin,
    Rst,
}

fn serve(stream: TcpStream, id: usize, shared: Arc<Shared>) {
    let (closed, end) = if shared.serving.enter(id, &shared.stop) {
        let served = match &shared.behaviour.raw_banner {
            Some(banner) => (serve_raw(&stream, banner, &shared), End::Fin),
            None => serve_requests(&stream, id, &shared),
        };
        shared.serving.leave();
        served
    } else {
        (Closed::Stopped, End::Fin)
    };
    if let Some(c) = shared.conns.lock().unwrap().get_mut(id) {
        c.closed = if shared.stop.load(Ordering::SeqCst) && closed != Closed::AfterResponse {
            Closed::Stopped
        } else {
            closed
        };
    }
    // Drop the registry clone first: only then does closing our handle close the socket.
    shared.streams.lock().unwrap().remove(&id);
    if let End::Rst = end {
        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    }
    drop(stream);
}

fn serve_requests(stream: &TcpStream, id: usize, shared: &Shared) -> (Closed, End) {
    let b = &shared.behaviour;
    let close_end = || if b.rst { End::Rst } else { End::Fin };
    let mut reader = WireReader::new(stream.try_clone().expect("clone backend stream"));
    let mut index = 0;
    loop {
        let idle = match (b.idle_close, b.idle_close_max) {
            _ if b.idle_close_fn.is_some() => b.idle_close_fn.as_ref().and_then(|f| f(id, index)),
            (Some(min), Some(max)) if max > min => {
                let spread = (max - min).as_micros() as u64;
                let x = (id as u64 * 7919 + index as u64 * 104_729 + 12_345)
                    .wrapping_mul(2_654_435_761);
                Some(min + Duration::from_micros((x >> 7) % spread))
            }
            (idle, _) => idle,
        };
        match reader.wait_for_data(idle) {
            Ok(()) => {}
            Err(WireError::Eof) => return (Closed::ByPeer, End::Fin),
            Err(WireError::IdleTimeout) => return (Closed::IdleTimeout, close_end()),
            Err(WireError::Io(e)) => return (Closed::Error(e.to_string()), End::Fin),
        }
        let _ = stream.set_read_timeout(Some(REQUEST_READ_TIMEOUT));
        let req = match read_request(&mut reader, id, index, shared) {
            Ok(r) => r,
            Err(e) => return (Closed::Error(format!("reading request: {e}")), End::Fin),
        };
        if let Some(c) = shared.conns.lock().unwrap().get_mut(id) {
            c.requests.push(req.clone());
        }
        index += 1;
        let reply = match &b.responder {
            Some(f) => f(&req),
            None => default_reply(b, &req, index),
        };
        match perform(reply, stream, &mut reader, shared) {
            Step::Continue => {}
            Step::Closed(c) => {
                let end = if c == Closed::Scripted {
                    close_end()
                } else {
                    End::Fin
                };
                return (c, end);
            }
        }
    }
}

enum Step {
    Continue,
    Closed(Closed),
}

fn perform(reply: Reply, mut stream: &TcpStream, reader: &mut WireReader, shared: &Shared) -> Step {
    match reply {
        Reply::Raw { bytes, keep_open } => {
            if let Err(e) = stream.write_all(&bytes).and_then(|_| stream.flush()) {
                return Step::Closed(Closed::Error(format!("writing response: {e}")));
            }
            shared.answered.fetch_add(1, Ordering::SeqCst);
            if keep_open {
                Step::Continue
            } else {
                Step::Closed(Closed::AfterResponse)
            }
        }
        Reply::Pieces {
            pieces,
            pause,
            keep_open,
        } => {
            let last = pieces.len().saturating_sub(1);
            for (i, piece) in pieces.into_iter().enumerate() {
                if let Err(e) = stream.write_all(&piece).and_then(|_| stream.flush()) {
                    return Step::Closed(Closed::Error(format!("writing response: {e}")));
                }
                if i < last {
                    thread::sleep(pause);
                }
            }
            shared.answered.fetch_add(1, Ordering::SeqCst);
            if keep_open {
                Step::Continue
            } else {
                Step::Closed(Closed::AfterResponse)
            }
        }
        Reply::Delayed(d, inner) => {
            let deadline = Instant::now() + d;
            while Instant::now() < deadline {
                if shared.stop.load(Ordering::SeqCst) {
                    return Step::Closed(Closed::Stopped);
                }
                thread::sleep(Duration::from_millis(5).min(deadline - Instant::now()));
            }
            perform(*inner, stream, reader, shared)
        }
        Reply::Close => Step::Closed(Closed::Scripted),
        Reply::Tunnel { response, then } => {
            if let Err(e) = stream.write_all(&response).and_then(|_| stream.flush()) {
                return Step::Closed(Closed::Error(format!("writing response: {e}")));
            }
            shared.answered.fetch_add(1, Ordering::SeqCst);
            Step::Closed(echo(stream, reader.take_buffered(), then, shared))
        }
        Reply::Hang => {
            // Read and discard until the peer (or Drop) closes the socket.
            let _ = stream.set_read_timeout(None);
            loop {
                match reader.fill() {
                    Ok(0) => return Step::Closed(Closed::ByPeer),
                    Ok(_) => continue,
                    Err(e) => return Step::Closed(Closed::Error(e.to_string())),
                }
            }
        }
    }
}

/// A `raw_echo` connection: the banner, then echo until the peer closes.
fn serve_raw(mut stream: &TcpStream, banner: &[u8], shared: &Shared) -> Closed {
    if let Err(e) = stream.write_all(banner) {
        return Closed::Error(format!("writing the banner: {e}"));
    }
    echo(stream, Vec::new(), Echo::UntilClosed, shared)
}

/// Echoes `early` (bytes read past a head), then what arrives, as `how` says. Reads wake every
/// 50 ms to notice a stop.
fn echo(mut stream: &TcpStream, early: Vec<u8>, how: Echo, shared: &Shared) -> Closed {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    // Records and writes back `bytes`; says how the connection ended, if it did.
    let send_back = |mut to: &TcpStream, bytes: &[u8]| -> Option<Closed> {
        shared.raw_bytes.lock().unwrap().extend_from_slice(bytes);
        if let Err(e) = to.write_all(bytes) {
            return Some(Closed::Error(format!("echoing: {e}")));
        }
        (how == Echo::OnceThenClose).then_some(Closed::AfterResponse)
    };
    if !early.is_empty() {
        if let Some(closed) = send_back(stream, &early) {
            return closed;
        }
    }
    let mut buf = [0u8; 16 * 1024];
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return Closed::Stopped;
        }
        match stream.read(&mut buf) {
            Ok(0) => return Closed::ByPeer,
            Ok(n) => {
                if let Some(closed) = send_back(stream, &buf[..n]) {
                    return closed;
                }
            }
            Err(e) if wire::is_timeout(&e) || e.kind() == std::io::ErrorKind::Interrupted => {}
            // A reset by the peer counts as its close.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Closed::ByPeer,
            Err(e) => return Closed::Error(e.to_string()),
        }
    }
}

fn read_request(
    reader: &mut WireReader,
    conn: usize,
    index: usize,
    shared: &Shared,
) -> std::io::Result<Request> {
    let head = reader.read_head()?;
    let (start, headers) = wire::parse_head(&head)?;
    let mut parts = start.splitn(3, ' ');
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let version = parts.next().unwrap_or("").to_string();
    let chunked = wire::is_chunked(&headers);
    let body = if chunked {
        reader.read_chunked()?
    } else if let Some(n) = wire::content_length(&headers)? {
        reader.read_exact_bytes(n)?
    } else {
        Vec::new()
    };
    Ok(Request {
        method,
        target,
        version,
        headers,
        body,
        chunked,
        conn,
        index,
        seq: shared.seq.fetch_add(1, Ordering::SeqCst),
    })
}

/// The default body: names the request, padded to `size` with a deterministic pattern.
pub fn default_body(method: &str, target: &str, size: usize) -> Vec<u8> {
    let mut body = format!("ok {method} {target}\n").into_bytes();
    let mut i = 0u8;
    while body.len() < size {
        body.push(b'a' + i % 26);
        i = i.wrapping_add(1);
    }
    body
}

/// `/status/NNN...` asks the default responder for that status.
fn requested_status(target: &str) -> u16 {
    target
        .strip_prefix("/status/")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(200)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Whatever",
    }
}

fn default_reply(b: &BackendBuilder, req: &Request, served: usize) -> Reply {
    if b.close_without_answer.as_ref().is_some_and(|p| p(req)) {
        return Reply::Close;
    }
    if b.never_answer {
        return Reply::Hang;
    }
    let reply = default_response(b, req, served);
    match b.delay {
        Some(d) => Reply::Delayed(d, Box::new(reply)),
        None => reply,
    }
}

fn default_response(b: &BackendBuilder, req: &Request, served: usize) -> Reply {
    let status = requested_status(&req.target);
    let bodyless_status = status == 204 || status == 304 || (100..200).contains(&status);
    let body = if bodyless_status {
        Vec::new()
    } else {
        // HEAD announces the length GET would send (RFC 9110 §9.3.2).
        let method = if req.method == "HEAD" {
            "GET"
        } else {
            req.method.as_str()
        };
        default_body(method, &req.target, b.body_size)
    };
    let send_body = req.method != "HEAD" && !bodyless_status;
    let last = b.close_after.is_some_and(|n| served >= n);
    let mut head = String::new();
    let keep_open;
    match b.framing {
        Framing::ContentLength | Framing::CloseDelimited => {
            head.push_str(&format!("HTTP/1.0 {status} {}\r\n", reason(status)));
            head.push_str("Content-Type: text/plain\r\n");
            head.push_str(&format!(
                "X-Backend-Conn: {}\r\nX-Backend-Req: {}\r\n",
                req.conn, req.index
            ));
            let close_delimited = b.framing == Framing::CloseDelimited && !bodyless_status;
            if !close_delimited && !bodyless_status {
                head.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            let keepalive = req.wants_keepalive() && !close_delimited && !b.ignore_keepalive;
            if keepalive && last {
                head.push_str("Connection: close\r\n");
                keep_open = false;
            } else if keepalive {
                head.push_str("Connection: keep-alive\r\n");
                if let Some((timeout, max)) = b.announce_keepalive {
                    head.push_str(&format!("Keep-Alive: timeout={timeout}, max={max}\r\n"));
                }
                keep_open = true;
            } else {
                // A sloppy server that forgot keep-alive still leaves the socket open.
                keep_open = b.ignore_keepalive && !close_delimited;
            }
            head.push_str("\r\n");
            let mut bytes = head.into_bytes();
            if send_body {
                bytes.extend_from_slice(&body);
            }
            Reply::Raw { bytes, keep_open }
        }
        Framing::Chunked11 => {
            head.push_str(&format!("HTTP/1.1 {status} {}\r\n", reason(status)));
            head.push_str("Content-Type: text/plain\r\n");
            head.push_str(&format!(
                "X-Backend-Conn: {}\r\nX-Backend-Req: {}\r\n",
                req.conn, req.index
            ));
            if !bodyless_status {
                head.push_str("Transfer-Encoding: chunked\r\n");
            }
            keep_open = req.wants_keepalive() && !last;
            if !keep_open {
                head.push_str("Connection: close\r\n");
            }
            head.push_str("\r\n");
            let mut bytes = head.into_bytes();
            if send_body {
                for piece in body.chunks(7) {
                    bytes.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                    bytes.extend_from_slice(piece);
                    bytes.extend_from_slice(b"\r\n");
                }
                bytes.extend_from_slice(b"0\r\n\r\n");
            }
            Reply::Raw { bytes, keep_open }
        }
    }
}

/// Builds an `HTTP/1.0` response with Content-Length and the given extra header lines.
pub fn http10_response(status: u16, extra_headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.0 {status} {}\r\nContent-Length: {}\r\n",
        reason(status),
        body.len()
    );
    for (name, value) in extra_headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}
