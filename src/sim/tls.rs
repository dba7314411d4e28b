//! TLS for the simulated backend: a CA and a `localhost`/127.0.0.1 server certificate generated in
//! memory at start (rcgen, ring), the rustls `ServerConfig` built from them, and the CA as PEM.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::ServerConfig;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// The names the simulated backend's certificate carries.
pub const SIM_TLS_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// A freshly generated server identity.
pub struct SimTls {
    pub config: Arc<ServerConfig>,
    /// The CA that signed the server certificate, for clients to trust (`[upstream.tls] ca`).
    pub ca_pem: String,
    /// The server certificate chain and its key (PKCS#8), as PEM: another server (the demo's
    /// longhaul TLS listener) may present the same identity.
    pub identity: SimIdentity,
}

/// A certificate chain and its private key, as PEM.
#[derive(Clone)]
pub struct SimIdentity {
    pub chain_pem: String,
    pub key_pem: String,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot generate the simulated backend's certificate: {0}")]
pub struct SimTlsError(String);

fn err(e: impl std::fmt::Display) -> SimTlsError {
    SimTlsError(e.to_string())
}

impl SimTls {
    pub fn generate() -> Result<SimTls, SimTlsError> {
        let ca_key = KeyPair::generate().map_err(err)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "longhaul backend-sim CA");
        let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let key = KeyPair::generate().map_err(err)?;
        let names = SIM_TLS_NAMES.map(String::from).to_vec();
        let cert = CertificateParams::new(names)
            .map_err(err)?
            .signed_by(&key, &issuer)
            .map_err(err)?;
        let identity = SimIdentity {
            chain_pem: format!("{}{}", cert.pem(), ca_cert.pem()),
            key_pem: key.serialize_pem(),
        };
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(err)?
                .with_no_client_auth()
                .with_single_cert(vec![cert.der().clone(), ca_cert.der().clone()], private)
                .map_err(err)?;
        Ok(SimTls {
            config: Arc::new(config),
            ca_pem: ca_cert.pem(),
            identity,
        })
    }
}
