//! The shared state of one downloading task.
//!
//! Every peer session of a task works against one [`TaskState`]: the piece
//! picker, the in-memory buffers of partial pieces, the connected peers
//! (with a control channel to each, for CANCELs), the shunned IPs, the
//! verified-piece log that feeds HAVE broadcasts, and the statistics behind
//! a `ProgressReport`. The lock is a plain mutex held only for bookkeeping,
//! never across an await; hashing and disk writes happen outside it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pollen_protocol::api::AgentTaskState;
use pollen_protocol::bitfield;
use pollen_protocol::lengths::BlockInfo;
use pollen_protocol::metainfo::FileMap;
use pollen_protocol::{Info, Lengths, Message, PieceIndex, TaskId};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::{Error, Result};
use crate::peer_connection::HaveLog;
use crate::piece_picker::{PeerKey, PickerConfig, PiecePicker};
use crate::rate_limit::LimiterChain;
use crate::store::Store;
use crate::upload::Uploader;

mod pieces;
mod progress;

/// Most non-seed peers connected to one task at once.
pub(crate) const MAX_PEERS: usize = 128;
/// Memory for partial pieces of one task.
pub(crate) const PIECE_BUFFER_BUDGET: u64 = 64 * 1024 * 1024;
/// Failed pieces with several senders remembered until their good copy
/// shows which sender lied.
const MAX_SUSPECT_PIECES: usize = 64;
/// Completed pieces of one task hashed and stored at once.
const VERIFY_CONCURRENCY: usize = 4;
/// Piece buffers kept for reuse once their piece is stored, so that a fast
/// download does not allocate and zero a fresh buffer (and fault in its
/// pages) for every piece: at most this many ...
const SPARE_BUFFERS: usize = VERIFY_CONCURRENCY;
/// ... and at most this many bytes of them. Pieces longer than this get a
/// fresh buffer each, as do all pieces once the download is complete.
const SPARE_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// How many stored pieces' buffers of `piece_len` bytes a task keeps.
pub(crate) fn spare_buffers(piece_len: usize) -> usize {
    SPARE_BUFFERS.min(SPARE_BUFFER_BYTES / piece_len.max(1))
}

/// Where a task is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Downloading.
    Running,
    /// Every piece is verified; publishing.
    Downloaded,
    /// Published; still uploading to peers.
    Completed,
    /// Stopped with a reason.
    Failed(String),
    /// Stopped by DELETE or a 410 from the server.
    Canceled,
}

impl Phase {
    /// The report state.
    pub(crate) fn report_state(&self) -> AgentTaskState {
        match self {
            Phase::Running | Phase::Downloaded => AgentTaskState::Running,
            Phase::Completed => AgentTaskState::Completed,
            Phase::Failed(_) => AgentTaskState::Failed,
            Phase::Canceled => AgentTaskState::Canceled,
        }
    }

    /// Whether peers may still connect (to download or to be served).
    pub(crate) fn is_live(&self) -> bool {
        matches!(self, Phase::Running | Phase::Downloaded | Phase::Completed)
    }
}

/// Byte counters of one connection.
#[derive(Debug, Default)]
pub(crate) struct PeerCounters {
    pub(crate) down: AtomicU64,
    pub(crate) up: AtomicU64,
}

struct PeerEntry {
    ip: IpAddr,
    addr: SocketAddr,
    is_seed: bool,
    /// Whether we dialed this connection.
    dialed: bool,
    ctl: mpsc::Sender<Message>,
    cancel: CancellationToken,
    counters: Arc<PeerCounters>,
    bitfield_seen: bool,
    last: (u64, u64),
    rate: (u64, u64),
    /// A seed's last quick rate sample: when, and its download count then.
    quick: (Instant, u64),
}

struct PieceBuf {
    data: Vec<u8>,
    /// Who sent each block (`None`: not arrived yet). A relayed piece may
    /// forward the seed's blocks before it is verified.
    from: Vec<Option<BlockFrom>>,
}

/// The sender of a buffered block.
#[derive(Clone, Copy)]
enum BlockFrom {
    Seed,
    Peer(IpAddr),
}

impl BlockFrom {
    /// The peer's address; `None` for the seed.
    fn peer(self) -> Option<IpAddr> {
        match self {
            BlockFrom::Seed => None,
            BlockFrom::Peer(ip) => Some(ip),
        }
    }
}

/// Whether a requested block can be sent now, and from where.
pub(crate) enum Servable {
    /// The piece is verified: read it through the uploader.
    Stored,
    /// A relayed piece's block, from its buffer before verification.
    Buffered(Bytes),
    /// A relayed piece's block that has not arrived from the seed yet.
    NotYet,
}

