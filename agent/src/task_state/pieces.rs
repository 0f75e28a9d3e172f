//! The piece flow of a task: a block arrives, is buffered with the other
//! blocks of its piece, and when the piece is whole it is hashed off the
//! runtime, written to staging, and announced with HAVE. A piece that fails
//! its hash goes back to the picker. If one peer sent it, that peer is
//! shunned. If several did, the digest of each block is kept with its
//! sender; when the piece later verifies, every peer whose block differs
//! from the good copy is shunned, and no honest peer is blamed.
//!
//! A piece arriving from the seed is also announced with RELAY at its first
//! block, and its blocks are served from the buffer as they arrive
//! ([`TaskState::servable`]); the piece is still verified here before it is
//! written or announced with HAVE, and so is every copy a peer assembles.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pollen_protocol::lengths::BlockInfo;
use pollen_protocol::{Lengths, Message, PieceIndex};

use sha1::{Digest, Sha1};

use super::{spare_buffers, BlockFrom, Phase, PieceBuf, TaskState, MAX_SUSPECT_PIECES};
use crate::error::{Error, Result};
use crate::piece_picker::{BlockOutcome, PeerKey};
use crate::store::piece_matches;

impl TaskState {
    /// Handles a PIECE from `key`: buffers the block and, when it completes
    /// its piece, hands the piece to a detached job that verifies, stores
    /// and announces it (or requeues it and shuns its sender, or keeps the
    /// block digests of several senders to convict the liar later). The
    /// caller never waits for it.
    ///
    /// # Errors
    /// [`Error::Violation`] for a block outside the geometry.
    pub(crate) async fn on_piece(
        self: &Arc<Self>,
        key: PeerKey,
        index: PieceIndex,
        begin: u32,
        data: Bytes,
    ) -> Result<()> {
        let len = u32::try_from(data.len()).map_err(|_| Error::Violation {
            what: "oversized block",
        })?;
        if !self.lengths.valid_request(index, begin, len) {
            return Err(Error::Violation {
                what: "PIECE outside the piece",
            });
        }
        let block = BlockInfo {
            piece: index,
            begin,
            length: len,
        };
        let piece_len = self.lengths.piece_len(index).unwrap_or(0) as usize;
        let (complete, progressed) = {
            let mut g = self.lock();
            // Look the peer up before the picker records the block: a block
            // the picker accepted must reach the buffer, or its piece would
            // stay active with nothing left to request.
            let Some((ip, is_seed)) = g.peers.get(&key).map(|p| (p.ip, p.is_seed)) else {
                return Ok(());
            };
            let (complete, cancel) = match g.picker.on_block(key, block) {
                BlockOutcome::Accepted { complete, cancel } => (complete, cancel),
                BlockOutcome::Duplicate | BlockOutcome::Unrequested => return Ok(()),
            };
            if let Some(p) = g.peers.get(&key) {
                p.counters.down.fetch_add(u64::from(len), Ordering::Relaxed);
            }
            if is_seed {
                g.bytes_from_seed += u64::from(len);
                g.quick_seed_sample(key, Instant::now());
            } else {
                g.bytes_from_peers += u64::from(len);
            }
            for other in cancel {
                if let Some(p) = g.peers.get(&other) {
                    let _ = p.ctl.try_send(Message::Cancel {
                        index,
                        begin,
                        length: len,
                    });
                }
            }
            let blocks = self.lengths.blocks_in_piece(index) as usize;
            let inner = &mut *g;
            let spare = &mut inner.spare;
            let buf = inner.buffers.entry(index.0).or_insert_with(|| PieceBuf {
                // A stored piece's buffer needs no zeroing: the piece is
                // complete only once every block has overwritten its range.
                data: spare
                    .pop_if(|b| b.len() == piece_len)
                    .unwrap_or_else(|| vec![0; piece_len]),
                from: vec![None; blocks],
            });
            let start = begin as usize;
            buf.data[start..start + data.len()].copy_from_slice(&data);
            if let Some(slot) = self
                .lengths
                .block_number(begin)
                .and_then(|n| buf.from.get_mut(n as usize))
            {
                *slot = Some(if is_seed {
                    BlockFrom::Seed
                } else {
                    BlockFrom::Peer(ip)
                });
            }
            // A piece arriving from the seed is announced to the peers at its
            // first block, so that they can ask for its blocks while the rest
            // is still on its way ([`Self::servable`]).
            let relayed = if g.relaying.contains(&index.0) {
                true
            } else if is_seed && !complete && blocks > 1 {
                g.relaying.insert(index.0);
                g.have_log.push(Message::Relay(index));
                self.have_tx.send_replace(g.have_log.len());
                true
            } else {
                false
            };
            let done = if complete {
                g.buffers.remove(&index.0).map(|b| {
                    let data = Bytes::from(b.data);
                    // Until it is verified, a relayed piece is still served
                    // from memory, but only if the seed sent all of it.
                    if relayed && b.from.iter().all(|f| matches!(f, Some(BlockFrom::Seed))) {
                        g.settling.insert(index.0, data.clone());
                    }
                    let block_from = b.from.iter().map(|f| f.and_then(BlockFrom::peer)).collect();
                    (data, block_from)
                })
            } else {
                None
            };
            (done, relayed && is_seed)
        };
        if progressed {
            self.relay_progress();
        }
        match complete {
            // Its own task: once the buffer has left `buffers`, the piece
            // must be verified or requeued even if this session is dropped.
            // The piece has left `buffers` but is still active in the
            // picker with every block received: from here on it must be
            // verified or requeued whatever happens to this session (it may
            // be shunned or cancelled at any await). So the job owns the
            // buffer from this point and the reader awaits nothing: the
            // verification slot is taken inside the job. Memory stays
            // bounded because a piece counts as active until it is verified.
            Some((data, block_from)) => {
                let me = self.clone();
                let slots = self.verify_slots.clone();
                self.verifying.spawn(async move {
                    let Ok(_permit) = slots.acquire_owned().await else {
                        me.requeue(index);
                        return;
                    };
                    if let Err(e) = me.finish_piece(key, index, data, block_from).await {
                        tracing::debug!(task = %me.task_id, piece = index.0, error = %e, "piece not stored");
                    }
                });
                Ok(())
            }
            None => Ok(()),
        }
    }

