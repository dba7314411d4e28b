//! A request that never reached a backend waits for it instead of failing at once: a refused,
//! reset or timed-out connect is retried (another server first) for `retry_window`, counted as
//! `retries_total{reason="connect"}`; `max_connecting` bounds the connects open to one server;
//! with every server ejected, ejection is ignored (panic rule). Checked against the real
//! `python3 -m http.server` under `ab`, a real Apache stopped (SIGTERM, as `-k stop`) and started, and
//! the scripted backend restarted on its address.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use support::Stopwatch;
use support::apache::{self, Apache, Mpm};
use support::backend::Backend;
use support::client;
use support::faults::{self, Blackhole, RefusingPort};
use support::proxy::{Proxy, ProxyConfig};
use support::real_servers::{self, PythonHttpServer};

/// How long the backend is down in the restart scenarios (as `apachectl restart` or a deploy).
const OUTAGE: Duration = Duration::from_millis(1200);

fn start(config: &ProxyConfig, health: &[(&str, &str)]) -> Proxy {
    Proxy::start_raw(&faults::with_health(&config.render(), health))
}

fn connect_retries(proxy: &Proxy) -> f64 {
    proxy.metric_or_zero(
        "longhaul_upstream_retries_total",
        &[("upstream", "legacy"), ("reason", "connect")],
    )
}

fn server_up(proxy: &Proxy, server: SocketAddr) -> Option<f64> {
    let s = server.to_string();
    proxy.metric("longhaul_upstream_server_up", &[("server", s.as_str())])
}

// === restart scenario ===

/// One request of the steady client: when it was sent and answered, and how.
#[derive(Debug, Clone)]
struct Sent {
    at: Duration,
    done: Duration,
    status: u16,
    body: String,
}

/// A client that sends `GET /index.html` every 10 ms, each on its own connection and thread,
/// whatever the previous ones are doing.
struct SteadyClient {
    stop: Arc<AtomicBool>,
    sent: Arc<Mutex<Vec<Sent>>>,
    ticker: JoinHandle<Vec<JoinHandle<()>>>,
}

impl SteadyClient {
    fn start(proxy: SocketAddr, clock: Stopwatch) -> SteadyClient {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let (stop2, sent2) = (stop.clone(), sent.clone());
        let ticker = thread::spawn(move || {
            let mut requests = Vec::new();
            while !stop2.load(Ordering::SeqCst) {
                let sent = sent2.clone();
                requests.push(thread::spawn(move || {
                    let at = clock.elapsed();
                    let (status, body) = match client::try_get10(proxy, "/index.html") {
                        Ok(r) => (r.status, r.body_str()),
                        Err(e) => (0, e.to_string()),
                    };
                    let done = clock.elapsed();
                    sent.lock().unwrap().push(Sent {
                        at,
                        done,
                        status,
                        body,
                    });
                }));
                thread::sleep(Duration::from_millis(10));
            }
            requests
        });
        SteadyClient { stop, sent, ticker }
    }

    fn answered(&self) -> usize {
        self.sent.lock().unwrap().len()
    }

    /// Requests answered that were sent at or after `t`.
    fn answered_since(&self, t: Duration) -> usize {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.at >= t)
            .count()
    }

    fn finish(self) -> Vec<Sent> {
        self.stop.store(true, Ordering::SeqCst);
        for request in self.ticker.join().expect("ticker thread") {
            request.join().expect("request thread");
        }
        let mut sent = self.sent.lock().unwrap().clone();
        sent.sort_by_key(|s| s.at);
        sent
    }
}

/// Runs the steady client through the proxy, stops the backend (`stop` returns once it no
/// longer accepts), leaves it down for `OUTAGE`, starts it again (`start` returns once it
/// accepts) and keeps sending for a while. Then: every request that failed was in flight at the
/// moment the backend stopped, and every request sent after it was back answered 200.
fn assert_restart_costs_only_in_flight_requests(
    proxy: &Proxy,
    backend: SocketAddr,
    stop: impl FnOnce(),
    start: impl FnOnce(),
) {
    let clock = Stopwatch::start();
    let client = SteadyClient::start(proxy.addr, clock);
    assert!(
        support::wait_until(Duration::from_secs(10), || client.answered() >= 30),
        "traffic flows before the restart"
    );
    let stopping = clock.elapsed();
    stop();
    assert!(!real_servers::accepting(backend), "the backend is down");
    let down = clock.elapsed();
    thread::sleep(OUTAGE.saturating_sub(down - stopping));
    start();
    let back = clock.elapsed();
    assert!(
        support::wait_until(Duration::from_secs(10), || client.answered_since(back)
            >= 100),
        "traffic flows after the restart"
    );
    let sent = client.finish();

    let in_flight_at_stop = |s: &Sent| s.at <= down && s.done >= stopping;
    let in_flight = sent.iter().filter(|s| in_flight_at_stop(s)).count();
    let failed: Vec<&Sent> = sent.iter().filter(|s| s.status != 200).collect();
    let after_back: Vec<&Sent> = sent.iter().filter(|s| s.at >= back).collect();
    eprintln!(
        "restart: {} requests, {} failed, {in_flight} in flight at the stop ({stopping:?}..{down:?}), \
         {} sent after the backend was back at {back:?}, connect retries {}",
        sent.len(),
        failed.len(),
        after_back.len(),
        connect_retries(proxy)
    );
    for f in &failed {
        assert!(
            in_flight_at_stop(f),
            "a request sent at {:?} and answered at {:?}, not in flight at the stop, failed: {} {}",
            f.at,
            f.done,
            f.status,
            f.body
        );
    }
    assert!(failed.len() <= in_flight);
    for s in &after_back {
        assert_eq!(s.status, 200, "sent after the backend was back: {s:?}");
    }
}

