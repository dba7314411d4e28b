//! The `proxy.toml` schema: serde structs with their defaults, loading and validation.
//! Every error names the file, the line and the key; nothing starts half-configured.

mod locate;
pub mod validate;
mod workers;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use validate::parse_ports;
pub use workers::Workers;

/// A whole configuration file, after parsing and validation. Serializing it gives the
/// effective configuration (`longhaul check`): every key, defaults filled in, valid input again.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub upstream: Vec<UpstreamConfig>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RouteConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transparent: Option<TransparentConfig>,
}

/// Where the proxy listens and how it treats client connections.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// One address or a list of addresses to accept clients on.
    #[serde(deserialize_with = "one_or_many")]
    pub listen: Vec<String>,
    pub mode: Mode,
    /// Concurrent client connections; past this, accepting pauses.
    pub max_connections: usize,
    /// Concurrent requests in flight; past this, requests are shed with 503.
    pub max_concurrent_requests: usize,
    /// The whole first request head must arrive within this.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Honour keep-alive for clients that ask for it.
    pub client_keepalive: bool,
    /// A kept-alive client connection may wait this long for its next request.
    #[serde(with = "humantime_serde")]
    pub client_idle_timeout: Duration,
    /// Largest request head (request line plus every field line) in bytes; 431 beyond.
    pub max_request_head_bytes: usize,
    /// Longest single line of a request head: a field line over it gets 431, the request line 414.
    pub max_request_header_bytes: usize,
    /// Most headers a request may carry; 431 beyond.
    pub max_request_headers: usize,
    /// A request body must keep arriving: no gap between body bytes longer than this.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Whole-request guard from receipt to response head (covers pool wait, retries, upstream).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// On SIGTERM, how long in-flight requests may take to finish.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// On SIGUSR2, how long the new binary may take to start and report ready before it is
    /// stopped and this process keeps serving.
    #[serde(with = "humantime_serde")]
    pub upgrade_timeout: Duration,
    /// Whether `CONNECT host:port` is tunnelled (only to hosts a route names).
    pub allow_connect: bool,
    /// `Upgrade` protocols passed to the backend (names, case-insensitive); any other is
    /// stripped and the request goes upstream as a plain one (h2c smuggling).
    pub upgrades: Vec<String>,
    /// Event loops serving traffic, each on its own thread with its own listeners: "auto"
    /// (default) = one per core, or a number >= 1.
    pub workers: Workers,
    /// A client that accepts no response bytes for this long is disconnected.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// SO_KEEPALIVE on accepted client sockets: a client that vanished is noticed.
    pub tcp_keepalive: TcpKeepaliveConfig,
    /// An upgrade, CONNECT or raw TCP tunnel with no bytes either way for this long is closed.
    #[serde(with = "humantime_serde")]
    pub tunnel_idle_timeout: Duration,
    /// TLS listeners, next to `listen`; they need `[server.tls]`.
    #[serde(deserialize_with = "one_or_many")]
    pub tls_listen: Vec<String>,
    /// Certificates and handshake settings of the TLS listeners.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsConfig>,
    /// Written with the pid once the listeners are bound, removed at a clean exit. Relative
    /// paths are relative to the config file's directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid_file: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: vec!["127.0.0.1:8080".into()],
            mode: Mode::Reverse,
            max_connections: 10_000,
            max_concurrent_requests: 10_000,
            header_read_timeout: Duration::from_secs(10),
            client_keepalive: true,
            client_idle_timeout: Duration::from_secs(60),
            max_request_head_bytes: 65_536,
            max_request_header_bytes: 8192,
            max_request_headers: 100,
            body_read_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
            upgrade_timeout: Duration::from_secs(30),
            allow_connect: false,
            upgrades: vec!["websocket".into()],
            workers: Workers::Auto,
            send_timeout: Duration::from_secs(60),
            tcp_keepalive: TcpKeepaliveConfig::default(),
            tunnel_idle_timeout: Duration::from_secs(3600),
            tls_listen: Vec::new(),
            tls: None,
            pid_file: None,
        }
    }
}

