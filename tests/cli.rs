//! The command line itself: help, version, and every subcommand parse without panicking, even
//! when whoever reads stdout has gone (`longhaul check | head -1`).

mod support;

use std::time::Duration;

use std::path::Path;

use support::proxy;

#[test]
fn help_and_version_exit_0_for_every_subcommand() {
    for args in [
        vec!["--help"],
        vec!["--version"],
        vec!["check", "--help"],
        vec!["demo", "--help"],
        vec!["backend-sim", "--help"],
    ] {
        let run = proxy::run(&args, Duration::from_secs(10));
        assert_eq!(
            run.code,
            Some(0),
            "`longhaul {}` exited {:?}\nstderr:\n{}",
            args.join(" "),
            run.code,
            run.stderr
        );
        assert!(
            !run.stdout.is_empty(),
            "`longhaul {}` printed nothing",
            args.join(" ")
        );
    }
    let version = proxy::run(&["--version"], Duration::from_secs(10));
    assert!(
        version.stdout.contains(env!("CARGO_PKG_VERSION")),
        "{}",
        version.stdout
    );
}

/// Runs `args` with stdout closed; it must exit `code` without a panic message.
fn assert_quiet_on_closed_stdout(args: &[&str], code: i32) {
    let run = proxy::run_with_stdout_closed(args, Duration::from_secs(60));
    assert!(
        !run.stderr.contains("panicked"),
        "`longhaul {}` panicked on a closed stdout:\n{}",
        args.join(" "),
        run.stderr
    );
    assert_eq!(
        run.code,
        Some(code),
        "`longhaul {}` (None = still running)\nstderr:\n{}",
        args.join(" "),
        run.stderr
    );
}

#[test]
fn check_with_stdout_closed_exits_0_without_a_panic() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.toml");
    let path = shipped.to_str().expect("utf-8 path");
    assert_quiet_on_closed_stdout(&["check", "--config", path], 0);
}

#[test]
fn help_with_stdout_closed_exits_0_without_a_panic() {
    assert_quiet_on_closed_stdout(&["--help"], 0);
}

#[test]
fn demo_with_stdout_closed_exits_0_without_a_panic() {
    assert_quiet_on_closed_stdout(&["demo", "--requests", "50", "--concurrency", "4"], 0);
}
