//! TLS settings of the management ports.
//!
//! [`Tls`] is GoFD's `net.tls` (`cert`, `key`): when it is set, that
//! process's management port speaks HTTPS. [`TlsTrust`] is Pollen's addition
//! for the other end of the connection: how the server trusts the agents'
//! certificates (`net.agentTls`) and how an agent trusts the server's
//! (`server.tls`).
//!
//! The files are read and parsed here, during validation, so that a missing
//! file or one without a certificate or key is a [`ConfigError`] naming the
//! field. The crates that serve or connect build their rustls settings from
//! what [`Tls::load`] and [`TlsTrust::load_ca`] return.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, Result};

/// TLS files for a management port (GoFD's `net.tls`). Both are PEM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// How a client trusts a management port's certificate. Its presence
/// means "speak HTTPS" (Pollen's addition; GoFD has no such keys).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsTrust {
    /// PEM file of the CA certificates (or self-signed certificates) to
    /// trust. When set, only these are trusted; when absent, the Mozilla
    /// roots built into Pollen are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Accept any certificate, as GoFD does. The traffic is encrypted but
    /// the other end is not authenticated, so an active attacker on the
    /// path can read it.
    pub insecure: bool,
}

/// A certificate chain and its private key.
pub type CertifiedKey = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

impl Tls {
    /// Reads and parses the certificate chain and the private key.
    ///
    /// # Errors
    /// [`ConfigError`] naming `net.tls.cert` or `net.tls.key`: an empty
    /// path, an unreadable file, malformed PEM, or no certificate or key in it.
    pub fn load(&self) -> Result<CertifiedKey> {
        let certs = read_certs("net.tls.cert", &self.cert)?;
        let pem = read_file("net.tls.key", &self.key)?;
        let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
            rustls_pki_types::pem::Error::NoItemsFound => ConfigError::invalid(
                "net.tls.key",
                format!("{} holds no PEM private key", self.key.display()),
            ),
            source => ConfigError::Pem {
                field: "net.tls.key",
                path: self.key.clone(),
                source,
            },
        })?;
        Ok((certs, key))
    }
}

impl TlsTrust {
    /// Reads the `ca` certificates; empty when `ca` is not set. `prefix`
    /// names this section in errors (`net.agentTls`, `server.tls`).
    ///
    /// # Errors
    /// [`ConfigError`] naming `<prefix>.ca`; `<prefix>.insecure` when both are set.
    pub fn load_ca(&self, prefix: TrustField) -> Result<Vec<CertificateDer<'static>>> {
        match &self.ca {
            Some(_) if self.insecure => Err(ConfigError::invalid(
                prefix.insecure,
                format!("contradicts {}: trust a CA or nothing, not both", prefix.ca),
            )),
            Some(path) => read_certs(prefix.ca, path),
            None => Ok(Vec::new()),
        }
    }
}

/// The field names of one [`TlsTrust`] section, for errors.
#[derive(Clone, Copy, Debug)]
pub struct TrustField {
    pub ca: &'static str,
    pub insecure: &'static str,
}

impl TrustField {
    /// The server's `net.agentTls`.
    pub const AGENTS: Self = Self {
        ca: "net.agentTls.ca",
        insecure: "net.agentTls.insecure",
    };
    /// The agent's `server.tls`.
    pub const SERVER: Self = Self {
        ca: "server.tls.ca",
        insecure: "server.tls.insecure",
    };
}

fn read_file(field: &'static str, path: &Path) -> Result<Vec<u8>> {
    if path.as_os_str().is_empty() {
        return Err(ConfigError::invalid(field, "must be a file path"));
    }
    std::fs::read(path).map_err(|source| ConfigError::File {
        field,
        path: path.to_path_buf(),
        source,
    })
}

fn read_certs(field: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read_file(field, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| ConfigError::Pem {
            field,
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(ConfigError::invalid(
            field,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a PEM "certificate" and "key" (well-formed PEM, not real DER:
    /// this crate checks the files, rustls checks their contents).
    pub(crate) fn pem_files(dir: &Path) -> (PathBuf, PathBuf) {
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nMIIBAA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nMIIBAQ==\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        (cert, key)
    }

    #[test]
    fn load_reads_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pem_files(dir.path());
        let (certs, key) = Tls { cert, key }.load().unwrap();
        assert_eq!(certs.len(), 1);
        assert!(matches!(key, PrivateKeyDer::Pkcs8(_)));
    }

    #[test]
    fn load_ca_names_its_section() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pem_files(dir.path());
        let none = TlsTrust::default();
        assert!(none.load_ca(TrustField::SERVER).unwrap().is_empty());
        let ca = TlsTrust {
            ca: Some(cert),
            insecure: false,
        };
        assert_eq!(ca.load_ca(TrustField::SERVER).unwrap().len(), 1);
        let not_a_cert = TlsTrust {
            ca: Some(key),
            insecure: false,
        };
        let e = not_a_cert.load_ca(TrustField::AGENTS).unwrap_err();
        assert_eq!(e.field(), Some("net.agentTls.ca"), "{e}");
        let gone = TlsTrust {
            ca: Some(dir.path().join("gone.pem")),
            insecure: false,
        };
        let e = gone.load_ca(TrustField::SERVER).unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::File {
                    field: "server.tls.ca",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("gone.pem"), "{e}");
    }
}
