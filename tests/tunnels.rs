//! Tunnels in reverse mode, end to end through the real binary: WebSocket-style upgrades (101, then
//! raw bytes both ways, and a close on either side reaching the other), a refused upgrade forwarded
//! as a normal response, and CONNECT (allowed only to hosts a route names, 405 when disabled).

use std::time::Duration;

use lab::{connect, read_exactly, read_head};
use std::io::Write;
use std::net::Shutdown;
use support::backend::{Backend, Echo, Reply};

const UPGRADE_REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\n\
Host: chat.example\r\n\
Connection: Upgrade\r\n\
Upgrade: websocket\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\r\n";

const SWITCHING: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

/// A masked WebSocket text frame ("Hello") followed by every byte value: binary-safe both ways.
fn ws_payload() -> Vec<u8> {
    let mut p = vec![
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    p.extend(0u8..=255);
    p
}

/// A longhaul config with one upstream `ws` -> `backend` and a catch-all route.
/// Loopback listeners and JSON logs; `upstreams` are `(name, server)` pairs, `routes` are
/// `(host, upstream)` pairs, each upstream with no warm connections.
fn proxy_config(
    allow_connect: bool,
    upstreams: &[(&str, std::net::SocketAddr)],
    routes: &[(&str, &str)],
) -> String {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nallow_connect = {allow_connect}\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n[log]\nlevel = \"debug\"\nformat = \"json\"\n"
    );
    for (name, server) in upstreams {
        text.push_str(&format!(
            "\n[[upstream]]\nname = \"{name}\"\nservers = [\"{server}\"]\nprotocol = \"http/1.0\"\n\n\
             [upstream.pool]\nmin_idle = 0\n"
        ));
    }
    for (host, upstream) in routes {
        text.push_str(&format!(
            "\n[[route]]\nhost = \"{host}\"\nupstream = \"{upstream}\"\n"
        ));
    }
    text
}

fn upgrade_config(backend: std::net::SocketAddr) -> String {
    proxy_config(false, &[("ws", backend)], &[("*", "ws")])
}

/// Two upstreams: `tunnel` (route host "tunnel.example") and `web` (route host "*").
fn connect_config(
    allow_connect: bool,
    tunnel: std::net::SocketAddr,
    web: std::net::SocketAddr,
) -> String {
    proxy_config(
        allow_connect,
        &[("tunnel", tunnel), ("web", web)],
        &[("tunnel.example", "tunnel"), ("*", "web")],
    )
}

/// Opens an upgraded connection through `proxy`; returns it with the client-visible response head.
fn upgrade(proxy: &Proxy) -> (std::net::TcpStream, lab::Head) {
    let mut client = connect(proxy.addr);
    client
        .write_all(UPGRADE_REQUEST)
        .expect("send upgrade request");
    let (head, leftover) = read_head(&mut client);
    assert!(
        leftover.is_empty(),
        "bytes after the 101 head before anyone sent any: {leftover:?}"
    );
    (client, head)
}

#[test]
fn websocket_upgrade_answers_101_and_echoes_bytes_both_ways() {
    let backend = Backend::builder()
        .tunnel(SWITCHING, Echo::UntilClosed)
        .start();
    let proxy = Proxy::start_text(&upgrade_config(backend.addr()));
    let (mut client, head) = upgrade(&proxy);

    assert_eq!(
        head.status,
        101,
        "status line: {}\n{}",
        head.raw,
        proxy.stderr()
    );
    assert_eq!(
        head.header("upgrade").as_deref(),
        Some("websocket"),
        "response head:\n{}",
        head.raw
    );
    lab::assert_websocket_upgrade_reached(&backend);

    let payload = ws_payload();
    for round in 0..2 {
        client.write_all(&payload).expect("send through tunnel");
        let echoed = read_exactly(&mut client, payload.len());
        assert_eq!(
            echoed, payload,
            "round {round}: bytes changed in the tunnel"
        );
    }
    assert_eq!(
        backend.raw_bytes(),
        [payload.as_slice(), payload.as_slice()].concat(),
        "the backend did not receive the client's bytes unchanged"
    );
    drop(client);
}

