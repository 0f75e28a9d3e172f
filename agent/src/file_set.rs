//! A task's files seen as one byte stream.
//!
//! BitTorrent concatenates a task's files and cuts the result into pieces,
//! so one piece may span several files. [`FileSet`] maps stream offsets to
//! file ranges with the protocol's `FileMap` and does positioned reads and
//! writes (`FileExt::read_exact_at` / `write_all_at`) on open handles. All of
//! its methods block: callers run them inside `spawn_blocking`.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use pollen_protocol::metainfo::FileMap;
use pollen_protocol::Info;

use crate::error::{Error, Result};

/// Open handles to a task's files, opened lazily and kept.
#[derive(Debug)]
pub(crate) struct FileSet {
    paths: Mutex<Vec<PathBuf>>,
    handles: Mutex<Vec<Option<Arc<File>>>>,
    map: FileMap,
    writable: bool,
}

impl FileSet {
    /// Files at `paths` (same order as `info.files`), read-only or read-write.
    pub(crate) fn new(info: &Info, paths: Vec<PathBuf>, writable: bool) -> Self {
        let n = paths.len();
        Self {
            paths: Mutex::new(paths),
            handles: Mutex::new(vec![None; n]),
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

    /// Points the set at new paths (the same inodes, after a rename). Open
    /// handles stay valid because a rename keeps the inode.
    pub(crate) fn set_paths(&self, paths: Vec<PathBuf>) {
        *self.paths.lock().unwrap_or_else(PoisonError::into_inner) = paths;
    }

    /// The open handle of file `i`, opening it if needed.
    ///
    /// # Errors
    /// [`Error::Disk`] when the file cannot be opened.
    pub(crate) fn handle(&self, i: usize) -> Result<Arc<File>> {
        if let Some(Some(h)) = self
            .handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(i)
        {
            return Ok(h.clone());
        }
        let path = self.path(i).ok_or_else(|| Error::Disk {
            op: "open",
            path: PathBuf::new(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file index"),
        })?;
        let f = Arc::new(open(&path, self.writable)?);
        if let Some(slot) = self
            .handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(i)
        {
            *slot = Some(f.clone());
        }
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
            let f = self.handle(span.file)?;
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
            let f = self.handle(span.file)?;
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
        for h in self
            .handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter_mut()
        {
            *h = None;
        }
    }
}

fn open(path: &Path, writable: bool) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(writable)
        .open(path)
        .map_err(Error::disk("open", path))
}
