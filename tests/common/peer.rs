//! A raw wire-protocol peer for tests: it speaks Pollen's framing with the
//! protocol crate and can misbehave on purpose.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Result};
use bytes::BytesMut;
use pollen_protocol::handshake::HANDSHAKE_LEN;
use pollen_protocol::{Handshake, InfoHash, Message, PeerId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

pub struct RawPeer {
    pub stream: TcpStream,
    buf: BytesMut,
}

/// What a read attempt saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    Closed,
    Bytes(usize),
    Nothing,
}

impl RawPeer {
    /// Connects from `local_ip` (port chosen by the OS) to `remote`.
    pub async fn connect(local_ip: &str, remote: SocketAddr) -> Result<Self> {
        let sock = TcpSocket::new_v4()?;
        sock.bind(format!("{local_ip}:0").parse()?)?;
        let stream = tokio::time::timeout(Duration::from_secs(5), sock.connect(remote)).await??;
        Ok(Self {
            stream,
            buf: BytesMut::new(),
        })
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    pub async fn send_handshake(&mut self, ih: InfoHash) -> Result<()> {
        let hs = Handshake::new(ih, PeerId::random());
        self.send_raw(&hs.to_bytes()).await
    }

    /// A handshake with these reserved bytes (to act as another version).
    pub async fn send_handshake_reserved(&mut self, ih: InfoHash, reserved: [u8; 8]) -> Result<()> {
        let mut hs = Handshake::new(ih, PeerId::random());
        hs.reserved = reserved;
        self.send_raw(&hs.to_bytes()).await
    }

    pub async fn send(&mut self, m: &Message) -> Result<()> {
        let mut b = BytesMut::new();
        m.encode(&mut b);
        self.send_raw(&b).await
    }

    /// Waits up to `t` and reports whether the other side sent bytes, closed,
    /// or stayed silent.
    pub async fn observe(&mut self, t: Duration) -> Seen {
        let mut tmp = [0u8; 4096];
        match tokio::time::timeout(t, self.stream.read(&mut tmp)).await {
            Ok(Ok(0)) | Ok(Err(_)) => Seen::Closed,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&tmp[..n]);
                Seen::Bytes(n)
            }
            Err(_) => Seen::Nothing,
        }
    }

    async fn fill(&mut self, t: Duration) -> Result<bool> {
        let mut tmp = vec![0u8; 64 * 1024];
        let n = tokio::time::timeout(t, self.stream.read(&mut tmp)).await??;
        if n == 0 {
            return Ok(false);
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(true)
    }

    /// Reads the 68-byte handshake; `None` if the peer closed first.
    pub async fn read_handshake(&mut self, t: Duration) -> Result<Option<Handshake>> {
        while self.buf.len() < HANDSHAKE_LEN {
            if !self.fill(t).await? {
                return Ok(None);
            }
        }
        let raw = self.buf.split_to(HANDSHAKE_LEN);
        let mut arr = [0u8; HANDSHAKE_LEN];
        arr.copy_from_slice(&raw);
        Ok(Some(Handshake::from_bytes(&arr)?))
    }

    /// Reads one message; `None` on a clean close.
    pub async fn read_msg(&mut self, t: Duration) -> Result<Option<Message>> {
        loop {
            if let Some((m, used)) = Message::decode(&self.buf)? {
                let _ = self.buf.split_to(used);
                return Ok(Some(m));
            }
            if !self.fill(t).await? {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                bail!("closed mid-frame");
            }
        }
    }
}
