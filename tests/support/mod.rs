//! Shared test support: a scripted legacy backend, a raw HTTP client, and a handle on the real
//! `longhaul` binary. Each test file includes it with `mod support;` and uses only a part of it.
// Each test file uses a different part of the support code. Wall-clock time is right here: the
// proxy under test is a separate process, which tokio's paused clock cannot reach.
#![allow(dead_code, clippy::disallowed_types)]

pub mod apache;
pub mod backend;
pub mod backend_sim;
pub mod client;
pub mod faults;
pub mod lab;
pub mod nginx;
pub mod process;
pub mod proxy;
pub mod real_servers;
pub mod tls;
pub mod tls_echo;
pub mod tools;
pub mod wire;

use std::time::{Duration, Instant};

/// A wall-clock stopwatch for bounding waits on real processes and sockets.
#[derive(Debug, Clone, Copy)]
pub struct Stopwatch(Instant);

impl Stopwatch {
    pub fn start() -> Stopwatch {
        Stopwatch(Instant::now())
    }
    pub fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, cond: impl FnMut() -> bool) -> bool {
    poll_until(timeout, Duration::from_millis(10), cond)
}

/// Polls `cond` every `every` until it holds or `timeout` passes; returns whether it held. The
/// one bounded polling loop of the tests: for a condition that is dear to ask (a Prometheus
/// query), a longer `every`.
pub fn poll_until(timeout: Duration, every: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}
