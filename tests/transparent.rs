//! Transparent mode against the real kernel: each test gets a private network namespace, installs
//! the shipped REDIRECT rules in it (deploy/transparent/iptables.sh, or nftables.sh), runs longhaul
//! with `mode = "transparent"` and scripted backends on 127.0.0.x, and connects to the backends'
//! addresses as an ordinary client would. Needs root and iptables (nft for the nftables test); it
//! prints `skipped: ...` and passes without them, unless LONGHAUL_REQUIRE_TOOLS=1.
//!
//! How the namespace is made: each scenario runs on a dedicated thread that calls unshare(2) with
//! CLONE_NEWNET. That moves only that thread into a fresh network namespace; every socket it opens,
//! every thread it spawns and every process it starts (ip, iptables, the scripts, longhaul,
//! backend-sim) lives there too, while the rest of the test binary stays outside. Nothing global is
//! created, so nothing can leak: the namespace disappears once the thread and its children are gone
//! (the children are killed by their Drop guards, and by PR_SET_PDEATHSIG if the thread dies).
//! Tests therefore run in parallel, each with its own loopback, rules and fixed ports.

use std::io::Write;
use std::net::SocketAddr;
use std::process::Command;
use std::thread;
use std::time::Duration;

use lab::{connect, read_exactly, read_head};
use support::backend::{Backend, Echo};

/// longhaul's transparent listener and admin listener inside the namespace.
const PROXY_PORT: u16 = 15001;
const PROXY: &str = "127.0.0.1:15001";
const ADMIN: &str = "127.0.0.1:9901";
/// SO_MARK on longhaul's upstream sockets; the installed rules skip marked packets.
const MARK: &str = "0x4c48";
/// Ports the rules redirect (iptables multiport syntax; nftables.sh accepts it too).
const REDIRECTED: &str = "8001:8010";
const POOL_MAX: u64 = 4;

/// Two HTTP destinations with their own allow rules (and so their own `upstream` label).
const DEST_A: &str = "127.0.0.2:8001";
const DEST_A_STATS: &str = "127.0.0.2:9001";
const DEST_B: &str = "127.0.0.3:8002";
const DEST_B_STATS: &str = "127.0.0.3:9002";
/// Allowed by the `tunnels` rule (127.0.0.4/30, ports 8003-8005).
const WEBSOCKET: &str = "127.0.0.4:8003";
const SERVER_FIRST: &str = "127.0.0.5:8004";
const CLIENT_FIRST: &str = "127.0.0.6:8005";
/// Redirected (port 8001 is in the rules) but in no allow rule.
const NOT_ALLOWED: &str = "127.0.0.9:8001";

/// A transparent-mode config: `listen`, whether it is a TPROXY listener, and its allow rules
/// as `(name, cidr, ports)`. Everything else is the same in every scenario.
fn transparent_config(listen: &str, tproxy: bool, allow: &[(&str, &str, &str)]) -> String {
    let mut text = format!(
        r#"
[server]
listen = "{listen}"
mode = "transparent"

[admin]
listen = "{ADMIN}"

[log]
level = "debug"
format = "json"
access_log = false

[transparent]
protocol = "http/1.0"
mark = {MARK}
tproxy = {tproxy}
detect_timeout = "200ms"
connect_timeout = "2s"

[transparent.pool]
max_size = {POOL_MAX}
idle_timeout = "30s"
wait_timeout = "5s"
"#
    );
    for (name, cidr, ports) in allow {
        text.push_str(&format!(
            "\n[[transparent.allow]]\nname = \"{name}\"\ncidr = \"{cidr}\"\nports = \"{ports}\"\n"
        ));
    }
    text
}

fn config() -> String {
    transparent_config(
        PROXY,
        false,
        &[
            ("dest-a", "127.0.0.2/32", "8001"),
            ("dest-b", "127.0.0.3/32", "8002"),
            ("tunnels", "127.0.0.4/30", "8003-8005"),
        ],
    )
}

#[derive(Clone, Copy, Debug)]
enum Firewall {
    Iptables,
    Nftables,
}

