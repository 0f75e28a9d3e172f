//! Super-seeding: the seed decides which agent gets which piece from it, so
//! that it uploads each piece about once (architecture §5).
//!
//! An agent only requests from a peer what that peer announced. The seed
//! therefore does not announce everything: it *offers* each connection a few
//! pieces (with HAVE) that it has not offered anyone else, and offers the next
//! one whenever the connection takes (requests) or otherwise gets one of its
//! offers. The agents then spread those pieces among themselves. A piece whose
//! taker disconnects before announcing it goes back to the front of the pool.
//!
//! Once the pool holds nothing new for a connection, the seed becomes that
//! connection's fallback: it announces the pieces the connection lacks that
//! will not reach it otherwise, and the agent's seed policy (only what no
//! connected peer has or had when the seed announced it, or anything when
//! idle) applies. It holds back the pieces another
//! connection was offered or took and has not announced yet, and pieces
//! other agents announced less than [`HOLD`] ago, because asking the seed
//! for those is exactly the duplicate upload super-seeding avoids (an
//! agent's HAVE to its peers can trail the seed's by a queue's worth of
//! data). A piece offered or taken more than [`HOLD`] ago holds nothing
//! back any more: its holder is slow to receive it (a slow link shared with
//! its peers' traffic) or stuck, and the others must not wait for it. A
//! holder that is gone gives its pieces back.
//!
//! A connection much slower than the others to announce what it took from
//! the seed *lags* ([`SLOW_FACTOR`]; a piece taken and not yet announced
//! counts as delivered no sooner than now, so a connection is judged before
//! its first delivery too). It gives back the first copies it holds, is
//! not re-offered pieces nobody has, and while the seed's uplink is
//! saturated gets no new offers, until the verdict is [`SLOW_RETRY`] old:
//! then it is offered pieces again and its next delivery judges it anew.
//!
//! [`Schedule`] is a plain struct driven by the seed's sessions through a
//! [`SeedPeer`] handle; the pieces to announce go out through the session's
//! HAVE feed.

use std::collections::{btree_map, BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use pollen_protocol::bitfield::{self, Bitfield};
use pollen_protocol::{Message, PieceIndex};
use rand::seq::SliceRandom;
use rand::Rng;
use tokio::sync::watch;

use crate::peer_connection::HaveLog;
use crate::upload::Uploader;

/// Offered pieces one connection may hold without having requested them.
/// Enough to keep a connection busy while the next HAVE travels behind the
/// data already queued in its socket.
pub(crate) const OFFER_WINDOW: usize = 3;
/// How long a silent connection still holds back the pieces it was offered
/// or took from the connections that get everything else.
pub(crate) const HOLD: Duration = Duration::from_millis(1500);
/// Most often the withheld pieces are re-examined.
pub(crate) const RELEASE_INTERVAL: Duration = Duration::from_millis(250);
/// While the seed's uplink is saturated, a piece stays held this long: a
/// copy the seed sends twice then delays a first copy one for one.
pub(crate) const SATURATED_HOLD: Duration = Duration::from_secs(6);
/// The upload rate is measured over this window.
const GAUGE_WINDOW: Duration = Duration::from_secs(1);
/// Rates measured this soon after the first sample do not count towards
/// the peak: socket buffers fill faster than any link at the start.
const GAUGE_WARMUP: Duration = Duration::from_secs(1);
/// The uplink counts as saturated at this fraction of the peak rate.
const SATURATED_FRACTION: f64 = 0.6;
/// While the uplink is saturated, a connection whose pieces from the seed
/// take this many times the median connection's to be announced gets no new
/// offers: a host behind a slow link would hold each first copy for seconds
/// and pass it on slowly, so the seed's uplink is better spent on the
/// others, from whom the slow host gets the pieces anyway.
const SLOW_FACTOR: f64 = 4.0;
/// ... and at least this long (below it, nobody holds anything back).
const SLOW_MIN: Duration = Duration::from_millis(400);
/// Connections with a measured delivery time needed to judge any as slow.
const SLOW_QUORUM: usize = 3;
/// A connection's delivery time is forgotten once its last sample is this
/// old. A connection judged slow gets no offers, so nothing would update
/// the verdict: a host whose link recovered would stay off first copies for
/// as long as the uplink is saturated. Now it is offered pieces again, and
/// if it is still slow, its next delivery says so and it gives the new
/// offers back.
const SLOW_RETRY: Duration = Duration::from_secs(3);
/// Weight of a new sample in a connection's delivery time average.
const DELIVERY_WEIGHT: f64 = 0.3;

/// Whether the seed's uplink is the bottleneck: its upload rate over the
/// last [`GAUGE_WINDOW`] against the highest such rate seen for the task.
/// The link's capacity is unknown (a rate limit, a NIC, a shaped path), so
/// the peak stands in for it.
#[derive(Debug, Default)]
struct LinkGauge {
    first: Option<Instant>,
    /// (time, bytes sent so far), oldest first, spanning about one window.
    samples: VecDeque<(Instant, u64)>,
    current: f64,
    peak: f64,
}

impl LinkGauge {
    fn sample(&mut self, now: Instant, sent: u64) {
        let first = *self.first.get_or_insert(now);
        if self
            .samples
            .back()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) < RELEASE_INTERVAL)
        {
            return;
        }
        self.samples.push_back((now, sent));
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= GAUGE_WINDOW)
        {
            self.samples.pop_front();
        }
        let Some(&(t0, b0)) = self.samples.front() else {
            return;
        };
        let dt = now.saturating_duration_since(t0);
        if dt < GAUGE_WINDOW / 2 {
            return;
        }
        self.current = sent.saturating_sub(b0) as f64 / dt.as_secs_f64();
        if now.saturating_duration_since(first) >= GAUGE_WARMUP {
            self.peak = self.peak.max(self.current);
        }
    }

    fn saturated(&self) -> bool {
        self.peak > 0.0 && self.current >= SATURATED_FRACTION * self.peak
    }

    /// How long pieces stay held: [`HOLD`], or [`SATURATED_HOLD`] while
    /// the uplink is saturated.
    fn hold(&self) -> Duration {
        if self.saturated() {
            SATURATED_HOLD
        } else {
            HOLD
        }
    }
}

