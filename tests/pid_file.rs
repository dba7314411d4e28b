//! `[server] pid_file`: the running proxy's pid, written once it listens, removed at a clean exit
//! unless another process has taken the file over.

mod support;

use std::path::Path;
use std::time::Duration;

use support::backend::Backend;
use support::proxy::{self, Proxy, ProxyConfig, TempDir};

fn config_with_pid_file(backend: &Backend, path: &Path) -> ProxyConfig {
    ProxyConfig::single(&[backend.addr()])
        .server("pid_file", &format!("{:?}", path.display().to_string()))
}

#[test]
fn the_pid_file_names_the_running_process() {
    let backend = Backend::start();
    let dir = TempDir::new();
    let path = dir.path().join("longhaul.pid");
    let proxy = Proxy::start(&config_with_pid_file(&backend, &path));
    let text = std::fs::read_to_string(&path).expect("the pid file exists once longhaul started");
    assert_eq!(text, format!("{}\n", proxy.pid()));
}

#[test]
fn the_pid_file_is_removed_at_a_clean_exit() {
    let backend = Backend::start();
    let dir = TempDir::new();
    let path = dir.path().join("longhaul.pid");
    let mut proxy = Proxy::start(&config_with_pid_file(&backend, &path));
    let status = proxy.stop().expect("longhaul exits on SIGTERM");
    assert_eq!((status.code(), path.exists()), (Some(0), false));
}

#[test]
fn a_pid_file_naming_another_process_is_left_at_exit() {
    let backend = Backend::start();
    let dir = TempDir::new();
    let path = dir.path().join("longhaul.pid");
    let mut proxy = Proxy::start(&config_with_pid_file(&backend, &path));
    std::fs::write(&path, "1\n").unwrap();
    proxy.stop().expect("longhaul exits on SIGTERM");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n");
}

#[test]
fn a_pid_file_that_cannot_be_written_fails_the_start_naming_it() {
    let backend = Backend::start();
    let dir = TempDir::new();
    let path = dir.path().join("missing-dir").join("longhaul.pid");
    let config = dir.write_config(&config_with_pid_file(&backend, &path).render());
    let run = proxy::run(
        &["--config", config.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert_eq!(run.code, Some(1), "stderr: {}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "error: cannot write the pid file {}",
            path.display()
        )),
        "stderr: {}",
        run.stderr
    );
}