#[test]
fn upgrade_tunnel_client_close_reaches_the_backend() {
    let backend = Backend::builder()
        .tunnel(SWITCHING, Echo::UntilClosed)
        .start();
    let proxy = Proxy::start_text(&upgrade_config(backend.addr()));
    let (mut client, head) = upgrade(&proxy);
    assert_eq!(head.status, 101, "status line: {}", head.raw);
    client.write_all(b"ping").expect("send");
    assert_eq!(read_exactly(&mut client, 4), b"ping");

    client.shutdown(Shutdown::Write).expect("half-close");
    assert!(
        backend.wait_peer_closed(1, Duration::from_secs(5)),
        "the backend never saw the client's close\n{}",
        proxy.stderr()
    );
    // The backend closes in turn (echo ends at EOF); that close comes back to the client.
    lab::expect_eof(&mut client);
}

#[test]
fn upgrade_tunnel_backend_close_reaches_the_client() {
    let backend = Backend::builder()
        .tunnel(SWITCHING, Echo::OnceThenClose)
        .start();
    let proxy = Proxy::start_text(&upgrade_config(backend.addr()));
    let (mut client, head) = upgrade(&proxy);
    assert_eq!(head.status, 101, "status line: {}", head.raw);
    client.write_all(b"last").expect("send");
    assert_eq!(read_exactly(&mut client, 4), b"last");
    lab::expect_eof(&mut client);
}

#[test]
fn upgrade_answered_without_101_is_forwarded_as_a_normal_response() {
    let backend = Backend::builder()
        .responder(|_| Reply::Raw {
            bytes: b"HTTP/1.1 426 Upgrade Required\r\n\
Content-Type: text/plain\r\n\
Content-Length: 12\r\n\
Connection: close\r\n\r\n\
no upgrades\n"
                .to_vec(),
            keep_open: false,
        })
        .start();
    let proxy = Proxy::start_text(&upgrade_config(backend.addr()));
    let mut client = connect(proxy.addr);
    client
        .write_all(UPGRADE_REQUEST)
        .expect("send upgrade request");
    let (head, leftover) = read_head(&mut client);

    assert_eq!(head.status, 426, "response head:\n{}", head.raw);
    assert_eq!(head.header("upgrade"), None, "response head:\n{}", head.raw);
    let length: usize = head
        .header("content-length")
        .expect("a Content-Length")
        .parse()
        .expect("numeric Content-Length");
    let mut body = leftover;
    body.extend(read_exactly(&mut client, length - body.len()));
    assert_eq!(body, b"no upgrades\n");
    assert_eq!(
        metric_sum_in(&proxy.metrics_text(), "longhaul_tunnels_total", &[]),
        0.0,
        "a refused upgrade was counted as a tunnel"
    );
}

#[test]
fn connect_to_a_routed_host_answers_200_and_tunnels_bytes_both_ways() {
    let tunnel = Backend::builder().raw_echo(b"").start();
    let web = Backend::builder().raw_echo(b"").start();
    let proxy = Proxy::start_text(&connect_config(true, tunnel.addr(), web.addr()));
    let mut client = connect(proxy.addr);
    client
        .write_all(b"CONNECT tunnel.example:443 HTTP/1.1\r\nHost: tunnel.example:443\r\n\r\n")
        .expect("send CONNECT");
    let (head, leftover) = read_head(&mut client);
    assert_eq!(
        head.status,
        200,
        "response head:\n{}\n{}",
        head.raw,
        proxy.stderr()
    );
    assert!(
        leftover.is_empty(),
        "bytes after the 200 head: {leftover:?}"
    );

    let payload: Vec<u8> = (0u8..=255).rev().chain(*b"\x16\x03\x01 tls-ish").collect();
    client.write_all(&payload).expect("send through tunnel");
    assert_eq!(read_exactly(&mut client, payload.len()), payload);
    assert_eq!(
        tunnel.raw_bytes(),
        payload,
        "the tunnel backend must get exactly the client's bytes (no HTTP head)"
    );
    assert_eq!(web.accepted(), 0, "the catch-all upstream was contacted");
    assert_eq!(
        metric_sum_in(
            &proxy.metrics_text(),
            "longhaul_tunnels_total",
            &[("upstream", "tunnel"), ("kind", "connect")]
        ),
        1.0
    );
}

