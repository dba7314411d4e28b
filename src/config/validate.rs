//! Cross-field checks serde cannot express: addresses parse, routes name existing upstreams,
//! sizes are non-zero, timeouts are positive. Each failure carries the key path it is about.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use std::path::Path;

use super::{
    Config, Mode, PoolConfig, TcpKeepaliveConfig, TransparentConfig, UpstreamConfig,
    UpstreamTlsConfig, Workers,
};
use crate::upstream::{UpstreamTls, host_of};

/// A validation failure: which key, and why.
pub struct Invalid {
    pub key: String,
    pub reason: String,
}

type Check = Result<(), Invalid>;

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// hyper refuses a read buffer below this, so the request-head limit starts here.
const MIN_HEAD_BYTES: usize = 8192;

/// Below this, ordinary clients (cookies, user agents, long URLs) would be refused.
const MIN_LINE_BYTES: usize = 1024;

impl Config {
    pub(super) fn validate(&self) -> Check {
        self.validate_server()?;
        parse_addr("admin.listen", &self.admin.listen)?;
        if self
            .log
            .level
            .parse::<tracing_subscriber::filter::EnvFilter>()
            .is_err()
        {
            return Err(invalid(
                "log.level",
                format!("`{}` is not a log level or filter", self.log.level),
            ));
        }
        let mut names = HashSet::new();
        for (i, upstream) in self.upstream.iter().enumerate() {
            let key = format!("upstream[{i}]");
            if !names.insert(upstream.name.as_str()) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("upstream `{}` is defined twice", upstream.name),
                ));
            }
            validate_upstream(&key, upstream)?;
        }
        self.validate_routes()?;
        if let Some(t) = &self.transparent {
            validate_transparent(t)?;
        }
        match (&self.server.mode, &self.transparent) {
            (Mode::Transparent, None) => Err(invalid(
                "server.mode",
                "transparent mode needs a [transparent] table with at least one [[transparent.allow]] rule",
            )),
            (Mode::Reverse, _) if self.upstream.is_empty() => Err(invalid(
                "upstream",
                "reverse mode needs at least one [[upstream]]",
            )),
            _ => Ok(()),
        }
    }

    fn validate_server(&self) -> Check {
        let s = &self.server;
        if s.listen.is_empty() {
            return Err(invalid("server.listen", "needs at least one address"));
        }
        for (i, addr) in s.listen.iter().enumerate() {
            parse_addr(&format!("server.listen[{i}]"), addr)?;
        }
        if s.workers == Workers::Count(0) {
            return Err(invalid(
                "server.workers",
                "must be at least 1, or \"auto\" for one per core",
            ));
        }
        positive("server.max_connections", s.max_connections)?;
        positive("server.max_concurrent_requests", s.max_concurrent_requests)?;
        positive("server.max_request_headers", s.max_request_headers)?;
        if s.max_request_head_bytes < MIN_HEAD_BYTES {
            return Err(invalid(
                "server.max_request_head_bytes",
                format!("must be at least {MIN_HEAD_BYTES}"),
            ));
        }
        if s.max_request_header_bytes < MIN_LINE_BYTES {
            return Err(invalid(
                "server.max_request_header_bytes",
                format!("must be at least {MIN_LINE_BYTES}"),
            ));
        }
        if s.max_request_header_bytes > s.max_request_head_bytes {
            return Err(invalid(
                "server.max_request_header_bytes",
                format!(
                    "must not exceed max_request_head_bytes ({}): one line is part of the head",
                    s.max_request_head_bytes
                ),
            ));
        }
        for (i, protocol) in s.upgrades.iter().enumerate() {
            upgrade_protocol(&format!("server.upgrades[{i}]"), protocol)?;
        }
        for (key, d) in [
            ("server.header_read_timeout", s.header_read_timeout),
            ("server.client_idle_timeout", s.client_idle_timeout),
            ("server.body_read_timeout", s.body_read_timeout),
            ("server.request_timeout", s.request_timeout),
            ("server.drain_timeout", s.drain_timeout),
            ("server.upgrade_timeout", s.upgrade_timeout),
            ("server.send_timeout", s.send_timeout),
            ("server.tunnel_idle_timeout", s.tunnel_idle_timeout),
        ] {
            nonzero(key, d)?;
        }
        validate_keepalive("server.tcp_keepalive", &s.tcp_keepalive)?;
        self.validate_server_tls()
    }

    /// `tls_listen` and `[server.tls]` come together, in reverse mode, on addresses of their own.
    fn validate_server_tls(&self) -> Check {
        let s = &self.server;
        for (i, addr) in s.tls_listen.iter().enumerate() {
            let key = format!("server.tls_listen[{i}]");
            let parsed = parse_addr(&key, addr)?;
            let shared = s
                .listen
                .iter()
                .any(|l| l.parse::<SocketAddr>() == Ok(parsed));
            if parsed.port() != 0 && shared {
                return Err(invalid(key, format!("`{addr}` is also in server.listen")));
            }
        }
        let Some(tls) = &s.tls else {
            if !s.tls_listen.is_empty() {
                return Err(invalid(
                    "server.tls_listen",
                    "needs a [server.tls] table with the certificates to present",
                ));
            }
            return Ok(());
        };
        if s.tls_listen.is_empty() {
            return Err(invalid(
                "server.tls",
                "is set but server.tls_listen is empty: no listener would use it",
            ));
        }
        if s.mode == Mode::Transparent {
            return Err(invalid(
                "server.tls_listen",
                "TLS termination is for reverse mode; transparent mode passes TLS through",
            ));
        }
        if tls.certificates.is_empty() {
            return Err(invalid(
                "server.tls.certificates",
                "needs at least one { cert = \"...pem\", key = \"...key\" }",
            ));
        }
        nonzero("server.tls.handshake_timeout", tls.handshake_timeout)
    }

    fn validate_routes(&self) -> Check {
        if self.route.is_empty() && self.upstream.len() > 1 {
            return Err(invalid(
                "route",
                "with more than one upstream, [[route]] entries must say which requests go where",
            ));
        }
        for (i, route) in self.route.iter().enumerate() {
            let key = format!("route[{i}]");
            if !self.upstream.iter().any(|u| u.name == route.upstream) {
                return Err(invalid(
                    format!("{key}.upstream"),
                    format!("no [[upstream]] is named `{}`", route.upstream),
                ));
            }
            if !route.path_prefix.starts_with('/') {
                return Err(invalid(format!("{key}.path_prefix"), "must start with `/`"));
            }
            let host = &route.host;
            let wildcard_ok = host == "*"
                || !host.contains('*')
                || (host.starts_with("*.") && !host[1..].contains('*'));
            if !host.is_ascii() || host.is_empty() || !wildcard_ok {
                return Err(invalid(
                    format!("{key}.host"),
                    "must be an ASCII exact host, `*.suffix` or `*`",
                ));
            }
        }
        Ok(())
    }
}

