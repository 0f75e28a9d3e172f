//! The server crate's error type: why the server could not start or run.
//!
//! Request-level failures (a bad task, a wrong password) are not here: they
//! are [`crate::api_error::ApiError`]s, answered to the client and never fatal.

use std::path::PathBuf;
use thiserror::Error;

/// Why the server could not start, or stopped.
#[derive(Debug, Error)]
pub enum Error {
    /// A file or directory in `datadir` (or a key file) could not be used.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A key file exists but is not a usable Ed25519 key.
    #[error("key file {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    /// Refused to overwrite an existing key file.
    #[error("key file {0} already exists; refusing to overwrite it")]
    KeyExists(PathBuf),
    /// `<datadir>/credentials.yaml` is unreadable or malformed.
    #[error("credentials file {path}: {reason}")]
    Credentials { path: PathBuf, reason: String },
    /// A token could not be signed (only with a broken key).
    #[error("token: {0}")]
    Token(#[from] pollen_protocol::TokenError),
    /// Password hashing failed.
    #[error("password: {0}")]
    Password(#[from] pollen_config::ConfigError),
    /// The configuration cannot be served as given.
    #[error("config {field}: {reason}")]
    Config { field: &'static str, reason: String },
    /// Binding or serving the management port failed.
    #[error("management port {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// `net.tls` or `net.agentTls` cannot be used.
    #[error(transparent)]
    Tls(#[from] pollen_agent::https::TlsError),
    /// The seed failed to start.
    #[error("seed: {0}")]
    Seed(#[source] pollen_agent::Error),
    /// The HTTP client for agents could not be built.
    #[error("agent HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// A blocking job panicked or was cancelled.
    #[error("background job failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
