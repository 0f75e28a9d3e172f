//! Storage of one task on the agent: staging, verification, atomic publish.
//!
//! Pieces are written into a staging directory,
//! `<downdir>/.pollen/staging/<info_hash_hex>/`, at each file's relative
//! path. A file is created when its first piece is written; the empty files
//! are created when publishing. Writes and reads
//! are positioned (`FileExt`) and run in `spawn_blocking` under a shared
//! semaphore that bounds concurrent disk work. A piece is hashed before it is
//! written, so nothing unverified ever reaches the disk.
//!
//! Publishing moves each complete file to `<downdir>/<dest_dir>/<path>`:
//! parents are created one component at a time (refusing any existing
//! symlink that leads outside `downdir`), the file gets the source's mode and
//! is made durable (an fsync each, or one `syncfs` for a task of many
//! files), then a `rename` makes it visible in one step. Network paths were
//! already checked by `Info::validate`; `dest_dir` is checked here. Open
//! handles survive the rename, so uploads keep reading the published files.

use std::collections::BTreeSet;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use pollen_protocol::lengths::DEFAULT_BLOCK_LEN;
use pollen_protocol::metainfo::check_component;
use pollen_protocol::{Info, InfoHash, Lengths, PieceIndex};
use sha1::{Digest, Sha1};
use tokio::sync::Semaphore;

use crate::error::{Error, Result};
use crate::file_set::FileSet;
use crate::upload::PieceSource;

/// Threads that fsync staged files in parallel when publishing.
const PUBLISH_THREADS: usize = 8;
/// Tasks of up to this many files are published with one fsync per file;
/// larger ones with one `syncfs` of the filesystem.
const FSYNC_EACH_UP_TO: usize = 64;
/// Written bytes after which the store starts writing them to disk in the
/// background and drops them from the page cache. Publishing then has
/// little left to sync, and the page cache does not fill with a whole
/// task's dirty pages.
const WRITEBACK_EVERY: u64 = 8 * 1024 * 1024;
/// In a task's last [`WRITEBACK_EVERY`] bytes, the background writeback
/// runs this often instead, so that publishing, which waits for what is
/// still unsynced, finds little.
const FINAL_WRITEBACK_EVERY: u64 = 1024 * 1024;
/// A writeback batch of at most this many files is fdatasynced; a larger
/// one is only started.
const WRITEBACK_SYNC_UP_TO: usize = 8;

/// Mode of published files whose source mode is unknown (0).
pub const DEFAULT_MODE: u32 = 0o644;

/// The staging directory of a task.
pub fn staging_dir(downdir: &Path, info_hash: &InfoHash) -> PathBuf {
    downdir
        .join(".pollen")
        .join("staging")
        .join(info_hash.to_hex())
}

/// Checks a destination directory from the network: relative, no `..`,
/// no odd components. Returns it as a relative path (empty for `downdir`).
///
/// # Errors
/// [`Error::UnsafePath`].
pub fn check_dest_dir(dest: Option<&str>) -> Result<PathBuf> {
    let Some(dest) = dest else {
        return Ok(PathBuf::new());
    };
    let bad = |reason| {
        Err(Error::UnsafePath {
            path: PathBuf::from(dest),
            reason,
        })
    };
    let mut out = PathBuf::new();
    for c in Path::new(dest).components() {
        match c {
            Component::Normal(s) => {
                let Some(s) = s.to_str() else {
                    return bad("not UTF-8");
                };
                if check_component(s, dest).is_err() {
                    return bad("bad path component");
                }
                out.push(s);
            }
            Component::CurDir => {}
            Component::ParentDir => return bad("'..' is not allowed"),
            Component::RootDir | Component::Prefix(_) => return bad("must be relative to downdir"),
        }
    }
    Ok(out)
}

/// Whether `data` is piece `index` of `info`, hashed off the runtime.
///
/// # Errors
/// Only if the blocking task fails.
pub async fn piece_matches(info: Arc<Info>, index: PieceIndex, data: Bytes) -> Result<bool> {
    Ok(tokio::task::spawn_blocking(move || {
        info.piece_hash(index)
            .is_some_and(|h| <[u8; 20]>::from(Sha1::digest(&data)) == h)
    })
    .await?)
}

/// Bytes and files the background writeback has not covered yet.
#[derive(Debug, Default)]
struct Unsynced {
    /// Bytes written since the last writeback started.
    bytes: u64,
    /// Files those bytes went to.
    files: BTreeSet<usize>,
    /// Bytes of verified pieces in staging: written, or found on resume.
    stored: u64,
}