/// `[server.tls]`: what the TLS listeners present and accept.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM chain and key pairs; SNI picks by the DNS names in each certificate, the first is
    /// the default. Relative paths are relative to the config file's directory.
    pub certificates: Vec<CertificateConfig>,
    pub min_version: TlsVersion,
    /// Stateless resumption tickets (TLS 1.2 and 1.3); a server-side session cache either way.
    pub session_tickets: bool,
    /// From accept to the end of the handshake; past it, the connection is closed.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

impl Default for ServerTlsConfig {
    fn default() -> Self {
        ServerTlsConfig {
            certificates: Vec::new(),
            min_version: TlsVersion::V1_2,
            session_tickets: true,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// One certificate chain and its private key, both PEM files.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The oldest TLS version a client may use.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Reverse,
    Transparent,
}

/// The admin listener: /metrics, /healthz, /readyz, /pools and the status page.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:9901".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
    pub access_log: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
            access_log: true,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// What longhaul speaks to a backend.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
pub enum Protocol {
    #[serde(rename = "http/1.0")]
    Http10,
    #[serde(rename = "http/1.1")]
    Http11,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http10 => "http/1.0",
            Protocol::Http11 => "http/1.1",
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    RoundRobin,
    LeastConn,
}

/// A named group of backend servers with one pool per server.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub name: String,
    pub servers: Vec<String>,
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
    #[serde(default = "default_balance")]
    pub balance: Balance,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// A request that never reached a backend (its connects failed) is retried this long.
    #[serde(default = "default_retry_window", with = "humantime_serde")]
    pub retry_window: Duration,
    #[serde(default = "default_response_timeout", with = "humantime_serde")]
    pub response_timeout: Duration,
    #[serde(default = "default_max_buffered_body_bytes")]
    pub max_buffered_body_bytes: usize,
    #[serde(default)]
    pub pool: PoolConfig,
    #[serde(default)]
    pub tcp_keepalive: TcpKeepaliveConfig,
    #[serde(default)]
    pub health: HealthConfig,
    /// Present: TLS to every server of this upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTlsConfig>,
}

/// `[upstream.tls]`: how longhaul speaks TLS to the servers of an upstream.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// SNI and the name verified; default: each server's host (an IP is verified as an IP SAN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// PEM file of the CA(s) to trust; default: the system's roots. Relative to the config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Check the backend's certificate; false only when written out (a warning at start).
    #[serde(default = "default_verify")]
    pub verify: bool,
    /// Client certificate chain (PEM) for mutual TLS; with `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM); with `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// The files loaded and the `ClientConfig` built from them (`Config::parse`).
    #[serde(skip)]
    pub loaded: Option<crate::upstream::UpstreamTls>,
}

fn default_verify() -> bool {
    true
}

fn default_protocol() -> Protocol {
    Protocol::Http10
}
fn default_balance() -> Balance {
    Balance::RoundRobin
}
/// Longer than two SYN retransmits (1 s, then 2 s more): a full accept backlog only delays.
fn default_connect_timeout() -> Duration {
    Duration::from_secs(3)
}
pub(crate) fn default_retry_window() -> Duration {
    Duration::from_secs(3)
}
fn default_response_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_buffered_body_bytes() -> usize {
    8 * 1024 * 1024
}

/// Per-server pool settings (also the template for transparent-mode destinations).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    pub max_size: usize,
    /// Connections opened at start and kept warm.
    pub min_idle: usize,
    /// Kept below the backend's announced or observed keep-alive timeout too.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Duration,
    /// Requests per connection before it is retired.
    pub max_requests: u32,
    /// Waiting for a free connection, then 503.
    #[serde(with = "humantime_serde")]
    pub wait_timeout: Duration,
    /// Requests queued for a free connection; past it, 503 at once.
    pub max_waiters: usize,
    /// Connections being opened to the server at once.
    pub max_connecting: usize,
    /// Learn, below `max_size`, how many requests the server serves at once (`upstream::gate`).
    pub adaptive: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_size: 32,
            min_idle: 2,
            idle_timeout: Duration::from_secs(30),
            max_lifetime: Duration::from_secs(600),
            max_requests: 1000,
            wait_timeout: Duration::from_secs(5),
            max_waiters: 1024,
            max_connecting: 4,
            adaptive: true,
        }
    }
}

/// SO_KEEPALIVE settings, for client sockets (`[server]`) and backend sockets (`[upstream]`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TcpKeepaliveConfig {
    #[serde(with = "humantime_serde")]
    pub time: Duration,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    pub retries: u32,
}

