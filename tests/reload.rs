//! Hot reload on SIGHUP: the file is re-read and validated; an invalid file changes nothing and
//! the log says why; a valid one applies routes and upstreams without dropping client connections
//! or in-flight requests; pools of unchanged servers stay warm, pools of removed servers drain
//! and close.

mod support;

use std::thread;
use std::time::Duration;

use support::backend::{self, Backend, Closed, Reply};
use support::client::{self, Client};
use support::proxy::{self, Proxy, ProxyConfig};

/// Rewrites the proxy's config file, sends SIGHUP and waits for the reload's log line.
fn reload(proxy: &Proxy, config: &str, expect_ok: bool) -> serde_json::Value {
    let before = count_lines(proxy, expect_ok);
    std::fs::write(&proxy.config_path, config).expect("rewrite config");
    proxy.signal("HUP");
    let wanted = reload_message(expect_ok);
    let ok = support::wait_until(Duration::from_secs(5), || {
        count_lines(proxy, expect_ok) > before
    });
    assert!(
        ok,
        "no `{wanted}` log line after SIGHUP:\n{}",
        proxy.stderr_lines().join("\n")
    );
    proxy
        .log_lines()
        .into_iter()
        .rfind(|v| proxy::log_message(v) == Some(wanted))
        .expect("the reload line")
}

fn reload_message(ok: bool) -> &'static str {
    if ok {
        "configuration reloaded"
    } else {
        "reload failed; keeping the running configuration"
    }
}

fn count_lines(proxy: &Proxy, ok: bool) -> usize {
    let wanted = reload_message(ok);
    proxy
        .log_lines()
        .iter()
        .filter(|v| proxy::log_message(v) == Some(wanted))
        .count()
}

fn reloads(proxy: &Proxy, result: &str) -> f64 {
    proxy.metric_or_zero("longhaul_config_reloads_total", &[("result", result)])
}

fn get_host(proxy: &Proxy, host: &str, path: &str) -> client::Response {
    client::request(
        proxy.addr,
        format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes(),
    )
}

/// A backend whose `/slow...` requests are answered after `delay`, everything else at once.
fn slow_path_backend(delay: Duration) -> Backend {
    Backend::builder()
        .responder(move |req| {
            let reply = Reply::Raw {
                bytes: backend::http10_response(
                    200,
                    &[("Connection", "keep-alive")],
                    format!("ok {}\n", req.target).as_bytes(),
                ),
                keep_open: true,
            };
            if req.target.starts_with("/slow") {
                Reply::Delayed(delay, Box::new(reply))
            } else {
                reply
            }
        })
        .start()
}

#[test]
fn invalid_config_on_sighup_changes_nothing_and_logs_why() {
    let a = Backend::start();
    let b = Backend::start();
    let mut proxy = Proxy::start(&ProxyConfig::single(&[a.addr()]));
    assert_eq!(client::get10(proxy.addr, "/before").status, 200);

    // Valid TOML that would move traffic to B, but fails validation.
    let invalid = ProxyConfig::single(&[b.addr()])
        .pool("max_size", "2")
        .pool("min_idle", "5");
    let line = reload(&proxy, &invalid.render(), false);
    let why = proxy::log_field(&line, "error")
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        why.contains("min_idle"),
        "the failed reload must say why (the key at fault): {line}"
    );
    assert_eq!(reloads(&proxy, "error"), 1.0);
    assert_eq!(reloads(&proxy, "ok"), 0.0);
    assert!(proxy.is_running());
    for i in 0..10 {
        let r = client::get10(proxy.addr, &format!("/after/{i}"));
        assert_eq!(r.status, 200, "{}", r.body_str());
        assert_eq!(r.body, a.expected_body("GET", &format!("/after/{i}")));
    }
    assert_eq!(b.accepted(), 0, "nothing of the rejected file was applied");

    // Nor does a file that is not TOML at all.
    reload(&proxy, "[server\nlisten = ", false);
    assert_eq!(reloads(&proxy, "error"), 2.0);
    assert_eq!(client::get10(proxy.addr, "/still").status, 200);
    assert_eq!(b.accepted(), 0);
}

