//! Upstream health: passive ejection after consecutive connect failures or resets with a growing
//! backoff, return after a successful connect or probe, active checks (`[upstream.health]` path,
//! interval, timeout, expected status), balancers skipping ejected servers, and a backend restart
//! under load (only in-flight requests fail, the pool refills, no file descriptor leaks). With
//! every server ejected, ejection is ignored: see tests/connect_retries.rs (panic rule).

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use support::Stopwatch;
use support::backend::{self, Backend, Reply};
use support::client;
use support::faults::{self, RefusingPort};
use support::proxy::{self, Proxy, ProxyConfig};

fn start(config: &ProxyConfig, health: &[(&str, &str)]) -> Proxy {
    Proxy::start_raw(&faults::with_health(&config.render(), health))
}

fn server_up(proxy: &Proxy, server: SocketAddr) -> Option<f64> {
    let s = server.to_string();
    proxy.metric("longhaul_upstream_server_up", &[("server", s.as_str())])
}

/// The `healthy` flag /pools reports for `server`.
fn pools_healthy(proxy: &Proxy, server: SocketAddr) -> Option<bool> {
    let s = server.to_string();
    let pools = proxy.pools();
    pools["upstreams"]
        .as_array()?
        .iter()
        .flat_map(|u| u["servers"].as_array().cloned().unwrap_or_default())
        .find(|srv| srv["address"].as_str() == Some(s.as_str()))
        .and_then(|srv| srv["healthy"].as_bool())
}

/// `ejected_for_ms` of every "server ejected" log line about `server`, in order.
fn ejections(proxy: &Proxy, server: SocketAddr) -> Vec<u64> {
    let s = server.to_string();
    proxy
        .log_lines()
        .iter()
        .filter(|v| proxy::log_message(v) == Some("server ejected"))
        .filter(|v| proxy::log_field(v, "server").and_then(|x| x.as_str()) == Some(s.as_str()))
        .filter_map(|v| proxy::log_field(v, "ejected_for_ms").and_then(|x| x.as_u64()))
        .collect()
}

#[test]
fn consecutive_connect_failures_eject_a_server_for_a_doubling_backoff() {
    let dead = RefusingPort::new();
    let live = Backend::start();
    let proxy = start(
        &ProxyConfig::single(&[dead.addr, live.addr()]),
        &[
            ("max_failures", "2"),
            ("base_ejection", "\"400ms\""),
            ("max_ejection", "\"1600ms\""),
        ],
    );
    // Round robin sends requests to the dead server first; each refused connect is retried on
    // the live one, so clients see no error. Two refused connects eject it.
    for i in 0..4 {
        let r = client::get10(proxy.addr, &format!("/fail/{i}"));
        assert_eq!(r.status, 200, "{}", r.body_str());
    }
    assert_eq!(
        server_up(&proxy, dead.addr),
        Some(0.0),
        "ejected after max_failures = 2"
    );
    assert_eq!(pools_healthy(&proxy, dead.addr), Some(false));

    // After each ejection the server is on probation: one more refused connect ejects it again,
    // for twice as long (capped). Of two requests after an ejection, one is offered to it.
    for backoff_ms in [400u64, 800, 1600] {
        // The ejection has ended when /pools reports the server healthy again (probation).
        assert!(
            support::wait_until(Duration::from_millis(backoff_ms + 2000), || {
                pools_healthy(&proxy, dead.addr) == Some(true)
            }),
            "the {backoff_ms} ms ejection never ended"
        );
        for i in 0..2 {
            let r = client::get10(proxy.addr, &format!("/probation/{backoff_ms}/{i}"));
            assert_eq!(r.status, 200, "{}", r.body_str());
        }
    }
    assert_eq!(live.request_count(), 10);
    let seen = ejections(&proxy, dead.addr);
    assert_eq!(
        seen,
        vec![400, 800, 1600, 1600],
        "ejection lengths: base 400ms doubling up to max_ejection 1600ms"
    );
}

