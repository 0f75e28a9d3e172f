//! Which block to request from which peer: a plain struct with no I/O.
//!
//! The picker keeps the swarm's view of the download:
//! * availability per piece, counted from the bitfields and HAVEs of the
//!   non-seed peers only (the seed announces what it offers this agent, which
//!   says nothing about rarity);
//! * a queue of pieces that are missing and not started, ordered by
//!   `(availability, random tie-break, index)`, so rarest-first with a random
//!   tie-break is "the first queued piece this peer has";
//! * the active (partial) pieces with per-block state. A peer that starts a
//!   piece claims it; other peers leave its blocks alone until the claimer
//!   goes away (then whoever has it finishes it first) or the download
//!   reaches endgame;
//! * per-peer outstanding requests, bounded by the pipeline depth.
//!
//! Seed policy (architecture §5): a seed is asked for pieces it announced
//! (see `super_seed`: offers made to this agent alone, then what will not
//! reach the agent otherwise) that no connected peer has, or that no peer
//! had when the seed announced them (a first copy); for anything when
//! the agent is otherwise idle (no request outstanding at any non-seed peer
//! and none of them has a piece we lack); or, in endgame, for blocks that
//! peers have been sitting on for longer than a grace period.
//!
//! Endgame: once every missing piece is active, a peer with free slots may
//! take missing blocks of any active piece and duplicate blocks already
//! requested elsewhere; when one copy arrives, [`BlockOutcome::Accepted`]
//! lists the peers whose duplicate request must be cancelled.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use pollen_protocol::bitfield::{self, Bitfield};
use pollen_protocol::lengths::BlockInfo;
use pollen_protocol::{Lengths, PieceIndex};
use rand::Rng;

/// Identifies one peer connection within a task.
pub type PeerKey = u64;

/// Tuning knobs of the picker.
#[derive(Clone, Copy, Debug)]
pub struct PickerConfig {
    /// Most outstanding block requests per peer.
    pub pipeline: usize,
    /// Fewest outstanding block requests per peer.
    pub min_pipeline: usize,
    /// Outstanding block requests per new peer, before its rate is known.
    pub initial_pipeline: usize,
    /// How much of a peer's measured rate its pipeline holds at least. A
    /// pipeline must cover the round trip, so a peer whose round trip is
    /// known gets [`PickerConfig::rtt_factor`] round trips when that is
    /// more, up to [`PickerConfig::unknown_rtt_time`]. No deeper, because
    /// an uploader serves its requests in order, so a deep queue delays
    /// every new (rarest) piece behind old ones, and whatever is requested
    /// but not yet through the bottleneck waits in its buffer: with many
    /// peers, deep pipelines fill a link's buffer and every round trip on
    /// it grows by the buffer's length.
    pub pipeline_time: Duration,
    /// A peer's pipeline holds at least this many of its round trips.
    pub rtt_factor: u32,
    /// [`PickerConfig::pipeline_time`]'s stand-in while a peer's round trip
    /// is unknown: long enough for a path across continents.
    pub unknown_rtt_time: Duration,
    /// Fewest outstanding block requests at a seed, and its pipeline before
    /// its rate is known; [`PickerConfig::pipeline_time`] of its rate when
    /// that is more, up to [`PickerConfig::pipeline`]. Small where the
    /// seed's link is shared, so that agents commit to few seed pieces at a
    /// time and learn from their peers' HAVEs before asking for more: this
    /// keeps seed egress near one copy.
    pub seed_pipeline: usize,
    /// Most pieces one seed connection works on at once (same reason).
    pub seed_pieces: usize,
    /// Most pieces being downloaded at once (their buffers live in memory).
    pub max_active_pieces: usize,
    /// Most peers one block is requested from in endgame (a seed comes on
    /// top: see [`PickerConfig::seed_grace`]).
    pub endgame_dup: usize,
    /// How long a block must have waited on peers before a seed duplicates
    /// it in endgame, however many peers it was asked of: two slow peers
    /// must not hold up a block the seed can send.
    pub seed_grace: Duration,
}

