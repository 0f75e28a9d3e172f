//! Fetching a task's info dictionary over the data port.
//!
//! A *slim* push leaves the info dictionary out: the piece hashes are most
//! of a push (20 bytes a piece, a third more in base64), and the server's
//! uplink would carry one copy per destination before any piece could
//! move. An agent that gets a slim push dials the destinations the push
//! names (which already hold the task) and then the seed, authenticates as
//! for a peer session, and asks for the dictionary with INFO_REQUEST. The
//! bytes are trusted only if their SHA-1 is the info-hash of the push
//! (which the server signed into the task token). The connection is then
//! closed; the swarm dials its peers afresh once the task is added.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use pollen_protocol::token::{Verifier, SEED_SUBJECT};
use pollen_protocol::{InfoHash, Message, PeerId};
use sha1::{Digest, Sha1};

use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::peer_auth;

/// Time allowed for one attempt to deliver the whole dictionary.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a slim push's holders are asked again while they refuse: the
/// server pushes to them and to the slim destinations at the same time, so
/// a holder may not have taken the task yet.
pub(crate) const HOLDER_WAIT: Duration = Duration::from_secs(2);
/// The pause between two rounds of asking the holders.
const HOLDER_RETRY: Duration = Duration::from_millis(5);

/// Where to ask: a destination's data address, or the seed's.
#[derive(Clone, Copy, Debug)]
enum InfoSource {
    Peer(SocketAddr),
    Seed(SocketAddr),
}

impl InfoSource {
    fn addr(self) -> SocketAddr {
        match self {
            InfoSource::Peer(a) | InfoSource::Seed(a) => a,
        }
    }

    /// The subject the source's own token must carry.
    fn subject(self) -> String {
        match self {
            InfoSource::Peer(a) => a.ip().to_string(),
            InfoSource::Seed(_) => SEED_SUBJECT.to_owned(),
        }
    }
}

/// What the agent presents when it asks.
pub(crate) struct Asker<'a> {
    pub(crate) local_ip: IpAddr,
    pub(crate) peer_id: PeerId,
    pub(crate) token: &'a str,
    pub(crate) verifier: &'a Verifier,
}

/// Fetches the bencoded info dictionary of `ih`, at most `max` bytes: from
/// the first of `holders` that delivers it whole and correct, asking them
/// in rounds for up to [`HOLDER_WAIT`] while they refuse the connection
/// (they may not hold the task yet), then from the seed. A holder that
/// delivers anything wrong is not asked again. Each attempt has
/// `per_source`.
///
/// # Errors
/// [`Error::InfoUnavailable`] when no source delivered it, with the last
/// error.
pub(crate) async fn fetch_info(
    asker: &Asker<'_>,
    holders: &[SocketAddr],
    seed: SocketAddr,
    ih: InfoHash,
    max: usize,
    per_source: Duration,
) -> Result<Vec<u8>> {
    let started = tokio::time::Instant::now();
    let mut pending: Vec<SocketAddr> = holders.to_vec();
    let mut tried = 0;
    let mut holder_error = String::new();
    let mut attempt = |source: InfoSource| {
        tried += 1;
        async move {
            let r = tokio::time::timeout(per_source, fetch_one(asker, source, ih, max)).await;
            let r = r.unwrap_or(Err(Error::Timeout {
                op: "fetching the info dictionary",
            }));
            if let Err(e) = &r {
                tracing::debug!(source = %source.addr(), error = %e, "cannot fetch the info dictionary here");
            }
            r
        }
    };
    while !pending.is_empty() {
        let mut still = Vec::new();
        for &h in &pending {
            match attempt(InfoSource::Peer(h)).await {
                Ok(bytes) => return Ok(bytes),
                Err(e) => {
                    if not_yet(&e) {
                        still.push(h);
                    }
                    holder_error = format!("; before it {h}: {e}");
                }
            }
        }
        pending = still;
        if started.elapsed() >= HOLDER_WAIT {
            break;
        }
        if !pending.is_empty() {
            tokio::time::sleep(HOLDER_RETRY).await;
        }
    }
    match attempt(InfoSource::Seed(seed)).await {
        Ok(bytes) => Ok(bytes),
        Err(e) => Err(Error::InfoUnavailable {
            tried,
            last: format!("{seed} (the seed): {e}{holder_error}"),
        }),
    }
}