#[test]
fn consecutive_resets_eject_a_server() {
    // The server accepts, reads the request, then resets: a connect succeeds every time, but
    // the exchange fails. `max_failures` such resets in a row must eject it.
    let resetting = Backend::builder()
        .rst()
        .close_without_answer(|_| true)
        .start();
    let good = Backend::start();
    let proxy = start(
        &ProxyConfig::single(&[resetting.addr(), good.addr()]).pool("max_size", "2"),
        &[
            ("max_failures", "3"),
            ("base_ejection", "\"20s\""),
            ("max_ejection", "\"20s\""),
        ],
    );
    let mut failures = 0;
    for i in 0..30 {
        let r = client::get10(proxy.addr, &format!("/r/{i}"));
        if r.status != 200 {
            assert_eq!(r.status, 502, "{}", r.body_str());
            failures += 1;
        }
    }
    let reset_requests = resetting.request_count();
    assert!(
        reset_requests <= 3,
        "the resetting server got {reset_requests} requests; it should be ejected after 3 resets"
    );
    assert!(failures <= 3, "{failures} client failures");
    assert_eq!(server_up(&proxy, resetting.addr()), Some(0.0));
    assert_eq!(server_up(&proxy, good.addr()), Some(1.0));
}

#[test]
fn ejected_server_returns_once_it_accepts_connections_again() {
    let port = RefusingPort::new();
    let addr = port.addr;
    let proxy = start(
        &ProxyConfig::single(&[addr]),
        &[("max_failures", "1"), ("base_ejection", "\"300ms\"")],
    );
    let r = client::get10(proxy.addr, "/down");
    assert_eq!(r.status, 502);
    assert_eq!(server_up(&proxy, addr), Some(0.0));

    let backend = Backend::builder().start_on(port.release());
    let back = support::wait_until(Duration::from_secs(5), || {
        client::try_get10(proxy.addr, "/up").is_ok_and(|r| r.status == 200)
    });
    assert!(
        back,
        "the server never came back after it started accepting again"
    );
    assert!(backend.request_count() >= 1);
    assert_eq!(server_up(&proxy, addr), Some(1.0));
    assert_eq!(pools_healthy(&proxy, addr), Some(true));
    for i in 0..5 {
        assert_eq!(
            client::get10(proxy.addr, &format!("/again/{i}")).status,
            200
        );
    }
}

/// A backend that answers `path` with `pass` or `fail` status as `ok` says, and clients with 200.
fn probed_backend(path: &'static str, ok: Arc<AtomicBool>, pass: u16, fail: u16) -> Backend {
    Backend::builder()
        .responder(move |req| {
            let status = if req.target != path {
                200
            } else if ok.load(Ordering::SeqCst) {
                pass
            } else {
                fail
            };
            let body: &[u8] = if status == 204 { b"" } else { b"x" };
            let mut bytes = backend::http10_response(status, &[], body);
            if status == 204 {
                bytes = b"HTTP/1.0 204 No Content\r\n\r\n".to_vec();
            }
            let keep = req.wants_keepalive();
            if keep {
                let text = String::from_utf8(bytes).unwrap();
                bytes = text
                    .replacen("\r\n\r\n", "\r\nConnection: keep-alive\r\n\r\n", 1)
                    .into_bytes();
            }
            Reply::Raw {
                bytes,
                keep_open: keep,
            }
        })
        .start()
}

fn client_requests(b: &Backend, probe_path: &str) -> usize {
    b.requests()
        .iter()
        .filter(|r| r.target != probe_path)
        .count()
}

