//! The event loops: `[server] workers` tokio `current_thread` runtimes, each on its own thread with
//! its own `SO_REUSEPORT` listener per address, so a connection is served where it was accepted.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::activation::{Inherited, Role};
use crate::config::TcpKeepaliveConfig;
use crate::server::{self, Serving};
use crate::upgrade::HandedSocket;

/// Why the event loops could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start event loop {worker}: {source}")]
    Start {
        worker: usize,
        source: std::io::Error,
    },
}

/// Every worker's listening sockets: `sockets[w]` is worker `w`'s socket for each address of
/// `addrs`, then of `tls_addrs`.
pub struct Listeners {
    /// The bound addresses, with the port the kernel chose where the config said 0.
    pub addrs: Vec<SocketAddr>,
    /// The bound TLS addresses (`tls_listen`), likewise.
    pub tls_addrs: Vec<SocketAddr>,
    /// A duplicate of each distinct listening socket, for the new process at an upgrade.
    pub handover: Vec<HandedSocket>,
    sockets: Vec<Vec<Bound>>,
}

/// One worker's socket for one address, and whether it is a TLS listener.
struct Bound {
    socket: std::net::TcpListener,
    tls: bool,
}

impl Listeners {
    /// Binds `workers` sockets per address, plain then TLS. Worker 0 binds the configured
    /// address; the others bind the address it got, so `127.0.0.1:0` means one port shared by all.
    pub fn bind(
        configured: &[SocketAddr],
        tls_configured: &[SocketAddr],
        workers: usize,
        ip_transparent: bool,
        client_keepalive: &TcpKeepaliveConfig,
    ) -> Result<Listeners, WorkerError> {
        let options = SocketOptions {
            workers,
            ip_transparent,
            client_keepalive,
        };
        Listeners::bind_or_adopt(configured, tls_configured, &options, &mut Inherited::none())
    }

    /// Like `bind`, but an address with sockets in `inherited` (socket activation, or an
    /// upgrade's hand-over) uses them instead of binding: see [`SocketOptions::share`].
    pub fn bind_or_adopt(
        configured: &[SocketAddr],
        tls_configured: &[SocketAddr],
        options: &SocketOptions<'_>,
        inherited: &mut Inherited,
    ) -> Result<Listeners, WorkerError> {
        let mut sockets: Vec<Vec<Bound>> = (0..options.workers).map(|_| Vec::new()).collect();
        let mut handover = Vec::new();
        let mut bind_all = |addrs: &[SocketAddr], role: Role| {
            let mut bound_addrs = Vec::new();
            for &addr in addrs {
                let err = |source| WorkerError::Bind { addr, source };
                let passed = inherited.take_all(role, addr);
                let distinct = if passed.is_empty() {
                    options.bind_each(addr)?
                } else {
                    passed
                };
                bound_addrs.push(distinct[0].local_addr().map_err(err)?);
                for socket in &distinct {
                    handover.push(HandedSocket {
                        role,
                        configured: addr,
                        fd: socket.try_clone().map_err(err)?.into(),
                    });
                }
                let per_worker = options.share(addr, distinct)?;
                for (worker, own) in sockets.iter_mut().zip(per_worker) {
                    worker.extend(own.into_iter().map(|socket| Bound {
                        socket,
                        tls: role == Role::TlsListen,
                    }));
                }
            }
            Ok::<_, WorkerError>(bound_addrs)
        };
        let addrs = bind_all(configured, Role::Listen)?;
        let tls_addrs = bind_all(tls_configured, Role::TlsListen)?;
        Ok(Listeners {
            addrs,
            tls_addrs,
            handover,
            sockets,
        })
    }
}

/// How client listeners are set up: how many workers share each address, and the options
/// accepted sockets inherit from their listener.
pub struct SocketOptions<'a> {
    pub workers: usize,
    pub ip_transparent: bool,
    pub client_keepalive: &'a TcpKeepaliveConfig,
}

impl SocketOptions<'_> {
    /// One SO_REUSEPORT socket per worker: worker 0 binds `addr`, the others the address it got.
    fn bind_each(&self, addr: SocketAddr) -> Result<Vec<std::net::TcpListener>, WorkerError> {
        let bind = |addr| {
            server::bind_shared(addr, self.ip_transparent, self.client_keepalive)
                .map_err(|source| WorkerError::Bind { addr, source })
        };
        let first = bind(addr)?;
        let bound = first
            .local_addr()
            .map_err(|source| WorkerError::Bind { addr, source })?;
        let mut all = vec![first];
        for _ in 1..self.workers {
            all.push(bind(bound)?);
        }
        Ok(all)
    }

    /// Spreads `sockets` (all listening on `addr`) over the workers: socket `i` goes to worker
    /// `i % workers`, and a worker left without one accepts on a duplicate of socket
    /// `w % sockets.len()` (a shared accept queue). Bound sockets are one per worker; a socket
    /// from systemd is one for all; an old process with more workers hands over more, and
    /// every one is accepted from, so no connection waits in a queue nobody reads.
    fn share(
        &self,
        addr: SocketAddr,
        sockets: Vec<std::net::TcpListener>,
    ) -> Result<Vec<Vec<std::net::TcpListener>>, WorkerError> {
        let err = |source| WorkerError::Bind { addr, source };
        for socket in &sockets {
            server::set_client_options(socket, addr, self.ip_transparent, self.client_keepalive)
                .map_err(err)?;
        }
        let count = sockets.len();
        let mut per_worker: Vec<Vec<std::net::TcpListener>> =
            (0..self.workers).map(|_| Vec::new()).collect();
        for w in count..self.workers {
            per_worker[w].push(sockets[w % count].try_clone().map_err(err)?);
        }
        for (i, socket) in sockets.into_iter().enumerate() {
            per_worker[i % self.workers].push(socket);
        }
        Ok(per_worker)
    }
}

