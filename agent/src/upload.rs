//! The serving side shared by agents and the seed.
//!
//! A [`PieceSource`] reads bytes of verified pieces: the agent's
//! [`Store`](crate::store::Store) and the seed's [`SourceFiles`] both
//! implement it. An [`Uploader`] wraps one source with everything a PIECE
//! reply needs: the byte-bounded LRU [`PieceCache`] (whole pieces, read once
//! per piece under a striped lock so concurrent requests do not read the same
//! piece twice), the bounded disk semaphore, the upload rate limits and the
//! uploaded-bytes counter. The peer session code calls only the uploader, so
//! serving is written once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use pollen_protocol::message::MAX_INFO_CHUNK;
use pollen_protocol::{Info, InfoHash, Lengths, Message, PieceIndex};
use tokio::sync::Semaphore;

use crate::error::{Error, Result};
use crate::file_set::FileSet;
use crate::piece_cache::PieceCache;
use crate::rate_limit::LimiterChain;

/// Reads blocks of pieces that are known to be complete and verified.
pub trait PieceSource: Send + Sync + 'static {
    /// Fills `buf` with the bytes at `begin` within piece `index`. Blocking:
    /// call it from `spawn_blocking`.
    ///
    /// # Errors
    /// [`Error::Disk`] on I/O failure; `UnexpectedEof` when a file is
    /// shorter than the metainfo says.
    fn read_into(&self, index: PieceIndex, begin: u32, buf: &mut [u8]) -> Result<()>;

    /// Reads `len` bytes at `begin` within piece `index` into a new buffer.
    /// Blocking, like [`PieceSource::read_into`].
    ///
    /// # Errors
    /// As [`PieceSource::read_into`].
    fn read_block(&self, index: PieceIndex, begin: u32, len: u32) -> Result<Bytes> {
        let mut buf = vec![0u8; len as usize];
        self.read_into(index, begin, &mut buf)?;
        Ok(Bytes::from(buf))
    }
}

/// The seed's source: the original files on the server.
#[derive(Debug)]
pub struct SourceFiles {
    files: FileSet,
    lengths: Lengths,
}

impl SourceFiles {
    /// The files at `paths` (same order as `info.files`), opened on first use.
    ///
    /// # Errors
    /// [`Error::Metainfo`] when the geometry is invalid.
    pub fn new(info: &Info, paths: Vec<std::path::PathBuf>) -> Result<Self> {
        Ok(Self {
            files: FileSet::new(info, paths, false),
            lengths: info.lengths(pollen_protocol::lengths::DEFAULT_BLOCK_LEN)?,
        })
    }
}

impl PieceSource for SourceFiles {
    fn read_into(&self, index: PieceIndex, begin: u32, buf: &mut [u8]) -> Result<()> {
        self.files
            .read_at(self.lengths.piece_offset(index) + u64::from(begin), buf)
    }
}

const STRIPES: usize = 16;

/// Serves blocks of one task.
pub struct Uploader {
    info_hash: InfoHash,
    lengths: Lengths,
    source: Arc<dyn PieceSource>,
    cache: Arc<PieceCache>,
    limits: LimiterChain,
    disk: Arc<Semaphore>,
    uploaded: AtomicU64,
    stripes: Vec<tokio::sync::Mutex<()>>,
    /// The bencoded info dictionary, for peers whose push left it out
    /// (empty: not served).
    info: Bytes,
}

impl std::fmt::Debug for Uploader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploader")
            .field("info_hash", &self.info_hash)
            .field("uploaded", &self.uploaded())
            .finish()
    }
}

impl Uploader {
    /// An uploader reading from `source` through `cache`, limited by `limits`.
    pub fn new(
        info_hash: InfoHash,
        lengths: Lengths,
        source: Arc<dyn PieceSource>,
        cache: Arc<PieceCache>,
        limits: LimiterChain,
        disk: Arc<Semaphore>,
    ) -> Self {
        Self {
            info_hash,
            lengths,
            source,
            cache,
            limits,
            disk,
            uploaded: AtomicU64::new(0),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            info: Bytes::new(),
        }
    }

