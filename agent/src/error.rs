//! The agent crate's one error type.
//!
//! Variants are grouped by what the caller does about them: a peer's
//! [`Error::Violation`] or [`Error::Decode`] gets that peer shunned, a
//! [`Error::Disk`] fails the task with a clear reason, and network errors
//! (timeouts, closed sockets) just end one connection.

use std::net::SocketAddr;
use std::path::PathBuf;

use pollen_protocol::{DecodeError, MetainfoError, PieceIndex, TokenError};
use thiserror::Error;

/// Everything that can go wrong in the agent and the seed.
#[derive(Debug, Error)]
pub enum Error {
    /// A file system operation failed.
    #[error("{op} {path}: {source}")]
    Disk {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A socket operation failed.
    #[error("{op}: {source}")]
    Net {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Binding a listening socket failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A socket operation did not finish within its named timeout.
    #[error("timed out: {op}")]
    Timeout { op: &'static str },
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed mid-frame while {during}")]
    UnexpectedEof { during: &'static str },
    /// The peer closed the connection cleanly where a message was required.
    #[error("connection closed while {during}")]
    Closed { during: &'static str },
    /// The peer sent bytes that are not a valid message.
    #[error("malformed message: {0}")]
    Decode(#[from] DecodeError),
    /// The peer broke the protocol.
    #[error("protocol violation: {what}")]
    Violation { what: &'static str },
    /// A piece did not match its SHA-1.
    #[error("piece {piece} failed its hash check")]
    HashMismatch { piece: PieceIndex },
    /// A token was rejected.
    #[error("token: {0}")]
    Token(#[from] TokenError),
    /// A token is valid but for someone else.
    #[error("token subject {got:?} does not match {expected:?}")]
    WrongSubject { got: String, expected: String },
    /// The metainfo could not be used.
    #[error("metainfo: {0}")]
    Metainfo(#[from] MetainfoError),
    /// A path from the network or the config is unsafe.
    #[error("unsafe path {path}: {reason}")]
    UnsafePath { path: PathBuf, reason: &'static str },
    /// The server's public key could not be loaded or fetched.
    #[error("server public key: {reason}")]
    PublicKey { reason: String },
    /// An HTTP request to the server failed.
    #[error("http {op}: {source}")]
    Http {
        op: &'static str,
        #[source]
        source: reqwest::Error,
    },
    /// `net.ip` is not set and cannot be derived from the route to the server.
    #[error("cannot derive net.ip from the route to {server} (set net.ip): {source}")]
    LocalIp {
        server: String,
        #[source]
        source: std::io::Error,
    },
    /// TLS on the management port, or towards the server, cannot be set up.
    #[error(transparent)]
    Tls(#[from] crate::https::TlsError),
    /// A blocking job panicked or was cancelled.
    #[error("background job failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// A connection was refused or dropped for a local reason (shunned
    /// peer, duplicate connection, unknown task, too many peers).
    #[error("connection refused: {reason}")]
    Refused { reason: &'static str },
    /// An internal bounded queue overflowed.
    #[error("queue full: {what}")]
    Overloaded { what: &'static str },
    /// The task was stopped while the operation ran.
    #[error("task stopped")]
    Stopped,
    /// A slim push's info dictionary came from none of its sources.
    #[error("no source delivered the info dictionary ({tried} tried; last: {last})")]
    InfoUnavailable { tried: usize, last: String },
}

impl Error {
    /// Whether the peer that caused this error must be shunned for the task.
    pub fn is_peer_fault(&self) -> bool {
        matches!(
            self,
            Error::Decode(_) | Error::Violation { .. } | Error::HashMismatch { .. }
        )
    }

    pub(crate) fn disk(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Disk { op, path, source }
    }

    pub(crate) fn net(op: &'static str) -> impl FnOnce(std::io::Error) -> Error {
        move |source| Error::Net { op, source }
    }
}

/// The agent crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
