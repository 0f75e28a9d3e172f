//! Feeds arbitrary bytes to the metainfo decoder, as an agent receives them
//! from the server. Whatever it accepts must be valid, have a usable piece
//! geometry and a file map that covers every byte, and survive a canonical
//! re-encoding unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pollen_protocol::lengths::DEFAULT_BLOCK_LEN;
use pollen_protocol::metainfo::FileMap;
use pollen_protocol::{Info, PieceIndex};

fuzz_target!(|data: &[u8]| {
    let Ok((info, _)) = Info::from_bencode(data) else {
        return;
    };
    info.validate().expect("from_bencode accepted an invalid info");
    let lengths = info
        .lengths(DEFAULT_BLOCK_LEN)
        .expect("valid info without a geometry");
    let total = info.total_length();
    let covered: u64 = FileMap::new(&info).spans(0, total).iter().map(|s| s.len).sum();
    assert_eq!(covered, total);
    for i in 0..lengths.num_pieces() {
        assert!(info.piece_hash(PieceIndex(i)).is_some());
    }
    let canonical = info.to_bencode().expect("valid info does not encode");
    let (again, hash) = Info::from_bencode(&canonical).expect("canonical form rejected");
    assert_eq!(again, info);
    assert_eq!(hash, info.info_hash().expect("hash"));
});
