//! Observability end to end: the real `longhaul` binary in front of `longhaul backend-sim`, scraped by
//! promtool and a real Prometheus server, and the status page rendered by headless Chromium.
//!
//! The external tools come from Debian packages (`apt-get install -y prometheus chromium
//! chromium-driver`). A test whose tool is missing prints a `SKIP` line saying so and returns.
//! Every child process is killed on drop, every wait is bounded, all traffic stays on 127.0.0.1.
// Wall-clock time is right here: the processes under test are out of reach of tokio's clock.
#![allow(clippy::disallowed_types)]

mod support;

use support::backend_sim::BackendSim;
use support::poll_until;
use support::process::{Child, send_signal};
use support::proxy::{Proxy, TempDir};
use support::tools::require_tool;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde_json::{Value, json};

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Every metric name the contract defines (histograms without their _bucket/_sum/_count suffix).
const CONTRACT_METRICS: &[&str] = &[
    "longhaul_downstream_connections_total",
    "longhaul_downstream_connections_active",
    "longhaul_requests_total",
    "longhaul_request_duration_seconds",
    "longhaul_upstream_requests_total",
    "longhaul_upstream_connections_opened_total",
    "longhaul_upstream_connections_closed_total",
    "longhaul_pool_connections",
    "longhaul_pool_wait_seconds",
    "longhaul_upstream_retries_total",
    "longhaul_upstream_errors_total",
    "longhaul_build_info",
    "longhaul_pool_max_connections",
    "longhaul_pool_limit",
    "longhaul_pool_waiters",
    "longhaul_upstream_keepalive_timeout_seconds",
    "longhaul_upstream_server_up",
    "longhaul_upgrades_refused_total",
    "longhaul_pool_rejected_total",
    "longhaul_tunnels_closed_total",
    "longhaul_tls_handshakes_total",
    "longhaul_tls_handshake_duration_seconds",
];

// ---------------------------------------------------------------------------------------------
// Small helpers: temp dirs, tool lookup, child processes.
// ---------------------------------------------------------------------------------------------

fn repo_file(rel: &str) -> PathBuf {
    Path::new(MANIFEST_DIR).join(rel)
}

/// An address on 127.0.0.1 that nothing listens on (bound, then released), for a server the
/// test starts on it at once.
fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr")
}

/// A 127.0.0.1 port that refuses connections while the returned socket lives: bound, never
/// listening, so no other test's server can take it.
fn refusing_port() -> (SocketAddr, socket2::Socket) {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("a socket");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("an address");
    socket.bind(&any.into()).expect("bind");
    let addr = socket
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("inet");
    (addr, socket)
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP clients.
// ---------------------------------------------------------------------------------------------

/// One HTTP/1.0 request on its own connection, like the legacy clients longhaul exists for.
/// Returns the status code, or None when the exchange failed.
fn client_get(proxy: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&proxy, IO_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: app.test\r\nUser-Agent: obs-test\r\n\r\n"
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let head = String::from_utf8_lossy(&response);
    head.split_whitespace().nth(1)?.parse().ok()
}

/// An HTTP/1.1 `Connection: close` request for the admin listener, Prometheus' API and
/// chromedriver. Returns status and body (chunked bodies decoded).
fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    try_http(addr, method, path, body)
        .unwrap_or_else(|e| panic!("{method} http://{addr}{path}: {e}"))
}

fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), String> {
    let err = |e: std::io::Error| e.to_string();
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(err)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(err)?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(err)?;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).map_err(err)?;
    // Read until the response is complete by its own framing: some servers (chromedriver) keep
    // the connection open despite `Connection: close`.
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(response) = parse_response(&raw, false) {
            return Ok(response);
        }
        let n = stream.read(&mut buf).map_err(err)?;
        if n == 0 {
            return parse_response(&raw, true)
                .ok_or_else(|| "connection closed before the response was complete".to_string());
        }
        raw.extend_from_slice(&buf[..n]);
    }
}

/// Status and body of the response in `raw`; with `eof`, a body without framing ends here.
fn parse_response(raw: &[u8], eof: bool) -> Option<(u16, String)> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let payload = &raw[split + 4..];
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
    };
    let body = if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
        dechunk(payload)?
    } else if let Some(len) = header("content-length:").and_then(|v| v.parse::<usize>().ok()) {
        if payload.len() < len {
            return None;
        }
        payload[..len].to_vec()
    } else if eof || status == 204 || status == 304 {
        payload.to_vec()
    } else {
        return None;
    };
    Some((status, String::from_utf8_lossy(&body).to_string()))
}

/// A chunked body decoded, or None while the last chunk has not arrived.
fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n")?;
        let size_line = String::from_utf8_lossy(&data[..eol]).to_string();
        let size_hex = size_line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        let start = eol + 2;
        if data.len() < start + size + 2 {
            return None;
        }
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
}

fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = http(addr, "GET", path, None);
    assert_eq!(status, 200, "GET {path} on {addr}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The system under test: backend-sim + longhaul, and traffic.
// ---------------------------------------------------------------------------------------------

/// backend-sim as every test here uses it.
fn start_backend() -> BackendSim {
    BackendSim::start(&[
        "--conn-cost",
        "1ms",
        // Closing each connection after 40 requests makes the closed-by-reason panel and
        // a reuse rate below 100% part of every run.
        "--max-requests",
        "40",
        // Idle warm connections must not be closed by the backend (and reopened by
        // min_idle) while the status-page test compares the page with /pools.
        "--keepalive-timeout",
        "300s",
    ])
}

/// longhaul with two upstreams: "legacy" (the backend-sim, everything but /dead) and "dead"
/// (a port nobody listens on, /dead), so error, 5xx and server-down series exist too. The socket
/// keeps the "dead" upstream's port refusing for the proxy's whole life.
fn start_proxy(backend: SocketAddr, min_idle: u32) -> (Proxy, socket2::Socket) {
    let (dead, dead_port) = refusing_port();
    let config = format!(
        r#"[server]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[log]
level = "info"
format = "json"
access_log = false

[[upstream]]
name = "legacy"
servers = ["{backend}"]
protocol = "http/1.0"

[upstream.pool]
max_size = 8
min_idle = {min_idle}

[[upstream]]
name = "dead"
servers = ["{dead}"]
protocol = "http/1.0"
connect_timeout = "250ms"

[upstream.pool]
max_size = 2
min_idle = 0

[upstream.health]
max_failures = 1
base_ejection = "1s"
max_ejection = "2s"

[[route]]
host = "*"
path_prefix = "/dead"
upstream = "dead"

[[route]]
host = "*"
path_prefix = "/"
upstream = "legacy"
"#
    );
    (Proxy::start_text(&config), dead_port)
}

struct Stack {
    backend: BackendSim,
    proxy: Proxy,
    _dead: socket2::Socket,
}

impl Stack {
    /// The backend and a proxy whose "legacy" pool keeps two warm connections (`min_idle = 2`).
    fn start() -> Stack {
        Stack::with_min_idle(2)
    }

    fn with_min_idle(min_idle: u32) -> Stack {
        let backend = start_backend();
        let (proxy, dead) = start_proxy(backend.addr, min_idle);
        Stack {
            backend,
            proxy,
            _dead: dead,
        }
    }
}

/// Background clients: each request on a fresh connection (HTTP/1.0, no keep-alive); every
/// `dead_every`-th request goes to the unreachable upstream. Stops and joins on drop.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    ok: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Traffic {
    fn start(proxy: SocketAddr, clients: usize, pause: Duration, dead_every: u64) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let ok = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|c| {
                let (stop, sent, ok) = (Arc::clone(&stop), Arc::clone(&sent), Arc::clone(&ok));
                thread::spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let path = if dead_every > 0 && i % dead_every == 0 {
                            format!("/dead/{c}/{i}")
                        } else {
                            format!("/items/{c}/{i}")
                        };
                        sent.fetch_add(1, Ordering::Relaxed);
                        if client_get(proxy, &path) == Some(200) {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        thread::sleep(pause);
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            sent,
            ok,
            threads,
        }
    }

    /// Waits (bounded) until at least `n` requests got a 200.
    fn wait_ok(&self, n: u64, timeout: Duration) {
        let enough = || self.ok.load(Ordering::Relaxed) >= n;
        assert!(
            support::poll_until(timeout, Duration::from_millis(50), enough),
            "only {} of {} requests through the proxy succeeded within {timeout:?}",
            self.ok.load(Ordering::Relaxed),
            self.sent.load(Ordering::Relaxed)
        );
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// Prometheus.
// ---------------------------------------------------------------------------------------------

struct Prometheus {
    _proc: Child,
    _dir: TempDir,
    addr: SocketAddr,
}

impl Prometheus {
    /// A Prometheus server on 127.0.0.1 scraping `target` every second with dashboards/alerts.yml
    /// loaded, storing into a fresh temp dir.
    fn start(binary: &Path, target: SocketAddr) -> Prometheus {
        let dir = TempDir::new();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: longhaul\n    static_configs:\n      - targets: [\"{target}\"]\n",
            rules = repo_file("dashboards/alerts.yml").display()
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        // The port comes from a released ephemeral port: a tiny race, retried once.
        for attempt in 0..3 {
            let addr = closed_port();
            let mut proc = Child::spawn(
                "prometheus",
                Command::new(binary)
                    .arg(format!("--config.file={}", config_path.display()))
                    .arg(format!(
                        "--storage.tsdb.path={}",
                        dir.path().join("data").display()
                    ))
                    .arg(format!("--web.listen-address={addr}"))
                    .arg("--log.level=warn"),
            );
            let (out, err) = (proc.take_stdout(), proc.take_stderr());
            proc.drain(out);
            proc.drain(err);
            let mut ready = false;
            poll_until(Duration::from_secs(30), Duration::from_millis(200), || {
                ready = matches!(try_http(addr, "GET", "/-/ready", None), Ok((200, _)));
                ready || proc.try_wait().is_some()
            });
            if ready {
                return Prometheus {
                    _proc: proc,
                    _dir: dir,
                    addr,
                };
            }
            eprintln!(
                "prometheus attempt {attempt} did not become ready:\n{}",
                proc.output()
            );
        }
        panic!("prometheus did not become ready");
    }

    /// An instant query through /api/v1/query: Ok(result vector) or Err(error text).
    fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let (_, body) = http(
            self.addr,
            "GET",
            &format!("/api/v1/query?query={}", percent_encode(expr)),
            None,
        );
        let v: Value = serde_json::from_str(&body)
            .map_err(|e| format!("response is not JSON ({e}): {body}"))?;
        if v["status"] != "success" {
            return Err(format!("{}: {}", v["errorType"], v["error"]));
        }
        match &v["data"]["result"] {
            Value::Array(samples) => Ok(samples.clone()),
            // A scalar or string result counts as one sample.
            other => Ok(vec![other.clone()]),
        }
    }

    /// The single value of a query that returns exactly one sample.
    fn scalar(&self, expr: &str) -> Option<f64> {
        let samples = self.query(expr).ok()?;
        let sample = samples.first()?;
        sample["value"][1].as_str()?.parse().ok()
    }

    /// Waits (bounded) until `expr` returns at least one sample.
    fn wait_for(&self, expr: &str, timeout: Duration) {
        let has_data = || matches!(self.query(expr), Ok(s) if !s.is_empty());
        assert!(
            support::poll_until(timeout, Duration::from_millis(500), has_data),
            "Prometheus never returned data for `{expr}` within {timeout:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Expressions from the dashboard and the rules file.
// ---------------------------------------------------------------------------------------------

fn dashboard() -> Value {
    let text = std::fs::read_to_string(repo_file("dashboards/longhaul.json"))
        .expect("read dashboards/longhaul.json");
    serde_json::from_str(&text).expect("dashboards/longhaul.json is JSON")
}

/// Every panel (rows' nested panels included) as (title, target exprs).
fn panels(dash: &Value) -> Vec<(String, Vec<String>)> {
    fn walk(list: &Value, out: &mut Vec<(String, Vec<String>)>) {
        for panel in list.as_array().into_iter().flatten() {
            let exprs: Vec<String> = panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t["expr"].as_str().map(str::to_string))
                .collect();
            if panel["type"] != "row" {
                out.push((panel["title"].as_str().unwrap_or("?").to_string(), exprs));
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

/// Grafana's variables replaced by what a test Prometheus can evaluate.
fn substitute_grafana_variables(expr: &str) -> String {
    expr.replace("${__rate_interval}", "15s")
        .replace("$__rate_interval", "15s")
        .replace("${__range}", "1m")
        .replace("$__range", "1m")
        .replace("${__interval}", "5s")
        .replace("$__interval", "5s")
        .replace("${upstream}", ".*")
        .replace("$upstream", ".*")
}

/// The `expr` of every rule in dashboards/alerts.yml, as (rule name, expression). A tiny reader
/// for the file's own layout (`expr: one line` or `expr: |` plus an indented block), so the
/// test needs no YAML crate; promtool checks the file itself.
fn alert_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo_file("dashboards/alerts.yml"))
        .expect("read dashboards/alerts.yml");
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut name = String::new();
    let mut i = 0;
    while i < lines.len() {
        let trimmed = lines[i].trim_start();
        let indent = lines[i].len() - trimmed.len();
        if let Some(n) = trimmed
            .strip_prefix("- alert:")
            .or(trimmed.strip_prefix("- record:"))
        {
            name = n.trim().to_string();
        } else if let Some(rest) = trimmed.strip_prefix("expr:") {
            let rest = rest.trim();
            if rest == "|" || rest == ">" || rest == "|-" || rest == ">-" {
                let mut block = Vec::new();
                while i + 1 < lines.len() {
                    let next = lines[i + 1];
                    let next_indent = next.len() - next.trim_start().len();
                    if !next.trim().is_empty() && next_indent <= indent {
                        break;
                    }
                    block.push(next.trim());
                    i += 1;
                }
                out.push((name.clone(), block.join("\n").trim().to_string()));
            } else {
                out.push((name.clone(), rest.trim_matches('\'').to_string()));
            }
        }
        i += 1;
    }
    out
}

/// Splits an expression at its top-level comparison and set operators (`==`, `!=`, `>`, `<`,
/// `>=`, `<=`, `and`, `or`, `unless`; parentheses, brackets, braces and strings respected) and
/// returns the operands that are not plain numbers.
///
/// An alert condition is legitimately empty while everything is healthy (`reuse < 0.5` with a
/// good reuse rate). Its operands are not: `A < 0.5 and B > 1` is checked by evaluating `A` and
/// `B` on their own, which catches a misspelt metric or label just as well.
fn condition_operands(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut start = 0;
    let mut i = 0;
    let word_at = |i: usize, w: &str| -> bool {
        let end = i + w.len();
        end <= chars.len()
            && chars[i..end].iter().collect::<String>() == w
            && (i == 0 || chars[i - 1].is_whitespace() || chars[i - 1] == ')')
            && (end == chars.len() || chars[end].is_whitespace() || chars[end] == '(')
    };
    while i < chars.len() {
        let c = chars[i];
        if let Some(q) = quote {
            if c == '\\' {
                i += 1;
            } else if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            _ if depth == 0 => {
                let op_len = if ["==", "!=", ">=", "<="]
                    .iter()
                    .any(|op| chars[i..].starts_with(&op.chars().collect::<Vec<_>>()))
                {
                    2
                } else if c == '>' || c == '<' {
                    1
                } else if let Some(w) = ["and", "or", "unless"].iter().find(|w| word_at(i, w)) {
                    w.len()
                } else {
                    0
                };
                if op_len > 0 {
                    parts.push(chars[start..i].iter().collect::<String>());
                    i += op_len;
                    // A `bool` modifier belongs to the comparison, not to the right operand.
                    while i < chars.len() && chars[i].is_whitespace() {
                        i += 1;
                    }
                    if word_at(i, "bool") {
                        i += 4;
                    }
                    start = i;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(chars[start..].iter().collect::<String>());
    parts
        .into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty() && p.parse::<f64>().is_err())
        .collect()
}

/// Every `longhaul_*` metric name an expression mentions, histogram suffixes removed.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("longhaul_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &expr[start..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|b| CONTRACT_METRICS.contains(b))
            .unwrap_or(name);
        names.insert(base.to_string());
        i = end;
    }
    names
}

// ---------------------------------------------------------------------------------------------
// Chromium, driven through chromedriver's W3C WebDriver HTTP API.
// ---------------------------------------------------------------------------------------------

struct Browser {
    driver: SocketAddr,
    session: String,
    _group: ProcessGroup,
    _proc: Child,
    _profile: TempDir,
}

impl Browser {
    fn start(chromium: &Path, chromedriver: &Path) -> Browser {
        let profile = TempDir::new();
        let mut proc = Child::spawn(
            "chromedriver",
            Command::new(chromedriver)
                .args(["--port=0", "--allowed-ips=127.0.0.1"])
                .process_group(0),
        );
        // chromedriver leads a process group of its own that chromium joins, so whatever goes
        // wrong, killing the group on drop leaves no browser behind.
        let group = ProcessGroup(proc.id());
        let stderr = proc.take_stderr();
        proc.drain(stderr);
        let stdout = proc.take_stdout();
        let port: u16 = proc.watch(stdout, STARTUP_TIMEOUT, |line| {
            let rest = line.split("started successfully on port ").nth(1)?;
            rest.trim_end_matches('.').trim().parse().ok()
        });
        let driver = SocketAddr::from(([127, 0, 0, 1], port));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.display().to_string(),
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--hide-scrollbars",
                    "--window-size=1400,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}});
        let (status, body) = http(driver, "POST", "/session", Some(&capabilities.to_string()));
        assert_eq!(status, 200, "chromedriver could not start chromium: {body}");
        let v: Value = serde_json::from_str(&body).expect("session JSON");
        let session = v["value"]["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string();
        Browser {
            driver,
            session,
            _group: group,
            _proc: proc,
            _profile: profile,
        }
    }

    fn command(&self, method: &str, what: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}/{what}", self.session);
        let body = body.map(|b| b.to_string());
        let (status, text) = http(self.driver, method, &path, body.as_deref());
        assert_eq!(status, 200, "webdriver {method} {what}: {text}");
        let v: Value = serde_json::from_str(&text).expect("webdriver JSON");
        v["value"].clone()
    }

    fn open(&self, url: &str) {
        self.command("POST", "url", Some(json!({ "url": url })));
    }

    fn eval(&self, script: &str) -> Value {
        self.command(
            "POST",
            "execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    fn screenshot_png(&self) -> Vec<u8> {
        let b64 = self.command("GET", "screenshot", None);
        base64_decode(b64.as_str().expect("screenshot is base64"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closing the session asks chromium to quit; the process group is killed right after.
        let path = format!("/session/{}", self.session);
        let _ = try_http(self.driver, "DELETE", &path, None);
    }
}

/// A process group (led by a child this test spawned with `process_group(0)`), killed on drop.
struct ProcessGroup(u32);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        send_signal(-(self.0 as i32), libc::SIGKILL);
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let digits: Vec<u32> = s.bytes().filter_map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut n = 0u32;
        for (i, d) in chunk.iter().enumerate() {
            n |= d << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len().saturating_sub(1)]);
    }
    out
}

/// Reads every server's cells from the page: one JSON object per row, keyed by data-field,
/// holding each cell's text.
const READ_STATUS_PAGE: &str = r#"
const rows = [];
for (const tr of document.querySelectorAll("tr[data-upstream][data-server]")) {
  const row = { upstream: tr.dataset.upstream, server: tr.dataset.server };
  for (const td of tr.querySelectorAll("[data-field]")) row[td.dataset.field] = td.textContent.trim();
  rows.push(row);
}
return rows;
"#;

/// The number in a cell's text ("1 234" -> 1234, "99.5%" -> 99.5, "5.0 s" -> 5.0).
fn cell_number(text: &str) -> Option<f64> {
    let cleaned: String = text
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == '.' || *c == '-')
        .collect();
    cleaned.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------------------

#[test]
fn promtool_accepts_metrics_exposition_after_traffic() {
    let Some(promtool) = require_tool("promtool") else {
        return;
    };
    let stack = Stack::start();
    let mut traffic = Traffic::start(stack.proxy.addr, 2, Duration::from_millis(2), 10);
    traffic.wait_ok(100, Duration::from_secs(30));
    traffic.stop();
    let metrics = stack.proxy.metrics_text();
    for name in CONTRACT_METRICS {
        assert!(
            metrics.contains(&format!("# TYPE {name} ")),
            "/metrics lacks {name} after traffic:\n{metrics}"
        );
    }
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("promtool finishes");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_alert_rules() {
    let Some(promtool) = require_tool("promtool") else {
        return;
    };
    let out = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(repo_file("dashboards/alerts.yml"))
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check rules failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_example_scrape_config() {
    let Some(promtool) = require_tool("promtool") else {
        return;
    };
    let out = Command::new(&promtool)
        .args(["check", "config"])
        .arg(repo_file("dashboards/prometheus.yml"))
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check config failed:\n{text}"
    );
    let config = std::fs::read_to_string(repo_file("dashboards/prometheus.yml")).unwrap();
    assert!(config.contains("job_name: longhaul"), "{config}");
    assert!(config.contains(":9901"), "{config}");
    assert!(config.contains("alerts.yml"), "{config}");
}

#[test]
fn dashboard_is_importable_with_datasource_and_upstream_variables() {
    let dash = dashboard();
    assert_eq!(dash["uid"], "longhaul");
    assert!(
        dash["schemaVersion"].as_u64().unwrap_or(0) >= 36,
        "schemaVersion too old"
    );
    assert!(
        dash["id"].is_null(),
        "an importable dashboard carries no database id"
    );
    let vars = dash["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no `{name}` template variable"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    let upstream = var("upstream");
    assert_eq!(upstream["type"], "query");
    let query = upstream["query"]["query"]
        .as_str()
        .unwrap_or_else(|| panic!("the `upstream` variable has no query.query: {upstream}"));
    assert!(query.starts_with("label_values("), "{query}");
    assert_eq!(
        upstream["definition"], upstream["query"]["query"],
        "the `upstream` variable's definition is its query"
    );
    assert_eq!(upstream["datasource"]["uid"], "${datasource}");

    let mut ids = BTreeSet::new();
    fn all_panels(list: &Value, out: &mut Vec<Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p.clone());
            all_panels(&p["panels"], out);
        }
    }
    let mut every = Vec::new();
    all_panels(&dash["panels"], &mut every);
    for panel in every.iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "duplicate id at {title}"
        );
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "panel {title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title} has no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "panel {title}");
        }
    }
    let titles: Vec<String> = panels(&dash)
        .into_iter()
        .map(|(t, _)| t.to_lowercase())
        .collect();
    for wanted in [
        "reuse rate",
        "connections saved",
        "tls handshakes saved",
        "client requests/s vs upstream connections opened/s",
        "pool busy / idle / waiters",
        "pool wait p99",
        "pool limit vs max_size",
        "request latency p50 / p99",
        "errors by kind",
        "retries by reason",
        "connections closed by reason",
        "keep-alive timeout",
        "server",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(wanted)),
            "no panel titled like `{wanted}` in {titles:?}"
        );
    }
}

#[test]
fn dashboard_and_alerts_name_only_contract_metrics() {
    let mut exprs: Vec<String> = panels(&dashboard())
        .into_iter()
        .flat_map(|(_, e)| e)
        .collect();
    exprs.extend(alert_exprs().into_iter().map(|(_, e)| e));
    assert!(exprs.len() > 10, "found only {} expressions", exprs.len());
    for expr in &exprs {
        for name in metric_names(expr) {
            assert!(
                CONTRACT_METRICS.contains(&name.as_str()),
                "`{name}` is not a metric the contract defines (in `{expr}`)"
            );
        }
    }
}

#[test]
fn every_dashboard_and_alert_expression_returns_data_in_prometheus() {
    let Some(prometheus_bin) = require_tool("prometheus") else {
        return;
    };
    let stack = Stack::start();
    let prometheus = Prometheus::start(&prometheus_bin, stack.proxy.admin);
    let traffic = Traffic::start(stack.proxy.addr, 2, Duration::from_millis(5), 10);
    traffic.wait_ok(50, Duration::from_secs(30));
    // Rates over 15s windows need a few scrapes of moving counters.
    prometheus.wait_for(
        "sum(rate(longhaul_upstream_requests_total[15s])) > 0",
        Duration::from_secs(60),
    );
    prometheus.wait_for(
        r#"sum(rate(longhaul_upstream_errors_total{kind="connect"}[15s])) > 0"#,
        Duration::from_secs(60),
    );

    // (what, expression as evaluated)
    let mut checks: Vec<(String, String)> = Vec::new();
    let dash = dashboard();
    for (title, exprs) in panels(&dash) {
        for expr in exprs {
            checks.push((
                format!("panel `{title}`"),
                substitute_grafana_variables(&expr),
            ));
        }
    }
    // The `upstream` variable's label_values(metric, label) must find the label on the metric.
    for var in dash["templating"]["list"].as_array().into_iter().flatten() {
        let q = var["query"]["query"]
            .as_str()
            .or(var["query"].as_str())
            .unwrap_or("");
        if let Some(args) = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
        {
            let (metric, label) = args.rsplit_once(',').expect("label_values(metric, label)");
            checks.push((
                format!("variable `{}`", var["name"]),
                format!("count by ({}) ({})", label.trim(), metric.trim()),
            ));
        }
    }
    for (name, expr) in alert_exprs() {
        // The whole condition must parse; each operand must return data (see condition_operands).
        checks.push((
            format!("alert {name} (whole condition, parse only)"),
            expr.clone(),
        ));
        for operand in condition_operands(&expr) {
            checks.push((format!("alert {name} operand"), operand));
        }
    }

    eprintln!("evaluating {} expressions in Prometheus", checks.len());
    let mut failures = Vec::new();
    for (what, expr) in &checks {
        let parse_only = what.contains("parse only");
        // A just-started series can need another scrape; retry briefly before calling it empty.
        let mut error = None;
        let answered =
            poll_until(
                Duration::from_secs(15),
                Duration::from_secs(1),
                || match prometheus.query(expr) {
                    Err(e) => {
                        error = Some(e);
                        true
                    }
                    Ok(samples) => parse_only || !samples.is_empty(),
                },
            );
        if let Some(e) = error {
            failures.push(format!("{what}: `{expr}` does not evaluate: {e}"));
        } else if !answered {
            failures.push(format!("{what}: `{expr}` returned no samples"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} expressions failed:\n{}\n\nproxy log tail:\n{}",
        failures.len(),
        checks.len(),
        failures.join("\n"),
        stack.proxy.stderr()
    );

    // Prometheus itself loaded and evaluated every rule without error.
    let (_, body) = http(prometheus.addr, "GET", "/api/v1/rules", None);
    let v: Value = serde_json::from_str(&body).expect("rules JSON");
    let rules: Vec<&Value> = v["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    assert_eq!(rules.len(), alert_exprs().len(), "rules loaded: {body}");
    for rule in rules {
        assert_ne!(rule["health"], "err", "rule failed to evaluate: {rule}");
    }
}

#[test]
fn prometheus_reuse_rate_matches_backend_stats() {
    let Some(prometheus_bin) = require_tool("prometheus") else {
        return;
    };
    // No warm pool here: topping the pool up to min_idle opens connections while no requests
    // flow (each time the backend's keep-alive timeout retires an idle one), which moves both
    // sides' counters while the test reads them one after the other.
    let stack = Stack::with_min_idle(0);
    let prometheus = Prometheus::start(&prometheus_bin, stack.proxy.admin);
    let mut traffic = Traffic::start(stack.proxy.addr, 2, Duration::from_millis(3), 0);
    traffic.wait_ok(400, Duration::from_secs(60));
    traffic.stop();

    // Take the backend's stats at a moment when longhaul's counters stand still (after the
    // traffic stops, the pool may still top itself up to min_idle), then wait until Prometheus
    // has scraped exactly those counter values.
    let legacy = ("upstream", "legacy");
    let counters = || {
        (
            stack
                .proxy
                .metric_or_zero("longhaul_upstream_requests_total", &[legacy]),
            stack
                .proxy
                .metric_or_zero("longhaul_upstream_connections_opened_total", &[legacy]),
        )
    };
    // Settled: two reads 200 ms apart agree.
    let mut settled = None;
    assert!(
        poll_until(Duration::from_secs(20), Duration::ZERO, || {
            let before = counters();
            let stats = stack.backend.counts();
            thread::sleep(Duration::from_millis(200));
            let still = counters() == before;
            if still {
                settled = Some((before, stats));
            }
            still
        }),
        "longhaul's counters never settled"
    );
    let ((requests, opened), (accepted, served)) = settled.expect("settled counts");
    let scraped = || {
        (
            prometheus.scalar(r#"sum(longhaul_upstream_requests_total{upstream="legacy"})"#),
            prometheus
                .scalar(r#"sum(longhaul_upstream_connections_opened_total{upstream="legacy"})"#),
        )
    };
    assert!(
        poll_until(
            Duration::from_secs(20),
            Duration::from_millis(300),
            || scraped() == (Some(requests), Some(opened))
        ),
        "Prometheus never saw the final counts ({requests} requests, {opened} opened): {:?}\n\
         Prometheus: {:?}\n/metrics:\n{}",
        scraped(),
        prometheus.query("longhaul_upstream_connections_opened_total"),
        stack.proxy.metrics_text()
    );
    assert!(served >= 400, "backend served only {served} requests");
    let backend_reuse = 1.0 - accepted as f64 / served as f64;

    // From connections opened: exactly the backend's accepted connections over its requests.
    let by_opened = prometheus
        .scalar(
            r#"1 - sum(longhaul_upstream_connections_opened_total{upstream="legacy"})
                 / sum(longhaul_upstream_requests_total{upstream="legacy"})"#,
        )
        .expect("opened-based reuse rate");
    assert!(
        (by_opened - backend_reuse).abs() < 0.001,
        "Prometheus: 1 - opened/requests = {by_opened:.4}; backend: 1 - {accepted}/{served} = {backend_reuse:.4}"
    );
    // From the connection label, as the dashboard computes it. A connection opened but never
    // used (min_idle warm-up) counts at the backend and not here: allow max_size+min_idle of them.
    let by_label = prometheus
        .scalar(
            r#"sum(longhaul_upstream_requests_total{upstream="legacy",connection="reused"})
                 / sum(longhaul_upstream_requests_total{upstream="legacy"})"#,
        )
        .expect("label-based reuse rate");
    eprintln!(
        "reuse rate: backend 1 - {accepted}/{served} = {backend_reuse:.4}, \
         Prometheus by opened {by_opened:.4}, by label {by_label:.4}"
    );
    let slack = 10.0 / served as f64 + 0.001;
    assert!(
        (by_label - backend_reuse).abs() <= slack,
        "Prometheus: reused/total = {by_label:.4}; backend: 1 - {accepted}/{served} = {backend_reuse:.4}"
    );
}

#[test]
fn status_page_has_no_external_urls() {
    let stack = Stack::start();
    let (status, body) = http(stack.proxy.admin, "GET", "/", None);
    assert_eq!(status, 200, "GET / on the admin listener: {body}");
    assert!(body.to_lowercase().contains("<html"), "not HTML: {body}");
    let lower = body.to_lowercase();
    for attr in ["src=", "href=", "url(", "@import", "action="] {
        for (at, _) in lower.match_indices(attr) {
            let value = lower[at + attr.len()..]
                .trim_start_matches(['"', '\'', ' '])
                .to_string();
            assert!(
                !(value.starts_with("http:")
                    || value.starts_with("https:")
                    || value.starts_with("//")),
                "status page loads an external resource: {}",
                &body[at..(at + 80).min(body.len())]
            );
        }
    }
    assert!(
        !lower.contains("http://") && !lower.contains("https://"),
        "status page mentions an absolute URL"
    );
}

#[test]
fn status_page_in_chromium_shows_the_numbers_from_pools() {
    let (Some(chromium), Some(chromedriver)) =
        (require_tool("chromium"), require_tool("chromedriver"))
    else {
        return;
    };
    let stack = Stack::start();
    let mut traffic = Traffic::start(stack.proxy.addr, 2, Duration::from_millis(4), 10);
    traffic.wait_ok(50, Duration::from_secs(30));
    let browser = Browser::start(&chromium, &chromedriver);
    browser.open(&format!("http://{}/", stack.proxy.admin));

    // Live: after a few seconds of samples the page shows traffic flowing.
    let mut rows = Value::Null;
    let flowing = poll_until(Duration::from_secs(20), Duration::from_millis(500), || {
        rows = browser.eval(READ_STATUS_PAGE);
        rows.as_array()
            .into_iter()
            .flatten()
            .find(|r| r["upstream"] == "legacy")
            .and_then(|r| cell_number(r["requests_per_second"].as_str()?))
            .is_some_and(|rps| rps > 0.0)
    });
    assert!(
        flowing,
        "the page never showed requests/s > 0 for legacy: {rows}"
    );
    thread::sleep(Duration::from_secs(8)); // a few more samples for the sparklines
    let png = browser.screenshot_png();
    assert!(png.starts_with(b"\x89PNG"), "screenshot is not a PNG");
    let artifacts = repo_file("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("create target/test-artifacts");
    std::fs::write(artifacts.join("status-page.png"), &png).expect("save screenshot");

    // Quiet: with traffic stopped and the pool settled, every cell equals /pools.
    traffic.stop();
    let mut last = Value::Null;
    let matched = poll_until(Duration::from_secs(20), Duration::ZERO, || {
        let pools = get_json(stack.proxy.admin, "/pools");
        thread::sleep(Duration::from_millis(2500)); // at least two page refreshes
        let rows = browser.eval(READ_STATUS_PAGE);
        let again = get_json(stack.proxy.admin, "/pools");
        if pools != again {
            last = json!({ "pools changed while the page refreshed": [pools, again] });
            return false;
        }
        match compare_page_with_pools(&rows, &pools) {
            Ok(()) => true,
            Err(e) => {
                last = json!({ "mismatch": e, "page": rows, "pools": pools });
                false
            }
        }
    });
    assert!(matched, "the status page did not match /pools: {last:#}");
}

/// Every server in /pools has a row whose cells show its numbers.
fn compare_page_with_pools(rows: &Value, pools: &Value) -> Result<(), String> {
    let rows = rows.as_array().ok_or("page rows are not a list")?;
    let mut servers = 0;
    for upstream in pools["upstreams"].as_array().into_iter().flatten() {
        let name = upstream["name"].as_str().unwrap_or("");
        for s in upstream["servers"].as_array().into_iter().flatten() {
            servers += 1;
            let address = s["address"].as_str().unwrap_or("");
            let row = rows
                .iter()
                .find(|r| r["upstream"] == name && r["server"] == address)
                .ok_or(format!("no row for {name} {address}"))?;
            let cell = |field: &str| row[field].as_str().unwrap_or("").to_string();
            let number = |field: &str| cell_number(&cell(field));
            for field in [
                "busy", "idle", "waiters", "max_size", "limit", "requests", "opened",
            ] {
                let want = s[field].as_f64();
                if number(field) != want {
                    return Err(format!(
                        "{name} {address} {field}: page shows {:?}, /pools has {want:?}",
                        cell(field)
                    ));
                }
            }
            if let Some(ratio) = s["reuse_ratio"].as_f64() {
                let want = format!("{:.1}%", ratio * 100.0);
                if cell("reuse_ratio") != want {
                    return Err(format!(
                        "{name} {address} reuse_ratio: page shows {:?}, /pools has {ratio} ({want})",
                        cell("reuse_ratio")
                    ));
                }
            }
            match s["keepalive_timeout_seconds"].as_f64() {
                Some(t)
                    if number("keepalive_timeout_seconds") != Some((t * 10.0).round() / 10.0) =>
                {
                    return Err(format!(
                        "{name} {address} keep-alive: page shows {:?}, /pools has {t}",
                        cell("keepalive_timeout_seconds")
                    ));
                }
                None if number("keepalive_timeout_seconds").is_some() => {
                    return Err(format!(
                        "{name} {address} keep-alive: page shows {:?}, /pools has null",
                        cell("keepalive_timeout_seconds")
                    ));
                }
                _ => {}
            }
            let tls = if s["tls"] == true { "TLS" } else { "plain" };
            if cell("tls") != tls {
                return Err(format!(
                    "{name} {address} tls: page shows {:?}, /pools says {}",
                    cell("tls"),
                    s["tls"]
                ));
            }
            let handshakes = s["tls"]
                .as_bool()
                .filter(|&on| on)
                .and(s["tls_handshakes"].as_f64());
            if number("tls_handshakes") != handshakes {
                return Err(format!(
                    "{name} {address} tls_handshakes: page shows {:?}, /pools has {handshakes:?}",
                    cell("tls_handshakes")
                ));
            }
            let resumed = match s["tls_resumed_ratio"].as_f64() {
                Some(ratio) => format!("{:.1}%", ratio * 100.0),
                None => "–".to_string(),
            };
            if cell("tls_resumed_ratio") != resumed {
                return Err(format!(
                    "{name} {address} tls_resumed_ratio: page shows {:?}, /pools has {resumed}",
                    cell("tls_resumed_ratio")
                ));
            }
            let healthy = if s["healthy"] == true { "up" } else { "down" };
            if cell("healthy") != healthy {
                return Err(format!(
                    "{name} {address} health: page shows {:?}, /pools says {healthy}",
                    cell("healthy")
                ));
            }
            // Quiet traffic: no requests between samples.
            for field in ["requests_per_second", "opened_per_second"] {
                if number(field) != Some(0.0) {
                    return Err(format!(
                        "{name} {address} {field}: page shows {:?} with no traffic",
                        cell(field)
                    ));
                }
            }
        }
    }
    if servers == 0 || rows.len() != servers {
        return Err(format!(
            "page has {} server rows, /pools has {servers} servers",
            rows.len()
        ));
    }
    Ok(())
}

/// A self-check of the helper the Prometheus test relies on.
#[test]
fn condition_operands_drop_thresholds_and_keep_selectors() {
    assert_eq!(
        condition_operands(r#"(a{x="<1"} / b) < 0.5 and sum by (u) (rate(c[5m])) > 1"#),
        vec![r#"(a{x="<1"} / b)"#, "sum by (u) (rate(c[5m]))"]
    );
    assert_eq!(condition_operands("up == 0"), vec!["up"]);
    assert_eq!(
        condition_operands("min_over_time(w[5m]) > 0\nand\nderiv(w[5m]) > 0"),
        vec!["min_over_time(w[5m])", "deriv(w[5m])"]
    );
}
