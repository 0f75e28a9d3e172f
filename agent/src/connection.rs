//! One peer socket and its buffers.
//!
//! [`Connection`] owns a `TcpStream` (split into halves) and a read buffer.
//! It turns bytes into [`Message`]s with the sans-I/O codec of
//! `pollen-protocol`: `Ok(None)` is a clean EOF between frames, an EOF inside
//! a frame is an error, and every socket operation carries a named timeout.
//! After the handshake a peer session splits it into a [`FrameReader`] and a
//! [`FrameWriter`] so that its reader and writer loops run concurrently.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use bytes_utils::SegmentedBuf;
use pollen_protocol::handshake::HANDSHAKE_LEN;
use pollen_protocol::{Handshake, Message};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::error::{Error, Result};

/// Time allowed to receive the 68-byte handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to receive the AUTH message after the handshake.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// A session without any incoming frame for this long is dead.
pub const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// Time allowed for one write to complete.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed to establish an outgoing connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

const READ_CHUNK: usize = 64 * 1024;

/// Reads frames from one half of a socket.
pub struct FrameReader<R> {
    io: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a reader with an empty buffer.
    pub fn new(io: R) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
        }
    }

    /// Reads more bytes; returns how many (0 on EOF).
    async fn fill(&mut self, limit: Duration, op: &'static str) -> Result<usize> {
        self.buf.reserve(READ_CHUNK);
        match tokio::time::timeout(limit, self.io.read_buf(&mut self.buf)).await {
            Ok(r) => r.map_err(Error::net(op)),
            Err(_) => Err(Error::Timeout { op }),
        }
    }

    /// Reads the BEP 3 handshake.
    ///
    /// # Errors
    /// A timeout, EOF before 68 bytes, or a foreign protocol string.
    pub async fn read_handshake(&mut self, limit: Duration) -> Result<Handshake> {
        let deadline = tokio::time::Instant::now() + limit;
        while self.buf.len() < HANDSHAKE_LEN {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if self.fill(left, "reading the handshake").await? == 0 {
                return Err(if self.buf.is_empty() {
                    Error::Closed {
                        during: "reading the handshake",
                    }
                } else {
                    Error::UnexpectedEof {
                        during: "reading the handshake",
                    }
                });
            }
        }
        let mut raw = [0u8; HANDSHAKE_LEN];
        raw.copy_from_slice(&self.buf[..HANDSHAKE_LEN]);
        self.buf.advance(HANDSHAKE_LEN);
        Ok(Handshake::from_bytes(&raw)?)
    }

    /// Reads the next message, waiting at most `limit` for it to complete.
    ///
    /// Returns `Ok(None)` when the peer closed the connection between frames.
    ///
    /// # Errors
    /// A timeout, an I/O error, EOF inside a frame, or a malformed frame
    /// (an oversized length is rejected from its 4-byte prefix alone).
    pub async fn read_message(&mut self, limit: Duration) -> Result<Option<Message>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(msg) = Message::decode_from(&mut self.buf)? {
                return Ok(Some(msg));
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if self.fill(left, "reading a message").await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(Error::UnexpectedEof {
                        during: "reading a message",
                    })
                };
            }
        }
    }
}

/// PIECE payloads at least this long are written from their own buffer, by
/// a vectored write, instead of being copied into the frame buffer first.
const SEND_IN_PLACE: usize = 1024;

/// Writes frames to one half of a socket.
///
/// Small frames are encoded into one buffer; a block's payload is not
/// copied: its frame head goes to the buffer and the payload (a view of the
/// piece cache or of a verified piece's buffer, or the copy a relayed block
/// gets out of an unverified one) follows it in the queue of segments that
/// one vectored write sends.
pub struct FrameWriter<W> {
    io: W,
    buf: BytesMut,
    out: SegmentedBuf<Bytes>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Wraps a writer.
    pub fn new(io: W) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
            out: SegmentedBuf::new(),
        }
    }

    /// Queues `msg` for the next flush without writing.
    pub fn queue(&mut self, msg: &Message) {
        match msg {
            Message::Piece { data, .. } if data.len() >= SEND_IN_PLACE => {
                msg.encode_head(&mut self.buf);
                self.out.push(self.buf.split().freeze());
                self.out.push(data.clone());
            }
            _ => msg.encode(&mut self.buf),
        }
    }

    /// Bytes queued and not yet flushed.
    pub fn pending(&self) -> usize {
        self.buf.len() + self.out.remaining()
    }

    /// Writes everything queued.
    ///
    /// # Errors
    /// An I/O error or [`WRITE_TIMEOUT`].
    pub async fn flush(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            self.out.push(self.buf.split().freeze());
        }
        if !self.out.has_remaining() {
            return Ok(());
        }
        let write = async {
            self.io.write_all_buf(&mut self.out).await?;
            self.io.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(r) => r.map_err(Error::net("writing")),
            Err(_) => Err(Error::Timeout { op: "writing" }),
        }
    }

    /// Writes one message.
    ///
    /// # Errors
    /// As [`FrameWriter::flush`].
    pub async fn write_message(&mut self, msg: &Message) -> Result<()> {
        self.queue(msg);
        self.flush().await
    }

    /// Writes the BEP 3 handshake.
    ///
    /// # Errors
    /// As [`FrameWriter::flush`].
    pub async fn write_handshake(&mut self, hs: &Handshake) -> Result<()> {
        self.buf.extend_from_slice(&hs.to_bytes());
        self.flush().await
    }
}

