//! Newtypes for identifiers that are easy to mix up.

use serde::{Deserialize, Serialize};
use std::fmt;

/// SHA-1 of the bencoded info dictionary, as in BitTorrent v1.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InfoHash(pub [u8; 20]);

impl InfoHash {
    /// Lowercase hex, 40 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 40 hex characters.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 20];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }
}

impl fmt::Display for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InfoHash({})", self.to_hex())
    }
}

impl Serialize for InfoHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for InfoHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::from_hex(&s)
            .ok_or_else(|| serde::de::Error::custom("info hash must be 40 hex digits"))
    }
}

/// The 20-byte peer id of the handshake.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerId(pub [u8; 20]);

impl PeerId {
    /// A random peer id with Pollen's Azureus-style prefix `-PL0100-`.
    pub fn random() -> Self {
        let mut id = [0u8; 20];
        id[..8].copy_from_slice(b"-PL0100-");
        rand::Rng::fill(&mut rand::thread_rng(), &mut id[8..]);
        Self(id)
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", hex::encode(self.0))
    }
}

/// Index of a piece within a task's concatenated byte stream.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct PieceIndex(pub u32);

impl fmt::Display for PieceIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A user-chosen task id (GoFD's `id`). Non-empty, at most
/// [`TaskId::MAX_LEN`] bytes, no control characters and no `/`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(String);

impl TaskId {
    /// Longest accepted id in bytes.
    pub const MAX_LEN: usize = 200;

    /// Validates and wraps an id, explaining what is wrong with a bad one.
    ///
    /// # Errors
    /// Returns a human-readable reason when the id is empty, too long, or has
    /// a control character or `/`.
    pub fn new(s: impl Into<String>) -> Result<Self, &'static str> {
        let s = s.into();
        if s.trim().is_empty() {
            return Err("must not be empty");
        }
        if s.len() > Self::MAX_LEN {
            return Err("must be at most 200 bytes");
        }
        if s.chars().any(|c| c.is_control() || c == '/' || c == '\\') {
            return Err("must not contain control characters, '/' or '\\'");
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_id_rules() {
        assert!(TaskId::new("1").is_ok());
        assert!(TaskId::new("").is_err());
        assert!(TaskId::new("  ").is_err());
        assert!(TaskId::new("a/b").is_err());
        assert!(TaskId::new("a\nb").is_err());
        assert!(TaskId::new("x".repeat(201)).is_err());
    }

    #[test]
    fn info_hash_hex_round_trip() {
        let h = InfoHash([0xab; 20]);
        assert_eq!(InfoHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(InfoHash::from_hex("zz"), None);
    }
}