type ConnKey = u64;

#[derive(Debug)]
struct Conn {
    /// What the agent announced.
    has: Bitfield,
    /// What we announced to it.
    offered: Bitfield,
    /// Offered and neither requested nor announced by the agent.
    open: BTreeSet<u32>,
    /// Requested from us, not yet announced by the agent, with the time of
    /// its first request.
    taken: BTreeMap<u32, Instant>,
    /// Average time from its first request of a piece to announcing it.
    delivery: Option<Duration>,
    /// When `delivery` last got a sample.
    delivered_at: Option<Instant>,
    /// The pool holds nothing new for it: it gets everything not held.
    fallback: bool,
    /// Pieces announced to it, in order: the session's HAVE feed.
    log: Vec<PieceIndex>,
    log_tx: watch::Sender<usize>,
}

impl Conn {
    fn lacks(&self, i: usize) -> bool {
        !self.has[i] && !self.offered[i]
    }

    fn announce(&mut self, i: u32) {
        self.offered.set(i as usize, true);
        self.log.push(PieceIndex(i));
    }
}

/// Which pieces the seed has offered to whom, for one task.
#[derive(Debug)]
pub(crate) struct Schedule {
    num_pieces: u32,
    /// Pieces not offered yet (or given back): the front is offered next.
    pool: VecDeque<u32>,
    /// Pieces some connection was offered or took and has not announced:
    /// who, and since when.
    held: HashMap<u32, (ConnKey, Instant)>,
    /// Connections that announced each piece.
    holders: Vec<u32>,
    /// When each piece was first announced by a connection.
    spread_at: Vec<Option<Instant>>,
    conns: HashMap<ConnKey, Conn>,
    next_key: ConnKey,
    window: usize,
    last_release: Option<Instant>,
    gauge: LinkGauge,
    /// The last [`Schedule::median_delivery`] and when it was computed.
    median: Option<(Instant, Option<Duration>)>,
}

impl Schedule {
    /// A schedule offering pieces in a random order.
    pub(crate) fn new(num_pieces: u32, window: usize, rng: &mut impl Rng) -> Self {
        let mut order: Vec<u32> = (0..num_pieces).collect();
        order.shuffle(rng);
        Self {
            num_pieces,
            pool: order.into(),
            held: HashMap::new(),
            holders: vec![0; num_pieces as usize],
            spread_at: vec![None; num_pieces as usize],
            conns: HashMap::new(),
            next_key: 1,
            window: window.max(1),
            last_release: None,
            gauge: LinkGauge::default(),
            median: None,
        }
    }