    async fn finish_piece(
        &self,
        key: PeerKey,
        index: PieceIndex,
        data: Bytes,
        block_from: Vec<Option<IpAddr>>,
    ) -> Result<()> {
        let started = Instant::now();
        let from_seed = block_from.iter().all(Option::is_none);
        match piece_matches(self.info.clone(), index, data.clone()).await {
            Ok(true) => {}
            Ok(false) => return self.piece_failed(key, index, data, block_from).await,
            Err(e) => {
                // Not the senders' fault; download the piece again.
                self.requeue(index);
                return Err(e);
            }
        }
        let suspects = self.lock().suspects.remove(&index.0);
        if let Some(suspects) = suspects {
            self.convict(index, data.clone(), suspects).await;
        }
        let verified = started.elapsed();
        if let Err(e) = self.store.write_piece(index, data.clone()).await {
            tracing::warn!(task = %self.task_id, piece = index.0, error = %e, "storing a piece failed");
            self.set_phase(Phase::Failed(e.to_string()));
            return Err(Error::Stopped);
        }
        // A request that comes between here and `piece_verified` waits for
        // the wake-up below, then reads the stored piece.
        let settled = self.lock().settling.remove(&index.0);
        drop(settled);
        // Every other holder of the bytes is done with them by now; if one
        // is not (a relayed block still on its way out), the buffer is
        // simply dropped.
        let reusable = data.try_into_mut().ok().map(Vec::from);
        let (done, relayed) = {
            let mut g = self.lock();
            g.picker.piece_verified(index);
            let relayed = g.relaying.remove(&index.0);
            g.have_log.push(Message::Have(index));
            let offset = self.lengths.piece_offset(index);
            for span in self.file_map.spans(
                offset,
                u64::from(self.lengths.piece_len(index).unwrap_or(0)),
            ) {
                if let Some(f) = g.file_done.get_mut(span.file) {
                    *f += span.len;
                }
            }
            self.have_tx.send_replace(g.have_log.len());
            let done = g.picker.is_complete();
            if done {
                // No piece is left to assemble.
                g.spare = Vec::new();
            } else if let Some(b) = reusable {
                if g.spare.len() < spare_buffers(b.len()) {
                    g.spare.push(b);
                }
            }
            (done, relayed)
        };
        if relayed {
            self.relay_progress();
        }
        // The piece trace (bench/piecetrace.py reads it): when each piece became
        // available here, whether only the seed sent it, who sent its blocks,
        // and how long the hash check and the write took.
        tracing::debug!(
            task = %self.task_id,
            piece = index.0,
            from_seed,
            senders = %Senders(&block_from),
            verify_us = micros(verified),
            total_us = micros(started.elapsed()),
            "piece stored"
        );
        if done {
            self.set_phase(Phase::Downloaded);
        }
        Ok(())
    }

    /// Puts an active piece back in the queue without blaming anyone.
    fn requeue(&self, index: PieceIndex) {
        let mut g = self.lock();
        g.picker.piece_failed(index);
        g.settling.remove(&index.0);
        drop(g);
        self.wake_all();
    }

