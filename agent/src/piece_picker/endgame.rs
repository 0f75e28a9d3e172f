//! The picker's fallback when a peer has nothing new to start: help with
//! missing blocks of pieces other peers claimed, and, in endgame (every
//! missing piece started), duplicate outstanding requests so a slow peer
//! cannot hold up the last pieces. A seed duplicates only blocks that peers
//! have sat on for [`PickerConfig::seed_grace`](super::PickerConfig), and
//! it does so even when two peers already have the request.

use std::time::Instant;

use pollen_protocol::lengths::BlockInfo;
use pollen_protocol::PieceIndex;

use super::{BlockState, PeerKey, PiecePicker};

impl PiecePicker {
    pub(super) fn help_others(
        &mut self,
        key: PeerKey,
        is_seed: bool,
        idle: bool,
        free: &mut usize,
        now: Instant,
        out: &mut Vec<BlockInfo>,
    ) {
        // Nothing new to start from this peer (none left, or the memory
        //    cap is reached): help with missing blocks of pieces others
        //    claimed, and in endgame duplicate their requests.
        let endgame = self.queue.is_empty();
        let helpable: Vec<u32> = self.active.keys().copied().collect();
        for i in &helpable {
            if *free == 0 {
                break;
            }
            if self
                .peers
                .get(&key)
                .is_some_and(|p| self.may_ask(p, idle, *i))
            {
                self.take_missing(key, *i, free, now, out);
            }
        }
        if endgame {
            for i in &helpable {
                if *free == 0 {
                    break;
                }
                // Stale blocks: whoever announced the piece may duplicate.
                let announced = self
                    .peers
                    .get(&key)
                    .is_some_and(|p| p.has.get(*i as usize).is_some_and(|b| *b));
                if announced {
                    self.take_duplicates(key, *i, is_seed && !idle, free, now, out);
                }
            }
        }
    }

    fn take_duplicates(
        &mut self,
        key: PeerKey,
        piece: u32,
        only_stale: bool,
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
            let BlockState::Requested { by, at } = state else {
                continue;
            };
            if by.contains(&key) || (by.len() >= self.cfg.endgame_dup && !peer.is_seed) {
                continue;
            }
            if only_stale && now.saturating_duration_since(*at) < self.cfg.seed_grace {
                continue;
            }
            let Some(b) = self.lengths.block(PieceIndex(piece), n as u32) else {
                continue;
            };
            by.push(key);
            peer.outstanding.insert(b);
            if !peer.is_seed {
                self.non_seed_outstanding += 1;
            }
            out.push(b);
            *free -= 1;
        }
    }
}
