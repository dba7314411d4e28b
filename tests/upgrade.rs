//! Binary upgrades in place (SIGUSR2, `longhaul upgrade`): the new binary gets every listening
//! socket, warms its pools and takes over; the old one drains; a new binary that fails leaves it.

// Tests wait on the wall clock: they watch real processes, not a paused tokio clock.
#![allow(clippy::disallowed_types)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use support::backend_sim::BackendSim;
use support::client;
use support::process::send_signal;
use support::proxy::{self, BIN, Proxy, ProxyConfig, Run, TempDir, log_field};
use support::tls::{Pki, TlsClient};
use support::tools::require_tool;
use support::wait_until;

const MIN_IDLE: usize = 8;
const MAX_SIZE: usize = 16;
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// `longhaul upgrade` waits for the new process to be ready; it ends well within this.
const UPGRADE_COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// A copy of the binary in a directory of its own, so a test can install another file at its
/// path the way `install(1)` does (a new file renamed over the old one).
struct Installed {
    dir: TempDir,
    bin: PathBuf,
}

impl Installed {
    fn new() -> Installed {
        let dir = TempDir::new();
        let bin = dir.path().join("longhaul");
        let installed = Installed { dir, bin };
        installed.install(Path::new(BIN));
        installed
    }

    /// A copy of `source` at the binary's path, executable, through a rename. `cp` writes the
    /// copy: a descriptor of it open in this process could leak into a child another test
    /// thread is forking, and exec of the file would then fail with ETXTBSY.
    fn install(&self, source: &Path) {
        let temp = self.dir.path().join(".longhaul.new");
        let copied = Command::new("cp")
            .arg(source)
            .arg(&temp)
            .status()
            .expect("run cp");
        assert!(copied.success(), "cp {} failed", source.display());
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&temp, &self.bin).expect("install the new binary");
    }

    /// A shell script with `text` at the binary's path.
    fn install_script(&self, text: &str) {
        let source = self.dir.path().join("script.sh");
        std::fs::write(&source, text).expect("write the script");
        self.install(&source);
    }
}

/// The proxy across upgrades: the first process is this test's child (a `Proxy`); later ones
/// are started by their predecessors and found through the pid file. Every process writes to
/// the same stderr pipe, whose lines the `Proxy` keeps. On drop, whatever process the pid file
/// names is killed.
struct Running {
    proxy: Proxy,
    pid_file: PathBuf,
}

impl Running {
    /// Starts `installed` on `config`, which must set `pid_file` to `dir/longhaul.pid`.
    fn start(installed: &Installed, config: &ProxyConfig, extra_env: &[(&str, &str)]) -> Running {
        become_subreaper();
        let pid_file = installed.dir.path().join("longhaul.pid");
        let config = config
            .clone()
            .server("pid_file", &format!("{:?}", pid_file.display().to_string()));
        let config_path = installed.dir.write_config(&config.render());
        let proxy = Proxy::launch(&installed.bin, &config_path, extra_env);
        Running { proxy, pid_file }
    }

    /// The next log line (from any process) with this message; panics with the log after 20 s.
    fn wait_for_message(&self, message: &str) -> serde_json::Value {
        self.proxy.next_log(START_TIMEOUT, message)
    }

    /// Replaces the config file with `config` (and this run's pid file), for the next process.
    fn rewrite_config(&self, config: &ProxyConfig) {
        let config = config.clone().server(
            "pid_file",
            &format!("{:?}", self.pid_file.display().to_string()),
        );
        std::fs::write(&self.proxy.config_path, config.render()).expect("rewrite the config");
    }

    /// The pid the pid file names now.
    fn pid(&self) -> u32 {
        let text = std::fs::read_to_string(&self.pid_file).expect("read the pid file");
        text.trim().parse().expect("a pid")
    }

