//! TLS to the backends (`[upstream.tls]`): plain short clients reach a real TLS backend (nginx,
//! certificates made with `openssl` per test) over a few pooled TLS connections that resume their
//! sessions; certificates are verified (name, CA) unless `verify = false`; mutual TLS; idle TLS
//! connections survive session tickets and the backend's idle closes; `longhaul check` loads the files.

mod support;

use std::path::Path;
use std::time::Duration;

use support::client::{Client, get10};
use support::nginx::{NginxTls, NginxTlsOptions};
use support::proxy::{Proxy, ProxyConfig, TempDir, run};
use support::real_servers::ab;
use support::tls::{CertFiles, Pki};
use support::tls_echo::TlsUpgradeEcho;
use support::tools::have;

const HANDSHAKES: &str = "longhaul_tls_handshakes_total";

/// A CA and a server certificate it signed for `backend.test` and 127.0.0.1 (the files live as
/// long as the `Pki`).
fn backend_certs() -> (Pki, CertFiles) {
    let ca = Pki::new();
    let server = ca.issue("backend", &["backend.test", "127.0.0.1"]);
    (ca, server)
}

fn quoted(path: &Path) -> String {
    format!("\"{}\"", path.display())
}

/// One upstream to `nginx` over TLS trusting `ca`.
fn tls_proxy(nginx: &NginxTls, ca: &Pki) -> ProxyConfig {
    ProxyConfig::single(&[nginx.addr]).tls("ca", &quoted(&ca.ca))
}

fn upstream_handshakes(proxy: &Proxy, result: &str, resumed: &str) -> f64 {
    proxy.metric_or_zero(
        HANDSHAKES,
        &[
            ("side", "upstream"),
            ("result", result),
            ("resumed", resumed),
        ],
    )
}

#[test]
fn short_plain_clients_reach_a_tls_backend_over_at_most_max_size_tls_connections() {
    if !have("nginx") || !have("openssl") || !have("ab") {
        return;
    }
    let (ca, server) = backend_certs();
    let nginx = NginxTls::start(&NginxTlsOptions::new(server));
    let proxy = Proxy::start(&tls_proxy(&nginx, &ca).pool("max_size", "4"));

    let report = ab(500, 20, &format!("http://{}/index.html", proxy.addr));

    assert_eq!(report.complete, 500, "{}", report.text);
    assert_eq!(report.failed, 0, "{}", report.text);
    assert_eq!(report.non_2xx, 0, "{}", report.text);
    let requests = nginx.requests();
    assert_eq!(requests.len(), 500, "every request reached nginx");
    let connections = nginx.connections();
    assert!(
        connections.len() <= 4,
        "{} TLS connections at the backend for 500 clients, max_size 4",
        connections.len()
    );
}

#[test]
fn a_new_connection_after_the_pools_connection_closed_resumes_the_session() {
    if !have("nginx") || !have("openssl") {
        return;
    }
    let (ca, server) = backend_certs();
    let nginx = NginxTls::start(&NginxTlsOptions::new(server));
    // One request per connection: the second request needs a new TLS connection.
    let proxy = Proxy::start(&tls_proxy(&nginx, &ca).pool("max_requests", "1"));

    assert_eq!(get10(proxy.addr, "/index.html").status, 200);
    assert_eq!(get10(proxy.addr, "/index.html").status, 200);

    let connections: Vec<bool> = nginx.connections().into_values().collect();
    assert_eq!(
        connections,
        vec![false, true],
        "full, then resumed, at nginx"
    );
    assert_eq!(upstream_handshakes(&proxy, "ok", "true"), 1.0);
    assert_eq!(upstream_handshakes(&proxy, "ok", "false"), 1.0);
}