    /// Registers a connection and makes its first offers.
    fn connect(&mut self, now: Instant) -> (ConnKey, watch::Receiver<usize>) {
        let key = self.next_key;
        self.next_key += 1;
        let (log_tx, rx) = watch::channel(0);
        self.conns.insert(
            key,
            Conn {
                has: bitfield::empty(self.num_pieces),
                offered: bitfield::empty(self.num_pieces),
                open: BTreeSet::new(),
                taken: BTreeMap::new(),
                delivery: None,
                delivered_at: None,
                fallback: false,
                log: Vec::new(),
                log_tx,
            },
        );
        self.top_up(key, now);
        (key, rx)
    }

    /// Forgets a connection. Pieces it was offered or took but never
    /// announced go back to the front of the pool, so someone else gets them.
    fn disconnect(&mut self, key: ConnKey, now: Instant) {
        let Some(c) = self.conns.remove(&key) else {
            return;
        };
        for i in c.has.iter_ones() {
            if let Some(n) = self.holders.get_mut(i) {
                *n = n.saturating_sub(1);
            }
        }
        for i in c.taken.keys().chain(c.open.iter()).rev() {
            self.pool.push_front(*i);
            if self.held.get(i).is_some_and(|h| h.0 == key) {
                self.held.remove(i);
            }
        }
        self.release(now, true);
    }

    /// The agent's BITFIELD (length already checked).
    fn on_bitfield(&mut self, key: ConnKey, bf: &Bitfield, now: Instant) {
        for i in bf.iter_ones() {
            self.got(key, i as u32, now);
        }
        self.top_up(key, now);
    }

    /// The agent announced a piece (from us or from a peer).
    fn on_have(&mut self, key: ConnKey, piece: PieceIndex, now: Instant) {
        if piece.0 < self.num_pieces {
            self.got(key, piece.0, now);
            self.top_up(key, now);
        }
    }

