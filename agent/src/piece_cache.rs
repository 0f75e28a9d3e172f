//! An LRU of whole pieces, bounded by bytes.
//!
//! Uploads read whole pieces through this cache so that a piece requested by
//! many peers, block by block, is read from disk about once. The `lru` crate
//! keeps the order; this type keeps the byte count and evicts until the
//! total fits. One cache may hold pieces of several tasks (the seed's does).

use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use lru::LruCache;
use pollen_protocol::{InfoHash, PieceIndex};

type Key = (InfoHash, PieceIndex);

struct Inner {
    lru: LruCache<Key, Bytes>,
    bytes: u64,
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
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = g.lru.put((ih, piece), data) {
            g.bytes -= old.len() as u64;
        }
        g.bytes += len;
        while g.bytes > self.capacity {
            match g.lru.pop_lru() {
                Some((_, v)) => g.bytes -= v.len() as u64,
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
        for k in keys {
            if let Some(v) = g.lru.pop(&k) {
                g.bytes -= v.len() as u64;
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
}
