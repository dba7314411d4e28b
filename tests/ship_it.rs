//! What a newcomer runs first: `longhaul demo`, the standalone backend simulator, and the logs
//! a person (text) or a pipeline (JSON) reads. Real processes, loopback only.
// Wall-clock time is right here: the processes under test are out of reach of tokio's clock.
#![allow(clippy::disallowed_types)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

mod support;

use support::backend_sim::BackendSim;
use support::proxy::{self, Proxy};

/// A demo run ends well within this, or is killed.
const DEMO_TIMEOUT: Duration = Duration::from_secs(120);

/// Sends raw bytes and reads one response head and its Content-Length body.
fn exchange(conn: &mut TcpStream, request: &str) -> (String, String) {
    conn.write_all(request.as_bytes()).expect("write");
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("read head");
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line);
    }
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("read body");
    (head, String::from_utf8_lossy(&body).into_owned())
}

fn closed_within(conn: &mut TcpStream, limit: Duration) -> bool {
    conn.set_read_timeout(Some(limit)).expect("timeout");
    let mut buf = [0u8; 1];
    matches!(conn.read(&mut buf), Ok(0))
}

#[test]
fn demo_runs_end_to_end_and_prints_the_comparison() {
    let out = proxy::run(
        &["demo", "-n", "400", "-c", "8", "--conn-cost", "2ms"],
        DEMO_TIMEOUT,
    );
    let stdout = out.stdout;
    assert_eq!(out.code, Some(0), "demo failed: {stdout}\n{}", out.stderr);
    let row = |label: &str| {
        stdout
            .lines()
            .rfind(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no `{label}` row in:\n{stdout}"))
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let direct = row("direct to the backend");
    let through = row("through longhaul");
    // columns after the label: requests, backend conns, reuse, req/s, p50, p99
    assert_eq!(direct[4], "400");
    assert_eq!(through[2], "400");
    assert_eq!(
        direct[5], "400",
        "every direct request costs a backend connection"
    );
    let pooled: u64 = through[3].parse().expect("backend conns");
    assert!(
        pooled <= 32,
        "through longhaul the backend saw {pooled} connections for 400 requests"
    );
    assert!(stdout.contains("as fast"), "{stdout}");
}

/// `longhaul demo --tls -n 300 -c 8 --conn-cost 0ms`: its stdout, the run having succeeded.
fn demo_tls_stdout() -> String {
    let out = proxy::run(
        &[
            "demo",
            "--tls",
            "-n",
            "300",
            "-c",
            "8",
            "--conn-cost",
            "0ms",
        ],
        DEMO_TIMEOUT,
    );
    let stdout = out.stdout;
    assert_eq!(
        out.code,
        Some(0),
        "demo --tls failed: {stdout}\n{}",
        out.stderr
    );
    assert!(stdout.contains("backend TLS hs"), "{stdout}");
    stdout
}

/// The columns after `label` in the demo's table: requests, client TLS handshakes, backend conns,
/// backend TLS handshakes, reuse, ...
fn demo_row(stdout: &str, label: &str) -> Vec<String> {
    stdout
        .lines()
        .rfind(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no `{label}` row in:\n{stdout}"))
        .strip_prefix(label)
        .expect("starts with the label")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn demo_with_tls_shows_backend_handshakes_direct_and_through_longhaul() {
    let stdout = demo_tls_stdout();
    let direct = demo_row(&stdout, "direct (HTTPS)");
    assert_eq!(direct[0], "300");
    assert_eq!(
        direct[3], "300",
        "every direct HTTPS request is a handshake"
    );
    let through = demo_row(&stdout, "through longhaul (HTTPS)");
    assert_eq!(through[0], "300");
    let handshakes: u64 = through[3].parse().expect("backend TLS handshakes");
    assert!(
        handshakes <= 32,
        "through longhaul the backend made {handshakes} TLS handshakes for 300 requests"
    );
}

#[test]
fn demo_with_tls_clients_make_a_tls_handshake_with_longhaul_per_request() {
    let stdout = demo_tls_stdout();
    let through = demo_row(&stdout, "through longhaul (HTTPS)");
    assert_eq!(
        through[1], "300",
        "client TLS handshakes with longhaul:\n{stdout}"
    );
}

#[test]
fn backend_sim_keeps_http10_connections_alive_and_counts_them() {
    let sim = BackendSim::start(&["--conn-cost", "0ms", "--body-size", "10"]);
    let mut conn = TcpStream::connect(sim.addr).expect("connect");
    for _ in 0..3 {
        let (head, body) = exchange(
            &mut conn,
            "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        );
        assert!(head.starts_with("HTTP/1.0 200"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("connection: keep-alive"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase().contains("keep-alive: timeout=5"),
            "{head}"
        );
        assert_eq!(body.len(), 10);
    }
    assert_eq!(sim.counts(), (1, 3));
}

#[test]
fn backend_sim_closes_after_max_requests() {
    let sim = BackendSim::start(&["--conn-cost", "0ms", "--max-requests", "2"]);
    let mut conn = TcpStream::connect(sim.addr).expect("connect");
    let (first, _) = exchange(
        &mut conn,
        "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    );
    assert!(
        first
            .to_ascii_lowercase()
            .contains("keep-alive: timeout=5, max=1"),
        "{first}"
    );
    let (second, _) = exchange(
        &mut conn,
        "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    );
    assert!(
        second.to_ascii_lowercase().contains("connection: close"),
        "{second}"
    );
    assert!(
        closed_within(&mut conn, Duration::from_secs(2)),
        "still open after max requests"
    );
}

#[test]
fn backend_sim_closes_idle_connections_after_its_keepalive_timeout() {
    let sim = BackendSim::start(&["--conn-cost", "0ms", "--keepalive-timeout", "300ms"]);
    let mut conn = TcpStream::connect(sim.addr).expect("connect");
    exchange(
        &mut conn,
        "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    );
    let idle = Instant::now();
    assert!(
        closed_within(&mut conn, Duration::from_secs(3)),
        "idle connection never closed"
    );
    let waited = idle.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "closed after {waited:?}, before its timeout"
    );
}

#[test]
fn backend_sim_charges_its_cost_once_per_connection() {
    let sim = BackendSim::start(&["--conn-cost", "200ms"]);
    let mut conn = TcpStream::connect(sim.addr).expect("connect");
    let t = Instant::now();
    exchange(
        &mut conn,
        "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    );
    let first = t.elapsed();
    let t = Instant::now();
    exchange(
        &mut conn,
        "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    );
    let second = t.elapsed();
    assert!(
        first >= Duration::from_millis(190),
        "first request took {first:?}"
    );
    assert!(
        second < Duration::from_millis(150),
        "a kept-alive request paid again: {second:?}"
    );
}

#[test]
fn backend_sim_answers_http11_when_asked() {
    let sim = BackendSim::start(&["--conn-cost", "0ms", "--protocol", "http/1.1"]);
    let mut conn = TcpStream::connect(sim.addr).expect("connect");
    let (head, _) = exchange(&mut conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

/// Starts the proxy with `log` settings and returns its stderr lines up to the start line.
fn start_lines(log: &str) -> Vec<String> {
    let proxy = Proxy::start_raw(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\n{log}\n\
         [[upstream]]\nname = \"legacy\"\nservers = [\"127.0.0.1:9\"]\n[upstream.pool]\nmin_idle = 0\n"
    ));
    let mut lines = proxy.stderr_lines();
    let start = lines
        .iter()
        .position(|l| l.contains("longhaul started"))
        .expect("the start line");
    lines.truncate(start + 1);
    lines
}

#[test]
fn text_logs_are_readable_lines_naming_listeners_and_pools() {
    let lines = start_lines("format = \"text\"");
    let started = lines
        .iter()
        .find(|l| l.contains("longhaul started"))
        .expect("start line");
    assert!(
        !started.trim_start().starts_with('{'),
        "text log looks like JSON: {started}"
    );
    assert!(started.contains("listen=127.0.0.1:"), "{started}");
    assert!(started.contains("max_size=32"), "{started}");
    assert!(
        !started.contains('\u{1b}'),
        "colour codes in a non-terminal log: {started:?}"
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let lines = start_lines("format = \"json\"");
    assert!(!lines.is_empty());
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
    let started: serde_json::Value =
        serde_json::from_str(lines.last().expect("a line")).expect("JSON");
    assert_eq!(started["message"], "longhaul started");
    assert!(
        started["upstreams"]
            .as_str()
            .is_some_and(|u| u.contains("legacy")),
        "{started}"
    );
}