    fn got(&mut self, key: ConnKey, i: u32, now: Instant) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let idx = i as usize;
        if c.has[idx] {
            return;
        }
        c.has.set(idx, true);
        self.holders[idx] += 1;
        self.spread_at[idx].get_or_insert(now);
        c.open.remove(&i);
        if let Some(asked) = c.taken.remove(&i) {
            let took = now.saturating_duration_since(asked);
            c.delivery = Some(c.delivery.map_or(took, |d| {
                d.mul_f64(1.0 - DELIVERY_WEIGHT) + took.mul_f64(DELIVERY_WEIGHT)
            }));
            c.delivered_at = Some(now);
        }
        if self.held.get(&i).is_some_and(|h| h.0 == key) {
            self.held.remove(&i);
        }
    }

    /// A slow connection's first copies go to the front of the pool, for
    /// others: the pieces offered and not requested, and those it requested
    /// and still holds (at most one extra copy each, sent to a faster host).
    fn give_back(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let mine: Vec<u32> = c
            .open
            .iter()
            .chain(c.taken.keys())
            .copied()
            .filter(|i| self.held.get(i).is_some_and(|h| h.0 == key))
            .collect();
        c.open.clear();
        if !mine.is_empty() {
            tracing::debug!(conn = key, delivery = ?c.delivery, pieces = mine.len(), "slow connection gives its first copies back");
        }
        for i in mine.into_iter().rev() {
            self.held.remove(&i);
            self.pool.push_front(i);
        }
    }

    /// Whether connection `key` is too slow to get new offers now: the
    /// uplink is saturated and the connection [`Schedule::lags`].
    fn is_slow(&mut self, key: ConnKey, now: Instant) -> bool {
        self.gauge.saturated() && self.lags(key, now)
    }

    /// Whether connection `key` is far slower than the median connection
    /// to announce what it took: its delivery time, or the age of its
    /// oldest piece taken and not announced when that is longer, is
    /// [`SLOW_FACTOR`] times the median and at least [`SLOW_MIN`]. A
    /// delivery time last measured [`SLOW_RETRY`] ago or more is forgotten,
    /// so the next delivery alone judges the connection.
    fn lags(&mut self, key: ConnKey, now: Instant) -> bool {
        let Some(c) = self.conns.get_mut(&key) else {
            return false;
        };
        if c.delivered_at
            .is_some_and(|at| now.saturating_duration_since(at) >= SLOW_RETRY)
        {
            c.delivery = None;
            c.delivered_at = None;
        }
        // A piece it took and has not announced yet has taken at least its
        // age: a host so slow that it has announced nothing is judged too,
        // instead of holding its first copies for as long as it likes.
        let pending = c
            .taken
            .values()
            .min()
            .map(|at| now.saturating_duration_since(*at));
        let Some(mine) = c.delivery.max(pending) else {
            return false;
        };
        self.median_delivery(now).is_some_and(|median| {
            mine >= SLOW_MIN && mine.as_secs_f64() > SLOW_FACTOR * median.as_secs_f64()
        })
    }

    /// The median connection's delivery time, recomputed at most every
    /// [`RELEASE_INTERVAL`] (every announcement asks, from every agent);
    /// `None` below [`SLOW_QUORUM`] measured connections.
    fn median_delivery(&mut self, now: Instant) -> Option<Duration> {
        let fresh = self
            .median
            .is_some_and(|(at, _)| now.saturating_duration_since(at) < RELEASE_INTERVAL);
        if !fresh {
            let mut all: Vec<Duration> = self.conns.values().filter_map(|c| c.delivery).collect();
            let median = (all.len() >= SLOW_QUORUM).then(|| {
                let mid = all.len() / 2;
                *all.select_nth_unstable(mid).1
            });
            self.median = Some((now, median));
        }
        self.median.and_then(|(_, m)| m)
    }

    /// The agent requested a block of `piece` from us.
    fn on_request(&mut self, key: ConnKey, piece: PieceIndex, now: Instant) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let i = piece.0;
        if c.has.get(i as usize).is_some_and(|b| *b) {
            return;
        }
        c.open.remove(&i);
        if let btree_map::Entry::Vacant(e) = c.taken.entry(i) {
            e.insert(now);
            self.held.entry(i).or_insert((key, now));
        }
        self.top_up(key, now);
    }

    /// Offers new pieces until the connection holds `window` open offers.
    /// When the pool holds nothing new for it, it becomes a fallback
    /// connection.
    fn top_up(&mut self, key: ConnKey, now: Instant) {
        let slow = self.is_slow(key, now);
        if slow {
            self.give_back(key);
        }
        let window = if slow { 0 } else { self.window };
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if !c.fallback {
            let before = c.log.len();
            // Pieces it already has stay in the pool, in order, for others.
            let mut skipped = Vec::new();
            while c.open.len() < window {
                let Some(i) = self.pool.pop_front() else {
                    break;
                };
                if !c.lacks(i as usize) {
                    skipped.push(i);
                    continue;
                }
                c.announce(i);
                c.open.insert(i);
                self.held.insert(i, (key, now));
            }
            for i in skipped.into_iter().rev() {
                self.pool.push_front(i);
            }
            if c.open.len() < window {
                tracing::debug!(
                    conn = key,
                    open = c.open.len(),
                    taken = c.taken.len(),
                    "the pool has nothing new for the connection: fallback"
                );
                c.fallback = true;
                self.reveal(key, now);
            } else if c.log.len() != before {
                let n = c.log.len();
                c.log_tx.send_replace(n);
            }
        }
        self.release(now, false);
    }

    /// Announces to fallback connection `key` every piece it lacks that no
    /// other connection is about to spread.
    fn reveal(&mut self, key: ConnKey, now: Instant) {
        let lags = self.lags(key, now);
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let before = c.log.len();
        let hold = self.gauge.hold();
        for i in 0..self.num_pieces {
            let idx = i as usize;
            if !c.lacks(idx) || self.held.get(&i).is_some_and(|h| h.0 != key) {
                continue;
            }
            // A piece others announced should reach it from them; the seed
            // steps in only if that has not happened within HOLD.
            let stuck =
                self.spread_at[idx].is_none_or(|t| now.saturating_duration_since(t) >= hold);
            if self.holders[idx] == 0 {
                // Nobody has it: re-offer it to this connection alone, so
                // that a piece its first taker was slow with is sent once
                // more, not once to every agent that lacks it. Not to a
                // connection that lags: the others would wait for it.
                if !lags {
                    c.announce(i);
                    self.held.insert(i, (key, now));
                }
            } else if stuck {
                c.announce(i);
            }
        }
        if c.log.len() != before {
            let n = c.log.len();
            c.log_tx.send_replace(n);
        }
    }

    /// Re-examines the withheld pieces for every fallback connection, at
    /// most every [`RELEASE_INTERVAL`] unless `force`d.
    fn release(&mut self, now: Instant, force: bool) {
        let due = self
            .last_release
            .is_none_or(|t| now.saturating_duration_since(t) >= RELEASE_INTERVAL);
        if !(force || due) {
            return;
        }
        self.last_release = Some(now);
        // A connection that has gone quiet still loses its first copies
        // once it is judged slow; with the uplink saturated or not, since
        // whoever it keeps a first copy from waits for it.
        let pending: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.taken.is_empty())
            .map(|(k, _)| *k)
            .collect();
        for key in pending {
            if self.lags(key, now) {
                self.give_back(key);
            }
        }
        let hold = self.gauge.hold();
        self.held
            .retain(|_, (_, since)| now.saturating_duration_since(*since) < hold);
        // The least busy connections choose first.
        let mut fallback: Vec<(usize, ConnKey)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.fallback)
            .map(|(k, c)| (c.open.len() + c.taken.len(), *k))
            .collect();
        fallback.sort_unstable();
        for (_, key) in fallback {
            self.reveal(key, now);
        }
    }

    /// Records the seed's upload total for this task (bytes so far).
    fn observe_sent(&mut self, now: Instant, sent: u64) {
        self.gauge.sample(now, sent);
    }

    /// Time passes: releases pieces whose holder is slow.
    fn tick(&mut self, now: Instant) {
        self.release(now, false);
    }

    fn log_since(&self, key: ConnKey, pos: usize) -> (Vec<PieceIndex>, usize) {
        self.conns.get(&key).map_or((Vec::new(), pos), |c| {
            (
                c.log.get(pos..).map(<[_]>::to_vec).unwrap_or_default(),
                c.log.len(),
            )
        })
    }
}

