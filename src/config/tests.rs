use std::path::Path;

use super::*;

const BASE: &str = "[[upstream]]\nname = \"legacy\"\nservers = [\"127.0.0.1:8000\"]\n";

fn error_of(text: &str) -> (usize, String) {
    match Config::parse(text, Path::new("t.toml")) {
        Err(ConfigError::Invalid { line, key, .. }) => (line, key),
        other => panic!("expected an invalid config, got {other:?}"),
    }
}

#[test]
fn the_shipped_config_is_valid() {
    let config = Config::embedded_default();
    assert_eq!(config.upstream[0].name, "legacy");
    assert_eq!(config.server.workers, Workers::Auto);
}

#[test]
fn a_wildcard_must_be_a_whole_label() {
    let text = format!("{BASE}[[route]]\nhost = \"*example.com\"\nupstream = \"legacy\"\n");
    assert_eq!(error_of(&text), (5, "route[0].host".into()));
}

#[test]
fn a_server_needs_a_real_port() {
    let text = BASE.replace("127.0.0.1:8000", "127.0.0.1:0");
    assert_eq!(error_of(&text), (3, "upstream[0].servers[0]".into()));
}

#[test]
fn reverse_mode_needs_an_upstream_even_with_a_transparent_table() {
    let text = "[transparent]\n[[transparent.allow]]\nname = \"n\"\ncidr = \"10.0.0.0/8\"\nports = \"80\"\n";
    assert_eq!(error_of(text).1, "upstream");
}

#[test]
fn a_cidr_with_an_empty_prefix_is_rejected() {
    let text = format!(
        "{BASE}[transparent]\n[[transparent.allow]]\nname = \"n\"\ncidr = \"10.0.0.0/\"\nports = \"80\"\n"
    );
    assert_eq!(error_of(&text), (7, "transparent.allow[0].cidr".into()));
}

#[test]
fn a_partial_transparent_pool_keeps_the_transparent_defaults() {
    let text = format!(
        "{BASE}[transparent]\n[transparent.pool]\nidle_timeout = \"5s\"\n[[transparent.allow]]\nname = \"n\"\ncidr = \"10.0.0.0/8\"\nports = \"80\"\n"
    );
    let config = Config::parse(&text, Path::new("t.toml")).expect("valid");
    let pool = config.transparent.expect("table").pool;
    assert_eq!(
        (pool.max_size, pool.idle_timeout),
        (8, Duration::from_secs(5))
    );
}

#[test]
fn an_upgrade_protocol_must_be_a_bare_token() {
    let text = format!("[server]\nupgrades = [\"websocket\", \"h2c/1.0\"]\n{BASE}");
    assert_eq!(error_of(&text), (2, "server.upgrades[1]".into()));
}

#[test]
fn upgrades_default_to_websocket_only() {
    let config = Config::parse(BASE, Path::new("t.toml")).expect("valid");
    assert_eq!(config.server.upgrades, vec!["websocket".to_string()]);
}

#[test]
fn a_burst_waits_and_a_failed_connect_is_retried_by_default() {
    let config = Config::parse(BASE, Path::new("t.toml")).expect("valid");
    let u = &config.upstream[0];
    assert_eq!(
        (u.connect_timeout, u.retry_window),
        (Duration::from_secs(3), Duration::from_secs(3))
    );
    assert_eq!(
        (
            u.pool.wait_timeout,
            u.pool.max_waiters,
            u.pool.max_connecting
        ),
        (Duration::from_secs(5), 1024, 4)
    );
}

#[test]
fn max_connecting_must_be_positive() {
    let text = format!("{BASE}[upstream.pool]\nmax_connecting = 0\n");
    assert_eq!(
        error_of(&text),
        (5, "upstream[0].pool.max_connecting".into())
    );
}

#[test]
fn retry_window_must_be_positive() {
    let text = format!("{BASE}retry_window = \"0s\"\n");
    assert_eq!(error_of(&text), (4, "upstream[0].retry_window".into()));
}

#[test]
fn a_transparent_pool_takes_the_queue_keys() {
    let text = format!(
        "{BASE}[transparent]\n[transparent.pool]\nmax_waiters = 7\nmax_connecting = 2\n[[transparent.allow]]\nname = \"n\"\ncidr = \"10.0.0.0/8\"\nports = \"80\"\n"
    );
    let config = Config::parse(&text, Path::new("t.toml")).expect("valid");
    let pool = config.transparent.expect("table").pool;
    assert_eq!((pool.max_waiters, pool.max_connecting), (7, 2));
}