impl Default for PickerConfig {
    fn default() -> Self {
        Self {
            pipeline: 64,
            min_pipeline: 4,
            initial_pipeline: 16,
            pipeline_time: Duration::from_millis(100),
            rtt_factor: 4,
            unknown_rtt_time: Duration::from_millis(250),
            seed_pipeline: 16,
            seed_pieces: 2,
            max_active_pieces: 64,
            endgame_dup: 2,
            seed_grace: Duration::from_millis(500),
        }
    }
}

impl PickerConfig {
    /// Defaults, with the active-piece cap derived from a memory budget.
    pub fn for_lengths(lengths: &Lengths, buffer_budget: u64) -> Self {
        let per_piece = u64::from(lengths.piece_length()).max(1);
        let max_active_pieces = (buffer_budget / per_piece).clamp(2, 1024) as usize;
        Self {
            max_active_pieces,
            ..Self::default()
        }
    }
}

#[derive(Debug)]
enum BlockState {
    Missing,
    Requested { by: Vec<PeerKey>, at: Instant },
    Received,
}

#[derive(Debug)]
struct Active {
    blocks: Vec<BlockState>,
    owner: Option<PeerKey>,
    received: usize,
}

#[derive(Debug)]
struct Peer {
    has: Bitfield,
    is_seed: bool,
    outstanding: HashSet<BlockInfo>,
    /// Most outstanding requests.
    depth: usize,
    /// The connection's round trip, when measured.
    rtt: Option<Duration>,
    /// A seed's announcements in arrival order (verified ones are pruned
    /// from the front). A seed offers few pieces at a time and holds them
    /// back from everyone else until they spread, so they are taken in the
    /// order offered: by rarity alone, an offer with an unlucky tie-break
    /// could wait behind newer ones until the seed gives up on it and hands
    /// it to every agent at once.
    seed_order: VecDeque<u32>,
    /// A seed's first offers: pieces it announced while no connected peer
    /// had them (empty for peers).
    first: Bitfield,
}

/// What to do with a block that arrived.
#[derive(Debug, PartialEq, Eq)]
pub enum BlockOutcome {
    /// Keep it. `complete` when it was the piece's last block (verify it
    /// now); `cancel` lists peers whose duplicate request is now moot.
    Accepted {
        complete: bool,
        cancel: Vec<PeerKey>,
    },
    /// Another copy already arrived (endgame) or the piece is done.
    Duplicate,
    /// This peer was not asked for this block.
    Unrequested,
}

/// The piece picker of one task.
#[derive(Debug)]
pub struct PiecePicker {
    lengths: Lengths,
    cfg: PickerConfig,
    have: Bitfield,
    have_count: u32,
    avail: Vec<u32>,
    tiebreak: Vec<u32>,
    queue: BTreeSet<(u32, u32, u32)>,
    active: BTreeMap<u32, Active>,
    peers: HashMap<PeerKey, Peer>,
    non_seed_outstanding: usize,
}

impl PiecePicker {
    /// A picker for a download that has no piece yet.
    pub fn new(lengths: Lengths, cfg: PickerConfig, rng: &mut impl Rng) -> Self {
        let n = lengths.num_pieces();
        let tiebreak: Vec<u32> = (0..n).map(|_| rng.gen()).collect();
        let queue = (0..n).map(|i| (0, tiebreak[i as usize], i)).collect();
        Self {
            lengths,
            cfg,
            have: bitfield::empty(n),
            have_count: 0,
            avail: vec![0; n as usize],
            tiebreak,
            queue,
            active: BTreeMap::new(),
            peers: HashMap::new(),
            non_seed_outstanding: 0,
        }
    }

    /// The verified pieces.
    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    /// Number of verified pieces.
    pub fn have_count(&self) -> u32 {
        self.have_count
    }

