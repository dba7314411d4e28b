//! Slow clients: the header read deadline against slowloris, the body read timeout (408),
//! `max_connections` under idle clients, and a thousand idle or slow clients that must not stop
//! normal clients from being served. (Head size and count limits are in tests/limits.rs.)

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::Stopwatch;
use support::backend::Backend;
use support::client::{self, Client};
use support::faults;
use support::proxy::{Proxy, ProxyConfig};

/// Writes `head` one byte per `every` until the proxy closes the connection (EOF, reset, or an
/// answer); returns when that happened and the answer's first bytes, or None if it never did
/// within `limit`.
fn trickle(
    addr: std::net::SocketAddr,
    head: &[u8],
    every: Duration,
    limit: Duration,
) -> Option<(Duration, Vec<u8>)> {
    let mut s = TcpStream::connect(addr).expect("connect");
    let started = Stopwatch::start();
    let mut answer = Vec::new();
    for byte in head.iter().cycle() {
        if started.elapsed() > limit {
            return None;
        }
        if s.write_all(&[*byte]).is_err() {
            return Some((started.elapsed(), answer));
        }
        s.set_read_timeout(Some(every)).expect("read timeout");
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => return Some((started.elapsed(), answer)),
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                // An answer (408) is fine; the connection must still end.
                s.set_read_timeout(Some(Duration::from_secs(3))).ok();
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => return Some((started.elapsed(), answer)),
                        Ok(n) => answer.extend_from_slice(&buf[..n]),
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                        {
                            return None;
                        }
                        Err(_) => return Some((started.elapsed(), answer)),
                    }
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some((started.elapsed(), answer)),
        }
    }
    None
}

#[test]
fn client_trickling_a_byte_a_second_is_cut_off_at_header_read_timeout() {
    // Every byte arrives well within any per-read timeout; only a deadline on the whole head
    // stops this client.
    let backend = Backend::start();
    let proxy = Proxy::start(
        &ProxyConfig::single(&[backend.addr()]).server("header_read_timeout", "\"3s\""),
    );
    let head = b"GET /slowloris HTTP/1.1\r\nHost: test.local\r\nX-Padding: aaaaaaaaaaaaaaaa\r\n";
    let cut = trickle(
        proxy.addr,
        head,
        Duration::from_secs(1),
        Duration::from_secs(10),
    );
    let (at, answer) = cut.expect(
        "a client sending a byte a second was still connected after 10 s (header_read_timeout 3s)",
    );
    assert!(
        at >= Duration::from_millis(2500),
        "cut off too early: {at:?}"
    );
    assert!(at < Duration::from_secs(6), "cut off too late: {at:?}");
    if !answer.is_empty() {
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.starts_with("HTTP/1.1 408"),
            "unexpected answer to slowloris: {text:?}"
        );
    }
    assert_eq!(backend.request_count(), 0);
    assert_eq!(
        backend.accepted(),
        0,
        "nothing of a partial head may reach the backend"
    );
}

