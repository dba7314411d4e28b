//! Metric series exist before the first event: every family of the README's metric table is on
//! `/metrics` before any traffic, and every series whose labels are known at start-up (close
//! reasons, error kinds, tunnel kinds, per configured upstream and server, and again for servers
//! a reload adds) is exported at 0, so rates, alerts and dashboards show 0 instead of "No data".

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::backend::Backend;
use support::proxy::{self, Proxy, ProxyConfig};

/// The metric names in the first column of the README's metric table.
fn readme_families() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let families: Vec<String> = readme
        .lines()
        .filter_map(|line| line.strip_prefix("| `longhaul_"))
        .filter_map(|rest| rest.split('`').next())
        .map(|name| format!("longhaul_{name}"))
        .collect();
    assert!(
        families.len() > 20,
        "README metric table not found: {families:?}"
    );
    families
}

/// The families whose README row says they exist in transparent mode only.
fn transparent_only_families() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    readme
        .lines()
        .filter(|line| line.starts_with("| `longhaul_") && line.contains("(transparent mode)"))
        .filter_map(|line| line.split('`').nth(1))
        .map(str::to_string)
        .collect()
}

/// The family names `/metrics` declares with a `# TYPE` line.
fn exported_families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect()
}

fn reverse_proxy(backend: &Backend) -> Proxy {
    Proxy::start(&ProxyConfig::single(&[backend.addr()]))
}

/// A transparent-mode proxy with one allow rule, `lan`; no client is ever redirected to it.
fn transparent_proxy() -> Proxy {
    let mut config = ProxyConfig::empty()
        .server("mode", "\"transparent\"")
        .render();
    config.push_str(
        "\n[transparent]\nmark = 0\n\n[[transparent.allow]]\nname = \"lan\"\n\
         cidr = \"10.0.0.0/8\"\nports = \"80\"\n",
    );
    Proxy::start_raw(&config)
}

#[test]
fn every_family_of_the_readme_table_is_exported_before_any_traffic() {
    let backend = Backend::start();
    let reverse = exported_families(&reverse_proxy(&backend).metrics_text());
    let transparent = exported_families(&transparent_proxy().metrics_text());
    let only_transparent = transparent_only_families();
    for family in readme_families() {
        let (mode, exported) = if only_transparent.contains(&family) {
            ("transparent", &transparent)
        } else {
            ("reverse", &reverse)
        };
        assert!(
            exported.contains(&family),
            "{family} is missing from /metrics in {mode} mode before any traffic; exported: {exported:?}"
        );
    }
}

#[test]
fn per_server_close_reasons_are_exported_at_zero_before_any_traffic() {
    let backend = Backend::start();
    let proxy = reverse_proxy(&backend);
    let text = proxy.metrics_text();
    let server = backend.addr().to_string();
    for reason in [
        "idle_timeout",
        "max_lifetime",
        "max_requests",
        "peer_closed",
        "not_reusable",
        "error",
        "removed",
        "shutdown",
    ] {
        let labels = [("server", server.as_str()), ("reason", reason)];
        assert_eq!(
            proxy::metric_in(&text, "longhaul_upstream_connections_closed_total", &labels),
            Some(0.0),
            "closed_total{{reason=\"{reason}\"}}"
        );
    }
}

#[test]
fn per_upstream_error_kinds_and_tunnel_kinds_are_exported_at_zero_before_any_traffic() {
    let backend = Backend::start();
    let proxy = reverse_proxy(&backend);
    let text = proxy.metrics_text();
    for kind in ["connect", "timeout", "reset", "protocol", "pool_timeout"] {
        let labels = [("upstream", "legacy"), ("kind", kind)];
        assert_eq!(
            proxy::metric_in(&text, "longhaul_upstream_errors_total", &labels),
            Some(0.0),
            "errors_total{{kind=\"{kind}\"}}"
        );
    }
    for kind in ["upgrade", "connect"] {
        let labels = [("upstream", "legacy"), ("kind", kind)];
        assert_eq!(
            proxy::metric_in(&text, "longhaul_tunnels_total", &labels),
            Some(0.0),
            "tunnels_total{{kind=\"{kind}\"}}"
        );
    }
}

#[test]
fn the_status_codes_longhaul_answers_itself_are_exported_at_zero_per_upstream() {
    let backend = Backend::start();
    let proxy = reverse_proxy(&backend);
    let text = proxy.metrics_text();
    for upstream in ["legacy", "none"] {
        for code in ["502", "503", "504"] {
            let labels = [("upstream", upstream), ("code", code)];
            assert_eq!(
                proxy::metric_in(&text, "longhaul_requests_total", &labels),
                Some(0.0),
                "requests_total{{upstream=\"{upstream}\",code=\"{code}\"}}"
            );
        }
    }
}

#[test]
fn a_server_added_by_a_reload_is_exported_at_zero_before_its_first_request() {
    let first = Backend::start();
    let added = Backend::start();
    let proxy = Proxy::start(&ProxyConfig::single(&[first.addr()]));
    let added_s = added.addr().to_string();
    let labels = [("server", added_s.as_str()), ("reason", "error")];

    std::fs::write(
        &proxy.config_path,
        ProxyConfig::single(&[first.addr(), added.addr()]).render(),
    )
    .expect("rewrite config");
    proxy.signal("HUP");

    assert!(
        support::wait_until(Duration::from_secs(5), || {
            proxy.metric_or_zero("longhaul_config_reloads_total", &[("result", "ok")]) == 1.0
        }),
        "the reload did not happen:\n{}",
        proxy.stderr_lines().join("\n")
    );
    assert_eq!(
        proxy.metric("longhaul_upstream_connections_closed_total", &labels),
        Some(0.0)
    );
}