#[test]
fn pools_shows_per_server_that_it_is_tls_its_handshakes_and_resumed_ratio() {
    if !have("nginx") || !have("openssl") {
        return;
    }
    let (ca, server) = backend_certs();
    let nginx = NginxTls::start(&NginxTlsOptions::new(server));
    let proxy = Proxy::start(&tls_proxy(&nginx, &ca).pool("max_requests", "1"));
    assert_eq!(get10(proxy.addr, "/index.html").status, 200);
    assert_eq!(get10(proxy.addr, "/index.html").status, 200);

    let pools = proxy.pools();

    let s = &pools["upstreams"][0]["servers"][0];
    assert_eq!(s["tls"], true, "{pools}");
    assert_eq!(s["tls_handshakes"], 2, "{pools}");
    assert_eq!(s["tls_handshake_errors"], 0, "{pools}");
    assert_eq!(s["tls_resumed_ratio"], 0.5, "{pools}");
}

#[test]
fn verify_refuses_a_backend_whose_certificate_does_not_match_server_name() {
    if !have("nginx") || !have("openssl") {
        return;
    }
    let (ca, server) = backend_certs();
    let nginx = NginxTls::start(&NginxTlsOptions::new(server));
    let proxy = Proxy::start(&tls_proxy(&nginx, &ca).tls("server_name", "\"legacy.internal\""));

    let resp = get10(proxy.addr, "/index.html");

    assert_eq!(resp.status, 502, "{}", resp.body_str());
    assert!(
        resp.body_str()
            .contains("certificate not valid for name \"legacy.internal\""),
        "the body names the certificate problem: {}",
        resp.body_str()
    );
    assert_eq!(upstream_handshakes(&proxy, "error", "false"), 1.0);
    assert!(nginx.requests().is_empty(), "nothing was sent to nginx");
}

#[test]
fn a_ca_file_of_another_ca_refuses_the_backend() {
    if !have("nginx") || !have("openssl") {
        return;
    }
    let (_ca, server) = backend_certs();
    let other = Pki::new();
    let nginx = NginxTls::start(&NginxTlsOptions::new(server));
    let proxy = Proxy::start(&tls_proxy(&nginx, &other));

    let resp = get10(proxy.addr, "/index.html");

    assert_eq!(resp.status, 502, "{}", resp.body_str());
    assert!(
        resp.body_str().contains("UnknownIssuer"),
        "the body names the certificate problem: {}",
        resp.body_str()
    );
    assert!(nginx.requests().is_empty(), "nothing was sent to nginx");
}

#[test]
fn verify_false_accepts_a_certificate_of_another_ca_and_warns_at_start() {
    if !have("nginx") || !have("openssl") {
        return;
    }
    let (_ca, server) = backend_certs();
    let other = Pki::new();
    let nginx = NginxTls::start(&NginxTlsOptions::new(server));
    let proxy = Proxy::start(&tls_proxy(&nginx, &other).tls("verify", "false"));

    let resp = get10(proxy.addr, "/index.html");

    assert_eq!(resp.status, 200, "{}", resp.body_str());
    assert_eq!(resp.body_str(), "hello over tls\n");
    let warned = proxy.log_lines().into_iter().any(|line| {
        support::proxy::log_field(&line, "level").and_then(|l| l.as_str()) == Some("WARN")
            && support::proxy::log_field(&line, "upstream").and_then(|u| u.as_str())
                == Some("legacy")
            && support::proxy::log_message(&line).is_some_and(|m| m.contains("verify = false"))
    });
    assert!(
        warned,
        "a warning naming the upstream: {:?}",
        proxy.stderr_lines()
    );
}

/// nginx requiring a client certificate signed by `ca`.
fn mtls_nginx(ca: &Pki, server: CertFiles) -> NginxTls {
    let mut options = NginxTlsOptions::new(server);
    options.client_ca = Some(ca.ca.clone());
    NginxTls::start(&options)
}

#[test]
fn mutual_tls_with_cert_and_key_is_accepted_by_a_backend_that_requires_a_client_certificate() {
    if !have("nginx") || !have("openssl") {
        return;
    }
    let (ca, server) = backend_certs();
    let client = ca.issue_client("longhaul-client");
    let nginx = mtls_nginx(&ca, server);
    let proxy = Proxy::start(
        &tls_proxy(&nginx, &ca)
            .tls("cert", &quoted(&client.cert))
            .tls("key", &quoted(&client.key)),
    );

    let resp = get10(proxy.addr, "/index.html");

    assert_eq!(resp.status, 200, "{}", resp.body_str());
    assert_eq!(resp.body_str(), "hello over tls\n");
}