fn validate_upstream(key: &str, u: &UpstreamConfig) -> Check {
    if u.name.is_empty()
        || !u
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(invalid(
            format!("{key}.name"),
            "must be non-empty letters, digits, `-`, `_` or `.`",
        ));
    }
    if u.servers.is_empty() {
        return Err(invalid(
            format!("{key}.servers"),
            "needs at least one host:port",
        ));
    }
    for (i, server) in u.servers.iter().enumerate() {
        parse_server(&format!("{key}.servers[{i}]"), server)?;
    }
    nonzero(&format!("{key}.connect_timeout"), u.connect_timeout)?;
    nonzero(&format!("{key}.retry_window"), u.retry_window)?;
    nonzero(&format!("{key}.response_timeout"), u.response_timeout)?;
    positive(
        &format!("{key}.max_buffered_body_bytes"),
        u.max_buffered_body_bytes,
    )?;
    validate_pool(&format!("{key}.pool"), &u.pool)?;
    if let Some(tls) = &u.tls {
        validate_tls(&format!("{key}.tls"), tls, &u.servers)?;
    }
    validate_keepalive(&format!("{key}.tcp_keepalive"), &u.tcp_keepalive)?;
    let h = &u.health;
    positive(
        &format!("{key}.health.max_failures"),
        h.max_failures as usize,
    )?;
    nonzero(&format!("{key}.health.base_ejection"), h.base_ejection)?;
    if h.max_ejection < h.base_ejection {
        return Err(invalid(
            format!("{key}.health.max_ejection"),
            "must be at least base_ejection",
        ));
    }
    nonzero(&format!("{key}.health.interval"), h.interval)?;
    nonzero(&format!("{key}.health.timeout"), h.timeout)?;
    if let Some(path) = &h.path
        && !path.starts_with('/')
    {
        return Err(invalid(format!("{key}.health.path"), "must start with `/`"));
    }
    if !(100..=599).contains(&h.expected_status) {
        return Err(invalid(
            format!("{key}.health.expected_status"),
            "must be an HTTP status code",
        ));
    }
    Ok(())
}

