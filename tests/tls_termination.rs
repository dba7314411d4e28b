//! TLS termination on `tls_listen`: real clients (`curl`, `openssl s_client`, rustls) against
//! certificates made with `openssl` in a temp dir. Short HTTPS clients share pooled backend
//! connections; SNI picks the certificate; sessions resume; bad and stalled handshakes are closed
//! and counted without hurting anyone else; `check` and SIGHUP refuse bad certificate files.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::backend::{Backend, Reply};
use support::proxy::{self, Proxy, ProxyConfig, TempDir};
use support::tls::{self, CertFiles, Pki, TlsClient};

const RUN_TIMEOUT: Duration = Duration::from_secs(10);
const HANDSHAKES: &str = "longhaul_tls_handshakes_total";

/// Whether the CLI clients these tests drive are installed (CI requires them).
fn tools() -> bool {
    support::tools::have("openssl") && support::tools::have("curl")
}

/// `certificates = [...]` for `[server.tls]`, in this order.
fn certificates(certs: &[&CertFiles]) -> String {
    let entries: Vec<String> = certs
        .iter()
        .map(|c| {
            format!(
                "{{ cert = {:?}, key = {:?} }}",
                c.cert.display().to_string(),
                c.key.display().to_string()
            )
        })
        .collect();
    format!("[{}]", entries.join(", "))
}

/// One upstream on `backend`, one TLS listener presenting `certs` (the first is the default).
fn tls_config(backend: &Backend, certs: &[&CertFiles]) -> ProxyConfig {
    ProxyConfig::single(&[backend.addr()])
        .server("tls_listen", "[\"127.0.0.1:0\"]")
        .server_tls("certificates", &certificates(certs))
}

fn tls_addr(proxy: &Proxy) -> SocketAddr {
    proxy
        .tls_addr
        .expect("the proxy logs its tls_listen address")
}

fn handshakes(proxy: &Proxy, result: &str, resumed: &str) -> f64 {
    proxy.metric_or_zero(
        HANDSHAKES,
        &[("side", "client"), ("result", result), ("resumed", resumed)],
    )
}

/// Waits (bounded) until the client handshake counter for `result` reaches `n`.
fn wait_handshakes(proxy: &Proxy, result: &str, n: f64) -> bool {
    support::wait_until(Duration::from_secs(10), || {
        handshakes(proxy, result, "false") + handshakes(proxy, result, "true") >= n
    })
}

// === serving ===

#[test]
fn curl_http10_gets_the_backend_body_over_https() {
    if !tools() {
        return;
    }
    let pki = Pki::new();
    let site = pki.issue("localhost", &["localhost"]);
    let backend = Backend::start();
    let proxy = Proxy::start(&tls_config(&backend, &[&site]));
    let ca = pki.ca.display().to_string();
    let out = tls::curl(tls_addr(&proxy), &["--http1.0", "--cacert", &ca], "/hello");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, backend.expected_body("GET", "/hello"));
}

#[test]
fn requests_over_tls_are_forwarded_as_https() {
    if !tools() {
        return;
    }
    let pki = Pki::new();
    let site = pki.issue("localhost", &["localhost"]);
    let backend = Backend::start();
    let proxy = Proxy::start(&tls_config(&backend, &[&site]));
    let client = TlsClient::new(&pki.ca, "localhost");
    let r = client.get10(tls_addr(&proxy), "/proto").expect("HTTPS GET");
    assert_eq!(r.status, 200);
    let seen = backend.requests();
    assert_eq!(seen[0].header("x-forwarded-proto"), Some("https"));
}

#[test]
fn plain_listen_next_to_tls_still_forwards_http() {
    if !tools() {
        return;
    }
    let pki = Pki::new();
    let site = pki.issue("localhost", &["localhost"]);
    let backend = Backend::start();
    let proxy = Proxy::start(&tls_config(&backend, &[&site]));
    assert_eq!(support::client::get10(proxy.addr, "/plain").status, 200);
    assert_eq!(
        backend.requests()[0].header("x-forwarded-proto"),
        Some("http")
    );
}

