//! Runs the real `longhaul` binary as a child process with a config written to a temp dir, learns
//! its ports from the `longhaul started` log line, keeps its stderr, and stops it on drop.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::client::{self, Response};
use super::process::{die_with_parent, send_signal};

pub const BIN: &str = env!("CARGO_BIN_EXE_longhaul");

/// How long the proxy gets to log `longhaul started`.
const START_TIMEOUT: Duration = Duration::from_secs(20);

// === config builder ===

/// Ordered `key = value` lines of one TOML table; setting a key again replaces it.
#[derive(Clone, Default)]
pub struct Table(Vec<(String, String)>);

impl Table {
    pub fn set(&mut self, key: &str, value: &str) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value.to_string(),
            None => self.0.push((key.to_string(), value.to_string())),
        }
    }
    fn render(&self, out: &mut String) {
        for (k, v) in &self.0 {
            out.push_str(&format!("{k} = {v}\n"));
        }
    }
}

#[derive(Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub table: Table,
    pub pool: Table,
    /// `[upstream.tls]`, rendered when set (even empty: TLS with every default).
    pub tls: Option<Table>,
}

/// Runs every test proxy with this many event loops (`[server] workers`): a number or `auto`.
/// Unset: the proxy's own default. A test that needs a count sets `workers` itself.
pub const WORKERS_ENV: &str = "LONGHAUL_TEST_WORKERS";

/// `config` with `workers = $LONGHAUL_TEST_WORKERS` under `[server]`, unless it sets `workers`
/// itself or the variable is unset.
fn with_test_workers(config: &str) -> String {
    let Some(value) = workers_from_env() else {
        return config.to_string();
    };
    if config
        .lines()
        .any(|l| l.trim_start().starts_with("workers"))
    {
        return config.to_string();
    }
    match config.find("[server]\n") {
        Some(at) => {
            let end = at + "[server]\n".len();
            format!("{}workers = {value}\n{}", &config[..end], &config[end..])
        }
        None => format!("[server]\nworkers = {value}\n{config}"),
    }
}

/// `[server] workers` as TOML from `LONGHAUL_TEST_WORKERS`, if set.
fn workers_from_env() -> Option<String> {
    let value = std::env::var(WORKERS_ENV).ok()?;
    let value = value.trim();
    Some(match value.parse::<usize>() {
        Ok(n) => n.to_string(),
        Err(_) => format!("\"{value}\""),
    })
}

/// A proxy.toml for tests: listen and admin on 127.0.0.1:0, JSON logs, pool `min_idle = 0` (so
/// connection counts are exact) unless a test sets it, `workers` from `LONGHAUL_TEST_WORKERS`.
/// Values are raw TOML (quote strings).
#[derive(Clone)]
pub struct ProxyConfig {
    pub server: Table,
    /// `[server.tls]`, written when a test sets one of its keys.
    pub server_tls: Option<Table>,
    pub log: Table,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<Table>,
}

impl ProxyConfig {
    /// No upstreams yet.
    pub fn empty() -> ProxyConfig {
        let mut server = Table::default();
        server.set("listen", "\"127.0.0.1:0\"");
        if let Some(workers) = workers_from_env() {
            server.set("workers", &workers);
        }
        let mut log = Table::default();
        log.set("level", "\"info\"");
        log.set("format", "\"json\"");
        log.set("access_log", "true");
        ProxyConfig {
            server,
            server_tls: None,
            log,
            upstreams: Vec::new(),
            routes: Vec::new(),
        }
    }

    /// One upstream "legacy" (http/1.0) with the given servers.
    pub fn single(servers: &[SocketAddr]) -> ProxyConfig {
        ProxyConfig::empty().upstream("legacy", servers)
    }

    pub fn upstream(mut self, name: &str, servers: &[SocketAddr]) -> ProxyConfig {
        let mut table = Table::default();
        table.set("name", &format!("\"{name}\""));
        let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
        table.set("servers", &format!("[{}]", list.join(", ")));
        table.set("protocol", "\"http/1.0\"");
        let mut pool = Table::default();
        pool.set("min_idle", "0");
        self.upstreams.push(UpstreamConfig {
            name: name.to_string(),
            table,
            pool,
            tls: None,
        });
        self
    }

    pub fn server(mut self, key: &str, value: &str) -> ProxyConfig {
        self.server.set(key, value);
        self
    }

    /// Sets a key of `[server.tls]`.
    pub fn server_tls(mut self, key: &str, value: &str) -> ProxyConfig {
        self.server_tls
            .get_or_insert_with(Table::default)
            .set(key, value);
        self
    }

    pub fn log(mut self, key: &str, value: &str) -> ProxyConfig {
        self.log.set(key, value);
        self
    }

