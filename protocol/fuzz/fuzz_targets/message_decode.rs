//! Feeds arbitrary bytes to the peer wire decoder as a stream: decode frames
//! from the front until the decoder asks for more or rejects the input.
//! Every decoded message must re-encode to exactly the bytes it consumed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use bytes::BytesMut;
use pollen_protocol::Message;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((msg, used))) = Message::decode(rest) {
        assert!(used > 0 && used <= rest.len());
        assert_eq!(msg.wire_len(), used);
        let mut buf = BytesMut::new();
        msg.encode(&mut buf);
        assert_eq!(&buf[..], &rest[..used]);
        rest = &rest[used..];
    }
});