/// A task's schedule, shared by the seed's sessions for that task, with the
/// task's uploader, whose byte count tells whether the uplink is saturated.
#[derive(Debug, Clone)]
pub(crate) struct SharedSchedule {
    schedule: Arc<Mutex<Schedule>>,
    uploader: Arc<Uploader>,
}

impl SharedSchedule {
    pub(crate) fn new(num_pieces: u32, uploader: Arc<Uploader>) -> Self {
        Self {
            schedule: Arc::new(Mutex::new(Schedule::new(
                num_pieces,
                OFFER_WINDOW,
                &mut rand::thread_rng(),
            ))),
            uploader,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Schedule> {
        self.schedule.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the schedule after recording the current upload total.
    fn update<R>(&self, f: impl FnOnce(&mut Schedule, Instant) -> R) -> R {
        let now = Instant::now();
        let sent = self.uploader.uploaded();
        let mut s = self.lock();
        s.observe_sent(now, sent);
        f(&mut s, now)
    }

    /// Registers a new connection; its first offers are already in its feed.
    pub(crate) fn connect(&self) -> (SeedPeer, watch::Receiver<usize>) {
        let (key, rx) = self.update(|s, now| s.connect(now));
        (
            SeedPeer {
                schedule: self.clone(),
                key,
            },
            rx,
        )
    }
}

/// One seed connection's view of the schedule; disconnects on drop.
#[derive(Debug)]
pub(crate) struct SeedPeer {
    schedule: SharedSchedule,
    key: ConnKey,
}

impl SeedPeer {
    pub(crate) fn on_bitfield(&self, bf: &Bitfield) {
        self.schedule
            .update(|s, now| s.on_bitfield(self.key, bf, now));
    }

    pub(crate) fn on_have(&self, piece: PieceIndex) {
        self.schedule
            .update(|s, now| s.on_have(self.key, piece, now));
    }

    pub(crate) fn on_request(&self, piece: PieceIndex) {
        self.schedule
            .update(|s, now| s.on_request(self.key, piece, now));
    }

    /// Called periodically, so that pieces held by a slow connection are
    /// released even when nothing else happens.
    pub(crate) fn tick(&self) {
        self.schedule.update(|s, now| s.tick(now));
    }
}

impl SeedPeer {
    /// The pieces offered to this connection from position `pos` of its
    /// log on, and the new position.
    pub(crate) fn haves_since(&self, pos: usize) -> (Vec<PieceIndex>, usize) {
        self.schedule.lock().log_since(self.key, pos)
    }
}

impl HaveLog for SeedPeer {
    fn announcements_since(&self, pos: usize) -> (Vec<Message>, usize) {
        let (pieces, pos) = self.haves_since(pos);
        (pieces.into_iter().map(Message::Have).collect(), pos)
    }
}

impl Drop for SeedPeer {
    fn drop(&mut self) {
        self.schedule.update(|s, now| s.disconnect(self.key, now));
    }
}

#[cfg(test)]
#[path = "super_seed_tests.rs"]
mod tests;