    /// `longhaul upgrade --config CFG --pid-file PID_FILE`, run with the installed binary.
    fn upgrade_command(&self, installed: &Installed) -> Run {
        proxy::run_program(
            &installed.bin,
            &[
                "upgrade",
                "--config",
                self.proxy.config_path.to_str().expect("a UTF-8 path"),
                "--pid-file",
                self.pid_file.to_str().expect("a UTF-8 path"),
            ],
            UPGRADE_COMMAND_TIMEOUT,
        )
    }

    fn signal(&self, pid: u32, signal: libc::c_int) {
        send_signal(pid as i32, signal);
    }

    /// SIGTERM to the current process; returns once every process holding the log pipe is gone.
    fn stop(&mut self) {
        self.signal(self.pid(), libc::SIGTERM);
        assert!(
            self.proxy.stderr_closed_within(Duration::from_secs(40)),
            "longhaul did not exit:\n{}",
            self.proxy.stderr_tail()
        );
    }
}

impl std::ops::Deref for Running {
    type Target = Proxy;
    fn deref(&self) -> &Proxy {
        &self.proxy
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Proxy {
        &mut self.proxy
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.proxy.stderr_closed_within(Duration::ZERO)
            && let Ok(text) = std::fs::read_to_string(&self.pid_file)
            && let Ok(pid) = text.trim().parse::<u32>()
        {
            self.signal(pid, libc::SIGKILL);
        }
        // The Proxy's own drop then stops (or reaps) the first process.
    }
}

/// Orphaned longhaul processes (an old one exited) become this test process's children, so a
/// test can reap them and tell that they exited.
fn become_subreaper() {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only changes who reaps this process's orphans.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
}

/// Reaps `pid` (an orphan re-parented to this process); whether it exited within `timeout`.
fn reaped(pid: u32, timeout: Duration) -> bool {
    wait_until(timeout, || {
        let mut status = 0;
        // SAFETY: waitpid(2) on a pid; WNOHANG never blocks.
        let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
        r == pid as libc::pid_t || !Path::new(&format!("/proc/{pid}")).exists()
    })
}

/// Open descriptors of `pid`.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// backend-sim with a small cost per connection, `response_delay` per response, and no idle
/// timeout of its own during the run.
fn start_sim(response_delay: &str) -> BackendSim {
    BackendSim::start(&[
        "--conn-cost",
        "1ms",
        "--keepalive-timeout",
        "300s",
        "--response-delay",
        response_delay,
    ])
}

fn pooled_config(sim: &BackendSim) -> ProxyConfig {
    ProxyConfig::single(&[sim.addr])
        .server("workers", "2")
        .log("access_log", "false")
        .pool("min_idle", &MIN_IDLE.to_string())
        .pool("max_size", &MAX_SIZE.to_string())
        // No connection is retired by use during the run: every backend connection counted
        // below was opened to fill a pool.
        .pool("max_requests", "1000000")
}

/// A count field of a start or stop line: tracing writes integers as JSON numbers.
fn a_field(line: &serde_json::Value, key: &str) -> u64 {
    log_field(line, key)
        .and_then(|v| v.as_u64())
        .unwrap_or_else(|| panic!("{key} is not a JSON number in {line}"))
}

// === three upgrades under `ab -n 20000 -c 50` (run once, checked by the tests below) ===

const REQUESTS: u64 = 20_000;
/// Backend request counts at which the test upgrades.
const UPGRADE_AT: [u64; 3] = [3_000, 8_000, 13_000];

struct LoadRun {
    ab_output: String,
    ab_status: Option<i32>,
    backend_before: (u64, u64),
    backend_after: (u64, u64),
    started: Vec<serde_json::Value>,
    stopped: Vec<serde_json::Value>,
    upgrade_outputs: Vec<(Option<i32>, String)>,
    /// Backend connections opened from each upgrade's start until 1,000 requests after it was
    /// ready: the new process's warm ones and its pool's growth.
    opened_by_upgrade: Vec<u64>,
    pids: Vec<u32>,
    all_reaped: bool,
    /// Descriptors other than pooled connections: first process before the load, last after.
    fds_besides_pool: (usize, usize),
    log: String,
}

/// Descriptors of the process the pid file names, minus its pooled backend connections.
fn fds_besides_pool(running: &Running) -> usize {
    let pools = client::get10(running.admin, "/pools").body;
    let v: serde_json::Value = serde_json::from_slice(&pools).expect("pools JSON");
    let server = &v["upstreams"][0]["servers"][0];
    let pooled = server["idle"].as_u64().unwrap() + server["busy"].as_u64().unwrap();
    fd_count(running.pid()) - pooled as usize
}

/// The load run the tests below read, or None when `ab` (apache2-utils) is missing and
/// `require_tool` said so (a failure under LONGHAUL_REQUIRE_TOOLS=1).
fn load_run() -> Option<&'static LoadRun> {
    static RUN: OnceLock<LoadRun> = OnceLock::new();
    require_tool("ab")?;
    Some(RUN.get_or_init(|| {
        let sim = start_sim("2ms");
        let installed = Installed::new();
        let mut running = Running::start(&installed, &pooled_config(&sim), &[]);
        let fds_before = fds_besides_pool(&running);
        let backend_before = sim.counts();
        let mut pids = vec![running.pid()];
        let ab = Command::new("ab")
            .args(["-q", "-r", "-n", &REQUESTS.to_string(), "-c", "50"])
            .arg(format!("http://{}/", running.addr))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ab");
        let mut upgrade_outputs = Vec::new();
        let mut opened_by_upgrade = Vec::new();
        for at in UPGRADE_AT {
            let reached = wait_until(Duration::from_secs(60), || {
                sim.counts().1 - backend_before.1 >= at
            });
            assert!(reached, "the load did not reach {at} requests");
            // A new file at the path each time, as a package upgrade installs one.
            installed.install(Path::new(BIN));
            let accepted_before = sim.counts().0;
            let out = running.upgrade_command(&installed);
            upgrade_outputs.push((out.code, out.stderr));
            pids.push(running.pid());
            let requests = sim.counts().1;
            wait_until(Duration::from_secs(60), || {
                sim.counts().1 >= requests + 1000
            });
            opened_by_upgrade.push(sim.counts().0 - accepted_before);
        }
        let ab = ab.wait_with_output().expect("ab finishes");
        // The admin connection that asked for /pools may still be closing: a bounded poll.
        let mut fds_after = fds_besides_pool(&running);
        wait_until(Duration::from_secs(5), || {
            fds_after = fds_besides_pool(&running);
            fds_after == fds_before
        });
        let backend_after = sim.counts();
        running.stop();
        let all_reaped = pids
            .iter()
            .skip(1)
            .all(|&pid| reaped(pid, Duration::from_secs(10)));
        LoadRun {
            ab_output: String::from_utf8_lossy(&ab.stdout).into_owned()
                + &String::from_utf8_lossy(&ab.stderr),
            ab_status: ab.status.code(),
            backend_before,
            backend_after,
            started: running.messages("longhaul started"),
            stopped: running.messages("longhaul stopped"),
            upgrade_outputs,
            opened_by_upgrade,
            pids,
            all_reaped,
            fds_besides_pool: (fds_before, fds_after),
            log: running.stderr_tail(),
        }
    }))
}