    /// Sets a key of the last upstream.
    pub fn up(mut self, key: &str, value: &str) -> ProxyConfig {
        self.upstreams
            .last_mut()
            .expect("an upstream")
            .table
            .set(key, value);
        self
    }

    /// Sets a key of the last upstream's pool.
    pub fn pool(mut self, key: &str, value: &str) -> ProxyConfig {
        self.upstreams
            .last_mut()
            .expect("an upstream")
            .pool
            .set(key, value);
        self
    }

    /// Sets a key of the last upstream's `[upstream.tls]` (creating the table); an empty `key`
    /// only creates it.
    pub fn tls(mut self, key: &str, value: &str) -> ProxyConfig {
        let tls = self
            .upstreams
            .last_mut()
            .expect("an upstream")
            .tls
            .get_or_insert_with(Table::default);
        if !key.is_empty() {
            tls.set(key, value);
        }
        self
    }

    pub fn route(mut self, host: &str, path_prefix: &str, upstream: &str) -> ProxyConfig {
        let mut t = Table::default();
        t.set("host", &format!("\"{host}\""));
        t.set("path_prefix", &format!("\"{path_prefix}\""));
        t.set("upstream", &format!("\"{upstream}\""));
        self.routes.push(t);
        self
    }

    pub fn render(&self) -> String {
        let mut out = String::from("[server]\n");
        self.server.render(&mut out);
        if let Some(tls) = &self.server_tls {
            out.push_str("\n[server.tls]\n");
            tls.render(&mut out);
        }
        out.push_str("\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[log]\n");
        self.log.render(&mut out);
        for u in &self.upstreams {
            out.push_str("\n[[upstream]]\n");
            u.table.render(&mut out);
            out.push_str("\n[upstream.pool]\n");
            u.pool.render(&mut out);
            if let Some(tls) = &u.tls {
                out.push_str("\n[upstream.tls]\n");
                tls.render(&mut out);
            }
        }
        for r in &self.routes {
            out.push_str("\n[[route]]\n");
            r.render(&mut out);
        }
        out
    }
}

// === temp dirs ===