#[test]
fn without_a_client_certificate_a_backend_that_requires_one_refuses() {
    if !have("nginx") || !have("openssl") {
        return;
    }
    let (ca, server) = backend_certs();
    let nginx = mtls_nginx(&ca, server);
    let proxy = Proxy::start(&tls_proxy(&nginx, &ca));

    let resp = get10(proxy.addr, "/index.html");

    // nginx answers a request without the certificate it requires with 400 itself.
    assert_eq!(resp.status, 400, "{}", resp.body_str());
    assert!(
        resp.body_str()
            .contains("No required SSL certificate was sent"),
        "{}",
        resp.body_str()
    );
}

#[test]
fn a_backend_closing_idle_tls_connections_costs_clients_no_errors() {
    if !have("nginx") || !have("openssl") {
        return;
    }
    let (ca, server) = backend_certs();
    let mut options = NginxTlsOptions::new(server);
    options.keepalive_timeout = "1s";
    let nginx = NginxTls::start(&options);
    // The pool would keep connections 30 s: only nginx's close ends them.
    let proxy = Proxy::start(&tls_proxy(&nginx, &ca).pool("max_size", "2"));

    let mut statuses = Vec::new();
    for _round in 0..4 {
        for _ in 0..5 {
            statuses.push(get10(proxy.addr, "/index.html").status);
        }
        // Longer than nginx's keepalive_timeout: it closes the idle pooled connections.
        std::thread::sleep(Duration::from_millis(1500));
    }

    assert_eq!(statuses, vec![200; 20]);
    assert_eq!(
        proxy.metric_or_zero(
            "longhaul_upstream_retries_total",
            &[("reason", "stale_reused")]
        ),
        0.0,
        "each close (close_notify, FIN) was seen on the idle connection before it was reused"
    );
    assert!(
        nginx.connections().len() >= 4,
        "nginx closed the idle connections between rounds: {:?}",
        nginx.connections()
    );
}

#[test]
fn an_idle_tls13_connection_that_received_session_tickets_is_reused() {
    if !have("nginx") || !have("openssl") {
        return;
    }
    let (ca, server) = backend_certs();
    let nginx = NginxTls::start(&NginxTlsOptions::new(server));
    // One warm connection, opened at start: nginx's NewSessionTickets reach it while it is idle.
    let proxy = Proxy::start(
        &tls_proxy(&nginx, &ca)
            .pool("min_idle", "1")
            .pool("max_size", "1"),
    );
    assert!(
        support::wait_until(Duration::from_secs(10), || {
            upstream_handshakes(&proxy, "ok", "false") == 1.0
        }),
        "the warm connection handshook"
    );
    let idle = [("state", "idle")];
    assert!(
        support::wait_until(Duration::from_secs(10), || {
            proxy.metric_or_zero("longhaul_pool_connections", &idle) == 1.0
        }),
        "the warm connection is idle in the pool"
    );

    for _ in 0..5 {
        assert_eq!(get10(proxy.addr, "/index.html").status, 200);
    }

    let requests = nginx.requests();
    assert_eq!(requests[0].protocol, "TLSv1.3");
    assert_eq!(nginx.connections().len(), 1, "{requests:?}");
    assert_eq!(
        proxy.metric_or_zero("longhaul_upstream_connections_opened_total", &[]),
        1.0,
        "the warm connection carried every request"
    );
    assert_eq!(
        proxy.metric_or_zero(
            "longhaul_upstream_connections_closed_total",
            &[("reason", "peer_closed")]
        ),
        0.0
    );
}

