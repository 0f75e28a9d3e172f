//! Helpers for the crate's unit tests.

use pollen_protocol::{FileEntry, Info};
use sha1::{Digest, Sha1};

/// Builds an `Info` for `files` (`path`, contents, mode) and returns it with
/// the concatenated stream.
pub(crate) fn make_info(files: &[(&str, Vec<u8>, u32)], piece_length: u64) -> (Info, Vec<u8>) {
    let stream: Vec<u8> = files.iter().flat_map(|f| f.1.iter().copied()).collect();
    let pieces = stream
        .chunks(piece_length as usize)
        .flat_map(|c| <[u8; 20]>::from(Sha1::digest(c)))
        .collect();
    let info = Info {
        name: "t".into(),
        piece_length,
        pieces,
        files: files
            .iter()
            .map(|(p, d, m)| FileEntry {
                length: d.len() as u64,
                path: p.split('/').map(str::to_owned).collect(),
                mode: *m,
            })
            .collect(),
    };
    info.validate().unwrap();
    (info, stream)
}

/// `n` pseudo-random bytes.
pub(crate) fn random_bytes(n: usize) -> Vec<u8> {
    use rand::RngCore;
    let mut v = vec![0; n];
    rand::thread_rng().fill_bytes(&mut v);
    v
}
