//! The fixed seed: serves every piece of registered tasks from their source
//! files over the peer wire protocol. Used by `pollen-server`; it runs the
//! same handshake, authentication and session code as the agents, with no
//! download side.
//!
//! The seed only accepts. It announces pieces to each connection as its
//! super-seeding schedule offers them ([`crate::super_seed`]), so that it
//! uploads each piece about once. Each task is served from its [`SeedTask::sources`]
//! through an [`Uploader`] with the seed-wide LRU piece cache of
//! [`SeedConfig::cache_bytes`], behind the seed's total upload limit and the
//! task's own limit. A peer that breaks the protocol is shunned for that task.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use pollen_protocol::bitfield;
use pollen_protocol::lengths::DEFAULT_BLOCK_LEN;
use pollen_protocol::token::Verifier;
use pollen_protocol::{Info, InfoHash, PeerId, TaskId};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::instrument;

use crate::agent::{DISK_CONCURRENCY, MAX_PENDING_HANDSHAKES};
use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::peer_auth;
use crate::peer_connection::{SeedSide, Session, CONTROL_QUEUE};
use crate::piece_cache::PieceCache;
use crate::rate_limit::{Limiter, LimiterChain};
use crate::super_seed::SharedSchedule;
use crate::task_state::PeerCounters;
use crate::upload::{SourceFiles, Uploader};

/// Upload counts of removed tasks kept for late [`Seed::uploaded_bytes`] calls.
const REMEMBERED_TOTALS: usize = 1024;

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
    /// `info` bencoded (the bytes of `info_hash`), served to agents whose
    /// push left it out.
    pub info_bytes: Bytes,
    /// Source path of each entry of `info.files`, same order.
    pub sources: Vec<PathBuf>,
    /// The seed's own task token (`sub` = `"seed"`), sent in its AUTH reply.
    pub token: String,
    /// The task's upload cap in bytes per second, if any.
    pub speed_bytes_per_sec: Option<u64>,
}

struct Entry {
    task_id: TaskId,
    token: String,
    /// The empty bitfield sent in the greeting: what the seed offers a
    /// connection comes afterwards, as HAVEs from the schedule.
    bitfield: Bytes,
    schedule: SharedSchedule,
    uploader: Arc<Uploader>,
    cancel: CancellationToken,
    shunned: Mutex<HashSet<IpAddr>>,
}

struct Inner {
    addr: SocketAddr,
    verifier: Verifier,
    total_limit: Option<Arc<Limiter>>,
    cache: Arc<PieceCache>,
    disk: Arc<Semaphore>,
    peer_id: PeerId,
    tasks: Mutex<HashMap<InfoHash, Arc<Entry>>>,
    totals: Mutex<VecDeque<(InfoHash, u64)>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    handshakes: Arc<Semaphore>,
}

/// Cheap, cloneable handle to the running seed.
#[derive(Clone)]
pub struct Seed {
    inner: Arc<Inner>,
}

