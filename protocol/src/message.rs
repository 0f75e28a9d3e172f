//! Peer wire messages: BEP 3 framing (`u32` big-endian length, `u8` id,
//! payload; length 0 is a keep-alive) plus Pollen's AUTH message.
//!
//! The decoder is incremental: [`Message::decode`] returns `Ok(None)` until a
//! whole frame is buffered, and rejects an oversized length prefix before a
//! single payload byte needs buffering.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::DecodeError;
use crate::ids::PieceIndex;

/// Largest `length` a REQUEST may ask for, and so the largest PIECE payload.
pub const MAX_REQUEST_LEN: u32 = 128 * 1024;
/// Largest AUTH token in bytes.
pub const MAX_AUTH_LEN: u32 = 8 * 1024;
/// Largest frame (id plus payload) the decoder accepts. Fits a PIECE of
/// [`MAX_REQUEST_LEN`] and a BITFIELD of [`crate::lengths::MAX_PIECES`].
pub const MAX_MESSAGE_LEN: u32 = 1 + 8 + MAX_REQUEST_LEN;

/// Message ids (BEP 3, plus [`ids::AUTH`]).
pub mod ids {
    pub const CHOKE: u8 = 0;
    pub const UNCHOKE: u8 = 1;
    pub const INTERESTED: u8 = 2;
    pub const NOT_INTERESTED: u8 = 3;
    pub const HAVE: u8 = 4;
    pub const BITFIELD: u8 = 5;
    pub const REQUEST: u8 = 6;
    pub const PIECE: u8 = 7;
    pub const CANCEL: u8 = 8;
    /// Pollen extension: the server-signed task token, sent right after the
    /// handshake. Outside BEP 3's and BEP 10's ranges.
    pub const AUTH: u8 = 64;
    /// Pollen extension: the sender is receiving this piece from the seed
    /// and forwards its blocks as they arrive, before it has verified the
    /// whole piece (see `docs/protocol.md`).
    pub const RELAY: u8 = 65;
    /// Pollen extension: asks for a range of the task's bencoded info
    /// dictionary (an agent whose push left it out; see `docs/protocol.md`).
    pub const INFO_REQUEST: u8 = 66;
    /// Pollen extension: a range of the bencoded info dictionary.
    pub const INFO_DATA: u8 = 67;
}

/// Most bytes of the info dictionary one INFO_DATA carries.
pub const MAX_INFO_CHUNK: u32 = MAX_REQUEST_LEN;

/// One peer wire message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    KeepAlive,
    Choke,
    Unchoke,
    Interested,
    NotInterested,
    Have(PieceIndex),
    Bitfield(Bytes),
    Request {
        index: PieceIndex,
        begin: u32,
        length: u32,
    },
    Piece {
        index: PieceIndex,
        begin: u32,
        data: Bytes,
    },
    Cancel {
        index: PieceIndex,
        begin: u32,
        length: u32,
    },
    /// A compact JWT signed by the server (see `docs/protocol.md`).
    Auth(String),
    /// The sender is receiving this piece from the seed: its blocks may be
    /// requested now and are sent as they arrive. A HAVE follows once the
    /// sender has verified the piece.
    Relay(PieceIndex),
    /// Asks for the bytes of the bencoded info dictionary from `offset`.
    InfoRequest {
        offset: u32,
    },
    /// Bytes `offset..offset + data.len()` of the bencoded info dictionary,
    /// which is `total` bytes long.
    InfoData {
        offset: u32,
        total: u32,
        data: Bytes,
    },
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

