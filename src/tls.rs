//! TLS termination for `tls_listen`: the rustls server configuration built from `[server.tls]`,
//! certificate reload, and the handshake under `handshake_timeout`, counted in the TLS metrics.

mod certs;
mod sni;
mod validity;

use std::sync::Arc;
use std::time::Duration;

use rustls::HandshakeKind;
use rustls::server::{ServerConfig, ServerSessionMemoryCache};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::{ServerTlsConfig, TlsVersion};
use crate::metrics::{METRICS, TlsSide};
pub use certs::{CertError, LoadedCert, PemFile, Problem, load_all};
use sni::SniResolver;

/// Sessions the server-side cache holds (TLS 1.2 session IDs, and TLS 1.3 resumption when
/// tickets are off); a few hundred bytes each, the least recently used are dropped.
const SESSION_CACHE_ENTRIES: usize = 10_240;

/// ALPN: HTTP/1.1, and HTTP/1.0 for clients that offer only that (`curl --http1.0`); a client
/// offering neither is refused, as RFC 7301 §3.2 says.
const ALPN: [&[u8]; 2] = [b"http/1.1", b"http/1.0"];

/// Why the TLS listeners could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("[server.tls] {0}")]
    Certificate(#[from] CertError),
    #[error("[server.tls] cannot set up TLS: {0}")]
    Setup(#[from] rustls::Error),
}

/// Why a client's handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("no complete handshake within handshake_timeout ({0:?})")]
    Timeout(Duration),
    #[error("{0}")]
    Failed(std::io::Error),
}

/// Terminates TLS for every TLS listener of every worker.
pub struct TlsTerminator {
    acceptor: TlsAcceptor,
    resolver: Arc<SniResolver>,
    handshake_timeout: Duration,
}

impl TlsTerminator {
    /// Reads and checks the certificates and builds the server configuration.
    pub fn new(config: &ServerTlsConfig) -> Result<TlsTerminator, TlsError> {
        let resolver = Arc::new(SniResolver::new(load_all(&config.certificates)?));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = match config.min_version {
            TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::V1_3 => &[&rustls::version::TLS13],
        };
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        server.alpn_protocols = ALPN.map(<[u8]>::to_vec).to_vec();
        server.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
        if config.session_tickets {
            server.ticketer = rustls::crypto::ring::Ticketer::new()?;
        }
        Ok(TlsTerminator {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            resolver,
            handshake_timeout: config.handshake_timeout,
        })
    }

    /// Re-reads the certificate files; on any problem the running certificates stay.
    /// Ticket keys and cached sessions are kept, so clients still resume.
    pub fn reload(&self, config: &ServerTlsConfig) -> Result<(), CertError> {
        self.resolver.replace(load_all(&config.certificates)?);
        Ok(())
    }

    /// The handshake with a freshly accepted client, within `handshake_timeout` of the accept;
    /// counted in `longhaul_tls_handshakes_total` either way.
    pub async fn accept(&self, stream: TcpStream) -> Result<TlsStream<TcpStream>, HandshakeError> {
        let limit = self.handshake_timeout;
        let result = tokio::time::timeout(limit, self.handshake(stream))
            .await
            .unwrap_or(Err(HandshakeError::Timeout(limit)));
        match result {
            Ok((tls, took)) => {
                let resumed = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
                METRICS.tls.record(TlsSide::Client, true, resumed, took);
                Ok(tls)
            }
            Err(e) => {
                METRICS
                    .tls
                    .record(TlsSide::Client, false, false, Duration::ZERO);
                Err(e)
            }
        }
    }

    /// The handshake and how long it took from the client's first byte.
    async fn handshake(
        &self,
        stream: TcpStream,
    ) -> Result<(TlsStream<TcpStream>, Duration), HandshakeError> {
        // Nothing is allocated for TLS until the client's first bytes arrive: a connection that
        // never sends a ClientHello costs only its socket and its task.
        stream
            .peek(&mut [0u8; 1])
            .await
            .map_err(HandshakeError::Failed)?;
        let started = Instant::now();
        let tls = self
            .acceptor
            .accept(stream)
            .await
            .map_err(HandshakeError::Failed)?;
        Ok((tls, started.elapsed()))
    }
}
