//! Builds a task's metainfo from its source files.
//!
//! The files are concatenated into one stream and cut into pieces, exactly as
//! agents and the seed will see them, so a piece may span file boundaries.
//! The stream is split into contiguous ranges of pieces, one per core (a
//! thread per 32 MiB at least, at most 8): each thread reads its range front
//! to back through one piece-sized buffer, with the seed's own file reader
//! ([`SourceFiles`]), so memory stays bounded whatever the file sizes and
//! SHA-1 runs on every core. Lengths and modes are taken when
//! hashing starts (not from the earlier validation), and a file that shrinks
//! or vanishes meanwhile fails the build with a reason naming it.
//!
//! [`build`] is blocking; run it on the blocking pool.

use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use pollen_agent::upload::{PieceSource, SourceFiles};
use pollen_protocol::lengths::Lengths;
use pollen_protocol::{FileEntry, Info, InfoHash, MetainfoError, PieceIndex};
use sha1::{Digest, Sha1};
use tokio_util::sync::CancellationToken;

use crate::task_spec::SourceFile;

/// The metainfo's `name`. Agents place files under their destination
/// directory by `path`, never by this name.
pub const INFO_NAME: &str = "pollen";
/// Smallest adaptive piece length.
pub const MIN_ADAPTIVE_PIECE_LEN: u64 = 64 * 1024;
/// Most threads that hash one task.
const MAX_HASH_THREADS: usize = 8;
/// Below this many bytes per thread, fewer threads hash.
const MIN_BYTES_PER_HASH_THREAD: u64 = 32 * 1024 * 1024;

/// A built metainfo and where its files come from.
#[derive(Clone, Debug)]
pub struct BuiltMetainfo {
    pub info: Info,
    pub info_hash: InfoHash,
    /// Source of each `info.files` entry, same order.
    pub sources: Vec<PathBuf>,
}

/// Why a metainfo could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("source {path} cannot be read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("source {path} vanished")]
    Vanished { path: PathBuf },
    #[error("source {path} is no longer a regular file")]
    NotAFile { path: PathBuf },
    #[error("source {path} changed while it was being hashed: {detail}")]
    Changed { path: PathBuf, detail: String },
    #[error("cancelled")]
    Cancelled,
    #[error("metainfo: {0}")]
    Metainfo(#[from] MetainfoError),
}

