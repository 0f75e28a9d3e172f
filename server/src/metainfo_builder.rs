//! Builds a task's metainfo from its source files.
//!
//! The files are concatenated into one stream and cut into pieces, exactly as
//! agents and the seed will see them, so a piece may span file boundaries.
//! Each source is read once, front to back, through one fixed buffer: memory
//! stays constant whatever the file sizes. Lengths and modes are taken when
//! hashing starts (not from the earlier validation), and a file that shrinks
//! or vanishes meanwhile fails the build with a reason naming it.
//!
//! [`build`] is blocking; run it on the blocking pool.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::PathBuf;

use pollen_protocol::lengths::Lengths;
use pollen_protocol::{FileEntry, Info, InfoHash, MetainfoError};
use sha1::{Digest, Sha1};
use tokio_util::sync::CancellationToken;

use crate::task_spec::SourceFile;

/// The metainfo's `name`. Agents place files under their destination
/// directory by `path`, never by this name.
pub const INFO_NAME: &str = "pollen";
/// Smallest adaptive piece length.
pub const MIN_ADAPTIVE_PIECE_LEN: u64 = 64 * 1024;
const READ_BUF_LEN: usize = 256 * 1024;

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

/// Feeds bytes into per-piece SHA-1s.
struct PieceHasher {
    piece_length: u64,
    filled: u64,
    hasher: Sha1,
    pieces: Vec<u8>,
}

impl PieceHasher {
    fn new(piece_length: u64, num_pieces: u64) -> Self {
        let cap = usize::try_from(num_pieces.saturating_mul(20)).unwrap_or(0);
        Self {
            piece_length,
            filled: 0,
            hasher: Sha1::new(),
            pieces: Vec::with_capacity(cap),
        }
    }

    fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let room = self.piece_length - self.filled;
            let take = data.len().min(usize::try_from(room).unwrap_or(usize::MAX));
            self.hasher.update(&data[..take]);
            self.filled += take as u64;
            data = &data[take..];
            if self.filled == self.piece_length {
                self.pieces.extend_from_slice(&self.hasher.finalize_reset());
                self.filled = 0;
            }
        }
    }

    fn finish(mut self) -> Vec<u8> {
        if self.filled > 0 {
            self.pieces.extend_from_slice(&self.hasher.finalize_reset());
        }
        self.pieces
    }
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
    if Lengths::new(total, piece_length, 1).is_none() {
        return Err(MetainfoError::BadPieceLength(piece_length).into());
    }
    let mut hasher = PieceHasher::new(piece_length, total.div_ceil(piece_length));
    let mut buf = vec![0u8; READ_BUF_LEN];
    for (f, entry) in files.iter().zip(&entries) {
        if cancel.is_cancelled() {
            return Err(BuildError::Cancelled);
        }
        let mut file = File::open(&f.source).map_err(|e| read_error(&f.source, e))?;
        let len = file.metadata().map_err(|e| read_error(&f.source, e))?.len();
        if len < entry.length {
            return Err(BuildError::Changed {
                path: f.source.clone(),
                detail: format!("length went from {} to {len} bytes", entry.length),
            });
        }
        let mut remaining = entry.length;
        while remaining > 0 {
            if cancel.is_cancelled() {
                return Err(BuildError::Cancelled);
            }
            let want = usize::try_from(remaining)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            let n = match file.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(BuildError::Changed {
                        path: f.source.clone(),
                        detail: format!("ended {remaining} bytes early"),
                    })
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_error(&f.source, e)),
            };
            hasher.update(&buf[..n]);
            remaining -= n as u64;
        }
    }
    let info = Info {
        files: entries,
        name: INFO_NAME.into(),
        piece_length,
        pieces: hasher.finish(),
    };
    info.validate()?;
    let info_hash = info.info_hash()?;
    Ok(BuiltMetainfo {
        info,
        info_hash,
        sources: files.iter().map(|f| f.source.clone()).collect(),
    })
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