#[test]
fn tls_handshake_series_are_exported_at_zero_from_start() {
    let proxy = Proxy::start(&ProxyConfig::single(&[support::faults::unused_port()]));
    let text = proxy.metrics_text();
    for side in ["client", "upstream"] {
        for result in ["ok", "error"] {
            for resumed in ["true", "false"] {
                let labels = [("side", side), ("result", result), ("resumed", resumed)];
                assert_eq!(
                    support::proxy::metric_in(&text, HANDSHAKES, &labels),
                    Some(0.0),
                    "{labels:?}"
                );
            }
        }
        assert_eq!(
            support::proxy::metric_in(
                &text,
                "longhaul_tls_handshake_duration_seconds_count",
                &[("side", side)]
            ),
            Some(0.0),
            "{side}"
        );
    }
}

#[test]
fn an_upgrade_to_a_tls_upstream_tunnels_bytes_both_ways_over_tls() {
    if !have("openssl") {
        return;
    }
    let (ca, server) = backend_certs();
    let backend = TlsUpgradeEcho::start(&server);
    let proxy = Proxy::start(&ProxyConfig::single(&[backend.addr]).tls("ca", &quoted(&ca.ca)));
    let mut client = Client::connect(proxy.addr).expect("connect to the proxy");
    client
        .send(
            b"GET /chat HTTP/1.1\r\nHost: chat.example\r\nConnection: Upgrade\r\n\
              Upgrade: websocket\r\n\r\n",
        )
        .expect("send the upgrade");
    let head = client.read_response(true).expect("a response head");
    assert_eq!(head.status, 101);

    client
        .send(b"ping over tls")
        .expect("send through the tunnel");
    let mut echoed = [0u8; 13];
    std::io::Read::read_exact(&mut client.stream(), &mut echoed).expect("read the echo");

    assert_eq!(&echoed, b"ping over tls");
    assert_eq!(upstream_handshakes(&proxy, "ok", "false"), 1.0);
}

// === longhaul check loads the files ===

/// `longhaul check` on a config whose upstream has this `[upstream.tls]` table.
fn check_with_tls(dir: &TempDir, tls: &str) -> support::proxy::Run {
    let text = format!(
        "[[upstream]]\nname = \"legacy\"\nservers = [\"127.0.0.1:8443\"]\n\n[upstream.tls]\n{tls}"
    );
    let path = dir.write_config(&text);
    run(
        &["--config", path.to_str().expect("utf-8 path"), "check"],
        Duration::from_secs(30),
    )
}

#[test]
fn check_refuses_a_ca_file_that_holds_no_pem_certificate() {
    let dir = TempDir::new();
    std::fs::write(dir.path().join("ca.pem"), "not a certificate\n").expect("write");

    let out = check_with_tls(&dir, "ca = \"ca.pem\"\n");

    assert_eq!(out.code, Some(2), "{}", out.stderr);
    let want = format!(
        "proxy.toml:6: upstream[0].tls.ca: {}: no PEM certificate in the file",
        dir.path().join("ca.pem").display()
    );
    assert!(out.stderr.contains(&want), "{}", out.stderr);
}

#[test]
fn check_refuses_a_key_that_does_not_match_the_client_certificate() {
    if !have("openssl") {
        return;
    }
    let dir = TempDir::new();
    let ca = Pki::in_dir(dir.path(), "ca");
    let one = ca.issue("one", &["one.test"]);
    let two = ca.issue("two", &["two.test"]);
    let tls = format!("cert = {}\nkey = {}\n", quoted(&one.cert), quoted(&two.key));

    let out = check_with_tls(&dir, &tls);

    assert_eq!(out.code, Some(2), "{}", out.stderr);
    let want = format!(
        "proxy.toml:7: upstream[0].tls.key: {}: the private key does not match the certificate in `cert`",
        two.key.display()
    );
    assert!(out.stderr.contains(&want), "{}", out.stderr);
}

#[test]
fn check_refuses_a_client_certificate_without_its_key() {
    let dir = TempDir::new();

    let out = check_with_tls(&dir, "cert = \"client.pem\"\n");

    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("upstream[0].tls.key: a client certificate (`cert`) needs its private key"),
        "{}",
        out.stderr
    );
}