/// Whether a holder's failure may only mean that it has not taken the task
/// yet: it refused the connection, or closed it before answering.
fn not_yet(e: &Error) -> bool {
    matches!(e, Error::Net { .. } | Error::Closed { .. })
}

async fn fetch_one(
    asker: &Asker<'_>,
    source: InfoSource,
    ih: InfoHash,
    max: usize,
) -> Result<Vec<u8>> {
    let (mut conn, _, _, _) = peer_auth::dial(
        asker.local_ip,
        source.addr(),
        ih,
        asker.peer_id,
        asker.token,
        asker.verifier,
        &source.subject(),
    )
    .await?;
    let bytes = read_info(&mut conn, max).await?;
    if InfoHash(Sha1::digest(&bytes).into()) != ih {
        return Err(Error::Violation {
            what: "info dictionary does not hash to the task's info-hash",
        });
    }
    Ok(bytes)
}

/// Asks for the dictionary chunk by chunk and collects the replies,
/// skipping the greeting and announcements the source sends meanwhile.
async fn read_info(conn: &mut Connection, max: usize) -> Result<Vec<u8>> {
    let mut buf: Vec<u8> = Vec::new();
    let mut total: Option<usize> = None;
    loop {
        let offset = u32::try_from(buf.len()).map_err(|_| Error::Violation {
            what: "info dictionary over 4 GiB",
        })?;
        conn.write_message(&Message::InfoRequest { offset }).await?;
        let (at, of, data) = loop {
            match conn.read_message(FETCH_TIMEOUT).await? {
                Some(Message::InfoData {
                    offset,
                    total,
                    data,
                }) => break (offset, total as usize, data),
                Some(Message::Piece { .. } | Message::Auth(_) | Message::InfoRequest { .. }) => {
                    return Err(Error::Violation {
                        what: "unexpected message while fetching the info dictionary",
                    })
                }
                Some(_) => {}
                None => {
                    return Err(Error::Closed {
                        during: "fetching the info dictionary",
                    })
                }
            }
        };
        if at != offset || data.is_empty() || *total.get_or_insert(of) != of {
            return Err(Error::Violation {
                what: "INFO_DATA out of order, empty, or with a changed total",
            });
        }
        if of > max {
            return Err(Error::Violation {
                what: "info dictionary larger than an agent accepts",
            });
        }
        if buf.capacity() == 0 {
            buf.reserve_exact(of);
        }
        buf.extend_from_slice(&data);
        if buf.len() == of {
            return Ok(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tokio::net::TcpListener;

    /// A source that answers every INFO_REQUEST from `serve`.
    async fn source(serve: Vec<u8>, total: u32) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut c = Connection::new(s).unwrap();
            c.write_message(&Message::Unchoke).await.unwrap();
            while let Ok(Some(Message::InfoRequest { offset })) =
                c.read_message(Duration::from_secs(5)).await
            {
                let start = (offset as usize).min(serve.len());
                let end = serve.len().min(start + 3);
                let reply = Message::InfoData {
                    offset,
                    total,
                    data: Bytes::copy_from_slice(&serve[start..end]),
                };
                if c.write_message(&reply).await.is_err() {
                    return;
                }
            }
        });
        addr
    }

    async fn read_from(addr: SocketAddr, max: usize) -> Result<Vec<u8>> {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut c = Connection::new(s).unwrap();
        read_info(&mut c, max).await
    }

    #[tokio::test]
    async fn collects_chunks_after_other_messages() {
        let data = b"d4:name1:xe".to_vec();
        let addr = source(data.clone(), data.len() as u32).await;
        assert_eq!(read_from(addr, 1024).await.unwrap(), data);
    }

    #[tokio::test]
    async fn refuses_a_dictionary_over_the_limit() {
        let data = vec![b'x'; 64];
        let addr = source(data, 64).await;
        let err = read_from(addr, 63).await.unwrap_err();
        assert!(matches!(err, Error::Violation { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_source_that_stops_short_is_an_error_not_a_hang() {
        // Claims 10 bytes, has 4: the fifth request gets an empty chunk.
        let addr = source(b"abcd".to_vec(), 10).await;
        let err = read_from(addr, 1024).await.unwrap_err();
        assert!(matches!(err, Error::Violation { .. }), "{err}");
    }
}
