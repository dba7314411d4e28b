//! The `longhaul` command line: run the proxy, check a config, upgrade a running proxy, run the
//! demo or the simulated backend. Exit codes: 0 ok, 1 runtime failure, 2 bad config or arguments.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use longhaul::activation::{ActivationError, Inherited};
use longhaul::config::Config;
use longhaul::output;
use longhaul::upgrade::{Launch, Predecessor};

/// mimalloc instead of glibc malloc: see Cargo.toml and bench/README.md ("Allocator").
#[global_allocator]
static ALLOCATOR: longhaul::allocator::Allocator = longhaul::allocator::Allocator;

#[derive(Parser)]
#[command(
    name = "longhaul",
    version,
    about = "Turns short client connections into long-lived pooled upstream connections"
)]
struct Cli {
    /// Configuration file.
    #[arg(long, global = true, default_value = "proxy.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration, print the effective configuration as TOML, exit 0 or 2.
    Check,
    /// Upgrade the running proxy in place: validate the configuration, send SIGUSR2 to the
    /// process the pid file names, and wait until a new process owns the listeners.
    Upgrade(UpgradeArgs),
    /// Show what longhaul does: the same short-connection load straight to a simulated
    /// legacy backend and through longhaul, side by side.
    Demo(DemoArgs),
    /// Run a simulated legacy backend (for demos, benchmarks and tests).
    BackendSim(SimArgs),
}

#[derive(clap::Args)]
struct UpgradeArgs {
    /// The running proxy's pid file; default: the configuration's `[server] pid_file`.
    #[arg(long)]
    pid_file: Option<PathBuf>,
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Requests to send each way.
    #[arg(long, short = 'n', default_value_t = 5000)]
    requests: usize,
    /// Requests in flight at once.
    #[arg(long, short = 'c', default_value_t = 32)]
    concurrency: usize,
    /// What each new backend connection costs (fork, TLS, a long round trip).
    #[arg(long, default_value = "5ms", value_parser = humantime::parse_duration)]
    conn_cost: std::time::Duration,
    /// The backend speaks TLS: direct clients do a TLS handshake per request, longhaul pools
    /// TLS connections to it (`[upstream.tls]` trusting the backend's generated CA).
    #[arg(long)]
    tls: bool,
}

#[derive(clap::Args)]
struct SimArgs {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: std::net::SocketAddr,
    /// Where `GET /stats` answers with accepted connections and requests (JSON).
    #[arg(long)]
    stats_listen: Option<std::net::SocketAddr>,
    /// Cost of each new connection, paid before its first response.
    #[arg(long, default_value = "5ms", value_parser = humantime::parse_duration)]
    conn_cost: std::time::Duration,
    /// Time every request waits before its response.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    response_delay: std::time::Duration,
    /// Idle keep-alive connections are closed after this.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    keepalive_timeout: std::time::Duration,
    /// Requests per connection before the backend closes it; 0 = unlimited.
    #[arg(long, default_value_t = 0)]
    max_requests: u32,
    /// Connections served at once, like a small device; more wait in the accept queue. 0 = unlimited.
    #[arg(long, default_value_t = 0)]
    max_connections: usize,
    /// Response body size in bytes.
    #[arg(long, default_value_t = 1024)]
    body_size: usize,
    /// HTTP version of the responses: http/1.0 or http/1.1.
    #[arg(long, default_value = "http/1.0", value_parser = parse_protocol)]
    protocol: longhaul::config::Protocol,
    /// Speak TLS, with a certificate for localhost and 127.0.0.1 generated at start; its CA is
    /// written to this file (PEM) for clients to trust.
    #[arg(long, value_name = "CA_FILE")]
    tls_ca_out: Option<PathBuf>,
}

fn parse_protocol(s: &str) -> Result<longhaul::config::Protocol, String> {
    match s {
        "http/1.0" => Ok(longhaul::config::Protocol::Http10),
        "http/1.1" => Ok(longhaul::config::Protocol::Http11),
        other => Err(format!("`{other}`: expected http/1.0 or http/1.1")),
    }
}

const EXIT_RUNTIME: u8 = 1;
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_CONFIG } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Some(Command::Check) => check(&cli.config),
        Some(Command::Upgrade(args)) => upgrade(&cli.config, args),
        Some(Command::BackendSim(args)) => backend_sim(args),
        Some(Command::Demo(args)) => demo(args),
        None => run(cli.config),
    }
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        output::stderr(format_args!("{e}\n"));
        ExitCode::from(EXIT_CONFIG)
    })
}

