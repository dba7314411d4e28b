//! Fault injection for reliability tests: a port that refuses connects, a listener whose accept
//! queue is full (connects hang until the proxy's connect timeout), `[upstream.health]` in a
//! rendered config, and file descriptor counts from /proc. (A server restarted on its port is
//! `support::backend::Backend`: `stop`, then `start_on` the same address.)

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

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
