//! `longhaul check`: the effective configuration on stdout as TOML (every key, defaults filled
//! in, durations as strings) that passes `check` itself and parses into the same settings.

mod support;

use std::path::Path;
use std::time::Duration;

use longhaul::config::Config;
use support::proxy::{self, Run, TempDir};

const RUN_TIMEOUT: Duration = Duration::from_secs(10);

/// Every kind of section: two upstreams with pool, keepalive and health tables, routes, and a
/// transparent table with its pool and allow rules.
const FULL: &str = r#"
[server]
listen = ["127.0.0.1:0", "[::1]:0"]
mode = "transparent"
header_read_timeout = "250ms"
max_request_header_bytes = 4096

[log]
format = "json"

[[upstream]]
name = "legacy"
servers = ["127.0.0.1:8000", "backend.internal:8001"]
protocol = "http/1.1"
balance = "least_conn"

[upstream.pool]
max_size = 4
idle_timeout = "90s"

[upstream.health]
path = "/health"

[[upstream]]
name = "api"
servers = ["127.0.0.1:9000"]

[[route]]
host = "*.example.com"
path_prefix = "/api"
upstream = "api"

[[route]]
upstream = "legacy"

[transparent]
mark = 0x4c49
detect_timeout = "1s"

[transparent.pool]
max_size = 3

[[transparent.allow]]
name = "legacy-net"
cidr = "10.0.0.0/8"
ports = "80,8000-8099"
"#;

/// The smallest valid file: one upstream, everything else left to the defaults.
const MINIMAL: &str = "[[upstream]]\nname = \"legacy\"\nservers = [\"127.0.0.1:8000\"]\n";

/// `longhaul check` on `text`; the run and the path it was given.
fn check(dir: &TempDir, text: &str) -> (Run, String) {
    let path = dir.write_config(text);
    let p = path.to_str().expect("utf-8 temp path").to_string();
    let run = proxy::run(&["check", "--config", &p], RUN_TIMEOUT);
    assert_eq!(run.code, Some(0), "check failed:\n{}", run.stderr);
    (run, p)
}

fn parse(text: &str) -> Config {
    Config::parse(text, Path::new("printed.toml")).unwrap_or_else(|e| panic!("{e}\nin:\n{text}"))
}

#[test]
fn check_prints_every_default_with_durations_as_strings() {
    let dir = TempDir::new();
    let (run, _) = check(&dir, MINIMAL);
    let printed: toml::Table = toml::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not TOML ({e}):\n{}", run.stdout));
    let server = &printed["server"];
    assert_eq!(server["header_read_timeout"].as_str(), Some("10s"));
    assert_eq!(server["max_request_head_bytes"].as_integer(), Some(65_536));
    assert_eq!(server["max_request_header_bytes"].as_integer(), Some(8192));
    let upstream = &printed["upstream"][0];
    assert_eq!(upstream["connect_timeout"].as_str(), Some("3s"));
    assert_eq!(upstream["retry_window"].as_str(), Some("3s"));
    assert_eq!(upstream["pool"]["wait_timeout"].as_str(), Some("5s"));
    assert_eq!(upstream["pool"]["max_waiters"].as_integer(), Some(1024));
    assert_eq!(upstream["health"]["max_ejection"].as_str(), Some("30s"));
}

#[test]
fn the_printed_configuration_parses_into_the_same_config() {
    let dir = TempDir::new();
    let (run, _) = check(&dir, FULL);
    assert_eq!(parse(&run.stdout), parse(FULL), "printed:\n{}", run.stdout);
}

#[test]
fn the_printed_configuration_passes_check_and_prints_itself_again() {
    let dir = TempDir::new();
    let (first, _) = check(&dir, FULL);
    let again = TempDir::new();
    let (second, _) = check(&again, &first.stdout);
    assert_eq!(second.stdout, first.stdout);
}

#[test]
fn check_says_ok_on_stderr_and_nothing_else() {
    let dir = TempDir::new();
    let (run, path) = check(&dir, MINIMAL);
    assert_eq!(run.stderr, format!("{path}: ok\n"));
}
