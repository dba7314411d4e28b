//! Against the real thing (issue #12): Apache httpd prefork from a config written into a temp
//! dir, loopback only; the adaptive pool must follow the children Apache really has.

mod support;

use std::time::Duration;

use support::apache::{self, Apache, Mpm, PreforkOptions};
use support::client::Load;
use support::faults;
use support::proxy::{Proxy, ProxyConfig};
use support::wait_until;

const MAX_SIZE: usize = 32;
const CLIENTS: usize = 50;
const SETTLE: Duration = Duration::from_secs(30);

/// An Apache prefork with `start_servers` children (at most `max_workers`) and an adaptive
/// longhaul in front of it; None (skipped) without apache2.
fn apache_behind_longhaul(start_servers: usize, max_workers: usize) -> Option<(Apache, Proxy)> {
    let binary = apache::binary()?;
    let options = PreforkOptions {
        start_servers,
        max_workers,
    };
    let apache = Apache::start(&binary, faults::unused_port(), &Mpm::Prefork(options));
    let proxy = Proxy::start(
        &ProxyConfig::single(&[apache.addr])
            .pool("max_size", &MAX_SIZE.to_string())
            .pool("adaptive", "true"),
    );
    Some((apache, proxy))
}

fn limit(proxy: &Proxy) -> f64 {
    proxy.metric_or_zero("longhaul_pool_limit", &[("upstream", "legacy")])
}

#[test]
fn against_an_apache_with_four_children_the_limit_falls_to_within_one_probe_of_four() {
    let Some((apache, proxy)) = apache_behind_longhaul(4, 4) else {
        return;
    };
    let _load = Load::get10(proxy.addr, CLIENTS, "/1k.html");

    assert!(
        wait_until(SETTLE, || limit(&proxy) <= 5.0),
        "limit {}; apache: {}",
        limit(&proxy),
        apache.error_log()
    );
}

#[test]
fn a_cold_apache_prefork_serves_every_request_through_the_adaptive_pool() {
    let Some((_apache, proxy)) = apache_behind_longhaul(8, 64) else {
        return;
    };
    let load = Load::get10(proxy.addr, CLIENTS, "/1k.html");
    assert!(
        wait_until(SETTLE, || load.ok() >= 5000),
        "{} answered",
        load.ok()
    );

    let (ok, errors, first) = load.finish();
    assert_eq!(errors, 0, "{errors} of {} failed: {first:?}", ok + errors);
}

#[test]
fn the_limit_grows_to_max_size_as_a_cold_apache_prefork_forks_children() {
    let Some((_apache, proxy)) = apache_behind_longhaul(8, 64) else {
        return;
    };
    let _load = Load::get10(proxy.addr, CLIENTS, "/1k.html");

    assert!(
        wait_until(SETTLE, || limit(&proxy) == MAX_SIZE as f64),
        "limit {} of max_size {MAX_SIZE}",
        limit(&proxy)
    );
}
