//! A TLS backend on a std thread (rustls, certificates from `tls::Pki`): it answers one request head
//! with `101 Switching Protocols` and then echoes every byte back, over TLS.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::tls::CertFiles;

const SWITCHING: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";

/// Serves one connection: 101 after the request head, then an echo until the peer closes.
pub struct TlsUpgradeEcho {
    pub addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl TlsUpgradeEcho {
    pub fn start(server: &CertFiles) -> TlsUpgradeEcho {
        let chain = CertificateDer::pem_file_iter(&server.cert)
            .expect("read cert")
            .collect::<Result<Vec<_>, _>>()
            .expect("parse cert");
        let key = PrivateKeyDer::from_pem_file(&server.key).expect("read key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server certificate");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let thread = std::thread::spawn(move || serve_one(listener, Arc::new(config)));
        TlsUpgradeEcho {
            addr,
            thread: Some(thread),
        }
    }
}

fn serve_one(listener: TcpListener, config: Arc<rustls::ServerConfig>) {
    let Ok((tcp, _)) = listener.accept() else {
        return;
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
    let conn = rustls::ServerConnection::new(config).expect("server connection");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tls.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    if tls.write_all(SWITCHING).and_then(|()| tls.flush()).is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    while let Ok(n) = tls.read(&mut buf) {
        if n == 0 || tls.write_all(&buf[..n]).and_then(|()| tls.flush()).is_err() {
            return;
        }
    }
}

impl Drop for TlsUpgradeEcho {
    fn drop(&mut self) {
        // Unblocks an accept that never came; a served connection ends when the proxy closes it.
        let _ = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