#[test]
fn check_prints_the_tls_table_with_verify_on_by_default() {
    if !have("openssl") {
        return;
    }
    let dir = TempDir::new();
    let ca = Pki::in_dir(dir.path(), "ca");

    let out = check_with_tls(&dir, &format!("ca = {}\n", quoted(&ca.ca)));

    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("[upstream.tls]"), "{}", out.stdout);
    assert!(out.stdout.contains("verify = true"), "{}", out.stdout);
}

// === reload ===

/// Overwrites `live` with `content`, sends SIGHUP and waits for the log line `message`.
fn rewrite_and_reload(proxy: &Proxy, live: &Path, content: &[u8], message: &str) {
    std::fs::write(live, content).expect("rewrite the CA file");
    proxy.signal("HUP");
    let seen = proxy.wait_for_log(Duration::from_secs(10), |v| {
        support::proxy::log_message(v) == Some(message)
    });
    assert!(
        seen.is_some(),
        "no `{message}` after SIGHUP:\n{}",
        proxy.stderr_lines().join("\n")
    );
}

/// A copy of `ca`'s certificate under another name, for tests to overwrite in place.
fn live_ca(dir: &Path, ca: &Pki) -> std::path::PathBuf {
    let live = dir.join("live-ca.pem");
    std::fs::copy(&ca.ca, &live).expect("copy CA");
    live
}

#[test]
fn sighup_with_a_changed_ca_file_verifies_new_connections_against_the_new_ca() {
    if !have("nginx") || !have("openssl") {
        return;
    }
    let dir = TempDir::new();
    let (ca, server) = backend_certs();
    let other = Pki::in_dir(dir.path(), "other-ca");
    let nginx = NginxTls::start(&NginxTlsOptions::new(server));
    let live = live_ca(dir.path(), &other);
    let proxy = Proxy::start(&ProxyConfig::single(&[nginx.addr]).tls("ca", &quoted(&live)));
    assert_eq!(
        get10(proxy.addr, "/index.html").status,
        502,
        "the wrong CA first"
    );

    let right = std::fs::read(&ca.ca).expect("read CA");
    rewrite_and_reload(&proxy, &live, &right, "configuration reloaded");

    assert_eq!(get10(proxy.addr, "/index.html").status, 200);
}

#[test]
fn sighup_with_a_bad_ca_file_keeps_the_running_ca() {
    if !have("nginx") || !have("openssl") {
        return;
    }
    let dir = TempDir::new();
    let (ca, server) = backend_certs();
    let nginx = NginxTls::start(&NginxTlsOptions::new(server));
    let live = live_ca(dir.path(), &ca);
    // One request per connection: every request after the reload needs a new TLS connection.
    let config = ProxyConfig::single(&[nginx.addr])
        .tls("ca", &quoted(&live))
        .pool("max_requests", "1");
    let proxy = Proxy::start(&config);
    assert_eq!(get10(proxy.addr, "/index.html").status, 200);

    rewrite_and_reload(
        &proxy,
        &live,
        b"not a certificate\n",
        "reload failed; keeping the running configuration",
    );

    assert_eq!(get10(proxy.addr, "/index.html").status, 200);
}

#[test]
fn a_failed_ca_reload_logs_the_file_and_the_reason() {
    if !have("nginx") || !have("openssl") {
        return;
    }
    let dir = TempDir::new();
    let (ca, server) = backend_certs();
    let nginx = NginxTls::start(&NginxTlsOptions::new(server));
    let live = live_ca(dir.path(), &ca);
    let proxy = Proxy::start(&ProxyConfig::single(&[nginx.addr]).tls("ca", &quoted(&live)));

    let message = "reload failed; keeping the running configuration";
    rewrite_and_reload(&proxy, &live, b"not a certificate\n", message);

    let line = proxy
        .log_lines()
        .into_iter()
        .find(|v| support::proxy::log_message(v) == Some(message))
        .expect("the reload failure line");
    let error = support::proxy::log_field(&line, "error")
        .and_then(|e| e.as_str())
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("live-ca.pem"),
        "the error names the file: {error}"
    );
    assert!(
        error.contains("no PEM certificate"),
        "the error says why: {error}"
    );
}