/// One task's files on the agent.
#[derive(Debug)]
pub struct Store {
    info: Arc<Info>,
    lengths: Lengths,
    downdir: PathBuf,
    staging: PathBuf,
    files: FileSet,
    disk: Arc<Semaphore>,
    resumable: bool,
    /// Serialises piece writes: concurrent writes to one file only contend
    /// for its inode lock. Holds whether the staging area is closed
    /// (published or removed): a late write must not create files again.
    write_lock: Mutex<bool>,
    /// What the background writeback has not covered yet.
    unsynced: Mutex<Unsynced>,
    /// A background writeback is running.
    syncing: AtomicBool,
    /// The files of the previous writeback, whose pages were still being
    /// written then; the next writeback drops them.
    written_back: Mutex<BTreeSet<usize>>,
}

impl Store {
    /// Creates (or reopens) the staging area. Files are created when their
    /// first piece is written, and the empty ones when publishing, so even a
    /// task of thousands of files is ready at once.
    ///
    /// # Errors
    /// [`Error::Disk`] when the staging directory cannot be created.
    pub async fn create(
        downdir: &Path,
        info: Arc<Info>,
        info_hash: InfoHash,
        disk: Arc<Semaphore>,
    ) -> Result<Self> {
        let lengths = info.lengths(DEFAULT_BLOCK_LEN)?;
        let staging = staging_dir(downdir, &info_hash);
        let paths: Vec<PathBuf> = info
            .files
            .iter()
            .map(|f| staging.join(f.relative_path()))
            .collect();
        let files = FileSet::new(&info, paths, true);
        let dir = staging.clone();
        let resumable = tokio::task::spawn_blocking(move || {
            let resumable = dir.is_dir();
            fs::create_dir_all(&dir).map_err(Error::disk("create directory", &dir))?;
            Ok::<_, Error>(resumable)
        })
        .await??;
        Ok(Self {
            info,
            lengths,
            downdir: downdir.to_path_buf(),
            staging,
            files,
            disk,
            resumable,
            write_lock: Mutex::new(false),
            unsynced: Mutex::new(Unsynced::default()),
            syncing: AtomicBool::new(false),
            written_back: Mutex::new(BTreeSet::new()),
        })
    }

    /// Whether the staging directory existed before (an earlier run of the
    /// same task may have left verified pieces in it).
    pub fn is_resumable(&self) -> bool {
        self.resumable
    }

