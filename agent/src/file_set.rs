//! A task's files seen as one byte stream.
//!
//! BitTorrent concatenates a task's files and cuts the result into pieces,
//! so one piece may span several files. [`FileSet`] maps stream offsets to
//! file ranges with the protocol's `FileMap` and does positioned reads and
//! writes (`FileExt::read_exact_at` / `write_all_at`) on open handles. All of
//! its methods block: callers run them inside `spawn_blocking`.
//!
//! A writable set creates each file (and its parent directories) the first
//! time a write reaches it, so a task of thousands of files starts at once
//! and pays for each file when its first piece arrives.
//!
//! At most [`MAX_OPEN_FILES`] handles stay open per set (least recently
//! used first out), so a task of any number of files fits in the process's
//! descriptor limit. A closed handle is simply reopened by path.

use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::num::NonZeroUsize;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use lru::LruCache;
use pollen_protocol::metainfo::FileMap;
use pollen_protocol::Info;

use crate::error::{Error, Result};

/// Open handles kept per file set.
pub(crate) const MAX_OPEN_FILES: usize = 128;

/// Handles to a task's files, opened lazily; the most recently used stay
/// open.
#[derive(Debug)]
pub(crate) struct FileSet {
    paths: Mutex<Vec<PathBuf>>,
    handles: Mutex<LruCache<usize, Arc<File>>>,
    map: FileMap,
    writable: bool,
}

impl FileSet {
    /// Files at `paths` (same order as `info.files`), read-only or read-write.
    pub(crate) fn new(info: &Info, paths: Vec<PathBuf>, writable: bool) -> Self {
        let cap =
            NonZeroUsize::new(paths.len().clamp(1, MAX_OPEN_FILES)).unwrap_or(NonZeroUsize::MIN);
        Self {
            paths: Mutex::new(paths),
            handles: Mutex::new(LruCache::new(cap)),
            map: FileMap::new(info),
            writable,
        }
    }

    /// The path of file `i`.
    pub(crate) fn path(&self, i: usize) -> Option<PathBuf> {
        self.paths
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(i)
            .cloned()
    }

    /// Points file `i` at a new path (the same inode, after a rename).
    pub(crate) fn set_path(&self, i: usize, path: PathBuf) {
        if let Some(p) = self
            .paths
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(i)
        {
            *p = path;
        }
    }

    /// The handle of file `i`, opening it if needed. With `create` (in a
    /// writable set) a missing file is created empty, with its parent
    /// directories; otherwise a missing file is an error of kind `NotFound`.
    ///
    /// # Errors
    /// [`Error::Disk`] when the file cannot be opened or created.
    pub(crate) fn handle(&self, i: usize, create: bool) -> Result<Arc<File>> {
        if let Some(h) = self
            .handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&i)
        {
            return Ok(h.clone());
        }
        let missing = || Error::Disk {
            op: "open",
            path: PathBuf::new(),
            source: std::io::Error::new(ErrorKind::NotFound, "no such file index"),
        };
        let mut path = self.path(i).ok_or_else(missing)?;
        let f = loop {
            match open(&path, self.writable, create && self.writable) {
                // Renamed while we opened it (publishing): follow it.
                Err(Error::Disk { source, .. })
                    if source.kind() == ErrorKind::NotFound
                        && self.path(i).is_some_and(|p| p != path) =>
                {
                    path = self.path(i).ok_or_else(missing)?;
                }
                r => break Arc::new(r?),
            }
        };
        self.handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .put(i, f.clone());
        Ok(f)
    }

    /// Fills `buf` from stream offset `offset`.
    ///
    /// # Errors
    /// [`Error::Disk`] on any I/O failure, including a file that is shorter
    /// than the metainfo says.
    pub(crate) fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut pos = 0usize;
        for span in self.map.spans(offset, buf.len() as u64) {
            let f = self.handle(span.file, false)?;
            let len = span.len as usize;
            f.read_exact_at(&mut buf[pos..pos + len], span.offset)
                .map_err(|e| Error::Disk {
                    op: "read",
                    path: self.path(span.file).unwrap_or_default(),
                    source: e,
                })?;
            pos += len;
        }
        Ok(())
    }

    /// Writes `data` at stream offset `offset`.
    ///
    /// # Errors
    /// [`Error::Disk`] on any I/O failure.
    pub(crate) fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        let mut pos = 0usize;
        for span in self.map.spans(offset, data.len() as u64) {
            let f = self.handle(span.file, true)?;
            let len = span.len as usize;
            f.write_all_at(&data[pos..pos + len], span.offset)
                .map_err(|e| Error::Disk {
                    op: "write",
                    path: self.path(span.file).unwrap_or_default(),
                    source: e,
                })?;
            pos += len;
        }
        Ok(())
    }

    /// The files that stream range `offset..offset + len` touches.
    pub(crate) fn files_in(&self, offset: u64, len: u64) -> impl Iterator<Item = usize> + '_ {
        self.map.spans(offset, len).into_iter().map(|s| s.file)
    }

    /// Drops every open handle.
    pub(crate) fn close(&self) {
        self.handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// How many handles are open.
    #[cfg(test)]
    pub(crate) fn open_count(&self) -> usize {
        self.handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

fn open(path: &Path, writable: bool, create: bool) -> Result<File> {
    if !create {
        return OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(Error::disk("open", path));
    }
    let create = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
    };
    match create() {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(Error::disk("create directory", parent))?;
            }
            create()
        }
        r => r,
    }
    .map_err(Error::disk("create", path))
}
