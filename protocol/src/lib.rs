//! `pollen-protocol`: everything Pollen's nodes say to each other and to clients.
//!
//! This crate is sans-I/O: it never touches a socket or a file. It holds the
//! BitTorrent-framed peer wire codec ([`message`], [`handshake`]), the
//! metainfo and its info-hash ([`metainfo`]), piece and block arithmetic
//! ([`lengths`]), the wire bitfield ([`bitfield`]), the REST payloads shared by
//! the server, the agents and the CLI ([`api`]), and the signed tokens that
//! authenticate every port ([`token`]). Keeping it free of I/O lets the codec be
//! driven by property tests and fuzzers directly.

pub mod api;
pub mod bitfield;
pub mod error;
pub mod handshake;
pub mod ids;
pub mod lengths;
pub mod message;
pub mod metainfo;
pub mod token;

pub use bitfield::Bitfield;
pub use error::{DecodeError, MetainfoError, TokenError};
pub use handshake::Handshake;
pub use ids::{InfoHash, PeerId, PieceIndex, TaskId};
pub use lengths::Lengths;
pub use message::Message;
pub use metainfo::{FileEntry, Info};