/// The verified name is a DNS name or an IP (given, or each server's host); `cert` and `key`
/// come together.
fn validate_tls(key: &str, tls: &UpstreamTlsConfig, servers: &[String]) -> Check {
    let name_ok = |name: &str| rustls::pki_types::ServerName::try_from(name).is_ok();
    match &tls.server_name {
        Some(name) if !name_ok(name) => {
            return Err(invalid(
                format!("{key}.server_name"),
                format!("`{name}` is not a DNS name or an IP address"),
            ));
        }
        Some(_) => {}
        None => {
            if let Some(server) = servers.iter().find(|s| !name_ok(host_of(s))) {
                return Err(invalid(
                    format!("{key}.server_name"),
                    format!("the host of `{server}` is not a name TLS can verify; set server_name"),
                ));
            }
        }
    }
    match (&tls.cert, &tls.key) {
        (Some(_), None) => Err(invalid(
            format!("{key}.key"),
            "a client certificate (`cert`) needs its private key (`key`)",
        )),
        (None, Some(_)) => Err(invalid(
            format!("{key}.cert"),
            "a private key (`key`) needs its client certificate (`cert`)",
        )),
        _ => Ok(()),
    }
}

impl Config {
    /// Loads every `[upstream.tls]`'s files (relative to `base`) into its `loaded` settings: a
    /// file that cannot be read or parsed, or a key that does not match its certificate, is an
    /// error of the key that names it.
    pub(super) fn load_tls_files(&mut self, base: &Path) -> Check {
        for (i, upstream) in self.upstream.iter_mut().enumerate() {
            let Some(tls) = &mut upstream.tls else {
                continue;
            };
            let loaded = UpstreamTls::load(tls, base)
                .map_err(|e| invalid(format!("upstream[{i}].tls.{}", e.key), e.to_string()))?;
            tls.loaded = Some(loaded);
        }
        Ok(())
    }
}

fn validate_keepalive(key: &str, ka: &TcpKeepaliveConfig) -> Check {
    nonzero(&format!("{key}.time"), ka.time)?;
    nonzero(&format!("{key}.interval"), ka.interval)?;
    positive(&format!("{key}.retries"), ka.retries as usize)
}

fn validate_pool(key: &str, p: &PoolConfig) -> Check {
    positive(&format!("{key}.max_size"), p.max_size)?;
    if p.min_idle > p.max_size {
        return Err(invalid(
            format!("{key}.min_idle"),
            format!("must not exceed max_size ({})", p.max_size),
        ));
    }
    positive(&format!("{key}.max_requests"), p.max_requests as usize)?;
    nonzero(&format!("{key}.idle_timeout"), p.idle_timeout)?;
    nonzero(&format!("{key}.max_lifetime"), p.max_lifetime)?;
    nonzero(&format!("{key}.wait_timeout"), p.wait_timeout)?;
    positive(&format!("{key}.max_connecting"), p.max_connecting)
}

