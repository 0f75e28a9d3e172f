//! The metainfo: what a task's files are and how to verify every piece.
//!
//! [`Info`] is BitTorrent v1's info dictionary (`name`, `piece length`,
//! `pieces`, `files`), plus an optional per-file `mode` key that BitTorrent
//! clients ignore. The info-hash is the SHA-1 of its bencoding. It travels to
//! agents bencoded, so they recompute the hash themselves.

use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};
use std::collections::HashSet;
use std::path::PathBuf;

use crate::error::MetainfoError;
use crate::ids::{InfoHash, PieceIndex};
use crate::lengths::{Lengths, MAX_PIECES, MAX_PIECE_LEN, MIN_PIECE_LEN};

/// Deepest nesting of lists and dictionaries [`Info::from_bencode`] accepts.
/// A real info nests 4 deep (info, `files`, one file, its `path`); the
/// margin leaves room for other tools' extra keys.
pub const MAX_BENCODE_DEPTH: usize = 32;

/// One file of a task, at a relative path under the destination directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub length: u64,
    /// Path components, never empty, `.` or `..`, and without separators.
    pub path: Vec<String>,
    /// Unix permission bits of the source file (`0o7777` mask).
    #[serde(default)]
    pub mode: u32,
}

impl FileEntry {
    /// The relative path, joined with the platform separator.
    pub fn relative_path(&self) -> PathBuf {
        self.path.iter().collect()
    }

    /// The path joined with `/`, for display and the REST API.
    pub fn display_path(&self) -> String {
        self.path.join("/")
    }
}

/// BitTorrent v1 info dictionary (multi-file form).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    pub files: Vec<FileEntry>,
    pub name: String,
    #[serde(rename = "piece length")]
    pub piece_length: u64,
    #[serde(with = "serde_bytes")]
    pub pieces: Vec<u8>,
}

/// Checks one path component received from the network or a client.
///
/// # Errors
/// [`MetainfoError::UnsafePath`] for empty, `.`, `..`, separators, NUL, or
/// components over 255 bytes.
pub fn check_component(c: &str, whole: &str) -> Result<(), MetainfoError> {
    let bad = |reason| {
        Err(MetainfoError::UnsafePath {
            path: whole.to_owned(),
            reason,
        })
    };
    if c.is_empty() {
        return bad("empty path component");
    }
    if c == "." || c == ".." {
        return bad("'.' and '..' are not allowed");
    }
    if c.contains(['/', '\\', '\0']) {
        return bad("separator or NUL inside a component");
    }
    if c.len() > 255 {
        return bad("component longer than 255 bytes");
    }
    Ok(())
}

/// Rejects bencode nested deeper than [`MAX_BENCODE_DEPTH`] before
/// `serde_bencode` sees it: that parser recurses once per level (even into
/// keys `Info` ignores), so deep enough nesting overflows the stack and
/// aborts the process. This walk is iterative and tokenises as that parser
/// does; at the first byte it would reject, it stops and leaves the error
/// to the parser.
fn check_depth(bytes: &[u8]) -> Result<(), MetainfoError> {
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&c) = bytes.get(i) {
        match c {
            b'l' | b'd' => {
                depth += 1;
                if depth > MAX_BENCODE_DEPTH {
                    return Err(MetainfoError::TooDeep {
                        max: MAX_BENCODE_DEPTH,
                    });
                }
                i += 1;
            }
            b'e' if depth > 0 => {
                depth -= 1;
                i += 1;
            }
            b'i' => match bytes[i..].iter().position(|&b| b == b'e') {
                Some(end) => i += end + 1,
                None => return Ok(()),
            },
            b'0'..=b'9' => {
                let Some(colon) = bytes[i..].iter().position(|&b| b == b':') else {
                    return Ok(());
                };
                let digits = &bytes[i..i + colon];
                let len = digits.iter().try_fold(0usize, |n, &d| {
                    d.is_ascii_digit()
                        .then_some(n)?
                        .checked_mul(10)?
                        .checked_add(usize::from(d - b'0'))
                });
                match len.and_then(|l| (i + colon + 1).checked_add(l)) {
                    Some(next) if next <= bytes.len() => i = next,
                    _ => return Ok(()),
                }
            }
            _ => return Ok(()),
        }
    }
    Ok(())
}

