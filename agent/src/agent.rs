//! The agent's shared context: its identity, its task registry and its
//! data-port listener.
//!
//! The management API adds and removes tasks here; the data-port accept
//! loop routes each incoming connection to its task by info-hash after the
//! handshake, and authenticates it before a single byte is written back.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use pollen_config::{speed_to_bytes, AgentConfig, MB};
use pollen_protocol::api::{AgentTask, ProgressReport};
use pollen_protocol::lengths::DEFAULT_BLOCK_LEN;
use pollen_protocol::token::Verifier;
use pollen_protocol::{Info, InfoHash, PeerId, TaskId};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::instrument;

use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::https::ClientTrust;
use crate::info_fetch::{self, Asker, FETCH_TIMEOUT};
use crate::peer_auth;
use crate::piece_cache::PieceCache;
use crate::rate_limit::{Limiter, LimiterChain};
use crate::store::Store;
use crate::swarm::{self, TaskEntry};
use crate::task_state::{Phase, TaskState};
use crate::upload::Uploader;

/// Concurrent blocking disk jobs.
pub(crate) const DISK_CONCURRENCY: usize = 8;
/// Incoming connections allowed to be in the handshake/auth phase at once.
pub(crate) const MAX_PENDING_HANDSHAKES: usize = 64;
/// How long DELETE waits for a task's cleanup before answering.
pub(crate) const CLEANUP_WAIT: Duration = Duration::from_secs(10);

/// Why a task push was refused.
#[derive(Debug)]
pub(crate) enum AddError {
    /// The same task id with another info-hash, or the same info-hash under
    /// another id.
    Conflict,
    /// `control.maxActive` tasks are running.
    TooMany,
    /// The staging area could not be created.
    Storage(Error),
}

/// The running agent.
pub(crate) struct Agent {
    pub(crate) ip: IpAddr,
    pub(crate) downdir: PathBuf,
    pub(crate) max_active: usize,
    pub(crate) verifier: Verifier,
    pub(crate) peer_id: PeerId,
    pub(crate) cache: Arc<PieceCache>,
    pub(crate) disk: Arc<Semaphore>,
    pub(crate) upload_limit: Option<Arc<Limiter>>,
    pub(crate) download_limit: Option<Arc<Limiter>>,
    pub(crate) http: reqwest::Client,
    pub(crate) root: CancellationToken,
    pub(crate) tracker: TaskTracker,
    tasks: Mutex<HashMap<TaskId, Arc<TaskEntry>>>,
    add_lock: tokio::sync::Mutex<()>,
    handshakes: Arc<Semaphore>,
}

