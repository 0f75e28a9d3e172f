//! The BEP 3 handshake: `19 "BitTorrent protocol"`, 8 reserved bytes, the
//! 20-byte info-hash and the 20-byte peer id: 68 bytes in all.

use crate::error::DecodeError;
use crate::ids::{InfoHash, PeerId};

/// The protocol string, preceded on the wire by its length (19).
pub const PROTOCOL: &[u8; 19] = b"BitTorrent protocol";
/// Handshake size in bytes.
pub const HANDSHAKE_LEN: usize = 68;
/// Reserved bits: Pollen sets bit 0x01 of byte 5 ("AUTH follows"), a bit no
/// BEP assigns, so a capture shows which peers speak Pollen's extension.
pub const RESERVED: [u8; 8] = [0, 0, 0, 0, 0, 0x01, 0, 0];

/// A parsed handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handshake {
    pub reserved: [u8; 8],
    pub info_hash: InfoHash,
    pub peer_id: PeerId,
}

impl Handshake {
    /// A Pollen handshake for `info_hash`.
    pub fn new(info_hash: InfoHash, peer_id: PeerId) -> Self {
        Self {
            reserved: RESERVED,
            info_hash,
            peer_id,
        }
    }

    /// The 68 wire bytes.
    pub fn to_bytes(&self) -> [u8; HANDSHAKE_LEN] {
        let mut b = [0u8; HANDSHAKE_LEN];
        b[0] = 19;
        b[1..20].copy_from_slice(PROTOCOL);
        b[20..28].copy_from_slice(&self.reserved);
        b[28..48].copy_from_slice(&self.info_hash.0);
        b[48..68].copy_from_slice(&self.peer_id.0);
        b
    }

    /// Parses exactly [`HANDSHAKE_LEN`] bytes.
    ///
    /// # Errors
    /// [`DecodeError::BadProtocol`] when the prefix is not BitTorrent's.
    pub fn from_bytes(b: &[u8; HANDSHAKE_LEN]) -> Result<Self, DecodeError> {
        if b[0] != 19 || &b[1..20] != PROTOCOL {
            return Err(DecodeError::BadProtocol(b[..20].to_vec()));
        }
        let mut reserved = [0u8; 8];
        reserved.copy_from_slice(&b[20..28]);
        let mut ih = [0u8; 20];
        ih.copy_from_slice(&b[28..48]);
        let mut pid = [0u8; 20];
        pid.copy_from_slice(&b[48..68]);
        Ok(Self {
            reserved,
            info_hash: InfoHash(ih),
            peer_id: PeerId(pid),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_layout() {
        let h = Handshake::new(InfoHash([7; 20]), PeerId([9; 20]));
        let b = h.to_bytes();
        assert_eq!(b[0], 19);
        assert_eq!(&b[1..20], b"BitTorrent protocol");
        assert_eq!(Handshake::from_bytes(&b).unwrap(), h);
    }

    proptest! {
        #[test]
        fn any_68_bytes_parse_or_error(v in proptest::collection::vec(any::<u8>(), 68)) {
            let arr: [u8; 68] = v.try_into().unwrap();
            let _ = Handshake::from_bytes(&arr);
        }
    }
}