    /// Whether every piece is verified.
    pub fn is_complete(&self) -> bool {
        self.have_count == self.lengths.num_pieces()
    }

    /// Pieces being downloaded or verified.
    pub fn active_count(&self) -> usize {
        self.active.len()
    }

    /// Whether every missing piece has been started.
    pub fn in_endgame(&self) -> bool {
        self.queue.is_empty() && !self.active.is_empty()
    }

    /// Outstanding requests to `key`.
    pub fn outstanding(&self, key: PeerKey) -> usize {
        self.peers.get(&key).map_or(0, |p| p.outstanding.len())
    }

    /// The number of requests `key` may have outstanding.
    #[cfg(test)]
    pub(crate) fn pipeline_depth(&self, key: PeerKey) -> Option<usize> {
        self.peers.get(&key).map(|p| p.depth)
    }

    /// Records the round trip of `key`'s connection (see
    /// [`PickerConfig::rtt_factor`]).
    pub fn set_rtt(&mut self, key: PeerKey, rtt: Duration) {
        if let Some(p) = self.peers.get_mut(&key) {
            p.rtt = Some(rtt);
        }
    }

    /// Sizes a peer's pipeline from its measured download rate (bytes per
    /// second): [`PickerConfig::rtt_factor`] round trips worth of blocks,
    /// but at least [`PickerConfig::pipeline_time`] and at most
    /// [`PickerConfig::unknown_rtt_time`] (which also stands in while the
    /// round trip is unknown), within the configured bounds. A seed's
    /// pipeline never goes below [`PickerConfig::seed_pipeline`].
    pub fn adapt_pipeline(&mut self, key: PeerKey, rate_bps: u64) {
        let cfg = self.cfg;
        let block = u64::from(self.lengths.block_length()).max(1);
        let Some(p) = self.peers.get_mut(&key) else {
            return;
        };
        let time = match p.rtt {
            Some(rtt) => rtt.saturating_mul(cfg.rtt_factor).clamp(
                cfg.pipeline_time,
                cfg.unknown_rtt_time.max(cfg.pipeline_time),
            ),
            None => cfg.unknown_rtt_time,
        };
        let want = (rate_bps as f64 * time.as_secs_f64() / block as f64).ceil();
        let least = if p.is_seed {
            cfg.seed_pipeline
        } else {
            cfg.min_pipeline
        };
        p.depth = (want as usize).clamp(least.min(cfg.pipeline), cfg.pipeline.max(least));
    }

    /// Registers a peer that has announced nothing yet. A seed, too,
    /// announces what it offers (super-seeding), so it starts empty.
    pub fn add_peer(&mut self, key: PeerKey, is_seed: bool) {
        let n = self.lengths.num_pieces();
        self.peers.insert(
            key,
            Peer {
                has: bitfield::empty(n),
                is_seed,
                outstanding: HashSet::new(),
                seed_order: VecDeque::new(),
                first: bitfield::empty(if is_seed { n } else { 0 }),
                rtt: None,
                depth: if is_seed {
                    self.cfg.seed_pipeline
                } else {
                    self.cfg.initial_pipeline.min(self.cfg.pipeline)
                },
            },
        );
    }

    /// Records a peer's bitfield (its length must already be checked).
    /// Returns whether the peer has a piece we lack.
    pub fn set_bitfield(&mut self, key: PeerKey, bf: Bitfield) -> bool {
        let Some(peer) = self.peers.get_mut(&key) else {
            return false;
        };
        let old = std::mem::replace(&mut peer.has, bf.clone());
        if peer.is_seed {
            for i in bf.iter_ones().filter(|i| !old[*i]) {
                peer.seed_order.push_back(i as u32);
                if self.avail.get(i) == Some(&0) {
                    peer.first.set(i, true);
                }
            }
            return self.is_interesting(key);
        }
        for i in bf.iter_ones() {
            if !old[i] {
                self.bump(i as u32, true);
            }
        }
        for i in old.iter_ones() {
            if !bf[i] {
                self.bump(i as u32, false);
            }
        }
        self.is_interesting(key)
    }