/// `ab`'s figure on the line starting with `label`.
fn ab_figure(output: &str, label: &str) -> u64 {
    output
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} in ab's output:\n{output}"))
}

#[test]
fn each_upgrade_under_load_hands_over_to_a_new_process() {
    let Some(run) = load_run() else {
        return;
    };
    let codes: Vec<Option<i32>> = run.upgrade_outputs.iter().map(|(c, _)| *c).collect();
    assert_eq!(codes, vec![Some(0); 3], "{:?}", run.upgrade_outputs);
    let distinct: std::collections::HashSet<u32> = run.pids.iter().copied().collect();
    assert_eq!(distinct.len(), 4, "pids {:?}", run.pids);
}

#[test]
fn three_upgrades_under_ab_load_fail_no_request() {
    let Some(run) = load_run() else {
        return;
    };
    let complete = ab_figure(&run.ab_output, "Complete requests:");
    let failed = ab_figure(&run.ab_output, "Failed requests:");
    let non_2xx = run
        .ab_output
        .lines()
        .any(|l| l.starts_with("Non-2xx responses:"));
    assert_eq!(
        (run.ab_status, complete, failed, non_2xx),
        (Some(0), REQUESTS, 0, false),
        "{}",
        run.ab_output
    );
}

/// The processes' own totals add up to what ab sent and the backend saw: none was lost or sent
/// twice. (ab may open a few connections it closes unused once its count is reached, so client
/// connections are not compared.)
#[test]
fn every_request_is_answered_by_exactly_one_process() {
    let Some(run) = load_run() else {
        return;
    };
    let answered: u64 = run
        .stopped
        .iter()
        .map(|l| a_field(l, "upstream_requests"))
        .sum();
    let backend_requests = run.backend_after.1 - run.backend_before.1;
    assert_eq!(
        (run.stopped.len(), answered, backend_requests),
        (4, REQUESTS, REQUESTS),
        "{}",
        run.log
    );
}