#[test]
fn active_check_with_unexpected_status_ejects_and_a_passing_probe_restores() {
    const PATH: &str = "/probe-me";
    let a_ok = Arc::new(AtomicBool::new(false));
    let a = probed_backend(PATH, a_ok.clone(), 204, 200);
    let b = probed_backend(PATH, Arc::new(AtomicBool::new(true)), 204, 200);
    let proxy = start(
        &ProxyConfig::single(&[a.addr(), b.addr()]),
        &[
            ("path", &format!("\"{PATH}\"")),
            ("interval", "\"150ms\""),
            ("timeout", "\"500ms\""),
            ("expected_status", "204"),
            ("max_failures", "2"),
            ("base_ejection", "\"30s\""),
            ("max_ejection", "\"30s\""),
        ],
    );
    assert!(
        support::wait_until(Duration::from_secs(5), || server_up(&proxy, a.addr())
            == Some(0.0)),
        "a server answering its probe with 200 (expected_status 204) was never ejected"
    );
    assert_eq!(
        server_up(&proxy, b.addr()),
        Some(1.0),
        "the passing server stays in"
    );
    assert!(
        a.requests().iter().any(|r| r.target == PATH),
        "the probe must GET the configured path"
    );
    let before = client_requests(&a, PATH);
    for i in 0..20 {
        assert_eq!(client::get10(proxy.addr, &format!("/c/{i}")).status, 200);
    }
    assert_eq!(
        client_requests(&a, PATH),
        before,
        "client traffic reached a server its active check ejected"
    );

    a_ok.store(true, Ordering::SeqCst);
    assert!(
        support::wait_until(Duration::from_secs(5), || server_up(&proxy, a.addr())
            == Some(1.0)),
        "a passing probe did not bring the server back (base_ejection 30s)"
    );
    for i in 0..20 {
        assert_eq!(client::get10(proxy.addr, &format!("/d/{i}")).status, 200);
    }
    assert!(
        client_requests(&a, PATH) - before >= 5,
        "the restored server got {} of 20 requests",
        client_requests(&a, PATH) - before
    );
}