    /// Records a HAVE. Returns whether we lack that piece.
    pub fn peer_have(&mut self, key: PeerKey, piece: PieceIndex) -> bool {
        let i = piece.0 as usize;
        let Some(peer) = self.peers.get_mut(&key) else {
            return false;
        };
        if i >= peer.has.len() {
            return false;
        }
        if !peer.has[i] {
            peer.has.set(i, true);
            if peer.is_seed {
                peer.seed_order.push_back(piece.0);
                if self.avail[i] == 0 {
                    peer.first.set(i, true);
                }
            } else {
                self.bump(piece.0, true);
            }
        }
        !self.have[i]
    }

    /// Whether `key` has any piece we lack.
    pub fn is_interesting(&self, key: PeerKey) -> bool {
        self.peers
            .get(&key)
            .is_some_and(|p| p.has.iter_ones().any(|i| !self.have[i]))
    }

    /// Whether `key` has every piece.
    pub fn peer_has_all(&self, key: PeerKey) -> bool {
        self.peers.get(&key).is_some_and(|p| p.has.all())
    }

    /// Forgets a peer: its requests are released and its pieces no longer
    /// count towards availability.
    pub fn remove_peer(&mut self, key: PeerKey) {
        self.release_requests(key);
        let Some(peer) = self.peers.remove(&key) else {
            return;
        };
        if !peer.is_seed {
            for i in peer.has.iter_ones() {
                self.bump(i as u32, false);
            }
        }
        for a in self.active.values_mut() {
            if a.owner == Some(key) {
                a.owner = None;
            }
        }
    }

