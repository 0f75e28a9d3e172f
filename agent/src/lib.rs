//! `pollen-agent`: the agent daemon, and the piece-serving code the server's
//! seed shares with it.
//!
//! An agent receives tasks from the server on its management API
//! (`api`), downloads their pieces from peers and the seed over the
//! BitTorrent-framed, token-authenticated wire protocol (`peer_auth`,
//! `peer_connection`), verifies and stages them ([`store`]), publishes the
//! files atomically, reports progress (`report`), and keeps uploading to
//! its peers until the server deletes the task.
//!
//! The layering keeps decisions apart from I/O: [`piece_picker`] is a plain
//! struct driven by unit tests, [`connection`] owns sockets and timeouts,
//! `task_state` is the bookkeeping shared by a task's connections, and
//! `swarm` orchestrates one task. The serving half ([`upload`] and the
//! session loops) is shared with the server's [`seed`]; the seed's public
//! API is [`seed::Seed`].
//!
//! The management API speaks HTTPS when `net.tls` is set ([`https`], shared
//! with the server's REST API).
//!
//! Entry point: [`run`].

mod agent;
mod api;
pub mod connection;
pub mod error;
mod file_set;
pub mod https;
mod info_fetch;
mod local_ip;
mod peer_auth;
mod peer_connection;
pub mod piece_cache;
pub mod piece_picker;
pub mod rate_limit;
mod report;
pub mod seed;
mod server_key;
pub mod store;
mod super_seed;
mod swarm;
mod task_state;
#[cfg(test)]
mod test_util;
pub mod upload;

use std::net::SocketAddr;
use std::sync::Arc;

use pollen_config::{AgentConfig, TrustField};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::instrument;

pub use error::{Error, Result};

/// Runs the agent until `shutdown` is cancelled, then drains: every task
/// and connection stops and is awaited.
///
/// Without `net.ip`, the agent listens on the local address of its route to
/// `server.addr` (see `local_ip`).
///
/// # Errors
/// When the server key cannot be resolved, `downdir` cannot be created,
/// `net.ip` cannot be derived, the TLS files cannot be used, or a port
/// cannot be bound.
#[instrument(skip_all, fields(ip = tracing::field::Empty))]
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<()> {
    let ip = match (config.net.ip, config.server.base_url()) {
        (Some(ip), _) => ip,
        (None, Some(base)) => {
            let ip = local_ip::towards_server(&base).await?;
            tracing::info!(%ip, server = %base, "net.ip not set; using the address of the route to the server");
            ip
        }
        (None, None) => {
            return Err(Error::LocalIp {
                server: "(no server.addr)".into(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "neither net.ip nor server.addr is set",
                ),
            })
        }
    };
    tracing::Span::current().record("ip", tracing::field::display(ip));
    let state_dir = config.downdir.join(".pollen");
    tokio::fs::create_dir_all(&state_dir)
        .await
        .map_err(Error::disk("create directory", &state_dir))?;
    let (net_tls, server_tls) = (config.net.tls.clone(), config.server.tls.clone());
    let (tls, trust) = tokio::task::spawn_blocking(move || {
        let tls = net_tls.as_ref().map(https::server_config).transpose()?;
        let trust = https::ClientTrust::load(server_tls.as_ref(), TrustField::SERVER)?;
        Ok::<_, https::TlsError>((tls, trust))
    })
    .await??;
    let verifier = server_key::resolve(&config, &trust, &shutdown).await?;
    let mgmt_addr = SocketAddr::new(ip, config.net.mgnt_port);
    let data_addr = SocketAddr::new(ip, config.net.data_port);
    let mgmt = TcpListener::bind(mgmt_addr)
        .await
        .map_err(|source| Error::Bind {
            addr: mgmt_addr,
            source,
        })?;
    let data = TcpListener::bind(data_addr)
        .await
        .map_err(|source| Error::Bind {
            addr: data_addr,
            source,
        })?;
    let root = shutdown.child_token();
    let agent = Arc::new(agent::Agent::new(
        &config,
        ip,
        verifier,
        &trust,
        root.clone(),
    )?);
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(mgmt = %mgmt_addr, scheme, data = %data_addr, downdir = %config.downdir.display(), "agent started");
    agent.tracker.spawn(agent.clone().accept_loop(data));
    let served = https::serve(mgmt, api::router(agent.clone()), tls, root.clone())
        .await
        .map_err(Error::net("serving the management API"));
    root.cancel();
    agent.tracker.close();
    agent.tracker.wait().await;
    tracing::info!("agent stopped");
    served
}