#[test]
fn connect_when_disabled_answers_405() {
    let tunnel = Backend::builder().raw_echo(b"").start();
    let web = Backend::builder().raw_echo(b"").start();
    let proxy = Proxy::start_text(&connect_config(false, tunnel.addr(), web.addr()));
    let mut client = connect(proxy.addr);
    client
        .write_all(b"CONNECT tunnel.example:443 HTTP/1.1\r\nHost: tunnel.example:443\r\n\r\n")
        .expect("send CONNECT");
    let (head, _) = read_head(&mut client);
    assert_eq!(head.status, 405, "response head:\n{}", head.raw);
    assert_eq!(
        tunnel.accepted() + web.accepted(),
        0,
        "a backend was contacted"
    );
}

#[test]
fn connect_to_a_host_no_route_names_answers_421_and_reaches_no_backend() {
    let tunnel = Backend::builder().raw_echo(b"").start();
    let web = Backend::builder().raw_echo(b"").start();
    let proxy = Proxy::start_text(&connect_config(true, tunnel.addr(), web.addr()));
    let mut client = connect(proxy.addr);
    client
        .write_all(b"CONNECT elsewhere.example:443 HTTP/1.1\r\nHost: elsewhere.example:443\r\n\r\n")
        .expect("send CONNECT");
    let (head, _) = read_head(&mut client);
    assert_eq!(head.status, 421, "response head:\n{}", head.raw);
    assert_eq!(tunnel.accepted(), 0, "the tunnel backend was contacted");
    assert_eq!(web.accepted(), 0, "the catch-all backend was contacted");
    assert!(web.raw_bytes().is_empty() && tunnel.raw_bytes().is_empty());
}

// === tunnel_idle_timeout ===

/// Short enough for a test, long enough that a busy machine still moves a byte within it.
const TUNNEL_IDLE: &str = "1s";

/// `config` with `[server] tunnel_idle_timeout` set.
fn with_tunnel_idle_timeout(config: String, timeout: &str) -> String {
    config.replacen(
        "\n[admin]",
        &format!("tunnel_idle_timeout = \"{timeout}\"\n\n[admin]"),
        1,
    )
}

fn echo_after_101() -> Backend {
    Backend::builder()
        .tunnel(SWITCHING, Echo::UntilClosed)
        .start()
}

/// A CONNECT tunnel to the `tunnel` upstream, answered 200.
fn connect_tunnel(proxy: &Proxy) -> std::net::TcpStream {
    let mut client = connect(proxy.addr);
    client
        .write_all(b"CONNECT tunnel.example:443 HTTP/1.1\r\nHost: tunnel.example:443\r\n\r\n")
        .expect("send CONNECT");
    let (head, _) = read_head(&mut client);
    assert_eq!(head.status, 200, "response head:\n{}", head.raw);
    client
}

fn tunnels_closed(proxy: &Proxy, kind: &str, reason: &str) -> f64 {
    metric_sum_in(
        &proxy.metrics_text(),
        "longhaul_tunnels_closed_total",
        &[("kind", kind), ("reason", reason)],
    )
}

#[test]
fn silent_upgrade_tunnel_is_closed_on_both_sides_after_tunnel_idle_timeout() {
    let backend = echo_after_101();
    let config = with_tunnel_idle_timeout(upgrade_config(backend.addr()), TUNNEL_IDLE);
    let proxy = Proxy::start_text(&config);
    let (mut client, head) = upgrade(&proxy);
    assert_eq!(head.status, 101, "status line: {}", head.raw);
    lab::expect_eof(&mut client);
    assert!(
        backend.wait_peer_closed(1, Duration::from_secs(10)),
        "the backend side of the idle tunnel stayed open\n{}",
        proxy.stderr()
    );
}

#[test]
fn silent_upgrade_tunnel_close_is_counted_as_idle_timeout() {
    let backend = echo_after_101();
    let config = with_tunnel_idle_timeout(upgrade_config(backend.addr()), TUNNEL_IDLE);
    let proxy = Proxy::start_text(&config);
    let (mut client, _) = upgrade(&proxy);
    lab::expect_eof(&mut client);
    assert!(
        support::wait_until(Duration::from_secs(5), || {
            tunnels_closed(&proxy, "upgrade", "idle_timeout") == 1.0
        }),
        "{}",
        proxy.metrics_text()
    );
}