    /// Drops every request outstanding at `key` (it choked us, or went
    /// away), so other peers may take those blocks.
    pub fn release_requests(&mut self, key: PeerKey) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        let blocks: Vec<BlockInfo> = peer.outstanding.drain().collect();
        if !peer.is_seed {
            self.non_seed_outstanding = self.non_seed_outstanding.saturating_sub(blocks.len());
        }
        for b in blocks {
            self.unmark(key, b);
        }
    }

    /// Removes `key` from the requesters of block `b`.
    fn unmark(&mut self, key: PeerKey, b: BlockInfo) {
        let Some(n) = self.lengths.block_number(b.begin) else {
            return;
        };
        let Some(a) = self.active.get_mut(&b.piece.0) else {
            return;
        };
        if let Some(state) = a.blocks.get_mut(n as usize) {
            if let BlockState::Requested { by, .. } = state {
                by.retain(|k| *k != key);
                if by.is_empty() {
                    *state = BlockState::Missing;
                }
            }
        }
    }

    /// Adjusts the availability of `piece`, keeping the queue ordered.
    fn bump(&mut self, piece: u32, up: bool) {
        let i = piece as usize;
        let old = self.avail[i];
        let new = if up { old + 1 } else { old.saturating_sub(1) };
        if self.queue.remove(&(old, self.tiebreak[i], piece)) {
            self.queue.insert((new, self.tiebreak[i], piece));
        }
        self.avail[i] = new;
    }

    /// Chooses up to the peer's free pipeline slots of blocks to request
    /// from `key`, and records them as requested.
    pub fn next_requests(&mut self, key: PeerKey, now: Instant) -> Vec<BlockInfo> {
        let Some(peer) = self.peers.get(&key) else {
            return Vec::new();
        };
        let mut free = peer.depth.saturating_sub(peer.outstanding.len());
        if free == 0 {
            return Vec::new();
        }
        let is_seed = peer.is_seed;
        let idle = is_seed && self.idle();
        let mut out = Vec::new();

        // 1. Pieces this peer claimed, then 2. orphaned partial pieces.
        let partial: Vec<u32> = self
            .active
            .iter()
            .filter(|(i, a)| {
                a.owner == Some(key) || (a.owner.is_none() && self.may_ask(peer, idle, **i))
            })
            .map(|(i, _)| *i)
            .collect();
        for i in partial {
            if free == 0 {
                break;
            }
            if let Some(a) = self.active.get_mut(&i) {
                a.owner = Some(key);
            }
            self.take_missing(key, i, &mut free, now, &mut out);
        }

        // 3. New pieces, rarest first.
        let mut started = if is_seed { self.pieces_at(key) } else { 0 };
        while free > 0 && self.active.len() < self.cfg.max_active_pieces {
            if is_seed {
                if started >= self.cfg.seed_pieces {
                    break;
                }
                started += 1;
            }
            let Some(piece) = self.first_startable(key, is_seed, idle) else {
                break;
            };
            self.queue.remove(&(
                self.avail[piece as usize],
                self.tiebreak[piece as usize],
                piece,
            ));
            let blocks = (0..self.lengths.blocks_in_piece(PieceIndex(piece)))
                .map(|_| BlockState::Missing)
                .collect();
            self.active.insert(
                piece,
                Active {
                    blocks,
                    owner: Some(key),
                    received: 0,
                },
            );
            self.take_missing(key, piece, &mut free, now, &mut out);
        }
        if free == 0 {
            return out;
        }

        self.help_others(key, is_seed, idle, &mut free, now, &mut out);
        out
    }

    /// Whether the peers leave us nothing to do: no request outstanding at
    /// any of them and none has a piece we lack. Only then may a seed be
    /// asked for pieces that peers have (they may be stuck); a moment with
    /// nothing outstanding while peers still have pieces for us is not
    /// idleness, and asking the seed then would duplicate its uploads.
    fn idle(&self) -> bool {
        self.non_seed_outstanding == 0
            && !self
                .peers
                .values()
                .any(|p| !p.is_seed && p.has.iter_ones().any(|i| !self.have[i]))
    }

    /// Distinct pieces with a request outstanding at `key`.
    fn pieces_at(&self, key: PeerKey) -> usize {
        let Some(p) = self.peers.get(&key) else {
            return 0;
        };
        let mut pieces: Vec<u32> = p.outstanding.iter().map(|b| b.piece.0).collect();
        pieces.sort_unstable();
        pieces.dedup();
        pieces.len()
    }

    /// Whether `peer` may be asked for `piece`. A peer: what it announced.
    /// A seed: what it announced that no connected peer has (peers spread
    /// the rest), what it offered first, before any peer announced it (the
    /// seed gives a first copy to one agent: when a peer announces that
    /// piece after all, it is one the seed took back from a slow host, and
    /// the slow host would hold everyone up), and, since it holds every
    /// piece, anything when the agent is idle.
    fn may_ask(&self, peer: &Peer, idle: bool, piece: u32) -> bool {
        let i = piece as usize;
        let announced = peer.has.get(i).is_some_and(|b| *b);
        if !peer.is_seed {
            return announced;
        }
        idle || (announced
            && (self.avail.get(i) == Some(&0) || peer.first.get(i).is_some_and(|b| *b)))
    }

    /// The first queued piece `key` has and may be asked for: from a seed,
    /// its offers in the order it made them, then (when idle) anything in
    /// queue order; from a peer, rarest first.
    fn first_startable(&mut self, key: PeerKey, is_seed: bool, idle: bool) -> Option<u32> {
        if is_seed {
            let have = &self.have;
            let peer = self.peers.get_mut(&key)?;
            while peer.seed_order.front().is_some_and(|p| have[*p as usize]) {
                peer.seed_order.pop_front();
            }
            let peer = self.peers.get(&key)?;
            let queued = |p: u32| {
                self.queue
                    .contains(&(self.avail[p as usize], self.tiebreak[p as usize], p))
            };
            return peer
                .seed_order
                .iter()
                .copied()
                .find(|p| queued(*p) && self.may_ask(peer, idle, *p))
                .or_else(|| {
                    idle.then(|| {
                        self.queue
                            .iter()
                            .find(|e| self.may_ask(peer, idle, e.2))
                            .map(|e| e.2)
                    })
                    .flatten()
                });
        }
        let peer = self.peers.get(&key)?;
        self.queue
            .range((1, 0, 0)..)
            .find(|e| peer.has[e.2 as usize])
            .map(|e| e.2)
    }

    fn take_missing(
        &mut self,
        key: PeerKey,
        piece: u32,
        free: &mut usize,
        now: Instant,
        out: &mut Vec<BlockInfo>,
    ) {
        let Some(a) = self.active.get_mut(&piece) else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        for (n, state) in a.blocks.iter_mut().enumerate() {
            if *free == 0 {
                break;
            }
            if matches!(state, BlockState::Missing) {
                let Some(b) = self.lengths.block(PieceIndex(piece), n as u32) else {
                    continue;
                };
                *state = BlockState::Requested {
                    by: vec![key],
                    at: now,
                };
                peer.outstanding.insert(b);
                if !peer.is_seed {
                    self.non_seed_outstanding += 1;
                }
                out.push(b);
                *free -= 1;
            }
        }
    }

    /// Records a block that arrived from `key`.
    pub fn on_block(&mut self, key: PeerKey, b: BlockInfo) -> BlockOutcome {
        let Some(peer) = self.peers.get_mut(&key) else {
            return BlockOutcome::Unrequested;
        };
        if !peer.outstanding.remove(&b) {
            return BlockOutcome::Unrequested;
        }
        if !peer.is_seed {
            self.non_seed_outstanding = self.non_seed_outstanding.saturating_sub(1);
        }
        let Some(n) = self.lengths.block_number(b.begin) else {
            return BlockOutcome::Unrequested;
        };
        let Some(a) = self.active.get_mut(&b.piece.0) else {
            return BlockOutcome::Duplicate;
        };
        let Some(state) = a.blocks.get_mut(n as usize) else {
            return BlockOutcome::Unrequested;
        };
        let others = match state {
            BlockState::Received => return BlockOutcome::Duplicate,
            BlockState::Missing => Vec::new(),
            BlockState::Requested { by, .. } => by.iter().copied().filter(|k| *k != key).collect(),
        };
        *state = BlockState::Received;
        a.received += 1;
        let complete = a.received == a.blocks.len();
        for other in &others {
            if let Some(p) = self.peers.get_mut(other) {
                if p.outstanding.remove(&b) && !p.is_seed {
                    self.non_seed_outstanding = self.non_seed_outstanding.saturating_sub(1);
                }
            }
        }
        BlockOutcome::Accepted {
            complete,
            cancel: others,
        }
    }

    /// A completed piece passed its hash check and is stored.
    pub fn piece_verified(&mut self, piece: PieceIndex) {
        let i = piece.0 as usize;
        if i >= self.have.len() || self.have[i] {
            return;
        }
        self.active.remove(&piece.0);
        self.queue
            .remove(&(self.avail[i], self.tiebreak[i], piece.0));
        self.have.set(i, true);
        self.have_count += 1;
    }

    /// A completed piece failed its hash check: download it again.
    pub fn piece_failed(&mut self, piece: PieceIndex) {
        let i = piece.0 as usize;
        if self.active.remove(&piece.0).is_some() && !self.have[i] {
            self.queue
                .insert((self.avail[i], self.tiebreak[i], piece.0));
        }
    }

    /// Marks a piece as already verified (resume from disk).
    pub fn mark_have(&mut self, piece: PieceIndex) {
        self.piece_verified(piece);
    }
}

mod endgame;

#[cfg(test)]
#[path = "piece_picker_tests.rs"]
mod tests;
