//! The config crate's error type.

use std::path::PathBuf;
use thiserror::Error;

/// Why a configuration could not be loaded. Every variant names the file or
/// the field.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid YAML in {origin}: {source}")]
    Parse {
        origin: String,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// A file named by a field cannot be read.
    #[error("{field}: cannot read {path}: {source}")]
    File {
        field: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file named by a field is not valid PEM.
    #[error("{field}: {path} is not valid PEM: {source}")]
    Pem {
        field: &'static str,
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("password hashing failed: {0}")]
    Hash(String),
}

impl ConfigError {
    /// The configuration field at fault, when the error is about one.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::Invalid { field, .. } | Self::File { field, .. } | Self::Pem { field, .. } => {
                Some(field)
            }
            Self::Read { .. } | Self::Parse { .. } | Self::Hash(_) => None,
        }
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = ConfigError> = std::result::Result<T, E>;