#[test]
fn body_pause_longer_than_body_read_timeout_gets_408_and_nothing_incomplete_is_reused() {
    let backend = Backend::start();
    let proxy = Proxy::start(
        &ProxyConfig::single(&[backend.addr()])
            .server("body_read_timeout", "\"1s\"")
            .pool("max_size", "1"),
    );
    let mut c = Client::connect(proxy.addr).expect("connect");
    c.send(b"POST /stall HTTP/1.0\r\nHost: test.local\r\nContent-Length: 10\r\n\r\nabc")
        .expect("send head and part of the body");
    let started = Stopwatch::start();
    c.set_read_timeout(Duration::from_secs(8));
    let r = c.read_response(false).expect("an answer to a stalled body");
    let took = started.elapsed();
    assert_eq!(r.status, 408, "{}", r.body_str());
    assert!(
        took >= Duration::from_millis(800),
        "408 too early: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "408 too late: {took:?}");
    assert!(
        c.wait_closed(Duration::from_secs(3)),
        "stalled client connection kept open"
    );

    let after = client::get10(proxy.addr, "/after");
    assert_eq!(after.status, 200, "{}", after.body_str());
    let reqs = backend.requests();
    let targets: Vec<&str> = reqs.iter().map(|q| q.target.as_str()).collect();
    assert_eq!(
        targets,
        vec!["/after"],
        "only complete requests may be parsed by the backend"
    );
    // The backend connection that got the truncated body (if one was used) was not reused.
    for conn in backend.connections() {
        if conn.requests.is_empty() {
            continue;
        }
        assert!(
            conn.requests.iter().all(|q| q.target == "/after"),
            "a connection carrying a truncated body was reused: {conn:?}"
        );
    }
}

#[test]
fn body_trickling_within_body_read_timeout_is_forwarded_whole() {
    let backend = Backend::start();
    let proxy =
        Proxy::start(&ProxyConfig::single(&[backend.addr()]).server("body_read_timeout", "\"1s\""));
    let mut c = Client::connect(proxy.addr).expect("connect");
    // Three pauses of 700 ms: each under body_read_timeout, together well over it.
    c.send(b"POST /slow-body HTTP/1.0\r\nHost: test.local\r\nContent-Length: 12\r\n\r\nabc")
        .expect("send");
    for piece in [&b"def"[..], b"ghi", b"jkl"] {
        std::thread::sleep(Duration::from_millis(700));
        c.send(piece).expect("send a body piece");
    }
    let r = c.read_response(false).expect("response");
    assert_eq!(r.status, 200, "{}", r.body_str());
    let reqs = backend.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].body, b"abcdefghijkl", "the whole body arrives");
}

#[test]
fn idle_clients_at_max_connections_are_cut_by_header_read_timeout_and_free_their_slots() {
    let backend = Backend::start();
    let proxy = Proxy::start(
        &ProxyConfig::single(&[backend.addr()])
            .server("max_connections", "2")
            .server("header_read_timeout", "\"1s\""),
    );
    let idle: Vec<Client> = (0..2)
        .map(|_| Client::connect(proxy.addr).expect("connect"))
        .collect();
    assert!(
        support::wait_until(Duration::from_secs(3), || {
            proxy.metric_or_zero("longhaul_downstream_connections_active", &[]) >= 2.0
        }),
        "the two idle clients were never accepted"
    );
    let started = Stopwatch::start();
    let mut c = Client::connect(proxy.addr).expect("connect (kernel backlog)");
    c.send(b"GET /waiting HTTP/1.0\r\nHost: test.local\r\n\r\n")
        .expect("send");
    c.set_read_timeout(Duration::from_secs(6));
    let r = c
        .read_response(false)
        .expect("served once the idle clients were cut off");
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert!(
        took >= Duration::from_millis(500),
        "served after {took:?}: max_connections = 2 was not enforced"
    );
    assert!(took < Duration::from_secs(4), "served only after {took:?}");
    drop(idle);
}