/// The running event loops. Worker 0 runs on the caller's runtime, which also runs the admin
/// listener, signals, reload and the pools' background tasks; each other worker has a thread.
pub struct Workers {
    first: JoinSet<()>,
    /// Worker 0's `allocator::upkeep` (the other workers run theirs on their own threads).
    first_upkeep: tokio::task::AbortHandle,
    others: Vec<WorkerThread>,
}

struct WorkerThread {
    stop: oneshot::Sender<()>,
    /// Fires once this worker's accept loops have ended (after shutdown was signalled).
    done_accepting: Option<oneshot::Receiver<()>>,
    thread: std::thread::JoinHandle<()>,
}

impl Workers {
    /// Starts accepting on every worker. Must be called on a tokio runtime (worker 0's).
    pub fn start(listeners: Listeners, serving: &Serving) -> Result<Workers, WorkerError> {
        let mut per_worker = listeners.sockets.into_iter().enumerate();
        let mut first = JoinSet::new();
        if let Some((worker, sockets)) = per_worker.next() {
            for (listener, tls) in register(worker, sockets)? {
                first.spawn(server::accept_loop(listener, serving.clone(), worker, tls));
            }
        }
        let others = per_worker
            .map(|(worker, sockets)| WorkerThread::spawn(worker, sockets, serving.clone()))
            .collect::<Result<_, _>>()?;
        let first_upkeep = tokio::spawn(crate::allocator::upkeep()).abort_handle();
        Ok(Workers {
            first,
            first_upkeep,
            others,
        })
    }

    /// Returns once every accept loop has seen the shutdown signal and ended. An accept loop
    /// ends only after handing the connection it accepted to a task holding a connection slot,
    /// so after this no connection is in between: drain can count the slots.
    pub async fn stop_accepting(&mut self) {
        while self.first.join_next().await.is_some() {}
        for worker in &mut self.others {
            if let Some(done) = worker.done_accepting.take() {
                let _ = done.await;
            }
        }
    }

    /// Ends every accept loop and every connection still open on any worker, then waits for the
    /// worker threads to exit. Drain (waiting for connections to finish) happens before this.
    pub async fn stop(&mut self) {
        self.first.abort_all();
        self.first_upkeep.abort();
        let threads: Vec<_> = std::mem::take(&mut self.others)
            .into_iter()
            .map(|w| {
                let _ = w.stop.send(());
                w.thread
            })
            .collect();
        let joined = tokio::task::spawn_blocking(move || {
            for thread in threads {
                if thread.join().is_err() {
                    tracing::error!("an event loop thread panicked");
                }
            }
        });
        let _ = joined.await;
    }
}

impl WorkerThread {
    /// A thread running its own `current_thread` runtime: accept loops on `sockets` and the
    /// connections they accept, until stopped. Dropping the runtime ends what is still open.
    fn spawn(
        worker: usize,
        sockets: Vec<Bound>,
        serving: Serving,
    ) -> Result<WorkerThread, WorkerError> {
        let start = |source| WorkerError::Start { worker, source };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(start)?;
        let listeners = {
            let _on_this_runtime = runtime.enter();
            register(worker, sockets)?
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let (accepting_ended, done_accepting) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("longhaul-worker-{worker}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let mut loops = JoinSet::new();
                    for (listener, tls) in listeners {
                        loops.spawn(server::accept_loop(listener, serving.clone(), worker, tls));
                    }
                    let accepting = async {
                        while loops.join_next().await.is_some() {}
                        let _ = accepting_ended.send(());
                        std::future::pending::<()>().await
                    };
                    tokio::select! {
                        _ = stopped => {}
                        () = accepting => {}
                        () = crate::allocator::upkeep() => {}
                    }
                });
            })
            .map_err(start)?;
        Ok(WorkerThread {
            stop,
            done_accepting: Some(done_accepting),
            thread,
        })
    }
}

/// Registers `worker`'s sockets with the runtime entered on this thread.
fn register(worker: usize, sockets: Vec<Bound>) -> Result<Vec<(TcpListener, bool)>, WorkerError> {
    sockets
        .into_iter()
        .map(|b| {
            TcpListener::from_std(b.socket)
                .map(|listener| (listener, b.tls))
                .map_err(|source| WorkerError::Start { worker, source })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_0_is_one_port_every_worker_binds() {
        let configured: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let listeners =
            Listeners::bind(&[configured], &[], 3, false, &TcpKeepaliveConfig::default())
                .expect("bind");
        let port = listeners.addrs[0].port();
        let ports: Vec<Vec<u16>> = listeners
            .sockets
            .iter()
            .map(|w| {
                w.iter()
                    .map(|b| b.socket.local_addr().unwrap().port())
                    .collect()
            })
            .collect();
        assert_eq!(ports, vec![vec![port]; 3]);
    }

    #[test]
    fn an_address_already_taken_without_reuseport_is_a_bind_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        match Listeners::bind(&[addr], &[], 2, false, &TcpKeepaliveConfig::default()) {
            Err(WorkerError::Bind { addr: at, source }) => {
                assert_eq!((at, source.kind()), (addr, std::io::ErrorKind::AddrInUse));
            }
            other => panic!("expected a bind error, got {:?}", other.map(|l| l.addrs)),
        }
    }
}