    /// The pieces in staging that pass their hash check (resume). Stops
    /// early, with what it found so far, when `cancel` fires.
    ///
    /// # Errors
    /// [`Error::Disk`] on I/O failure.
    pub async fn verified_pieces(
        self: &Arc<Self>,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<Vec<PieceIndex>> {
        let mut found = Vec::new();
        for i in 0..self.lengths.num_pieces() {
            if cancel.is_cancelled() {
                break;
            }
            let index = PieceIndex(i);
            let data = match self.read_piece(index).await {
                Ok(data) => data,
                // A file not created yet, or not written up to this piece.
                Err(Error::Disk { source, .. })
                    if matches!(
                        source.kind(),
                        ErrorKind::NotFound | ErrorKind::UnexpectedEof
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            };
            let len = data.len() as u64;
            if piece_matches(self.info.clone(), index, data).await? {
                found.push(index);
                let mut u = self.unsynced.lock().unwrap_or_else(PoisonError::into_inner);
                u.stored = u.stored.saturating_add(len);
            }
        }
        Ok(found)
    }

    /// The task geometry.
    pub fn lengths(&self) -> &Lengths {
        &self.lengths
    }

    /// The staging directory.
    pub fn staging(&self) -> &Path {
        &self.staging
    }

    /// Writes a verified piece.
    ///
    /// # Errors
    /// [`Error::Disk`] on I/O failure (disk full, permissions, ...).
    pub async fn write_piece(self: &Arc<Self>, index: PieceIndex, data: Bytes) -> Result<()> {
        let _permit = self.disk.acquire().await.map_err(|_| Error::Stopped)?;
        let me = self.clone();
        let due = tokio::task::spawn_blocking(move || {
            let offset = me.lengths.piece_offset(index);
            {
                let closed = me.write_lock.lock().unwrap_or_else(PoisonError::into_inner);
                if *closed {
                    return Err(Error::Stopped);
                }
                me.files.write_at(offset, &data)?;
            }
            Ok::<_, Error>(me.note_written(offset, data.len() as u64))
        })
        .await??;
        if let Some(files) = due {
            let me = self.clone();
            tokio::task::spawn_blocking(move || me.writeback(&files));
        }
        Ok(())
    }

    /// Records a write; returns the files to write back when
    /// [`WRITEBACK_EVERY`] bytes ([`FINAL_WRITEBACK_EVERY`] once less than
    /// that is left to store) are pending and no writeback is running.
    fn note_written(&self, offset: u64, len: u64) -> Option<BTreeSet<usize>> {
        let mut u = self.unsynced.lock().unwrap_or_else(PoisonError::into_inner);
        u.bytes += len;
        u.stored = u.stored.saturating_add(len);
        u.files.extend(self.files.files_in(offset, len));
        let left = self.lengths.total_length().saturating_sub(u.stored);
        let every = if left < WRITEBACK_EVERY {
            FINAL_WRITEBACK_EVERY
        } else {
            WRITEBACK_EVERY
        };
        if u.bytes < every || self.syncing.swap(true, Ordering::AcqRel) {
            return None;
        }
        u.bytes = 0;
        Some(std::mem::take(&mut u.files))
    }

    /// Writes `files` back and drops their clean pages from the page cache
    /// (reads are served from the piece cache or the disk). A batch of a few
    /// files (a large file's pieces) is fdatasynced first, so publishing it
    /// has almost nothing left to sync. For a batch of many small files, one
    /// fdatasync each would cost a journal commit or inode write each (a
    /// sixth of all the agents' CPU with 2,000 files), so their writeback is
    /// only started, with `POSIX_FADV_DONTNEED`, which also drops the pages
    /// already clean; the previous batch's pages, written since, are dropped
    /// now. A hint only: publishing syncs everything and reports what fails.
    fn writeback(&self, files: &BTreeSet<usize>) {
        let previous = std::mem::replace(
            &mut *self
                .written_back
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
            files.clone(),
        );
        let wait = files.len() <= WRITEBACK_SYNC_UP_TO;
        for &i in previous.union(files) {
            // Never creates: after a cancel removed the staging area, the
            // files are gone and there is nothing to write back.
            let Ok(f) = self.files.handle(i, false) else {
                continue;
            };
            if wait && files.contains(&i) {
                if let Err(e) = f.sync_data() {
                    tracing::debug!(file = i, error = %e, "background writeback failed");
                    continue;
                }
            }
            if let Err(e) = rustix::fs::fadvise(&*f, 0, None, rustix::fs::Advice::DontNeed) {
                tracing::debug!(file = i, error = %e, "background writeback failed");
            }
        }
        self.syncing.store(false, Ordering::Release);
    }

    /// Reads a whole piece back (used to resume from staging).
    ///
    /// # Errors
    /// [`Error::Disk`] on I/O failure.
    pub async fn read_piece(self: &Arc<Self>, index: PieceIndex) -> Result<Bytes> {
        let len = self.lengths.piece_len(index).unwrap_or(0);
        let _permit = self.disk.acquire().await.map_err(|_| Error::Stopped)?;
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.read_block(index, 0, len)).await?
    }

    /// Moves every file to `downdir/dest_dir`, atomically per file, and
    /// removes the staging directory. Returns the destination directory.
    ///
    /// # Errors
    /// [`Error::UnsafePath`] for a bad `dest_dir` or a symlink escaping
    /// `downdir`; [`Error::Disk`] on I/O failure. Nothing is renamed unless
    /// every parent directory checked out.
    pub async fn publish(self: &Arc<Self>, dest_dir: Option<String>) -> Result<PathBuf> {
        let rel = check_dest_dir(dest_dir.as_deref())?;
        let _permit = self.disk.acquire().await.map_err(|_| Error::Stopped)?;
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.publish_blocking(&rel)).await?
    }

    fn publish_blocking(&self, rel: &Path) -> Result<PathBuf> {
        // Every piece is written; a late duplicate must not touch staging.
        *self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        fs::create_dir_all(&self.downdir)
            .map_err(Error::disk("create directory", &self.downdir))?;
        let root =
            fs::canonicalize(&self.downdir).map_err(Error::disk("resolve", &self.downdir))?;
        let targets: Vec<PathBuf> = self
            .info
            .files
            .iter()
            .map(|f| rel.join(f.relative_path()))
            .collect();
        ensure_dir_inside(&root, rel)?;
        let parents: BTreeSet<&Path> = targets.iter().filter_map(|t| t.parent()).collect();
        for parent in &parents {
            ensure_dir_inside(&root, parent)?;
        }
        // chmod and sync every staged file first; only then rename them into
        // place, so a file appears at its destination only complete and
        // durable. A few files are fsynced one by one, on a few threads. For
        // many, one syncfs replaces thousands of fsyncs (each a journal
        // commit): publishing 2,000 files took a second the other way.
        let count = self.info.files.len();
        let each = count <= FSYNC_EACH_UP_TO;
        let workers = count.clamp(1, PUBLISH_THREADS);
        let per = count.div_ceil(workers);
        std::thread::scope(|scope| {
            let jobs: Vec<_> = (0..workers)
                .map(|w| {
                    scope.spawn(move || self.seal_files(w * per..((w + 1) * per).min(count), each))
                })
                .collect();
            jobs.into_iter()
                .try_for_each(|j| j.join().unwrap_or(Err(Error::Stopped)))
        })?;
        if !each {
            syncfs(&self.staging)?;
        }
        let mut published = Vec::with_capacity(targets.len());
        for (i, t) in targets.iter().enumerate() {
            let from = self.files.path(i).unwrap_or_default();
            let to = root.join(t);
            fs::rename(&from, &to).map_err(Error::disk("rename into place", &to))?;
            // Uploads reopening a closed handle find the file at once.
            self.files.set_path(i, to.clone());
            published.push(to);
        }
        // Make the renames durable: the directories that changed.
        if each {
            let dirs: BTreeSet<&Path> = published.iter().filter_map(|p| p.parent()).collect();
            for dir in dirs {
                if let Ok(d) = fs::File::open(dir) {
                    let _ = d.sync_all();
                }
            }
        } else {
            syncfs(&root)?;
        }
        remove_dir(&self.staging)?;
        Ok(root.join(rel))
    }