struct Inner {
    picker: PiecePicker,
    buffers: HashMap<u32, PieceBuf>,
    /// Buffers of stored pieces, for the next ones ([`SPARE_BUFFERS`]).
    spare: Vec<Vec<u8>>,
    peers: HashMap<PeerKey, PeerEntry>,
    next_key: PeerKey,
    shunned: BTreeSet<IpAddr>,
    /// Failed pieces built from several peers: each block's sender and the
    /// digest of what it sent, checked against the piece's good copy.
    suspects: HashMap<u32, Vec<(usize, IpAddr, [u8; 20])>>,
    /// Announcements in order, for every session's writer: HAVE for a
    /// verified piece, RELAY for a piece arriving from the seed.
    have_log: Vec<Message>,
    /// Pieces announced with RELAY and not verified yet: their blocks may be
    /// requested, and are sent as they arrive from the seed.
    relaying: HashSet<u32>,
    /// Relayed pieces whose last block arrived, until they are verified.
    settling: HashMap<u32, Bytes>,
    bytes_from_peers: u64,
    bytes_from_seed: u64,
    file_done: Vec<u64>,
    last_done: u64,
    rate_bps: u64,
    last_sample: Instant,
}

impl Inner {
    /// Whether piece `index` is verified and stored.
    fn verified(&self, index: PieceIndex) -> bool {
        self.picker.have().get(index.0 as usize).is_some_and(|b| *b)
    }
}

/// The shared state of one task on an agent.
pub(crate) struct TaskState {
    pub(crate) task_id: TaskId,
    pub(crate) info: Arc<Info>,
    pub(crate) lengths: Lengths,
    pub(crate) store: Arc<Store>,
    pub(crate) uploader: Arc<Uploader>,
    pub(crate) download_limits: LimiterChain,
    file_map: FileMap,
    inner: Mutex<Inner>,
    have_tx: watch::Sender<usize>,
    /// Bumped when a block of a relayed piece arrives from the seed or a
    /// relayed piece is verified: parked requests may be servable.
    relay_tx: watch::Sender<u64>,
    phase_tx: watch::Sender<Phase>,
    work_tx: watch::Sender<u64>,
    verify_slots: Arc<Semaphore>,
    verifying: TaskTracker,
}

/// Who is on the other end of a connection, and who dialed it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Link {
    /// The remote address.
    pub(crate) addr: SocketAddr,
    /// Our own address (the source of our dials).
    pub(crate) own_ip: IpAddr,
    /// Whether the remote is the seed.
    pub(crate) is_seed: bool,
    /// Whether we dialed.
    pub(crate) dialed: bool,
}

impl Link {
    /// Whether this connection wins over a duplicate with the same peer:
    /// the one dialed by the lower IP does, on both ends.
    fn preferred(&self) -> bool {
        let peer = self.addr.ip();
        if self.dialed {
            self.own_ip < peer
        } else {
            peer < self.own_ip
        }
    }
}

/// A registered peer; unregisters on drop.
pub(crate) struct PeerGuard {
    state: Arc<TaskState>,
    pub(crate) key: PeerKey,
    pub(crate) bitfield: Bytes,
    pub(crate) have_pos: usize,
    pub(crate) counters: Arc<PeerCounters>,
}

impl Drop for PeerGuard {
    fn drop(&mut self) {
        self.state.unregister(self.key);
    }
}

