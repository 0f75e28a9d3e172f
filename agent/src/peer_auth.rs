//! The authenticated opening of a peer connection (contract, "Data plane").
//!
//! 1. The dialer sends its handshake, then `AUTH(task token)`.
//! 2. The acceptor reads the handshake (10 s) and looks the info-hash up;
//!    then reads AUTH (10 s), verifies the token for that info-hash and
//!    checks that its subject is the connecting IP. Any failure closes the
//!    socket before the acceptor has written a single byte.
//! 3. The acceptor answers with its handshake, `AUTH(own token)`, BITFIELD
//!    and UNCHOKE.
//! 4. The dialer checks the reply's info-hash and token subject (the dialed
//!    IP, or `"seed"` when dialing the seed), then sends BITFIELD, UNCHOKE
//!    and, when it wants pieces, INTERESTED.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pollen_protocol::token::{TaskClaims, Verifier};
use pollen_protocol::{Handshake, InfoHash, Message, PeerId, PieceIndex};
use tokio::net::TcpSocket;

use crate::connection::{Connection, AUTH_TIMEOUT, CONNECT_TIMEOUT, HANDSHAKE_TIMEOUT};
use crate::error::{Error, Result};

/// Reads the next message, which must be AUTH, and checks its token.
async fn read_auth(
    conn: &mut Connection,
    verifier: &Verifier,
    ih: &InfoHash,
    expected_sub: &str,
) -> Result<TaskClaims> {
    let token = match conn.read_message(AUTH_TIMEOUT).await? {
        Some(Message::Auth(t)) => t,
        Some(_) => {
            return Err(Error::Violation {
                what: "first message after the handshake is not AUTH",
            })
        }
        None => {
            return Err(Error::Closed {
                during: "waiting for AUTH",
            })
        }
    };
    let claims = verifier.verify_task(&token, &ih.to_hex())?;
    if claims.sub != expected_sub {
        return Err(Error::WrongSubject {
            got: claims.sub,
            expected: expected_sub.to_owned(),
        });
    }
    Ok(claims)
}

/// Acceptor, step 2: reads and checks the dialer's AUTH. The subject must
/// be the dialer's IP address.
///
/// # Errors
/// A timeout, a missing or invalid token, or a token for someone else.
pub(crate) async fn accept_auth(
    conn: &mut Connection,
    verifier: &Verifier,
    ih: &InfoHash,
) -> Result<TaskClaims> {
    let ip = conn.peer_addr().ip().to_string();
    read_auth(conn, verifier, ih, &ip).await
}

/// Acceptor, step 1: reads the dialer's handshake.
///
/// # Errors
/// A timeout or a foreign protocol.
pub(crate) async fn accept_handshake(conn: &mut Connection) -> Result<Handshake> {
    conn.read_handshake(HANDSHAKE_TIMEOUT).await
}

/// Acceptor, step 3: handshake, AUTH, BITFIELD, a HAVE for each of `haves`
/// and UNCHOKE in one write. (The seed's first offers go before UNCHOKE, so
/// that the agent's first requests can be for them.)
///
/// # Errors
/// A write failure.
pub(crate) async fn send_acceptor_greeting(
    conn: &mut Connection,
    ih: InfoHash,
    peer_id: PeerId,
    token: &str,
    bitfield: Bytes,
    haves: &[PieceIndex],
) -> Result<()> {
    conn.write_handshake(&Handshake::new(ih, peer_id)).await?;
    conn.queue(&Message::Auth(token.to_owned()));
    conn.queue(&Message::Bitfield(bitfield));
    for i in haves {
        conn.queue(&Message::Have(*i));
    }
    conn.queue(&Message::Unchoke);
    conn.flush().await
}

/// Dialer, steps 1 and 4 up to the acceptor's AUTH: connects from
/// `local_ip` to `addr` and authenticates both ways. The caller then sends
/// BITFIELD, UNCHOKE and INTERESTED. Also returns how long the TCP connect
/// took (SYN to SYN-ACK): one round trip of the path, and whether the
/// acceptor understands RELAY.
///
/// # Errors
/// Connect failures and timeouts, a reply for another info-hash, or a token
/// whose subject is not `expected_sub`.
pub(crate) async fn dial(
    local_ip: IpAddr,
    addr: SocketAddr,
    ih: InfoHash,
    peer_id: PeerId,
    token: &str,
    verifier: &Verifier,
    expected_sub: &str,
) -> Result<(Connection, TaskClaims, Duration, bool)> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(Error::net("socket"))?;
    socket
        .bind(SocketAddr::new(local_ip, 0))
        .map_err(Error::net("bind source address"))?;
    let started = Instant::now();
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(addr)).await {
        Ok(r) => r.map_err(Error::net("connect"))?,
        Err(_) => return Err(Error::Timeout { op: "connecting" }),
    };
    let rtt = started.elapsed();
    let mut conn = Connection::new(stream)?;
    conn.write_handshake(&Handshake::new(ih, peer_id)).await?;
    conn.write_message(&Message::Auth(token.to_owned())).await?;
    let reply = conn.read_handshake(HANDSHAKE_TIMEOUT).await?;
    if reply.info_hash != ih {
        return Err(Error::Violation {
            what: "handshake reply for another info-hash",
        });
    }
    let claims = read_auth(&mut conn, verifier, &ih, expected_sub).await?;
    Ok((conn, claims, rtt, reply.understands_relay()))
}
