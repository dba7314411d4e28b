//! `[server] upgrades` (default `["websocket"]`): an `Upgrade` protocol not listed never reaches a
//! backend. It is stripped with `HTTP2-Settings` and the `Connection` tokens naming them, and the
//! request is served as a plain one over the pool (RFC 9110 §7.8), so a backend speaking h2c
//! cannot open an HTTP/2 tunnel past longhaul's routing and limits ("h2c smuggling").

mod support;

use support::backend::{Backend, Reply};
use support::client::{self, Client};
use support::proxy::{Proxy, ProxyConfig};

const SETTINGS: &str = "AAMAAABkAARAAAAAAAIAAAAA";

const H2C_REQUEST: &[u8] = b"GET /h2c HTTP/1.1\r\nHost: test.local\r\n\
Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";

const PLAIN_REQUEST: &[u8] = b"GET /plain HTTP/1.1\r\nHost: test.local\r\n\r\n";

/// A backend that switches to whatever protocol a request asks for (as an h2c server would),
/// and otherwise answers 200 with a length, keeping the connection open.
fn willing_backend() -> Backend {
    Backend::builder()
        .responder(|req| match req.header("upgrade") {
            Some(protocol) => Reply::Raw {
                bytes: format!(
                    "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\n\r\n"
                )
                .into_bytes(),
                keep_open: true,
            },
            None => Reply::Raw {
                bytes: b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nplain\n".to_vec(),
                keep_open: true,
            },
        })
        .start()
}

/// One HTTP/1.1 upstream on `backend`, `[server] upgrades` at its default unless given.
fn config(backend: &Backend, upgrades: Option<&str>) -> ProxyConfig {
    let config = ProxyConfig::single(&[backend.addr()]).up("protocol", "\"http/1.1\"");
    match upgrades {
        Some(list) => config.server("upgrades", list),
        None => config,
    }
}

fn connection_tokens(req: &support::backend::Request) -> Vec<String> {
    req.header_all("connection")
        .iter()
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect()
}

#[test]
fn an_h2c_upgrade_reaches_the_backend_without_upgrade_settings_or_their_connection_tokens() {
    let backend = willing_backend();
    let proxy = Proxy::start(&config(&backend, None));
    let r = client::request(proxy.addr, H2C_REQUEST);
    assert_eq!(r.status, 200, "{}", r.body_str());
    let reqs = backend.requests();
    assert_eq!(reqs.len(), 1);
    assert!(!reqs[0].has_header("upgrade"), "{:?}", reqs[0].headers);
    assert!(
        !reqs[0].has_header("http2-settings"),
        "{:?}",
        reqs[0].headers
    );
    let tokens = connection_tokens(&reqs[0]);
    assert!(
        !tokens
            .iter()
            .any(|t| t == "upgrade" || t == "http2-settings"),
        "Connection: {tokens:?}"
    );
}

#[test]
fn a_backend_that_would_switch_to_h2c_never_gets_the_chance() {
    let backend = willing_backend();
    let proxy = Proxy::start(&config(&backend, None));
    let r = client::request(proxy.addr, H2C_REQUEST);
    assert_eq!(r.status, 200, "the client got a switch: {:?}", r.headers);
    assert_eq!(r.body_str(), "plain\n");
    assert_eq!(
        proxy.metric_or_zero("longhaul_tunnels_total", &[]),
        0.0,
        "a tunnel was opened"
    );
}

#[test]
fn a_refused_upgrade_is_served_on_a_pooled_connection() {
    let backend = willing_backend();
    let proxy = Proxy::start(&config(&backend, None));
    let mut client = Client::connect(proxy.addr).expect("connect");
    let first = client.roundtrip(H2C_REQUEST).expect("h2c request");
    let second = client.roundtrip(PLAIN_REQUEST).expect("next request");
    assert_eq!((first.status, second.status), (200, 200));
    assert_eq!(backend.accepted(), 1, "{:?}", backend.connections());
    assert_eq!(
        proxy.metric_or_zero(
            "longhaul_upstream_requests_total",
            &[("connection", "reused")]
        ),
        1.0,
        "the request after the refused upgrade did not reuse its connection"
    );
}

#[test]
fn refused_upgrades_are_counted_by_protocol_with_unknown_ones_as_other() {
    let backend = willing_backend();
    let proxy = Proxy::start(&config(&backend, None));
    client::request(proxy.addr, H2C_REQUEST);
    client::request(
        proxy.addr,
        b"GET /x HTTP/1.1\r\nHost: test.local\r\nConnection: upgrade\r\nUpgrade: IRC/6.9, h2c\r\n\r\n",
    );
    let refused = |protocol| {
        proxy.metric_or_zero("longhaul_upgrades_refused_total", &[("protocol", protocol)])
    };
    assert_eq!((refused("h2c"), refused("other")), (2.0, 1.0));
}

#[test]
fn of_several_upgrade_protocols_only_the_allowed_ones_reach_the_backend() {
    let backend = willing_backend();
    let proxy = Proxy::start(&config(&backend, None));
    let mut client = Client::connect(proxy.addr).expect("connect");
    client
        .send(
            format!(
                "GET /chat HTTP/1.1\r\nHost: test.local\r\nConnection: Upgrade, HTTP2-Settings\r\n\
                 Upgrade: h2c, WebSocket\r\nHTTP2-Settings: {SETTINGS}\r\n\r\n"
            )
            .as_bytes(),
        )
        .expect("send");
    let r = client.read_response(false).expect("response");
    assert_eq!(r.status, 101);
    let reqs = backend.requests();
    assert_eq!(reqs[0].header("upgrade"), Some("WebSocket"));
    assert!(
        !reqs[0].has_header("http2-settings"),
        "{:?}",
        reqs[0].headers
    );
}

#[test]
fn a_configured_extra_protocol_passes_through_with_its_settings() {
    let backend = willing_backend();
    let proxy = Proxy::start(&config(&backend, Some("[\"websocket\", \"h2c\"]")));
    let mut client = Client::connect(proxy.addr).expect("connect");
    client.send(H2C_REQUEST).expect("send");
    let r = client.read_response(false).expect("response");
    assert_eq!(r.status, 101, "{:?}", r.headers);
    let reqs = backend.requests();
    assert_eq!(reqs[0].header("upgrade"), Some("h2c"));
    assert_eq!(reqs[0].header("http2-settings"), Some(SETTINGS));
    assert_eq!(
        connection_tokens(&reqs[0]),
        vec!["upgrade", "http2-settings"]
    );
    assert_eq!(
        proxy.metric_or_zero("longhaul_upgrades_refused_total", &[]),
        0.0
    );
}
