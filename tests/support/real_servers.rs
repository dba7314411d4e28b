//! Real servers and load tools the issue names: Python's `http.server`, Apache httpd on a config
//! of its own in a temp dir (started and stopped with `-k`), and `ab` with its report parsed.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::process::Child;
use super::proxy::TempDir;
use std::time::Duration;

/// Whether something accepts connections on `addr` right now.
pub fn accepting(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

fn wait_accepting(addr: SocketAddr, what: &str) {
    assert!(
        super::wait_until(Duration::from_secs(10), || accepting(addr)),
        "{what} never accepted connections on {addr}"
    );
}

/// A document root with `index.html` (`hello\n`).
fn docroot(dir: &Path) -> PathBuf {
    let root = dir.join("htdocs");
    std::fs::create_dir_all(&root).expect("create docroot");
    std::fs::write(root.join("index.html"), "hello\n").expect("write index.html");
    root
}

// === python3 -m http.server ===

/// `python3 -m http.server` (HTTP/1.0, one connection per request, listen backlog 5) serving
/// a temp dir; killed on drop.
pub struct PythonHttpServer {
    // Field order is drop order: the server is killed before its directory goes.
    _child: Child,
    pub addr: SocketAddr,
    _dir: TempDir,
}

impl PythonHttpServer {
    pub fn start(addr: SocketAddr) -> PythonHttpServer {
        let dir = TempDir::new();
        let root = docroot(dir.path());
        let child = Child::spawn_drained(
            "python3 -m http.server",
            Command::new("python3")
                .args(["-m", "http.server", &addr.port().to_string()])
                .args(["--bind", &addr.ip().to_string()])
                .arg("--directory")
                .arg(&root),
        );
        wait_accepting(addr, "python3 -m http.server");
        PythonHttpServer {
            _child: child,
            addr,
            _dir: dir,
        }
    }
}

// === Apache httpd ===

/// Apache httpd (mpm_event) on a minimal config in a temp dir, serving `index.html`. Started
/// with `apache2 -f CONF -k start`; stopped with `-k stop` on `stop` and on drop.
pub struct Apache {
    pub addr: SocketAddr,
    conf: PathBuf,
    // Dropped last: Apache is stopped before its directory goes.
    dir: TempDir,
}

const APACHE_MODULES: &str = "/usr/lib/apache2/modules";

impl Apache {
    pub fn start(addr: SocketAddr) -> Apache {
        let temp = TempDir::new();
        let dir = temp.path();
        let root = docroot(dir);
        let conf = dir.join("httpd.conf");
        let d = dir.display();
        let text = format!(
            "ServerRoot \"{d}\"\n\
             DefaultRuntimeDir \"{d}\"\n\
             PidFile \"{d}/httpd.pid\"\n\
             ErrorLog \"{d}/error.log\"\n\
             LoadModule mpm_event_module {APACHE_MODULES}/mod_mpm_event.so\n\
             LoadModule authz_core_module {APACHE_MODULES}/mod_authz_core.so\n\
             Listen {addr}\n\
             ServerName {ip}\n\
             User nobody\n\
             Group nogroup\n\
             KeepAlive On\n\
             DocumentRoot \"{root}\"\n\
             <Directory \"{root}\">\n  Require all granted\n</Directory>\n",
            ip = addr.ip(),
            root = root.display(),
        );
        std::fs::write(&conf, text).expect("write httpd.conf");
        let apache = Apache {
            addr,
            conf,
            dir: temp,
        };
        apache.run_start();
        apache
    }

    fn control(&self, action: &str) {
        let out = Command::new("apache2")
            .arg("-f")
            .arg(&self.conf)
            .args(["-k", action])
            .output()
            .expect("run apache2");
        assert!(
            out.status.success(),
            "apache2 -k {action}: {}\n{}\nerror.log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.error_log()
        );
    }

    fn run_start(&self) {
        self.control("start");
        wait_accepting(self.addr, "apache2");
    }

    /// `apache2 -k start` again; returns once it accepts connections.
    pub fn start_again(&self) {
        self.run_start();
    }

    /// `apache2 -k stop`; returns once the master process is gone.
    pub fn stop(&self) {
        let Some(pid) = self.pid() else { return };
        self.control("stop");
        let gone = super::wait_until(Duration::from_secs(10), || {
            !Path::new(&format!("/proc/{pid}")).exists()
        });
        assert!(gone, "apache2 (pid {pid}) did not stop");
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join("httpd.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Apache {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("apache2")
                .arg("-f")
                .arg(&self.conf)
                .args(["-k", "stop"])
                .output();
            super::wait_until(Duration::from_secs(10), || {
                !Path::new(&format!("/proc/{pid}")).exists()
            });
        }
    }
}

// === ab ===

/// What `ab` reported.
#[derive(Debug)]
pub struct AbReport {
    pub complete: u64,
    pub failed: u64,
    /// "Non-2xx responses" (ab prints the line only when there are some).
    pub non_2xx: u64,
    pub text: String,
}

/// Runs `ab -n requests -c concurrency url` and parses its report.
pub fn ab(requests: u32, concurrency: u32, url: &str) -> AbReport {
    let out = Command::new("ab")
        .args([
            "-n",
            &requests.to_string(),
            "-c",
            &concurrency.to_string(),
            url,
        ])
        .output()
        .expect("run ab");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ab exited with {}:\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    AbReport {
        complete: field("Complete requests:").expect("ab printed `Complete requests`"),
        failed: field("Failed requests:").expect("ab printed `Failed requests`"),
        non_2xx: field("Non-2xx responses:").unwrap_or(0),
        text,
    }
}