    /// Sets the source mode on staged files `range` and, with `fsync`, makes
    /// them durable. Creates the files no piece touched (the empty ones) and
    /// checks that every file has its full length.
    fn seal_files(&self, range: std::ops::Range<usize>, fsync: bool) -> Result<()> {
        for i in range {
            let from = self.files.path(i).unwrap_or_default();
            let mode = match self.info.files[i].mode & 0o777 {
                0 => DEFAULT_MODE,
                m => m,
            };
            let f = self.files.handle(i, true)?;
            let want = self.info.files[i].length;
            let have = f.metadata().map_err(Error::disk("stat", &from))?.len();
            if have > want {
                // Left over from a resumed staging area; never shorter, as
                // every piece was verified and written.
                f.set_len(want).map_err(Error::disk("truncate", &from))?;
            } else if have < want {
                return Err(Error::Disk {
                    op: "publish",
                    path: from,
                    source: std::io::Error::new(
                        ErrorKind::UnexpectedEof,
                        format!("staged file has {have} of {want} bytes"),
                    ),
                });
            }
            f.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(Error::disk("chmod", &from))?;
            if fsync {
                f.sync_all().map_err(Error::disk("fsync", &from))?;
            }
        }
        Ok(())
    }

    /// Removes the staging directory (after a cancel or a failure). Files
    /// already published stay.
    ///
    /// # Errors
    /// [`Error::Disk`] if it exists and cannot be removed.
    pub async fn remove_staging(self: &Arc<Self>) -> Result<()> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            // Under the write lock: no write in flight re-creates a file.
            let mut closed = me.write_lock.lock().unwrap_or_else(PoisonError::into_inner);
            *closed = true;
            me.files.close();
            remove_dir(&me.staging)
        })
        .await?
    }
}

impl PieceSource for Store {
    fn read_into(&self, index: PieceIndex, begin: u32, buf: &mut [u8]) -> Result<()> {
        self.files
            .read_at(self.lengths.piece_offset(index) + u64::from(begin), buf)
    }
}

/// Flushes the whole filesystem that holds `path` and waits for it.
fn syncfs(path: &Path) -> Result<()> {
    let dir = fs::File::open(path).map_err(Error::disk("open", path))?;
    rustix::fs::syncfs(&dir).map_err(|e| Error::Disk {
        op: "syncfs",
        path: path.to_path_buf(),
        source: e.into(),
    })
}

fn remove_dir(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(Error::Disk {
            op: "remove",
            path: dir.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Creates `root/rel` one component at a time. An existing symlink is
/// followed only when it resolves to a directory inside `root`.
fn ensure_dir_inside(root: &Path, rel: &Path) -> Result<()> {
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        let Component::Normal(name) = c else {
            return Err(Error::UnsafePath {
                path: rel.to_path_buf(),
                reason: "not a plain relative path",
            });
        };
        cur.push(name);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                let real = fs::canonicalize(&cur).map_err(Error::disk("resolve", &cur))?;
                if !real.starts_with(root) {
                    return Err(Error::UnsafePath {
                        path: cur,
                        reason: "symlink leads outside downdir",
                    });
                }
                if !real.is_dir() {
                    return Err(Error::UnsafePath {
                        path: cur,
                        reason: "symlink to a non-directory",
                    });
                }
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::UnsafePath {
                    path: cur,
                    reason: "a file is in the way of a directory",
                })
            }
            Err(e) if e.kind() == ErrorKind::NotFound => match fs::create_dir(&cur) {
                Err(e) if e.kind() != ErrorKind::AlreadyExists => {
                    return Err(Error::Disk {
                        op: "create directory",
                        path: cur,
                        source: e,
                    })
                }
                _ => {}
            },
            Err(e) => {
                return Err(Error::Disk {
                    op: "stat",
                    path: cur,
                    source: e,
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
