//! nginx serving a file over TLS from a temp config (session tickets on), as a TLS backend that
//! counts its handshakes: its access log has `$connection`, `$ssl_session_reused`, `$ssl_protocol`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use super::process::Child;
use super::proxy::TempDir;
use super::tls::CertFiles;

/// How the nginx TLS backend is set up.
pub struct NginxTlsOptions {
    pub server: CertFiles,
    /// Require a client certificate signed by this CA (`ssl_verify_client on`).
    pub client_ca: Option<PathBuf>,
    /// nginx's `keepalive_timeout`: how long it keeps an idle connection.
    pub keepalive_timeout: &'static str,
}

impl NginxTlsOptions {
    pub fn new(server: CertFiles) -> NginxTlsOptions {
        NginxTlsOptions {
            server,
            client_ca: None,
            keepalive_timeout: "60s",
        }
    }
}

/// One request as nginx logged it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub connection: u64,
    /// `$ssl_session_reused`: the connection's handshake resumed a session.
    pub reused: bool,
    pub protocol: String,
    pub status: u16,
}

/// nginx (`master_process off`: one process, so a kill leaves no worker behind) on a temp
/// config, in the foreground; killed on drop.
pub struct NginxTls {
    pub addr: SocketAddr,
    // Field order is drop order: nginx is killed before its directory goes.
    child: Child,
    dir: TempDir,
}

impl NginxTls {
    pub fn start(options: &NginxTlsOptions) -> NginxTls {
        let temp = TempDir::new();
        let dir = temp.path();
        let root = dir.join("htdocs");
        std::fs::create_dir_all(&root).expect("create docroot");
        std::fs::write(root.join("index.html"), "hello over tls\n").expect("write index.html");
        let addr = super::faults::unused_port();
        let d = dir.display();
        let client = match &options.client_ca {
            Some(ca) => format!(
                "ssl_verify_client on;\n    ssl_client_certificate {};",
                ca.display()
            ),
            None => String::new(),
        };
        let conf = format!(
            "master_process off;\nerror_log {d}/error.log info;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  log_format counted '$connection $ssl_session_reused $ssl_protocol $status';\n\
               access_log {d}/access.log counted;\n\
               client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
               server {{\n    listen {addr} ssl;\n\
                 ssl_certificate {cert};\n    ssl_certificate_key {key};\n\
                 ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_session_tickets on;\n\
                 ssl_session_cache shared:tls:1m;\n    {client}\n\
                 keepalive_timeout {ka};\n    keepalive_requests 100000;\n\
                 root {root};\n  }}\n}}\n",
            cert = options.server.cert.display(),
            key = options.server.key.display(),
            ka = options.keepalive_timeout,
            root = root.display(),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let child = Child::spawn_drained(
            "nginx",
            Command::new("nginx")
                .arg("-p")
                .arg(dir)
                .arg("-c")
                .arg(&conf_path)
                .args(["-g", "daemon off;"]),
        );
        let nginx = NginxTls {
            addr,
            child,
            dir: temp,
        };
        assert!(
            super::wait_until(std::time::Duration::from_secs(10), || {
                super::real_servers::accepting(addr)
            }),
            "nginx never accepted on {addr}: {}\n{}",
            nginx.error_log(),
            nginx.child.output()
        );
        nginx
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// Every request logged so far.
    pub fn requests(&self) -> Vec<Logged> {
        let text = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let mut f = line.split_whitespace();
                Some(Logged {
                    connection: f.next()?.parse().ok()?,
                    reused: f.next()? == "r",
                    protocol: f.next()?.to_string(),
                    status: f.next()?.parse().ok()?,
                })
            })
            .collect()
    }

    /// The TLS connections that carried requests, each once, with whether it resumed a session.
    pub fn connections(&self) -> BTreeMap<u64, bool> {
        self.requests()
            .into_iter()
            .map(|r| (r.connection, r.reused))
            .collect()
    }
}