static DIR_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let n = DIR_COUNTER.fetch_add(1, Ordering::SeqCst);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("longhaul-test-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    /// Writes `proxy.toml` with `text` and returns its path.
    pub fn write_config(&self, text: &str) -> PathBuf {
        let path = self.0.join("proxy.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// === running the proxy ===

/// A running longhaul; SIGTERM then kill on drop. Every test starts the binary through this
/// guard (or `run` for a command that ends by itself).
pub struct Proxy {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// The first `tls_listen` address, when the config has one.
    pub tls_addr: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
    /// Lines not yet looked at by `next_log`.
    new_lines: Mutex<mpsc::Receiver<String>>,
    reader: Option<JoinHandle<()>>,
    _dir: Option<TempDir>,
}

/// Reads a field of a JSON log line, whether flattened at the top level or under "fields".
pub fn log_field<'a>(line: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    line.get(key)
        .or_else(|| line.get("fields").and_then(|f| f.get(key)))
}

pub fn parse_log_line(line: &str) -> Option<serde_json::Value> {
    serde_json::from_str(line.trim()).ok()
}

pub fn log_message(line: &serde_json::Value) -> Option<&str> {
    log_field(line, "message").and_then(|m| m.as_str())
}

/// A longhaul process's stderr, read on a thread: every line is kept (for failure messages) and
/// sent on to `new_lines` as it comes (for waiting on a log line).
struct StderrLog {
    lines: Arc<Mutex<Vec<String>>>,
    new_lines: mpsc::Receiver<String>,
    reader: JoinHandle<()>,
}

impl StderrLog {
    fn keep(stderr: impl Read + Send + 'static) -> StderrLog {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, new_lines) = mpsc::channel::<String>();
        let keep = lines.clone();
        let reader = thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                keep.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        StderrLog {
            lines,
            new_lines,
            reader,
        }
    }
}

/// The listeners a `longhaul started` line names: the first of `listen` and of `tls_listen`
/// (comma-separated lists), and `admin`.
pub struct Started {
    pub addr: SocketAddr,
    pub tls_addr: Option<SocketAddr>,
    pub admin: SocketAddr,
}

/// What a stderr line says about start-up.
enum StartLine {
    NotIt,
    Started(Started),
    /// The start line, without usable `listen`/`admin` fields.
    Unusable,
}

impl Started {
    /// Reads a stderr line in either log format (JSON or text).
    fn from_stderr_line(line: &str) -> StartLine {
        let fields: Vec<(String, String)> = match parse_log_line(line) {
            Some(v) if log_message(&v) == Some("longhaul started") => {
                ["listen", "tls_listen", "admin"]
                    .into_iter()
                    .filter_map(|key| {
                        Some((key.to_string(), log_field(&v, key)?.as_str()?.to_string()))
                    })
                    .collect()
            }
            Some(_) => return StartLine::NotIt,
            None if line.contains(" longhaul started ") => line
                .split_whitespace()
                .filter_map(|word| word.split_once('='))
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            None => return StartLine::NotIt,
        };
        let first = |key: &str| -> Option<SocketAddr> {
            let (_, list) = fields.iter().find(|(k, _)| k == key)?;
            list.split(',').next()?.trim().parse().ok()
        };
        match (first("listen"), first("admin")) {
            (Some(addr), Some(admin)) => StartLine::Started(Started {
                addr,
                tls_addr: first("tls_listen"),
                admin,
            }),
            _ => StartLine::Unusable,
        }
    }
}

impl Proxy {
    pub fn start(config: &ProxyConfig) -> Proxy {
        Proxy::start_raw(&config.render())
    }

    /// Starts longhaul with this config text; `LONGHAUL_TEST_WORKERS` sets `[server] workers`
    /// unless the text sets `workers` itself.
    pub fn start_text(config_text: &str) -> Proxy {
        Proxy::start_raw(&with_test_workers(config_text))
    }

    /// Starts longhaul with this exact config text.
    pub fn start_raw(config_text: &str) -> Proxy {
        let dir = TempDir::new();
        let config_path = dir.write_config(config_text);
        let mut proxy = Proxy::launch(Path::new(BIN), &config_path, &[]);
        proxy._dir = Some(dir);
        proxy
    }

    /// Starts `program --config config_path` with `env` added, and waits for its start line.
    /// The caller owns the config file (an upgrade test rewrites it for the next process).
    pub fn launch(program: &Path, config_path: &Path, env: &[(&str, &str)]) -> Proxy {
        let mut cmd = Command::new(program);
        cmd.arg("--config")
            .arg(config_path)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = die_with_parent(&mut cmd).spawn().expect("spawn longhaul");
        let log = StderrLog::keep(child.stderr.take().expect("stderr pipe"));
        let failed = |child: &mut Child, why: &str| -> ! {
            let _ = child.kill();
            let _ = child.wait();
            let config = std::fs::read_to_string(config_path).unwrap_or_default();
            let stderr = log.lines.lock().unwrap().join("\n");
            panic!("{why}.\nconfig:\n{config}\nstderr:\n{stderr}");
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let started = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                failed(
                    &mut child,
                    &format!("longhaul did not log `longhaul started` within {START_TIMEOUT:?}"),
                );
            }
            match log
                .new_lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(line) => match Started::from_stderr_line(&line) {
                    StartLine::Started(started) => break started,
                    StartLine::Unusable => failed(
                        &mut child,
                        &format!("`longhaul started` without usable listen/admin fields: {line}"),
                    ),
                    StartLine::NotIt => continue,
                },
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stderr closed: the process is exiting; its status says how.
                    let status = wait_bounded(&mut child, Duration::from_secs(5));
                    failed(
                        &mut child,
                        &format!("longhaul exited early ({status:?}) before `longhaul started`"),
                    );
                }
            }
        };
        Proxy {
            child: Some(child),
            addr: started.addr,
            tls_addr: started.tls_addr,
            admin: started.admin,
            config_path: config_path.to_path_buf(),
            lines: log.lines,
            new_lines: Mutex::new(log.new_lines),
            reader: Some(log.reader),
            _dir: None,
        }
    }

    /// Everything longhaul wrote to stderr so far, one string.
    pub fn stderr(&self) -> String {
        self.stderr_lines().join("\n")
    }

    /// Every stderr line so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The last 30 stderr lines, for a failure message.
    pub fn stderr_tail(&self) -> String {
        let lines = self.lines.lock().unwrap();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Stderr lines that parse as JSON.
    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        self.stderr_lines()
            .iter()
            .filter_map(|l| parse_log_line(l))
            .collect()
    }

    /// JSON log lines with this message, in order.
    pub fn messages(&self, message: &str) -> Vec<serde_json::Value> {
        self.log_lines()
            .into_iter()
            .filter(|v| log_message(v) == Some(message))
            .collect()
    }

    pub fn admin_get(&self, path: &str) -> Response {
        client::request(
            self.admin,
            format!("GET {path} HTTP/1.0\r\nHost: admin\r\n\r\n").as_bytes(),
        )
    }

    pub fn metrics_text(&self) -> String {
        let r = self.admin_get("/metrics");
        assert_eq!(r.status, 200, "GET /metrics: {}", r.body_str());
        r.body_str()
    }

    /// Sum of every series of `name` whose labels include all of `labels`; None if none matched.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_in(&self.metrics_text(), name, labels)
    }

    /// Like `metric`, 0 when no series matched (counters not yet touched).
    pub fn metric_or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.metric(name, labels).unwrap_or(0.0)
    }

    /// GET /pools as JSON.
    pub fn pools(&self) -> serde_json::Value {
        let r = self.admin_get("/pools");
        assert_eq!(r.status, 200, "GET /pools: {}", r.body_str());
        serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("/pools is not JSON ({e}): {}", r.body_str()))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Sends a signal by name ("HUP", "TERM", "USR2") to the running proxy.
    pub fn signal(&self, name: &str) {
        let signal = match name {
            "HUP" => libc::SIGHUP,
            "TERM" => libc::SIGTERM,
            "USR2" => libc::SIGUSR2,
            other => panic!("no signal named {other:?} here"),
        };
        assert!(
            send_signal(self.pid() as i32, signal),
            "kill -{name} {} failed",
            self.pid()
        );
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The child's exit status, once it has exited (it stays reapable until then).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Waits (bounded) for a JSON log line matching `pred`, among every line so far.
    pub fn wait_for_log(
        &self,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.log_lines().into_iter().find(|v| pred(v)) {
                return Some(v);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The next JSON log line with this message, not counting lines an earlier `next_log`
    /// passed over; panics with the log's tail after `timeout`.
    pub fn next_log(&self, timeout: Duration, message: &str) -> serde_json::Value {
        let new_lines = self.new_lines.lock().unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match new_lines.recv_timeout(left) {
                Ok(line) => match parse_log_line(&line) {
                    Some(v) if log_message(&v) == Some(message) => return v,
                    _ => {}
                },
                Err(_) => panic!("no {message:?} in the log:\n{}", self.stderr_tail()),
            }
        }
    }

    /// Whether every process writing to this stderr pipe (this child, and any process it
    /// handed the pipe to) has closed it within `timeout`.
    pub fn stderr_closed_within(&mut self, timeout: Duration) -> bool {
        let Some(reader) = self.reader.take() else {
            return true;
        };
        let deadline = Instant::now() + timeout;
        while !reader.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        if reader.is_finished() {
            let _ = reader.join();
            true
        } else {
            self.reader = Some(reader);
            false
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit status; kills it if it does not exit.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            // Reaped already: its pid may belong to another process now.
            self.stderr_closed_within(Duration::from_secs(2));
            return Some(status);
        }
        send_signal(child.id() as i32, libc::SIGTERM);
        let status = wait_bounded(&mut child, Duration::from_secs(10));
        let status = match status {
            Some(s) => Some(s),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                None
            }
        };
        self.stderr_closed_within(Duration::from_secs(2));
        status
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Parses Prometheus text and sums every series of `name` whose labels include `labels`.
pub fn metric_in(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(pair) => pair,
            None => continue,
        };
        let (metric, label_text) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let parsed = parse_labels(label_text);
        let all = labels
            .iter()
            .all(|(k, v)| parsed.iter().any(|(pk, pv)| pk == k && pv == v));
        if !all {
            continue;
        }
        if let Ok(v) = value.trim().parse::<f64>() {
            *total.get_or_insert(0.0) += v;
        }
    }
    total
}

