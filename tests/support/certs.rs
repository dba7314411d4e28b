//! Test certificates made with the `openssl` CLI in a temp dir: a CA, and leaf certificates it
//! signs for servers (with SANs) and clients (mutual TLS).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A certificate and its private key, as PEM files.
#[derive(Clone)]
pub struct Pem {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A self-signed CA that issues leaf certificates into `dir`.
pub struct Ca {
    pub pem: Pem,
    dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Ca {
    /// A new P-256 CA named `name` (`name.pem`, `name.key` in `dir`).
    pub fn new(dir: &Path, name: &str) -> Ca {
        let cert = format!("{name}.pem");
        let key = format!("{name}.key");
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &cert,
                "-days",
                "30",
                "-subj",
                &format!("/CN={name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        Ca {
            pem: Pem {
                cert: dir.join(cert),
                key: dir.join(key),
            },
            dir: dir.to_path_buf(),
        }
    }

    /// A leaf certificate `name` signed by this CA, valid for `sans` (`DNS:a,IP:127.0.0.1`), for
    /// servers and clients alike.
    pub fn issue(&self, name: &str, sans: &str) -> Pem {
        let dir = &self.dir;
        let (cert, key, csr, ext) = (
            format!("{name}.pem"),
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.ext"),
        );
        std::fs::write(
            dir.join(&ext),
            format!(
                "subjectAltName={sans}\nbasicConstraints=CA:FALSE\n\
                 keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n"
            ),
        )
        .expect("write extensions");
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &path_str(&self.pem.cert),
                "-CAkey",
                &path_str(&self.pem.key),
                "-CAcreateserial",
                "-out",
                &cert,
                "-days",
                "30",
                "-extfile",
                &ext,
            ],
        );
        Pem {
            cert: dir.join(cert),
            key: dir.join(key),
        }
    }
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}
