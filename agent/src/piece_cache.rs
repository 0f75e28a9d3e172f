//! An LRU of whole pieces, bounded by bytes.
//!
//! Uploads read whole pieces through this cache so that a piece requested by
//! many peers, block by block, is read from disk about once. The `lru` crate
//! keeps the order; this type keeps the byte count and evicts until the
//! total fits. One cache may hold pieces of several tasks (the seed's does).
//!
//! The buffers of dropped pieces that nothing else still references are kept
//! (up to an eighth of the capacity) and handed out for the next reads, so
//! the cache's memory is reused from piece to piece and task to task. Left
//! to the allocator, it was not: freed memory goes back to the arena of the
//! thread that allocated it, and the server's RSS then depended on which
//! threads had read which pieces (80 to 123 MiB for a 64 MiB cache).

use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use lru::LruCache;
use pollen_protocol::{InfoHash, PieceIndex};

type Key = (InfoHash, PieceIndex);

struct Inner {
    lru: LruCache<Key, Bytes>,
    bytes: u64,
    /// Buffers of dropped pieces, for [`PieceCache::buffer`].
    spare: Vec<Vec<u8>>,
    spare_bytes: u64,
}

impl Inner {
    /// Keeps a dropped piece's buffer for reuse when nothing else holds it
    /// and the spares have room.
    fn recycle(&mut self, piece: Bytes, spare_capacity: u64) {
        let len = piece.len() as u64;
        if piece.is_unique() && self.spare_bytes + len <= spare_capacity {
            self.spare.push(Vec::from(piece));
            self.spare_bytes += len;
        }
    }
}

/// A byte-bounded piece cache shared by many connections.
pub struct PieceCache {
    inner: Mutex<Inner>,
    capacity: u64,
}

impl std::fmt::Debug for PieceCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PieceCache")
            .field("capacity", &self.capacity)
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl PieceCache {
    /// A cache of at most `capacity` bytes (0 disables it).
    pub fn new(capacity: u64) -> Self {
        Self {
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                bytes: 0,
                spare: Vec::new(),
                spare_bytes: 0,
            }),
            capacity,
        }
    }

    /// The byte bound.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether a piece of `len` bytes is worth caching: it must leave room
    /// for a few others.
    pub fn worth_caching(&self, len: u64) -> bool {
        len > 0 && len.saturating_mul(4) <= self.capacity
    }

    /// Bytes held now.
    pub fn bytes(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bytes
    }

    /// Most bytes kept in spare buffers.
    fn spare_capacity(&self) -> u64 {
        self.capacity / 8
    }

    /// A buffer of `len` bytes to read a piece into: a dropped piece's when
    /// one of that length is spare (its old contents are to be overwritten
    /// whole), else a new one.
    pub fn buffer(&self, len: usize) -> Vec<u8> {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = g.spare.iter().position(|b| b.len() == len) {
            let b = g.spare.swap_remove(i);
            g.spare_bytes -= len as u64;
            return b;
        }
        drop(g);
        vec![0u8; len]
    }

    /// Bytes held in spare buffers now.
    pub fn spare_bytes(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .spare_bytes
    }

    /// The cached piece, marking it recently used.
    pub fn get(&self, ih: &InfoHash, piece: PieceIndex) -> Option<Bytes> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .lru
            .get(&(*ih, piece))
            .cloned()
    }

    /// Adds a piece, evicting the least recently used until it fits.
    pub fn insert(&self, ih: InfoHash, piece: PieceIndex, data: Bytes) {
        let len = data.len() as u64;
        if len > self.capacity {
            return;
        }
        let spare_capacity = self.spare_capacity();
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = g.lru.put((ih, piece), data) {
            g.bytes -= old.len() as u64;
            g.recycle(old, spare_capacity);
        }
        g.bytes += len;
        while g.bytes > self.capacity {
            match g.lru.pop_lru() {
                Some((_, v)) => {
                    g.bytes -= v.len() as u64;
                    g.recycle(v, spare_capacity);
                }
                None => break,
            }
        }
    }

    /// Drops every piece of a task.
    pub fn remove_task(&self, ih: &InfoHash) {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let keys: Vec<Key> = g
            .lru
            .iter()
            .filter(|(k, _)| k.0 == *ih)
            .map(|(k, _)| *k)
            .collect();
        let spare_capacity = self.spare_capacity();
        for k in keys {
            if let Some(v) = g.lru.pop(&k) {
                g.bytes -= v.len() as u64;
                g.recycle(v, spare_capacity);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_bytes_and_evicts_lru() {
        let c = PieceCache::new(100);
        let a = InfoHash([1; 20]);
        c.insert(a, PieceIndex(0), Bytes::from(vec![0; 40]));
        c.insert(a, PieceIndex(1), Bytes::from(vec![1; 40]));
        assert!(c.get(&a, PieceIndex(0)).is_some());
        c.insert(a, PieceIndex(2), Bytes::from(vec![2; 40]));
        assert_eq!(c.bytes(), 80);
        assert!(
            c.get(&a, PieceIndex(1)).is_none(),
            "least recently used goes first"
        );
        c.insert(a, PieceIndex(3), Bytes::from(vec![3; 101]));
        assert!(c.get(&a, PieceIndex(3)).is_none(), "larger than the cache");
        let b = InfoHash([2; 20]);
        c.insert(b, PieceIndex(0), Bytes::from(vec![9; 10]));
        c.remove_task(&a);
        assert_eq!(c.bytes(), 10);
        assert!(c.worth_caching(25) && !c.worth_caching(26) && !c.worth_caching(0));
    }

    #[test]
    fn dropped_pieces_lend_their_buffers_to_the_next_reads() {
        let c = PieceCache::new(800);
        let a = InfoHash([1; 20]);
        let piece = |fill: u8| {
            let mut b = c.buffer(50);
            b.fill(fill);
            Bytes::from(b)
        };
        // Piece 1 is also being sent to someone (a block of it is queued).
        let mut held = Bytes::new();
        for i in 0..16 {
            let p = piece(i as u8 + 1);
            if i == 1 {
                held = p.slice(0..16);
            }
            c.insert(a, PieceIndex(i), p);
        }
        assert_eq!(
            (c.bytes(), c.spare_bytes()),
            (800, 0),
            "full, nothing dropped yet"
        );
        // Evicting piece 0 keeps its buffer; the next read gets it back.
        c.insert(a, PieceIndex(16), piece(16));
        assert_eq!(c.spare_bytes(), 50);
        let reused = c.buffer(50);
        assert_eq!(reused, vec![1u8; 50], "piece 0's old buffer");
        assert_eq!(c.spare_bytes(), 0);
        assert_eq!(c.buffer(49).len(), 49, "no spare of that length: a new one");
        // A piece someone still reads is not recycled when dropped.
        c.insert(a, PieceIndex(17), piece(17));
        assert_eq!(c.spare_bytes(), 0, "piece 1 is still held");
        assert_eq!(held[..], [2u8; 16], "and its bytes are intact");
        // Spares stay within an eighth of the capacity (two buffers here).
        c.remove_task(&a);
        assert_eq!((c.bytes(), c.spare_bytes()), (0, 100));
        assert_eq!(c.get(&a, PieceIndex(5)), None);
    }
}