impl Message {
    /// Short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Message::KeepAlive => "keep-alive",
            Message::Choke => "choke",
            Message::Unchoke => "unchoke",
            Message::Interested => "interested",
            Message::NotInterested => "not-interested",
            Message::Have(_) => "have",
            Message::Bitfield(_) => "bitfield",
            Message::Request { .. } => "request",
            Message::Piece { .. } => "piece",
            Message::Cancel { .. } => "cancel",
            Message::Auth(_) => "auth",
            Message::Relay(_) => "relay",
            Message::InfoRequest { .. } => "info-request",
            Message::InfoData { .. } => "info-data",
        }
    }

    /// Bytes this message occupies on the wire, length prefix included.
    pub fn wire_len(&self) -> usize {
        4 + match self {
            Message::KeepAlive => 0,
            Message::Choke | Message::Unchoke | Message::Interested | Message::NotInterested => 1,
            Message::Have(_) | Message::Relay(_) | Message::InfoRequest { .. } => 5,
            Message::InfoData { data, .. } => 9 + data.len(),
            Message::Bitfield(b) => 1 + b.len(),
            Message::Request { .. } | Message::Cancel { .. } => 13,
            Message::Piece { data, .. } => 9 + data.len(),
            Message::Auth(t) => 1 + t.len(),
        }
    }

    /// Appends the framed message to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(self.wire_len());
        self.encode_head(dst);
        if let Message::Piece { data, .. } = self {
            dst.put_slice(data);
        }
    }

    /// Appends the framed message to `dst`, except a PIECE's payload: the
    /// caller sends `data` right after it (a vectored write, without copying
    /// the block). Every other message is appended whole, as by
    /// [`Message::encode`].
    pub fn encode_head(&self, dst: &mut BytesMut) {
        let body_len = (self.wire_len() - 4) as u32;
        dst.put_u32(body_len);
        match self {
            Message::KeepAlive => {}
            Message::Choke => dst.put_u8(ids::CHOKE),
            Message::Unchoke => dst.put_u8(ids::UNCHOKE),
            Message::Interested => dst.put_u8(ids::INTERESTED),
            Message::NotInterested => dst.put_u8(ids::NOT_INTERESTED),
            Message::Have(i) => {
                dst.put_u8(ids::HAVE);
                dst.put_u32(i.0);
            }
            Message::Bitfield(b) => {
                dst.put_u8(ids::BITFIELD);
                dst.put_slice(b);
            }
            Message::Request {
                index,
                begin,
                length,
            } => {
                dst.put_u8(ids::REQUEST);
                dst.put_u32(index.0);
                dst.put_u32(*begin);
                dst.put_u32(*length);
            }
            Message::Piece { index, begin, .. } => {
                dst.put_u8(ids::PIECE);
                dst.put_u32(index.0);
                dst.put_u32(*begin);
            }
            Message::Cancel {
                index,
                begin,
                length,
            } => {
                dst.put_u8(ids::CANCEL);
                dst.put_u32(index.0);
                dst.put_u32(*begin);
                dst.put_u32(*length);
            }
            Message::Auth(t) => {
                dst.put_u8(ids::AUTH);
                dst.put_slice(t.as_bytes());
            }
            Message::Relay(i) => {
                dst.put_u8(ids::RELAY);
                dst.put_u32(i.0);
            }
            Message::InfoRequest { offset } => {
                dst.put_u8(ids::INFO_REQUEST);
                dst.put_u32(*offset);
            }
            Message::InfoData {
                offset,
                total,
                data,
            } => {
                dst.put_u8(ids::INFO_DATA);
                dst.put_u32(*offset);
                dst.put_u32(*total);
                dst.put_slice(data);
            }
        }
    }

    /// Decodes one frame from the front of `src`.
    ///
    /// Returns `Ok(None)` if `src` holds only part of a frame, and
    /// `Ok(Some((message, consumed)))` otherwise.
    ///
    /// # Errors
    /// Any malformed frame: a length over [`MAX_MESSAGE_LEN`] (checked from
    /// the 4-byte prefix alone), an unknown id, a payload of the wrong size,
    /// or a REQUEST/CANCEL length outside `1..=MAX_REQUEST_LEN`.
    pub fn decode(src: &[u8]) -> Result<Option<(Message, usize)>, DecodeError> {
        Self::decode_with(src, |start, end| Bytes::copy_from_slice(&src[start..end]))
    }

    /// Decodes one frame from the front of `src` and removes it from `src`.
    ///
    /// Unlike [`Message::decode`], the payload of a PIECE or BITFIELD is not
    /// copied: it is a view of `src`'s memory, which stays allocated while
    /// the message lives.
    ///
    /// # Errors
    /// As [`Message::decode`]; `src` is left as it was.
    pub fn decode_from(src: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
        let mut span = None;
        let Some((mut msg, used)) = Self::decode_with(src, |start, end| {
            span = Some(start..end);
            Bytes::new()
        })?
        else {
            return Ok(None);
        };
        match (span, &mut msg) {
            (
                Some(span),
                Message::Piece { data, .. }
                | Message::Bitfield(data)
                | Message::InfoData { data, .. },
            ) => {
                *data = src.split_to(used).freeze().slice(span);
            }
            _ => src.advance(used),
        }
        Ok(Some(msg))
    }

    /// [`Message::decode`], with `payload(start, end)` making the bytes of a
    /// PIECE's, BITFIELD's or INFO_DATA's payload from that range of `src`.
    fn decode_with(
        src: &[u8],
        payload: impl FnOnce(usize, usize) -> Bytes,
    ) -> Result<Option<(Message, usize)>, DecodeError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = be_u32(src);
        if len > MAX_MESSAGE_LEN {
            return Err(DecodeError::TooLong {
                got: len,
                max: MAX_MESSAGE_LEN,
            });
        }
        let total = 4 + len as usize;
        if src.len() < total {
            return Ok(None);
        }
        if len == 0 {
            return Ok(Some((Message::KeepAlive, 4)));
        }
        let id = src[4];
        let p = &src[5..total];
        let exact = |n: usize| {
            if p.len() == n {
                Ok(())
            } else {
                Err(DecodeError::BadPayloadLength {
                    id,
                    expected: n,
                    got: p.len(),
                })
            }
        };
        let msg = match id {
            ids::CHOKE => exact(0).map(|_| Message::Choke)?,
            ids::UNCHOKE => exact(0).map(|_| Message::Unchoke)?,
            ids::INTERESTED => exact(0).map(|_| Message::Interested)?,
            ids::NOT_INTERESTED => exact(0).map(|_| Message::NotInterested)?,
            ids::HAVE => {
                exact(4)?;
                Message::Have(PieceIndex(be_u32(p)))
            }
            ids::RELAY => {
                exact(4)?;
                Message::Relay(PieceIndex(be_u32(p)))
            }
            ids::BITFIELD => Message::Bitfield(payload(5, total)),
            ids::REQUEST | ids::CANCEL => {
                exact(12)?;
                let (index, begin, length) =
                    (PieceIndex(be_u32(p)), be_u32(&p[4..]), be_u32(&p[8..]));
                if length == 0 || length > MAX_REQUEST_LEN {
                    return Err(DecodeError::BadRequestLength {
                        got: length,
                        max: MAX_REQUEST_LEN,
                    });
                }
                if id == ids::REQUEST {
                    Message::Request {
                        index,
                        begin,
                        length,
                    }
                } else {
                    Message::Cancel {
                        index,
                        begin,
                        length,
                    }
                }
            }
            ids::PIECE => {
                if p.len() < 8 {
                    return Err(DecodeError::BadPayloadLength {
                        id,
                        expected: 8,
                        got: p.len(),
                    });
                }
                Message::Piece {
                    index: PieceIndex(be_u32(p)),
                    begin: be_u32(&p[4..]),
                    data: payload(13, total),
                }
            }
            ids::AUTH => {
                if p.len() > MAX_AUTH_LEN as usize {
                    return Err(DecodeError::TooLong {
                        got: len,
                        max: MAX_AUTH_LEN + 1,
                    });
                }
                let s = std::str::from_utf8(p).map_err(|_| DecodeError::AuthNotUtf8)?;
                Message::Auth(s.to_owned())
            }
            ids::INFO_REQUEST => {
                exact(4)?;
                Message::InfoRequest { offset: be_u32(p) }
            }
            ids::INFO_DATA => {
                if p.len() < 8 {
                    return Err(DecodeError::BadPayloadLength {
                        id,
                        expected: 8,
                        got: p.len(),
                    });
                }
                let (offset, info_total, got) = (be_u32(p), be_u32(&p[4..]), p.len() - 8);
                if got as u64 > u64::from(MAX_INFO_CHUNK)
                    || u64::from(offset) + got as u64 > u64::from(info_total)
                {
                    return Err(DecodeError::BadInfoRange {
                        offset,
                        len: got,
                        total: info_total,
                    });
                }
                Message::InfoData {
                    offset,
                    total: info_total,
                    data: payload(13, total),
                }
            }
            other => return Err(DecodeError::UnknownId(other)),
        };
        Ok(Some((msg, total)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(m: &Message) -> Message {
        let mut buf = BytesMut::new();
        m.encode(&mut buf);
        assert_eq!(buf.len(), m.wire_len());
        // The head, then a PIECE's payload, is the same frame.
        let mut split = BytesMut::new();
        m.encode_head(&mut split);
        if let Message::Piece { data, .. } = m {
            assert_eq!(split.len(), 13);
            split.put_slice(data);
        }
        assert_eq!(split, buf);
        let (out, used) = Message::decode(&buf).unwrap().unwrap();
        assert_eq!(used, buf.len());
        // The consuming decoder agrees and takes exactly the frame.
        let mut owned = buf.clone();
        owned.put_slice(b"next");
        assert_eq!(
            Message::decode_from(&mut owned).unwrap().as_ref(),
            Some(&out)
        );
        assert_eq!(&owned[..], b"next");
        // Every strict prefix is incomplete, not an error.
        for cut in 0..buf.len() {
            assert_eq!(Message::decode(&buf[..cut]).unwrap(), None, "prefix {cut}");
            let mut part = BytesMut::from(&buf[..cut]);
            assert_eq!(
                Message::decode_from(&mut part).unwrap(),
                None,
                "prefix {cut}"
            );
            assert_eq!(part.len(), cut, "prefix {cut} left in place");
        }
        out
    }

    #[test]
    fn exact_bytes_of_request() {
        let mut buf = BytesMut::new();
        Message::Request {
            index: PieceIndex(1),
            begin: 16384,
            length: 16384,
        }
        .encode(&mut buf);
        assert_eq!(
            &buf[..],
            &[0, 0, 0, 13, 6, 0, 0, 0, 1, 0, 0, 0x40, 0, 0, 0, 0x40, 0]
        );
    }

    #[test]
    fn keep_alive_is_four_zero_bytes() {
        let mut buf = BytesMut::new();
        Message::KeepAlive.encode(&mut buf);
        assert_eq!(&buf[..], &[0, 0, 0, 0]);
        assert_eq!(round_trip(&Message::KeepAlive), Message::KeepAlive);
    }

    #[test]
    fn oversized_length_rejected_from_prefix_alone() {
        let err = Message::decode(&[0xff, 0xff, 0xff, 0xff]).unwrap_err();
        assert!(matches!(err, DecodeError::TooLong { .. }));
    }

    #[test]
    fn bad_payloads_rejected() {
        assert!(matches!(
            Message::decode(&[0, 0, 0, 2, 0, 9]),
            Err(DecodeError::BadPayloadLength { .. })
        ));
        assert!(matches!(
            Message::decode(&[0, 0, 0, 1, 99]),
            Err(DecodeError::UnknownId(99))
        ));
        assert!(matches!(
            Message::decode(&[0, 0, 0, 13, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(DecodeError::BadRequestLength { .. })
        ));
        assert!(matches!(
            Message::decode(&[0, 0, 0, 3, 64, 0xff, 0xfe]),
            Err(DecodeError::AuthNotUtf8)
        ));
        // INFO_DATA whose bytes run past the total it states.
        assert!(matches!(
            Message::decode(&[0, 0, 0, 11, 67, 0, 0, 0, 1, 0, 0, 0, 2, 7, 7]),
            Err(DecodeError::BadInfoRange {
                offset: 1,
                len: 2,
                total: 2
            })
        ));
        assert!(matches!(
            Message::decode(&[0, 0, 0, 3, 66, 0, 0]),
            Err(DecodeError::BadPayloadLength { id: 66, .. })
        ));
    }

    #[test]
    fn exact_bytes_of_info_messages() {
        let mut buf = BytesMut::new();
        Message::InfoRequest {
            offset: 0x0102_0304,
        }
        .encode(&mut buf);
        assert_eq!(&buf[..], &[0, 0, 0, 5, 66, 1, 2, 3, 4]);
        let data = Message::InfoData {
            offset: 2,
            total: 5,
            data: Bytes::from_static(b"abc"),
        };
        assert_eq!(round_trip(&data), data);
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        let idx = any::<u32>().prop_map(PieceIndex);
        let len = 1..=MAX_REQUEST_LEN;
        prop_oneof![
            Just(Message::KeepAlive),
            Just(Message::Choke),
            Just(Message::Unchoke),
            Just(Message::Interested),
            Just(Message::NotInterested),
            idx.clone().prop_map(Message::Have),
            idx.clone().prop_map(Message::Relay),
            proptest::collection::vec(any::<u8>(), 0..600)
                .prop_map(|v| Message::Bitfield(v.into())),
            (idx.clone(), any::<u32>(), len.clone()).prop_map(|(index, begin, length)| {
                Message::Request {
                    index,
                    begin,
                    length,
                }
            }),
            (idx.clone(), any::<u32>(), len).prop_map(|(index, begin, length)| Message::Cancel {
                index,
                begin,
                length
            }),
            (
                idx,
                any::<u32>(),
                proptest::collection::vec(any::<u8>(), 0..2000)
            )
                .prop_map(|(index, begin, d)| Message::Piece {
                    index,
                    begin,
                    data: d.into()
                }),
            "[ -~]{0,300}".prop_map(Message::Auth),
            any::<u32>().prop_map(|offset| Message::InfoRequest { offset }),
            (
                any::<u32>(),
                proptest::collection::vec(any::<u8>(), 0..2000),
                any::<u32>()
            )
                .prop_map(|(offset, d, extra)| {
                    let offset = offset % (1 << 30);
                    let total = offset + d.len() as u32 + extra % (1 << 30);
                    Message::InfoData {
                        offset,
                        total,
                        data: d.into(),
                    }
                }),
        ]
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(m in arb_message()) {
            prop_assert_eq!(round_trip(&m), m);
        }

        #[test]
        fn any_bytes_decode_or_error_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut owned = BytesMut::from(&bytes[..]);
            match Message::decode(&bytes) {
                Ok(Some((m, used))) => {
                    prop_assert!(used <= bytes.len());
                    prop_assert_eq!(m.wire_len(), used);
                    prop_assert_eq!(Message::decode_from(&mut owned).ok(), Some(Some(m)));
                    prop_assert_eq!(owned.len(), bytes.len() - used);
                }
                Ok(None) => prop_assert_eq!(Message::decode_from(&mut owned).ok(), Some(None)),
                Err(e) => {
                    prop_assert_eq!(Message::decode_from(&mut owned).err(), Some(e));
                    prop_assert_eq!(owned.len(), bytes.len());
                }
            }
        }

        #[test]
        fn framed_random_payloads_never_panic(id in any::<u8>(), payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut buf = BytesMut::new();
            buf.put_u32(payload.len() as u32 + 1);
            buf.put_u8(id);
            buf.put_slice(&payload);
            let _ = Message::decode(&buf);
        }
    }
}