impl TaskState {
    /// State for a task with nothing downloaded yet.
    pub(crate) fn new(
        task_id: TaskId,
        info: Arc<Info>,
        store: Arc<Store>,
        uploader: Arc<Uploader>,
        download_limits: LimiterChain,
    ) -> Self {
        let lengths = *store.lengths();
        let picker = PiecePicker::new(
            lengths,
            PickerConfig::for_lengths(&lengths, PIECE_BUFFER_BUDGET),
            &mut rand::thread_rng(),
        );
        let inner = Inner {
            picker,
            buffers: HashMap::new(),
            spare: Vec::new(),
            peers: HashMap::new(),
            next_key: 1,
            shunned: BTreeSet::new(),
            suspects: HashMap::new(),
            have_log: Vec::new(),
            relaying: HashSet::new(),
            settling: HashMap::new(),
            bytes_from_peers: 0,
            bytes_from_seed: 0,
            file_done: vec![0; info.files.len()],
            last_done: 0,
            rate_bps: 0,
            last_sample: Instant::now(),
        };
        let phase = if lengths.num_pieces() == 0 {
            Phase::Downloaded
        } else {
            Phase::Running
        };
        Self {
            task_id,
            file_map: FileMap::new(&info),
            info,
            lengths,
            store,
            uploader,
            download_limits,
            inner: Mutex::new(inner),
            have_tx: watch::channel(0).0,
            relay_tx: watch::channel(0).0,
            phase_tx: watch::channel(phase).0,
            work_tx: watch::channel(0).0,
            verify_slots: Arc::new(Semaphore::new(VERIFY_CONCURRENCY)),
            verifying: TaskTracker::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for every verification in flight to finish (when the task
    /// stops, before its staging data may be removed).
    pub(crate) async fn wait_verifications(&self) {
        self.verifying.close();
        self.verifying.wait().await;
    }

    /// The current phase.
    pub(crate) fn phase(&self) -> Phase {
        self.phase_tx.borrow().clone()
    }

    /// Watches phase changes.
    pub(crate) fn watch_phase(&self) -> watch::Receiver<Phase> {
        self.phase_tx.subscribe()
    }

    /// Moves to `phase` unless the task already ended.
    pub(crate) fn set_phase(&self, phase: Phase) {
        self.phase_tx.send_if_modified(|p| {
            let allowed = p.is_live() && *p != phase;
            if allowed {
                *p = phase;
            }
            allowed
        });
    }

    /// Watches for blocks becoming requestable again (a peer left, a piece
    /// failed, requests were released): every session should then ask the
    /// picker for work.
    pub(crate) fn watch_work(&self) -> watch::Receiver<u64> {
        self.work_tx.subscribe()
    }

    fn wake_all(&self) {
        self.work_tx.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Watches the number of verified pieces (for HAVE broadcasts).
    pub(crate) fn watch_haves(&self) -> watch::Receiver<usize> {
        self.have_tx.subscribe()
    }

    /// Watches for blocks of relayed pieces becoming servable.
    pub(crate) fn watch_relay(&self) -> watch::Receiver<u64> {
        self.relay_tx.subscribe()
    }

    fn relay_progress(&self) {
        self.relay_tx.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Whether a peer may request blocks of `index` from us: we verified
    /// it, or announced that we relay it.
    pub(crate) fn may_serve(&self, index: PieceIndex) -> bool {
        let g = self.lock();
        g.relaying.contains(&index.0) || g.verified(index)
    }

    /// Where the block at `begin` of piece `index` can be sent from now.
    /// A relayed piece's block is sent from memory once it arrived from the
    /// seed; a block that came from a peer waits for the piece's
    /// verification, so that we never forward a peer's bytes unchecked.
    pub(crate) fn servable(&self, index: PieceIndex, begin: u32, len: u32) -> Servable {
        let g = self.lock();
        if g.verified(index) {
            return Servable::Stored;
        }
        let (start, end) = (begin as usize, begin as usize + len as usize);
        if let Some(piece) = g.settling.get(&index.0) {
            if let Some(s) = piece.get(start..end) {
                return Servable::Buffered(piece.slice_ref(s));
            }
        }
        let Some(buf) = g.buffers.get(&index.0) else {
            return Servable::NotYet;
        };
        // Every block the range touches must be in (a peer may ask for any
        // range of up to 128 KiB, not only our block grid).
        let block = self.lengths.block_length().max(1) as usize;
        let arrived = (start / block..=end.saturating_sub(1) / block)
            .all(|n| matches!(buf.from.get(n), Some(Some(BlockFrom::Seed))));
        match buf.data.get(start..end) {
            Some(s) if arrived => Servable::Buffered(Bytes::copy_from_slice(s)),
            _ => Servable::NotYet,
        }
    }

    /// Whether piece `index` is verified and stored.
    #[cfg(test)]
    pub(crate) fn has_piece(&self, index: PieceIndex) -> bool {
        self.lock().verified(index)
    }

    /// Whether every piece is verified.
    pub(crate) fn is_complete(&self) -> bool {
        self.lock().picker.is_complete()
    }

    /// Whether `ip` is shunned.
    pub(crate) fn is_shunned(&self, ip: IpAddr) -> bool {
        self.lock().shunned.contains(&ip)
    }

    /// Whether a non-seed connection with `ip` exists.
    pub(crate) fn is_connected(&self, ip: IpAddr) -> bool {
        self.lock().peers.values().any(|p| !p.is_seed && p.ip == ip)
    }

    /// Shuns `ip` for this task and closes its connections.
    pub(crate) fn shun(&self, ip: IpAddr) {
        let mut g = self.lock();
        g.shunned.insert(ip);
        for p in g.peers.values().filter(|p| p.ip == ip && !p.is_seed) {
            p.cancel.cancel();
        }
    }

    /// Registers a connection that passed authentication.
    ///
    /// # Errors
    /// [`Error::Refused`] when the task is over, the IP is shunned, already
    /// connected, or the task has [`MAX_PEERS`] peers.
    pub(crate) fn register(
        self: &Arc<Self>,
        link: Link,
        ctl: mpsc::Sender<Message>,
        cancel: CancellationToken,
    ) -> Result<PeerGuard> {
        if !self.phase().is_live() {
            return Err(Error::Refused {
                reason: "task is not running",
            });
        }
        let mut g = self.lock();
        let Link {
            addr,
            is_seed,
            dialed,
            ..
        } = link;
        let ip = addr.ip();
        if !is_seed {
            if g.shunned.contains(&ip) {
                return Err(Error::Refused {
                    reason: "peer is shunned",
                });
            }
            // Two agents that dial each other at once end up with two
            // connections. Both sides keep the one dialed by the lower IP,
            // so exactly one survives. A peer that dials us again has
            // dropped its older connection (or only fetched the info
            // dictionary over it): the newer one replaces it.
            let existing = g
                .peers
                .iter()
                .find(|(_, p)| !p.is_seed && p.ip == ip)
                .map(|(k, p)| (*k, p.dialed));
            if let Some((old, old_dialed)) = existing {
                let redialed = !dialed && !old_dialed;
                if !link.preferred() && !redialed {
                    return Err(Error::Refused {
                        reason: "already connected",
                    });
                }
                g.picker.remove_peer(old);
                if let Some(p) = g.peers.remove(&old) {
                    p.cancel.cancel();
                }
            }
            if g.peers.values().filter(|p| !p.is_seed).count() >= MAX_PEERS {
                return Err(Error::Refused {
                    reason: "too many peers",
                });
            }
        }
        let key = g.next_key;
        g.next_key += 1;
        g.picker.add_peer(key, is_seed);
        let counters = Arc::new(PeerCounters::default());
        g.peers.insert(
            key,
            PeerEntry {
                ip,
                addr,
                is_seed,
                dialed,
                ctl,
                cancel,
                counters: counters.clone(),
                bitfield_seen: false,
                last: (0, 0),
                rate: (0, 0),
                quick: (Instant::now(), 0),
            },
        );
        let bitfield = Bytes::from(bitfield::to_bytes(g.picker.have()));
        let have_pos = g.have_log.len();
        Ok(PeerGuard {
            state: self.clone(),
            key,
            bitfield,
            have_pos,
            counters,
        })
    }

    fn unregister(&self, key: PeerKey) {
        let mut g = self.lock();
        g.picker.remove_peer(key);
        g.peers.remove(&key);
        drop(g);
        self.wake_all();
    }

    /// Handles a BITFIELD. Returns whether the peer has a piece we lack.
    ///
    /// # Errors
    /// [`Error::Violation`] for a second bitfield or a wrong length.
    pub(crate) fn on_bitfield(&self, key: PeerKey, bytes: &[u8]) -> Result<bool> {
        let bf =
            bitfield::from_bytes(bytes, self.lengths.num_pieces()).ok_or(Error::Violation {
                what: "bitfield does not match the piece count",
            })?;
        let mut g = self.lock();
        let Some(p) = g.peers.get_mut(&key) else {
            return Ok(false);
        };
        if std::mem::replace(&mut p.bitfield_seen, true) {
            return Err(Error::Violation {
                what: "second bitfield",
            });
        }
        Ok(g.picker.set_bitfield(key, bf))
    }

    /// Handles a HAVE. Returns whether we lack that piece.
    ///
    /// # Errors
    /// [`Error::Violation`] for an index outside the task.
    pub(crate) fn on_have(&self, key: PeerKey, index: PieceIndex) -> Result<bool> {
        if !self.lengths.contains(index) {
            return Err(Error::Violation {
                what: "HAVE for a piece outside the task",
            });
        }
        Ok(self.lock().picker.peer_have(key, index))
    }

    /// Whether both we and the peer have every piece: the connection has
    /// nothing left to carry.
    pub(crate) fn both_complete(&self, key: PeerKey) -> bool {
        let g = self.lock();
        g.picker.is_complete() && g.picker.peer_has_all(key)
    }

    /// Records the round trip of `key`'s connection: its connect time when
    /// we dialed, greeting to first message when we accepted.
    pub(crate) fn set_rtt(&self, key: PeerKey, rtt: Duration) {
        self.lock().picker.set_rtt(key, rtt);
    }

    /// The peer choked us: its outstanding requests go back to the pool.
    pub(crate) fn on_choke(&self, key: PeerKey) {
        self.lock().picker.release_requests(key);
        self.wake_all();
    }

    /// Outstanding requests at `key`.
    pub(crate) fn outstanding(&self, key: PeerKey) -> usize {
        self.lock().picker.outstanding(key)
    }

    /// Blocks to request from `key` now.
    pub(crate) fn next_requests(&self, key: PeerKey) -> Vec<BlockInfo> {
        if self.phase() != Phase::Running {
            return Vec::new();
        }
        self.lock().picker.next_requests(key, Instant::now())
    }

    /// Closes every connection to the seed (after completion).
    pub(crate) fn close_seed_connections(&self) {
        for p in self.lock().peers.values().filter(|p| p.is_seed) {
            p.cancel.cancel();
        }
    }
}

impl HaveLog for TaskState {
    /// Announcements since position `pos` of the log, and the new position.
    fn announcements_since(&self, pos: usize) -> (Vec<Message>, usize) {
        let g = self.lock();
        (
            g.have_log.get(pos..).map(<[_]>::to_vec).unwrap_or_default(),
            g.have_log.len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use crate::piece_cache::PieceCache;
    use crate::test_util::{make_info, random_bytes};

    /// A task of one file of two blocks, cut into pieces of `piece_length`,
    /// staged in `dir`; and the file's bytes.
    async fn two_block_task(dir: &std::path::Path, piece_length: u64) -> (Arc<TaskState>, Vec<u8>) {
        let block = pollen_protocol::lengths::DEFAULT_BLOCK_LEN as usize;
        let (info, stream) = make_info(&[("f", random_bytes(2 * block), 0o644)], piece_length);
        let ih = info.info_hash().unwrap();
        let info = Arc::new(info);
        let disk = Arc::new(tokio::sync::Semaphore::new(4));
        let store = Arc::new(
            Store::create(dir, info.clone(), ih, disk.clone())
                .await
                .unwrap(),
        );
        let uploader = Arc::new(Uploader::new(
            ih,
            *store.lengths(),
            store.clone(),
            Arc::new(PieceCache::new(0)),
            LimiterChain::unlimited(),
            disk,
        ));
        let state = Arc::new(TaskState::new(
            TaskId::new("t").unwrap(),
            info,
            store,
            uploader,
            LimiterChain::unlimited(),
        ));
        (state, stream)
    }

    /// Registers a connection to the seed (127.0.0.9) with the task; the
    /// receiver gets its control messages.
    fn register_seed(state: &Arc<TaskState>) -> (PeerGuard, mpsc::Receiver<Message>) {
        let (ctl, rx) = mpsc::channel(8);
        let link = Link {
            addr: "127.0.0.9:1".parse().unwrap(),
            own_ip: "127.0.0.1".parse().unwrap(),
            is_seed: true,
            dialed: true,
        };
        let guard = state.register(link, ctl, CancellationToken::new()).unwrap();
        (guard, rx)
    }

    /// A task of two one-block pieces with a seed that offered both, and
    /// the two block requests made of it.
    async fn both_pieces_asked_of_a_seed(
        dir: &std::path::Path,
    ) -> (
        Arc<TaskState>,
        Vec<u8>,
        PeerGuard,
        mpsc::Receiver<Message>,
        Vec<BlockInfo>,
    ) {
        let block = pollen_protocol::lengths::DEFAULT_BLOCK_LEN as u64;
        let (state, stream) = two_block_task(dir, block).await;
        let (guard, ctl_rx) = register_seed(&state);
        let all = bitfield::to_bytes(&bitfield::full(2));
        state.on_bitfield(guard.key, &all).unwrap();
        let reqs = state.next_requests(guard.key);
        assert_eq!(reqs.len(), 2);
        (state, stream, guard, ctl_rx, reqs)
    }

    /// Takes every verification slot, as if other pieces were being hashed.
    async fn hold_verifications(state: &TaskState) -> tokio::sync::OwnedSemaphorePermit {
        state
            .verify_slots
            .clone()
            .acquire_many_owned(VERIFY_CONCURRENCY as u32)
            .await
            .unwrap()
    }

    /// The bytes of block `b` of the one-block pieces in `stream`.
    fn block_bytes(stream: &[u8], b: &BlockInfo) -> Bytes {
        let start = b.piece.0 as usize * b.length as usize;
        Bytes::copy_from_slice(&stream[start..start + b.length as usize])
    }

    /// Hands block `b` of `stream` to the task as if `key` had sent it.
    async fn deliver(state: &Arc<TaskState>, key: PeerKey, stream: &[u8], b: BlockInfo) {
        let data = block_bytes(stream, &b);
        state.on_piece(key, b.piece, b.begin, data).await.unwrap();
    }

    /// A piece whose last block arrived must be verified even when the
    /// session that delivered it is dropped right after (it was shunned or
    /// cancelled while its reader was inside `on_piece`). Before the fix the
    /// reader waited there for a verification slot; dropping it then lost
    /// the buffer, and the piece stayed active with every block received
    /// and nothing requested: the download never finished.
    #[tokio::test]
    async fn a_completed_piece_survives_its_session_being_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (state, stream, guard, _ctl_rx, reqs) = both_pieces_asked_of_a_seed(dir.path()).await;

        // Every verification slot is busy (other pieces are being hashed).
        let busy = hold_verifications(&state).await;
        let b = reqs[0];
        let data = block_bytes(&stream, &b);
        // The session is cancelled while its reader is in `on_piece`.
        let _ = tokio::time::timeout(
            Duration::from_millis(100),
            state.on_piece(guard.key, b.piece, b.begin, data),
        )
        .await;
        drop(guard);
        drop(busy);
        state.wait_verifications().await;
        assert!(state.has_piece(b.piece), "the completed piece was lost");
        assert_eq!(state.lock().picker.active_count(), 1);
    }

    /// A stored piece's buffer is reused for the next piece without being
    /// cleared: the new piece's blocks overwrite all of it, so what is
    /// stored and verified is the new piece alone.
    #[tokio::test]
    async fn a_reused_piece_buffer_stores_only_the_new_piece() {
        let dir = tempfile::tempdir().unwrap();
        let (state, stream, guard, _ctl_rx, reqs) = both_pieces_asked_of_a_seed(dir.path()).await;
        let (first, second) = (reqs[0], reqs[1]);
        deliver(&state, guard.key, &stream, first).await;
        state.wait_verifications().await;
        assert!(state.has_piece(first.piece));
        // The first piece's buffer, its bytes still in it, is kept.
        assert_eq!(state.lock().spare.len(), 1);

        // The second piece takes it (its verification held back to see that).
        let busy = hold_verifications(&state).await;
        deliver(&state, guard.key, &stream, second).await;
        assert_eq!(state.lock().spare.len(), 0);
        drop(busy);
        state.wait_verifications().await;
        assert!(state.has_piece(second.piece));
        // The download is complete: no buffer is kept any more.
        assert_eq!(state.lock().spare.len(), 0);
        for b in &reqs {
            let stored = state.store.read_piece(b.piece).await.unwrap();
            assert_eq!(stored, block_bytes(&stream, b));
        }
    }

    /// Spare buffers stay within their byte budget whatever the piece length.
    #[test]
    fn spare_buffers_fit_their_budget() {
        for piece_len in [
            16 << 10,
            1 << 20,
            2 << 20,
            4 << 20,
            8 << 20,
            16 << 20,
            64 << 20,
        ] {
            let n = spare_buffers(piece_len);
            assert!(
                n <= SPARE_BUFFERS && n * piece_len <= SPARE_BUFFER_BYTES,
                "{piece_len}"
            );
        }
        assert_eq!(spare_buffers(1 << 20), SPARE_BUFFERS);
        assert_eq!(spare_buffers(16 << 20), 0);
    }

    /// Between the once-a-second samples, a seed's pipeline follows its rate
    /// over windows of at least 100 ms.
    #[tokio::test]
    async fn a_fast_seed_gets_a_deeper_pipeline_within_a_fraction_of_a_second() {
        let block = pollen_protocol::lengths::DEFAULT_BLOCK_LEN as u64;
        let dir = tempfile::tempdir().unwrap();
        // One piece of two blocks: the seed pipeline (16) is never reached,
        // so the depth shows in the picker's view only.
        let (state, _) = two_block_task(dir.path(), 2 * block).await;
        let (seed, _rx) = register_seed(&state);
        let t0 = state.lock().peers[&seed.key].quick.0;
        let depth = |g: &Inner| g.picker.pipeline_depth(seed.key);
        let cfg = PickerConfig::default();
        let mut g = state.lock();
        // 100 MB in 50 ms: too soon to judge.
        seed.counters.down.store(100_000_000, Ordering::Relaxed);
        g.quick_seed_sample(seed.key, t0 + Duration::from_millis(50));
        assert_eq!(depth(&g), Some(cfg.seed_pipeline));
        // Over 200 ms, that is 500 MB/s: the pipeline grows to its cap.
        g.quick_seed_sample(seed.key, t0 + Duration::from_millis(200));
        assert_eq!(depth(&g), Some(cfg.pipeline));
        // Then 300 kB/s: back to the seed minimum.
        seed.counters.down.store(100_030_000, Ordering::Relaxed);
        g.quick_seed_sample(seed.key, t0 + Duration::from_millis(300));
        assert_eq!(depth(&g), Some(cfg.seed_pipeline));
    }

    /// Two peers each send one block of a piece; one lies. The failed piece
    /// cannot tell who, so nobody is shunned yet; once the seed delivers a
    /// good copy, the block digests convict the liar and only the liar.
    #[tokio::test]
    async fn the_good_copy_of_a_mixed_bad_piece_convicts_only_the_liar() {
        let block = pollen_protocol::lengths::DEFAULT_BLOCK_LEN as usize;
        let dir = tempfile::tempdir().unwrap();
        let (state, stream) = two_block_task(dir.path(), 2 * block as u64).await;
        let own: IpAddr = "127.0.0.1".parse().unwrap();
        let register = |addr: &str, is_seed: bool| {
            let (ctl, rx) = mpsc::channel(8);
            let link = Link {
                addr: addr.parse().unwrap(),
                own_ip: own,
                is_seed,
                dialed: true,
            };
            let g = state.register(link, ctl, CancellationToken::new()).unwrap();
            state
                .on_bitfield(g.key, &bitfield::to_bytes(&bitfield::full(1)))
                .unwrap();
            (g, rx)
        };
        let (honest, _h) = register("127.0.0.2:1", false);
        let (liar, _l) = register("127.0.0.3:1", false);
        let good = |b: pollen_protocol::lengths::BlockInfo| {
            let start = b.begin as usize;
            Bytes::copy_from_slice(&stream[start..start + b.length as usize])
        };
        async fn poll(what: &str, cond: impl Fn() -> bool) {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !cond() {
                assert!(std::time::Instant::now() < deadline, "timed out: {what}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        // The honest peer is asked for both blocks and delivers block 0;
        // block 1 goes to the liar, which sends garbage.
        let reqs = state.next_requests(honest.key);
        assert_eq!(reqs.len(), 2);
        state
            .on_piece(honest.key, reqs[0].piece, reqs[0].begin, good(reqs[0]))
            .await
            .unwrap();
        state.lock().picker.release_requests(honest.key);
        let to_liar = state.next_requests(liar.key);
        assert_eq!(to_liar, vec![reqs[1]]);
        let junk = Bytes::from(vec![0x5a; reqs[1].length as usize]);
        state
            .on_piece(liar.key, reqs[1].piece, reqs[1].begin, junk)
            .await
            .unwrap();
        poll("the bad piece to be requeued", || {
            state.lock().picker.active_count() == 0
        })
        .await;
        let honest_ip: IpAddr = "127.0.0.2".parse().unwrap();
        let liar_ip: IpAddr = "127.0.0.3".parse().unwrap();
        assert!(!state.is_shunned(honest_ip) && !state.is_shunned(liar_ip));
        // The seed delivers the good copy: only the liar is convicted.
        drop((honest, liar));
        let (seed, _s) = register("127.0.0.9:1", true);
        let from_seed = state.next_requests(seed.key);
        assert_eq!(from_seed.len(), 2);
        for b in from_seed {
            state
                .on_piece(seed.key, b.piece, b.begin, good(b))
                .await
                .unwrap();
        }
        poll("the good copy to verify", || state.is_complete()).await;
        poll("the liar to be shunned", || state.is_shunned(liar_ip)).await;
        assert!(!state.is_shunned(honest_ip), "the honest peer was blamed");
    }

    /// The announcements a new session would send from position `pos`.
    fn announced(state: &TaskState, pos: usize) -> Vec<Message> {
        state.announcements_since(pos).0
    }

    fn servable_bytes(state: &TaskState, b: BlockInfo) -> Option<Bytes> {
        match state.servable(b.piece, b.begin, b.length) {
            Servable::Buffered(data) => Some(data),
            Servable::Stored | Servable::NotYet => None,
        }
    }

    /// A piece arriving from the seed is announced with RELAY at its first
    /// block; each block can be served as soon as it is in, the rest not
    /// before; once the piece is whole it is still served from memory until
    /// it is verified, and then from the store, announced with HAVE.
    #[tokio::test]
    async fn a_piece_from_the_seed_is_relayed_block_by_block() {
        let block = pollen_protocol::lengths::DEFAULT_BLOCK_LEN as u64;
        let dir = tempfile::tempdir().unwrap();
        let (state, stream) = two_block_task(dir.path(), 2 * block).await;
        let (seed, _rx) = register_seed(&state);
        state
            .on_bitfield(seed.key, &bitfield::to_bytes(&bitfield::full(1)))
            .unwrap();
        let reqs = state.next_requests(seed.key);
        assert_eq!(reqs.len(), 2);
        let piece = reqs[0].piece;
        assert!(!state.may_serve(piece));
        assert!(matches!(
            state.servable(piece, reqs[0].begin, reqs[0].length),
            Servable::NotYet
        ));

        let mut progress = state.watch_relay();
        progress.borrow_and_update();
        let at_start = state.announcements_since(0).1;
        let good = |b: &BlockInfo| {
            let start = b.begin as usize;
            Bytes::copy_from_slice(&stream[start..start + b.length as usize])
        };
        state
            .on_piece(seed.key, piece, reqs[0].begin, good(&reqs[0]))
            .await
            .unwrap();
        assert_eq!(announced(&state, at_start), vec![Message::Relay(piece)]);
        assert!(state.may_serve(piece));
        assert!(progress.has_changed().unwrap(), "parked requests not woken");
        assert_eq!(servable_bytes(&state, reqs[0]), Some(good(&reqs[0])));
        assert!(matches!(
            state.servable(piece, reqs[1].begin, reqs[1].length),
            Servable::NotYet
        ));
        // A range over both blocks, or straddling them, waits for the second.
        for (begin, len) in [
            (0, 2 * reqs[0].length),
            (reqs[0].length / 2, reqs[0].length),
        ] {
            assert!(matches!(
                state.servable(piece, begin, len),
                Servable::NotYet
            ));
        }

        // The last block arrives; its hash check is held back.
        let busy = hold_verifications(&state).await;
        state
            .on_piece(seed.key, piece, reqs[1].begin, good(&reqs[1]))
            .await
            .unwrap();
        for b in &reqs {
            assert_eq!(servable_bytes(&state, *b), Some(good(b)));
        }
        assert!(!state.has_piece(piece));
        drop(busy);
        state.wait_verifications().await;
        assert!(state.has_piece(piece));
        assert!(matches!(
            state.servable(piece, reqs[1].begin, reqs[1].length),
            Servable::Stored
        ));
        assert_eq!(
            announced(&state, at_start),
            vec![Message::Relay(piece), Message::Have(piece)]
        );
        assert!(state.lock().settling.is_empty() && state.lock().relaying.is_empty());
    }

    /// A task of one two-block piece with a seed and a peer (127.0.0.2)
    /// that both have it, and a function giving a block's good bytes.
    async fn seed_and_peer(
        dir: &std::path::Path,
    ) -> (
        Arc<TaskState>,
        PeerGuard,
        PeerGuard,
        impl Fn(&BlockInfo) -> Bytes,
    ) {
        let block = pollen_protocol::lengths::DEFAULT_BLOCK_LEN as u64;
        let (state, stream) = two_block_task(dir, 2 * block).await;
        let full = bitfield::to_bytes(&bitfield::full(1));
        let (seed, _) = register_seed(&state);
        state.on_bitfield(seed.key, &full).unwrap();
        let (ctl, _) = mpsc::channel(8);
        let link = Link {
            addr: "127.0.0.2:1".parse().unwrap(),
            own_ip: "127.0.0.1".parse().unwrap(),
            is_seed: false,
            dialed: true,
        };
        let peer = state.register(link, ctl, CancellationToken::new()).unwrap();
        state.on_bitfield(peer.key, &full).unwrap();
        let good = move |b: &BlockInfo| {
            let start = b.begin as usize;
            Bytes::copy_from_slice(&stream[start..start + b.length as usize])
        };
        (state, seed, peer, good)
    }

    /// In a piece being relayed, a block that came from a peer is not
    /// forwarded before the piece is verified, and neither is the whole
    /// piece while its hash check waits.
    #[tokio::test]
    async fn a_peer_block_of_a_relayed_piece_waits_for_verification() {
        let dir = tempfile::tempdir().unwrap();
        let (state, seed, peer, good) = seed_and_peer(dir.path()).await;
        let reqs = state.next_requests(seed.key);
        assert_eq!(reqs.len(), 2);
        let piece = reqs[0].piece;
        state
            .on_piece(seed.key, piece, reqs[0].begin, good(&reqs[0]))
            .await
            .unwrap();
        assert_eq!(announced(&state, 0), vec![Message::Relay(piece)]);

        // The second block is asked of the peer instead, which sends it.
        state.lock().picker.release_requests(seed.key);
        assert_eq!(state.next_requests(peer.key), vec![reqs[1]]);
        let busy = hold_verifications(&state).await;
        state
            .on_piece(peer.key, piece, reqs[1].begin, good(&reqs[1]))
            .await
            .unwrap();
        for b in &reqs {
            assert!(matches!(
                state.servable(piece, b.begin, b.length),
                Servable::NotYet
            ));
        }
        drop(busy);
        state.wait_verifications().await;
        for b in &reqs {
            assert!(matches!(
                state.servable(piece, b.begin, b.length),
                Servable::Stored
            ));
        }
    }

    /// A piece that starts with a peer's block is not relayed, and that
    /// block is not served before the piece verifies.
    #[tokio::test]
    async fn a_piece_from_a_peer_is_not_relayed() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _seed, peer, good) = seed_and_peer(dir.path()).await;
        let reqs = state.next_requests(peer.key);
        assert_eq!(reqs.len(), 2);
        let piece = reqs[0].piece;
        state
            .on_piece(peer.key, piece, reqs[0].begin, good(&reqs[0]))
            .await
            .unwrap();
        assert!(announced(&state, 0).is_empty());
        assert!(!state.may_serve(piece));
        assert!(matches!(
            state.servable(piece, reqs[0].begin, reqs[0].length),
            Servable::NotYet
        ));
    }

    /// A peer that dials again (after fetching the info dictionary over a
    /// connection, or after losing one) replaces its older connection, even
    /// from the higher IP; of two connections dialed by both ends, the lower
    /// IP's is still kept.
    #[tokio::test]
    async fn a_redial_replaces_the_peers_older_connection() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _) = two_block_task(dir.path(), 16 * 1024).await;
        let link = |dialed| Link {
            addr: "127.1.9.3:1".parse().unwrap(),
            own_ip: "127.1.9.2".parse().unwrap(),
            is_seed: false,
            dialed,
        };
        let join = |dialed| {
            let (ctl, _rx) = mpsc::channel(8);
            let cancel = CancellationToken::new();
            let guard = state.register(link(dialed), ctl, cancel.clone());
            (guard, cancel)
        };
        let (first, first_cancel) = join(false);
        let first = first.unwrap();
        let (second, second_cancel) = join(false);
        let second = second.expect("a redial from the higher IP is taken");
        assert!(
            first_cancel.is_cancelled(),
            "the older connection is closed"
        );
        assert!(!second_cancel.is_cancelled());
        assert_ne!(first.key, second.key);
        // Our own dial (from the lower IP) still wins over its connection.
        let (ours, ours_cancel) = join(true);
        assert!(ours.is_ok());
        assert!(second_cancel.is_cancelled() && !ours_cancel.is_cancelled());
    }

    #[test]
    fn both_ends_keep_the_connection_dialed_by_the_lower_ip() {
        let (low, high): (IpAddr, IpAddr) =
            ("127.1.9.2".parse().unwrap(), "127.1.9.3".parse().unwrap());
        let link = |own: IpAddr, peer: IpAddr, dialed| Link {
            addr: SocketAddr::new(peer, 1),
            own_ip: own,
            is_seed: false,
            dialed,
        };
        // Connection dialed by `low`: seen as dialed at `low`, accepted at `high`.
        assert!(link(low, high, true).preferred());
        assert!(link(high, low, false).preferred());
        // Connection dialed by `high` loses on both ends.
        assert!(!link(high, low, true).preferred());
        assert!(!link(low, high, false).preferred());
    }
}