#[test]
fn short_tls_clients_share_pooled_backend_connections() {
    if !tools() {
        return;
    }
    let pki = Pki::new();
    let site = pki.issue("localhost", &["localhost"]);
    let backend = Backend::start();
    let config = tls_config(&backend, &[&site]).pool("max_size", "4");
    let proxy = Proxy::start(&config);
    let client = TlsClient::new(&pki.ca, "localhost");
    let addr = tls_addr(&proxy);
    let ok = (0..200)
        .filter(|i| {
            client
                .get10(addr, &format!("/short/{i}"))
                .is_ok_and(|r| r.status == 200)
        })
        .count();
    assert_eq!(ok, 200);
    assert!(
        backend.accepted() <= 4,
        "200 short TLS clients opened {} backend connections (max_size 4)",
        backend.accepted()
    );
}

#[test]
fn tls_clients_are_served_by_every_worker_count() {
    if !tools() {
        return;
    }
    let pki = Pki::new();
    let site = pki.issue("localhost", &["localhost"]);
    let backend = Backend::start();
    let proxy = Proxy::start(&tls_config(&backend, &[&site]).server("workers", "3"));
    let client = TlsClient::new(&pki.ca, "localhost");
    let addr = tls_addr(&proxy);
    let ok = (0..60)
        .filter(|_| client.get10(addr, "/w").is_ok_and(|r| r.status == 200))
        .count();
    assert_eq!(ok, 60);
}

// === upgrades ===