#[test]
fn every_new_process_is_warm_before_it_accepts() {
    let Some(run) = load_run() else {
        return;
    };
    let pooled: Vec<u64> = run.started.iter().map(|l| a_field(l, "pooled")).collect();
    println!(
        "backend connections opened by each upgrade and its first 1,000 requests: {:?} (min_idle {MIN_IDLE}, max_size {MAX_SIZE})",
        run.opened_by_upgrade
    );
    assert_eq!(pooled, vec![MIN_IDLE as u64; 4], "{}", run.log);
}

#[test]
fn backend_connections_are_bounded_by_the_pools() {
    let Some(run) = load_run() else {
        return;
    };
    let per_process: Vec<u64> = run
        .stopped
        .iter()
        .map(|l| a_field(l, "upstream_connections_opened"))
        .collect();
    let opened = run.backend_after.0 - run.backend_before.0;
    println!("opened per process {per_process:?}, backend accepted {opened}");
    assert!(
        per_process.iter().all(|&n| n <= MAX_SIZE as u64) && opened <= 4 * MAX_SIZE as u64,
        "opened per process {per_process:?}, backend accepted {opened} (max_size {MAX_SIZE})"
    );
}

#[test]
fn no_descriptor_or_process_is_left_behind_by_upgrades() {
    let Some(run) = load_run() else {
        return;
    };
    assert_eq!(
        (run.fds_besides_pool.1, run.all_reaped),
        (run.fds_besides_pool.0, true),
        "descriptors besides pooled connections (first, last process), every old process reaped"
    );
}

// === failures: the old process keeps serving ===

#[test]
fn a_new_binary_that_rejects_its_config_leaves_the_old_process_serving() {
    let sim = start_sim("0s");
    let installed = Installed::new();
    let running = Running::start(&installed, &pooled_config(&sim), &[]);
    let old = running.pid();
    std::fs::write(&running.config_path, "[server]\nlisten = 8080\n").unwrap();
    running.signal(old, libc::SIGUSR2);
    let failed = running.wait_for_message("upgrade failed; this process keeps serving");
    let error = log_field(&failed, "error")
        .and_then(|e| e.as_str())
        .unwrap_or("");
    let response = client::get10(running.addr, "/");
    assert_eq!(
        (error, running.pid(), response.status),
        (
            "the new process exited with exit status: 2 before it was ready (its log says why)",
            old,
            200
        )
    );
    assert!(
        running.stderr().contains("server.listen"),
        "the new process names the bad key:\n{}",
        running.stderr()
    );
}

#[test]
fn longhaul_upgrade_refuses_a_bad_config_before_signalling() {
    let sim = start_sim("0s");
    let installed = Installed::new();
    let running = Running::start(&installed, &pooled_config(&sim), &[]);
    std::fs::write(&running.config_path, "[server]\nlisten = 8080\n").unwrap();
    let out = running.upgrade_command(&installed);
    let stderr = out.stderr;
    assert_eq!(
        (out.code, stderr.contains("server.listen")),
        (Some(2), true),
        "{stderr}"
    );
    assert!(
        running
            .messages("upgrade: started the new process; handing over the listening sockets")
            .is_empty()
    );
}

