//! Real servers and load tools the issue names: Python's `http.server` and `ab` with its report
//! parsed (Apache httpd is `support::apache`).

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