#[test]
fn an_apache_restart_fails_only_requests_in_flight_and_none_after_it_is_back() {
    let Some(binary) = apache::binary() else {
        return;
    };
    let addr = faults::unused_port();
    let apache = Apache::start(&binary, addr, &Mpm::Event);
    let proxy = Proxy::start(&ProxyConfig::single(&[addr]));
    assert_eq!(client::get10(proxy.addr, "/index.html").body, b"hello\n");
    assert_restart_costs_only_in_flight_requests(
        &proxy,
        addr,
        || apache.stop(),
        || apache.start_again(),
    );
    assert!(
        connect_retries(&proxy) > 0.0,
        "the outage was bridged by retries"
    );
}

#[test]
fn a_scripted_backend_restart_fails_only_requests_in_flight_and_none_after_it_is_back() {
    let first = Backend::start();
    let addr = first.addr();
    let proxy = Proxy::start(&ProxyConfig::single(&[addr]));
    let first = Mutex::new(Some(first));
    let second = Mutex::new(None);
    assert_restart_costs_only_in_flight_requests(
        &proxy,
        addr,
        || drop(first.lock().unwrap().take()),
        || *second.lock().unwrap() = Some(Backend::builder().start_on(addr)),
    );
    assert!(
        connect_retries(&proxy) > 0.0,
        "the outage was bridged by retries"
    );
    let restarted = second.lock().unwrap().take().expect("restarted backend");
    assert!(restarted.request_count() >= 100);
}

// === a small accept backlog ===

#[test]
fn python_http_server_behind_longhaul_serves_ab_without_a_single_error() {
    if !support::tools::have("python3") || !support::tools::have("ab") {
        return;
    }
    let python = PythonHttpServer::start(faults::unused_port());
    let mut config = ProxyConfig::single(&[python.addr]);
    config.log.set("access_log", "false");
    let proxy = Proxy::start(&config);
    let url = format!("http://{}/index.html", proxy.addr);
    let report = real_servers::ab(3000, 20, &url);
    eprintln!(
        "ab -n 3000 -c 20 through longhaul to python3 -m http.server: {} complete, {} failed, \
         {} non-2xx, connect retries {}",
        report.complete,
        report.failed,
        report.non_2xx,
        connect_retries(&proxy)
    );
    assert_eq!(report.complete, 3000, "{}", report.text);
    assert_eq!(report.failed, 0, "{}", report.text);
    assert_eq!(report.non_2xx, 0, "{}", report.text);
}

// === retries ===

#[test]
fn a_refused_connect_is_retried_on_the_other_server() {
    let live = Backend::start();
    let dead = RefusingPort::new();
    let proxy = start(
        &ProxyConfig::single(&[dead.addr, live.addr()]),
        &[("max_failures", "1000")],
    );
    for i in 0..6 {
        let r = client::get10(proxy.addr, &format!("/rr/{i}"));
        assert_eq!(r.status, 200, "{}", r.body_str());
    }
    assert_eq!(live.request_count(), 6);
    assert!(
        connect_retries(&proxy) > 0.0,
        "requests the balancer sent to the dead server first were retried"
    );
}

#[test]
fn a_server_refusing_for_longer_than_retry_window_gets_502_after_it() {
    let dead = RefusingPort::new();
    let proxy = Proxy::start(&ProxyConfig::single(&[dead.addr]).up("retry_window", "\"400ms\""));
    let started = Stopwatch::start();
    let r = client::get10(proxy.addr, "/never");
    let took = started.elapsed();
    assert_eq!(r.status, 502, "{}", r.body_str());
    assert!(r.body_str().contains("connect failed"), "{}", r.body_str());
    assert!(took >= Duration::from_millis(300), "gave up after {took:?}");
    assert!(
        connect_retries(&proxy) >= 4.0,
        "10, 20, 40, 80, 160 ms apart: {} retries",
        connect_retries(&proxy)
    );
}

// === panic rule ===

