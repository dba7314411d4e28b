//! Property tests (proptest) for the pure parts of longhaul: config parsing and validation,
//! route matching, hop-by-hop stripping and the framing guard. Case counts are kept small
//! enough that this file runs in a few seconds; the fuzz targets in fuzz/ go deeper.
//!
//! The plain `#[test]`s between the property blocks are regression cases for bugs these
//! properties found (each names the property that found it).

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use longhaul::config::{
    AllowRule, Balance, Config, ConfigError, HealthConfig, LogFormat, Mode, PoolConfig, Protocol,
    RouteConfig, TcpKeepaliveConfig, TransparentConfig, UpstreamConfig,
};
use longhaul::h1::{Framing, response_framing};
use longhaul::middleware::{framing, hop_by_hop};
use longhaul::route::{Router, normalize_host};
use proptest::prelude::*;
use proptest::sample::{Index, select};

// ---------------------------------------------------------------------------------------------
// Config: a model of a valid proxy.toml, rendered to text with varied layout.
// ---------------------------------------------------------------------------------------------

/// The table an entry belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Server,
    Admin,
    Log,
    Upstream(usize),
    Pool(usize),
    Keepalive(usize),
    Health(usize),
    Route(usize),
    Transparent,
    TransparentPool,
    Allow(usize),
}