/// A backend that answers `Upgrade` with 101 and then keeps reading requests on the switched
/// connection (each answered 200 `plain`), so bytes sent through the tunnel come back as a reply.
fn switching_backend() -> Backend {
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

/// Reads from `r` until `end` has arrived (bounded by the stream's read timeout and 64 KiB).
fn read_until(r: &mut impl Read, end: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(end) && got.len() < 65536 {
        match r.read(&mut byte) {
            Ok(1) => got.push(byte[0]),
            other => panic!(
                "stream ended after {:?}: {other:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    got
}

#[test]
fn a_websocket_upgrade_over_tls_tunnels_bytes_to_the_backend() {
    if !tools() {
        return;
    }
    let pki = Pki::new();
    let site = pki.issue("localhost", &["localhost"]);
    let backend = switching_backend();
    let proxy = Proxy::start(&tls_config(&backend, &[&site]).up("protocol", "\"http/1.1\""));
    let client = TlsClient::new(&pki.ca, "localhost");
    let mut tls = client.connect(tls_addr(&proxy)).expect("TLS handshake");
    tls.write_all(
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .expect("send upgrade");
    let head = read_until(&mut tls, b"\r\n\r\n");
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tls.write_all(b"GET /through-the-tunnel HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("send through the tunnel");
    let reply = read_until(&mut tls, b"plain\n");
    assert!(
        reply.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    let paths: Vec<String> = backend
        .requests()
        .iter()
        .map(|r| r.target.clone())
        .collect();
    assert_eq!(paths, ["/ws", "/through-the-tunnel"]);
}

// === SNI ===

#[test]
fn sni_picks_the_certificate_named_for_each_server_name() {
    if !tools() {
        return;
    }
    let pki = Pki::new();
    let a = pki.issue("a.test", &["a.test"]);
    let b = pki.issue("b.test", &["b.test", "*.b.test"]);
    let backend = Backend::start();
    let proxy = Proxy::start(&tls_config(&backend, &[&a, &b]));
    let addr = tls_addr(&proxy);
    let subject_for = |name: &str| {
        let (_, out) = tls::s_client(addr, &["-servername", name], b"");
        tls::subject(&out)
    };
    assert_eq!(
        [
            subject_for("a.test"),
            subject_for("b.test"),
            subject_for("www.b.test")
        ],
        [
            Some("subject=CN = a.test".to_string()),
            Some("subject=CN = b.test".to_string()),
            Some("subject=CN = b.test".to_string()),
        ]
    );
}

#[test]
fn an_unknown_server_name_gets_the_first_certificate() {
    if !tools() {
        return;
    }
    let pki = Pki::new();
    let a = pki.issue("a.test", &["a.test"]);
    let b = pki.issue("b.test", &["b.test"]);
    let backend = Backend::start();
    let proxy = Proxy::start(&tls_config(&backend, &[&a, &b]));
    let (_, out) = tls::s_client(tls_addr(&proxy), &["-servername", "c.test"], b"");
    assert_eq!(tls::subject(&out).as_deref(), Some("subject=CN = a.test"));
}

#[test]
fn a_client_without_sni_gets_the_first_certificate() {
    if !tools() {
        return;
    }
    let pki = Pki::new();
    let a = pki.issue("a.test", &["a.test"]);
    let b = pki.issue("b.test", &["b.test"]);
    let backend = Backend::start();
    let proxy = Proxy::start(&tls_config(&backend, &[&b, &a]));
    let (_, out) = tls::s_client(tls_addr(&proxy), &["-noservername"], b"");
    assert_eq!(tls::subject(&out).as_deref(), Some("subject=CN = b.test"));
}

// === resumption ===

#[test]
fn tls12_clients_resume_with_session_tickets() {
    if !tools() {
        return;
    }
    let pki = Pki::new();
    let site = pki.issue("localhost", &["localhost"]);
    let backend = Backend::start();
    let proxy = Proxy::start(&tls_config(&backend, &[&site]));
    let (_, out) = tls::s_client(tls_addr(&proxy), &["-tls1_2", "-reconnect"], b"");
    // s_client -reconnect makes 1 full handshake and 5 more with the session it got.
    assert_eq!(
        (
            tls::reused(&out),
            out.contains("TLS session ticket lifetime hint")
        ),
        (5, true),
        "{out}"
    );
}

#[test]
fn tls12_clients_resume_from_the_session_cache_without_tickets() {
    if !tools() {
        return;
    }
    let pki = Pki::new();
    let site = pki.issue("localhost", &["localhost"]);
    let backend = Backend::start();
    let config = tls_config(&backend, &[&site]).server_tls("session_tickets", "false");
    let proxy = Proxy::start(&config);
    let (_, out) = tls::s_client(tls_addr(&proxy), &["-tls1_2", "-reconnect"], b"");
    assert_eq!(
        (
            tls::reused(&out),
            out.contains("TLS session ticket lifetime hint")
        ),
        (5, false),
        "{out}"
    );
}

#[test]
fn tls13_clients_resume_with_a_session_ticket() {
    if !tools() {
        return;
    }
    let pki = Pki::new();
    let site = pki.issue("localhost", &["localhost"]);
    let backend = Backend::start();
    let proxy = Proxy::start(&tls_config(&backend, &[&site]));
    let addr = tls_addr(&proxy);
    // OpenSSL 3.0's `-reconnect` reconnects before a TLS 1.3 ticket arrives (it resumes nothing
    // against `openssl s_server` either), so the session is saved after a whole request.
    let sessions = TempDir::new();
    let session = sessions.path().join("tls13.session").display().to_string();
    let request = b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n";
    let (ok, first) = tls::s_client(
        addr,
        &["-tls1_3", "-ign_eof", "-sess_out", &session],
        request,
    );
    assert!(ok, "{first}");
    let (_, second) = tls::s_client(addr, &["-tls1_3", "-sess_in", &session], b"");
    assert!(second.contains("Reused, TLSv1.3"), "{second}");
}

#[test]
fn resumed_handshakes_are_counted_as_resumed() {
    if !tools() {
        return;
    }
    let pki = Pki::new();
    let site = pki.issue("localhost", &["localhost"]);
    let backend = Backend::start();
    let proxy = Proxy::start(&tls_config(&backend, &[&site]));
    let (_, out) = tls::s_client(tls_addr(&proxy), &["-tls1_2", "-reconnect"], b"");
    assert_eq!(tls::reused(&out), 5, "{out}");
    assert!(wait_handshakes(&proxy, "ok", 6.0));
    assert_eq!(
        (
            handshakes(&proxy, "ok", "false"),
            handshakes(&proxy, "ok", "true")
        ),
        (1.0, 5.0)
    );
}

// === versions and failed handshakes ===

#[test]
fn min_version_13_refuses_a_tls12_only_client() {
    if !tools() {
        return;
    }
    let pki = Pki::new();
    let site = pki.issue("localhost", &["localhost"]);
    let backend = Backend::start();
    let config = tls_config(&backend, &[&site]).server_tls("min_version", "\"1.3\"");
    let proxy = Proxy::start(&config);
    let (ok, out) = tls::s_client(tls_addr(&proxy), &["-tls1_2"], b"");
    assert!(!ok, "a TLS 1.2-only client got through:\n{out}");
    assert!(wait_handshakes(&proxy, "error", 1.0));
}

#[test]
fn min_version_13_serves_a_tls13_client() {
    if !tools() {
        return;
    }
    let pki = Pki::new();
    let site = pki.issue("localhost", &["localhost"]);
    let backend = Backend::start();
    let config = tls_config(&backend, &[&site]).server_tls("min_version", "\"1.3\"");
    let proxy = Proxy::start(&config);
    let (ok, out) = tls::s_client(tls_addr(&proxy), &["-tls1_3"], b"");
    assert!(ok && out.contains("New, TLSv1.3"), "{out}");
}

/// Sends an HTTP request where a ClientHello belongs; whether the proxy then closed the
/// connection (after a TLS alert at most: no HTTP answer) within a bound.
fn send_plain_http_to_tls_port(addr: SocketAddr) -> bool {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .expect("send");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let ended = match s.read_to_end(&mut got) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    ended && !got.starts_with(b"HTTP/")
}

#[test]
fn bad_bytes_instead_of_a_client_hello_close_the_connection() {
    if !tools() {
        return;
    }
    let pki = Pki::new();
    let site = pki.issue("localhost", &["localhost"]);
    let backend = Backend::start();
    let proxy = Proxy::start(&tls_config(&backend, &[&site]));
    assert!(send_plain_http_to_tls_port(tls_addr(&proxy)));
}

#[test]
fn bad_bytes_instead_of_a_client_hello_are_counted_as_a_failed_handshake() {
    if !tools() {
        return;
    }
    let pki = Pki::new();
    let site = pki.issue("localhost", &["localhost"]);
    let backend = Backend::start();
    let proxy = Proxy::start(&tls_config(&backend, &[&site]));
    send_plain_http_to_tls_port(tls_addr(&proxy));
    assert!(wait_handshakes(&proxy, "error", 1.0));
    assert_eq!(
        (
            handshakes(&proxy, "error", "false"),
            handshakes(&proxy, "ok", "false")
        ),
        (1.0, 0.0)
    );
}

#[test]
fn a_client_right_after_bad_bytes_is_served() {
    if !tools() {
        return;
    }
    let pki = Pki::new();
    let site = pki.issue("localhost", &["localhost"]);
    let backend = Backend::start();
    let proxy = Proxy::start(&tls_config(&backend, &[&site]));
    let addr = tls_addr(&proxy);
    send_plain_http_to_tls_port(addr);
    let r = TlsClient::new(&pki.ca, "localhost").get10(addr, "/after");
    assert_eq!(r.expect("HTTPS GET").status, 200);
}

/// `n` TCP connections to `addr` that never send a byte.
fn stalled_handshakes(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect"))
        .collect()
}

#[test]
fn normal_tls_clients_are_served_while_1000_handshakes_stall() {
    if !tools() {
        return;
    }
    let pki = Pki::new();
    let site = pki.issue("localhost", &["localhost"]);
    let backend = Backend::start();
    let config = tls_config(&backend, &[&site]).server_tls("handshake_timeout", "\"60s\"");
    let proxy = Proxy::start(&config);
    let addr = tls_addr(&proxy);
    let stalled = stalled_handshakes(addr, 1000);
    assert!(support::wait_until(Duration::from_secs(10), || {
        proxy.metric_or_zero("longhaul_downstream_connections_active", &[]) >= 1000.0
    }));
    let client = TlsClient::new(&pki.ca, "localhost");
    let ok = (0..20)
        .filter(|_| client.get10(addr, "/busy").is_ok_and(|r| r.status == 200))
        .count();
    assert_eq!(ok, 20);
    // The stalled ones were all still open while those were served.
    assert_eq!(handshakes(&proxy, "error", "false"), 0.0);
    drop(stalled);
}

#[test]
fn stalled_handshakes_are_closed_by_handshake_timeout() {
    if !tools() {
        return;
    }
    let pki = Pki::new();
    let site = pki.issue("localhost", &["localhost"]);
    let backend = Backend::start();
    let config = tls_config(&backend, &[&site]).server_tls("handshake_timeout", "\"1s\"");
    let proxy = Proxy::start(&config);
    let stalled = stalled_handshakes(tls_addr(&proxy), 1000);
    let ends: Vec<String> = stalled
        .into_iter()
        .map(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            // Bounded: each retry follows a signal to this test process, not a wait.
            let read = (0..100)
                .map(|_| s.read(&mut [0u8; 1]))
                .find(|r| !matches!(r, Err(e) if e.kind() == std::io::ErrorKind::Interrupted));
            match read {
                Some(Ok(n)) => format!("read {n}"),
                Some(Err(e)) => format!("{:?}", e.kind()),
                None => "interrupted 100 times".to_string(),
            }
        })
        .collect();
    let odd: Vec<&String> = ends.iter().filter(|e| *e != "read 0").collect();
    assert_eq!(odd, Vec::<&String>::new());
    assert!(wait_handshakes(&proxy, "error", 1000.0));
    assert!(
        support::wait_until(Duration::from_secs(10), || {
            proxy.metric_or_zero("longhaul_downstream_connections_active", &[]) == 0.0
        }),
        "connections left open after every handshake timed out"
    );
}

#[test]
fn a_client_silent_after_its_handshake_is_closed_by_header_read_timeout() {
    if !tools() {
        return;
    }
    let pki = Pki::new();
    let site = pki.issue("localhost", &["localhost"]);
    let backend = Backend::start();
    let config = tls_config(&backend, &[&site]).server("header_read_timeout", "\"500ms\"");
    let proxy = Proxy::start(&config);
    let client = TlsClient::new(&pki.ca, "localhost");
    let mut tls = client.connect(tls_addr(&proxy)).expect("handshake");
    // Read bound 10 s: the proxy closes it without an answer once the 500 ms pass.
    let mut got = Vec::new();
    let ended = match tls.read_to_end(&mut got) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::UnexpectedEof,
    };
    assert_eq!((ended, got.len()), (true, 0));
}

#[test]
fn a_request_sent_right_after_the_handshake_is_served() {
    if !tools() {
        return;
    }
    let pki = Pki::new();
    let site = pki.issue("localhost", &["localhost"]);
    let backend = Backend::start();
    let proxy = Proxy::start(&tls_config(&backend, &[&site]));
    let client = TlsClient::new(&pki.ca, "localhost");
    let mut tls = client.connect(tls_addr(&proxy)).expect("handshake");
    tls.write_all(b"GET /first HTTP/1.1\r\nHost: localhost\r\n\r\nGET /second HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .expect("send");
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(text.matches(" 200 OK\r\n").count(), 2, "{text}");
}

// === metrics ===

#[test]
fn tls_handshake_series_are_exported_at_zero_at_start() {
    if !tools() {
        return;
    }
    let pki = Pki::new();
    let site = pki.issue("localhost", &["localhost"]);
    let backend = Backend::start();
    let proxy = Proxy::start(&tls_config(&backend, &[&site]));
    let text = proxy.metrics_text();
    let mut series = Vec::new();
    for side in ["client", "upstream"] {
        for result in ["ok", "error"] {
            for resumed in ["true", "false"] {
                let labels = [("side", side), ("result", result), ("resumed", resumed)];
                series.push(proxy::metric_in(&text, HANDSHAKES, &labels));
            }
        }
        let count = "longhaul_tls_handshake_duration_seconds_count";
        series.push(proxy::metric_in(&text, count, &[("side", side)]));
    }
    assert_eq!(series, vec![Some(0.0); 10]);
}

// === check ===

/// `longhaul check` on a config presenting `certs`, written next to them.
fn check(dir: &TempDir, certs: &[&CertFiles]) -> proxy::Run {
    let backend_addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let text = ProxyConfig::single(&[backend_addr])
        .server("tls_listen", "[\"127.0.0.1:0\"]")
        .server_tls("certificates", &certificates(certs))
        .render();
    let path = dir.write_config(&text);
    proxy::run(
        &["check", "--config", path.to_str().expect("utf-8 path")],
        RUN_TIMEOUT,
    )
}

/// Exit code, and whether stderr names each of `parts`.
fn refusal(run: &proxy::Run, parts: &[&str]) -> (Option<i32>, Vec<bool>) {
    let named = parts.iter().map(|p| run.stderr.contains(p)).collect();
    (run.code, named)
}

#[test]
fn check_accepts_a_valid_certificate_and_key() {
    if !tools() {
        return;
    }
    let pki = Pki::new();
    let site = pki.issue("localhost", &["localhost"]);
    let dir = TempDir::new();
    let run = check(&dir, &[&site]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

#[test]
fn the_configuration_check_prints_with_server_tls_passes_check_again() {
    if !tools() {
        return;
    }
    let pki = Pki::new();
    let site = pki.issue("localhost", &["localhost"]);
    let dir = TempDir::new();
    let first = check(&dir, &[&site]);
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    let printed = dir.path().join("printed.toml");
    std::fs::write(&printed, &first.stdout).expect("write printed config");
    let again = proxy::run(
        &["check", "--config", printed.to_str().expect("utf-8 path")],
        RUN_TIMEOUT,
    );
    assert_eq!(
        (again.code, again.stdout == first.stdout),
        (Some(0), true),
        "{}",
        again.stderr
    );
}

#[test]
fn check_refuses_an_expired_certificate() {
    if !tools() {
        return;
    }
    let pki = Pki::new();
    let old = pki.issue_expired("old.test");
    let dir = TempDir::new();
    let run = check(&dir, &[&old]);
    let cert = old.cert.display().to_string();
    assert_eq!(
        refusal(&run, &["server.tls.certificates[0].cert", &cert, "expired"]),
        (Some(2), vec![true; 3]),
        "{}",
        run.stderr
    );
}

#[test]
fn check_refuses_the_key_of_another_certificate() {
    if !tools() {
        return;
    }
    let pki = Pki::new();
    let a = pki.issue("a.test", &["a.test"]);
    let b = pki.issue("b.test", &["b.test"]);
    let mixed = CertFiles {
        cert: a.cert.clone(),
        key: b.key.clone(),
    };
    let dir = TempDir::new();
    let run = check(&dir, &[&mixed]);
    let key = b.key.display().to_string();
    assert_eq!(
        refusal(
            &run,
            &["server.tls.certificates[0].key", &key, "does not belong"]
        ),
        (Some(2), vec![true; 3]),
        "{}",
        run.stderr
    );
}

#[test]
fn check_refuses_a_missing_certificate_file() {
    if !tools() {
        return;
    }
    let pki = Pki::new();
    let site = pki.issue("localhost", &["localhost"]);
    let missing = CertFiles {
        cert: pki.dir().join("missing.pem"),
        key: site.key.clone(),
    };
    let dir = TempDir::new();
    let run = check(&dir, &[&site, &missing]);
    let cert = missing.cert.display().to_string();
    assert_eq!(
        refusal(
            &run,
            &["server.tls.certificates[1].cert", &cert, "cannot read"]
        ),
        (Some(2), vec![true; 3]),
        "{}",
        run.stderr
    );
}

#[test]
fn relative_certificate_paths_are_read_next_to_the_config_file() {
    if !tools() {
        return;
    }
    let pki = Pki::new();
    let site = pki.issue("localhost", &["localhost"]);
    let relative = CertFiles {
        cert: "localhost.pem".into(),
        key: "localhost.key".into(),
    };
    let text = ProxyConfig::single(&["127.0.0.1:9".parse().unwrap()])
        .server("tls_listen", "[\"127.0.0.1:0\"]")
        .server_tls("certificates", &certificates(&[&relative]))
        .render();
    std::fs::write(pki.dir().join("proxy.toml"), text).expect("write config");
    let config = pki.dir().join("proxy.toml").display().to_string();
    // Run from elsewhere: the files are found by the config file's directory.
    let run = proxy::run(&["check", "--config", &config], RUN_TIMEOUT);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(site.cert.exists());
}

#[test]
fn tls_listen_without_server_tls_is_refused() {
    let dir = TempDir::new();
    let text = ProxyConfig::single(&["127.0.0.1:9".parse().unwrap()])
        .server("tls_listen", "[\"127.0.0.1:0\"]")
        .render();
    let path = dir.write_config(&text);
    let run = proxy::run(&["check", "--config", path.to_str().unwrap()], RUN_TIMEOUT);
    assert_eq!(
        refusal(&run, &["server.tls_listen", "[server.tls]"]),
        (Some(2), vec![true; 2]),
        "{}",
        run.stderr
    );
}

#[test]
fn server_tls_without_tls_listen_is_refused() {
    let dir = TempDir::new();
    let text = ProxyConfig::single(&["127.0.0.1:9".parse().unwrap()])
        .server_tls("certificates", "[{ cert = \"a.pem\", key = \"a.key\" }]")
        .render();
    let path = dir.write_config(&text);
    let run = proxy::run(&["check", "--config", path.to_str().unwrap()], RUN_TIMEOUT);
    assert_eq!(
        refusal(&run, &["server.tls", "tls_listen is empty"]),
        (Some(2), vec![true; 2]),
        "{}",
        run.stderr
    );
}

// === reload ===

/// Copies `from` over the files the proxy was started with, sends SIGHUP, and waits for `message`.
fn replace_and_reload(proxy: &Proxy, files: &CertFiles, from: &CertFiles, message: &str) {
    std::fs::copy(&from.cert, &files.cert).expect("copy cert");
    std::fs::copy(&from.key, &files.key).expect("copy key");
    let before = count_messages(proxy, message);
    proxy.signal("HUP");
    assert!(
        support::wait_until(Duration::from_secs(10), || count_messages(proxy, message)
            > before),
        "no `{message}` after SIGHUP:\n{}",
        proxy.stderr_lines().join("\n")
    );
}

fn count_messages(proxy: &Proxy, message: &str) -> usize {
    proxy
        .log_lines()
        .iter()
        .filter(|v| proxy::log_message(v) == Some(message))
        .count()
}

/// A copy of `certs` under other names, so that tests can overwrite the files in place.
fn live_copy(pki: &Pki, certs: &CertFiles) -> CertFiles {
    let live = CertFiles {
        cert: pki.dir().join("live.pem"),
        key: pki.dir().join("live.key"),
    };
    std::fs::copy(&certs.cert, &live.cert).expect("copy cert");
    std::fs::copy(&certs.key, &live.key).expect("copy key");
    live
}

#[test]
fn sighup_with_a_new_certificate_serves_the_new_one() {
    if !tools() {
        return;
    }
    let pki = Pki::new();
    let old = pki.issue("old.test", &["old.test"]);
    let new = pki.issue("new.test", &["new.test"]);
    let live = live_copy(&pki, &old);
    let backend = Backend::start();
    let proxy = Proxy::start(&tls_config(&backend, &[&live]));
    replace_and_reload(&proxy, &live, &new, "TLS certificates reloaded");
    let (_, out) = tls::s_client(tls_addr(&proxy), &["-servername", "new.test"], b"");
    assert_eq!(tls::subject(&out).as_deref(), Some("subject=CN = new.test"));
}

#[test]
fn sighup_with_a_broken_certificate_file_keeps_the_old_one() {
    if !tools() {
        return;
    }
    let pki = Pki::new();
    let old = pki.issue("old.test", &["old.test"]);
    let live = live_copy(&pki, &old);
    let broken = CertFiles {
        cert: pki.dir().join("broken.pem"),
        key: old.key.clone(),
    };
    std::fs::write(&broken.cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    let backend = Backend::start();
    let proxy = Proxy::start(&tls_config(&backend, &[&live]));
    replace_and_reload(
        &proxy,
        &live,
        &broken,
        "reload failed; keeping the running configuration",
    );
    let (_, out) = tls::s_client(tls_addr(&proxy), &["-servername", "old.test"], b"");
    assert_eq!(tls::subject(&out).as_deref(), Some("subject=CN = old.test"));
}

#[test]
fn a_failed_certificate_reload_logs_the_file_and_the_reason() {
    if !tools() {
        return;
    }
    let pki = Pki::new();
    let old = pki.issue("old.test", &["old.test"]);
    let expired = pki.issue_expired("expired.test");
    let live = live_copy(&pki, &old);
    let backend = Backend::start();
    let proxy = Proxy::start(&tls_config(&backend, &[&live]));
    let message = "reload failed; keeping the running configuration";
    replace_and_reload(&proxy, &live, &expired, message);
    let line = proxy
        .log_lines()
        .into_iter()
        .rfind(|v| proxy::log_message(v) == Some(message))
        .expect("the reload line");
    let error = proxy::log_field(&line, "error")
        .and_then(|e| e.as_str())
        .unwrap_or("")
        .to_string();
    let cert = live.cert.display().to_string();
    assert_eq!(
        [error.contains(&cert), error.contains("expired")],
        [true, true],
        "{error}"
    );
}
