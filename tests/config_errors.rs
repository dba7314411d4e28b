//! A bad proxy.toml never starts a proxy: longhaul (and `longhaul check`) exit 2 with
//! `error: <file>:<line>: <key path>: <reason>` on stderr. Each bad case is checked in-process on
//! the parser both commands use; one test runs the binary for the exit status and the message.

mod support;

use std::path::Path;
use std::time::Duration;

use longhaul::config::{Config, ConfigError};
use support::proxy::{self, TempDir};

const RUN_TIMEOUT: Duration = Duration::from_secs(10);

/// A valid config; each test breaks one line of it (1-based line numbers in the comments).
const BASE: &[&str] = &[
    "[server]",                    // 1
    "listen = \"127.0.0.1:0\"",    // 2
    "",                            // 3
    "[admin]",                     // 4
    "listen = \"127.0.0.1:0\"",    // 5
    "",                            // 6
    "[[upstream]]",                // 7
    "name = \"legacy\"",           // 8
    "servers = [\"127.0.0.1:1\"]", // 9
    "connect_timeout = \"1s\"",    // 10
    "response_timeout = \"5s\"",   // 11
    "",                            // 12
    "[upstream.pool]",             // 13
    "max_size = 4",                // 14
    "min_idle = 1",                // 15
    "",                            // 16
    "[[route]]",                   // 17
    "host = \"*\"",                // 18
    "upstream = \"legacy\"",       // 19
];

/// BASE with the given 1-based lines replaced.
fn config_with(replacements: &[(usize, &str)]) -> String {
    let mut lines: Vec<String> = BASE.iter().map(|l| l.to_string()).collect();
    for (n, text) in replacements {
        lines[n - 1] = text.to_string();
    }
    lines.join("\n") + "\n"
}

/// Parses `text` in-process (what both `longhaul run` and `longhaul check` do first) and requires
/// the error to name the file, `line` and `key`. Returns the error line the binary would print.
fn assert_rejected(text: &str, line: usize, key: &str) -> String {
    match Config::parse(text, Path::new("proxy.toml")) {
        Err(ConfigError::Invalid {
            file,
            line: got_line,
            key: got_key,
            reason,
        }) => {
            assert_eq!(file, "proxy.toml");
            assert_eq!(
                got_line, line,
                "line of {got_key}: {reason}\nconfig:\n{text}"
            );
            assert!(
                got_key.contains(key),
                "the error names the key {key:?}: {got_key}: {reason}"
            );
            format!("error: {file}:{got_line}: {got_key}: {reason}")
        }
        other => panic!("expected an invalid-config error, got {other:?}\nconfig:\n{text}"),
    }
}

/// Runs `longhaul` with `args` and the config in `text`; it must exit 2 with the error line on
/// stderr and never start.
fn assert_binary_exits_2(args: &[&str], text: &str, location_suffix: &str) {
    let dir = TempDir::new();
    let path = dir.write_config(text);
    let p = path.to_str().expect("utf-8 temp path");
    let mut argv = args.to_vec();
    argv.extend(["--config", p]);
    let run = proxy::run(&argv, RUN_TIMEOUT);
    assert_eq!(
        run.code,
        Some(2),
        "`longhaul {}` exits 2 (None = still running after {RUN_TIMEOUT:?}).\nstderr:\n{}",
        argv.join(" "),
        run.stderr
    );
    assert!(!run.stderr.contains("longhaul started"), "{}", run.stderr);
    let location = format!("{p}:{location_suffix}");
    assert!(
        run.stderr.contains(&location),
        "`longhaul {}` names {location}\nstderr:\n{}",
        argv.join(" "),
        run.stderr
    );
}

#[test]
fn base_config_is_valid() {
    // Guards the other tests: each one breaks exactly one thing in an otherwise valid file.
    let parsed = Config::parse(&config_with(&[]), Path::new("proxy.toml"));
    assert!(parsed.is_ok(), "{parsed:?}");
}

#[test]
fn run_and_check_exit_2_with_file_line_and_key_for_a_bad_config() {
    let text = config_with(&[(3, "max_conections = 10")]);
    for args in [&[][..], &["check"][..]] {
        assert_binary_exits_2(args, &text, "3: server.max_conections: unknown field");
    }
}

#[test]
fn unknown_key_is_rejected() {
    assert_rejected(
        &config_with(&[(3, "max_conections = 10")]),
        3,
        "max_conections",
    );
}

#[test]
fn bad_listen_address_is_rejected() {
    assert_rejected(
        &config_with(&[(2, "listen = \"127.0.0.1:99999\"")]),
        2,
        "server.listen",
    );
}

#[test]
fn unparsable_server_address_is_rejected() {
    assert_rejected(
        &config_with(&[(9, "servers = [\"no port here\"]")]),
        9,
        "upstream[0].servers",
    );
}

