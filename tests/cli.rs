//! The command line itself: help, version, and every subcommand parse without panicking.

mod support;

use std::time::Duration;

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
