//! Typed errors of the protocol crate, one enum per concern.

use thiserror::Error;

/// A peer sent bytes that are not a valid message. Every variant means the
/// connection must be closed and the peer shunned for the task.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("message length {got} exceeds the maximum of {max} bytes")]
    TooLong { got: u32, max: u32 },
    #[error("unknown message id {0}")]
    UnknownId(u8),
    #[error("message id {id} needs a payload of {expected} bytes, got {got}")]
    BadPayloadLength { id: u8, expected: usize, got: usize },
    #[error("request length {got} is outside 1..={max}")]
    BadRequestLength { got: u32, max: u32 },
    #[error("handshake has protocol string {0:?}, expected \"BitTorrent protocol\"")]
    BadProtocol(Vec<u8>),
    #[error("auth token is not valid UTF-8")]
    AuthNotUtf8,
    #[error("info data of {len} bytes at offset {offset} does not fit in {total} bytes (or is over a chunk)")]
    BadInfoRange { offset: u32, len: usize, total: u32 },
}

/// A metainfo that cannot be trusted or used.
#[derive(Debug, Error)]
pub enum MetainfoError {
    #[error("bencode: {0}")]
    Bencode(#[from] serde_bencode::Error),
    #[error("piece length {0} must be a power of two between 16 KiB and 64 MiB")]
    BadPieceLength(u64),
    #[error("pieces field is {got} bytes, expected {expected} (20 per piece)")]
    BadPiecesLength { got: usize, expected: usize },
    #[error("too many pieces: {got} (maximum {max})")]
    TooManyPieces { got: u64, max: u64 },
    #[error("unsafe path {path:?}: {reason}")]
    UnsafePath { path: String, reason: &'static str },
    #[error("duplicate path {0:?}")]
    DuplicatePath(String),
    #[error("path {0:?} is both a file and a directory")]
    PathConflict(String),
    #[error("the task has no files")]
    NoFiles,
    #[error("total length overflows")]
    Overflow,
    #[error("bencode nested deeper than {max} lists and dictionaries")]
    TooDeep { max: usize },
}

/// A token that must not be accepted.
#[derive(Debug, Error)]
pub enum TokenError {
    #[error("token rejected: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("key: {0}")]
    Key(String),
    #[error("token is for {what} {got:?}, expected {expected:?}")]
    Mismatch {
        what: &'static str,
        got: String,
        expected: String,
    },
}
