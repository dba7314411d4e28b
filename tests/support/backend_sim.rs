//! `longhaul backend-sim`, the standalone HTTP/1.0 keep-alive backend the binary ships, as a
//! child process of the test: started on the addresses asked for, killed and reaped on drop.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use super::client;
use super::process::Child;
use super::proxy::BIN;

/// How long backend-sim gets to print its start line (the machine may be busy compiling).
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `longhaul backend-sim`: `addr` serves requests, `stats_addr` answers `GET /stats`.
pub struct BackendSim {
    pub addr: SocketAddr,
    pub stats_addr: SocketAddr,
    child: Child,
}

impl BackendSim {
    /// backend-sim on free 127.0.0.1 ports, with `args` (`--conn-cost`, `--max-requests`...).
    pub fn start(args: &[&str]) -> BackendSim {
        BackendSim::start_on("127.0.0.1:0", "127.0.0.1:0", args)
    }

    /// backend-sim serving on `listen` with its stats on `stats`.
    pub fn start_on(listen: &str, stats: &str, args: &[&str]) -> BackendSim {
        let mut child = Child::spawn(
            "backend-sim",
            Command::new(BIN)
                .args(["backend-sim", "--listen", listen, "--stats-listen", stats])
                .args(args),
        );
        let stderr = child.take_stderr();
        child.drain(stderr);
        let stdout = child.take_stdout();
        // Its first stdout line: `backend-sim listening on ADDR stats on ADDR`.
        let first = child.watch(stdout, START_TIMEOUT, |line| Some(line.to_string()));
        let parsed = first
            .strip_prefix("backend-sim listening on ")
            .and_then(|rest| rest.split_once(" stats on "))
            .and_then(|(addr, stats)| Some((addr.parse().ok()?, stats.trim().parse().ok()?)));
        let Some((addr, stats_addr)) = parsed else {
            panic!(
                "backend-sim on {listen} did not start: {first}\n{}",
                child.output()
            );
        };
        BackendSim {
            addr,
            stats_addr,
            child,
        }
    }

    /// Its own counts from `GET /stats`: (connections accepted, requests served).
    pub fn counts(&self) -> (u64, u64) {
        let r = client::get10(self.stats_addr, "/stats");
        assert_eq!(r.status, 200, "GET /stats: {}", r.body_str());
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("stats JSON");
        let count = |k: &str| {
            v[k].as_u64()
                .unwrap_or_else(|| panic!("no count {k} in backend-sim's stats: {v}"))
        };
        (count("connections_accepted"), count("requests"))
    }

    /// The lines it printed, for failure messages.
    pub fn output(&self) -> String {
        self.child.output()
    }
}
