//! Feeds arbitrary bytes to the handshake parser, then the rest of the input
//! to the frame decoder, as a connection reads them. A handshake that parses
//! must serialise back to the same 68 bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pollen_protocol::handshake::HANDSHAKE_LEN;
use pollen_protocol::{Handshake, Message};

fuzz_target!(|data: &[u8]| {
    let Some((head, mut rest)) = data.split_first_chunk::<HANDSHAKE_LEN>() else {
        return;
    };
    let Ok(h) = Handshake::from_bytes(head) else {
        return;
    };
    assert_eq!(&h.to_bytes(), head);
    while let Ok(Some((_, used))) = Message::decode(rest) {
        rest = &rest[used..];
    }
});