#[test]
fn valid_config_on_sighup_applies_new_upstreams_and_routes() {
    let a = Backend::start();
    let b = Backend::start();
    let c = Backend::start();
    let proxy = Proxy::start(&ProxyConfig::single(&[a.addr()]));
    assert_eq!(client::get10(proxy.addr, "/before").status, 200);
    assert_eq!(
        get_host(&proxy, "extra.example", "/x").body,
        a.expected_body("GET", "/x")
    );

    let next = ProxyConfig::empty()
        .upstream("legacy", &[b.addr()])
        .upstream("extra", &[c.addr()])
        .route("extra.example", "/", "extra")
        .route("*", "/", "legacy");
    reload(&proxy, &next.render(), true);
    assert_eq!(reloads(&proxy, "ok"), 1.0);

    let a_before = a.request_count();
    for i in 0..5 {
        let r = client::get10(proxy.addr, &format!("/new/{i}"));
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b.expected_body("GET", &format!("/new/{i}")));
        let r = get_host(&proxy, "extra.example", &format!("/extra/{i}"));
        assert_eq!(r.status, 200);
        assert_eq!(r.body, c.expected_body("GET", &format!("/extra/{i}")));
    }
    assert_eq!(b.request_count(), 5);
    assert_eq!(c.request_count(), 5);
    assert_eq!(
        a.request_count(),
        a_before,
        "the removed server still got requests"
    );
}

#[test]
fn reload_keeps_client_connections_and_in_flight_requests() {
    let a = slow_path_backend(Duration::from_millis(1500));
    let b = Backend::start();
    let proxy = Proxy::start(&ProxyConfig::single(&[a.addr()]).pool("max_size", "4"));

    // A kept-alive client connection, used before the reload.
    let mut kept = Client::connect(proxy.addr).expect("connect");
    let r = kept
        .roundtrip(b"GET /k1 HTTP/1.1\r\nHost: test.local\r\n\r\n")
        .expect("first request on the kept connection");
    assert_eq!(r.status, 200);

    // A request in flight on a server the reload removes.
    let addr = proxy.addr;
    let slow = thread::spawn(move || client::get10(addr, "/slow/in-flight"));
    assert!(
        a.wait_until(Duration::from_secs(3), |b| b
            .requests()
            .iter()
            .any(|r| r.target == "/slow/in-flight")),
        "the slow request never reached the backend"
    );
    let active_before = proxy.metric_or_zero("longhaul_downstream_connections_active", &[]);

    reload(
        &proxy,
        &ProxyConfig::single(&[b.addr()])
            .pool("max_size", "4")
            .render(),
        true,
    );

    let r = slow.join().expect("slow client");
    assert_eq!(
        r.status,
        200,
        "the in-flight request was dropped by the reload: {}",
        r.body_str()
    );
    assert_eq!(r.body_str(), "ok /slow/in-flight\n");

    let r = kept
        .roundtrip(b"GET /k2 HTTP/1.1\r\nHost: test.local\r\n\r\n")
        .expect("the kept-alive client connection was dropped by the reload");
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(
        r.body,
        b.expected_body("GET", "/k2"),
        "the reloaded upstream serves it"
    );
    assert!(
        active_before >= 2.0,
        "both clients were connected during the reload"
    );
}

#[test]
fn reload_keeps_the_pools_of_unchanged_servers_warm() {
    let a = Backend::start();
    let b = Backend::start();
    let base = ProxyConfig::single(&[a.addr()]).pool("max_size", "1");
    let proxy = Proxy::start(&base);
    for i in 0..3 {
        assert_eq!(client::get10(proxy.addr, &format!("/warm/{i}")).status, 200);
    }
    assert_eq!(a.accepted(), 1);

    // Same upstream settings, one more server, and a new route: A's pool carries over.
    let next = ProxyConfig::single(&[a.addr(), b.addr()])
        .pool("max_size", "1")
        .route("*", "/", "legacy");
    reload(&proxy, &next.render(), true);
    for i in 0..10 {
        assert_eq!(
            client::get10(proxy.addr, &format!("/after/{i}")).status,
            200
        );
    }
    assert!(b.request_count() > 0, "the added server takes traffic");
    assert_eq!(
        a.accepted(),
        1,
        "the unchanged server's pooled connection was dropped by the reload"
    );
    let conns = a.connections();
    assert_eq!(conns[0].closed, Closed::Open);
    assert!(
        conns[0].requests.len() > 3,
        "requests after the reload reused the warm connection: {}",
        conns[0].requests.len()
    );
}

