//! Apache httpd 2.4 with mpm_prefork (Debian `apache2`) on a temp config, loopback only, serving a
//! 1 KiB file: one process per connection, children forked as load needs them. Stopped on drop.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::process::{Child, send_signal};
use super::proxy::TempDir;

/// The prefork settings that matter here.
pub struct PreforkOptions {
    pub start_servers: usize,
    /// `MaxRequestWorkers` and `ServerLimit`: children never exceed it.
    pub max_workers: usize,
}

/// A running prefork Apache.
pub struct Apache {
    pub addr: SocketAddr,
    // Field order is drop order: Apache is stopped before its directory goes.
    child: Child,
    dir: TempDir,
}

/// Where Debian's `apache2` binary is, or None (the caller skips via `tools`).
pub fn binary() -> Option<PathBuf> {
    super::tools::require_tool("apache2")
}

impl Apache {
    pub fn start(binary: &PathBuf, options: &PreforkOptions) -> Apache {
        let temp = TempDir::new();
        let dir = temp.path();
        let root = dir.join("htdocs");
        std::fs::create_dir_all(&root).expect("create docroot");
        std::fs::write(root.join("1k.html"), vec![b'x'; 1024]).expect("write 1k.html");
        let addr = super::faults::unused_port();
        let conf_path = dir.join("httpd.conf");
        std::fs::write(&conf_path, config(dir, &root, addr, options)).expect("write httpd.conf");
        let child = Child::spawn_drained(
            "apache2",
            Command::new(binary)
                .arg("-f")
                .arg(&conf_path)
                .arg("-DFOREGROUND")
                // Its own process group: at a stop, Apache signals its whole group.
                .process_group(0),
        );
        let apache = Apache {
            addr,
            child,
            dir: temp,
        };
        assert!(
            super::wait_until(Duration::from_secs(10), || {
                super::real_servers::accepting(addr)
            }),
            "apache2 never accepted on {addr}: {}\n{}",
            apache.error_log(),
            apache.child.output()
        );
        apache
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Apache {
    /// SIGTERM lets the parent stop its children (a SIGKILL would orphan them); then a bounded
    /// wait, and `Child`'s kill as the last resort.
    fn drop(&mut self) {
        if self.child.try_wait().is_some() {
            return;
        }
        send_signal(self.child.id() as i32, libc::SIGTERM);
        super::wait_until(Duration::from_secs(10), || self.child.try_wait().is_some());
    }
}

fn config(
    dir: &std::path::Path,
    root: &std::path::Path,
    addr: SocketAddr,
    o: &PreforkOptions,
) -> String {
    let modules = "/usr/lib/apache2/modules";
    // As root, prefork children must switch to an unprivileged user.
    let user = if running_as_root() {
        "User nobody\nGroup nogroup\n"
    } else {
        ""
    };
    format!(
        "ServerRoot \"{d}\"\n\
         LoadModule mpm_prefork_module {modules}/mod_mpm_prefork.so\n\
         LoadModule authz_core_module {modules}/mod_authz_core.so\n\
         {user}\
         Listen {addr}\nServerName localhost\n\
         PidFile \"{d}/httpd.pid\"\nMutex file:{d} default\n\
         ErrorLog \"{d}/error.log\"\nLogLevel warn\n\
         DocumentRoot \"{r}\"\n<Directory \"{r}\">\n  Require all granted\n</Directory>\n\
         StartServers {start}\nMinSpareServers 5\nMaxSpareServers 10\n\
         ServerLimit {max}\nMaxRequestWorkers {max}\nMaxConnectionsPerChild 0\n\
         KeepAlive On\nKeepAliveTimeout 2\nMaxKeepAliveRequests 100\n",
        d = dir.display(),
        r = root.display(),
        start = o.start_servers,
        max = o.max_workers,
    )
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}
