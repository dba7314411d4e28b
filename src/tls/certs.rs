//! One certificate chain and its private key read from PEM files, with the checks `longhaul check`
//! makes: both parse, the key is the certificate's, the certificate has not expired.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::crypto::ring::sign::any_supported_type;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::validity;
use crate::config::CertificateConfig;

/// A usable certificate: the key rustls signs with, and the DNS names SNI is matched against.
#[derive(Debug)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// The certificate's DNS subject alternative names, lower case; `*.example.com` wildcards too.
    pub names: Vec<String>,
}

/// Which file of a `certificates` entry a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemFile {
    Cert,
    Key,
}

impl PemFile {
    pub fn as_str(self) -> &'static str {
        match self {
            PemFile::Cert => "cert",
            PemFile::Key => "key",
        }
    }
}

/// What is wrong with a certificate or key file.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("cannot read: {0}")]
    Read(std::io::Error),
    #[error("no PEM certificate in the file")]
    NoCertificate,
    #[error("not a PEM certificate chain: {0}")]
    BadPem(rustls_pki_types::pem::Error),
    #[error("not an X.509 certificate: {0}")]
    BadCertificate(String),
    #[error("no usable PEM private key in the file: {0}")]
    BadKey(String),
    #[error("the key does not belong to the certificate {0}")]
    KeyMismatch(String),
    #[error("the certificate expired at {0}")]
    Expired(humantime::Rfc3339Timestamp),
}

/// A problem with one file of entry `index` of `certificates`.
#[derive(Debug)]
pub struct CertError {
    pub index: usize,
    pub file: PemFile,
    pub path: PathBuf,
    pub problem: Problem,
}

impl CertError {
    /// The config key it is about, below `[server.tls]`: `certificates[0].key`.
    pub fn key(&self) -> String {
        format!("certificates[{}].{}", self.index, self.file.as_str())
    }

    /// The file and what is wrong with it.
    pub fn reason(&self) -> String {
        format!("`{}`: {}", self.path.display(), self.problem)
    }
}

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key(), self.reason())
    }
}

impl std::error::Error for CertError {}

/// Reads and checks every entry, in order; the first problem stops it.
pub fn load_all(entries: &[CertificateConfig]) -> Result<Vec<LoadedCert>, CertError> {
    entries
        .iter()
        .enumerate()
        .map(|(index, entry)| load(entry, SystemTime::now()).map_err(|e| e.at(index)))
        .collect()
}

/// A problem before it knows its entry.
struct Unplaced(PemFile, PathBuf, Problem);

impl Unplaced {
    fn at(self, index: usize) -> CertError {
        let Unplaced(file, path, problem) = self;
        CertError {
            index,
            file,
            path,
            problem,
        }
    }
}

fn load(entry: &CertificateConfig, now: SystemTime) -> Result<LoadedCert, Unplaced> {
    let cert_err = |p| Unplaced(PemFile::Cert, entry.cert.clone(), p);
    let key_err = |p| Unplaced(PemFile::Key, entry.key.clone(), p);
    let chain = read_chain(&entry.cert).map_err(cert_err)?;
    let leaf = webpki::EndEntityCert::try_from(&chain[0])
        .map_err(|e| cert_err(Problem::BadCertificate(e.to_string())))?;
    let names = leaf
        .valid_dns_names()
        .map(str::to_ascii_lowercase)
        .collect();
    let expires = validity::not_after(&chain[0])
        .map_err(|e| cert_err(Problem::BadCertificate(e.to_string())))?;
    if expires < now {
        return Err(cert_err(Problem::Expired(
            humantime::format_rfc3339_seconds(expires),
        )));
    }
    let key = read_key(&entry.key).map_err(key_err)?;
    let signing = any_supported_type(&key).map_err(|e| key_err(Problem::BadKey(e.to_string())))?;
    let certified = CertifiedKey::new(chain, signing);
    if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
        certified.keys_match()
    {
        let cert = format!("`{}`", entry.cert.display());
        return Err(key_err(Problem::KeyMismatch(cert)));
    }
    Ok(LoadedCert {
        key: Arc::new(certified),
        names,
    })
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, Problem> {
    let pem = std::fs::read(path).map_err(Problem::Read)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(Problem::BadPem)?;
    if chain.is_empty() {
        return Err(Problem::NoCertificate);
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, Problem> {
    let pem = std::fs::read(path).map_err(Problem::Read)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| Problem::BadKey(e.to_string()))
}
