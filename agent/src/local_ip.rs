//! This host's address, for an agent started without `net.ip`.
//!
//! The agent must listen on, and be known by, the address that the server
//! puts in `destIPs`. Without `net.ip` it takes the address the kernel would
//! use as the source of a packet to the server: it `connect`s a UDP socket
//! to `server.addr` and reads the socket's local address. A UDP connect only
//! chooses a route; no packet is sent. On a host with several addresses,
//! set `net.ip` to the one the server knows.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use reqwest::Url;

use crate::error::{Error, Result};

/// The local address of the route to the server at `base_url`
/// (`http(s)://host[:port]`; a host name is resolved first).
///
/// # Errors
/// [`Error::LocalIp`] when the URL has no host, the host does not resolve
/// or there is no route to it.
pub(crate) async fn towards_server(base_url: &str) -> Result<IpAddr> {
    let fail = |source: io::Error| Error::LocalIp {
        server: base_url.to_owned(),
        source,
    };
    let url =
        Url::parse(base_url).map_err(|e| fail(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let host = url.host_str().ok_or_else(|| {
        fail(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the address has no host",
        ))
    })?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port_or_known_default().unwrap_or(45000);
    let server = tokio::net::lookup_host((host, port))
        .await
        .map_err(fail)?
        .next()
        .ok_or_else(|| {
            fail(io::Error::new(
                io::ErrorKind::NotFound,
                "the host name resolves to no address",
            ))
        })?;
    towards(server).map_err(fail)
}

/// The local address the kernel picks for traffic to `server`.
///
/// # Errors
/// When no socket can be opened or there is no route to `server`.
pub(crate) fn towards(server: SocketAddr) -> io::Result<IpAddr> {
    let any: IpAddr = match server {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind(SocketAddr::new(any, 0))?;
    socket.connect(server)?;
    Ok(socket.local_addr()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_to_a_loopback_server_is_loopback() {
        let ip = towards("127.0.0.9:45000".parse().unwrap()).unwrap();
        assert!(ip.is_loopback(), "{ip}");
        assert!(!ip.is_unspecified());
    }

    #[tokio::test]
    async fn a_server_url_is_resolved_first() {
        let ip = towards_server("http://127.0.0.9:45000").await.unwrap();
        assert!(ip.is_loopback(), "{ip}");
        let e = towards_server("http://").await.unwrap_err();
        assert!(e.to_string().contains("http://"), "{e}");
    }
}
