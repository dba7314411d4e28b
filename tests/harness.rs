//! Self-tests of the test support code (scripted backend, raw client, metrics parser) without
//! longhaul in between, so a failure elsewhere points at the proxy and not at the harness.

mod support;

use std::time::Duration;

use support::Stopwatch;
use support::backend::{Backend, Closed, Framing};
use support::client::{self, Client};
use support::proxy::{Proxy, ProxyConfig, metric_in};

#[test]
fn backend_keeps_alive_only_when_asked() {
    let backend = Backend::start();
    let mut c = Client::connect(backend.addr()).unwrap();
    let r = c
        .roundtrip(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("keep-alive"));
    assert_eq!(r.body, backend.expected_body("GET", "/a"));
    let r = c.roundtrip(b"GET /b HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(r.header("x-backend-req"), Some("1"));
    assert!(c.wait_closed(Duration::from_secs(2)));
    assert_eq!(backend.accepted(), 1);
    let reqs = backend.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!((reqs[1].conn, reqs[1].index), (0, 1));
}

#[test]
fn backend_head_204_304_have_no_body() {
    let backend = Backend::start();
    let mut c = Client::connect(backend.addr()).unwrap();
    let ka = "HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
    let head = c.roundtrip(format!("HEAD /x {ka}").as_bytes()).unwrap();
    assert!(head.body.is_empty());
    assert!(head.has_header("content-length"));
    assert_eq!(
        c.roundtrip(format!("GET /status/204 {ka}").as_bytes())
            .unwrap()
            .status,
        204
    );
    assert_eq!(
        c.roundtrip(format!("GET /status/304 {ka}").as_bytes())
            .unwrap()
            .status,
        304
    );
    assert_eq!(
        c.roundtrip(format!("GET /y {ka}").as_bytes())
            .unwrap()
            .status,
        200
    );
    assert_eq!(backend.accepted(), 1);
}

#[test]
fn backend_close_delimited_and_chunked_framing() {
    let cd = Backend::builder()
        .framing(Framing::CloseDelimited)
        .body_size(100_000)
        .start();
    let r = client::request(
        cd.addr(),
        b"GET /cd HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    );
    assert!(r.close_delimited);
    assert_eq!(r.body, cd.expected_body("GET", "/cd"));

    let ch = Backend::builder()
        .framing(Framing::Chunked11)
        .body_size(100)
        .start();
    let r = client::request(ch.addr(), b"GET /ch HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(r.chunked);
    assert_eq!(r.body, ch.expected_body("GET", "/ch"));
}

#[test]
fn backend_parses_chunked_request_bodies() {
    let backend = Backend::start();
    let r = client::request(
        backend.addr(),
        b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let req = &backend.requests()[0];
    assert!(req.chunked);
    assert_eq!(req.body, b"abcde");
}

#[test]
fn backend_idle_close_fin_and_rst() {
    for rst in [false, true] {
        let mut b = Backend::builder().idle_close(Duration::from_millis(100));
        if rst {
            b = b.rst();
        }
        let backend = b.start();
        let mut c = Client::connect(backend.addr()).unwrap();
        c.roundtrip(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let started = Stopwatch::start();
        assert!(c.wait_closed(Duration::from_secs(2)));
        assert!(started.elapsed() >= Duration::from_millis(80));
        assert!(
            backend.wait_until(Duration::from_secs(1), |b| b.connections()[0].closed
                == Closed::IdleTimeout)
        );
        if rst {
            // A reset surfaces as an error on the next read or write.
            let _ = c.send(b"GET / HTTP/1.0\r\n\r\n");
            assert!(c.read_response(false).is_err());
        }
    }
}

#[test]
fn backend_close_after_and_scripted_close() {
    let backend = Backend::builder()
        .close_after(2)
        .close_without_answer(|r| r.method == "POST")
        .start();
    let mut c = Client::connect(backend.addr()).unwrap();
    let ka = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
    assert_eq!(
        c.roundtrip(ka).unwrap().header("connection"),
        Some("keep-alive")
    );
    assert_eq!(c.roundtrip(ka).unwrap().header("connection"), Some("close"));
    assert!(c.wait_closed(Duration::from_secs(2)));
    let mut c = Client::connect(backend.addr()).unwrap();
    c.send(b"POST /x HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi")
        .unwrap();
    assert!(c.read_response(false).is_err());
    assert!(
        backend.wait_until(Duration::from_secs(1), |b| b.connections()[1].closed
            == Closed::Scripted)
    );
    assert_eq!(backend.requests()[2].body, b"hi");
}

#[test]
fn backend_stops_promptly_with_hanging_connections() {
    let backend = Backend::builder().never_answer().start();
    let mut c = Client::connect(backend.addr()).unwrap();
    c.send(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    assert!(backend.wait_until(Duration::from_secs(2), |b| b.request_count() == 1));
    let started = Stopwatch::start();
    drop(backend);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(c.wait_closed(Duration::from_secs(2)));
}

#[test]
fn metrics_parser_sums_matching_series() {
    let text = "# HELP x\n# TYPE x counter\n\
        longhaul_upstream_requests_total{connection=\"new\",server=\"127.0.0.1:1\",upstream=\"legacy\"} 3\n\
        longhaul_upstream_requests_total{connection=\"reused\",server=\"127.0.0.1:1\",upstream=\"legacy\"} 97\n\
        longhaul_downstream_connections_total 100\n";
    assert_eq!(
        metric_in(
            text,
            "longhaul_upstream_requests_total",
            &[("upstream", "legacy")]
        ),
        Some(100.0)
    );
    assert_eq!(
        metric_in(
            text,
            "longhaul_upstream_requests_total",
            &[("connection", "reused")]
        ),
        Some(97.0)
    );
    assert_eq!(
        metric_in(text, "longhaul_downstream_connections_total", &[]),
        Some(100.0)
    );
    assert_eq!(metric_in(text, "longhaul_missing", &[]), None);
}

/// Whether `pid` has exited: gone from /proc, or a zombie waiting for its parent to reap it.
fn has_exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .map(str::trim_start)
            .is_some_and(|s| s.starts_with('Z')),
    }
}

#[test]
fn proxy_dies_with_the_thread_that_started_it() {
    // The Proxy is handed back undropped, as if the test thread had been killed mid-test.
    let backend = Backend::start();
    let config = ProxyConfig::single(&[backend.addr()]);
    let proxy = std::thread::spawn(move || Proxy::start(&config))
        .join()
        .expect("starter thread");
    let pid = proxy.pid();
    assert!(
        support::wait_until(Duration::from_secs(10), || has_exited(pid)),
        "longhaul {pid} outlived the thread that spawned it"
    );
}

#[test]
fn child_guard_kills_and_reaps_its_process_on_drop() {
    let child =
        support::process::Child::spawn("sleep", std::process::Command::new("sleep").arg("600"));
    let pid = child.id();
    drop(child);
    // Reaped, not a zombie: the pid is gone from /proc.
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}
