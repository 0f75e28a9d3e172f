//! All piece and block arithmetic, in one place.
//!
//! A task's files are concatenated into one byte stream of `total_length`
//! bytes, cut into pieces of `piece_length` (the last one may be shorter),
//! and each piece into blocks of `block_length` (the last block of a piece may
//! be shorter). A zero-length task has zero pieces.

use crate::ids::PieceIndex;
use crate::message::MAX_REQUEST_LEN;

/// Default block (request) size: 16 KiB, as in BitTorrent.
pub const DEFAULT_BLOCK_LEN: u32 = 16 * 1024;
/// Smallest accepted piece length.
pub const MIN_PIECE_LEN: u64 = 16 * 1024;
/// Largest accepted piece length.
pub const MAX_PIECE_LEN: u64 = 64 * 1024 * 1024;
/// Most pieces a task may have; bounds the bitfield message.
pub const MAX_PIECES: u64 = 1 << 20;
/// The piece count the adaptive piece length aims to stay under.
pub const TARGET_PIECES: u64 = 2000;

/// Piece and block geometry of one task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lengths {
    total_length: u64,
    piece_length: u32,
    block_length: u32,
    num_pieces: u32,
}

/// A block inside a piece: `(begin, length)` in bytes from the piece start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockInfo {
    pub piece: PieceIndex,
    pub begin: u32,
    pub length: u32,
}

impl Lengths {
    /// Builds the geometry.
    ///
    /// Returns `None` when the piece length is not a power of two within
    /// [`MIN_PIECE_LEN`]..=[`MAX_PIECE_LEN`], the block length is zero, above
    /// the piece length or above [`MAX_REQUEST_LEN`], or the piece count
    /// exceeds [`MAX_PIECES`].
    pub fn new(total_length: u64, piece_length: u64, block_length: u32) -> Option<Self> {
        if !piece_length.is_power_of_two()
            || !(MIN_PIECE_LEN..=MAX_PIECE_LEN).contains(&piece_length)
        {
            return None;
        }
        if block_length == 0
            || u64::from(block_length) > piece_length
            || block_length > MAX_REQUEST_LEN
        {
            return None;
        }
        let num_pieces = total_length.div_ceil(piece_length);
        if num_pieces > MAX_PIECES {
            return None;
        }
        Some(Self {
            total_length,
            piece_length: u32::try_from(piece_length).ok()?,
            block_length,
            num_pieces: u32::try_from(num_pieces).ok()?,
        })
    }

    /// The adaptive piece length for a task of `total_length` bytes: the
    /// smallest power of two, at least `min`, that keeps the piece count at or
    /// below [`TARGET_PIECES`].
    pub fn choose_piece_length(total_length: u64, min: u64) -> u64 {
        let wanted = total_length
            .div_ceil(TARGET_PIECES)
            .max(min)
            .max(MIN_PIECE_LEN);
        wanted.next_power_of_two().min(MAX_PIECE_LEN)
    }

    pub fn total_length(&self) -> u64 {
        self.total_length
    }

    pub fn piece_length(&self) -> u32 {
        self.piece_length
    }

    pub fn block_length(&self) -> u32 {
        self.block_length
    }

    pub fn num_pieces(&self) -> u32 {
        self.num_pieces
    }

    /// Whether `index` names a piece of this task.
    pub fn contains(&self, index: PieceIndex) -> bool {
        index.0 < self.num_pieces
    }

    /// Byte offset of the piece in the task stream.
    pub fn piece_offset(&self, index: PieceIndex) -> u64 {
        u64::from(index.0) * u64::from(self.piece_length)
    }

    /// Length of piece `index`, or `None` if it does not exist.
    pub fn piece_len(&self, index: PieceIndex) -> Option<u32> {
        if !self.contains(index) {
            return None;
        }
        let remaining = self.total_length - self.piece_offset(index);
        Some(remaining.min(u64::from(self.piece_length)) as u32)
    }

    /// Number of blocks in piece `index` (0 if it does not exist).
    pub fn blocks_in_piece(&self, index: PieceIndex) -> u32 {
        self.piece_len(index)
            .map_or(0, |len| len.div_ceil(self.block_length))
    }

    /// The `n`th block of piece `index`.
    pub fn block(&self, index: PieceIndex, n: u32) -> Option<BlockInfo> {
        let len = self.piece_len(index)?;
        let begin = n.checked_mul(self.block_length)?;
        if begin >= len {
            return None;
        }
        Some(BlockInfo {
            piece: index,
            begin,
            length: (len - begin).min(self.block_length),
        })
    }

