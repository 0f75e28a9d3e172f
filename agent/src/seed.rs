//! The fixed seed: serves every piece of registered tasks from their source
//! files over the peer wire protocol. Used by `pollen-server`; it shares the
//! connection and upload code with the agent's swarm.
//!
//! INTERFACE CONTRACT (the server crate codes against exactly this):

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use pollen_protocol::token::Verifier;
use pollen_protocol::{Info, InfoHash, TaskId};
use tokio_util::sync::CancellationToken;

/// How the seed listens and limits itself.
pub struct SeedConfig {
    /// Data port address (`net.ip:net.dataPort`).
    pub listen: SocketAddr,
    /// Total upload cap, bytes per second (`control.speed`); `None` = unlimited.
    pub upload_bytes_per_sec: Option<u64>,
    /// Piece cache size in bytes (`control.cacheSize`).
    pub cache_bytes: u64,
    /// Verifies the task tokens that agents present.
    pub verifier: Verifier,
}

/// One task the seed serves.
pub struct SeedTask {
    pub task_id: TaskId,
    pub info: Arc<Info>,
    pub info_hash: InfoHash,
    /// Source path of each entry of `info.files`, same order.
    pub sources: Vec<PathBuf>,
    /// The seed's own task token (`sub` = `"seed"`), sent in its AUTH reply.
    pub token: String,
    /// The task's upload cap in bytes per second, if any.
    pub speed_bytes_per_sec: Option<u64>,
}

/// Cheap, cloneable handle to the running seed.
#[derive(Clone)]
pub struct Seed {
    _todo: (),
}

impl Seed {
    /// Binds `config.listen` and starts accepting peers until `shutdown`.
    pub async fn start(config: SeedConfig, shutdown: CancellationToken) -> Result<Seed, crate::Error> {
        let _ = (config, shutdown);
        todo!()
    }

    /// The bound data address.
    pub fn local_addr(&self) -> SocketAddr {
        todo!()
    }

    /// Starts serving a task. Replaces an existing entry with the same info-hash.
    pub fn add_task(&self, task: SeedTask) {
        let _ = task;
        todo!()
    }

    /// Stops serving a task and closes its connections.
    pub fn remove_task(&self, info_hash: &InfoHash) {
        let _ = info_hash;
        todo!()
    }

    /// Payload bytes uploaded for a task so far (0 if unknown).
    pub fn uploaded_bytes(&self, info_hash: &InfoHash) -> u64 {
        let _ = info_hash;
        todo!()
    }

    /// Waits until every connection task has ended (after `shutdown`).
    pub async fn wait(&self) {
        todo!()
    }
}