/// Like `metric_in`, 0 when no series matched (counters not yet touched).
pub fn metric_sum_in(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_in(text, name, labels).unwrap_or(0.0)
}

fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        value.push(match n {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => break,
                other => value.push(other),
            }
        }
        out.push((key.trim().to_string(), value));
    }
    out
}

// === one-shot runs (config errors, check) ===

/// Result of running longhaul to completion.
pub struct Run {
    /// None when it had to be killed (did not exit in time).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs longhaul with `args`, killing it after `timeout`.
pub fn run(args: &[&str], timeout: Duration) -> Run {
    run_to_end(Path::new(BIN), args, timeout, true)
}

/// Runs `program` (a copy of longhaul, or a script installed in its place) like `run`.
pub fn run_program(program: &Path, args: &[&str], timeout: Duration) -> Run {
    run_to_end(program, args, timeout, true)
}

/// Runs longhaul with `args` and its stdout a pipe whose read end is closed at once, as
/// `longhaul ... | head -0` would; killed after `timeout`. `stdout` is always empty.
pub fn run_with_stdout_closed(args: &[&str], timeout: Duration) -> Run {
    run_to_end(Path::new(BIN), args, timeout, false)
}

fn run_to_end(program: &Path, args: &[&str], timeout: Duration, read_stdout: bool) -> Run {
    let mut command = Command::new(program);
    let mut child = die_with_parent(&mut command)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn longhaul");
    let out = child.stdout.take().expect("stdout");
    let out_t = if read_stdout {
        Some(read_all(out))
    } else {
        drop(out); // the read end closes now: the child's writes meet a broken pipe
        None
    };
    let err_t = read_all(child.stderr.take().expect("stderr"));
    let code = match wait_bounded(&mut child, timeout) {
        Some(status) => status.code(),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    };
    Run {
        code,
        stdout: out_t
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

/// Reads `pipe` to its end on a thread of its own.
fn read_all(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    })
}
