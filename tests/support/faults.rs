//! Fault injection for reliability tests: a minimal keep-alive backend bound to a chosen port (so
//! a test can stop it and start it again, like a restarted server), a listener whose accept queue
//! is full (connects hang until the proxy's connect timeout), `[upstream.health]` in a rendered
//! config, and file descriptor counts from /proc.

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::backend::http10_response;
use super::wire::{self, WireError, WireReader};

/// A loopback port that refuses connections for as long as this lives: bound but never
/// listening, so the kernel answers every connect with a reset and no other socket (another
/// test's backend) can take the port. `release` frees it for a server the test starts there.
pub struct RefusingPort {
    pub addr: SocketAddr,
    socket: socket2::Socket,
}

impl RefusingPort {
    pub fn new() -> RefusingPort {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("a socket");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("an address");
        socket.bind(&any.into()).expect("bind a free port");
        let addr = socket
            .local_addr()
            .expect("local addr")
            .as_socket()
            .expect("an inet address");
        RefusingPort { addr, socket }
    }

    /// Frees the port (a server is about to listen on it) and returns its address.
    pub fn release(self) -> SocketAddr {
        drop(self.socket);
        self.addr
    }
}

/// A loopback address nothing listens on right now (bound once to pick a free port, then
/// closed), for a server the test starts on it at once. For a port that must stay dead while
/// other tests run, use `RefusingPort`.
pub fn unused_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr")
}

/// Inserts an `[upstream.health]` table with these raw TOML `key = value` pairs into every
/// upstream of a config rendered by `ProxyConfig::render`.
pub fn with_health(rendered: &str, keys: &[(&str, &str)]) -> String {
    let mut table = String::from("\n[upstream.health]\n");
    for (k, v) in keys {
        table.push_str(&format!("{k} = {v}\n"));
    }
    table.push_str("\n[upstream.pool]\n");
    rendered.replace("\n[upstream.pool]\n", &table)
}

/// Open file descriptors of a process, from /proc/<pid>/fd.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/fd: {e}"))
}

/// This process's soft RLIMIT_NOFILE, from /proc/self/limits (children inherit it).
pub fn nofile_soft_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.split_whitespace().nth(3)?;
    if soft == "unlimited" {
        Some(u64::MAX)
    } else {
        soft.parse().ok()
    }
}

// === a backend on a fixed port ===