    /// A piece failed its hash check. A single peer sender is shunned at
    /// once; with several, each block's digest is kept to be compared with
    /// the good copy later ([`Self::convict`]).
    async fn piece_failed(
        &self,
        key: PeerKey,
        index: PieceIndex,
        data: Bytes,
        block_from: Vec<Option<IpAddr>>,
    ) -> Result<()> {
        {
            let mut g = self.lock();
            g.picker.piece_failed(index);
            g.settling.remove(&index.0);
        }
        let mut senders: Vec<IpAddr> = block_from.iter().flatten().copied().collect();
        senders.sort_unstable();
        senders.dedup();
        tracing::warn!(task = %self.task_id, piece = index.0, peers = ?senders, "piece failed its hash check");
        let mut shunned = Vec::new();
        match senders.as_slice() {
            [] => {}
            [one] => {
                self.shun(*one);
                shunned.push(*one);
            }
            _ => {
                let digests = block_digests(self.lengths, index, data).await?;
                let entry: Vec<(usize, IpAddr, [u8; 20])> = block_from
                    .iter()
                    .zip(digests)
                    .enumerate()
                    .filter_map(|(n, (ip, d))| ip.map(|ip| (n, ip, d)))
                    .collect();
                let mut g = self.lock();
                if g.suspects.len() < MAX_SUSPECT_PIECES || g.suspects.contains_key(&index.0) {
                    g.suspects.insert(index.0, entry);
                }
            }
        }
        self.wake_all();
        let mine = self.lock().peers.get(&key).map(|p| p.ip);
        if mine.is_some_and(|ip| shunned.contains(&ip)) {
            return Err(Error::HashMismatch { piece: index });
        }
        Ok(())
    }

    /// The good copy of a piece that once failed with several senders:
    /// shuns every peer whose block differed from it.
    async fn convict(
        &self,
        index: PieceIndex,
        good: Bytes,
        suspects: Vec<(usize, IpAddr, [u8; 20])>,
    ) {
        let Ok(digests) = block_digests(self.lengths, index, good).await else {
            return;
        };
        let mut liars: Vec<IpAddr> = suspects
            .iter()
            .filter(|(n, _, sent)| digests.get(*n) != Some(sent))
            .map(|(_, ip, _)| *ip)
            .collect();
        liars.sort_unstable();
        liars.dedup();
        for ip in liars {
            tracing::warn!(task = %self.task_id, piece = index.0, peer = %ip, "peer sent a corrupt block; shunning it");
            self.shun(ip);
        }
    }

    /// Marks pieces found intact in staging (resume).
    pub(crate) fn mark_resumed(&self, pieces: &[PieceIndex]) {
        let mut g = self.lock();
        for &index in pieces {
            g.picker.mark_have(index);
            g.have_log.push(Message::Have(index));
            for span in self.file_map.spans(
                self.lengths.piece_offset(index),
                u64::from(self.lengths.piece_len(index).unwrap_or(0)),
            ) {
                if let Some(f) = g.file_done.get_mut(span.file) {
                    *f += span.len;
                }
            }
        }
        self.have_tx.send_replace(g.have_log.len());
        if g.picker.is_complete() {
            drop(g);
            self.set_phase(Phase::Downloaded);
        }
    }
}

/// SHA-1 of each block of a piece, off the runtime.
async fn block_digests(lengths: Lengths, index: PieceIndex, data: Bytes) -> Result<Vec<[u8; 20]>> {
    Ok(tokio::task::spawn_blocking(move || {
        (0..lengths.blocks_in_piece(index))
            .filter_map(|n| lengths.block(index, n))
            .map(|b| {
                let start = b.begin as usize;
                let end = (start + b.length as usize).min(data.len());
                <[u8; 20]>::from(Sha1::digest(data.get(start..end).unwrap_or_default()))
            })
            .collect()
    })
    .await?)
}

/// A piece's senders for the trace: the distinct peer addresses of its
/// blocks in block order, and `seed` for blocks the seed sent, joined by `+`.
struct Senders<'a>(&'a [Option<IpAddr>]);

impl std::fmt::Display for Senders<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut seen: Vec<Option<IpAddr>> = Vec::new();
        for s in self.0 {
            if !seen.contains(s) {
                seen.push(*s);
            }
        }
        for (n, s) in seen.iter().enumerate() {
            if n > 0 {
                f.write_str("+")?;
            }
            match s {
                Some(ip) => write!(f, "{ip}")?,
                None => f.write_str("seed")?,
            }
        }
        Ok(())
    }
}

/// Whole microseconds, saturating (for logs).
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders_name_each_source_once_in_block_order() {
        let a: IpAddr = [10, 0, 0, 3].into();
        let b: IpAddr = [10, 0, 0, 4].into();
        let blocks = [Some(a), None, Some(a), Some(b), None];
        assert_eq!(Senders(&blocks).to_string(), "10.0.0.3+seed+10.0.0.4");
        assert_eq!(Senders(&[None, None]).to_string(), "seed");
    }
}