impl Info {
    /// Parses and validates a bencoded info dictionary, and computes its hash.
    /// Safe on any input: it returns an error, never panics or overflows.
    ///
    /// # Errors
    /// Any [`MetainfoError`]: bad bencode, nesting deeper than
    /// [`MAX_BENCODE_DEPTH`], geometry, or an unsafe path.
    pub fn from_bencode(bytes: &[u8]) -> Result<(Self, InfoHash), MetainfoError> {
        check_depth(bytes)?;
        let info: Info = serde_bencode::from_bytes(bytes)?;
        info.validate()?;
        let hash = InfoHash(Sha1::digest(bytes).into());
        Ok((info, hash))
    }

    /// The canonical bencoding (keys sorted).
    ///
    /// # Errors
    /// Only if serialization fails, which a valid `Info` never does.
    pub fn to_bencode(&self) -> Result<Vec<u8>, MetainfoError> {
        Ok(serde_bencode::to_bytes(self)?)
    }

    /// SHA-1 of the bencoding.
    ///
    /// # Errors
    /// As [`Info::to_bencode`].
    pub fn info_hash(&self) -> Result<InfoHash, MetainfoError> {
        Ok(InfoHash(Sha1::digest(self.to_bencode()?).into()))
    }

    /// Total bytes of all files.
    pub fn total_length(&self) -> u64 {
        self.files.iter().map(|f| f.length).sum()
    }

    /// Piece geometry with `block_length`-sized requests.
    ///
    /// # Errors
    /// When the piece length or count is out of range.
    pub fn lengths(&self, block_length: u32) -> Result<Lengths, MetainfoError> {
        let block = u64::from(block_length).min(self.piece_length) as u32;
        Lengths::new(self.total_length(), self.piece_length, block)
            .ok_or(MetainfoError::BadPieceLength(self.piece_length))
    }

    /// The expected SHA-1 of piece `index`.
    pub fn piece_hash(&self, index: PieceIndex) -> Option<[u8; 20]> {
        let start = (index.0 as usize).checked_mul(20)?;
        let s = self.pieces.get(start..start + 20)?;
        let mut h = [0u8; 20];
        h.copy_from_slice(s);
        Some(h)
    }

    /// Checks geometry and every path; see [`MetainfoError`].
    ///
    /// # Errors
    /// The first problem found.
    pub fn validate(&self) -> Result<(), MetainfoError> {
        if !self.piece_length.is_power_of_two()
            || !(MIN_PIECE_LEN..=MAX_PIECE_LEN).contains(&self.piece_length)
        {
            return Err(MetainfoError::BadPieceLength(self.piece_length));
        }
        if self.files.is_empty() {
            return Err(MetainfoError::NoFiles);
        }
        let mut total: u64 = 0;
        for f in &self.files {
            total = total.checked_add(f.length).ok_or(MetainfoError::Overflow)?;
        }
        let num = total.div_ceil(self.piece_length);
        if num > MAX_PIECES {
            return Err(MetainfoError::TooManyPieces {
                got: num,
                max: MAX_PIECES,
            });
        }
        let expected = num as usize * 20;
        if self.pieces.len() != expected {
            return Err(MetainfoError::BadPiecesLength {
                got: self.pieces.len(),
                expected,
            });
        }
        check_component(&self.name, &self.name)?;
        let mut files = HashSet::new();
        let mut dirs = HashSet::new();
        for f in &self.files {
            let whole = f.display_path();
            if f.path.is_empty() {
                return Err(MetainfoError::UnsafePath {
                    path: whole,
                    reason: "empty path",
                });
            }
            for c in &f.path {
                check_component(c, &whole)?;
            }
            if !files.insert(whole.clone()) {
                return Err(MetainfoError::DuplicatePath(whole));
            }
            for depth in 1..f.path.len() {
                dirs.insert(f.path[..depth].join("/"));
            }
        }
        if let Some(clash) = files.iter().find(|p| dirs.contains(*p)) {
            return Err(MetainfoError::PathConflict(clash.clone()));
        }
        Ok(())
    }