impl TcpKeepaliveConfig {
    /// The socket option these settings describe.
    pub fn socket_option(&self) -> socket2::TcpKeepalive {
        socket2::TcpKeepalive::new()
            .with_time(self.time)
            .with_interval(self.interval)
            .with_retries(self.retries)
    }
}

impl Default for TcpKeepaliveConfig {
    fn default() -> Self {
        TcpKeepaliveConfig {
            time: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            retries: 5,
        }
    }
}

/// Passive ejection and optional active health checks of a server.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Consecutive connect failures or resets that eject a server.
    pub max_failures: u32,
    /// First ejection time; doubles on each ejection in a row, up to `max_ejection`.
    #[serde(with = "humantime_serde")]
    pub base_ejection: Duration,
    #[serde(with = "humantime_serde")]
    pub max_ejection: Duration,
    /// Active check: GET this path on every server; none when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub expected_status: u16,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            max_failures: 5,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(30),
            path: None,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            expected_status: 200,
        }
    }
}

/// Sends requests whose Host and path match to a named upstream.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    #[serde(default = "default_route_host")]
    pub host: String,
    #[serde(default = "default_path_prefix")]
    pub path_prefix: String,
    pub upstream: String,
}

fn default_route_host() -> String {
    "*".into()
}
fn default_path_prefix() -> String {
    "/".into()
}

/// Transparent mode: redirected connections pooled per original destination.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TransparentConfig {
    pub protocol: Protocol,
    pub mark: u32,
    pub max_destinations: usize,
    #[serde(with = "humantime_serde")]
    pub detect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// Chunked request bodies are de-chunked for HTTP/1.0 destinations, at most this.
    pub max_buffered_body_bytes: usize,
    /// Listen with IP_TRANSPARENT for iptables TPROXY (needs CAP_NET_ADMIN); REDIRECT needs nothing.
    pub tproxy: bool,
    /// Template for every destination's pool; keys left out keep the transparent defaults.
    #[serde(deserialize_with = "transparent_pool")]
    pub pool: PoolConfig,
    pub allow: Vec<AllowRule>,
}

impl Default for TransparentConfig {
    fn default() -> Self {
        TransparentConfig {
            protocol: Protocol::Http10,
            mark: 0x4c48,
            max_destinations: 1024,
            detect_timeout: Duration::from_millis(300),
            connect_timeout: default_connect_timeout(),
            response_timeout: default_response_timeout(),
            max_buffered_body_bytes: default_max_buffered_body_bytes(),
            tproxy: false,
            pool: transparent_pool_defaults(),
            allow: Vec::new(),
        }
    }
}

/// Each destination gets a small pool: there may be many of them.
fn transparent_pool_defaults() -> PoolConfig {
    PoolConfig {
        max_size: 8,
        ..PoolConfig::default()
    }
}

/// A `[transparent.pool]` table: the keys it sets, over the transparent defaults.
fn transparent_pool<'de, D>(de: D) -> Result<PoolConfig, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Overrides {
        max_size: Option<usize>,
        min_idle: Option<usize>,
        #[serde(default, with = "humantime_serde::option")]
        idle_timeout: Option<Duration>,
        #[serde(default, with = "humantime_serde::option")]
        max_lifetime: Option<Duration>,
        max_requests: Option<u32>,
        #[serde(default, with = "humantime_serde::option")]
        wait_timeout: Option<Duration>,
        max_waiters: Option<usize>,
        max_connecting: Option<usize>,
        adaptive: Option<bool>,
    }
    let o = Overrides::deserialize(de)?;
    let d = transparent_pool_defaults();
    Ok(PoolConfig {
        max_size: o.max_size.unwrap_or(d.max_size),
        min_idle: o.min_idle.unwrap_or(d.min_idle),
        idle_timeout: o.idle_timeout.unwrap_or(d.idle_timeout),
        max_lifetime: o.max_lifetime.unwrap_or(d.max_lifetime),
        max_requests: o.max_requests.unwrap_or(d.max_requests),
        wait_timeout: o.wait_timeout.unwrap_or(d.wait_timeout),
        max_waiters: o.max_waiters.unwrap_or(d.max_waiters),
        max_connecting: o.max_connecting.unwrap_or(d.max_connecting),
        adaptive: o.adaptive.unwrap_or(d.adaptive),
    })
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    pub name: String,
    pub cidr: String,
    pub ports: String,
}

