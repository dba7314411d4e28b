//! systemd socket activation, run for real with `systemd-socket-activate`: longhaul serves on the
//! socket it is passed, and a passed socket that matches no configured listener is refused.

mod support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use support::backend::Backend;
use support::client;
use support::process::{Child, send_signal};
use support::proxy::{self, BIN, ProxyConfig, TempDir};
use support::tls::{Pki, TlsClient};
use support::tools::have;
use support::wait_until;

const TOOL: &str = "systemd-socket-activate";

/// A port free on 127.0.0.1 a moment ago, for `systemd-socket-activate -l`.
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// `systemd-socket-activate -l ADDR [--fdname=NAME] longhaul --config CFG`: it listens, and on
/// the first connection execs longhaul in its own process with the socket as fd 3.
struct Activated {
    child: Child,
    _dir: TempDir,
}

impl Activated {
    fn start(listen: SocketAddr, fdname: Option<&str>, config: &ProxyConfig) -> Activated {
        Activated::start_raw(&[listen], fdname, &config.render())
    }

    /// Passes a socket for each of `listen`, in order, with this exact config text.
    fn start_raw(listen: &[SocketAddr], fdname: Option<&str>, config_text: &str) -> Activated {
        let dir = TempDir::new();
        let config_path = dir.write_config(config_text);
        let mut command = Command::new(TOOL);
        for addr in listen {
            command.arg("-l").arg(addr.to_string());
        }
        if let Some(name) = fdname {
            command.arg(format!("--fdname={name}"));
        }
        command.arg(BIN).arg("--config").arg(&config_path);
        let child = Child::spawn_drained(TOOL, &mut command);
        assert!(
            wait_until(Duration::from_secs(10), || child
                .text()
                .contains("Listening on")),
            "{TOOL} did not listen:\n{}",
            child.text()
        );
        Activated { child, _dir: dir }
    }

    fn stderr(&self) -> String {
        self.child.text()
    }

    /// Waits (bounded) for the process to exit by itself.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.child.wait_exit(timeout)
    }

    /// SIGTERM (the process is longhaul once activated), then a bounded wait.
    fn stop(&mut self) -> Option<ExitStatus> {
        self.child.terminate(Duration::from_secs(10))
    }
}

#[test]
fn a_socket_passed_by_systemd_serves_requests_through_to_the_backend() {
    if !have(TOOL) {
        return;
    }
    let backend = Backend::start();
    let listen = free_addr();
    // Two workers: both accept on duplicates of the one passed socket.
    let config = ProxyConfig::single(&[backend.addr()])
        .server("listen", &format!("\"{listen}\""))
        .server("workers", "2");
    let mut activated = Activated::start(listen, None, &config);
    let responses: Vec<(u16, Vec<u8>)> = (0..4)
        .map(|i| {
            let r = client::get10(listen, &format!("/activated/{i}"));
            (r.status, r.body)
        })
        .collect();
    let expected: Vec<(u16, Vec<u8>)> = (0..4)
        .map(|i| {
            (
                200,
                backend.expected_body("GET", &format!("/activated/{i}")),
            )
        })
        .collect();
    assert_eq!(responses, expected, "stderr:\n{}", activated.stderr());
    assert_eq!(activated.stop().and_then(|s| s.code()), Some(0));
}

#[test]
fn a_passed_socket_matching_no_configured_listener_is_refused_with_exit_2() {
    if !have(TOOL) {
        return;
    }
    let backend = Backend::start();
    let passed = free_addr();
    let config = ProxyConfig::single(&[backend.addr()]);
    let mut activated = Activated::start(passed, Some("web"), &config);
    // The first connection makes systemd-socket-activate exec longhaul.
    let _trigger = TcpStream::connect(passed).expect("connect to the passed socket");
    let status = activated.wait_exit(Duration::from_secs(20));
    let stderr = activated.stderr();
    assert_eq!(status.and_then(|s| s.code()), Some(2), "stderr:\n{stderr}");
    let message = format!(
        "error: socket activation: fd 3 (web) listens on {passed}, which is not in server.listen, server.tls_listen or admin.listen"
    );
    assert!(stderr.contains(&message), "stderr:\n{stderr}");
}

#[test]
fn a_passed_socket_on_the_admin_address_serves_the_admin_listener() {
    if !have(TOOL) {
        return;
    }
    let backend = Backend::start();
    let (listen, admin) = (free_addr(), free_addr());
    let config = ProxyConfig::single(&[backend.addr()])
        .server("listen", &format!("\"{listen}\""))
        .render()
        .replace(
            "[admin]\nlisten = \"127.0.0.1:0\"",
            &format!("[admin]\nlisten = \"{admin}\""),
        );
    let activated = Activated::start_raw(&[listen, admin], None, &config);
    let r = client::get10(admin, "/healthz");
    assert_eq!(r.status, 200, "stderr:\n{}", activated.stderr());
}

#[test]
fn a_passed_socket_on_a_tls_listen_address_terminates_tls() {
    if !(have(TOOL) && have("openssl")) {
        return;
    }
    let backend = Backend::start();
    let pki = Pki::new();
    let site = pki.issue("localhost", &["localhost"]);
    let tls_listen = free_addr();
    let certificates = format!(
        "[{{ cert = {:?}, key = {:?} }}]",
        site.cert.display().to_string(),
        site.key.display().to_string()
    );
    let config = ProxyConfig::single(&[backend.addr()])
        .server("tls_listen", &format!("[\"{tls_listen}\"]"))
        .server_tls("certificates", &certificates);
    let activated = Activated::start(tls_listen, None, &config);
    let r = TlsClient::new(&pki.ca, "localhost")
        .get10(tls_listen, "/over-tls")
        .unwrap_or_else(|e| {
            panic!(
                "HTTPS request failed ({e}); stderr:\n{}",
                activated.stderr()
            )
        });
    assert_eq!(
        (r.status, r.body),
        (200, backend.expected_body("GET", "/over-tls"))
    );
}

#[test]
fn an_upgrade_hands_the_socket_systemd_passed_to_the_new_process() {
    if !have(TOOL) {
        return;
    }
    let backend = Backend::start();
    let listen = free_addr();
    let dir = TempDir::new();
    let pid_file = dir.path().join("longhaul.pid");
    let config = ProxyConfig::single(&[backend.addr()])
        .server("listen", &format!("\"{listen}\""))
        .server("workers", "2")
        .server("pid_file", &format!("{:?}", pid_file.display().to_string()));
    let mut activated = Activated::start(listen, None, &config);
    let before = client::get10(listen, "/before").status;
    let config_path = dir.write_config(&config.render());
    let upgrade = proxy::run(
        &[
            "upgrade",
            "--config",
            config_path.to_str().expect("a UTF-8 path"),
        ],
        Duration::from_secs(120),
    );
    let new_pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The exit status, not the end of stderr: the new process still holds the stderr pipe.
    let old_exit = activated.wait_exit(Duration::from_secs(40));
    let after = client::get10(listen, "/after").status;
    send_signal(new_pid as i32, libc::SIGTERM);
    let new_exited = wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(format!("/proc/{new_pid}/stat"))
            .map_or(true, |stat| stat.contains(") Z"))
    });
    assert_eq!(
        (
            before,
            upgrade.code,
            old_exit.and_then(|s| s.code()),
            after,
            new_exited
        ),
        (200, Some(0), Some(0), 200, true),
        "upgrade: {}\nstderr:\n{}",
        upgrade.stderr,
        activated.stderr()
    );
}