#[test]
fn reload_drains_and_closes_the_pools_of_removed_servers() {
    let main = Backend::start();
    let side = slow_path_backend(Duration::from_millis(1500));
    let with_side = ProxyConfig::empty()
        .upstream("main", &[main.addr()])
        .upstream("side", &[side.addr()])
        .route("side.example", "/", "side")
        .route("*", "/", "main");
    let proxy = Proxy::start(&with_side);
    assert_eq!(get_host(&proxy, "main.example", "/m").status, 200);

    // One busy connection to the side server (a slow request) and one idle one.
    let addr = proxy.addr;
    let slow = thread::spawn(move || {
        client::request(
            addr,
            b"GET /slow/draining HTTP/1.0\r\nHost: side.example\r\n\r\n",
        )
    });
    assert!(side.wait_until(Duration::from_secs(3), |b| b.request_count() == 1));
    assert_eq!(get_host(&proxy, "side.example", "/quick").status, 200);
    assert_eq!(side.accepted(), 2);
    let side_s = side.addr().to_string();
    assert!(
        proxy
            .metric("longhaul_pool_connections", &[("server", side_s.as_str())])
            .is_some()
    );

    let without_side = ProxyConfig::empty()
        .upstream("main", &[main.addr()])
        .route("*", "/", "main");
    reload(&proxy, &without_side.render(), true);

    // The idle connection closes now; the busy one finishes its response first.
    let idle_conn = side
        .connections()
        .into_iter()
        .find(|c| c.requests.iter().any(|r| r.target == "/quick"))
        .expect("the idle connection")
        .id;
    assert!(
        side.wait_until(Duration::from_secs(3), |b| b.connections()[idle_conn]
            .closed
            == Closed::ByPeer),
        "the removed server's idle pooled connection was not closed: {:?}",
        side.connections()[idle_conn]
    );
    let r = slow.join().expect("slow client");
    assert_eq!(
        r.status,
        200,
        "the draining request failed: {}",
        r.body_str()
    );
    assert_eq!(r.body_str(), "ok /slow/draining\n");
    assert!(
        side.wait_until(Duration::from_secs(3), |b| b
            .connections()
            .iter()
            .all(|c| c.closed == Closed::ByPeer)),
        "the removed server's busy connection stayed open after its response: {:?}",
        side.connections()
    );
    let r = get_host(&proxy, "side.example", "/gone");
    assert_eq!(r.status, 200, "side.example now falls through to main");
    assert_eq!(r.body, main.expected_body("GET", "/gone"));
    assert_eq!(
        side.request_count(),
        2,
        "no request reached the removed server"
    );
    assert!(
        support::wait_until(Duration::from_secs(2), || {
            proxy
                .metric("longhaul_pool_connections", &[("server", side_s.as_str())])
                .is_none()
        }),
        "the removed server's metric series remain"
    );
    let pools = proxy.pools().to_string();
    assert!(
        !pools.contains(&side_s),
        "/pools still lists the removed server: {pools}"
    );
    assert_eq!(
        main.connections()[0].closed,
        Closed::Open,
        "main's pool was kept"
    );
}

#[test]
fn connections_of_a_server_removed_by_reload_are_counted_as_removed() {
    let main = Backend::start();
    let side = Backend::start();
    let with_side = ProxyConfig::empty()
        .upstream("main", &[main.addr()])
        .upstream("side", &[side.addr()])
        .route("side.example", "/", "side")
        .route("*", "/", "main");
    let proxy = Proxy::start(&with_side);
    let r = client::request(
        proxy.addr,
        b"GET /pooled HTTP/1.0\r\nHost: side.example\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let without_side = ProxyConfig::empty()
        .upstream("main", &[main.addr()])
        .route("*", "/", "main");

    reload(&proxy, &without_side.render(), true);

    let side_s = side.addr().to_string();
    let closed = |reason: &str| {
        proxy.metric_or_zero(
            "longhaul_upstream_connections_closed_total",
            &[("server", side_s.as_str()), ("reason", reason)],
        )
    };
    assert!(
        support::wait_until(Duration::from_secs(3), || closed("removed") == 1.0),
        "closed_total{{reason=\"removed\"}} for the removed server: {}",
        closed("removed")
    );
    assert_eq!(closed("idle_timeout"), 0.0);
}

#[test]
fn sighup_sent_as_soon_as_the_proxy_is_up_reloads_it_instead_of_killing_it() {
    // The window between "longhaul started" and the handler being installed is short: try a few.
    let backend = Backend::start();
    let config = ProxyConfig::single(&[backend.addr()]);
    for attempt in 0..10 {
        let mut proxy = Proxy::start(&config);
        reload(&proxy, &config.render(), true);
        assert!(
            proxy.is_running(),
            "attempt {attempt}: SIGHUP killed the proxy"
        );
    }
}

#[test]
fn a_reload_replaces_the_routes_and_the_old_ones_give_404() {
    let backend = Backend::start();
    let base = ProxyConfig::single(&[backend.addr()]);
    let proxy = Proxy::start(&base.clone().route("old.example", "/", "legacy"));
    let get = |host: &str| get_host(&proxy, host, "/r").status;
    assert_eq!(get("old.example"), 200);
    assert_eq!(get("new.example"), 404);

    // The reload's log line is written once the new routes are in place.
    reload(
        &proxy,
        &base.route("new.example", "/", "legacy").render(),
        true,
    );
    assert_eq!(
        get("new.example"),
        200,
        "the new route is served after reload"
    );
    assert_eq!(
        get("old.example"),
        404,
        "the old route is gone after reload"
    );
}