#[test]
fn a_new_binary_that_is_not_ready_in_time_is_stopped_and_the_old_one_keeps_serving() {
    let sim = start_sim("0s");
    let installed = Installed::new();
    let config = pooled_config(&sim).server("upgrade_timeout", "\"1s\"");
    let running = Running::start(&installed, &config, &[]);
    let old = running.pid();
    installed.install_script("#!/bin/sh\nexec sleep 30\n");
    running.signal(old, libc::SIGUSR2);
    let failed = running.wait_for_message("upgrade failed; this process keeps serving");
    let error = log_field(&failed, "error")
        .and_then(|e| e.as_str())
        .unwrap_or("");
    let response = client::get10(running.addr, "/");
    assert_eq!(
        (error, running.pid(), response.status),
        (
            "the new process was not ready within 1s; it was stopped",
            old,
            200
        )
    );
}

/// The old process alone decides: a real new process that becomes ready only after
/// `upgrade_timeout` (its warm-up waits on a backend whose connects hang) is told to abort,
/// drains and exits 1 without writing the pid file or telling systemd it is the main pid.
#[test]
fn a_new_process_ready_after_the_timeout_does_not_take_over() {
    let sim = start_sim("0s");
    let blackhole = support::faults::Blackhole::start();
    assert!(blackhole.swallows_connects(), "precondition: connects hang");
    let installed = Installed::new();
    let socket_path = installed.dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    let env = [("NOTIFY_SOCKET", socket_path.to_str().unwrap())];
    let config = pooled_config(&sim).server("upgrade_timeout", "\"1s\"");
    let running = Running::start(&installed, &config, &env);
    let old = running.pid();
    // The new process's pool warms towards the blackhole: ready after connect_timeout + 1 s.
    let late = ProxyConfig::single(&[blackhole.addr()])
        .server("upgrade_timeout", "\"1s\"")
        .up("connect_timeout", "\"2s\"")
        .pool("min_idle", "1");
    running.rewrite_config(&late);
    running.signal(old, libc::SIGUSR2);
    let refused = running.wait_for_message("longhaul failed to start; draining what it accepted");
    let stopped = running.wait_for_message("upgrade: the new process stopped");
    let failed = running.wait_for_message("upgrade failed; this process keeps serving");
    let field = |line: &serde_json::Value, key: &str| {
        log_field(line, key)
            .and_then(|e| e.as_str())
            .unwrap_or("")
            .to_string()
    };
    let response = client::get10(running.addr, "/");
    assert_eq!(
        (
            field(&refused, "error"),
            field(&stopped, "status"),
            field(&failed, "error"),
            running.pid(),
            response.status
        ),
        (
            "upgrade: this process does not take over: the old process called the upgrade off \
             (it gave up waiting, or is stopping)"
                .to_string(),
            "exit status: 1".to_string(),
            "the new process was not ready within 1s; it was stopped".to_string(),
            old,
            200
        )
    );
    notify.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 256];
    let received: Vec<String> = std::iter::from_fn(|| {
        let n = notify.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .collect();
    assert_eq!(received, ["READY=1\n", "RELOADING=1\n", "READY=1\n"]);
}

/// SIGTERM while a new process is starting stops the upgrade and then this process: a stop
/// request is never lost to an upgrade in progress.
#[test]
fn sigterm_during_an_upgrade_stops_the_new_process_and_the_old_one() {
    let sim = start_sim("0s");
    let installed = Installed::new();
    let config = pooled_config(&sim).server("upgrade_timeout", "\"60s\"");
    let mut running = Running::start(&installed, &config, &[]);
    let old = running.pid();
    installed.install_script("#!/bin/sh\nexec sleep 60\n");
    running.signal(old, libc::SIGUSR2);
    running
        .wait_for_message("upgrade: started the new process; handing over the listening sockets");
    running.signal(old, libc::SIGTERM);
    let stopped = running.wait_for_message("upgrade: the new process stopped");
    running.wait_for_message("upgrade called off: this process was asked to stop");
    running.wait_for_message("longhaul stopped");
    let exited = wait_until(Duration::from_secs(10), || running.try_wait().is_some());
    assert_eq!(
        (
            log_field(&stopped, "status").and_then(|s| s.as_str()),
            exited,
            running.try_wait().and_then(|s| s.code())
        ),
        (Some("signal: 15 (SIGTERM)"), true, Some(0))
    );
}

/// Installed as a symlink (`/usr/local/bin/longhaul -> /opt/longhaul-1.2/longhaul`), an
/// upgrade runs what the link names at the upgrade, not the file it named at start.
#[test]
fn an_upgrade_runs_the_file_a_symlinked_path_names_now() {
    let sim = start_sim("0s");
    let installed = Installed::new();
    let link_dir = TempDir::new();
    let link = link_dir.path().join("longhaul");
    std::os::unix::fs::symlink(&installed.bin, &link).unwrap();
    let linked = Installed {
        dir: link_dir,
        bin: link.clone(),
    };
    let running = Running::start(&linked, &pooled_config(&sim), &[]);
    let old = running.pid();
    // The next release: another file, and the link re-pointed at it.
    let next = installed.dir.path().join("next.sh");
    std::fs::write(&next, "#!/bin/sh\nexit 7\n").unwrap();
    std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o755)).unwrap();
    let temp_link = linked.dir.path().join(".longhaul.link");
    std::os::unix::fs::symlink(&next, &temp_link).unwrap();
    std::fs::rename(&temp_link, &link).unwrap();
    running.signal(old, libc::SIGUSR2);
    let failed = running.wait_for_message("upgrade failed; this process keeps serving");
    assert_eq!(
        (
            log_field(&failed, "error").and_then(|e| e.as_str()),
            running.pid()
        ),
        (
            Some(
                "the new process exited with exit status: 7 before it was ready (its log says why)"
            ),
            old
        )
    );
}

