//! The one switch for tests that need an outside tool (nginx, promtool, chromium, iptables...) or
//! root: without it a test prints `skipped: ...` to stderr and passes, unless
//! LONGHAUL_REQUIRE_TOOLS=1 (which .ci/run sets), under which the test fails instead.

use std::path::PathBuf;

/// Whether missing tools fail the test run (CI sets LONGHAUL_REQUIRE_TOOLS=1).
pub fn tools_required() -> bool {
    std::env::var("LONGHAUL_REQUIRE_TOOLS").as_deref() == Ok("1")
}

/// Says why a test cannot run: a failure under LONGHAUL_REQUIRE_TOOLS=1, a loud skip otherwise.
pub fn skip(why: &str) {
    assert!(
        !tools_required(),
        "LONGHAUL_REQUIRE_TOOLS=1 but this test cannot run: {why}"
    );
    eprintln!("skipped: {why}");
}

/// Where `tool` is on PATH (or in /usr/sbin, /sbin, where Debian puts iptables and ip).
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

/// The path of `tool`, or None after `skip` said why (which fails under LONGHAUL_REQUIRE_TOOLS=1).
pub fn require_tool(tool: &str) -> Option<PathBuf> {
    let found = find_tool(tool);
    if found.is_none() {
        skip(&format!("`{tool}` is not installed"));
    }
    found
}

/// Whether `tool` is there; if not, `skip` said why (a failure under LONGHAUL_REQUIRE_TOOLS=1).
pub fn have(tool: &str) -> bool {
    require_tool(tool).is_some()
}
