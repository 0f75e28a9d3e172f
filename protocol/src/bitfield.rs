//! The wire bitfield.

use bitvec::prelude::*;

/// Which pieces a peer has. Bit order is the wire order of BitTorrent's
/// BITFIELD message: the high bit of the first byte is piece 0 (`Msb0`).
pub type Bitfield = BitBox<u8, Msb0>;

/// An all-zero bitfield for `num_pieces` pieces.
pub fn empty(num_pieces: u32) -> Bitfield {
    bitbox![u8, Msb0; 0; num_pieces as usize]
}

/// An all-one bitfield for `num_pieces` pieces (a seed).
pub fn full(num_pieces: u32) -> Bitfield {
    bitbox![u8, Msb0; 1; num_pieces as usize]
}

/// Wire bytes of `bf`, spare bits zero.
pub fn to_bytes(bf: &Bitfield) -> Vec<u8> {
    let mut v: BitVec<u8, Msb0> = bf.to_bitvec();
    v.set_uninitialized(false);
    v.into_vec()
}

/// Parses a BITFIELD payload for a task of `num_pieces` pieces. Returns `None`
/// when the length is wrong or a spare bit is set, as BEP 3 requires.
pub fn from_bytes(bytes: &[u8], num_pieces: u32) -> Option<Bitfield> {
    let n = num_pieces as usize;
    if bytes.len() != n.div_ceil(8) {
        return None;
    }
    let bits = BitSlice::<u8, Msb0>::from_slice(bytes);
    if bits[n..].any() {
        return None;
    }
    Some(bits[..n].to_bitvec().into_boxed_bitslice())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_order_is_msb_first() {
        let mut bf = empty(10);
        bf.set(0, true);
        bf.set(9, true);
        assert_eq!(to_bytes(&bf), vec![0b1000_0000, 0b0100_0000]);
        assert_eq!(from_bytes(&[0b1000_0000, 0b0100_0000], 10), Some(bf));
    }

    #[test]
    fn rejects_wrong_length_and_spare_bits() {
        assert!(from_bytes(&[0], 10).is_none());
        assert!(from_bytes(&[0, 0, 0], 10).is_none());
        assert!(from_bytes(&[0, 0b0010_0000], 10).is_none());
        assert_eq!(from_bytes(&[], 0).map(|b| b.len()), Some(0));
    }

    #[test]
    fn full_has_every_piece() {
        let bf = full(13);
        assert_eq!(bf.count_ones(), 13);
        assert_eq!(to_bytes(&bf), vec![0xff, 0b1111_1000]);
    }
}