#[test]
fn silent_connect_tunnel_is_closed_on_both_sides_after_tunnel_idle_timeout() {
    let tunnel = Backend::builder().raw_echo(b"").start();
    let web = Backend::builder().raw_echo(b"").start();
    let config =
        with_tunnel_idle_timeout(connect_config(true, tunnel.addr(), web.addr()), TUNNEL_IDLE);
    let proxy = Proxy::start_text(&config);
    let mut client = connect_tunnel(&proxy);
    lab::expect_eof(&mut client);
    assert!(
        tunnel.wait_peer_closed(1, Duration::from_secs(10)),
        "the backend side of the idle CONNECT tunnel stayed open\n{}",
        proxy.stderr()
    );
}

#[test]
fn silent_connect_tunnel_close_is_counted_as_idle_timeout() {
    let tunnel = Backend::builder().raw_echo(b"").start();
    let web = Backend::builder().raw_echo(b"").start();
    let config =
        with_tunnel_idle_timeout(connect_config(true, tunnel.addr(), web.addr()), TUNNEL_IDLE);
    let proxy = Proxy::start_text(&config);
    let mut client = connect_tunnel(&proxy);
    lab::expect_eof(&mut client);
    assert!(
        support::wait_until(Duration::from_secs(5), || {
            tunnels_closed(&proxy, "connect", "idle_timeout") == 1.0
        }),
        "{}",
        proxy.metrics_text()
    );
}

#[test]
fn upgrade_tunnel_with_traffic_stays_open_past_tunnel_idle_timeout() {
    let backend = echo_after_101();
    let config = with_tunnel_idle_timeout(upgrade_config(backend.addr()), TUNNEL_IDLE);
    let proxy = Proxy::start_text(&config);
    let (mut client, _) = upgrade(&proxy);
    // A byte each way every 200 ms for three idle timeouts: the tunnel is never silent for 1 s.
    for round in 0..15u8 {
        std::thread::sleep(Duration::from_millis(200));
        client.write_all(&[round]).expect("send through the tunnel");
        assert_eq!(read_exactly(&mut client, 1), [round], "round {round}");
    }
}

#[test]
fn upgrade_tunnel_closed_by_the_client_is_counted_as_client_closed() {
    let backend = echo_after_101();
    let proxy = Proxy::start_text(&upgrade_config(backend.addr()));
    let (mut client, _) = upgrade(&proxy);
    client.shutdown(Shutdown::Write).expect("half-close");
    lab::expect_eof(&mut client);
    assert!(
        support::wait_until(Duration::from_secs(5), || {
            tunnels_closed(&proxy, "upgrade", "client_closed") == 1.0
        }),
        "{}",
        proxy.metrics_text()
    );
}

#[test]
fn upgrade_tunnel_closed_by_the_backend_is_counted_as_upstream_closed() {
    let backend = Backend::builder()
        .tunnel(SWITCHING, Echo::OnceThenClose)
        .start();
    let proxy = Proxy::start_text(&upgrade_config(backend.addr()));
    let (mut client, _) = upgrade(&proxy);
    client.write_all(b"last").expect("send");
    assert_eq!(read_exactly(&mut client, 4), b"last");
    // The backend's close reaches the client first; only then does the client half-close, so
    // the proxy cannot see the client's FIN before the backend's.
    lab::expect_eof(&mut client);
    client
        .shutdown(Shutdown::Write)
        .expect("half-close after the backend's close");
    assert!(
        support::wait_until(Duration::from_secs(5), || {
            tunnels_closed(&proxy, "upgrade", "upstream_closed") == 1.0
        }),
        "{}",
        proxy.metrics_text()
    );
}

#[test]
fn tunnel_close_series_are_exported_at_zero_before_any_tunnel() {
    let backend = echo_after_101();
    let proxy = Proxy::start_text(&upgrade_config(backend.addr()));
    let metrics = proxy.metrics_text();
    let series: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("longhaul_tunnels_closed_total{"))
        .collect();
    // 3 kinds x 4 reasons, every one at 0.
    assert_eq!(
        (
            series.len(),
            series.iter().filter(|l| l.ends_with(" 0")).count()
        ),
        (12, 12),
        "{metrics}"
    );
}

mod support;
use support::lab;
use support::proxy::{Proxy, metric_sum_in};