/// The effective configuration on stdout (it passes `check` itself), then `<file>: ok` on stderr.
fn check(path: &Path) -> ExitCode {
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    match config.to_toml() {
        Ok(text) => {
            output::stdout(text);
            output::stderr(format_args!("{}: ok\n", path.display()));
            ExitCode::SUCCESS
        }
        Err(e) => {
            output::stderr(format_args!("error: cannot print the configuration: {e}\n"));
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// Waits a little longer than the running process gives its successor.
const UPGRADE_WAIT_SLACK: std::time::Duration = std::time::Duration::from_secs(5);

fn upgrade(path: &Path, args: UpgradeArgs) -> ExitCode {
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let Some(pid_file) = args.pid_file.or(config.server.pid_file) else {
        output::stderr(format_args!(
            "error: no pid file: pass --pid-file or set [server] pid_file in {}\n",
            path.display()
        ));
        return ExitCode::from(EXIT_CONFIG);
    };
    let wait = config.server.upgrade_timeout + UPGRADE_WAIT_SLACK;
    match longhaul::upgrade::request(&pid_file, wait) {
        Ok((old, new)) => {
            output::stderr(format_args!(
                "upgraded: process {new} serves; process {old} drains and exits\n"
            ));
            ExitCode::SUCCESS
        }
        Err(e) => {
            output::stderr(format_args!("error: {e}\n"));
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn run(path: PathBuf) -> ExitCode {
    // Read first: an upgrade replaces the file at this path, and runs the new one.
    let launch = Launch::current().ok();
    let config = match load(&path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    // Before any thread starts: it reads and clears the environment.
    let (predecessor, inherited) = match adopted_sockets(&config) {
        Ok(adopted) => adopted,
        Err(code) => return code,
    };
    longhaul::logging::init(&config.log);
    proxy_runtime().block_on(async {
        let signals = match longhaul::app::Signals::install() {
            Ok(signals) => signals,
            Err(e) => {
                eprintln!("error: cannot install signal handlers: {e}");
                return ExitCode::from(EXIT_RUNTIME);
            }
        };
        let upgraded = predecessor.is_some();
        let mut app = match longhaul::app::App::start_with(config, Some(path), inherited).await {
            Ok(app) => app,
            Err(e) => {
                tracing::error!(error = %e, "longhaul failed to start");
                output::stderr(format_args!("error: {e}\n"));
                return ExitCode::from(EXIT_RUNTIME);
            }
        };
        // At an upgrade the old process decides whether this one takes over; until it says so,
        // this one neither writes the pid file nor tells systemd anything.
        let took_over = match predecessor {
            Some(predecessor) => predecessor.report_ready().await,
            None => Ok(()),
        };
        let started = took_over
            .map_err(|e| format!("upgrade: this process does not take over: {e}"))
            .and_then(|()| app.announce().map_err(|e| e.to_string()));
        if let Err(e) = started {
            tracing::error!(error = %e, "longhaul failed to start; draining what it accepted");
            output::stderr(format_args!("error: {e}\n"));
            app.shutdown().await;
            return ExitCode::from(EXIT_RUNTIME);
        }
        longhaul::systemd::notify_ready(upgraded);
        match longhaul::app::run_until_signalled(app, signals, launch).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                output::stderr(format_args!("error: {e}\n"));
                ExitCode::from(EXIT_RUNTIME)
            }
        }
    })
}

/// The sockets an upgrading old process hands over, with the channel to tell it this one is
/// ready; otherwise those systemd passed. A hand-over that fails exits 1, a bad passed socket 2.
fn adopted_sockets(config: &Config) -> Result<(Option<Predecessor>, Inherited), ExitCode> {
    match Predecessor::from_env() {
        Ok(Some((predecessor, inherited))) => Ok((Some(predecessor), inherited)),
        Ok(None) => match passed_sockets(config) {
            Ok(inherited) => Ok((None, inherited)),
            Err(e) => {
                output::stderr(format_args!("{e}\n"));
                Err(ExitCode::from(EXIT_CONFIG))
            }
        },
        Err(e) => {
            output::stderr(format_args!("error: {e}\n"));
            Err(ExitCode::from(EXIT_RUNTIME))
        }
    }
}

/// The sockets systemd passed (socket activation), each matching a configured listener.
fn passed_sockets(config: &Config) -> Result<Inherited, ActivationError> {
    let inherited = Inherited::from_env()?;
    let mut configured = config.listen_addrs();
    configured.extend(config.tls_listen_addrs());
    configured.extend(config.admin.listen.parse::<std::net::SocketAddr>());
    inherited.check_matched(&configured)?;
    Ok(inherited)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The main thread's runtime: signals, reload, the admin listener, the pools' background tasks,
/// and the first event loop. `App::start` starts the other `[server] workers` on their own threads.
fn proxy_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn backend_sim(args: SimArgs) -> ExitCode {
    let config = longhaul::sim::SimConfig {
        listen: args.listen,
        stats_listen: args.stats_listen,
        conn_cost: args.conn_cost,
        response_delay: args.response_delay,
        keepalive_timeout: args.keepalive_timeout,
        max_requests: args.max_requests,
        max_connections: args.max_connections,
        body_size: args.body_size,
        protocol: args.protocol,
        tls: args.tls_ca_out.is_some(),
    };
    runtime().block_on(async {
        let sim = match longhaul::sim::Sim::start(config).await {
            Ok(sim) => sim,
            Err(e) => {
                output::stderr(format_args!("error: backend-sim cannot listen: {e}\n"));
                return ExitCode::from(EXIT_RUNTIME);
            }
        };
        if let (Some(path), Some(pem)) = (&args.tls_ca_out, &sim.tls_ca_pem)
            && let Err(e) = std::fs::write(path, pem)
        {
            output::stderr(format_args!(
                "error: cannot write {}: {e}\n",
                path.display()
            ));
            return ExitCode::from(EXIT_RUNTIME);
        }
        let stats = sim.stats_addr.map_or("-".to_string(), |a| a.to_string());
        output::stdout(format_args!(
            "backend-sim listening on {} stats on {stats}\n",
            sim.addr
        ));
        let _ = tokio::signal::ctrl_c().await;
        ExitCode::SUCCESS
    })
}

fn demo(args: DemoArgs) -> ExitCode {
    let options = longhaul::demo::DemoOptions {
        requests: args.requests,
        concurrency: args.concurrency,
        conn_cost: args.conn_cost,
        tls: args.tls,
    };
    match runtime().block_on(longhaul::demo::run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            output::stderr(format_args!("demo failed: {e}\n"));
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}