/// Congestion control for peer and seed sockets, when the kernel offers it.
const PEER_CONGESTION: &[u8] = b"cubic";

/// Asks for [`PEER_CONGESTION`] on a peer socket, keeping the system default
/// when the kernel lacks it. A swarm runs many parallel flows through every
/// host's link, and each agent's download link carries its peers' flows and
/// the seed's. With BBR (v1, the kernel's `bbr`) some of those flows starve
/// behind a deep buffer: in the bench lab (docs/benchmarks.md, sixth run)
/// three of the seed's 16 flows sat at a congestion window of 10 packets and
/// a bandwidth estimate of a sixth of their share, and two to five agents
/// got 3-7 of the seed's first copies instead of about 64, so their uploads
/// had little to offer and the swarm fell behind. Cubic shares a link more
/// evenly between flows of the same round-trip time (the fewest first
/// copies for one agent: 9-42), and it is what other traffic on the network
/// most likely runs, so the swarm competes with it fairly.
fn set_congestion_control(stream: &TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_congestion(PEER_CONGESTION) {
        tracing::trace!(error = %e, "cubic unavailable; keeping the default congestion control");
    }
}

/// A peer socket before it is split for a session.
pub struct Connection {
    reader: FrameReader<OwnedReadHalf>,
    writer: FrameWriter<OwnedWriteHalf>,
    peer: SocketAddr,
}

impl Connection {
    /// Wraps an accepted or dialed stream.
    ///
    /// # Errors
    /// If the peer address cannot be read (the socket is already dead).
    pub fn new(stream: TcpStream) -> Result<Self> {
        let peer = stream
            .peer_addr()
            .map_err(Error::net("reading the peer address"))?;
        let _ = stream.set_nodelay(true);
        set_congestion_control(&stream);
        let (r, w) = stream.into_split();
        Ok(Self {
            reader: FrameReader::new(r),
            writer: FrameWriter::new(w),
            peer,
        })
    }

    /// The remote address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// See [`FrameReader::read_handshake`].
    ///
    /// # Errors
    /// As [`FrameReader::read_handshake`].
    pub async fn read_handshake(&mut self, limit: Duration) -> Result<Handshake> {
        self.reader.read_handshake(limit).await
    }

    /// See [`FrameReader::read_message`].
    ///
    /// # Errors
    /// As [`FrameReader::read_message`].
    pub async fn read_message(&mut self, limit: Duration) -> Result<Option<Message>> {
        self.reader.read_message(limit).await
    }

    /// See [`FrameWriter::write_message`].
    ///
    /// # Errors
    /// As [`FrameWriter::write_message`].
    pub async fn write_message(&mut self, msg: &Message) -> Result<()> {
        self.writer.write_message(msg).await
    }

    /// See [`FrameWriter::write_handshake`].
    ///
    /// # Errors
    /// As [`FrameWriter::write_handshake`].
    pub async fn write_handshake(&mut self, hs: &Handshake) -> Result<()> {
        self.writer.write_handshake(hs).await
    }

    /// Queues a message for the next [`Connection::flush`].
    pub fn queue(&mut self, msg: &Message) {
        self.writer.queue(msg);
    }

    /// Writes everything queued.
    ///
    /// # Errors
    /// As [`FrameWriter::flush`].
    pub async fn flush(&mut self) -> Result<()> {
        self.writer.flush().await
    }