    /// Iterates over the blocks of piece `index`.
    pub fn blocks(&self, index: PieceIndex) -> impl Iterator<Item = BlockInfo> + '_ {
        (0..self.blocks_in_piece(index)).filter_map(move |n| self.block(index, n))
    }

    /// Whether a request for `(begin, length)` in piece `index` lies inside
    /// the piece and is at most [`MAX_REQUEST_LEN`] long. Requests need not be
    /// block-aligned.
    pub fn valid_request(&self, index: PieceIndex, begin: u32, length: u32) -> bool {
        let Some(len) = self.piece_len(index) else {
            return false;
        };
        length > 0
            && length <= MAX_REQUEST_LEN
            && begin.checked_add(length).is_some_and(|end| end <= len)
    }

    /// Index of the block that starts at `begin`, if `begin` is block-aligned.
    pub fn block_number(&self, begin: u32) -> Option<u32> {
        begin
            .is_multiple_of(self.block_length)
            .then(|| begin / self.block_length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: u64 = 1024;

    #[test]
    fn last_piece_and_last_block_are_short() {
        let total = 40 * K * K + 12_345;
        let l = Lengths::new(total, 64 * K, 16 * 1024).unwrap();
        assert_eq!(l.num_pieces(), 641);
        let last = PieceIndex(640);
        assert_eq!(l.piece_len(last), Some(12_345));
        assert_eq!(l.blocks_in_piece(last), 1);
        assert_eq!(l.block(last, 0).unwrap().length, 12_345);
        assert_eq!(l.block(last, 1), None);
        assert_eq!(l.piece_len(PieceIndex(641)), None);
        let sum: u64 = (0..l.num_pieces())
            .map(|i| u64::from(l.piece_len(PieceIndex(i)).unwrap()))
            .sum();
        assert_eq!(sum, total);
    }

    #[test]
    fn last_block_of_a_full_piece_count() {
        let l = Lengths::new(64 * K + 20_000, 64 * K, 16 * 1024).unwrap();
        let p = PieceIndex(1);
        assert_eq!(l.piece_len(p), Some(20_000));
        assert_eq!(l.blocks_in_piece(p), 2);
        assert_eq!(
            l.block(p, 1).unwrap(),
            BlockInfo {
                piece: p,
                begin: 16_384,
                length: 20_000 - 16_384
            }
        );
        let total: u32 = l.blocks(p).map(|b| b.length).sum();
        assert_eq!(total, 20_000);
    }

    #[test]
    fn empty_task_has_no_pieces() {
        let l = Lengths::new(0, 64 * K, 16 * 1024).unwrap();
        assert_eq!(l.num_pieces(), 0);
        assert_eq!(l.piece_len(PieceIndex(0)), None);
        assert!(!l.valid_request(PieceIndex(0), 0, 1));
    }

    #[test]
    fn exactly_one_piece() {
        let l = Lengths::new(64 * K, 64 * K, 16 * 1024).unwrap();
        assert_eq!(l.num_pieces(), 1);
        assert_eq!(l.piece_len(PieceIndex(0)), Some(65_536));
        assert_eq!(l.blocks_in_piece(PieceIndex(0)), 4);
        assert_eq!(l.block(PieceIndex(0), 3).unwrap().length, 16_384);
    }

    #[test]
    fn requests_are_bounds_checked() {
        let l = Lengths::new(100_000, 64 * K, 16 * 1024).unwrap();
        assert!(l.valid_request(PieceIndex(0), 0, 16_384));
        assert!(l.valid_request(PieceIndex(1), 100_000 - 65_536 - 10, 10));
        assert!(!l.valid_request(PieceIndex(1), 100_000 - 65_536 - 10, 11));
        assert!(!l.valid_request(PieceIndex(0), u32::MAX, 2));
        assert!(!l.valid_request(PieceIndex(0), 0, 0));
        assert!(!l.valid_request(PieceIndex(0), 0, MAX_REQUEST_LEN + 1));
    }

    #[test]
    fn rejects_bad_geometry() {
        assert!(Lengths::new(10, 3 * 16 * K, 16 * 1024).is_none());
        assert!(Lengths::new(10, 8 * K, 1024).is_none());
        assert!(Lengths::new(10, 64 * K, 0).is_none());
        assert!(Lengths::new(MAX_PIECES * 16 * K + 1, 16 * K, 1024).is_none());
    }

    #[test]
    fn adaptive_piece_length() {
        assert_eq!(Lengths::choose_piece_length(0, 64 * K), 64 * K);
        assert_eq!(Lengths::choose_piece_length(40 * K * K, 64 * K), 64 * K);
        let p = Lengths::choose_piece_length(256 * K * K, 64 * K);
        assert_eq!(p, 256 * K);
        assert!(256 * K * K / p <= TARGET_PIECES);
        assert_eq!(
            Lengths::choose_piece_length(u64::MAX / 2, 64 * K),
            MAX_PIECE_LEN
        );
    }
}
