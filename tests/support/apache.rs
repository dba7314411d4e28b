//! Apache httpd 2.4 (Debian `apache2`) in the foreground on a config of its own in a temp dir,
//! loopback only, with mpm_event or mpm_prefork; stopped and started again on its address.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use super::process::Child;
use super::proxy::TempDir;
use super::real_servers::accepting;

/// The multi-processing module Apache runs with.
pub enum Mpm {
    /// Threads serve connections; keep-alive on.
    Event,
    /// One process per connection, children forked as load needs them.
    Prefork(PreforkOptions),
}

/// The prefork settings that matter here.
pub struct PreforkOptions {
    pub start_servers: usize,
    /// `MaxRequestWorkers` and `ServerLimit`: children never exceed it.
    pub max_workers: usize,
}

/// A running Apache serving `index.html` (`hello\n`) and `1k.html` (1 KiB of `x`).
pub struct Apache {
    pub addr: SocketAddr,
    binary: PathBuf,
    conf: PathBuf,
    // Field order is drop order: Apache is stopped before its directory goes.
    child: Mutex<Option<Child>>,
    dir: TempDir,
}

/// Where Debian's `apache2` binary is, or None after `tools::skip` said why.
pub fn binary() -> Option<PathBuf> {
    super::tools::require_tool("apache2")
}

impl Apache {
    /// Starts `binary` on `addr`; returns once it accepts connections.
    pub fn start(binary: &Path, addr: SocketAddr, mpm: &Mpm) -> Apache {
        let dir = TempDir::new();
        let root = dir.path().join("htdocs");
        std::fs::create_dir_all(&root).expect("create docroot");
        std::fs::write(root.join("index.html"), "hello\n").expect("write index.html");
        std::fs::write(root.join("1k.html"), vec![b'x'; 1024]).expect("write 1k.html");
        let conf = dir.path().join("httpd.conf");
        std::fs::write(&conf, config(dir.path(), &root, addr, mpm)).expect("write httpd.conf");
        let apache = Apache {
            addr,
            binary: binary.to_path_buf(),
            conf,
            child: Mutex::new(None),
            dir,
        };
        apache.start_again();
        apache
    }

    /// Starts the stopped Apache on its address again; returns once it accepts connections.
    pub fn start_again(&self) {
        let mut running = self.child.lock().unwrap();
        assert!(running.is_none(), "apache2 is running already");
        let child = Child::spawn_drained(
            "apache2",
            Command::new(&self.binary)
                .arg("-f")
                .arg(&self.conf)
                .arg("-DFOREGROUND")
                // Its own process group: at a stop, Apache signals its whole group.
                .process_group(0),
        );
        let up = super::wait_until(Duration::from_secs(10), || accepting(self.addr));
        assert!(
            up,
            "apache2 never accepted on {}: {}\n{}",
            self.addr,
            self.error_log(),
            child.output()
        );
        *running = Some(child);
    }

    /// SIGTERM, as `apache2 -k stop` sends: the parent stops its children (a SIGKILL would
    /// orphan them) and closes the listener; returns once it has exited.
    pub fn stop(&self) {
        let Some(mut child) = self.child.lock().unwrap().take() else {
            return;
        };
        if child.terminate(Duration::from_secs(10)).is_none() {
            panic!("apache2 did not stop within 10 s: {}", self.error_log());
        }
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Apache {
    /// A bounded stop; `Child`'s kill is the last resort.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            child.terminate(Duration::from_secs(10));
        }
    }
}

fn config(dir: &Path, root: &Path, addr: SocketAddr, mpm: &Mpm) -> String {
    let modules = "/usr/lib/apache2/modules";
    // As root, Apache's children must switch to an unprivileged user.
    let user = if running_as_root() {
        "User nobody\nGroup nogroup\n"
    } else {
        ""
    };
    let mpm = match mpm {
        Mpm::Event => format!("LoadModule mpm_event_module {modules}/mod_mpm_event.so\n"),
        Mpm::Prefork(o) => format!(
            "LoadModule mpm_prefork_module {modules}/mod_mpm_prefork.so\n\
             StartServers {start}\nMinSpareServers 5\nMaxSpareServers 10\n\
             ServerLimit {max}\nMaxRequestWorkers {max}\nMaxConnectionsPerChild 0\n\
             KeepAliveTimeout 2\nMaxKeepAliveRequests 100\n",
            start = o.start_servers,
            max = o.max_workers,
        ),
    };
    format!(
        "ServerRoot \"{d}\"\nDefaultRuntimeDir \"{d}\"\n\
         {mpm}\
         LoadModule authz_core_module {modules}/mod_authz_core.so\n\
         {user}\
         Listen {addr}\nServerName localhost\n\
         PidFile \"{d}/httpd.pid\"\nMutex file:{d} default\n\
         ErrorLog \"{d}/error.log\"\nLogLevel warn\n\
         KeepAlive On\n\
         DocumentRoot \"{r}\"\n<Directory \"{r}\">\n  Require all granted\n</Directory>\n",
        d = dir.display(),
        r = root.display(),
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