impl Target {
    /// The key path prefix validation errors use for this table.
    fn path(self) -> String {
        match self {
            Target::Server => "server".into(),
            Target::Admin => "admin".into(),
            Target::Log => "log".into(),
            Target::Upstream(i) => format!("upstream[{i}]"),
            Target::Pool(i) => format!("upstream[{i}].pool"),
            Target::Keepalive(i) => format!("upstream[{i}].tcp_keepalive"),
            Target::Health(i) => format!("upstream[{i}].health"),
            Target::Route(i) => format!("route[{i}]"),
            Target::Transparent => "transparent".into(),
            Target::TransparentPool => "transparent.pool".into(),
            Target::Allow(i) => format!("transparent.allow[{i}]"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Int(u64),
    Dur(String, Duration),
    Str(String),
    Bool(bool),
    /// Elements, and whether the array is written one element per line.
    List(Vec<String>, bool),
}

impl Value {
    fn render(&self) -> String {
        match self {
            Value::Int(n) => n.to_string(),
            Value::Dur(text, _) => format!("{text:?}"),
            Value::Str(s) => format!("{s:?}"),
            Value::Bool(b) => b.to_string(),
            Value::List(items, _) => {
                let items: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
                format!("[{}]", items.join(", "))
            }
        }
    }
    fn dur(&self) -> Duration {
        match self {
            Value::Dur(_, d) => *d,
            other => panic!("not a duration: {other:?}"),
        }
    }
    fn int(&self) -> u64 {
        match self {
            Value::Int(n) => *n,
            other => panic!("not an integer: {other:?}"),
        }
    }
    fn str(&self) -> String {
        match self {
            Value::Str(s) => s.clone(),
            other => panic!("not a string: {other:?}"),
        }
    }
    fn bool(&self) -> bool {
        match self {
            Value::Bool(b) => *b,
            other => panic!("not a bool: {other:?}"),
        }
    }
    fn list(&self) -> Vec<String> {
        match self {
            Value::List(items, _) => items.clone(),
            Value::Str(s) => vec![s.clone()],
            other => panic!("not a list: {other:?}"),
        }
    }
}

/// Which invalid values a key can be mutated to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Validated `> 0`.
    Size,
    /// `server.max_request_head_bytes`: at least 8192.
    HeadBytes,
    /// `server.max_request_header_bytes`: at least 1024 (and generated at most 8192, under any head).
    LineBytes,
    /// Validated non-zero (or `>= base_ejection`).
    Duration,
    /// An ip:port listen address; errors name it without an index.
    Listen,
    /// An ip:port listen address or list of them; errors name `key[i]`.
    ListenList,
    /// A list of host:port backends; errors name `key[i]`.
    Servers,
    Cidr,
    Ports,
    /// Only the unknown-key mutation applies.
    Other,
}

#[derive(Debug, Clone)]
struct Entry {
    target: Target,
    key: &'static str,
    value: Value,
    kind: Kind,
}

/// A `[header]` block and the entries written under it (entries of sub-tables written as
/// dotted keys, `pool.max_size = 4`, live in their parent's block).
#[derive(Debug, Clone)]
struct Block {
    header: Option<String>,
    target: Target,
    entries: Vec<Entry>,
}

/// A generated valid config: blocks, plus layout choices.
#[derive(Debug, Clone)]
struct Doc {
    blocks: Vec<Block>,
    /// Decoration after the n-th line: 0 nothing, 1 blank line, 2 comment line.
    spacing: Vec<u8>,
    trailing_comments: Vec<bool>,
}

/// Where each entry (and each element of a multi-line list) ended up.
struct Rendered {
    text: String,
    /// (block, entry) -> line of its key; list elements -> their own lines.
    lines: Vec<Vec<(usize, Vec<usize>)>>,
}

impl Doc {
    fn entries(&self) -> impl Iterator<Item = (usize, usize, &Entry)> {
        self.blocks.iter().enumerate().flat_map(|(b, block)| {
            block
                .entries
                .iter()
                .enumerate()
                .map(move |(e, x)| (b, e, x))
        })
    }

    fn render(&self) -> Rendered {
        let mut out: Vec<String> = Vec::new();
        let mut lines = Vec::new();
        let mut deco = 0usize;
        let mut decorate = |out: &mut Vec<String>| {
            match self.spacing.get(deco % self.spacing.len().max(1)) {
                Some(1) => out.push(String::new()),
                Some(2) => out.push("# a comment = \"not a key\"".into()),
                _ => {}
            }
            deco += 1;
        };
        for block in &self.blocks {
            let mut block_lines = Vec::new();
            if let Some(header) = &block.header {
                out.push(header.clone());
            }
            decorate(&mut out);
            for entry in &block.entries {
                let key = dotted_key(block.target, entry);
                let comment = if self.trailing_comments[(out.len()) % self.trailing_comments.len()]
                {
                    "  # trailing"
                } else {
                    ""
                };
                match &entry.value {
                    Value::List(items, true) => {
                        let start = out.len() + 1;
                        out.push(format!("{key} = [{comment}"));
                        let mut element_lines = Vec::new();
                        for item in items {
                            element_lines.push(out.len() + 1);
                            out.push(format!("    {item:?},"));
                        }
                        out.push("]".into());
                        block_lines.push((start, element_lines));
                    }
                    value => {
                        block_lines.push((out.len() + 1, Vec::new()));
                        out.push(format!("{key} = {}{comment}", value.render()));
                    }
                }
                decorate(&mut out);
            }
            lines.push(block_lines);
        }
        Rendered {
            text: out.join("\n") + "\n",
            lines,
        }
    }

    /// The `Config` this document must parse to.
    fn expected(&self) -> Config {
        let mut c = Config::default();
        let upstreams = self
            .entries()
            .filter_map(|(_, _, e)| match e.target {
                Target::Upstream(i) => Some(i + 1),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        c.upstream = (0..upstreams).map(|_| default_upstream()).collect();
        let routes = self
            .entries()
            .filter_map(|(_, _, e)| match e.target {
                Target::Route(i) => Some(i + 1),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        c.route = (0..routes)
            .map(|_| RouteConfig {
                host: "*".into(),
                path_prefix: "/".into(),
                upstream: String::new(),
            })
            .collect();
        if self.blocks.iter().any(|b| b.target == Target::Transparent) {
            // Keys a `[transparent.pool]` table leaves out keep the transparent template
            // (max_size 8); see `transparent_pool_table_keeps_max_size_8` below.
            let t = TransparentConfig::default();
            c.transparent = Some(t);
        }
        for (_, _, e) in self.entries() {
            apply(&mut c, e);
        }
        c
    }
}

fn dotted_key(block: Target, entry: &Entry) -> String {
    let prefix = match (block, entry.target) {
        (Target::Upstream(_), Target::Pool(_)) | (Target::Transparent, Target::TransparentPool) => {
            "pool."
        }
        (Target::Upstream(_), Target::Keepalive(_)) => "tcp_keepalive.",
        (Target::Upstream(_), Target::Health(_)) => "health.",
        _ => "",
    };
    format!("{prefix}{}", entry.key)
}

fn default_upstream() -> UpstreamConfig {
    UpstreamConfig {
        name: String::new(),
        servers: Vec::new(),
        protocol: Protocol::Http10,
        balance: Balance::RoundRobin,
        connect_timeout: Duration::from_secs(3),
        retry_window: Duration::from_secs(3),
        response_timeout: Duration::from_secs(30),
        max_buffered_body_bytes: 8 * 1024 * 1024,
        pool: PoolConfig::default(),
        tcp_keepalive: TcpKeepaliveConfig::default(),
        health: HealthConfig::default(),
        tls: None,
    }
}

fn protocol(s: &str) -> Protocol {
    if s == "http/1.0" {
        Protocol::Http10
    } else {
        Protocol::Http11
    }
}

fn apply_pool(p: &mut PoolConfig, key: &str, v: &Value) {
    match key {
        "max_size" => p.max_size = v.int() as usize,
        "min_idle" => p.min_idle = v.int() as usize,
        "idle_timeout" => p.idle_timeout = v.dur(),
        "max_lifetime" => p.max_lifetime = v.dur(),
        "max_requests" => p.max_requests = v.int() as u32,
        "wait_timeout" => p.wait_timeout = v.dur(),
        other => panic!("no pool key {other}"),
    }
}

fn apply(c: &mut Config, e: &Entry) {
    let v = &e.value;
    match e.target {
        Target::Server => {
            let s = &mut c.server;
            match e.key {
                "listen" => s.listen = v.list(),
                "mode" => {
                    s.mode = if v.str() == "reverse" {
                        Mode::Reverse
                    } else {
                        Mode::Transparent
                    }
                }
                "max_connections" => s.max_connections = v.int() as usize,
                "max_concurrent_requests" => s.max_concurrent_requests = v.int() as usize,
                "header_read_timeout" => s.header_read_timeout = v.dur(),
                "client_keepalive" => s.client_keepalive = v.bool(),
                "client_idle_timeout" => s.client_idle_timeout = v.dur(),
                "max_request_head_bytes" => s.max_request_head_bytes = v.int() as usize,
                "max_request_header_bytes" => s.max_request_header_bytes = v.int() as usize,
                "max_request_headers" => s.max_request_headers = v.int() as usize,
                "body_read_timeout" => s.body_read_timeout = v.dur(),
                "request_timeout" => s.request_timeout = v.dur(),
                "drain_timeout" => s.drain_timeout = v.dur(),
                "allow_connect" => s.allow_connect = v.bool(),
                other => panic!("no server key {other}"),
            }
        }
        Target::Admin => c.admin.listen = v.str(),
        Target::Log => match e.key {
            "level" => c.log.level = v.str(),
            "format" => {
                c.log.format = if v.str() == "json" {
                    LogFormat::Json
                } else {
                    LogFormat::Text
                }
            }
            "access_log" => c.log.access_log = v.bool(),
            other => panic!("no log key {other}"),
        },
        Target::Upstream(i) => {
            let u = &mut c.upstream[i];
            match e.key {
                "name" => u.name = v.str(),
                "servers" => u.servers = v.list(),
                "protocol" => u.protocol = protocol(&v.str()),
                "balance" => {
                    u.balance = if v.str() == "least_conn" {
                        Balance::LeastConn
                    } else {
                        Balance::RoundRobin
                    }
                }
                "connect_timeout" => u.connect_timeout = v.dur(),
                "response_timeout" => u.response_timeout = v.dur(),
                "max_buffered_body_bytes" => u.max_buffered_body_bytes = v.int() as usize,
                other => panic!("no upstream key {other}"),
            }
        }
        Target::Pool(i) => apply_pool(&mut c.upstream[i].pool, e.key, v),
        Target::Keepalive(i) => {
            let k = &mut c.upstream[i].tcp_keepalive;
            match e.key {
                "time" => k.time = v.dur(),
                "interval" => k.interval = v.dur(),
                "retries" => k.retries = v.int() as u32,
                other => panic!("no tcp_keepalive key {other}"),
            }
        }
        Target::Health(i) => {
            let h = &mut c.upstream[i].health;
            match e.key {
                "max_failures" => h.max_failures = v.int() as u32,
                "base_ejection" => h.base_ejection = v.dur(),
                "max_ejection" => h.max_ejection = v.dur(),
                "path" => h.path = Some(v.str()),
                "interval" => h.interval = v.dur(),
                "timeout" => h.timeout = v.dur(),
                "expected_status" => h.expected_status = v.int() as u16,
                other => panic!("no health key {other}"),
            }
        }
        Target::Route(i) => {
            let r = &mut c.route[i];
            match e.key {
                "host" => r.host = v.str(),
                "path_prefix" => r.path_prefix = v.str(),
                "upstream" => r.upstream = v.str(),
                other => panic!("no route key {other}"),
            }
        }
        Target::Transparent => {
            let t = c.transparent.as_mut().expect("transparent table");
            match e.key {
                "protocol" => t.protocol = protocol(&v.str()),
                "mark" => t.mark = v.int() as u32,
                "max_destinations" => t.max_destinations = v.int() as usize,
                "detect_timeout" => t.detect_timeout = v.dur(),
                "connect_timeout" => t.connect_timeout = v.dur(),
                "response_timeout" => t.response_timeout = v.dur(),
                "max_buffered_body_bytes" => t.max_buffered_body_bytes = v.int() as usize,
                "tproxy" => t.tproxy = v.bool(),
                other => panic!("no transparent key {other}"),
            }
        }
        Target::TransparentPool => {
            let t = c.transparent.as_mut().expect("transparent table");
            apply_pool(&mut t.pool, e.key, v)
        }
        Target::Allow(i) => {
            let t = c.transparent.as_mut().expect("transparent table");
            while t.allow.len() <= i {
                t.allow.push(AllowRule {
                    name: String::new(),
                    cidr: String::new(),
                    ports: String::new(),
                });
            }
            let a = &mut t.allow[i];
            match e.key {
                "name" => a.name = v.str(),
                "cidr" => a.cidr = v.str(),
                "ports" => a.ports = v.str(),
                other => panic!("no allow key {other}"),
            }
        }
    }
}

// ----- value strategies -----

fn duration_value() -> BoxedStrategy<Value> {
    prop_oneof![
        (1u64..5000).prop_map(|n| Value::Dur(format!("{n}ms"), Duration::from_millis(n))),
        (1u64..600).prop_map(|n| Value::Dur(format!("{n}s"), Duration::from_secs(n))),
        (1u64..120).prop_map(|n| Value::Dur(format!("{n}m"), Duration::from_secs(60 * n))),
        (1u64..48).prop_map(|n| Value::Dur(format!("{n}h"), Duration::from_secs(3600 * n))),
        (1u64..10, 1u64..60)
            .prop_map(|(m, s)| Value::Dur(format!("{m}m {s}s"), Duration::from_secs(60 * m + s))),
    ]
    .boxed()
}

fn ms_range(lo: u64, hi: u64) -> BoxedStrategy<Value> {
    (lo..=hi)
        .prop_map(|n| Value::Dur(format!("{n}ms"), Duration::from_millis(n)))
        .boxed()
}

fn listen_addr() -> BoxedStrategy<String> {
    (
        select(vec!["127.0.0.1", "0.0.0.0", "[::1]", "[::]", "10.1.2.3"]),
        0u16..,
    )
        .prop_map(|(ip, port)| format!("{ip}:{port}"))
        .boxed()
}

fn server_addr() -> BoxedStrategy<String> {
    prop_oneof![
        (select(vec!["127.0.0.1", "[::1]", "192.0.2.7"]), 1u16..)
            .prop_map(|(h, p)| format!("{h}:{p}")),
        ("[a-z][a-z0-9-]{0,10}(\\.[a-z][a-z0-9-]{0,6}){0,2}", 1u16..)
            .prop_map(|(h, p)| format!("{h}:{p}")),
    ]
    .boxed()
}

fn addr_list(elem: BoxedStrategy<String>) -> BoxedStrategy<Value> {
    (prop::collection::vec(elem, 1..4), any::<bool>())
        .prop_map(|(items, multiline)| Value::List(items, multiline))
        .boxed()
}

type Spec = (&'static str, BoxedStrategy<Value>, Kind);

fn size(key: &'static str, lo: u64, hi: u64) -> Spec {
    (key, (lo..=hi).prop_map(Value::Int).boxed(), Kind::Size)
}
fn dur(key: &'static str) -> Spec {
    (key, duration_value(), Kind::Duration)
}
fn one_of(key: &'static str, options: &[&'static str]) -> Spec {
    (
        key,
        select(options.to_vec())
            .prop_map(|s| Value::Str(s.to_string()))
            .boxed(),
        Kind::Other,
    )
}
fn flag(key: &'static str) -> Spec {
    (
        key,
        any::<bool>().prop_map(Value::Bool).boxed(),
        Kind::Other,
    )
}

/// Each optional key present with probability 0.6, then shuffled into a random order.
fn section(target: Target, required: Vec<Spec>, optional: Vec<Spec>) -> BoxedStrategy<Vec<Entry>> {
    let required: Vec<BoxedStrategy<Option<Entry>>> = required
        .into_iter()
        .map(|(key, value, kind)| {
            value
                .prop_map(move |value| {
                    Some(Entry {
                        target,
                        key,
                        value,
                        kind,
                    })
                })
                .boxed()
        })
        .collect();
    let optional: Vec<BoxedStrategy<Option<Entry>>> = optional
        .into_iter()
        .map(|(key, value, kind)| {
            proptest::option::weighted(
                0.6,
                value.prop_map(move |value| Entry {
                    target,
                    key,
                    value,
                    kind,
                }),
            )
            .boxed()
        })
        .collect();
    (required, optional)
        .prop_map(|(r, o)| r.into_iter().chain(o).flatten().collect::<Vec<_>>())
        .prop_shuffle()
        .boxed()
}

fn pool_section(target: Target) -> BoxedStrategy<Vec<Entry>> {
    // min_idle <= 2 <= max_size keeps every combination with the defaults valid.
    section(
        target,
        vec![],
        vec![
            size("max_size", 2, 1000),
            (
                "min_idle",
                (0u64..=2).prop_map(Value::Int).boxed(),
                Kind::Other,
            ),
            dur("idle_timeout"),
            dur("max_lifetime"),
            size("max_requests", 1, 100_000),
            dur("wait_timeout"),
        ],
    )
}

fn server_section(transparent: bool) -> BoxedStrategy<Vec<Entry>> {
    let listen = prop_oneof![listen_addr().prop_map(Value::Str), addr_list(listen_addr()),].boxed();
    let mode: &[&'static str] = if transparent {
        &["transparent", "reverse"]
    } else {
        &["reverse"]
    };
    section(
        Target::Server,
        vec![],
        vec![
            ("listen", listen, Kind::ListenList),
            one_of("mode", mode),
            size("max_connections", 1, 1_000_000),
            size("max_concurrent_requests", 1, 1_000_000),
            dur("header_read_timeout"),
            flag("client_keepalive"),
            dur("client_idle_timeout"),
            (
                "max_request_head_bytes",
                (8192u64..1 << 20).prop_map(Value::Int).boxed(),
                Kind::HeadBytes,
            ),
            (
                "max_request_header_bytes",
                (1024u64..=8192).prop_map(Value::Int).boxed(),
                Kind::LineBytes,
            ),
            size("max_request_headers", 1, 10_000),
            dur("body_read_timeout"),
            dur("request_timeout"),
            dur("drain_timeout"),
            flag("allow_connect"),
        ],
    )
}

fn upstream_group(i: usize, name: String) -> BoxedStrategy<Vec<Block>> {
    let main = section(
        Target::Upstream(i),
        vec![
            ("name", Just(Value::Str(name)).boxed(), Kind::Other),
            ("servers", addr_list(server_addr()), Kind::Servers),
        ],
        vec![
            one_of("protocol", &["http/1.0", "http/1.1"]),
            one_of("balance", &["round_robin", "least_conn"]),
            dur("connect_timeout"),
            dur("response_timeout"),
            size("max_buffered_body_bytes", 1, 1 << 30),
        ],
    );
    let keepalive = section(
        Target::Keepalive(i),
        vec![],
        vec![dur("time"), dur("interval"), size("retries", 1, 100)],
    );
    let health = section(
        Target::Health(i),
        vec![],
        vec![
            size("max_failures", 1, 100),
            // base <= 1s <= max keeps every combination with the defaults (1s, 30s) valid.
            ("base_ejection", ms_range(1, 1000), Kind::Duration),
            ("max_ejection", ms_range(1000, 600_000), Kind::Duration),
            (
                "path",
                "/[a-z/]{0,12}".prop_map(Value::Str).boxed(),
                Kind::Other,
            ),
            dur("interval"),
            dur("timeout"),
            (
                "expected_status",
                (100u64..=599).prop_map(Value::Int).boxed(),
                Kind::Other,
            ),
        ],
    );
    // For each sub-table: 0 = left out, 1 = `[upstream.x]` block, 2 = dotted keys in the parent.
    (
        main,
        pool_section(Target::Pool(i)),
        keepalive,
        health,
        prop::array::uniform3(0u8..3),
    )
        .prop_map(move |(mut main, pool, ka, health, styles)| {
            let mut blocks = Vec::new();
            let mut subs = Vec::new();
            for ((entries, header, target), style) in [
                (pool, "[upstream.pool]", Target::Pool(i)),
                (ka, "[upstream.tcp_keepalive]", Target::Keepalive(i)),
                (health, "[upstream.health]", Target::Health(i)),
            ]
            .into_iter()
            .zip(styles)
            {
                match style {
                    1 => subs.push(Block {
                        header: Some(header.into()),
                        target,
                        entries,
                    }),
                    2 => main.extend(entries),
                    _ => {}
                }
            }
            blocks.push(Block {
                header: Some("[[upstream]]".into()),
                target: Target::Upstream(i),
                entries: main,
            });
            blocks.extend(subs);
            blocks
        })
        .boxed()
}

fn route_block(i: usize, names: Vec<String>) -> BoxedStrategy<Block> {
    let host = prop_oneof![
        Just("*".to_string()),
        "[a-z]{1,8}(\\.[a-z]{1,8}){0,2}",
        "\\*\\.[a-z]{1,8}(\\.[a-z]{1,8}){0,2}",
    ];
    section(
        Target::Route(i),
        vec![(
            "upstream",
            select(names).prop_map(Value::Str).boxed(),
            Kind::Other,
        )],
        vec![
            ("host", host.prop_map(Value::Str).boxed(), Kind::Other),
            (
                "path_prefix",
                "/[a-z0-9/._-]{0,12}".prop_map(Value::Str).boxed(),
                Kind::Other,
            ),
        ],
    )
    .prop_map(move |entries| Block {
        header: Some("[[route]]".into()),
        target: Target::Route(i),
        entries,
    })
    .boxed()
}

fn transparent_group() -> BoxedStrategy<Vec<Block>> {
    let main = section(
        Target::Transparent,
        vec![],
        vec![
            one_of("protocol", &["http/1.0", "http/1.1"]),
            (
                "mark",
                (0u64..=u32::MAX as u64).prop_map(Value::Int).boxed(),
                Kind::Other,
            ),
            size("max_destinations", 1, 100_000),
            dur("detect_timeout"),
            dur("connect_timeout"),
            dur("response_timeout"),
            size("max_buffered_body_bytes", 1, 1 << 30),
            flag("tproxy"),
        ],
    );
    let cidr = prop_oneof![
        (any::<[u8; 4]>(), 0u8..=32)
            .prop_map(|(ip, len)| format!("{}.{}.{}.{}/{len}", ip[0], ip[1], ip[2], ip[3])),
        (any::<[u8; 4]>()).prop_map(|ip| format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3])),
        (0u8..=128).prop_map(|len| format!("fd00::/{len}")),
    ];
    let ports = prop::collection::vec((1u16.., 0u16..100), 1..4).prop_map(|parts| {
        parts
            .into_iter()
            .map(|(lo, span)| {
                if span == 0 {
                    lo.to_string()
                } else {
                    format!("{lo}-{}", lo.saturating_add(span))
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    });
    let allow = (1usize..3).prop_flat_map(move |n| {
        (0..n)
            .map(|i| {
                section(
                    Target::Allow(i),
                    vec![
                        (
                            "name",
                            "[a-z][a-z0-9-]{0,8}".prop_map(Value::Str).boxed(),
                            Kind::Other,
                        ),
                        (
                            "cidr",
                            cidr.clone().prop_map(Value::Str).boxed(),
                            Kind::Cidr,
                        ),
                        (
                            "ports",
                            ports.clone().prop_map(Value::Str).boxed(),
                            Kind::Ports,
                        ),
                    ],
                    vec![],
                )
                .prop_map(move |entries| Block {
                    header: Some("[[transparent.allow]]".into()),
                    target: Target::Allow(i),
                    entries,
                })
            })
            .collect::<Vec<_>>()
    });
    (main, pool_section(Target::TransparentPool), 0u8..3, allow)
        .prop_map(|(mut main, pool, style, allow)| {
            let mut blocks = Vec::new();
            let mut pool_block = None;
            match style {
                1 => {
                    pool_block = Some(Block {
                        header: Some("[transparent.pool]".into()),
                        target: Target::TransparentPool,
                        entries: pool,
                    })
                }
                2 => main.extend(pool),
                _ => {}
            }
            blocks.push(Block {
                header: Some("[transparent]".into()),
                target: Target::Transparent,
                entries: main,
            });
            blocks.extend(pool_block);
            blocks.extend(allow);
            blocks
        })
        .boxed()
}

/// A whole valid config document.
fn valid_doc() -> BoxedStrategy<Doc> {
    let names = prop::collection::hash_set("[a-z][a-z0-9_.-]{0,8}", 1..=3)
        .prop_map(|s| s.into_iter().collect::<Vec<_>>());
    (names, any::<bool>())
        .prop_flat_map(|(names, transparent)| {
            let n = names.len();
            let upstreams: Vec<_> = names
                .iter()
                .enumerate()
                .map(|(i, name)| upstream_group(i, name.clone()))
                .collect();
            let route_count = if n > 1 { 1..4usize } else { 0..3usize };
            let routes = route_count.prop_flat_map({
                let names = names.clone();
                move |m| {
                    (0..m)
                        .map(|i| route_block(i, names.clone()))
                        .collect::<Vec<_>>()
                }
            });
            let transparent_blocks = if transparent {
                transparent_group().prop_map(Some).boxed()
            } else {
                Just(None).boxed()
            };
            let admin = section(
                Target::Admin,
                vec![],
                vec![(
                    "listen",
                    listen_addr().prop_map(Value::Str).boxed(),
                    Kind::Listen,
                )],
            );
            let log = section(
                Target::Log,
                vec![],
                vec![
                    one_of(
                        "level",
                        &[
                            "error",
                            "warn",
                            "info",
                            "debug",
                            "trace",
                            "longhaul=debug,info",
                        ],
                    ),
                    one_of("format", &["text", "json"]),
                    flag("access_log"),
                ],
            );
            (
                server_section(transparent),
                admin,
                log,
                upstreams,
                routes,
                transparent_blocks,
                Just((0..6).collect::<Vec<usize>>()).prop_shuffle(),
                prop::collection::vec(0u8..3, 1..8),
                prop::collection::vec(prop::bool::weighted(0.2), 1..8),
            )
        })
        .prop_map(
            |(server, admin, log, upstreams, routes, transparent, order, spacing, comments)| {
                let mut groups: Vec<Vec<Block>> = vec![
                    vec![Block {
                        header: Some("[server]".into()),
                        target: Target::Server,
                        entries: server,
                    }],
                    vec![Block {
                        header: Some("[admin]".into()),
                        target: Target::Admin,
                        entries: admin,
                    }],
                    vec![Block {
                        header: Some("[log]".into()),
                        target: Target::Log,
                        entries: log,
                    }],
                    upstreams.into_iter().flatten().collect(),
                    routes,
                    transparent.unwrap_or_default(),
                ];
                let mut blocks = Vec::new();
                for g in order {
                    blocks.append(&mut groups[g]);
                }
                Doc {
                    blocks,
                    spacing,
                    trailing_comments: comments,
                }
            },
        )
        .boxed()
}

/// `n` cases, no regression files written next to the sources.
fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("prop.toml"))
}

/// One key of a valid document changed so that the document must be rejected.
#[derive(Debug)]
struct Mutation {
    block: usize,
    entry: usize,
    new_value: Option<Value>,
    new_key: Option<String>,
    /// The key path the error must name.
    key: String,
    /// Which list element (for its line), if any.
    element: Option<usize>,
}

fn mutate(doc: &Doc, pick: Index, how: Index, elem: Index, unknown: bool) -> Mutation {
    let candidates: Vec<(usize, usize, &Entry)> = doc
        .entries()
        .filter(|(_, _, e)| unknown || e.kind != Kind::Other)
        .collect();
    let (block, entry, e) = candidates[pick.index(candidates.len())];
    let path = format!("{}.{}", e.target.path(), e.key);
    if unknown {
        let name = [
            format!("{}s", e.key),
            format!("{}_x", e.key),
            format!("x{}", e.key),
        ][how.index(3)]
        .clone();
        return Mutation {
            block,
            entry,
            key: format!("{}.{name}", e.target.path()),
            new_key: Some(name),
            new_value: None,
            element: None,
        };
    }
    let zero_durations = ["0s", "0ms", "0m", "0h", "0ns"];
    let bad_listen = [
        "localhost:8080",
        "127.0.0.1",
        "127.0.0.1:99999",
        "",
        "256.0.0.1:80",
        "::1:80",
    ];
    let bad_servers = [
        "backend",
        ":8000",
        "backend:0",
        "backend:65536",
        "",
        "h:port",
    ];
    let (value, key, element) = match e.kind {
        Kind::Size => (Value::Int(0), path, None),
        Kind::HeadBytes => (Value::Int([0, 1, 8191, 4096][how.index(4)]), path, None),
        Kind::LineBytes => (Value::Int([0, 1, 1023][how.index(3)]), path, None),
        Kind::Duration => {
            let z = zero_durations[how.index(zero_durations.len())];
            (Value::Dur(z.into(), Duration::ZERO), path, None)
        }
        Kind::Listen => (
            Value::Str(bad_listen[how.index(bad_listen.len())].into()),
            path,
            None,
        ),
        Kind::ListenList | Kind::Servers => {
            let bad = if e.kind == Kind::Servers {
                bad_servers[how.index(bad_servers.len())]
            } else {
                bad_listen[how.index(bad_listen.len())]
            };
            match &e.value {
                Value::List(items, multiline) => {
                    let i = elem.index(items.len());
                    let mut items = items.clone();
                    items[i] = bad.into();
                    (
                        Value::List(items, *multiline),
                        format!("{path}[{i}]"),
                        multiline.then_some(i),
                    )
                }
                _ => (Value::Str(bad.into()), format!("{path}[0]"), None),
            }
        }
        Kind::Cidr => {
            // (`10.0.0.0/` is accepted as a /32: an empty prefix length counts as none.)
            let bad = ["10.0.0.0/33", "ten/8", "10.0.0.0/x", "fd00::/129", ""];
            (Value::Str(bad[how.index(bad.len())].into()), path, None)
        }
        Kind::Ports => {
            let bad = ["0", "90-80", "http", "", "80,", "1-65536"];
            (Value::Str(bad[how.index(bad.len())].into()), path, None)
        }
        Kind::Other => unreachable!("filtered out"),
    };
    Mutation {
        block,
        entry,
        new_value: Some(value),
        new_key: None,
        key,
        element,
    }
}

/// Renders `doc` with `m` applied; returns the text and the line the error must point at.
fn render_mutated(doc: &Doc, m: &Mutation) -> (String, usize) {
    let mut doc = doc.clone();
    let e = &mut doc.blocks[m.block].entries[m.entry];
    if let Some(v) = &m.new_value {
        e.value = v.clone();
    }
    if let Some(k) = &m.new_key {
        // The key names in Entry are 'static; leak the few bytes a failing case needs.
        e.key = Box::leak(k.clone().into_boxed_str());
    }
    let r = doc.render();
    let (line, elements) = &r.lines[m.block][m.entry];
    let line = m.element.map_or(*line, |i| elements[i]);
    (r.text, line)
}

/// Mutates a valid text by deleting a span and inserting TOML-ish ASCII at a random place.
fn splice(text: &str, at: Index, del: usize, insert: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let start = at.index(chars.len() + 1);
    let end = (start + del).min(chars.len());
    let mut out: String = chars[..start].iter().collect();
    out.push_str(insert);
    out.extend(&chars[end..]);
    out
}

fn check_error_line(text: &str, result: &Result<Config, ConfigError>) {
    if let Err(ConfigError::Invalid { line, key, .. }) = result {
        let lines = text.lines().count().max(1);
        assert!(
            *line >= 1 && *line <= lines + 1,
            "line {line} outside 1..={} (key {key})",
            lines + 1
        );
        assert!(!key.is_empty(), "an error with an empty key");
    }
}

proptest! {
    #![proptest_config(cases(200))]

    #[test]
    fn valid_configs_parse_to_their_model(doc in valid_doc()) {
        let r = doc.render();
        let parsed = parse(&r.text);
        prop_assert!(parsed.is_ok(), "rejected:\n{}\n{:?}", r.text, parsed.err());
        let parsed = parsed.unwrap();
        prop_assert_eq!(parsed, doc.expected(), "config:\n{}", r.text);
    }

    #[test]
    fn the_effective_config_printed_as_toml_parses_back_equal(doc in valid_doc()) {
        // What `longhaul check` prints.
        let config = parse(&doc.render().text).expect("a valid doc");
        let printed = config.to_toml().expect("every valid config prints");
        let again = parse(&printed);
        prop_assert!(again.is_ok(), "printed:\n{}\n{:?}", printed, again.err());
        prop_assert_eq!(again.unwrap(), config, "printed:\n{}", printed);
    }

    #[test]
    fn invalid_value_names_its_line_and_key(
        doc in valid_doc(),
        pick in any::<Index>(),
        how in any::<Index>(),
        elem in any::<Index>(),
    ) {
        let m = mutate(&doc, pick, how, elem, false);
        let (text, line) = render_mutated(&doc, &m);
        match parse(&text) {
            Err(ConfigError::Invalid { line: got_line, key, reason, .. }) => {
                prop_assert_eq!(
                    (&key, got_line), (&m.key, line),
                    "reason {:?}; mutation {:?}; config:\n{}", reason, m, text
                );
            }
            other => prop_assert!(false, "accepted or wrong error {:?}; mutation {:?}; config:\n{}", other.map(|_| ()), m, text),
        }
    }

    #[test]
    fn unknown_key_names_its_line_and_key(
        doc in valid_doc(),
        pick in any::<Index>(),
        how in any::<Index>(),
        elem in any::<Index>(),
    ) {
        let m = mutate(&doc, pick, how, elem, true);
        let (text, line) = render_mutated(&doc, &m);
        match parse(&text) {
            Err(ConfigError::Invalid { line: got_line, key, reason, .. }) => {
                prop_assert_eq!(
                    (&key, got_line), (&m.key, line),
                    "reason {:?}; mutation {:?}; config:\n{}", reason, m, text
                );
                prop_assert!(reason.contains("unknown field"), "reason {:?}", reason);
            }
            other => prop_assert!(false, "accepted or wrong error {:?}; config:\n{}", other.map(|_| ()), text),
        }
    }

    #[test]
    fn parse_never_panics_on_arbitrary_text(text in any::<String>()) {
        let result = parse(&text);
        check_error_line(&text, &result);
    }

    #[test]
    fn parse_never_panics_on_tomlish_text(
        text in "([\\[\\]a-z_.=\"0-9 #*/:,{}\n-]|\\[\\[upstream\\]\\]\n|\\[server\\]\n|listen = |servers = |\"1s\"){0,60}"
    ) {
        let result = parse(&text);
        check_error_line(&text, &result);
    }

    #[test]
    fn parse_never_panics_on_damaged_configs(
        doc in valid_doc(),
        cuts in prop::collection::vec(
            (any::<Index>(), 0usize..12, "[\\[\\]a-z_.=\"0-9 #*/:,{}\n'\\\\-]{0,8}"),
            1..4,
        ),
    ) {
        let mut text = doc.render().text;
        for (at, del, insert) in &cuts {
            text = splice(&text, *at, *del, insert);
        }
        let result = parse(&text);
        check_error_line(&text, &result);
    }
}

/// Found while writing these properties: a route host that starts with a multi-byte character
/// made `Config::parse` panic (`route.host[1..]` in `validate_routes` slices inside the char).
#[test]
fn route_host_starting_with_multibyte_char_is_an_error_not_a_panic() {
    let text = "[[upstream]]\nname = \"a\"\nservers = [\"127.0.0.1:1\"]\n\n[[route]]\nhost = \"é\"\nupstream = \"a\"\n";
    let result = std::panic::catch_unwind(|| parse(text).map(|_| ()));
    match result {
        Ok(Err(ConfigError::Invalid { line, key, .. })) => {
            assert_eq!((line, key.as_str()), (6, "route[0].host"));
        }
        Ok(other) => panic!("expected an error naming route[0].host, got {other:?}"),
        Err(_) => panic!("Config::parse panicked"),
    }
}

/// `[transparent]` alone gives destination pools `max_size = 8` (`TransparentConfig::default`),
/// but writing any `[transparent.pool]` key reset the keys left out to `PoolConfig::default()`,
/// so `max_size` silently became 32. Found by `valid_configs_parse_to_their_model`.
#[test]
fn transparent_pool_table_keeps_max_size_8() {
    let base = "[server]\nmode = \"transparent\"\n\n[transparent]\n\n[[transparent.allow]]\nname = \"n\"\ncidr = \"10.0.0.0/8\"\nports = \"80\"\n";
    let without = parse(base).expect("valid");
    assert_eq!(without.transparent.as_ref().unwrap().pool.max_size, 8);
    let with = parse(&format!(
        "{base}\n[transparent.pool]\nidle_timeout = \"10s\"\n"
    ))
    .expect("valid");
    assert_eq!(with.transparent.as_ref().unwrap().pool.max_size, 8);
}

/// `upstream[i].max_buffered_body_bytes = 0` was rejected, the transparent one was not (every
/// chunked request body to a transparent HTTP/1.0 destination would then be too large).
/// Found by `invalid_value_names_its_line_and_key`.
#[test]
fn transparent_max_buffered_body_bytes_0_is_rejected() {
    let text = "[server]\nmode = \"transparent\"\n\n[transparent]\nmax_buffered_body_bytes = 0\n\n[[transparent.allow]]\nname = \"n\"\ncidr = \"10.0.0.0/8\"\nports = \"80\"\n";
    match parse(text) {
        Err(ConfigError::Invalid { line, key, .. }) => {
            assert_eq!(
                (line, key.as_str()),
                (5, "transparent.max_buffered_body_bytes")
            )
        }
        other => panic!("expected an error, got {:?}", other.map(|_| ())),
    }
}

// ---------------------------------------------------------------------------------------------
// Route matching.
// ---------------------------------------------------------------------------------------------

const UPSTREAMS: [&str; 6] = ["u0", "u1", "u2", "u3", "u4", "u5"];

fn router(routes: &[RouteConfig]) -> Router {
    Router::new(routes, |n| UPSTREAMS.iter().position(|x| *x == n))
}

fn route(host: &str, prefix: &str, upstream: usize) -> RouteConfig {
    RouteConfig {
        host: host.into(),
        path_prefix: prefix.into(),
        upstream: UPSTREAMS[upstream].into(),
    }
}

/// A lower-case host from a small label set, so that generated routes and hosts overlap.
fn host_name() -> impl Strategy<Value = String> {
    prop::collection::vec(
        select(vec!["a", "b", "www", "api", "example", "com", "x-y"]),
        1..4,
    )
    .prop_map(|labels| labels.join("."))
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(select(vec!["", "api", "v1", "v2", "x", "a.b"]), 0..4)
        .prop_map(|segs| format!("/{}", segs.join("/")))
}

fn host_pattern() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("*".to_string()),
        host_name(),
        host_name().prop_map(|h| format!("*.{h}")),
        host_name().prop_map(|h| format!("*{h}")),
    ]
}

fn random_case(s: &str, mask: u64) -> String {
    s.chars()
        .enumerate()
        .map(|(i, c)| {
            if mask >> (i % 64) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

/// Specificity of a host pattern matching `host`, if it matches: exact > longer suffix > `*`.
fn model_rank(pattern: &str, host: &str) -> Option<(u8, usize)> {
    let pattern = pattern.to_ascii_lowercase();
    if pattern == "*" {
        Some((0, 0))
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        (host.len() > suffix.len() && host.ends_with(suffix)).then_some((1, suffix.len()))
    } else {
        (pattern == host).then_some((2, 0))
    }
}

/// The reference answer: the most specific host, then the longest prefix, then config order.
fn model_lookup(routes: &[RouteConfig], host: &str, path: &str) -> Option<usize> {
    let mut best: Option<((u8, usize, usize), usize)> = None;
    for r in routes {
        let Some((class, len)) = model_rank(&r.host, host) else {
            continue;
        };
        if !path.starts_with(&r.path_prefix) {
            continue;
        }
        let key = (class, len, r.path_prefix.len());
        if best.is_none_or(|(k, _)| key > k) {
            let up = UPSTREAMS.iter().position(|u| *u == r.upstream).unwrap();
            best = Some((key, up));
        }
    }
    best.map(|(_, up)| up)
}

fn routes() -> impl Strategy<Value = Vec<RouteConfig>> {
    prop::collection::vec((host_pattern(), path(), 0usize..6), 0..8).prop_map(|v| {
        v.into_iter()
            .map(|(h, p, u)| route(&h, &p, u))
            .collect::<Vec<_>>()
    })
}

proptest! {
    #![proptest_config(cases(300))]

    #[test]
    fn lookup_agrees_with_the_reference_model(
        routes in routes(),
        host in host_name(),
        path in path(),
    ) {
        let got = router(&routes).lookup(Some(&host), &path).map(|m| m.upstream);
        prop_assert_eq!(got, model_lookup(&routes, &host, &path));
    }

    #[test]
    fn exact_beats_suffix_beats_any(
        label in "[a-z]{1,6}",
        domain in host_name(),
        present in prop::array::uniform3(any::<bool>()),
        order in Just(vec![0usize, 1, 2]).prop_shuffle(),
        path in path(),
    ) {
        let host = format!("{label}.{domain}");
        let patterns = [host.clone(), format!("*.{domain}"), "*".to_string()];
        let table: Vec<RouteConfig> = order
            .iter()
            .filter(|&&i| present[i])
            .map(|&i| route(&patterns[i], "/", i))
            .collect();
        let expected = (0..3).find(|&i| present[i]);
        let got = router(&table).lookup(Some(&host), &path);
        prop_assert_eq!(got.map(|m| m.upstream), expected);
        if let Some(m) = got {
            prop_assert_eq!(m.host_named, expected != Some(2));
        }
    }

    #[test]
    fn longest_path_prefix_wins(
        segments in prop::collection::vec("[a-z]{1,4}", 1..5),
        cuts in prop::collection::vec(any::<Index>(), 1..6),
        others in prop::collection::vec("/[a-z]{1,6}", 0..3),
    ) {
        let path = format!("/{}", segments.join("/"));
        // Prefixes of the path (cut anywhere, not only at `/`) plus unrelated ones.
        let mut prefixes: Vec<String> = cuts
            .iter()
            .map(|c| path[..1 + c.index(path.len())].to_string())
            .collect();
        prefixes.extend(others);
        prefixes.sort();
        prefixes.dedup();
        let table: Vec<RouteConfig> = prefixes
            .iter()
            .enumerate()
            .map(|(i, p)| route("*", p, i % 6))
            .collect();
        let expected = prefixes
            .iter()
            .enumerate()
            .filter(|(_, p)| path.starts_with(p.as_str()))
            .max_by_key(|(_, p)| p.len())
            .map(|(i, _)| i % 6);
        let got = router(&table).lookup(Some("h"), &path).map(|m| m.upstream);
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn lookup_ignores_case_port_and_trailing_dot(
        routes in routes(),
        host in host_name(),
        path in path(),
        mask in any::<u64>(),
        port in any::<u16>(),
    ) {
        let r = router(&routes);
        let plain = r.lookup(Some(&host), &path);
        let upper = random_case(&host, mask);
        prop_assert_eq!(r.lookup(Some(&upper), &path), plain);
        prop_assert_eq!(r.lookup(Some(&format!("{upper}:{port}")), &path), plain);
        prop_assert_eq!(r.lookup(Some(&format!("{upper}.:{port}")), &path), plain);
        prop_assert_eq!(normalize_host(&format!("{upper}:{port}")), host.clone());
        // Route patterns are case-insensitive too.
        let shouted: Vec<RouteConfig> = routes
            .iter()
            .map(|x| RouteConfig { host: random_case(&x.host, !mask), ..x.clone() })
            .collect();
        prop_assert_eq!(router(&shouted).lookup(Some(&host), &path), plain);
    }

    #[test]
    fn suffix_pattern_never_matches_the_bare_domain(
        domain in host_name(),
        mask in any::<u64>(),
        port in proptest::option::of(any::<u16>()),
        evil in "[a-z-]{1,5}",
    ) {
        let table = vec![route(&format!("*.{domain}"), "/", 0)];
        let r = router(&table);
        let bare = random_case(&domain, mask);
        let bare = match port {
            Some(p) => format!("{bare}:{p}"),
            None => bare,
        };
        prop_assert_eq!(r.lookup(Some(&bare), "/"), None);
        prop_assert_eq!(r.lookup(Some(&format!(".{domain}")), "/"), None);
        prop_assert_eq!(r.lookup(Some(&format!("{evil}{domain}")), "/"), None);
        let sub = format!("{evil}.{domain}");
        prop_assert!(r.lookup(Some(&sub), "/").is_some(), "{} should match", sub);
    }

    #[test]
    fn lookup_never_panics(
        table in prop::collection::vec((any::<String>(), any::<String>(), 0usize..7), 0..6),
        host in proptest::option::of(any::<String>()),
        path in any::<String>(),
    ) {
        let table: Vec<RouteConfig> = table
            .into_iter()
            .map(|(h, p, u)| RouteConfig {
                host: h,
                path_prefix: p,
                upstream: UPSTREAMS.get(u).map_or("missing", |v| v).to_string(),
            })
            .collect();
        let r = router(&table);
        if let Some(m) = r.lookup(host.as_deref(), &path) {
            prop_assert!(m.upstream < UPSTREAMS.len());
        }
        if let Some(h) = &host {
            let _ = normalize_host(h);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Header normalization: hop-by-hop stripping and the framing guard.
// ---------------------------------------------------------------------------------------------

/// What `hop_by_hop::strip` always removes (the contract's list, plus Proxy-Authenticate).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
];

/// Names that headers and Connection tokens are drawn from, so that they overlap.
fn header_name() -> impl Strategy<Value = String> {
    let pool = vec![
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
        "host",
        "content-length",
        "content-type",
        "via",
        "x-forwarded-for",
        "x-secret",
        "x-other",
        "cookie",
        "close",
    ];
    (
        prop_oneof![
            3 => select(pool).prop_map(String::from),
            1 => "x-[a-z0-9]{1,5}",
        ],
        any::<u64>(),
    )
        .prop_map(|(name, mask)| random_case(&name, mask))
}

/// A visible-ASCII header value (what hyper hands over once it parsed a head).
fn header_value() -> impl Strategy<Value = String> {
    "[ -~]{0,16}".prop_map(|s| s.trim().to_string())
}

/// A Connection value: comma-separated tokens with optional whitespace and junk.
fn connection_value() -> impl Strategy<Value = String> {
    prop::collection::vec(
        (
            prop_oneof![
                4 => header_name(),
                1 => Just("keep-alive".to_string()),
                1 => "[ -~]{0,6}",
                // obs-text (bytes 0x80-0xFF) in the value must not hide the other names.
                1 => "[a-z\u{80}-\u{ff}]{1,6}",
            ],
            select(vec!["", " ", "  ", "\t"]),
        ),
        0..5,
    )
    .prop_map(|tokens| {
        tokens
            .into_iter()
            .map(|(t, ws)| format!("{ws}{t}{ws}"))
            .collect::<Vec<_>>()
            .join(",")
            .trim()
            .to_string()
    })
}

fn header_list() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(
        prop_oneof![
            4 => (header_name(), header_value()),
            1 => connection_value().prop_map(|v| ("Connection".to_string(), v)),
        ],
        0..16,
    )
}

fn build(list: &[(String, impl AsRef<[u8]>)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in list {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value.as_ref()),
        ) else {
            continue;
        };
        map.append(name, value);
    }
    map
}

/// Lower-case names that `Connection` lists (those that are valid header names).
fn connection_named(map: &HeaderMap) -> HashSet<String> {
    map.get_all("connection")
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b',').map(<[u8]>::to_vec))
        .filter_map(|t| {
            let t = String::from_utf8_lossy(&t).trim().to_ascii_lowercase();
            HeaderName::from_bytes(t.as_bytes())
                .ok()
                .map(|n| n.as_str().to_string())
        })
        .collect()
}

/// Checks the stripping invariants; shared in spirit with fuzz/fuzz_targets/header_normalize.rs.
fn check_strip(before: &HeaderMap) -> Result<(), TestCaseError> {
    let named = connection_named(before);
    let mut after = before.clone();
    hop_by_hop::strip(&mut after);
    for name in HOP_BY_HOP {
        prop_assert!(!after.contains_key(name), "{} survived: {:?}", name, after);
    }
    for name in &named {
        prop_assert!(
            !after.contains_key(name.as_str()),
            "{} is named in Connection but survived",
            name
        );
    }
    let mut kept = 0;
    for name in before.keys() {
        let removed = HOP_BY_HOP.contains(&name.as_str()) || named.contains(name.as_str());
        let old: Vec<&HeaderValue> = before.get_all(name).iter().collect();
        let new: Vec<&HeaderValue> = after.get_all(name).iter().collect();
        if removed {
            prop_assert!(new.is_empty());
        } else {
            // Same values in the same order for every header that is not hop-by-hop.
            prop_assert_eq!(&old, &new, "{} changed", name);
            kept += old.len();
        }
    }
    prop_assert_eq!(after.len(), kept, "strip added headers: {:?}", after);
    Ok(())
}

fn te_value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(vec![
            "chunked", "Chunked", "CHUNKED", " chunked ", "chunked\t", "gzip", "chunked, chunked",
            "gzip, chunked", "chunked, gzip", "identity", "", "chunked;q=1", "xchunked",
            "chunked,", ",chunked", "\"chunked\"", "chunk", "deflate",
        ]).prop_map(String::from),
        1 => "[ -~]{0,12}",
    ]
}

/// Transfer-Encoding lines, then Content-Length lines, then unrelated headers (TE and CL names
/// among `others` are dropped so that the counts stay as given).
fn framing_headers(
    te: &[String],
    cl: &[String],
    others: Vec<(String, String)>,
) -> Vec<(String, String)> {
    let mut list: Vec<(String, String)> = te
        .iter()
        .map(|v| ("Transfer-Encoding".to_string(), v.clone()))
        .chain(cl.iter().map(|v| ("content-length".to_string(), v.clone())))
        .collect();
    list.extend(others.into_iter().filter(|(n, _)| {
        let n = n.to_ascii_lowercase();
        n != "transfer-encoding" && n != "content-length"
    }));
    list
}

/// A permutation of `list` chosen by `seed` (Fisher-Yates with a small LCG).
fn shuffle(list: &[(String, String)], seed: u64) -> Vec<(String, String)> {
    let mut out = list.to_vec();
    let mut state = seed | 1;
    for i in (1..out.len()).rev() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.swap(i, (state >> 33) as usize % (i + 1));
    }
    out
}

/// Framing headers, whether they are ambiguous, and the RFC's reason.
type FramingCase = (&'static [(&'static str, &'static str)], bool, &'static str);

/// RFC 9112 §6.1 and §6.3, case by case: the framing headers of a message and whether longhaul
/// must refuse it as ambiguous. Written from the RFC, not from the code under test.
#[test]
fn framing_follows_the_rfc_9112_table() {
    let cases: &[FramingCase] = &[
        (
            &[],
            false,
            "no body headers: framed by the method or by close (§6.3 rules 6, 7, 8)",
        ),
        (
            &[("content-length", "5")],
            false,
            "one Content-Length frames the body (§6.3 rule 6)",
        ),
        (
            &[("content-length", "5"), ("content-length", "5")],
            false,
            "identical repeated Content-Length is one value (§6.3 rule 5; hyper merges)",
        ),
        (
            &[("transfer-encoding", "chunked")],
            false,
            "chunked is the final coding (§6.3 rule 4)",
        ),
        (
            &[("transfer-encoding", "Chunked")],
            false,
            "coding names are case-insensitive (§7)",
        ),
        (
            &[("transfer-encoding", " chunked ")],
            false,
            "optional whitespace around a field value (§5.1 of RFC 9110)",
        ),
        (
            &[("transfer-encoding", "gzip")],
            true,
            "a request whose final coding is not chunked cannot be framed (§6.3 rule 4)",
        ),
        (
            &[("transfer-encoding", "gzip, chunked")],
            true,
            "longhaul refuses codings before chunked: it forwards bodies de-chunked",
        ),
        (
            &[("transfer-encoding", "chunked, chunked")],
            true,
            "chunked applied twice is forbidden (§7: MUST NOT apply chunked more than once)",
        ),
        (
            &[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
            true,
            "two TE lines combine to `chunked, chunked`",
        ),
        (
            &[("transfer-encoding", "identity")],
            true,
            "identity is not a transfer coding any more (§7)",
        ),
        (
            &[("transfer-encoding", "")],
            true,
            "an empty Transfer-Encoding names no final coding",
        ),
        (
            &[("transfer-encoding", "chunked"), ("content-length", "5")],
            true,
            "TE with CL is a smuggling attempt (§6.1: MAY reject; §11.2)",
        ),
        (
            &[("content-length", "5"), ("transfer-encoding", "chunked")],
            true,
            "the same in the other order",
        ),
        (
            &[("transfer-encoding", "xchunked")],
            true,
            "a token that only contains chunked is not chunked",
        ),
    ];
    for (headers, ambiguous, why) in cases {
        let list: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        let got = framing::ambiguity(&build(&list));
        assert_eq!(got.is_some(), *ambiguous, "{headers:?}: {why}; got {got:?}");
    }
}

/// `h1::response_framing` of a 200 to GET over HTTP/1.1 with `list` as its headers; the refusal
/// as its `ErrorKind`'s Debug text, so that two verdicts compare.
fn response_framing_of(list: &[(String, String)]) -> Result<Framing, String> {
    response_framing(&Method::GET, StatusCode::OK, Version::HTTP_11, &build(list))
        .map_err(|e| format!("{e:?}"))
}

/// A response head longhaul reads from a backend, and where its body must end: a framing, or
/// the name of the `h1::ErrorKind` it is refused with.
struct ResponseCase {
    method: &'static str,
    status: u16,
    version: Version,
    headers: &'static [(&'static str, &'static str)],
    want: Result<Framing, &'static str>,
    why: &'static str,
}

/// RFC 9112 §6.1 and §6.3, rule by rule, for responses: written from the RFC (and longhaul's two
/// documented refusals that are stricter than it), not from `h1::response_framing`.
#[test]
fn response_framing_follows_the_rfc_9112_table() {
    use Version as V;
    let case = |method, status, version, headers, want, why| ResponseCase {
        method,
        status,
        version,
        headers,
        want,
        why,
    };
    // One row a case: method, status, version, head, the framing or the refusal, and the rule.
    #[rustfmt::skip]
    let cases = [
        case("HEAD", 200, V::HTTP_11, &[("content-length", "5")][..], Ok(Framing::Empty),
            "a response to HEAD has no body whatever its Content-Length says (§6.3 rule 1)"),
        case("GET", 204, V::HTTP_11, &[("content-length", "5")], Ok(Framing::Empty),
            "204 has no body (§6.3 rule 1)"),
        case("GET", 304, V::HTTP_11, &[("content-length", "5")], Ok(Framing::Empty),
            "304 has no body (§6.3 rule 1)"),
        case("GET", 103, V::HTTP_11, &[], Ok(Framing::Empty),
            "1xx has no body (§6.3 rule 1)"),
        case("CONNECT", 200, V::HTTP_11, &[("content-length", "5")], Ok(Framing::Tunnel),
            "2xx to CONNECT turns the connection into a tunnel (§6.3 rule 2)"),
        case("CONNECT", 407, V::HTTP_11, &[("content-length", "3")], Ok(Framing::Length(3)),
            "a refused CONNECT has an ordinary body (§6.3 rule 2 is for 2xx only)"),
        case("GET", 200, V::HTTP_11, &[("transfer-encoding", "chunked")], Ok(Framing::Chunked),
            "chunked as the final coding (§6.3 rule 4)"),
        case("GET", 200, V::HTTP_11, &[("transfer-encoding", "chunked"), ("content-length", "5")],
            Err("AmbiguousFraming"),
            "TE with CL: §6.3 rule 3 lets TE win, longhaul refuses it as smuggling (§6.1, §11.2)"),
        case("GET", 200, V::HTTP_11, &[("transfer-encoding", "gzip")], Err("AmbiguousFraming"),
            "a final coding other than chunked: §6.3 rule 4 reads to close, longhaul refuses"),
        case("GET", 200, V::HTTP_10, &[("transfer-encoding", "chunked")],
            Err("TransferEncodingInHttp10"),
            "Transfer-Encoding in an HTTP/1.0 message is faulty framing (§6.1)"),
        case("GET", 200, V::HTTP_11, &[("content-length", "5")], Ok(Framing::Length(5)),
            "a valid Content-Length frames the body (§6.3 rule 6)"),
        case("GET", 200, V::HTTP_11, &[("content-length", "5, 5")], Ok(Framing::Length(5)),
            "a list of identical values is that value (§6.3 rule 5)"),
        case("GET", 200, V::HTTP_11, &[("content-length", "5"), ("content-length", "5")],
            Ok(Framing::Length(5)),
            "identical repeated lines are that value (§6.3 rule 5)"),
        case("GET", 200, V::HTTP_11, &[("content-length", "5, 6")], Err("BadContentLength"),
            "differing values are an unrecoverable error (§6.3 rule 5)"),
        case("GET", 200, V::HTTP_11, &[("content-length", "5"), ("content-length", "6")],
            Err("BadContentLength"),
            "differing lines are an unrecoverable error (§6.3 rule 5)"),
        case("GET", 200, V::HTTP_11, &[("content-length", "+5")], Err("BadContentLength"),
            "Content-Length is 1*DIGIT: no sign (§8.6 of RFC 9110, §6.3 rule 5)"),
        case("GET", 200, V::HTTP_11, &[("content-length", "five")], Err("BadContentLength"),
            "a non-numeric Content-Length is invalid (§6.3 rule 5)"),
        case("GET", 200, V::HTTP_11, &[], Ok(Framing::CloseDelimited),
            "no length: the body ends when the server closes (§6.3 rule 8)"),
        case("GET", 200, V::HTTP_10, &[], Ok(Framing::CloseDelimited),
            "the same for an HTTP/1.0 response (§6.3 rule 8)"),
    ];
    for c in &cases {
        let list: Vec<(String, String)> = c
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        let method = Method::from_bytes(c.method.as_bytes()).expect("method");
        let status = StatusCode::from_u16(c.status).expect("status");
        let got = response_framing(&method, status, c.version, &build(&list))
            .map_err(|e| format!("{e:?}"));
        let as_wanted = match (&got, &c.want) {
            (Ok(framing), Ok(want)) => framing == want,
            (Err(kind), Err(want)) => kind.starts_with(want),
            _ => false,
        };
        assert!(
            as_wanted,
            "{} {} {:?} {:?}: {}; want {:?}, got {got:?}",
            c.method, c.status, c.version, c.headers, c.why, c.want
        );
    }
}

proptest! {
    #![proptest_config(cases(500))]

    #[test]
    fn strip_removes_hop_by_hop_and_keeps_the_rest(list in header_list()) {
        check_strip(&build(&list))?;
    }

    #[test]
    fn framing_verdict_does_not_depend_on_header_order(
        te in prop::collection::vec(te_value(), 0..3),
        cl in prop::collection::vec("[0-9]{1,4}", 0..3),
        others in prop::collection::vec((header_name(), header_value()), 0..5),
        order in any::<u64>(),
    ) {
        let list = framing_headers(&te, &cl, others);
        let shuffled = shuffle(&list, order);
        prop_assert_eq!(
            framing::ambiguity(&build(&list)).is_some(),
            framing::ambiguity(&build(&shuffled)).is_some(),
            "{:?} vs {:?}", list, shuffled
        );
        // The same for a response's framing, read by h1::response_framing.
        prop_assert_eq!(
            response_framing_of(&list),
            response_framing_of(&shuffled),
            "{:?} vs {:?}", list, shuffled
        );
    }

    #[test]
    fn content_length_next_to_any_transfer_encoding_is_flagged(
        te in prop::collection::vec(te_value(), 1..3),
        cl in prop::collection::vec("[0-9]{1,4}", 1..3),
        others in prop::collection::vec((header_name(), header_value()), 0..5),
        order in any::<u64>(),
    ) {
        let list = shuffle(&framing_headers(&te, &cl, others), order);
        prop_assert!(framing::ambiguity(&build(&list)).is_some(), "{:?}", list);
        // A response with such a head is refused, whatever else it says.
        let framed = response_framing_of(&list);
        prop_assert!(framed.is_err(), "{:?} framed as {:?}", list, framed);
    }

    #[test]
    fn headers_other_than_te_and_cl_never_change_the_verdict(
        te in prop::collection::vec(te_value(), 0..3),
        cl in prop::collection::vec("[0-9]{1,4}", 0..3),
        others in prop::collection::vec((header_name(), header_value()), 0..5),
    ) {
        let bare = framing_headers(&te, &cl, Vec::new());
        let decorated = framing_headers(&te, &cl, others);
        prop_assert_eq!(
            framing::ambiguity(&build(&bare)),
            framing::ambiguity(&build(&decorated)),
            "{:?} vs {:?}", bare, decorated
        );
    }

    #[test]
    fn framing_and_strip_never_panic(
        list in prop::collection::vec(
            (any::<String>(), prop::collection::vec(any::<u8>(), 0..24)),
            0..12,
        ),
    ) {
        let mut map = build(&list);
        let _ = framing::ambiguity(&map);
        hop_by_hop::strip(&mut map);
        let _ = framing::ambiguity(&map);
    }
}

/// Header values may carry obs-text (bytes 0x80-0xFF; hyper accepts them). One such byte in a
/// Connection value made `strip` skip the whole value, so the headers it named were forwarded.
#[test]
fn connection_value_with_obs_text_still_names_headers() {
    let mut map = HeaderMap::new();
    map.append(
        "connection",
        HeaderValue::from_bytes(b"x-secret, caf\xe9").unwrap(),
    );
    map.append("x-secret", HeaderValue::from_static("1"));
    hop_by_hop::strip(&mut map);
    assert!(!map.contains_key("x-secret"), "left: {map:?}");
}