    /// Start offset of every file in the task stream.
    pub fn file_offsets(&self) -> Vec<u64> {
        let mut off = 0;
        self.files
            .iter()
            .map(|f| {
                let o = off;
                off += f.length;
                o
            })
            .collect()
    }
}

/// A run of bytes inside one file: `(file index, offset in file, length)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileSpan {
    pub file: usize,
    pub offset: u64,
    pub len: u64,
}

/// Maps task-stream byte ranges to file ranges.
#[derive(Clone, Debug)]
pub struct FileMap {
    offsets: Vec<u64>,
    lengths: Vec<u64>,
}

impl FileMap {
    pub fn new(info: &Info) -> Self {
        Self {
            offsets: info.file_offsets(),
            lengths: info.files.iter().map(|f| f.length).collect(),
        }
    }

    /// The file spans covering `[offset, offset + len)`, skipping empty files.
    pub fn spans(&self, offset: u64, len: u64) -> Vec<FileSpan> {
        let end = offset + len;
        // First file whose end is beyond `offset`.
        let start = self
            .offsets
            .partition_point(|&o| o <= offset)
            .saturating_sub(1);
        let mut out = Vec::new();
        for i in start..self.offsets.len() {
            let (fo, fl) = (self.offsets[i], self.lengths[i]);
            if fo >= end {
                break;
            }
            let s = offset.max(fo);
            let e = end.min(fo + fl);
            if e > s {
                out.push(FileSpan {
                    file: i,
                    offset: s - fo,
                    len: e - s,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn info(files: Vec<(&[&str], u64)>) -> Info {
        let total: u64 = files.iter().map(|f| f.1).sum();
        let pl = 16 * 1024;
        Info {
            name: "t".into(),
            piece_length: pl,
            pieces: vec![0; total.div_ceil(pl) as usize * 20],
            files: files
                .into_iter()
                .map(|(p, l)| FileEntry {
                    length: l,
                    path: p.iter().map(|s| s.to_string()).collect(),
                    mode: 0o644,
                })
                .collect(),
        }
    }

    #[test]
    fn bencode_round_trip_and_key_order() {
        let i = info(vec![(&["a", "b.txt"], 20_000), (&["empty"], 0)]);
        let b = i.to_bencode().unwrap();
        assert!(
            b.starts_with(b"d5:filesld6:lengthi20000e4:modei420e4:pathl1:a5:b.txtee"),
            "{}",
            String::from_utf8_lossy(&b)
        );
        let (back, h) = Info::from_bencode(&b).unwrap();
        assert_eq!(back, i);
        assert_eq!(h, i.info_hash().unwrap());
    }

    #[test]
    fn rejects_escaping_paths() {
        for bad in [
            &["..", "x"][..],
            &["a", ".."],
            &["/etc"],
            &[""],
            &["a\\b"],
            &["."],
        ] {
            let i = info(vec![(bad, 1)]);
            assert!(
                matches!(i.validate(), Err(MetainfoError::UnsafePath { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(
            info(vec![(&["a"], 1), (&["a"], 1)]).validate(),
            Err(MetainfoError::DuplicatePath(_))
        ));
        assert!(matches!(
            info(vec![(&["a"], 1), (&["a", "b"], 1)]).validate(),
            Err(MetainfoError::PathConflict(_))
        ));
    }

    #[test]
    fn rejects_bad_geometry() {
        let mut i = info(vec![(&["a"], 100)]);
        i.pieces.push(0);
        assert!(matches!(
            i.validate(),
            Err(MetainfoError::BadPiecesLength { .. })
        ));
        i.piece_length = 1000;
        assert!(matches!(
            i.validate(),
            Err(MetainfoError::BadPieceLength(1000))
        ));
        assert!(Info::from_bencode(b"garbage").is_err());
    }

    /// `d3:foo` + `l` × n + `e` × n + the rest of a valid info: an unknown
    /// key holding `n` nested lists, inside the info dictionary.
    fn nested_unknown_key(n: usize) -> Vec<u8> {
        let valid = info(vec![(&["a"], 100)]).to_bencode().unwrap();
        let mut b = b"d3:foo".to_vec();
        b.extend_from_slice(&vec![b'l'; n]);
        b.extend_from_slice(&vec![b'e'; n]);
        b.extend_from_slice(&valid[1..]);
        b
    }

    /// Regression, found while fuzzing: fed to the `metainfo` fuzz target, 50,000
    /// nested lists under an unknown key overflowed the stack inside
    /// serde_bencode and aborted the process. (libFuzzer's default 4 KiB
    /// inputs are too short to get there; see `protocol/fuzz/README.md`.)
    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        assert!(matches!(
            Info::from_bencode(&nested_unknown_key(100_000)),
            Err(MetainfoError::TooDeep {
                max: MAX_BENCODE_DEPTH
            })
        ));
        // The info dictionary is one level: the limit counts it.
        assert!(Info::from_bencode(&nested_unknown_key(MAX_BENCODE_DEPTH - 1)).is_ok());
        assert!(matches!(
            Info::from_bencode(&nested_unknown_key(MAX_BENCODE_DEPTH)),
            Err(MetainfoError::TooDeep { .. })
        ));
    }

    #[test]
    fn depth_check_tokenises_strings_and_integers() {
        // Brackets inside strings and integers are not nesting.
        let mut b = b"d3:foo".to_vec();
        b.extend_from_slice(format!("{}:{}", 40, "l".repeat(40)).as_bytes());
        b.extend_from_slice(b"3:bari-1e");
        b.extend_from_slice(&info(vec![(&["a"], 100)]).to_bencode().unwrap()[1..]);
        assert!(Info::from_bencode(&b).is_ok());
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_error_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok((i, _)) = Info::from_bencode(&bytes) {
                prop_assert!(i.validate().is_ok());
            }
        }

        /// Random bytes rarely get past the first bencode token; damaging a
        /// valid encoding reaches the field and validation paths too.
        #[test]
        fn damaged_encodings_decode_or_error_never_panic(
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut b = info(vec![(&["a", "b.txt"], 20_000), (&["empty"], 0)])
                .to_bencode()
                .unwrap();
            let i = at.index(b.len());
            b[i] = byte;
            b.truncate(cut.index(b.len() + 1).max(i + 1));
            if let Ok((i, _)) = Info::from_bencode(&b) {
                prop_assert!(i.validate().is_ok());
            }
        }
    }

    #[test]
    fn spans_cross_files_and_skip_empty_ones() {
        let i = info(vec![(&["a"], 10), (&["e"], 0), (&["b"], 5), (&["c"], 100)]);
        let m = FileMap::new(&i);
        assert_eq!(
            m.spans(8, 10),
            vec![
                FileSpan {
                    file: 0,
                    offset: 8,
                    len: 2
                },
                FileSpan {
                    file: 2,
                    offset: 0,
                    len: 5
                },
                FileSpan {
                    file: 3,
                    offset: 0,
                    len: 3
                }
            ]
        );
        assert_eq!(
            m.spans(15, 1),
            vec![FileSpan {
                file: 3,
                offset: 0,
                len: 1
            }]
        );
        assert_eq!(
            m.spans(114, 1),
            vec![FileSpan {
                file: 3,
                offset: 99,
                len: 1
            }]
        );
    }
}