    /// Splits into independently usable halves.
    pub fn into_split(self) -> (FrameReader<OwnedReadHalf>, FrameWriter<OwnedWriteHalf>) {
        (self.reader, self.writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pollen_protocol::{DecodeError, PieceIndex};
    use tokio::io::AsyncWriteExt;

    /// Peer sockets get cubic where the kernel has it (every Linux build
    /// that has TCP: cubic is the kernel's built-in default).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn peer_sockets_ask_for_cubic() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (dialed, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let _other = accepted.unwrap();
        let conn = Connection::new(dialed.unwrap()).unwrap();
        let stream: &TcpStream = conn.writer.io.as_ref();
        let cc = socket2::SockRef::from(stream).tcp_congestion().unwrap();
        // The kernel returns the name NUL-padded to its field's length.
        let name: Vec<u8> = cc.into_iter().take_while(|b| *b != 0).collect();
        assert_eq!(name.as_slice(), b"cubic");
    }

    #[tokio::test]
    async fn messages_then_clean_eof() {
        let (a, b) = tokio::io::duplex(1024);
        let mut w = FrameWriter::new(a);
        let mut r = FrameReader::new(b);
        w.write_message(&Message::Have(PieceIndex(3)))
            .await
            .unwrap();
        w.write_message(&Message::KeepAlive).await.unwrap();
        drop(w);
        assert_eq!(
            r.read_message(READ_TIMEOUT).await.unwrap(),
            Some(Message::Have(PieceIndex(3)))
        );
        assert_eq!(
            r.read_message(READ_TIMEOUT).await.unwrap(),
            Some(Message::KeepAlive)
        );
        assert_eq!(r.read_message(READ_TIMEOUT).await.unwrap(), None);
    }

    /// A batch that mixes blocks sent in place (vectored, over a real
    /// socket) with small frames and short blocks copied into the frame
    /// buffer arrives whole and in order.
    #[tokio::test]
    async fn blocks_sent_in_place_arrive_whole_and_in_order() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (dialed, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (_, w) = dialed.unwrap().into_split();
        let (r, _) = accepted.unwrap().0.into_split();
        let mut w = FrameWriter::new(w);
        let mut r = FrameReader::new(r);
        let block = |i: u32, len: usize| Message::Piece {
            index: PieceIndex(i),
            begin: i * 7,
            data: Bytes::from((0..len).map(|k| (k as u32 ^ i) as u8).collect::<Vec<u8>>()),
        };
        let mut sent = vec![Message::Have(PieceIndex(9))];
        for i in 0..40 {
            sent.push(block(i, if i % 5 == 0 { 100 } else { 16 * 1024 }));
            if i % 3 == 0 {
                sent.push(Message::Have(PieceIndex(i)));
            }
        }
        let want: usize = sent.iter().map(Message::wire_len).sum();
        for m in &sent {
            w.queue(m);
        }
        assert_eq!(w.pending(), want);
        let reading = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(m) = r.read_message(READ_TIMEOUT).await.unwrap() {
                got.push(m);
            }
            got
        });
        w.flush().await.unwrap();
        assert_eq!(w.pending(), 0);
        // The buffer is reused for the next batch.
        w.write_message(&block(99, 16 * 1024)).await.unwrap();
        sent.push(block(99, 16 * 1024));
        drop(w);
        assert_eq!(reading.await.unwrap(), sent);
    }

    #[tokio::test]
    async fn eof_mid_frame_is_an_error() {
        let (mut a, b) = tokio::io::duplex(1024);
        let mut r = FrameReader::new(b);
        a.write_all(&[0, 0, 0, 5, 4, 0]).await.unwrap();
        drop(a);
        assert!(matches!(
            r.read_message(READ_TIMEOUT).await,
            Err(Error::UnexpectedEof { .. })
        ));
    }

    #[tokio::test]
    async fn oversized_frame_rejected_before_buffering() {
        let (mut a, b) = tokio::io::duplex(1024);
        let mut r = FrameReader::new(b);
        a.write_all(&[0x7f, 0xff, 0xff, 0xff]).await.unwrap();
        let e = r.read_message(READ_TIMEOUT).await.unwrap_err();
        assert!(
            matches!(e, Error::Decode(DecodeError::TooLong { .. })),
            "{e}"
        );
        assert!(e.is_peer_fault());
    }

    #[tokio::test(start_paused = true)]
    async fn silent_peer_times_out() {
        let (_a, b) = tokio::io::duplex(1024);
        let mut r = FrameReader::new(b);
        let e = r.read_message(Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }), "{e}");
        let e = r.read_handshake(HANDSHAKE_TIMEOUT).await.unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }), "{e}");
    }

    #[tokio::test]
    async fn handshake_round_trip_and_foreign_protocol() {
        let (a, b) = tokio::io::duplex(1024);
        let mut w = FrameWriter::new(a);
        let mut r = FrameReader::new(b);
        let hs = Handshake::new(
            pollen_protocol::InfoHash([1; 20]),
            pollen_protocol::PeerId([2; 20]),
        );
        w.write_handshake(&hs).await.unwrap();
        w.write_message(&Message::Unchoke).await.unwrap();
        assert_eq!(r.read_handshake(HANDSHAKE_TIMEOUT).await.unwrap(), hs);
        assert_eq!(
            r.read_message(READ_TIMEOUT).await.unwrap(),
            Some(Message::Unchoke)
        );
        let (mut a, b) = tokio::io::duplex(1024);
        let mut r = FrameReader::new(b);
        a.write_all(&[b'G'; 68]).await.unwrap();
        assert!(matches!(
            r.read_handshake(HANDSHAKE_TIMEOUT).await,
            Err(Error::Decode(_))
        ));
    }
}
