//! Trusting the server: resolving and pinning its public key.
//!
//! In order: the configured `server.publicKey` file; the key pinned at
//! `<downdir>/.pollen/server.pub` by an earlier start; or, once, a fetch of
//! `GET {server.addr}/api/v1/server/pubkey` (retried for up to
//! [`FETCH_DEADLINE`]), which is then pinned for every later start. Over
//! HTTPS the fetch trusts the server's certificate as `server.tls` says.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pollen_config::AgentConfig;
use pollen_protocol::token::Verifier;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::https::ClientTrust;

/// How long to keep trying to fetch the key from the server.
pub(crate) const FETCH_DEADLINE: Duration = Duration::from_secs(30);

/// Where a fetched key is pinned.
pub(crate) fn pinned_path(downdir: &Path) -> PathBuf {
    downdir.join(".pollen").join("server.pub")
}

/// Resolves the server's public key and builds a verifier.
///
/// # Errors
/// [`Error::PublicKey`] when no key can be read or fetched, or it is not an
/// Ed25519 public key.
pub(crate) async fn resolve(
    config: &AgentConfig,
    trust: &ClientTrust,
    shutdown: &CancellationToken,
) -> Result<Verifier> {
    let configured = config.server.public_key.clone();
    let pinned = pinned_path(&config.downdir);
    let pem = match configured {
        Some(path) => read(&path).await?,
        None if tokio::fs::try_exists(&pinned).await.unwrap_or(false) => read(&pinned).await?,
        None => {
            let base = config.server.base_url().ok_or_else(|| Error::PublicKey {
                reason: "neither server.publicKey nor server.addr is set".into(),
            })?;
            let pem = fetch(&format!("{base}/api/v1/server/pubkey"), trust, shutdown).await?;
            Verifier::from_pem(pem.as_bytes()).map_err(|e| Error::PublicKey {
                reason: format!("fetched key: {e}"),
            })?;
            pin(&pinned, &pem).await?;
            tracing::info!(path = %pinned.display(), "pinned the server's public key");
            pem
        }
    };
    Verifier::from_pem(pem.as_bytes()).map_err(|e| Error::PublicKey {
        reason: e.to_string(),
    })
}

async fn read(path: &Path) -> Result<String> {
    tokio::fs::read_to_string(path)
        .await
        .map_err(|e| Error::PublicKey {
            reason: format!("cannot read {}: {e}", path.display()),
        })
}

async fn pin(path: &Path, pem: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(Error::disk("create directory", dir))?;
    }
    let tmp = path.with_extension("pub.tmp");
    tokio::fs::write(&tmp, pem)
        .await
        .map_err(Error::disk("write", &tmp))?;
    tokio::fs::rename(&tmp, path)
        .await
        .map_err(Error::disk("rename", path))
}

async fn fetch(url: &str, trust: &ClientTrust, shutdown: &CancellationToken) -> Result<String> {
    let client = trust
        .apply(reqwest::Client::builder())
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|source| Error::Http {
            op: "building the client",
            source,
        })?;
    let deadline = tokio::time::Instant::now() + FETCH_DEADLINE;
    loop {
        let last = match client
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
        {
            Ok(resp) => match resp.text().await {
                Ok(text) => return Ok(text),
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::PublicKey {
                reason: format!("cannot fetch it from {url}: {last}"),
            });
        }
        tokio::select! {
            () = shutdown.cancelled() => return Err(Error::Stopped),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
