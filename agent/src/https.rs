//! HTTPS on the management ports, shared by the agent and the server.
//!
//! Serving: [`server_config`] turns `net.tls` into a rustls configuration,
//! and [`serve`] runs an axum router on a listener, in clear or over TLS,
//! until a cancellation token fires and its connections drain. TLS
//! handshakes run in their own tasks ([`TlsListener`]), bounded in number
//! ([`MAX_PENDING_HANDSHAKES`]) and time ([`HANDSHAKE_TIMEOUT`]), so a slow
//! or silent client never holds up the accept loop. The finished streams go
//! through `axum::serve` exactly as plain TCP connections do, so both
//! schemes share one graceful shutdown.
//!
//! Connecting: [`ClientTrust`] turns a `TlsTrust` section (`net.agentTls`,
//! `server.tls`, the CLI's `--cacert`/`--insecure`) into reqwest settings.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use pollen_config::{ConfigError, Tls, TlsTrust, TrustField};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How long a client gets to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes in progress at once; further connections wait in the
/// kernel's accept queue.
pub const MAX_PENDING_HANDSHAKES: usize = 128;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file named in the configuration is missing or malformed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The certificate chain and key parse but rustls refuses them (for
    /// example, the key does not belong to the certificate).
    #[error("net.tls: the certificate and key cannot be used: {0}")]
    Certificate(#[source] rustls::Error),
    /// A CA file holds something that is not a usable certificate.
    #[error("{field}: not a usable CA certificate: {source}")]
    Ca {
        field: &'static str,
        #[source]
        source: rustls::Error,
    },
    /// reqwest refused a CA certificate.
    #[error("{field}: {source}")]
    Client {
        field: &'static str,
        #[source]
        source: reqwest::Error,
    },
}

/// The rustls server configuration for `net.tls`. ALPN offers HTTP/1.1
/// only, the one version the API is served in (offering `h2` would make
/// curl speak HTTP/2 to a server that cannot). Reads the files (call it at
/// start-up, off the runtime).
///
/// # Errors
/// [`TlsError`] naming `net.tls.cert` or `net.tls.key`, or
/// [`TlsError::Certificate`] when the key does not match the certificate.
pub fn server_config(tls: &Tls) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (certs, key) = tls.load()?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Certificate)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Certificate)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `app` on `listener` until `shutdown` fires, then waits for open
/// connections to finish. With `tls`, every connection is HTTPS.
///
/// # Errors
/// As `axum::serve`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        }
        Some(config) => {
            axum::serve(TlsListener::new(listener, config), app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        }
    }
}

type Handshake = Option<(TlsStream<TcpStream>, SocketAddr)>;

/// A TCP listener that yields only connections whose TLS handshake
/// succeeded. Handshakes run in spawned tasks owned by the listener:
/// dropping it (when `axum::serve` shuts down) aborts the unfinished ones.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<Handshake>,
}

impl TlsListener {
    /// Wraps `tcp`, serving TLS with `config`.
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> Self {
        Self {
            tcp,
            acceptor: TlsAcceptor::from(config),
            handshakes: JoinSet::new(),
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    // Cancel-safe: an accepted socket is handed to the set before the next
    // await, and `join_next` loses nothing when dropped.
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let room = self.handshakes.len() < MAX_PENDING_HANDSHAKES;
            tokio::select! {
                accepted = self.tcp.accept(), if room => match accepted {
                    Ok((tcp, peer)) => {
                        self.handshakes.spawn(handshake(self.acceptor.clone(), tcp, peer));
                    }
                    Err(e) => accept_failed(e).await,
                },
                Some(done) = self.handshakes.join_next() => {
                    if let Ok(Some(conn)) = done {
                        return conn;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

async fn handshake(acceptor: TlsAcceptor, tcp: TcpStream, peer: SocketAddr) -> Handshake {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Some((stream, peer)),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// A failed `accept` is the peer's problem (reset before we took it) or
/// ours (out of file descriptors); in the latter case pause, as axum does.
async fn accept_failed(e: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::warn!(error = %e, "accept failed; pausing for a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// How a client trusts HTTPS servers, loaded from a `TlsTrust` section.
/// The default trusts the Mozilla roots built into Pollen.
#[derive(Clone, Default)]
pub struct ClientTrust {
    roots: Vec<reqwest::Certificate>,
    insecure: bool,
}

impl std::fmt::Debug for ClientTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTrust")
            .field("roots", &self.roots.len())
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl ClientTrust {
    /// Loads `trust` (the default when `None`). Reads the CA file: call it
    /// at start-up, off the runtime.
    ///
    /// # Errors
    /// [`TlsError`] naming `field.ca` (or `field.insecure`).
    pub fn load(trust: Option<&TlsTrust>, field: TrustField) -> Result<Self, TlsError> {
        let Some(trust) = trust else {
            return Ok(Self::default());
        };
        let mut roots = Vec::new();
        for der in trust.load_ca(field)? {
            rustls::RootCertStore::empty()
                .add(der.clone())
                .map_err(|source| TlsError::Ca {
                    field: field.ca,
                    source,
                })?;
            let cert = reqwest::Certificate::from_der(&der).map_err(|source| TlsError::Client {
                field: field.ca,
                source,
            })?;
            roots.push(cert);
        }
        Ok(Self {
            roots,
            insecure: trust.insecure,
        })
    }

    /// Whether certificates go unchecked.
    pub fn is_insecure(&self) -> bool {
        self.insecure
    }

    /// Applies this trust to a reqwest client: with CA certificates, only
    /// they are trusted; when insecure, nothing is checked.
    pub fn apply(&self, mut builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        if self.insecure {
            builder = builder.danger_accept_invalid_certs(true);
        }
        if !self.roots.is_empty() {
            builder = builder.tls_built_in_root_certs(false);
            for root in &self.roots {
                builder = builder.add_root_certificate(root.clone());
            }
        }
        builder
    }
}

#[cfg(test)]
#[path = "https_tests.rs"]
mod tests;