#[test]
fn active_check_that_times_out_ejects_the_server() {
    const PATH: &str = "/slow-probe";
    let hanging = Backend::builder()
        .responder(|req| {
            if req.target == PATH {
                Reply::Hang
            } else {
                Reply::Raw {
                    bytes: backend::http10_response(200, &[("Connection", "keep-alive")], b"h"),
                    keep_open: true,
                }
            }
        })
        .start();
    let fine = Backend::start();
    let proxy = start(
        &ProxyConfig::single(&[hanging.addr(), fine.addr()]),
        &[
            ("path", &format!("\"{PATH}\"")),
            ("interval", "\"200ms\""),
            ("timeout", "\"300ms\""),
            ("max_failures", "2"),
            ("base_ejection", "\"30s\""),
            ("max_ejection", "\"30s\""),
        ],
    );
    let started = Stopwatch::start();
    assert!(
        support::wait_until(Duration::from_secs(5), || {
            server_up(&proxy, hanging.addr()) == Some(0.0)
        }),
        "a server whose probe never answers was not ejected"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(server_up(&proxy, fine.addr()), Some(1.0));
    for i in 0..10 {
        let r = client::get10(proxy.addr, &format!("/t/{i}"));
        assert_eq!(r.status, 200);
        assert_eq!(r.body, fine.expected_body("GET", &format!("/t/{i}")));
    }
}

/// Two servers, one dead; the dead one must be ejected on its first refused connect and then
/// never tried again within `base_ejection`: no client error, every request on the live one,
/// and no second ejection (a connect during probation would re-eject it).
fn assert_balancer_skips_ejected(balance: &str) {
    let live = Backend::start();
    let dead = RefusingPort::new();
    let proxy = start(
        &ProxyConfig::single(&[dead.addr, live.addr()]).up("balance", &format!("\"{balance}\"")),
        &[
            ("max_failures", "1"),
            ("base_ejection", "\"20s\""),
            ("max_ejection", "\"20s\""),
        ],
    );
    for i in 0..40 {
        let r = client::get10(proxy.addr, &format!("/b/{i}"));
        assert_eq!(
            r.status,
            200,
            "request {i} with {balance}: {}",
            r.body_str()
        );
    }
    assert_eq!(live.request_count(), 40);
    assert_eq!(server_up(&proxy, dead.addr), Some(0.0));
    assert!(
        support::wait_until(Duration::from_secs(1), || !ejections(&proxy, dead.addr)
            .is_empty()),
        "no `server ejected` line"
    );
    assert_eq!(
        ejections(&proxy, dead.addr),
        vec![20_000],
        "the ejected server was tried again while ejected ({balance})"
    );
}

#[test]
fn least_conn_skips_ejected_servers() {
    assert_balancer_skips_ejected("least_conn");
}

#[test]
fn round_robin_skips_ejected_servers() {
    assert_balancer_skips_ejected("round_robin");
}

#[test]
fn backend_restart_under_load_fails_only_in_flight_requests_and_leaks_no_fds() {
    const CLIENTS: usize = 4;
    let a_addr = faults::unused_port();
    let a = Backend::builder()
        .delay(Duration::from_millis(40))
        .start_on(a_addr);
    let b = Backend::builder().delay(Duration::from_millis(40)).start();
    let mut proxy = start(
        &ProxyConfig::single(&[a_addr, b.addr()])
            .pool("max_size", "4")
            .pool("idle_timeout", "\"1s\""),
        &[
            ("max_failures", "3"),
            ("base_ejection", "\"300ms\""),
            ("max_ejection", "\"1s\""),
        ],
    );
    let pid = proxy.pid();
    // The baseline once start-up has settled: two reads 100 ms apart agree.
    let mut baseline = faults::open_fds(pid);
    assert!(
        support::poll_until(Duration::from_secs(5), Duration::from_millis(100), || {
            let now = faults::open_fds(pid);
            std::mem::replace(&mut baseline, now) == now
        }),
        "the proxy's descriptor count did not settle after start"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let clock = Stopwatch::start();
    // (completed at, status, body) of every failed request.
    let failed = Arc::new(Mutex::new(Vec::<(Duration, u16, String)>::new()));
    let addr = proxy.addr;
    let workers: Vec<_> = (0..CLIENTS)
        .map(|w| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    match client::try_get10(addr, &format!("/load/{w}/{i}")) {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(r) => {
                            failed
                                .lock()
                                .unwrap()
                                .push((clock.elapsed(), r.status, r.body_str()))
                        }
                        Err(e) => failed
                            .lock()
                            .unwrap()
                            .push((clock.elapsed(), 0, e.to_string())),
                    }
                }
            })
        })
        .collect();

    thread::sleep(Duration::from_millis(1200));
    assert!(
        a.request_count() > 0 && b.request_count() > 0,
        "load reaches both servers"
    );
    let stopped_at = clock.elapsed();
    let unanswered = a.stop();
    thread::sleep(Duration::from_millis(600));
    let restarted_at = clock.elapsed();
    let a2 = Backend::builder()
        .delay(Duration::from_millis(40))
        .start_on(a_addr);
    let refilled = support::wait_until(Duration::from_secs(5), || a2.request_count() >= 20);
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().expect("load thread");
    }
    let failed = failed.lock().unwrap().clone();
    assert!(
        refilled,
        "traffic never returned to the restarted server ({} requests)",
        a2.request_count()
    );
    assert!(
        ok.load(Ordering::SeqCst) > 50,
        "{} successful requests",
        ok.load(Ordering::SeqCst)
    );
    eprintln!(
        "restart under load: {} ok, {} failed, {unanswered} requests unanswered by the stopped server, \
         {} served after the restart, fds at start {baseline}",
        ok.load(Ordering::SeqCst),
        failed.len(),
        a2.request_count()
    );
    assert!(
        failed.len() <= CLIENTS,
        "{} failures with at most {CLIENTS} requests in flight at the restart: {failed:?}",
        failed.len()
    );
    for (at, status, body) in &failed {
        assert_eq!(*status, 502, "failure at {at:?}: {body}");
        assert!(
            *at >= stopped_at && *at < stopped_at + Duration::from_millis(500),
            "a request failed at {at:?}, not in flight when the server stopped at {stopped_at:?} \
             (restarted at {restarted_at:?}): {body}"
        );
    }
    assert!(
        support::wait_until(Duration::from_secs(3), || pools_healthy(&proxy, a_addr)
            == Some(true)),
        "/pools does not report the restarted server healthy"
    );

    // Idle pooled connections expire after 1 s; then the proxy holds what it held at the start.
    let settled = support::wait_until(Duration::from_secs(8), || faults::open_fds(pid) <= baseline);
    assert!(
        settled,
        "file descriptors: {baseline} before the load, {} after it settled",
        faults::open_fds(pid)
    );
    assert!(proxy.is_running());
    drop(a2);
}
