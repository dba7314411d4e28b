//! TLS to backends: the one `ClientConfig` an upstream's servers share (system roots or `ca`,
//! an optional client certificate, `verify = false`), loaded from `[upstream.tls]`, and the handshake.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, HandshakeKind, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::UpstreamTlsConfig;

/// An upstream's loaded TLS settings. Two are equal when the settings and the bytes of every file
/// they name are equal: a reload keeps a pool (and its session cache) only then.
#[derive(Clone)]
pub struct UpstreamTls {
    config: Arc<ClientConfig>,
    server_name: Option<String>,
    verify: bool,
    /// The settings and every loaded file's bytes, for equality.
    fingerprint: Arc<[u8]>,
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .field("verify", &self.verify)
            .finish_non_exhaustive()
    }
}

/// A file of `[upstream.tls]` that cannot be used: which key, which file, why.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct TlsFileError {
    /// `ca`, `cert` or `key` (the key of `[upstream.tls]` that names the file).
    pub key: &'static str,
    pub file: String,
    pub reason: String,
}

fn file_error(key: &'static str, file: &Path, reason: impl fmt::Display) -> TlsFileError {
    TlsFileError {
        key,
        file: file.display().to_string(),
        reason: reason.to_string(),
    }
}

/// The only crypto provider longhaul builds with.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl UpstreamTls {
    /// Loads the files `cfg` names (relative paths from `base`, the config file's directory) and
    /// builds the upstream's `ClientConfig`; its session cache resumes later connections.
    pub fn load(cfg: &UpstreamTlsConfig, base: &Path) -> Result<UpstreamTls, TlsFileError> {
        let mut fingerprint = format!("{:?}|{}|", cfg.server_name, cfg.verify).into_bytes();
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions");
        let builder = if cfg.verify {
            let roots = match &cfg.ca {
                Some(ca) => ca_roots(&read(base, ca, "ca", &mut fingerprint)?, &base.join(ca))?,
                None => system_roots()?,
            };
            builder.with_root_certificates(roots)
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        };
        let mut config = match (&cfg.cert, &cfg.key) {
            (Some(cert), Some(key)) => {
                let chain = cert_chain(&read(base, cert, "cert", &mut fingerprint)?)
                    .map_err(|r| file_error("cert", &base.join(cert), r))?;
                let key_bytes = read(base, key, "key", &mut fingerprint)?;
                let private = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| {
                    file_error("key", &base.join(key), pem_reason(e, "private key"))
                })?;
                builder
                    .with_client_auth_cert(chain, private)
                    .map_err(|e| file_error("key", &base.join(key), key_reason(e)))?
            }
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(UpstreamTls {
            config: Arc::new(config),
            server_name: cfg.server_name.clone(),
            verify: cfg.verify,
            fingerprint: fingerprint.into(),
        })
    }

    pub fn verify(&self) -> bool {
        self.verify
    }

    /// The name sent as SNI and verified for the server at `address`: `server_name`, else the
    /// address's host (an IP host is verified as an IP SAN and sends no SNI).
    pub fn name_for(&self, address: &str) -> Result<ServerName<'static>, String> {
        let host = match &self.server_name {
            Some(name) => name.as_str(),
            None => host_of(address),
        };
        ServerName::try_from(host.to_string())
            .map_err(|_| format!("`{host}` is not a DNS name or an IP address"))
    }

    /// The TLS handshake on a connected socket; whether the session was resumed.
    pub async fn handshake(
        &self,
        name: ServerName<'static>,
        tcp: TcpStream,
    ) -> Result<(TlsStream<TcpStream>, bool), HandshakeError> {
        let stream = TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
            .map_err(HandshakeError::from_io)?;
        let resumed = stream.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
        Ok((stream, resumed))
    }
}

/// A failed handshake: a TLS failure (the certificate, an alert, a protocol error) or the socket's.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake failed: {0}")]
    Tls(rustls::Error),
    #[error("TLS handshake failed: {0}")]
    Io(io::Error),
}

impl HandshakeError {
    fn from_io(e: io::Error) -> HandshakeError {
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(tls) => HandshakeError::Tls(tls.clone()),
            None => HandshakeError::Io(e),
        }
    }
}

/// The host part of `host:port` or `[v6]:port`.
pub fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn read(
    base: &Path,
    file: &PathBuf,
    key: &'static str,
    fingerprint: &mut Vec<u8>,
) -> Result<Vec<u8>, TlsFileError> {
    let path = base.join(file);
    let bytes = std::fs::read(&path).map_err(|e| file_error(key, &path, e))?;
    fingerprint.extend_from_slice(key.as_bytes());
    fingerprint.extend_from_slice(&bytes);
    Ok(bytes)
}

fn cert_chain(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_reason(e, "certificate"))?;
    if chain.is_empty() {
        return Err("no PEM certificate in the file".into());
    }
    Ok(chain)
}

fn ca_roots(pem: &[u8], path: &Path) -> Result<RootCertStore, TlsFileError> {
    let certs = cert_chain(pem).map_err(|r| file_error("ca", path, r))?;
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| file_error("ca", path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// The system's trusted roots (`SSL_CERT_FILE`/`SSL_CERT_DIR` or the distribution's store).
fn system_roots() -> Result<RootCertStore, TlsFileError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(file_error(
            "ca",
            Path::new("(system roots)"),
            "no trusted root certificate found on this system; set `ca`",
        ));
    }
    Ok(roots)
}

fn pem_reason(e: rustls::pki_types::pem::Error, what: &str) -> String {
    match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!("no PEM {what} in the file"),
        other => format!("not a PEM {what}: {other}"),
    }
}

fn key_reason(e: rustls::Error) -> String {
    match e {
        rustls::Error::InconsistentKeys(_) => {
            "the private key does not match the certificate in `cert`".into()
        }
        other => format!("unusable private key: {other}"),
    }
}

/// `verify = false`: any certificate is accepted, the handshake's signatures are still checked.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
