//! `pollen-server`: the central server of Pollen.
//!
//! It accepts GoFD-compatible dispatch tasks over REST ([`routes`]), builds
//! each task's metainfo ([`metainfo_builder`]), pushes signed tasks to the
//! destination agents ([`agent_client`], [`task_driver`]), follows their
//! progress reports, and serves every piece itself as the fixed seed
//! (`pollen_agent::seed`, shared with the agents). Tasks survive restarts as
//! JSON files ([`persistence`]).
//!
//! The shape: [`run`] bootstraps the data directory ([`bootstrap`]), starts
//! the seed, and serves [`router`] (over HTTPS with `net.tls`, through
//! `pollen_agent::https`) until the shutdown token fires. All
//! request state lives in the [`TaskManager`]: handlers take short locks and
//! never block; everything slow (file walks, hashing, pushes, cleanup) runs in
//! tracked background tasks that are drained on shutdown. The seed is reached
//! through the [`SeedPort`] trait, so the REST layer and the lifecycle are
//! tested without one ([`NoSeed`]).

pub mod agent_client;
pub mod api_error;
pub mod auth;
pub mod bootstrap;
pub mod error;
pub mod manager_options;
pub mod metainfo_builder;
pub mod metrics;
pub mod persistence;
pub mod routes;
pub mod seed_port;
pub mod source_walk;
pub mod task;
mod task_driver;
pub mod task_manager;
pub mod task_spec;
pub mod task_view;

use std::net::SocketAddr;
use std::sync::Arc;

use pollen_agent::https;
use pollen_agent::seed::{Seed, SeedConfig};
use pollen_config::{ServerConfig, TrustField, MB};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use api_error::ApiError;
pub use auth::{Authenticator, Credentials};
pub use bootstrap::{
    bootstrap, credentials_banner, public_key_path, write_keypair, Bootstrapped, Keys,
};
pub use error::{Error, Result};
pub use manager_options::ManagerOptions;
pub use persistence::Store;
pub use routes::{router, AppState};
pub use seed_port::{NoSeed, SeedPort};
pub use task_manager::TaskManager;

/// Runs the server until `shutdown` fires, then drains.
///
/// Creates `datadir` and, at first start, the key pair and (without
/// `auth.password`) the generated credentials, whose plaintext password is
/// printed **once** to stdout in a banner. Then starts the seed on
/// `net.ip:net.dataPort`, loads saved tasks (unfinished ones become `FAILED`,
/// "server restarted") and serves the REST API on `net.ip:net.mgntPort`,
/// over HTTPS when `net.tls` is set. Agents are reached over HTTPS when
/// `net.agentTls` is set.
///
/// # Errors
/// A bootstrap failure (unusable `datadir`, key or credentials file),
/// unusable TLS files, a port that cannot be bound, or a seed that fails to
/// start.
pub async fn run(config: ServerConfig, shutdown: CancellationToken) -> Result<()> {
    if config.net.ip.is_unspecified() {
        return Err(Error::Config {
            field: "net.ip",
            reason: "must be the address agents reach the server at, not an unspecified address"
                .into(),
        });
    }
    let root = shutdown.child_token();
    let _stop_all = root.clone().drop_guard();

    let cfg = config.clone();
    let (boot, tls, agent_trust) = tokio::task::spawn_blocking(move || {
        let tls = cfg.net.tls.as_ref().map(https::server_config).transpose()?;
        let trust = https::ClientTrust::load(cfg.net.agent_tls.as_ref(), TrustField::AGENTS)?;
        Ok::<_, Error>((bootstrap::bootstrap(&cfg)?, tls, trust))
    })
    .await??;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let agent_scheme = if config.net.agent_tls.is_some() {
        "https"
    } else {
        "http"
    };
    let mgnt_addr = SocketAddr::new(config.net.ip, config.net.mgnt_port);
    if let Some(password) = &boot.generated_password {
        let url = format!("{scheme}://{mgnt_addr}");
        println!(
            "{}",
            credentials_banner(
                &boot.credentials.username,
                password,
                &url,
                boot.credentials_path.as_deref()
            )
        );
    }

    let listener = tokio::net::TcpListener::bind(mgnt_addr)
        .await
        .map_err(|source| Error::Listen {
            addr: mgnt_addr,
            source,
        })?;
    let mgnt_addr = listener.local_addr().map_err(|source| Error::Listen {
        addr: mgnt_addr,
        source,
    })?;

    let seed = Seed::start(
        SeedConfig {
            listen: SocketAddr::new(config.net.ip, config.net.data_port),
            upload_bytes_per_sec: pollen_config::speed_to_bytes(config.control.speed),
            cache_bytes: config.control.cache_size.saturating_mul(MB),
            verifier: boot.keys.verifier.clone(),
        },
        root.child_token(),
    )
    .await
    .map_err(Error::Seed)?;

    let store = Store::open(config.data_dir.join("tasks"))?;
    let tracker = TaskTracker::new();
    let opts = ManagerOptions::from_config(&config, seed.local_addr(), mgnt_addr, agent_trust);
    let manager = TaskManager::new(
        opts,
        boot.keys.clone(),
        Arc::new(seed.clone()),
        Some(store),
        root.child_token(),
        tracker.clone(),
    )?;
    let restored = manager.restore().await?;
    let auth = Arc::new(Authenticator::new(
        boot.credentials,
        boot.keys.signer.clone(),
        boot.keys.verifier.clone(),
        config.auth.token_ttl_secs,
    ));
    let state = AppState {
        manager: manager.clone(),
        auth,
        public_pem: boot.keys.public_pem.clone().into(),
    };
    tracing::info!(addr = %mgnt_addr, scheme, agents = agent_scheme, seed = %seed.local_addr(), restored, "pollen server listening");

    let served = https::serve(listener, router(state), tls, root.clone()).await;
    root.cancel();
    tracker.close();
    tracker.wait().await;
    manager.flush().await;
    seed.wait().await;
    tracing::info!("pollen server stopped");
    served.map_err(|source| Error::Listen {
        addr: mgnt_addr,
        source,
    })
}
