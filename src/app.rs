//! Wires a configuration into a running proxy: binds listeners, warms the pools, starts the accept
//! loops and the admin listener; reloads on SIGHUP, upgrades on SIGUSR2, drains on shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::activation::{Inherited, Role};
use crate::config::Config;
use crate::metrics::{CloseReason, METRICS};
use crate::pid_file::{PidFile, PidFileError};
use crate::proxy::{Proxy, Routing, UpgradeAllowList};
use crate::server::{self, ClientSettings, Serving};
use crate::tls::{TlsError, TlsTerminator};
use crate::upgrade::{HandedSocket, Launch};
use crate::workers::{Listeners, SocketOptions, WorkerError, Workers};

/// Why the proxy could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Workers(#[from] WorkerError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    PidFile(#[from] PidFileError),
}

/// Beyond the longest `connect_timeout`, how long a start waits for its pools to be warm.
const WARM_UP_SLACK: std::time::Duration = std::time::Duration::from_secs(1);

/// A started proxy: where it listens, and the handle to stop it.
pub struct App {
    pub listen: Vec<SocketAddr>,
    pub tls_listen: Vec<SocketAddr>,
    pub admin: SocketAddr,
    config: Config,
    config_path: Option<PathBuf>,
    routing: Arc<ArcSwap<Routing>>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    workers: Workers,
    limit: Arc<Semaphore>,
    transparent: Option<Arc<crate::transparent::Transparent>>,
    tls: Option<Arc<TlsTerminator>>,
    pid_file: Option<PidFile>,
    /// Upstream connections open when accepting started (after the warm-up).
    pooled_at_start: usize,
    /// Every listening socket, duplicated, for the new process at an upgrade.
    handover: Vec<HandedSocket>,
}

impl App {
    /// Binds every listener, starts serving, writes the pid file. `config_path` enables
    /// reloading.
    pub async fn start(config: Config, config_path: Option<PathBuf>) -> Result<App, AppError> {
        let mut app = App::start_with(config, config_path, Inherited::none()).await?;
        app.announce()?;
        Ok(app)
    }

    /// Like `start`, but a listener with sockets in `inherited` (systemd socket activation, or
    /// the old process's at an upgrade) serves on them instead of binding. The pools are warm
    /// (`min_idle`, within the longest `connect_timeout`) before the first accept. Not yet
    /// announced (`announce`): a new process at an upgrade does that only once the old one
    /// says `go`.
    pub async fn start_with(
        config: Config,
        config_path: Option<PathBuf>,
        mut inherited: Inherited,
    ) -> Result<App, AppError> {
        let routing = Arc::new(ArcSwap::from_pointee(Routing::new(&config, None)));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let settings = Arc::new(ClientSettings::from_config(&config.server));
        let limit = Arc::new(Semaphore::new(config.server.max_connections));
        let upgrades = UpgradeAllowList::new(&config.server.upgrades);
        let proxy = Proxy::new(routing.clone(), settings.proxy_options, upgrades);
        let stack = server::stack(proxy, &config.server, config.log.access_log);
        let tproxy = config.transparent.as_ref().is_some_and(|t| t.tproxy);
        let tls = match &config.server.tls {
            Some(tls) => Some(Arc::new(TlsTerminator::new(tls)?)),
            None => None,
        };
        let options = SocketOptions {
            workers: config.server.workers.count(),
            ip_transparent: tproxy,
            client_keepalive: &config.server.tcp_keepalive,
        };
        let mut listeners = Listeners::bind_or_adopt(
            &config.listen_addrs(),
            &config.tls_listen_addrs(),
            &options,
            &mut inherited,
        )?;
        let listen = listeners.addrs.clone();
        let tls_listen = listeners.tls_addrs.clone();
        let mut handover = std::mem::take(&mut listeners.handover);
        let transparent = crate::transparent::Transparent::for_config(&config, &listen);
        let serving = Serving {
            stack,
            settings,
            limit: limit.clone(),
            shutdown: shutdown_rx.clone(),
            transparent: transparent.clone(),
            tls: tls.clone(),
        };
        let admin_addr: SocketAddr = config.admin.listen.parse().expect("validated");
        let admin_bind = |source| AppError::Bind {
            addr: admin_addr,
            source,
        };
        let admin_listener = match inherited.take_all(Role::Admin, admin_addr).pop() {
            Some(passed) => server::adopt(passed),
            None => server::bind(admin_addr),
        }
        .map_err(admin_bind)?;
        inherited.close_unused();
        handover.push(HandedSocket {
            role: Role::Admin,
            configured: admin_addr,
            fd: socket2::SockRef::from(&admin_listener)
                .try_clone()
                .map_err(admin_bind)?
                .into(),
        });
        let admin = admin_listener.local_addr().expect("bound");
        let warm_bound = config.upstream.iter().map(|u| u.connect_timeout).max();
        let warm_bound = warm_bound.unwrap_or_default() + WARM_UP_SLACK;
        if config.server.upgrade_timeout < warm_bound {
            tracing::warn!(upgrade_timeout = ?config.server.upgrade_timeout, warm_up = ?warm_bound,
                "upgrade_timeout is shorter than a warm-up may take (connect_timeout + 1s): \
                 an upgrade may give up on a new process that is still warming");
        }
        if !routing.load().warm_up(warm_bound).await {
            tracing::warn!(waited = ?warm_bound, "not every pool is warm; accepting anyway");
        }
        let pooled = routing.load().pooled();
        let workers = Workers::start(listeners, &serving)?;
        let sources = crate::admin::Sources {
            routing: routing.clone(),
            transparent: transparent.clone(),
        };
        tasks.spawn(crate::admin::serve(admin_listener, sources, shutdown_rx));
        let app = App {
            listen,
            tls_listen,
            admin,
            config,
            config_path,
            routing,
            shutdown,
            tasks,
            workers,
            limit,
            transparent,
            tls,
            pid_file: None,
            pooled_at_start: pooled,
            handover,
        };
        Ok(app)
    }