#[test]
fn with_every_server_ejected_requests_are_still_sent() {
    let (port_a, port_b) = (RefusingPort::new(), RefusingPort::new());
    let (a, b) = (port_a.addr, port_b.addr);
    let proxy = start(
        &ProxyConfig::single(&[a, b]).up("retry_window", "\"100ms\""),
        &[
            ("max_failures", "1"),
            ("base_ejection", "\"30s\""),
            ("max_ejection", "\"30s\""),
        ],
    );
    assert_eq!(client::get10(proxy.addr, "/down").status, 502);
    assert!(
        support::wait_until(Duration::from_secs(5), || {
            server_up(&proxy, a) == Some(0.0) && server_up(&proxy, b) == Some(0.0)
        }),
        "both servers are ejected"
    );
    let backend_a = Backend::builder().start_on(port_a.release());
    let backend_b = Backend::builder().start_on(port_b.release());
    for i in 0..4 {
        let r = client::get10(proxy.addr, &format!("/panic/{i}"));
        assert_eq!(r.status, 200, "{}", r.body_str());
    }
    assert_eq!(backend_a.request_count() + backend_b.request_count(), 4);
}

#[test]
fn an_ejected_server_that_accepts_a_connection_is_back_in_rotation_at_once() {
    let port = RefusingPort::new();
    let addr = port.addr;
    let proxy = start(
        &ProxyConfig::single(&[addr]).up("retry_window", "\"100ms\""),
        &[
            ("max_failures", "1"),
            ("base_ejection", "\"30s\""),
            ("max_ejection", "\"30s\""),
        ],
    );
    assert_eq!(client::get10(proxy.addr, "/down").status, 502);
    assert_eq!(server_up(&proxy, addr), Some(0.0));
    let backend = Backend::builder().start_on(port.release());
    assert_eq!(client::get10(proxy.addr, "/up").status, 200);
    assert_eq!(
        server_up(&proxy, addr),
        Some(1.0),
        "in rotation again, 30 s before its ejection would end"
    );
    assert_eq!(backend.request_count(), 1);
}

// === max_connecting ===

/// Connects in progress (SYN-SENT) to `addr`, as the kernel filters them (`ss`, iproute2).
/// Not /proc/net/tcp: read while the suite's other tests open and close thousands of sockets
/// (~19,000 lines, mostly TIME-WAIT), its page-by-page walk skips entries, and a run once saw
/// none of the two connects that were in progress.
fn syn_sent_to(ss: &Path, addr: SocketAddr) -> usize {
    let out = std::process::Command::new(ss)
        .args([
            "-H",
            "-t",
            "-n",
            "state",
            "syn-sent",
            "dst",
            &addr.to_string(),
        ])
        .output()
        .expect("run ss (iproute2)");
    assert!(out.status.success(), "ss failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Counts connects in progress to one address every 5 ms on a thread of its own, so that a
/// slow metrics scrape on the test's thread cannot make it miss them.
/// The most connects seen in progress at once, and (ms, count) each time the count changed.
type SynSentSeen = (usize, Vec<(u128, usize)>);

/// Stopped and joined on drop too, should the test fail first.
struct SynSentWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<SynSentSeen>>,
}

impl SynSentWatch {
    fn start(ss: PathBuf, addr: SocketAddr) -> SynSentWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = thread::spawn(move || {
            let clock = Stopwatch::start();
            let (mut most, mut changes) = (0, vec![(0, 0)]);
            while !stopped.load(Ordering::Relaxed) {
                let now = syn_sent_to(&ss, addr);
                most = most.max(now);
                if changes.last().is_some_and(|&(_, last)| last != now) {
                    changes.push((clock.elapsed().as_millis(), now));
                }
                thread::sleep(Duration::from_millis(5));
            }
            (most, changes)
        });
        SynSentWatch {
            stop,
            thread: Some(thread),
        }
    }

    /// The most connects seen in progress at once, and the count each time it changed.
    fn stop(mut self) -> SynSentSeen {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("not stopped yet");
        thread.join().expect("watch thread")
    }
}

impl Drop for SynSentWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn max_connecting_bounds_the_connects_in_progress_to_one_server() {
    let Some(ss) = support::tools::require_tool("ss") else {
        return;
    };
    let hole = Blackhole::start();
    assert!(hole.swallows_connects(), "precondition: connects hang");
    assert!(support::wait_until(Duration::from_secs(2), || syn_sent_to(
        &ss,
        hole.addr()
    ) == 0));
    let proxy = Proxy::start(
        &ProxyConfig::single(&[hole.addr()])
            .up("connect_timeout", "\"300ms\"")
            .up("retry_window", "\"5s\"")
            .pool("max_connecting", "2"),
    );
    let addr = proxy.addr;
    let burst: Vec<_> = (0..10)
        .map(|i| thread::spawn(move || client::try_get10(addr, &format!("/burst/{i}"))))
        .collect();
    let watch = SynSentWatch::start(ss, hole.addr());
    let several_rounds =
        support::wait_until(Duration::from_secs(10), || connect_retries(&proxy) >= 8.0);
    let (most, changes) = watch.stop();
    assert!(several_rounds, "connects kept timing out and being retried");
    assert_eq!(
        most,
        2,
        "connects in progress at once (max_connecting = 2); (ms, count) as it changed: {changes:?}, \
         connect retries: {}",
        connect_retries(&proxy)
    );
    drop(proxy);
    for t in burst {
        let _ = t.join();
    }
}
