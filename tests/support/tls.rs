//! TLS for tests: a throwaway CA and the server and client certificates it issues, made with the
//! `openssl` CLI; a blocking rustls client for short HTTPS requests; `curl` / `openssl s_client` runs.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;

use super::proxy::TempDir;

/// A certificate chain file and its key file.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA and the certificates it issues, in a temp dir removed on drop (`Pki::new`) or in the
/// caller's directory (`Pki::in_dir`).
pub struct Pki {
    _temp: Option<TempDir>,
    dir: PathBuf,
    pub ca: PathBuf,
    ca_key: PathBuf,
}

/// Runs `openssl args` in `dir`, panicking with its stderr if it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A new P-256 key in `dir/name.key`.
fn new_key(dir: &Path, name: &str) -> PathBuf {
    let key = format!("{name}.key");
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &key,
        ],
    );
    dir.join(key)
}

impl Pki {
    /// A CA `ca.pem` in a new temp dir; its certificates go there too.
    pub fn new() -> Pki {
        let temp = TempDir::new();
        let mut pki = Pki::in_dir(temp.path(), "ca");
        pki._temp = Some(temp);
        pki
    }

    /// A CA `name.pem` (key `name.key`) in `dir`, which the caller owns; its certificates go
    /// there too, so several CAs can share a directory with a config that names their files.
    pub fn in_dir(dir: &Path, name: &str) -> Pki {
        let ca_key = new_key(dir, name);
        let ca = format!("{name}.pem");
        // Distinct subjects: a verifier meeting another test CA's certificate reports an unknown
        // issuer, not a bad signature from a namesake.
        let place = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                ca_key.to_str().expect("utf-8 path"),
                "-days",
                "30",
                "-subj",
                &format!("/CN=longhaul test CA {name} {place}"),
                "-out",
                &ca,
            ],
        );
        Pki {
            _temp: None,
            dir: dir.to_path_buf(),
            ca: dir.join(ca),
            ca_key,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A server certificate for `cn` with subject names `sans` (IP addresses become `IP:`
    /// entries, the rest `DNS:`), valid for 30 days.
    pub fn issue(&self, cn: &str, sans: &[&str]) -> CertFiles {
        self.issue_for_days(cn, sans, "30", "serverAuth")
    }

    /// A client certificate (mutual TLS) for `cn`, valid for 30 days.
    pub fn issue_client(&self, cn: &str) -> CertFiles {
        self.issue_for_days(cn, &[cn], "30", "clientAuth")
    }

    /// A server certificate whose notAfter was a day ago.
    pub fn issue_expired(&self, cn: &str) -> CertFiles {
        self.issue_for_days(cn, &[cn], "-1", "serverAuth")
    }

    fn issue_for_days(&self, cn: &str, sans: &[&str], days: &str, usage: &str) -> CertFiles {
        let dir = self.dir.as_path();
        let key = new_key(dir, cn);
        let csr = format!("{cn}.csr");
        let ext = format!("{cn}.ext");
        let names: Vec<String> = sans.iter().map(|n| subject_alt_name(n)).collect();
        std::fs::write(
            dir.join(&ext),
            format!(
                "basicConstraints=CA:FALSE\nsubjectAltName={}\nextendedKeyUsage={usage}\n",
                names.join(",")
            ),
        )
        .expect("write extensions");
        let key_name = key.file_name().unwrap().to_str().unwrap().to_string();
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-key",
                &key_name,
                "-subj",
                &format!("/CN={cn}"),
                "-out",
                &csr,
            ],
        );
        let cert = format!("{cn}.pem");
        let ca_key = self.ca_key.to_str().unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                self.ca.to_str().expect("utf-8 path"),
                "-CAkey",
                ca_key,
                "-CAcreateserial",
                "-days",
                days,
                "-extfile",
                &ext,
                "-out",
                &cert,
            ],
        );
        CertFiles {
            cert: dir.join(cert),
            key,
        }
    }
}

/// `IP:addr` for an IP address, else `DNS:name`.
fn subject_alt_name(name: &str) -> String {
    match name.parse::<std::net::IpAddr>() {
        Ok(_) => format!("IP:{name}"),
        Err(_) => format!("DNS:{name}"),
    }
}

/// What a short HTTPS exchange got: the status, the head's fields and the body.
#[derive(Debug)]
pub struct TlsResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A rustls client trusting only `ca`; `server_name` is the SNI and the name verified.
pub struct TlsClient {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
}

impl TlsClient {
    pub fn new(ca: &Path, server_name: &str) -> TlsClient {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("read CA") {
            roots.add(cert.expect("CA PEM")).expect("add CA");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsClient {
            config: Arc::new(config),
            server_name: ServerName::try_from(server_name.to_string()).expect("server name"),
        }
    }

    /// A new connection with its handshake done and nothing sent.
    pub fn connect(
        &self,
        addr: SocketAddr,
    ) -> io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
        let mut conn = rustls::ClientConnection::new(self.config.clone(), self.server_name.clone())
            .map_err(io::Error::other)?;
        let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp)?;
        }
        Ok(rustls::StreamOwned::new(conn, tcp))
    }

    /// One `GET path HTTP/1.0` on a new connection, read to the end.
    pub fn get10(&self, addr: SocketAddr, path: &str) -> io::Result<TlsResponse> {
        let conn = rustls::ClientConnection::new(self.config.clone(), self.server_name.clone())
            .map_err(io::Error::other)?;
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())?;
        let mut raw = Vec::new();
        match tls.read_to_end(&mut raw) {
            Ok(_) => {}
            // A peer closing without close_notify: what arrived is the response.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
            Err(e) => return Err(e),
        }
        parse(&raw)
    }
}

fn parse(raw: &[u8]) -> io::Result<TlsResponse> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no complete response head"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("head is not UTF-8"))?;
    let (start, headers) = super::wire::parse_head(head)?;
    let status = start
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    Ok(TlsResponse {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    })
}

/// `curl -sS` with `args`, resolving `localhost` to the address's port on 127.0.0.1.
pub fn curl(addr: SocketAddr, args: &[&str], path: &str) -> Output {
    let resolve = format!("localhost:{}:127.0.0.1", addr.port());
    let url = format!("https://localhost:{}{path}", addr.port());
    Command::new("curl")
        .args(["-sS", "--max-time", "10", "--resolve", &resolve])
        .args(args)
        .arg(&url)
        .stdin(Stdio::null())
        .output()
        .expect("run curl")
}

/// `openssl s_client -connect addr args`, with `stdin` as its input; output and exit status.
pub fn s_client(addr: SocketAddr, args: &[&str], stdin: &[u8]) -> (bool, String) {
    let mut child = Command::new("timeout")
        .args(["20", "openssl", "s_client", "-connect", &addr.to_string()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl s_client");
    let mut input = child.stdin.take().expect("stdin");
    let _ = input.write_all(stdin);
    drop(input);
    let out = child.wait_with_output().expect("s_client output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The subject line s_client printed for the server's certificate, e.g. `subject=CN = a.test`.
pub fn subject(s_client_output: &str) -> Option<String> {
    s_client_output
        .lines()
        .find(|l| l.starts_with("subject="))
        .map(|l| l.trim().to_string())
}

/// How many times s_client said it resumed a session (`Reused, TLSv1.x, ...`).
pub fn reused(s_client_output: &str) -> usize {
    s_client_output
        .lines()
        .filter(|l| l.starts_with("Reused,"))
        .count()
}