impl Seed {
    /// Binds `config.listen` and starts accepting peers until `shutdown`.
    ///
    /// # Errors
    /// [`Error::Bind`] when the address cannot be bound.
    pub async fn start(
        config: SeedConfig,
        shutdown: CancellationToken,
    ) -> Result<Seed, crate::Error> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(Error::net("reading the bound address"))?;
        let inner = Arc::new(Inner {
            addr,
            verifier: config.verifier,
            total_limit: Limiter::optional(config.upload_bytes_per_sec),
            cache: Arc::new(PieceCache::new(config.cache_bytes)),
            disk: Arc::new(Semaphore::new(DISK_CONCURRENCY)),
            peer_id: PeerId::random(),
            tasks: Mutex::new(HashMap::new()),
            totals: Mutex::new(VecDeque::new()),
            tracker: TaskTracker::new(),
            shutdown,
            handshakes: Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES)),
        });
        tracing::info!(%addr, "seed listening");
        inner.tracker.spawn(accept_loop(inner.clone(), listener));
        inner.tracker.close();
        Ok(Seed { inner })
    }

    /// The bound data address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Starts serving a task. Replaces an existing entry with the same info-hash.
    pub fn add_task(&self, task: SeedTask) {
        let lengths = match task.info.lengths(DEFAULT_BLOCK_LEN) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(task = %task.task_id, error = %e, "cannot serve a task with invalid geometry");
                return;
            }
        };
        let source = match SourceFiles::new(&task.info, task.sources) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::warn!(task = %task.task_id, error = %e, "cannot serve the task");
                return;
            }
        };
        let limits = LimiterChain::new([
            self.inner.total_limit.clone(),
            Limiter::optional(task.speed_bytes_per_sec),
        ]);
        let uploader = Arc::new(
            Uploader::new(
                task.info_hash,
                lengths,
                source,
                self.inner.cache.clone(),
                limits,
                self.inner.disk.clone(),
            )
            .with_info(task.info_bytes),
        );
        let entry = Arc::new(Entry {
            task_id: task.task_id,
            token: task.token,
            bitfield: Bytes::from(bitfield::to_bytes(&bitfield::empty(lengths.num_pieces()))),
            schedule: SharedSchedule::new(lengths.num_pieces(), uploader.clone()),
            uploader,
            cancel: self.inner.shutdown.child_token(),
            shunned: Mutex::new(HashSet::new()),
        });
        tracing::info!(task = %entry.task_id, info_hash = %task.info_hash, "seed serves task");
        if let Some(old) = self.inner.tasks().insert(task.info_hash, entry) {
            old.cancel.cancel();
        }
    }

    /// Stops serving task `task_id` and closes its connections, and returns
    /// the bytes it uploaded for it. Nothing happens, and `None` is returned,
    /// if the info-hash is now served for another task (the same content
    /// dispatched again replaced it).
    pub fn remove_task(&self, task_id: &TaskId, info_hash: &InfoHash) -> Option<u64> {
        let old = {
            let mut tasks = self.inner.tasks();
            if tasks.get(info_hash).is_none_or(|e| e.task_id != *task_id) {
                return None;
            }
            tasks.remove(info_hash)
        }?;
        old.cancel.cancel();
        old.uploader.drop_cache();
        let uploaded = old.uploader.uploaded();
        let mut totals = self
            .inner
            .totals
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        totals.retain(|(ih, _)| ih != info_hash);
        totals.push_back((*info_hash, uploaded));
        while totals.len() > REMEMBERED_TOTALS {
            totals.pop_front();
        }
        Some(uploaded)
    }

    /// Payload bytes uploaded so far for task `task_id`, while the seed
    /// serves it (`None` once it was removed or another task with the same
    /// content replaced it).
    pub fn task_uploaded(&self, task_id: &TaskId, info_hash: &InfoHash) -> Option<u64> {
        self.inner
            .tasks()
            .get(info_hash)
            .filter(|e| e.task_id == *task_id)
            .map(|e| e.uploader.uploaded())
    }

    /// Payload bytes uploaded for a task so far (0 if unknown).
    pub fn uploaded_bytes(&self, info_hash: &InfoHash) -> u64 {
        if let Some(e) = self.inner.tasks().get(info_hash) {
            return e.uploader.uploaded();
        }
        let totals = self
            .inner
            .totals
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        totals
            .iter()
            .rev()
            .find(|(ih, _)| ih == info_hash)
            .map_or(0, |(_, n)| *n)
    }

    /// Waits until every connection task has ended (after `shutdown`).
    pub async fn wait(&self) {
        self.inner.tracker.wait().await;
    }
}

impl Inner {
    fn tasks(&self) -> MutexGuard<'_, HashMap<InfoHash, Arc<Entry>>> {
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        let stream = tokio::select! {
            () = inner.shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = inner.handshakes.clone().try_acquire_owned() else {
            continue;
        };
        let me = inner.clone();
        inner.tracker.spawn(async move {
            if let Err(e) = serve(&me, stream, permit).await {
                tracing::debug!(error = %e, "seed connection ended");
            }
        });
    }
}

#[instrument(skip_all, fields(peer = ?stream.peer_addr().ok()))]
async fn serve(
    inner: &Inner,
    stream: TcpStream,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<()> {
    let mut conn = Connection::new(stream)?;
    let ip = conn.peer_addr().ip();
    let hs = tokio::select! {
        () = inner.shutdown.cancelled() => return Ok(()),
        r = peer_auth::accept_handshake(&mut conn) => r?,
    };
    let entry = inner
        .tasks()
        .get(&hs.info_hash)
        .cloned()
        .ok_or(Error::Refused {
            reason: "unknown info-hash",
        })?;
    peer_auth::accept_auth(&mut conn, &inner.verifier, &hs.info_hash).await?;
    if entry
        .shunned
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .contains(&ip)
    {
        return Err(Error::Refused {
            reason: "peer is shunned",
        });
    }
    drop(permit);
    let (seed_peer, offers) = entry.schedule.connect();
    let (first_offers, sent) = seed_peer.haves_since(0);
    peer_auth::send_acceptor_greeting(
        &mut conn,
        hs.info_hash,
        inner.peer_id,
        &entry.token,
        entry.bitfield.clone(),
        &first_offers,
    )
    .await?;
    let (ctl_tx, ctl_rx) = mpsc::channel(CONTROL_QUEUE);
    let session = Session {
        peer: conn.peer_addr(),
        uploader: entry.uploader.clone(),
        download: None,
        seeding: Some(SeedSide {
            peer: Arc::new(seed_peer),
            changed: offers,
            sent,
        }),
        counters: Arc::new(PeerCounters::default()),
        ctl_tx,
        ctl_rx,
        cancel: entry.cancel.child_token(),
        interested: false,
    };
    let res = session.run(conn).await;
    if let Err(e) = &res {
        if e.is_peer_fault() {
            tracing::warn!(task = %entry.task_id, peer = %ip, error = %e, "peer misbehaved; shunning it");
            entry
                .shunned
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(ip);
        }
    }
    res
}