// === what is handed over ===

#[test]
fn the_tls_and_admin_listeners_are_handed_over() {
    let sim = start_sim("0s");
    let pki = Pki::new();
    let cert = pki.issue("localhost", &["localhost"]);
    let installed = Installed::new();
    let config = pooled_config(&sim)
        .server("tls_listen", "\"127.0.0.1:0\"")
        .server_tls(
            "certificates",
            &format!(
                "[{{ cert = {:?}, key = {:?} }}]",
                cert.cert.display().to_string(),
                cert.key.display().to_string()
            ),
        );
    let running = Running::start(&installed, &config, &[]);
    let old = running.pid();
    let out = running.upgrade_command(&installed);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        reaped(old, Duration::from_secs(20)),
        "the old process exited"
    );
    let tls = TlsClient::new(&pki.ca, "localhost")
        .get10(running.tls_addr.expect("a TLS listener"), "/")
        .expect("a TLS request to the new process");
    let metrics = client::get10(running.admin, "/metrics");
    assert_eq!((tls.status, metrics.status), (200, 200));
}

#[test]
fn systemd_is_told_the_new_main_pid_once_it_is_ready() {
    let sim = start_sim("0s");
    let installed = Installed::new();
    let socket_path = installed.dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    notify.set_read_timeout(Some(START_TIMEOUT)).unwrap();
    let env = [("NOTIFY_SOCKET", socket_path.to_str().unwrap())];
    let running = Running::start(&installed, &pooled_config(&sim), &env);
    let old = running.pid();
    let out = running.upgrade_command(&installed);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let new = running.pid();
    let mut buf = [0u8; 256];
    let received: Vec<String> = (0..3)
        .map(|_| {
            let n = notify.recv(&mut buf).expect("a notification");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        })
        .collect();
    assert_eq!(
        received,
        vec![
            "READY=1\n".to_string(),
            "RELOADING=1\n".to_string(),
            format!("MAINPID={new}\nREADY=1\n"),
        ],
        "old pid {old}"
    );
}