    /// Also serves `info`, the task's bencoded info dictionary, to peers
    /// that ask for it (INFO_REQUEST).
    #[must_use]
    pub fn with_info(mut self, info: Bytes) -> Self {
        self.info = info;
        self
    }

    /// The INFO_DATA that answers an INFO_REQUEST for `offset`, or `None`
    /// when this uploader serves no info dictionary or `offset` lies past
    /// its end.
    pub fn info_reply(&self, offset: u32) -> Option<Message> {
        let start = offset as usize;
        if self.info.is_empty() || start >= self.info.len() {
            return None;
        }
        let end = self.info.len().min(start + MAX_INFO_CHUNK as usize);
        Some(Message::InfoData {
            offset,
            total: u32::try_from(self.info.len()).ok()?,
            data: self.info.slice(start..end),
        })
    }

    /// The bencoded info dictionary this uploader serves (empty: none).
    pub fn info(&self) -> &Bytes {
        &self.info
    }

    /// How many INFO_DATA chunks the whole info dictionary takes.
    pub fn info_chunks(&self) -> usize {
        self.info.len().div_ceil(MAX_INFO_CHUNK as usize)
    }

    /// The task geometry.
    pub fn lengths(&self) -> &Lengths {
        &self.lengths
    }

    /// Payload bytes sent so far.
    pub fn uploaded(&self) -> u64 {
        self.uploaded.load(Ordering::Relaxed)
    }

    /// Counts bytes actually sent.
    pub fn count_uploaded(&self, n: u64) {
        self.uploaded.fetch_add(n, Ordering::Relaxed);
    }

    /// Waits until the upload limits admit `n` bytes.
    pub async fn throttle(&self, n: u64) {
        self.limits.consume(n).await;
    }

    /// Reads a block (already validated against the geometry), from the
    /// cache when possible.
    ///
    /// # Errors
    /// [`Error::Disk`] when the source cannot be read.
    pub async fn read_block(&self, index: PieceIndex, begin: u32, len: u32) -> Result<Bytes> {
        let slice = |piece: &Bytes| {
            piece
                .get(begin as usize..(begin + len) as usize)
                .map(|s| piece.slice_ref(s))
        };
        if let Some(piece) = self.cache.get(&self.info_hash, index) {
            if let Some(b) = slice(&piece) {
                return Ok(b);
            }
        }
        let piece_len = self.lengths.piece_len(index).unwrap_or(0);
        if !self.cache.worth_caching(u64::from(piece_len)) {
            return self.read(index, begin, vec![0u8; len as usize]).await;
        }
        let _stripe = self.stripes[index.0 as usize % STRIPES].lock().await;
        if let Some(piece) = self.cache.get(&self.info_hash, index) {
            if let Some(b) = slice(&piece) {
                return Ok(b);
            }
        }
        let piece = self
            .read(index, 0, self.cache.buffer(piece_len as usize))
            .await?;
        self.cache.insert(self.info_hash, index, piece.clone());
        slice(&piece).ok_or(Error::Violation {
            what: "request outside the piece",
        })
    }

    /// Fills `buf` from `begin` within piece `index`.
    async fn read(&self, index: PieceIndex, begin: u32, mut buf: Vec<u8>) -> Result<Bytes> {
        let _permit = self.disk.acquire().await.map_err(|_| Error::Stopped)?;
        let source = self.source.clone();
        let buf = tokio::task::spawn_blocking(move || {
            source.read_into(index, begin, &mut buf).map(|()| buf)
        })
        .await??;
        Ok(Bytes::from(buf))
    }

    /// Forgets this task's cached pieces.
    pub fn drop_cache(&self) {
        self.cache.remove_task(&self.info_hash);
    }
}