fn one_or_many<'de, D>(de: D) -> Result<Vec<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match OneOrMany::deserialize(de)? {
        OneOrMany::One(s) => Ok(vec![s]),
        OneOrMany::Many(v) => Ok(v),
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("error: {file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("error: {file}:{line}: {key}: {reason}")]
    Invalid {
        file: String,
        line: usize,
        key: String,
        reason: String,
    },
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.display().to_string(),
            source,
        })?;
        let mut config = Config::parse(&source, path)?;
        let dir = path.parent().unwrap_or(Path::new(""));
        config.resolve_tls_paths(dir);
        if let Some(pid_file) = &mut config.server.pid_file
            && pid_file.is_relative()
        {
            *pid_file = dir.join(&*pid_file);
        }
        config.check_tls_files().map_err(|e| ConfigError::Invalid {
            file: path.display().to_string(),
            line: locate::line_of_key(&source, &e.key),
            key: e.key,
            reason: e.reason,
        })?;
        Ok(config)
    }

    /// Certificate and key paths are relative to the config file's directory, whatever the
    /// working directory: `longhaul check` prints them as the proxy will open them.
    fn resolve_tls_paths(&mut self, dir: &Path) {
        let Some(tls) = &mut self.server.tls else {
            return;
        };
        for entry in &mut tls.certificates {
            for path in [&mut entry.cert, &mut entry.key] {
                if path.is_relative() {
                    *path = dir.join(&*path);
                }
            }
        }
    }

    /// Every certificate and key of `[server.tls]` parses, matches and has not expired.
    fn check_tls_files(&self) -> Result<(), validate::Invalid> {
        let Some(tls) = &self.server.tls else {
            return Ok(());
        };
        crate::tls::load_all(&tls.certificates)
            .map(drop)
            .map_err(|e| validate::Invalid {
                key: format!("server.tls.{}", e.key()),
                reason: e.reason(),
            })
    }

    /// Parses and validates config text; `path` only names the file in errors.
    pub fn parse(source: &str, path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let config: Config = toml::from_str(source).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            ConfigError::Invalid {
                file: file.clone(),
                line: locate::line_of(source, span.start),
                key: locate::key_at(source, span.start)
                    .or_else(|| locate::key_on_line(source, span.start))
                    .unwrap_or_else(|| "(syntax)".into()),
                reason: e.message().trim().to_string(),
            }
        })?;
        let mut config = config;
        let base = path.parent().unwrap_or(Path::new(""));
        config
            .validate()
            .and_then(|()| config.load_tls_files(base))
            .map_err(|e| ConfigError::Invalid {
                file,
                line: locate::line_of_key(source, &e.key),
                key: e.key,
                reason: e.reason,
            })?;
        Ok(config)
    }

    /// The effective configuration as TOML that parses back into an equal `Config`.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        let mut text = toml::to_string(self)?;
        if !text.ends_with('\n') {
            text.push('\n');
        }
        Ok(text)
    }

    /// The built-in configuration used by `longhaul demo` when no file is given.
    pub fn embedded_default() -> Config {
        Config::parse(DEFAULT_CONFIG, &PathBuf::from("proxy.toml (embedded)"))
            .expect("the shipped proxy.toml is valid")
    }

    /// Socket addresses of `[server] tls_listen`, validated at load.
    pub fn tls_listen_addrs(&self) -> Vec<SocketAddr> {
        self.server
            .tls_listen
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect()
    }

    /// Socket addresses of `[server] listen`, validated at load.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.server
            .listen
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect()
    }

    /// The upstreams every route may name, with implicit catch-all when there is one upstream.
    pub fn effective_routes(&self) -> Vec<RouteConfig> {
        if self.route.is_empty() && self.upstream.len() == 1 {
            return vec![RouteConfig {
                host: default_route_host(),
                path_prefix: default_path_prefix(),
                upstream: self.upstream[0].name.clone(),
            }];
        }
        self.route.clone()
    }
}

/// The shipped `proxy.toml`, compiled in so `longhaul demo` runs anywhere.
pub const DEFAULT_CONFIG: &str = include_str!("../proxy.toml");

#[cfg(test)]
mod tests;