impl Firewall {
    fn script(self) -> String {
        let name = match self {
            Firewall::Iptables => "iptables.sh",
            Firewall::Nftables => "nftables.sh",
        };
        format!("{}/deploy/transparent/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    fn tool(self) -> &'static str {
        match self {
            Firewall::Iptables => "iptables",
            Firewall::Nftables => "nft",
        }
    }
}

/// What a scenario gets: longhaul running in transparent mode behind installed rules.
struct Lab {
    proxy: Proxy,
    _rules: Rules,
}

impl Lab {
    fn metrics(&self) -> String {
        self.proxy.metrics_text()
    }
}

/// The installed rules; `remove` runs on drop (the namespace goes away anyway).
struct Rules(Firewall);

impl Rules {
    fn install(firewall: Firewall, ports: &str) -> Rules {
        let out = Command::new("bash")
            .arg(firewall.script())
            .args(["install", "--ports", ports, "--proxy-port"])
            .arg(PROXY_PORT.to_string())
            .args(["--mark", MARK])
            .output()
            .expect("run the rules script");
        assert!(
            out.status.success(),
            "{} install failed ({}):\n{}{}",
            firewall.script(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("redirecting tcp ports"),
            "unexpected script output: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        Rules(firewall)
    }
}

impl Drop for Rules {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(self.0.script())
            .arg("remove")
            .output();
    }
}

/// Runs `scenario` in a private network namespace with longhaul and the rules redirecting
/// `ports`, or prints why it cannot (and fails instead when LONGHAUL_REQUIRE_TOOLS=1).
fn in_netns(firewall: Firewall, ports: &'static str, scenario: fn(&Lab)) {
    in_netns_with(firewall, ports, config, scenario);
}

/// `in_netns` with longhaul running `config()` instead of the common config.
fn in_netns_with(
    firewall: Firewall,
    ports: &'static str,
    config: fn() -> String,
    scenario: fn(&Lab),
) {
    if !can_run_in_netns(&[firewall.tool()]) {
        return;
    }
    let worker = thread::spawn(move || -> Result<(), String> {
        netns::enter_new()?;
        let proxy = Proxy::start_text(&config());
        let rules = Rules::install(firewall, ports);
        scenario(&Lab {
            proxy,
            _rules: rules,
        });
        Ok(())
    });
    match worker.join() {
        Ok(Ok(())) => {}
        // The scenario ran and something in it went wrong: a failure, never a skip.
        Ok(Err(why)) => panic!("{why}"),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Whether this test can make a network namespace and run `tools` in it: root, `ip`, `bash` and
/// `tools` there; if not, `tools::skip` said why (a failure under LONGHAUL_REQUIRE_TOOLS=1).
fn can_run_in_netns(tools: &[&str]) -> bool {
    if !netns::is_root() {
        tools::skip("not root (network namespaces and netfilter rules need CAP_NET_ADMIN)");
        return false;
    }
    ["ip", "bash"]
        .iter()
        .chain(tools)
        .all(|tool| tools::have(tool))
}

/// backend-sim on `listen` (stats on `stats`) in the test's namespace, with no cost per connection.
fn start_sim(listen: &str, stats: &str) -> BackendSim {
    BackendSim::start_on(listen, stats, &["--conn-cost", "0ms"])
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

// === pooling per original destination ===

#[test]
fn iptables_redirect_pools_short_connections_per_destination() {
    in_netns(Firewall::Iptables, REDIRECTED, pools_per_destination);
}

#[test]
fn nftables_redirect_pools_short_connections_per_destination() {
    in_netns(Firewall::Nftables, "8001-8010", pools_per_destination);
}

/// 30 one-shot HTTP/1.0 requests to each of two destinations, 5 clients per destination at once:
/// each backend sees all 30 requests over at most `POOL_MAX` connections, and the metrics name both.
fn pools_per_destination(lab: &Lab) {
    const CLIENTS: usize = 5;
    const EACH: usize = 6;
    let a = start_sim(DEST_A, DEST_A_STATS);
    let b = start_sim(DEST_B, DEST_B_STATS);

    let clients: Vec<_> = (0..2 * CLIENTS)
        .map(|i| {
            let dst = addr(if i % 2 == 0 { DEST_A } else { DEST_B });
            thread::spawn(move || (0..EACH).map(|_| http10_get(dst)).collect::<Vec<_>>())
        })
        .collect();
    let results: Vec<Result<u16, String>> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client thread"))
        .collect();
    assert_eq!(results.len(), 2 * CLIENTS * EACH);
    let failed: Vec<_> = results.iter().filter(|r| **r != Ok(200)).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests did not get 200: {:?}\n{}",
        failed.len(),
        results.len(),
        &failed[..failed.len().min(5)],
        lab.proxy.stderr()
    );

    for (name, sim) in [(DEST_A, &a), (DEST_B, &b)] {
        assert_pooled(name, sim, CLIENTS * EACH);
    }

    let metrics = lab.metrics();
    assert_eq!(
        metric_sum_in(&metrics, "longhaul_transparent_destinations", &[]),
        2.0,
        "destinations with a pool:\n{metrics}"
    );
    for (rule, dst) in [("dest-a", DEST_A), ("dest-b", DEST_B)] {
        assert_eq!(
            metric_sum_in(
                &metrics,
                "longhaul_upstream_requests_total",
                &[("upstream", rule), ("server", dst)]
            ),
            (CLIENTS * EACH) as f64,
            "requests pooled to {dst} under rule {rule}:\n{metrics}"
        );
    }
}

/// A one-shot HTTP/1.0 GET (no keep-alive) to `dst`: the status code, read until longhaul closes.
fn http10_get(dst: SocketAddr) -> Result<u16, String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(5))
        .map_err(|e| format!("connect {dst}: {e}"))?;
    s.set_read_timeout(Some(lab::IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("GET /item HTTP/1.0\r\nHost: {dst}\r\n\r\n").as_bytes())
        .map_err(|e| format!("send to {dst}: {e}"))?;
    let mut data = Vec::new();
    s.read_to_end(&mut data)
        .map_err(|e| format!("read from {dst}: {e}"))?;
    let text = String::from_utf8_lossy(&data);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line from {dst}: {text:?}"))
}

// === protocols other than pooled HTTP ===

#[test]
fn server_first_protocol_passes_through_byte_for_byte() {
    in_netns(Firewall::Iptables, REDIRECTED, |lab| {
        let banner = b"220 legacy-smtp ready \x00\xff\r\n".to_vec();
        let backend = Backend::builder()
            .raw_echo(&banner)
            .start_on(addr(SERVER_FIRST));
        let mut client = connect(addr(SERVER_FIRST));
        // The client stays silent: the banner can only come once detect_timeout gave up on HTTP.
        assert_eq!(read_exactly(&mut client, banner.len()), banner);
        let payload: Vec<u8> = (0u8..=255).collect();
        client.write_all(&payload).expect("send");
        assert_eq!(read_exactly(&mut client, payload.len()), payload);
        assert_eq!(backend.raw_bytes(), payload, "bytes the backend got");
        assert_eq!(backend.accepted(), 1);
        assert_eq!(
            metric_sum_in(
                &lab.metrics(),
                "longhaul_tcp_passthrough_connections_total",
                &[("upstream", "tunnels")]
            ),
            1.0
        );
    });
}

/// `openssl s_server -www` on `addr` with `cert`, killed on drop. Its stdout stays open while it
/// runs: s_server would die of SIGPIPE writing to a closed pipe.
struct OpensslServer {
    child: std::process::Child,
    _stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl OpensslServer {
    fn start(addr: &str, cert: &support::tls::CertFiles) -> OpensslServer {
        use std::io::BufRead;
        let mut child = Command::new("openssl")
            .args(["s_server", "-www", "-accept", addr, "-naccept", "4"])
            .arg("-cert")
            .arg(&cert.cert)
            .arg("-key")
            .arg(&cert.key)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start openssl s_server");
        // s_server prints ACCEPT once it listens (after a line or two about its parameters).
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("s_server stdout"));
        let mut seen = Vec::new();
        while seen.len() < 10 {
            let mut line = String::new();
            if stdout.read_line(&mut line).expect("read s_server") == 0 {
                break;
            }
            if line.trim() == "ACCEPT" {
                return OpensslServer {
                    child,
                    _stdout: stdout,
                };
            }
            seen.push(line);
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("s_server did not start: {seen:?}");
    }
}

impl Drop for OpensslServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn tls_it_does_not_terminate_passes_through_to_the_backend_as_raw_tcp() {
    in_netns(Firewall::Iptables, REDIRECTED, |lab| {
        // The client verifies the *backend's* certificate: longhaul never terminated the TLS.
        let pki = support::tls::Pki::new();
        let cert = pki.issue("legacy-tls-backend", &["127.0.0.6"]);
        let _backend = OpensslServer::start(CLIENT_FIRST, &cert);
        let client = support::tls::TlsClient::new(&pki.ca, "127.0.0.6");
        let response = client
            .get10(addr(CLIENT_FIRST), "/")
            .expect("HTTPS through the transparent proxy");
        assert_eq!(response.status, 200);
        assert!(
            String::from_utf8_lossy(&response.body).contains("s_server"),
            "the page came from openssl s_server"
        );
        assert_eq!(
            metric_sum_in(
                &lab.metrics(),
                "longhaul_tcp_passthrough_connections_total",
                &[("upstream", "tunnels")]
            ),
            1.0
        );
    });
}

#[test]
fn client_first_binary_protocol_passes_through_byte_for_byte() {
    in_netns(Firewall::Iptables, REDIRECTED, |lab| {
        let backend = Backend::builder()
            .raw_echo(b"")
            .start_on(addr(CLIENT_FIRST));
        let mut client = connect(addr(CLIENT_FIRST));
        // Starts like a TLS record: no HTTP method, so it is spliced at once.
        let mut payload = b"\x16\x03\x01\x02\x00\x01".to_vec();
        payload.extend((0u8..=255).rev());
        client.write_all(&payload).expect("send");
        assert_eq!(read_exactly(&mut client, payload.len()), payload);
        client
            .write_all(b"GET / HTTP/1.0\r\n\r\n")
            .expect("send more");
        assert_eq!(
            read_exactly(&mut client, 18),
            b"GET / HTTP/1.0\r\n\r\n",
            "later bytes that look like HTTP still pass through untouched"
        );
        assert_eq!(
            backend.raw_bytes(),
            [payload.as_slice(), b"GET / HTTP/1.0\r\n\r\n"].concat()
        );
        assert_eq!(
            metric_sum_in(
                &lab.metrics(),
                "longhaul_tcp_passthrough_connections_total",
                &[("upstream", "tunnels")]
            ),
            1.0
        );
    });
}

// === clients that vanish ===

/// The common config with client-socket keepalive at 1 s / 1 s / 2: a silent client that stops
/// answering is given up after about 3 s (one idle second, two unanswered probes).
fn fast_client_keepalive_config() -> String {
    config() + "\n[server.tcp_keepalive]\ntime = \"1s\"\ninterval = \"1s\"\nretries = 2\n"
}

/// Bound on noticing a vanished client with `fast_client_keepalive_config` (about 3 s).
const VANISHED_BOUND: Duration = Duration::from_secs(10);

/// Opens a raw TCP passthrough tunnel to an echo backend, checks that it carries bytes, then
/// makes the client vanish as a powered-off device behind a NAT does: from now on every packet
/// it sends (ACKs to keepalive probes included) is dropped. The client socket stays open.
fn passthrough_whose_client_vanishes() -> (Backend, std::net::TcpStream) {
    let backend = Backend::builder()
        .raw_echo(b"")
        .start_on(addr(CLIENT_FIRST));
    let mut client = connect(addr(CLIENT_FIRST));
    let payload = b"\x16\x03\x01 not http";
    client.write_all(payload).expect("send");
    assert_eq!(read_exactly(&mut client, payload.len()), payload);
    let port = client
        .local_addr()
        .expect("client address")
        .port()
        .to_string();
    // Only the client's own packets: a later scrape of the admin listener may get the same
    // ephemeral port (to another destination) and must still get through.
    let admin_port = addr(ADMIN).port().to_string();
    let rule = ["-p", "tcp", "--sport", &port, "!", "--dport", &admin_port];
    run(
        "iptables",
        &[&["-I", "INPUT"][..], &rule, &["-j", "DROP"]].concat(),
        &[],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    (backend, client)
}

#[test]
fn vanished_client_of_a_passthrough_tunnel_gets_its_upstream_connection_closed() {
    in_netns_with(
        Firewall::Iptables,
        REDIRECTED,
        fast_client_keepalive_config,
        |lab| {
            let (backend, _client) = passthrough_whose_client_vanishes();
            assert!(
                backend.wait_peer_closed(1, VANISHED_BOUND),
                "the backend connection of a vanished client stayed open\n{}",
                lab.proxy.stderr()
            );
        },
    );
}

#[test]
fn vanished_client_of_a_passthrough_tunnel_is_counted_as_a_tunnel_error() {
    in_netns_with(
        Firewall::Iptables,
        REDIRECTED,
        fast_client_keepalive_config,
        |lab| {
            let (_backend, _client) = passthrough_whose_client_vanishes();
            let closed = || {
                metric_sum_in(
                    &lab.metrics(),
                    "longhaul_tunnels_closed_total",
                    &[("kind", "passthrough"), ("reason", "error")],
                )
            };
            assert!(
                support::wait_until(VANISHED_BOUND, || closed() == 1.0),
                "{}",
                lab.metrics()
            );
        },
    );
}

#[test]
fn websocket_upgrade_to_a_redirected_destination_echoes_bytes() {
    in_netns(Firewall::Iptables, REDIRECTED, |lab| {
        let backend = Backend::builder()
            .tunnel(
                b"HTTP/1.1 101 Switching Protocols\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade\r\n\r\n",
                Echo::UntilClosed,
            )
            .start_on(addr(WEBSOCKET));
        let mut client = connect(addr(WEBSOCKET));
        client
            .write_all(
                format!(
                    "GET /chat HTTP/1.1\r\nHost: {WEBSOCKET}\r\nConnection: Upgrade\r\n\
Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n"
                )
                .as_bytes(),
            )
            .expect("send upgrade");
        let (head, leftover) = read_head(&mut client);
        assert_eq!(
            head.status,
            101,
            "head:\n{}\n{}",
            head.raw,
            lab.proxy.stderr()
        );
        assert_eq!(head.header("upgrade").as_deref(), Some("websocket"));
        assert!(leftover.is_empty());
        let payload: Vec<u8> = [0x82u8, 0x80 | 4, 1, 2, 3, 4]
            .into_iter()
            .chain(0u8..=255)
            .collect();
        client.write_all(&payload).expect("send frame");
        assert_eq!(read_exactly(&mut client, payload.len()), payload);
        lab::assert_websocket_upgrade_reached(&backend);
        assert_eq!(backend.raw_bytes(), payload, "bytes after the 101");
        assert_eq!(
            metric_sum_in(
                &lab.metrics(),
                "longhaul_tunnels_total",
                &[("upstream", "tunnels"), ("kind", "upgrade")]
            ),
            1.0
        );
    });
}

// === refusals ===

/// The client gets its connection closed without a single byte.
fn assert_refused(dst: SocketAddr, lab: &Lab) {
    let mut client = connect(dst);
    // The request may race the close; either way nothing may come back.
    let _ = client.write_all(format!("GET / HTTP/1.0\r\nHost: {dst}\r\n\r\n").as_bytes());
    let got = lab::read_to_close(&mut client);
    assert!(
        got.is_empty(),
        "a refused connection to {dst} got data: {:?}\n{}",
        String::from_utf8_lossy(&got),
        lab.proxy.stderr()
    );
}

#[test]
fn destination_outside_the_allow_list_is_refused() {
    in_netns(Firewall::Iptables, REDIRECTED, |lab| {
        let backend = Backend::builder().raw_echo(b"").start_on(addr(NOT_ALLOWED));
        assert_refused(addr(NOT_ALLOWED), lab);
        assert_eq!(
            backend.accepted(),
            0,
            "the denied destination was contacted"
        );
        assert_eq!(
            metric_sum_in(
                &lab.metrics(),
                "longhaul_transparent_denied_total",
                &[("reason", "not_allowed")]
            ),
            1.0
        );
    });
}

#[test]
fn direct_connection_to_the_listener_is_refused_as_not_redirected() {
    in_netns(Firewall::Iptables, REDIRECTED, |lab| {
        assert_refused(addr(PROXY), lab);
        let metrics = lab.metrics();
        assert_eq!(
            metric_sum_in(
                &metrics,
                "longhaul_transparent_denied_total",
                &[("reason", "not_redirected")]
            ),
            1.0,
            "{metrics}"
        );
    });
}

#[test]
fn redirected_connection_to_the_listener_port_is_refused_as_a_loop() {
    // Here the rules also redirect longhaul's own port: a client going to 127.0.0.8:15001 lands
    // on longhaul with an original destination that is longhaul itself.
    in_netns(Firewall::Iptables, "8001:8010,15001", |lab| {
        assert_refused(addr("127.0.0.8:15001"), lab);
        let metrics = lab.metrics();
        assert_eq!(
            metric_sum_in(
                &metrics,
                "longhaul_transparent_denied_total",
                &[("reason", "loop")]
            ),
            1.0,
            "{metrics}"
        );
    });
}

// === IPv6 REDIRECT and TPROXY on a gateway ===

/// Runs `body` on a thread in a fresh network namespace (loopback up) when root and `tools` are
/// there (else a skip, a failure under LONGHAUL_REQUIRE_TOOLS=1); a body's `Err` fails the test.
fn in_own_netns(tools: &[&str], body: fn() -> Result<(), String>) {
    if !can_run_in_netns(tools) {
        return;
    }
    let worker = thread::spawn(move || -> Result<(), String> {
        netns::enter_new()?;
        body()
    });
    match worker.join() {
        Ok(Ok(())) => {}
        // The scenario ran and something in it went wrong: a failure, never a skip.
        Ok(Err(why)) => panic!("{why}"),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Runs a command in the calling thread's namespace: Ok(stdout) or Err naming the command.
fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .map_err(|e| format!("cannot run `{program}`: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// deploy/transparent/iptables.sh with `args` (and IPTABLES=`iptables`); `remove` runs on drop.
struct ScriptRules {
    iptables: &'static str,
    tproxy: bool,
}

impl ScriptRules {
    fn install(iptables: &'static str, args: &[&str]) -> ScriptRules {
        let script = Firewall::Iptables.script();
        let stdout = run(
            "bash",
            &[&[script.as_str(), "install"], args].concat(),
            &[("IPTABLES", iptables)],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            stdout.contains("redirecting tcp ports"),
            "unexpected script output: {stdout}"
        );
        ScriptRules {
            iptables,
            tproxy: args.contains(&"--tproxy"),
        }
    }
}

impl Drop for ScriptRules {
    fn drop(&mut self) {
        let script = Firewall::Iptables.script();
        let mut args = vec![script.as_str(), "remove"];
        if self.tproxy {
            args.push("--tproxy");
        }
        let _ = run("bash", &args, &[("IPTABLES", self.iptables)]);
    }
}

/// `clients` threads each sending `each` one-shot HTTP/1.0 GETs to `dst`; every result.
fn http10_burst(dst: SocketAddr, clients: usize, each: usize) -> Vec<Result<u16, String>> {
    let threads: Vec<_> = (0..clients)
        .map(|_| thread::spawn(move || (0..each).map(|_| http10_get(dst)).collect::<Vec<_>>()))
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().expect("client thread"))
        .collect()
}

fn assert_all_ok(results: &[Result<u16, String>], proxy: &Proxy) {
    let failed: Vec<_> = results.iter().filter(|r| **r != Ok(200)).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests did not get 200: {:?}\n{}",
        failed.len(),
        results.len(),
        &failed[..failed.len().min(5)],
        proxy.stderr()
    );
}

/// `requests` arrived at `sim`, each once, over at most POOL_MAX backend connections.
fn assert_pooled(name: &str, sim: &BackendSim, requests: usize) {
    let (accepted, served) = sim.counts();
    assert_eq!(
        served, requests as u64,
        "{name}: every request through longhaul, once"
    );
    assert!(
        (1..=POOL_MAX).contains(&accepted),
        "{name}: {requests} short client connections arrived over {accepted} backend connections (pool max {POOL_MAX})"
    );
}

/// A pool per destination, named by rule and address, that served `requests` requests each.
fn assert_destination_metrics(proxy: &Proxy, dests: &[(&str, &str)], requests: usize) {
    let metrics = proxy.metrics_text();
    assert_eq!(
        metric_sum_in(&metrics, "longhaul_transparent_destinations", &[]),
        dests.len() as f64,
        "destinations with a pool:\n{metrics}"
    );
    for &(rule, dst) in dests {
        assert_eq!(
            metric_sum_in(
                &metrics,
                "longhaul_upstream_requests_total",
                &[("upstream", rule), ("server", dst)]
            ),
            requests as f64,
            "requests pooled to {dst} under rule {rule}:\n{metrics}"
        );
    }
}

const V6_PROXY: &str = "[::1]:15001";
const V6_DEST_A: &str = "[fd00:99::2]:8001";
const V6_DEST_A_STATS: &str = "[fd00:99::2]:9001";
const V6_DEST_B: &str = "[fd00:99::3]:8001";
const V6_DEST_B_STATS: &str = "[fd00:99::3]:9001";

fn v6_config() -> String {
    transparent_config(V6_PROXY, false, &[("v6-lab", "fd00:99::/64", "8001")])
}

/// ip6tables REDIRECT to longhaul on [::1]: 20 one-shot requests to each of two IPv6 destinations
/// are pooled per original destination (IP6T_SO_ORIGINAL_DST), and the metrics name both.
#[test]
fn ipv6_redirect_pools_per_original_destination() {
    in_own_netns(&["ip6tables"], || {
        for a in ["fd00:99::2/128", "fd00:99::3/128"] {
            run("ip", &["-6", "addr", "add", a, "dev", "lo", "nodad"], &[])
                .map_err(|e| format!("no IPv6 in the namespace: {e}"))?;
        }
        let proxy = Proxy::start_text(&v6_config());
        let _rules = ScriptRules::install(
            "ip6tables",
            &["--ports", "8001", "--proxy-port", "15001", "--mark", MARK],
        );
        let a = start_sim(V6_DEST_A, V6_DEST_A_STATS);
        let b = start_sim(V6_DEST_B, V6_DEST_B_STATS);

        const CLIENTS: usize = 4;
        const EACH: usize = 5;
        let (ra, rb) = thread::scope(|s| {
            let ra = s.spawn(|| http10_burst(addr(V6_DEST_A), CLIENTS, EACH));
            let rb = s.spawn(|| http10_burst(addr(V6_DEST_B), CLIENTS, EACH));
            (ra.join().expect("clients"), rb.join().expect("clients"))
        });
        assert_all_ok(&[ra, rb].concat(), &proxy);
        assert_pooled(V6_DEST_A, &a, CLIENTS * EACH);
        assert_pooled(V6_DEST_B, &b, CLIENTS * EACH);
        assert_destination_metrics(
            &proxy,
            &[("v6-lab", V6_DEST_A), ("v6-lab", V6_DEST_B)],
            CLIENTS * EACH,
        );
        Ok(())
    });
}

/// The gateway's end of the veth pair, and the client namespace's end.
const GW_IF: &str = "lh-gw";
const CLIENT_IF: &str = "lh-client";
/// A service address on the gateway (a /32 on its loopback) that clients reach through it.
const GW_DEST: &str = "10.200.1.1:8001";
const GW_DEST_STATS: &str = "10.200.1.1:9001";

fn tproxy_config() -> String {
    transparent_config(
        &format!("0.0.0.0:{PROXY_PORT}"),
        true,
        &[("gw-dest", "10.200.1.1/32", "8001")],
    )
}

/// Err when the kernel has no TPROXY target for iptables.
fn tproxy_available() -> Result<(), String> {
    let chain = "LONGHAUL_TPROXY_PROBE";
    run("iptables", &["-t", "mangle", "-N", chain], &[])?;
    let probe = run(
        "iptables",
        &[
            "-t",
            "mangle",
            "-A",
            chain,
            "-p",
            "tcp",
            "-j",
            "TPROXY",
            "--on-port",
            "1",
            "--tproxy-mark",
            "0x1/0x1",
        ],
        &[],
    );
    let _ = run("iptables", &["-t", "mangle", "-F", chain], &[]);
    let _ = run("iptables", &["-t", "mangle", "-X", chain], &[]);
    probe
        .map(drop)
        .map_err(|e| format!("TPROXY target unavailable: {e}"))
}

/// TPROXY on a gateway: a client in its own namespace, routed through the gateway (which runs
/// longhaul with `tproxy = true`, the backend and the --tproxy rules) over a veth pair, sends 20
/// one-shot HTTP/1.0 requests to 10.200.1.1:8001. Forwarded packets go through mangle PREROUTING,
/// so TPROXY hands them to longhaul's IP_TRANSPARENT listener; longhaul pools them.
#[test]
fn tproxy_gateway_pools_forwarded_connections() {
    in_own_netns(&["iptables"], || {
        if let Err(why) = tproxy_available() {
            // A kernel without the target is a missing prerequisite, like a missing tool.
            tools::skip(&why);
            return Ok(());
        }
        // The client namespace: a thread of its own, told when its veth end is in place.
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let client = thread::spawn(move || -> Result<Vec<Result<u16, String>>, String> {
            let entered = netns::enter_new().map(|()| netns::tid());
            let _ = tid_tx.send(entered.clone());
            entered?;
            go_rx
                .recv()
                .map_err(|_| "the gateway gave up".to_string())?;
            run(
                "ip",
                &["addr", "add", "10.200.0.2/24", "dev", CLIENT_IF],
                &[],
            )?;
            run("ip", &["link", "set", CLIENT_IF, "up"], &[])?;
            run("ip", &["route", "add", "default", "via", "10.200.0.1"], &[])?;
            Ok(http10_burst(addr(GW_DEST), 4, 5))
        });
        let tid = tid_rx.recv().expect("client thread reports")?.to_string();
        run(
            "ip",
            &[
                "link", "add", GW_IF, "type", "veth", "peer", "name", CLIENT_IF, "netns", &tid,
            ],
            &[],
        )
        .map_err(|e| format!("cannot create a veth pair: {e}"))?;
        run("ip", &["addr", "add", "10.200.0.1/24", "dev", GW_IF], &[])?;
        run("ip", &["link", "set", GW_IF, "up"], &[])?;
        run("ip", &["addr", "add", "10.200.1.1/32", "dev", "lo"], &[])?;
        // A real gateway tracks connections (NAT, stateful filtering, Docker). With conntrack on,
        // SO_ORIGINAL_DST succeeds for a TPROXY connection too (it was not NATed), so the local
        // address must be taken as the destination without asking it.
        run(
            "iptables",
            &[
                "-A",
                "INPUT",
                "-m",
                "conntrack",
                "--ctstate",
                "ESTABLISHED,RELATED",
                "-j",
                "ACCEPT",
            ],
            &[],
        )?;

        let proxy = Proxy::start_text(&tproxy_config());
        let _rules = ScriptRules::install(
            "iptables",
            &[
                "--tproxy",
                "--ports",
                "8001",
                "--proxy-port",
                "15001",
                "--mark",
                MARK,
            ],
        );
        let backend = start_sim(GW_DEST, GW_DEST_STATS);
        go_tx.send(()).expect("client thread waits");
        let results = client
            .join()
            .expect("client thread")
            .unwrap_or_else(|e| panic!("client namespace setup: {e}"));
        assert_eq!(results.len(), 20);
        assert_all_ok(&results, &proxy);
        assert_pooled(GW_DEST, &backend, 20);
        assert_destination_metrics(&proxy, &[("gw-dest", GW_DEST)], 20);
        Ok(())
    });
}

// === namespace and backend-sim plumbing ===

mod netns {
    use std::ffi::c_int;
    use std::process::Command;

    unsafe extern "C" {
        fn unshare(flags: c_int) -> c_int;
        fn geteuid() -> u32;
        fn gettid() -> i32;
    }
    const CLONE_NEWNET: c_int = 0x4000_0000;

    /// The calling thread's id (`ip link ... netns ID` accepts it as a pid).
    pub fn tid() -> i32 {
        // SAFETY: gettid has no preconditions.
        unsafe { gettid() }
    }

    pub fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { geteuid() == 0 }
    }

    /// Moves the calling thread into a new network namespace and brings its loopback up.
    pub fn enter_new() -> Result<(), String> {
        // SAFETY: unshare(CLONE_NEWNET) only changes the calling thread's namespace membership.
        if unsafe { unshare(CLONE_NEWNET) } != 0 {
            return Err(format!(
                "cannot create a network namespace: {}",
                std::io::Error::last_os_error()
            ));
        }
        let out = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .output()
            .map_err(|e| format!("cannot run `ip`: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "`ip link set lo up` failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }
}

mod support;
use support::backend_sim::BackendSim;
use support::proxy::{Proxy, metric_sum_in};
use support::{lab, tools};