#[test]
fn route_naming_a_missing_upstream_is_rejected() {
    assert_rejected(
        &config_with(&[(19, "upstream = \"nope\"")]),
        19,
        "route[0].upstream",
    );
}

#[test]
fn min_idle_above_max_size_is_rejected() {
    assert_rejected(
        &config_with(&[(15, "min_idle = 9")]),
        15,
        "upstream[0].pool.min_idle",
    );
}

#[test]
fn max_request_header_bytes_over_max_request_head_bytes_is_rejected() {
    let error = assert_rejected(
        &config_with(&[(3, "max_request_header_bytes = 70000")]),
        3,
        "server.max_request_header_bytes",
    );
    assert!(
        error.ends_with(
            "must not exceed max_request_head_bytes (65536): one line is part of the head"
        ),
        "{error}"
    );
}

#[test]
fn max_request_header_bytes_below_1024_is_rejected() {
    let error = assert_rejected(
        &config_with(&[(3, "max_request_header_bytes = 100")]),
        3,
        "server.max_request_header_bytes",
    );
    assert!(error.ends_with("must be at least 1024"), "{error}");
}

#[test]
fn zero_max_size_is_rejected() {
    assert_rejected(
        &config_with(&[(14, "max_size = 0"), (15, "min_idle = 0")]),
        14,
        "upstream[0].pool.max_size",
    );
}

#[test]
fn zero_timeout_is_rejected() {
    assert_rejected(
        &config_with(&[(10, "connect_timeout = \"0s\"")]),
        10,
        "connect_timeout",
    );
}

#[test]
fn bad_duration_string_is_rejected() {
    assert_rejected(
        &config_with(&[(11, "response_timeout = \"30 parsecs\"")]),
        11,
        "response_timeout",
    );
}

#[test]
fn toml_syntax_error_is_rejected() {
    assert_rejected(&config_with(&[(14, "max_size = = 4")]), 14, "max_size");
}

#[test]
fn wrong_value_type_is_rejected() {
    assert_rejected(&config_with(&[(14, "max_size = \"four\"")]), 14, "max_size");
}

#[test]
fn an_adaptive_switch_that_is_not_a_boolean_is_rejected() {
    assert_rejected(&config_with(&[(14, "adaptive = \"yes\"")]), 14, "adaptive");
}

#[test]
fn missing_config_file_exits_2() {
    let dir = TempDir::new();
    let missing = dir.path().join("nope.toml");
    let run = proxy::run(&["--config", missing.to_str().unwrap()], RUN_TIMEOUT);
    assert_eq!(run.code, Some(2), "stderr:\n{}", run.stderr);
    assert!(
        run.stderr.contains("nope.toml"),
        "the error names the file: {}",
        run.stderr
    );
}

#[test]
fn unknown_argument_exits_2() {
    let run = proxy::run(&["--no-such-flag"], RUN_TIMEOUT);
    assert_eq!(run.code, Some(2), "stderr:\n{}", run.stderr);
}

#[test]
fn check_accepts_the_shipped_proxy_toml() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.toml");
    let run = proxy::run(
        &["check", "--config", shipped.to_str().unwrap()],
        RUN_TIMEOUT,
    );
    assert_eq!(
        run.code,
        Some(0),
        "stderr:\n{}\nstdout:\n{}",
        run.stderr,
        run.stdout
    );
    let output = format!("{}{}", run.stdout, run.stderr);
    assert!(
        output.contains("legacy") && output.contains("127.0.0.1:8000"),
        "`check` prints the effective settings:\n{output}"
    );
}

#[test]
fn zero_tunnel_idle_timeout_is_rejected() {
    assert_rejected(
        &config_with(&[(3, "tunnel_idle_timeout = \"0s\"")]),
        3,
        "server.tunnel_idle_timeout",
    );
}

#[test]
fn zero_client_keepalive_retries_are_rejected() {
    assert_rejected(
        &config_with(&[(
            3,
            "tcp_keepalive = { time = \"1s\", interval = \"1s\", retries = 0 }",
        )]),
        3,
        "server.tcp_keepalive.retries",
    );
}

#[test]
fn upgrade_protocol_with_a_version_is_rejected() {
    let text = config_with(&[(3, "upgrades = [\"websocket\", \"h2c/2\"]")]);
    assert_rejected(&text, 3, "server.upgrades[1]");
}

#[test]
fn zero_workers_is_rejected_with_the_way_to_ask_for_one_per_core() {
    let error = assert_rejected(&config_with(&[(3, "workers = 0")]), 3, "server.workers");
    assert!(error.contains("\"auto\""), "{error}");
}

#[test]
fn workers_that_is_neither_auto_nor_a_number_is_rejected() {
    let error = assert_rejected(&config_with(&[(3, "workers = \"all\"")]), 3, "workers");
    assert!(error.contains("`all`"), "{error}");
}