impl Agent {
    /// A context for `config` on address `ip`, obeying commands that
    /// `verifier` accepts, reporting to a server it trusts as `trust` says,
    /// stopping with `root`.
    ///
    /// # Errors
    /// If the HTTP client cannot be built.
    pub(crate) fn new(
        config: &AgentConfig,
        ip: IpAddr,
        verifier: Verifier,
        trust: &ClientTrust,
        root: CancellationToken,
    ) -> Result<Self> {
        let http = trust
            .apply(reqwest::Client::builder())
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|source| Error::Http {
                op: "building the client",
                source,
            })?;
        Ok(Self {
            ip,
            downdir: config.downdir.clone(),
            max_active: config.control.max_active,
            verifier,
            peer_id: PeerId::random(),
            cache: Arc::new(PieceCache::new(
                config.control.cache_size.saturating_mul(MB),
            )),
            disk: Arc::new(Semaphore::new(DISK_CONCURRENCY)),
            upload_limit: Limiter::optional(speed_to_bytes(config.control.upload_speed)),
            download_limit: Limiter::optional(speed_to_bytes(config.control.download_speed)),
            http,
            root,
            tracker: TaskTracker::new(),
            tasks: Mutex::new(HashMap::new()),
            add_lock: tokio::sync::Mutex::new(()),
            handshakes: Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES)),
        })
    }

    fn tasks(&self) -> MutexGuard<'_, HashMap<TaskId, Arc<TaskEntry>>> {
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The task registered under `id`.
    pub(crate) fn task(&self, id: &TaskId) -> Option<Arc<TaskEntry>> {
        self.tasks().get(id).cloned()
    }

    /// The live task with info-hash `ih`.
    pub(crate) fn task_by_hash(&self, ih: &InfoHash) -> Option<Arc<TaskEntry>> {
        self.tasks()
            .values()
            .find(|t| t.spec.info_hash == *ih)
            .cloned()
    }

    /// The latest progress of task `id`.
    pub(crate) fn snapshot(&self, id: &TaskId) -> Option<ProgressReport> {
        self.task(id).map(|t| t.state.snapshot())
    }

    /// Registers and starts a task (idempotent for the same id and hash; a
    /// failed task is restarted).
    /// `info` must already be checked against `spec.info_hash`.
    ///
    /// # Errors
    /// See [`AddError`].
    pub(crate) async fn add_task(
        self: &Arc<Self>,
        spec: AgentTask,
        info: Info,
        raw_info: Bytes,
    ) -> Result<(), AddError> {
        let _serial = self.add_lock.lock().await;
        let failed = self.task(&spec.task_id).filter(|t| {
            t.spec.info_hash == spec.info_hash && matches!(t.state.phase(), Phase::Failed(_))
        });
        if failed.is_some() {
            // A re-push of a failed task starts it again.
            self.remove_task(&spec.task_id).await;
        }
        // A finished task with the same content under another id (the same
        // files dispatched again right after) only lingers to upload until
        // the server stops it: the new task replaces it.
        let twin = self
            .tasks()
            .values()
            .find(|t| {
                t.spec.task_id != spec.task_id
                    && t.spec.info_hash == spec.info_hash
                    && t.state.phase() == Phase::Completed
            })
            .map(|t| t.spec.task_id.clone());
        if let Some(id) = twin {
            self.remove_task(&id).await;
        }
        {
            let tasks = self.tasks();
            if let Some(t) = tasks.get(&spec.task_id) {
                return if t.spec.info_hash == spec.info_hash {
                    Ok(())
                } else {
                    Err(AddError::Conflict)
                };
            }
            if tasks.values().any(|t| t.spec.info_hash == spec.info_hash) {
                return Err(AddError::Conflict);
            }
            if tasks
                .values()
                .filter(|t| t.state.phase() == Phase::Running)
                .count()
                >= self.max_active
            {
                return Err(AddError::TooMany);
            }
        }
        let info = Arc::new(info);
        let store = Arc::new(
            Store::create(
                &self.downdir,
                info.clone(),
                spec.info_hash,
                self.disk.clone(),
            )
            .await
            .map_err(AddError::Storage)?,
        );
        let lengths = info
            .lengths(DEFAULT_BLOCK_LEN)
            .map_err(|e| AddError::Storage(e.into()))?;
        let limits = LimiterChain::new([
            self.upload_limit.clone(),
            Limiter::optional(spec.speed_bytes_per_sec),
        ]);
        let uploader = Arc::new(
            Uploader::new(
                spec.info_hash,
                lengths,
                store.clone(),
                self.cache.clone(),
                limits,
                self.disk.clone(),
            )
            .with_info(raw_info),
        );
        let state = Arc::new(TaskState::new(
            spec.task_id.clone(),
            info,
            store,
            uploader,
            LimiterChain::new([self.download_limit.clone()]),
        ));
        let cancel = self.root.child_token();
        let entry = Arc::new(TaskEntry {
            conns: cancel.child_token(),
            cancel,
            finished: CancellationToken::new(),
            spec,
            state,
        });
        tracing::info!(task = %entry.spec.task_id, info_hash = %entry.spec.info_hash, "task added");
        self.tasks()
            .insert(entry.spec.task_id.clone(), entry.clone());
        self.tracker.spawn(swarm::run_task(self.clone(), entry));
        Ok(())
    }

    /// Stops task `id`, removes its staging data and forgets it. Waits up to
    /// [`CLEANUP_WAIT`] for the cleanup. Unknown ids are fine.
    pub(crate) async fn remove_task(&self, id: &TaskId) {
        let Some(entry) = self.tasks().remove(id) else {
            return;
        };
        tracing::info!(task = %id, "task removed");
        entry.cancel.cancel();
        let _ = tokio::time::timeout(CLEANUP_WAIT, entry.finished.cancelled()).await;
    }

    /// Fetches a slim push's info dictionary (at most `max` bytes): from
    /// its `info_from` destinations, then from the seed.
    ///
    /// # Errors
    /// [`Error::InfoUnavailable`] when none of them delivered it.
    pub(crate) async fn fetch_info(&self, spec: &AgentTask, max: usize) -> Result<Vec<u8>> {
        let asker = Asker {
            local_ip: self.ip,
            peer_id: self.peer_id,
            token: &spec.token,
            verifier: &self.verifier,
        };
        info_fetch::fetch_info(
            &asker,
            &spec.info_from,
            spec.seed,
            spec.info_hash,
            max,
            FETCH_TIMEOUT,
        )
        .await
    }

    /// Accepts data-port connections until shutdown.
    pub(crate) async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        loop {
            let stream = tokio::select! {
                () = self.root.cancelled() => return,
                r = listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = self.handshakes.clone().try_acquire_owned() else {
                tracing::debug!("too many pending handshakes; dropping a connection");
                continue;
            };
            let me = self.clone();
            self.tracker.spawn(async move {
                if let Err(e) = me.handle_incoming(stream, permit).await {
                    tracing::debug!(error = %e, "incoming connection ended");
                }
            });
        }
    }

    #[instrument(skip_all, fields(peer = ?stream.peer_addr().ok()))]
    async fn handle_incoming(
        &self,
        stream: TcpStream,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<()> {
        let mut conn = Connection::new(stream)?;
        let hs = tokio::select! {
            () = self.root.cancelled() => return Ok(()),
            r = peer_auth::accept_handshake(&mut conn) => r?,
        };
        let entry = self.task_by_hash(&hs.info_hash).ok_or(Error::Refused {
            reason: "unknown info-hash",
        })?;
        let claims = peer_auth::accept_auth(&mut conn, &self.verifier, &hs.info_hash).await?;
        if entry.state.is_shunned(conn.peer_addr().ip()) {
            return Err(Error::Refused {
                reason: "peer is shunned",
            });
        }
        drop(permit);
        swarm::serve_incoming(self, &entry, conn, claims, hs.understands_relay()).await
    }
}