struct FixedShared {
    stop: AtomicBool,
    accepted: AtomicUsize,
    requests: AtomicUsize,
    answered: AtomicUsize,
    delay: Duration,
    streams: Mutex<Vec<TcpStream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// A small HTTP/1.0 backend on a chosen address: answers every request with `200`, a
/// Content-Length body `ok <target>\n` and keep-alive when asked, after `delay`. Dropping it
/// closes the listener and every connection (FIN) at once, like a server being restarted.
pub struct FixedBackend {
    addr: SocketAddr,
    shared: Arc<FixedShared>,
    accept: Option<JoinHandle<()>>,
}

impl FixedBackend {
    /// Binds `addr` (retrying for up to 3 s while the port is still in use) and starts serving.
    pub fn start(addr: SocketAddr, delay: Duration) -> FixedBackend {
        let deadline = Instant::now() + Duration::from_secs(3);
        let listener = loop {
            match TcpListener::bind(addr) {
                Ok(l) => break l,
                Err(e) if Instant::now() >= deadline => panic!("binding {addr}: {e}"),
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        };
        let shared = Arc::new(FixedShared {
            stop: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            answered: AtomicUsize::new(0),
            delay,
            streams: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let accept = thread::Builder::new()
            .name("fixed-backend-accept".into())
            .spawn(move || fixed_accept_loop(listener, s))
            .expect("spawn accept thread");
        FixedBackend {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Requests parsed (answered or not).
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Requests parsed but not answered (in flight, or cut off by a stop).
    pub fn unanswered(&self) -> usize {
        self.requests() - self.shared.answered.load(Ordering::SeqCst)
    }

    /// Stops like `drop` and returns how many parsed requests were never answered.
    pub fn stop(self) -> usize {
        let shared = self.shared.clone();
        drop(self);
        shared.requests.load(Ordering::SeqCst) - shared.answered.load(Ordering::SeqCst)
    }
}

impl Drop for FixedBackend {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(a) = self.accept.take() {
            join_within(a, Duration::from_secs(5));
        }
        for s in self.shared.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        let threads = std::mem::take(&mut *self.shared.threads.lock().unwrap());
        let deadline = Instant::now() + Duration::from_secs(5);
        for t in threads {
            join_within(t, deadline.saturating_duration_since(Instant::now()));
        }
    }
}

fn join_within(handle: JoinHandle<()>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !handle.is_finished() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    if handle.is_finished() {
        let _ = handle.join();
    }
}

fn fixed_accept_loop(listener: TcpListener, shared: Arc<FixedShared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else {
            thread::sleep(Duration::from_millis(5));
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let _ = stream.set_nodelay(true);
        if let Ok(clone) = stream.try_clone() {
            shared.streams.lock().unwrap().push(clone);
        }
        let s = shared.clone();
        let handle = thread::spawn(move || fixed_serve(stream, &s));
        let mut threads = shared.threads.lock().unwrap();
        threads.retain(|t| !t.is_finished());
        threads.push(handle);
    }
}

fn fixed_serve(mut stream: TcpStream, shared: &FixedShared) {
    let Ok(clone) = stream.try_clone() else {
        return;
    };
    let mut reader = WireReader::new(clone);
    loop {
        match reader.wait_for_data(Some(Duration::from_secs(30))) {
            Ok(()) => {}
            Err(WireError::Eof | WireError::IdleTimeout | WireError::Io(_)) => return,
        }
        let Ok(head) = reader.read_head() else { return };
        let Ok((start, headers)) = wire::parse_head(&head) else {
            return;
        };
        if let Ok(Some(n)) = wire::content_length(&headers) {
            if reader.read_exact_bytes(n).is_err() {
                return;
            }
        }
        shared.requests.fetch_add(1, Ordering::SeqCst);
        let target = start.split(' ').nth(1).unwrap_or("").to_string();
        let keepalive = wire::header_has_token(&headers, "connection", "keep-alive");
        let deadline = Instant::now() + shared.delay;
        while Instant::now() < deadline {
            if shared.stop.load(Ordering::SeqCst) {
                return;
            }
            thread::sleep(Duration::from_millis(2));
        }
        let extra: &[(&str, &str)] = if keepalive {
            &[("Connection", "keep-alive")]
        } else {
            &[]
        };
        let bytes = http10_response(200, extra, format!("ok {target}\n").as_bytes());
        if stream.write_all(&bytes).is_err() {
            return;
        }
        shared.answered.fetch_add(1, Ordering::SeqCst);
        if !keepalive {
            return;
        }
    }
}

// === a listener whose connects never complete ===

/// A loopback listener with a backlog of one that never accepts, its queue filled by the test
/// itself: the kernel drops further SYNs, so a connect to it hangs until the caller's timeout.
pub struct Blackhole {
    addr: SocketAddr,
    _listener: socket2::Socket,
    _fillers: Vec<TcpStream>,
}

impl Blackhole {
    pub fn start() -> Blackhole {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        socket.bind(&any.into()).expect("bind blackhole");
        socket.listen(0).expect("listen");
        let addr = socket
            .local_addr()
            .expect("addr")
            .as_socket()
            .expect("inet addr");
        let mut fillers = Vec::new();
        // Fill the accept queue until a connect times out: from then on SYNs are dropped.
        for _ in 0..8 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                Ok(s) => fillers.push(s),
                Err(_) => break,
            }
        }
        Blackhole {
            addr,
            _listener: socket,
            _fillers: fillers,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether a connect to it really hangs (for a precondition check).
    pub fn swallows_connects(&self) -> bool {
        TcpStream::connect_timeout(&self.addr, Duration::from_millis(300)).is_err()
    }
}