#[test]
fn a_thousand_idle_and_slow_clients_do_not_stop_normal_clients() {
    // The test process holds one socket per slow client and the proxy (which inherits our limit)
    // one more each: stay inside the soft RLIMIT_NOFILE with room for everything else.
    let soft = faults::nofile_soft_limit().unwrap_or(1024);
    let n = 1000usize.min(soft.saturating_sub(124) as usize);
    assert!(
        n >= 500,
        "RLIMIT_NOFILE soft limit {soft} is too low for this test"
    );
    let backend = Backend::start();
    let proxy = Proxy::start(
        &ProxyConfig::single(&[backend.addr()])
            .server("header_read_timeout", "\"30s\"")
            .server("max_connections", "5000"),
    );

    // Half say nothing, half send part of a head and then a byte now and then.
    let mut idle = Vec::with_capacity(n / 2);
    let mut slow = Vec::with_capacity(n - n / 2);
    for i in 0..n {
        let s = TcpStream::connect(proxy.addr).unwrap_or_else(|e| panic!("slow client {i}: {e}"));
        if i % 2 == 0 {
            idle.push(s);
        } else {
            let mut s = s;
            s.write_all(b"GET /slow HTTP/1.1\r\nHost: test.local\r\nX-Slow: ")
                .expect("partial head");
            s.set_nonblocking(true).expect("nonblocking");
            slow.push(s);
        }
    }
    assert!(
        support::wait_until(Duration::from_secs(15), || {
            proxy.metric_or_zero("longhaul_downstream_connections_active", &[]) >= n as f64
        }),
        "the proxy never held all {n} slow clients at once (active = {})",
        proxy.metric_or_zero("longhaul_downstream_connections_active", &[])
    );

    let all = Stopwatch::start();
    for i in 0..40 {
        if i % 10 == 0 {
            for s in &mut slow {
                let _ = s.write(b"a");
            }
        }
        let started = Stopwatch::start();
        let r = client::get10(proxy.addr, &format!("/normal/{i}"));
        let took = started.elapsed();
        assert_eq!(r.status, 200, "normal request {i}: {}", r.body_str());
        assert_eq!(
            r.body,
            backend.expected_body("GET", &format!("/normal/{i}"))
        );
        assert!(
            took < Duration::from_secs(2),
            "normal request {i} took {took:?} with {n} slow clients connected"
        );
    }
    assert!(
        all.elapsed() < Duration::from_secs(20),
        "40 requests took {:?}",
        all.elapsed()
    );
    let active = proxy.metric_or_zero("longhaul_downstream_connections_active", &[]);
    assert!(
        active >= n as f64,
        "the slow clients were dropped while normal ones were served (active = {active})"
    );
    assert_eq!(
        backend.request_count(),
        40,
        "no slow client's partial request reached the backend"
    );
    drop(idle);
    drop(slow);
    assert!(
        support::wait_until(Duration::from_secs(10), || {
            proxy.metric_or_zero("longhaul_downstream_connections_active", &[]) < 5.0
        }),
        "the proxy kept the closed slow clients' connections"
    );
}

#[test]
fn a_client_that_stops_reading_is_cut_off_and_frees_its_pooled_connection() {
    // A large response the client never reads: the socket buffers fill, longhaul's writes stall.
    let backend = Backend::builder().body_size(32 * 1024 * 1024).start();
    let proxy = Proxy::start(
        &ProxyConfig::single(&[backend.addr()])
            .server("send_timeout", "\"1s\"")
            .pool("max_size", "1")
            .pool("min_idle", "0")
            .pool("wait_timeout", "\"10s\""),
    );
    let mut stalled = TcpStream::connect(proxy.addr).expect("connect");
    stalled
        .write_all(b"GET /big HTTP/1.0\r\nHost: test.local\r\n\r\n")
        .expect("write");
    // Once the backend has the request, the only pooled connection is busy with its response.
    assert!(
        backend.wait_until(Duration::from_secs(3), |b| b.request_count() == 1),
        "/big never reached the backend"
    );

    let clock = Stopwatch::start();
    let r = client::get10(proxy.addr, "/after");
    let waited = clock.elapsed();
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert!(
        waited < Duration::from_secs(5),
        "the next client waited {waited:?}: the stalled client kept the pooled connection"
    );
    // The stalled client's connection was closed: draining it ends well short of 32 MiB.
    stalled
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut received = 0usize;
    let mut buf = [0u8; 64 * 1024];
    loop {
        match stalled.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                panic!("the stalled connection is still open after {received} bytes")
            }
            Err(_) => break,
        }
    }
    assert!(
        received < 32 * 1024 * 1024,
        "the whole body arrived: {received} bytes"
    );
}