fn read_error(path: &std::path::Path, e: std::io::Error) -> BuildError {
    if e.kind() == ErrorKind::NotFound {
        BuildError::Vanished {
            path: path.to_path_buf(),
        }
    } else {
        BuildError::Read {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

#[cfg(unix)]
fn mode_of(meta: &std::fs::Metadata) -> u32 {
    std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777
}

#[cfg(not(unix))]
fn mode_of(meta: &std::fs::Metadata) -> u32 {
    if meta.permissions().readonly() {
        0o444
    } else {
        0o644
    }
}

/// Hashes pieces `range` of `source` into 20-byte digests, through one
/// piece buffer. Stops early, with `Cancelled`, when `cancel` fires or
/// `stop` is set (by another worker that failed).
fn hash_pieces(
    source: &SourceFiles,
    lengths: &Lengths,
    range: std::ops::Range<u32>,
    cancel: &CancellationToken,
    stop: &AtomicBool,
) -> Result<Vec<u8>, BuildError> {
    let mut digests = Vec::with_capacity(range.len() * 20);
    let mut buf = vec![0u8; usize::try_from(lengths.piece_length()).unwrap_or(0)];
    for i in range {
        if cancel.is_cancelled() || stop.load(Ordering::Relaxed) {
            return Err(BuildError::Cancelled);
        }
        let index = PieceIndex(i);
        let piece = &mut buf[..lengths.piece_len(index).unwrap_or(0) as usize];
        source.read_into(index, 0, piece).map_err(source_error)?;
        digests.extend_from_slice(&Sha1::digest(&*piece));
    }
    Ok(digests)
}

/// A read failure of the seed's file reader, as a build error naming the
/// source.
fn source_error(e: pollen_agent::Error) -> BuildError {
    match e {
        pollen_agent::Error::Disk { path, source, .. } => match source.kind() {
            ErrorKind::UnexpectedEof => BuildError::Changed {
                path,
                detail: "ended early".into(),
            },
            _ => read_error(&path, source),
        },
        other => BuildError::Read {
            path: PathBuf::new(),
            source: std::io::Error::other(other.to_string()),
        },
    }
}

/// Threads that hash one task's pieces: the cores, at most
/// [`MAX_HASH_THREADS`], and one per [`MIN_BYTES_PER_HASH_THREAD`].
fn hash_threads(total: u64) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let by_size = usize::try_from(total / MIN_BYTES_PER_HASH_THREAD).unwrap_or(usize::MAX);
    cores.min(MAX_HASH_THREADS).min(by_size).max(1)
}

/// Hashes `files` into a metainfo. `piece_length` is the request's, or the
/// adaptive [`Lengths::choose_piece_length`] (at least 64 KiB).
///
/// # Errors
/// A source that vanished, cannot be read, or changed; [`BuildError::Cancelled`]
/// once `cancel` fires.
pub fn build(
    files: &[SourceFile],
    piece_length: Option<u64>,
    cancel: &CancellationToken,
) -> Result<BuiltMetainfo, BuildError> {
    build_on(files, piece_length, cancel, None)
}

/// [`build`] on `threads` hashing threads (default: [`hash_threads`]).
fn build_on(
    files: &[SourceFile],
    piece_length: Option<u64>,
    cancel: &CancellationToken,
    threads: Option<usize>,
) -> Result<BuiltMetainfo, BuildError> {
    let mut entries = Vec::with_capacity(files.len());
    for f in files {
        let meta = std::fs::metadata(&f.source).map_err(|e| read_error(&f.source, e))?;
        if !meta.is_file() {
            return Err(BuildError::NotAFile {
                path: f.source.clone(),
            });
        }
        entries.push(FileEntry {
            length: meta.len(),
            path: f.path.clone(),
            mode: mode_of(&meta),
        });
    }
    let total = entries
        .iter()
        .try_fold(0u64, |acc, e| acc.checked_add(e.length))
        .ok_or(MetainfoError::Overflow)?;
    let piece_length =
        piece_length.unwrap_or_else(|| Lengths::choose_piece_length(total, MIN_ADAPTIVE_PIECE_LEN));
    let mut info = Info {
        files: entries,
        name: INFO_NAME.into(),
        piece_length,
        pieces: Vec::new(),
    };
    let threads = threads.unwrap_or_else(|| hash_threads(total));
    info.pieces = hash_all(files, &info, cancel, threads)?;
    info.validate()?;
    let info_hash = info.info_hash()?;
    Ok(BuiltMetainfo {
        info,
        info_hash,
        sources: files.iter().map(|f| f.source.clone()).collect(),
    })
}

/// The piece digests of `info`'s stream, read from `files`, on `threads`
/// threads: contiguous ranges of pieces, one per thread, each read front to
/// back.
fn hash_all(
    files: &[SourceFile],
    info: &Info,
    cancel: &CancellationToken,
    threads: usize,
) -> Result<Vec<u8>, BuildError> {
    let total = info.total_length();
    let lengths = Lengths::new(total, info.piece_length, 1)
        .ok_or(MetainfoError::BadPieceLength(info.piece_length))?;
    let paths = files.iter().map(|f| f.source.clone()).collect();
    let source = SourceFiles::new(info, paths)
        .map_err(|_| MetainfoError::BadPieceLength(info.piece_length))?;
    let count = lengths.num_pieces();
    let workers = u32::try_from(threads.max(1)).unwrap_or(1).min(count.max(1));
    let per = count.div_ceil(workers);
    let stop = AtomicBool::new(false);
    let parts: Vec<Result<Vec<u8>, BuildError>> = std::thread::scope(|scope| {
        let jobs: Vec<_> = (0..workers)
            .map(|w| {
                let range = (w * per).min(count)..((w + 1) * per).min(count);
                let (source, lengths, stop) = (&source, &lengths, &stop);
                scope.spawn(move || {
                    let r = hash_pieces(source, lengths, range, cancel, stop);
                    if r.is_err() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    r
                })
            })
            .collect();
        jobs.into_iter()
            .map(|j| j.join().unwrap_or(Err(BuildError::Cancelled)))
            .collect()
    });
    // The first real failure, not the `Cancelled` of the workers it stopped.
    let mut pieces = Vec::with_capacity(count as usize * 20);
    let mut cancelled = false;
    for part in parts {
        match part {
            Ok(d) => pieces.extend_from_slice(&d),
            Err(BuildError::Cancelled) => cancelled = true,
            Err(e) => return Err(e),
        }
    }
    if cancelled {
        return Err(BuildError::Cancelled);
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const PL: u64 = 16 * 1024;

    fn source(dir: &std::path::Path, name: &str, bytes: &[u8]) -> SourceFile {
        let p = dir.join(name);
        fs::write(&p, bytes).unwrap();
        SourceFile {
            source: p,
            path: vec![name.into()],
            length: bytes.len() as u64,
        }
    }

    /// Independent reference: SHA-1 of each `pl`-sized chunk of the stream.
    fn reference(stream: &[u8], pl: usize) -> Vec<u8> {
        stream
            .chunks(pl)
            .flat_map(|c| Sha1::digest(c).to_vec())
            .collect()
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn pieces_span_file_boundaries() {
        let tmp = tempfile::tempdir().unwrap();
        let a = pattern(10_000, 1);
        let b = pattern(30_000, 2);
        let c = pattern(600_000, 3);
        let files = vec![
            source(tmp.path(), "a", &a),
            source(tmp.path(), "empty", b""),
            source(tmp.path(), "b", &b),
            source(tmp.path(), "c", &c),
        ];
        let built = build(&files, Some(PL), &CancellationToken::new()).unwrap();
        let stream = [a, b, c].concat();
        assert_eq!(built.info.pieces, reference(&stream, PL as usize));
        assert_eq!(built.info.total_length(), stream.len() as u64);
        assert_eq!(built.info.files[1].length, 0);
        assert_eq!(built.info.name, INFO_NAME);
        let (parsed, hash) = Info::from_bencode(&built.info.to_bencode().unwrap()).unwrap();
        assert_eq!(parsed, built.info);
        assert_eq!(hash, built.info_hash);
    }

    #[test]
    fn threads_split_the_stream_and_agree_with_one() {
        let tmp = tempfile::tempdir().unwrap();
        let parts: Vec<Vec<u8>> = (0..7u8)
            .map(|i| pattern(37_000 * usize::from(i + 1), i))
            .collect();
        let files: Vec<SourceFile> = parts
            .iter()
            .enumerate()
            .map(|(i, p)| source(tmp.path(), &format!("f{i}"), p))
            .collect();
        let stream = parts.concat();
        let want = reference(&stream, PL as usize);
        for threads in [1, 2, 3, 8, 1000] {
            let built =
                build_on(&files, Some(PL), &CancellationToken::new(), Some(threads)).unwrap();
            assert_eq!(built.info.pieces, want, "{threads} threads");
        }
        // A source cut short after it was measured, in the last thread's
        // range, fails the build with its own reason, not the other threads'
        // "cancelled".
        let built = build_on(&files, Some(PL), &CancellationToken::new(), Some(3)).unwrap();
        fs::write(&files[6].source, b"short").unwrap();
        let e = hash_all(&files, &built.info, &CancellationToken::new(), 3).unwrap_err();
        assert!(matches!(e, BuildError::Changed { .. }), "{e}");
        assert!(e.to_string().contains("f6"), "{e}");
    }

    #[test]
    fn exactly_one_piece_and_adaptive_length() {
        let tmp = tempfile::tempdir().unwrap();
        let data = pattern(64 * 1024, 7);
        let files = vec![source(tmp.path(), "x", &data)];
        let built = build(&files, None, &CancellationToken::new()).unwrap();
        assert_eq!(built.info.piece_length, MIN_ADAPTIVE_PIECE_LEN);
        assert_eq!(built.info.pieces, Sha1::digest(&data).to_vec());
    }

    #[test]
    fn only_empty_files_have_no_pieces() {
        let tmp = tempfile::tempdir().unwrap();
        let built = build(
            &[source(tmp.path(), "e", b"")],
            None,
            &CancellationToken::new(),
        )
        .unwrap();
        assert!(built.info.pieces.is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn keeps_the_file_mode() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let f = source(tmp.path(), "run.sh", b"#!/bin/sh\n");
        fs::set_permissions(&f.source, fs::Permissions::from_mode(0o750)).unwrap();
        let built = build(&[f], None, &CancellationToken::new()).unwrap();
        assert_eq!(built.info.files[0].mode, 0o750);
    }

    #[test]
    fn vanished_and_shrunk_sources_fail() {
        let tmp = tempfile::tempdir().unwrap();
        let f = source(tmp.path(), "gone", b"abc");
        fs::remove_file(&f.source).unwrap();
        let e = build(&[f], None, &CancellationToken::new()).unwrap_err();
        assert!(matches!(e, BuildError::Vanished { .. }), "{e}");
        assert!(e.to_string().contains("gone"));
        let f = source(tmp.path(), "x", b"abc");
        let cancel = CancellationToken::new();
        cancel.cancel();
        assert!(matches!(
            build(&[f], None, &cancel),
            Err(BuildError::Cancelled)
        ));
    }
}