    /// Says this process is the proxy: writes `[server] pid_file` (if set) and logs `longhaul
    /// started`. Every listener accepts by then: a script that sees either can connect to each.
    pub fn announce(&mut self) -> Result<(), AppError> {
        if let Some(path) = &self.config.server.pid_file {
            self.pid_file = Some(PidFile::write(path)?);
        }
        self.log_started(self.pooled_at_start);
        Ok(())
    }

    /// `pooled`: upstream connections open when accepting started.
    fn log_started(&self, pooled: usize) {
        let join = |addrs: &[SocketAddr]| {
            addrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let upstreams = self
            .config
            .upstream
            .iter()
            .map(|u| {
                format!(
                    "{} [{}] {} max_size={} min_idle={}",
                    u.name,
                    u.servers.join(" "),
                    u.protocol.as_str(),
                    u.pool.max_size,
                    u.pool.min_idle
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        tracing::info!(
            listen = %join(&self.listen),
            tls_listen = %join(&self.tls_listen),
            admin = %self.admin,
            mode = ?self.config.server.mode,
            workers = self.config.server.workers.count(),
            upstreams = %upstreams,
            pooled,
            version = env!("CARGO_PKG_VERSION"),
            "longhaul started"
        );
    }

    /// Re-reads the config file; an invalid file (a bad certificate or key included) changes
    /// nothing. Routes, upstreams and the TLS certificates apply live; other `[server]` and
    /// `[admin]` changes need a restart and are reported.
    pub fn reload(&mut self) {
        let Some(path) = self.config_path.clone() else {
            return;
        };
        let next = match Config::load(&path) {
            Ok(next) => next,
            Err(e) => {
                METRICS
                    .config_reloads_total
                    .with_label_values(&["error"])
                    .inc();
                tracing::error!(error = %e, "reload failed; keeping the running configuration");
                return;
            }
        };
        if self.restart_only_changes(&next) {
            tracing::warn!(
                "[server], [admin], [log] and [transparent] changes take effect on restart only"
            );
        }
        self.reload_certificates(&next);
        let old = self.routing.load_full();
        let routing = Routing::new(&next, Some(&old));
        old.retire_unused(&routing);
        self.routing.store(Arc::new(routing));
        self.config.upstream = next.upstream;
        self.config.route = next.route;
        METRICS
            .config_reloads_total
            .with_label_values(&["ok"])
            .inc();
        tracing::info!(path = %path.display(), "configuration reloaded");
    }

    /// Whether `next` changes a table that applies on restart only. The certificate list of
    /// `[server.tls]` is not one: it applies on reload.
    fn restart_only_changes(&self, next: &Config) -> bool {
        let mut server = next.server.clone();
        if let (Some(next_tls), Some(running)) = (&mut server.tls, &self.config.server.tls) {
            next_tls.certificates = running.certificates.clone();
        }
        server != self.config.server
            || next.admin != self.config.admin
            || next.log != self.config.log
            || next.transparent != self.config.transparent
    }

    /// New TLS handshakes present the certificates `next` names, read again from their files
    /// (`Config::load` has just checked them); on any problem the running ones stay.
    fn reload_certificates(&mut self, next: &Config) {
        let (Some(terminator), Some(tls)) = (&self.tls, &next.server.tls) else {
            return;
        };
        match terminator.reload(tls) {
            Ok(()) => {
                if let Some(running) = &mut self.config.server.tls {
                    running.certificates = tls.certificates.clone();
                }
                tracing::info!(
                    certificates = tls.certificates.len(),
                    "TLS certificates reloaded"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS certificates not reloaded; keeping the running ones");
            }
        }
    }

    /// Starts the binary at `launch` with this process's listening sockets and waits until it
    /// is ready (`upgrade_timeout`), or until `stopping` completes (SIGTERM, SIGINT), which
    /// calls the upgrade off. Failures are logged with the reason.
    pub async fn upgrade(
        &self,
        launch: Option<&Launch>,
        stopping: impl Future<Output = ()>,
    ) -> UpgradeOutcome {
        let Some(launch) = launch else {
            tracing::warn!("SIGUSR2 ignored: this process does not know its binary's path");
            return UpgradeOutcome::KeepServing;
        };
        crate::systemd::notify_reloading();
        let timeout = self.config.server.upgrade_timeout;
        match crate::upgrade::start_successor(launch, &self.handover, timeout, stopping).await {
            Ok(pid) => {
                tracing::info!(
                    pid,
                    "upgrade: the new process is ready; this one stops accepting and drains"
                );
                UpgradeOutcome::HandedOver
            }
            Err(crate::upgrade::UpgradeError::Stopping) => {
                tracing::info!("upgrade called off: this process was asked to stop");
                UpgradeOutcome::Stop
            }
            Err(e) => {
                tracing::error!(error = %e, "upgrade failed; this process keeps serving");
                crate::systemd::notify_ready(false);
                UpgradeOutcome::KeepServing
            }
        }
    }

    /// Stops accepting, lets in-flight requests finish within `drain_timeout`, closes the pools.
    pub async fn shutdown(mut self) {
        // The duplicates kept for an upgrade would hold the listening sockets open: closed
        // first, so new connections are refused (or go to the new process) rather than queued.
        self.handover.clear();
        let _ = self.shutdown.send(true);
        let max = self.config.server.max_connections as u32;
        // Accept loops first: one may hold a connection it accepted as the signal came, which
        // takes its slot before the count below, so it is drained rather than dropped.
        let drained = tokio::time::timeout(self.config.server.drain_timeout, async {
            self.workers.stop_accepting().await;
            self.limit.acquire_many(max).await
        })
        .await;
        if drained.is_err() {
            tracing::warn!("drain timeout reached; closing the remaining client connections");
        }
        self.tasks.abort_all();
        self.workers.stop().await;
        if let Some(t) = &self.transparent {
            t.destinations.close_all();
        }
        let routing = self.routing.load_full();
        for upstream in &routing.upstreams {
            upstream.close_unused(None, CloseReason::Shutdown);
        }
        self.log_stopped(&routing);
        if let Some(pid_file) = self.pid_file.take() {
            pid_file.remove();
        }
    }

    fn log_stopped(&self, routing: &Routing) {
        let (mut opened, mut requests, mut reused) = (0, 0, 0);
        for upstream in &routing.upstreams {
            for sp in &upstream.servers {
                let m = &sp.server.metrics;
                opened += m.opened.get();
                reused += m.requests_reused.get();
                requests += m.requests_reused.get() + m.requests_new.get();
            }
        }
        let reuse_rate = if requests == 0 {
            0.0
        } else {
            reused as f64 / requests as f64
        };
        tracing::info!(
            client_connections = METRICS.downstream_connections_total.get(),
            upstream_requests = requests,
            upstream_connections_opened = opened,
            reuse_rate = format!("{reuse_rate:.4}"),
            "longhaul stopped"
        );
    }
}

/// The signals a running proxy obeys. Installed before `App::start` logs that it is up: until
/// then a SIGHUP would still have its default action and kill the process instead of reloading.
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
    usr2: Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }

    async fn next(&mut self) -> Signalled {
        tokio::select! {
            _ = self.term.recv() => Signalled::Stop,
            _ = self.int.recv() => Signalled::Stop,
            _ = self.hup.recv() => Signalled::Reload,
            _ = self.usr2.recv() => Signalled::Upgrade,
        }
    }

    /// Completes at the next SIGTERM or SIGINT.
    async fn stop_requested(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

enum Signalled {
    Stop,
    Reload,
    Upgrade,
}

/// How an upgrade ended for the old process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeOutcome {
    /// The new process serves: this one drains and exits.
    HandedOver,
    /// The upgrade failed: this one serves on.
    KeepServing,
    /// A stop request came during the upgrade: both processes drain and exit.
    Stop,
}

/// Runs until SIGTERM or SIGINT, or until a SIGUSR2 upgrade has a new process serving;
/// reloads on SIGHUP. `launch` is what an upgrade starts.
pub async fn run_until_signalled(
    mut app: App,
    mut signals: Signals,
    launch: Option<Launch>,
) -> std::io::Result<()> {
    let upgraded = loop {
        match signals.next().await {
            Signalled::Stop => break false,
            Signalled::Reload => app.reload(),
            Signalled::Upgrade => {
                match app.upgrade(launch.as_ref(), signals.stop_requested()).await {
                    UpgradeOutcome::HandedOver => break true,
                    UpgradeOutcome::Stop => break false,
                    UpgradeOutcome::KeepServing => {}
                }
            }
        }
    };
    if !upgraded {
        crate::systemd::notify_stopping();
    }
    tracing::info!(upgraded, "shutting down: draining in-flight requests");
    app.shutdown().await;
    Ok(())
}
