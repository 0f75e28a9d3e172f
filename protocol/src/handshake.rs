//! The BEP 3 handshake: `19 "BitTorrent protocol"`, 8 reserved bytes, the
//! 20-byte info-hash and the 20-byte peer id: 68 bytes in all.

use crate::error::DecodeError;
use crate::ids::{InfoHash, PeerId};

/// The protocol string, preceded on the wire by its length (19).
pub const PROTOCOL: &[u8; 19] = b"BitTorrent protocol";
/// Handshake size in bytes.
pub const HANDSHAKE_LEN: usize = 68;
/// Reserved bits: Pollen sets bit 0x01 of byte 5 ("AUTH follows"), a bit no
/// BEP assigns, so a capture shows which peers speak Pollen's extension, and
/// bit [`RELAY_BIT`] of the same byte.
pub const RESERVED: [u8; 8] = [0, 0, 0, 0, 0, 0x01 | RELAY_BIT, 0, 0];
/// Bit of reserved byte 5: the sender understands RELAY (message id 65).
/// A peer whose handshake lacks it (an older Pollen) is never sent RELAY,
/// since it would take the unknown id for a protocol violation.
pub const RELAY_BIT: u8 = 0x02;

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

    /// Whether the sender understands RELAY ([`RELAY_BIT`]).
    pub fn understands_relay(&self) -> bool {
        self.reserved[5] & RELAY_BIT != 0
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

    /// Our handshake says "AUTH follows" and "understands RELAY"; one from
    /// an agent that predates RELAY (byte 5 = 0x01) does not claim RELAY.
    #[test]
    fn the_relay_bit_is_set_and_read() {
        let h = Handshake::new(InfoHash([7; 20]), PeerId([9; 20]));
        let mut b = h.to_bytes();
        assert_eq!(b[25], 0x03);
        assert!(Handshake::from_bytes(&b).unwrap().understands_relay());
        b[25] = 0x01;
        assert!(!Handshake::from_bytes(&b).unwrap().understands_relay());
    }

    proptest! {
        #[test]
        fn any_68_bytes_parse_or_error(v in proptest::collection::vec(any::<u8>(), 68)) {
            let arr: [u8; 68] = v.try_into().unwrap();
            let _ = Handshake::from_bytes(&arr);
        }
    }
}