fn validate_transparent(t: &TransparentConfig) -> Check {
    positive("transparent.max_destinations", t.max_destinations)?;
    nonzero("transparent.detect_timeout", t.detect_timeout)?;
    nonzero("transparent.connect_timeout", t.connect_timeout)?;
    nonzero("transparent.response_timeout", t.response_timeout)?;
    positive(
        "transparent.max_buffered_body_bytes",
        t.max_buffered_body_bytes,
    )?;
    validate_pool("transparent.pool", &t.pool)?;
    if t.allow.is_empty() {
        return Err(invalid(
            "transparent.allow",
            "needs at least one rule: every destination is denied by default",
        ));
    }
    for (i, rule) in t.allow.iter().enumerate() {
        let key = format!("transparent.allow[{i}]");
        parse_cidr(&rule.cidr).map_err(|reason| invalid(format!("{key}.cidr"), reason))?;
        parse_ports(&rule.ports).map_err(|reason| invalid(format!("{key}.ports"), reason))?;
    }
    Ok(())
}

fn parse_addr(key: &str, addr: &str) -> Result<SocketAddr, Invalid> {
    addr.parse()
        .map_err(|_| invalid(key, format!("`{addr}` is not an ip:port address")))
}

/// A backend may be named by IP or host name; either way it needs a port.
fn parse_server(key: &str, server: &str) -> Check {
    if let Ok(addr) = server.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(invalid(key, format!("`{server}` has no port (0)")));
        }
        return Ok(());
    }
    match server.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(())
        }
        _ => Err(invalid(
            key,
            format!("`{server}` is not a host:port address"),
        )),
    }
}

/// Parses `10.0.0.0/8` into a network address and prefix length.
pub fn parse_cidr(cidr: &str) -> Result<(IpAddr, u8), String> {
    let (ip, len) = match cidr.split_once('/') {
        Some((_, "")) => return Err(format!("`{cidr}` has an empty prefix length")),
        Some(pair) => pair,
        None => (cidr, ""),
    };
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("`{cidr}` is not a CIDR network"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = if len.is_empty() {
        max
    } else {
        len.parse::<u8>()
            .map_err(|_| format!("`{cidr}` has a bad prefix length"))?
    };
    if len > max {
        return Err(format!("`{cidr}` has a prefix longer than {max}"));
    }
    Ok((ip, len))
}

/// Parses `80,8000-8099` into inclusive port ranges.
pub fn parse_ports(ports: &str) -> Result<Vec<(u16, u16)>, String> {
    let mut ranges = Vec::new();
    for part in ports.split(',').map(str::trim) {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let (Ok(lo), Ok(hi)) = (lo.trim().parse::<u16>(), hi.trim().parse::<u16>()) else {
            return Err(format!("`{part}` is not a port or port range"));
        };
        if lo == 0 || lo > hi {
            return Err(format!("`{part}` is not a valid port range"));
        }
        ranges.push((lo, hi));
    }
    Ok(ranges)
}

fn positive(key: &str, value: usize) -> Check {
    if value == 0 {
        return Err(invalid(key, "must be greater than 0"));
    }
    Ok(())
}

fn nonzero(key: &str, d: Duration) -> Check {
    if d.is_zero() {
        return Err(invalid(key, "must be a positive duration"));
    }
    Ok(())
}

/// An `Upgrade` protocol name as RFC 9110 §7.8 spells it: a token, without a `/version`.
fn upgrade_protocol(key: &str, protocol: &str) -> Check {
    let is_tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if protocol.is_empty() || !protocol.chars().all(is_tchar) {
        return Err(invalid(
            key,
            format!("`{protocol}` is not a protocol name (a token such as \"websocket\")"),
        ));
    }
    Ok(())
}
