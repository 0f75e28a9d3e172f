//! Progress statistics of a task: per-peer and total rates, sampled about
//! once a second, and the [`ProgressReport`] snapshot the reporter and the
//! management API hand out.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pollen_protocol::api::{PeerStats, ProgressReport};

use super::{Inner, Phase, TaskState};
use crate::piece_picker::PeerKey;

/// Shortest window over which a seed's measured rate resizes its pipeline
/// between the once-a-second samples.
const SEED_RATE_WINDOW: Duration = Duration::from_millis(100);

impl Inner {
    /// Called for each block from the seed `key`: at most every
    /// [`SEED_RATE_WINDOW`], resizes its pipeline from its rate since the
    /// last look. A seed's link can be far faster than any peer's (on
    /// loopback, or a server on a 10 Gbit/s link), and waiting a whole
    /// second at the smallest seed pipeline took a third of a 1 GiB
    /// transfer in the lab (s6). Where the seed's link is shared by many
    /// agents, the rate keeps the pipeline at its minimum, as before.
    pub(super) fn quick_seed_sample(&mut self, key: PeerKey, now: Instant) {
        let Some(p) = self.peers.get_mut(&key).filter(|p| p.is_seed) else {
            return;
        };
        let elapsed = now.duration_since(p.quick.0);
        if elapsed < SEED_RATE_WINDOW {
            return;
        }
        let down = p.counters.down.load(Ordering::Relaxed);
        let rate = (down.saturating_sub(p.quick.1) as f64 / elapsed.as_secs_f64()) as u64;
        p.quick = (now, down);
        self.picker.adapt_pipeline(key, rate);
    }
}

impl TaskState {
    /// Updates the download rates; call about once a second.
    pub(crate) fn sample_rates(&self) {
        let mut g = self.lock();
        let now = Instant::now();
        let secs = now
            .duration_since(g.last_sample)
            .max(Duration::from_millis(100))
            .as_secs_f64();
        g.last_sample = now;
        let done = g.bytes_from_peers + g.bytes_from_seed;
        g.rate_bps = ((done - g.last_done.min(done)) as f64 / secs) as u64;
        g.last_done = done;
        let g = &mut *g;
        for (key, p) in g.peers.iter_mut() {
            let cur = (
                p.counters.down.load(Ordering::Relaxed),
                p.counters.up.load(Ordering::Relaxed),
            );
            p.rate = (
                (cur.0.saturating_sub(p.last.0) as f64 / secs) as u64,
                (cur.1.saturating_sub(p.last.1) as f64 / secs) as u64,
            );
            p.last = cur;
            g.picker.adapt_pipeline(*key, p.rate.0);
        }
    }

    /// A progress snapshot.
    pub(crate) fn snapshot(&self) -> ProgressReport {
        let phase = self.phase();
        let g = self.lock();
        let pieces_done = g.picker.have_count();
        let bytes_done = g.file_done.iter().sum();
        let mut peers: Vec<PeerStats> = g
            .peers
            .iter()
            .map(|(k, p)| PeerStats {
                addr: p.addr.to_string(),
                is_seed: p.is_seed,
                bytes_down: p.counters.down.load(Ordering::Relaxed),
                bytes_up: p.counters.up.load(Ordering::Relaxed),
                rate_down_bps: p.rate.0,
                rate_up_bps: p.rate.1,
                requests_in_flight: g.picker.outstanding(*k) as u32,
            })
            .collect();
        peers.sort_by(|a, b| a.addr.cmp(&b.addr));
        ProgressReport {
            task_id: self.task_id.clone(),
            state: phase.report_state(),
            bytes_done,
            bytes_total: self.lengths.total_length(),
            pieces_done,
            pieces_total: self.lengths.num_pieces(),
            bytes_from_peers: g.bytes_from_peers,
            bytes_from_seed: g.bytes_from_seed,
            bytes_uploaded: self.uploader.uploaded(),
            rate_bps: g.rate_bps,
            pieces_in_flight: g.picker.active_count() as u32,
            file_bytes_done: g.file_done.clone(),
            peers,
            shunned_peers: g.shunned.iter().map(ToString::to_string).collect(),
            error: match phase {
                Phase::Failed(e) => Some(e),
                _ => None,
            },
        }
    }
}
