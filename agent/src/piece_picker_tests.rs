use super::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

const BLOCK: u32 = 16 * 1024;

fn picker(pieces: u32, blocks_per_piece: u32, seed: u64) -> PiecePicker {
    let pl = u64::from(BLOCK * blocks_per_piece).next_power_of_two();
    let l = Lengths::new(u64::from(pieces) * pl, pl, BLOCK).unwrap();
    PiecePicker::new(l, PickerConfig::default(), &mut StdRng::seed_from_u64(seed))
}

fn bf(n: u32, ones: &[u32]) -> Bitfield {
    let mut b = bitfield::empty(n);
    for i in ones {
        b.set(*i as usize, true);
    }
    b
}

fn pieces(reqs: &[BlockInfo]) -> Vec<u32> {
    let mut v: Vec<u32> = reqs.iter().map(|b| b.piece.0).collect();
    v.dedup();
    v
}

#[test]
fn rarest_first() {
    let mut p = picker(4, 1, 1);
    let now = Instant::now();
    for k in 1..=3 {
        p.add_peer(k, false);
    }
    // Piece 2 is held by one peer, 0 and 1 by three, 3 by two.
    p.set_bitfield(1, bf(4, &[0, 1, 2, 3]));
    p.set_bitfield(2, bf(4, &[0, 1, 3]));
    p.set_bitfield(3, bf(4, &[0, 1]));
    let r = pieces(&p.next_requests(1, now));
    assert_eq!(r[..2], [2, 3]);
    let mut rest = r[2..].to_vec();
    rest.sort();
    assert_eq!(rest, [0, 1]);
}

#[test]
fn ties_are_broken_randomly() {
    let firsts: HashSet<u32> = (0..20)
        .map(|seed| {
            let mut p = picker(8, 1, seed);
            p.add_peer(1, false);
            p.set_bitfield(1, bitfield::full(8));
            p.next_requests(1, Instant::now())[0].piece.0
        })
        .collect();
    assert!(firsts.len() > 2, "{firsts:?}");
}

#[test]
fn a_claimed_piece_is_left_to_its_claimer_and_partials_finish_first() {
    let mut p = picker(3, 4, 7);
    p.cfg.pipeline = 2;
    let now = Instant::now();
    p.add_peer(1, false);
    p.add_peer(2, false);
    p.set_bitfield(1, bitfield::full(3));
    p.set_bitfield(2, bitfield::full(3));
    let a = p.next_requests(1, now);
    assert_eq!(a.len(), 2);
    let claimed = a[0].piece;
    assert_eq!(a[1].piece, claimed);
    let b = p.next_requests(2, now);
    assert!(
        b.iter().all(|x| x.piece != claimed),
        "peer 2 must not touch peer 1's claim"
    );
    // Peer 1 leaves; a third peer finishes its partial piece before anything new.
    p.remove_peer(1);
    p.add_peer(3, false);
    p.set_bitfield(3, bitfield::full(3));
    let c = p.next_requests(3, now);
    assert_eq!(c[0].piece, claimed);
    assert_eq!(c[0].begin, 0);
}

#[test]
fn pipeline_is_bounded() {
    let mut p = picker(10, 8, 3);
    p.add_peer(1, false);
    p.set_bitfield(1, bitfield::full(10));
    let r = p.next_requests(1, Instant::now());
    assert_eq!(r.len(), PickerConfig::default().initial_pipeline);
    assert!(p.next_requests(1, Instant::now()).is_empty());
    assert_eq!(
        p.on_block(1, r[0]),
        BlockOutcome::Accepted {
            complete: false,
            cancel: vec![]
        }
    );
    assert_eq!(p.next_requests(1, Instant::now()).len(), 1);
    assert_eq!(p.on_block(1, r[0]), BlockOutcome::Unrequested);
}

#[test]
fn endgame_duplicates_and_cancels_the_loser() {
    let mut p = picker(1, 2, 5);
    let now = Instant::now();
    p.add_peer(1, false);
    p.add_peer(2, false);
    p.set_bitfield(1, bitfield::full(1));
    p.set_bitfield(2, bitfield::full(1));
    let a = p.next_requests(1, now);
    assert_eq!(a.len(), 2);
    assert!(p.in_endgame());
    let b = p.next_requests(2, now);
    assert_eq!(b, a, "endgame duplicates every outstanding block");
    assert_eq!(
        p.on_block(2, a[0]),
        BlockOutcome::Accepted {
            complete: false,
            cancel: vec![1]
        }
    );
    assert_eq!(p.outstanding(1), 1);
    assert_eq!(
        p.on_block(1, a[0]),
        BlockOutcome::Unrequested,
        "the cancelled copy is ignored"
    );
    assert_eq!(
        p.on_block(1, a[1]),
        BlockOutcome::Accepted {
            complete: true,
            cancel: vec![2]
        }
    );
    p.piece_verified(PieceIndex(0));
    assert!(p.is_complete());
    assert!(p.next_requests(2, now).is_empty());
}

#[test]
fn seed_is_asked_for_what_it_announced_and_anything_when_idle() {
    let mut p = picker(4, 1, 9);
    let now = Instant::now();
    p.add_peer(100, true);
    p.add_peer(1, false);
    p.set_bitfield(1, bf(4, &[0, 1]));
    // The seed offers piece 2 only: it is asked for nothing else, even
    // though nobody has piece 3.
    p.set_bitfield(100, bf(4, &[2]));
    let from_peer = p.next_requests(1, now);
    assert_eq!(pieces(&from_peer), vec![0, 1]);
    assert_eq!(pieces(&p.next_requests(100, now)), vec![2]);
    // Peers still have pieces for us: not idle, so piece 3 waits.
    assert!(p.next_requests(100, now).is_empty());
    for b in from_peer {
        assert!(matches!(p.on_block(1, b), BlockOutcome::Accepted { .. }));
        p.piece_verified(b.piece);
    }
    // Nothing outstanding at peers and none has anything we lack: the seed
    // holds every piece, so it is asked for piece 3 unannounced.
    assert_eq!(pieces(&p.next_requests(100, now)), vec![3]);

    let mut p2 = picker(2, 1, 1);
    p2.add_peer(100, true);
    p2.add_peer(1, false);
    p2.set_bitfield(1, bf(2, &[0, 1]));
    // Nothing is outstanding for a moment, but the peer has both pieces:
    // that is not idleness, and the seed announced nothing.
    assert!(p2.next_requests(100, now).is_empty());
    // Once no peer can help, the seed is asked.
    p2.remove_peer(1);
    assert_eq!(p2.next_requests(100, now).len(), 2);
}

#[test]
fn a_seeds_first_offer_stays_askable_after_a_peer_announces_it() {
    let mut p = picker(4, 1, 3);
    let now = Instant::now();
    p.add_peer(100, true);
    p.add_peer(1, false);
    p.set_bitfield(1, bf(4, &[0]));
    // The seed offers piece 1 while no peer has it: a first copy for us.
    p.peer_have(100, PieceIndex(1));
    // The slow host the seed took it back from announces it after all.
    p.peer_have(1, PieceIndex(1));
    // The seed also announces piece 0, which the peer had before.
    p.peer_have(100, PieceIndex(0));
    assert_eq!(pieces(&p.next_requests(100, now)), vec![1]);
    assert_eq!(pieces(&p.next_requests(1, now)), vec![0]);
}

#[test]
fn a_seeds_offers_are_taken_in_the_order_it_made_them() {
    // Whatever the random tie-break, the oldest offer goes first: by rarity
    // alone, an early offer could wait behind newer ones indefinitely.
    for rng in 0..8 {
        let mut p = picker(16, 1, rng);
        let now = Instant::now();
        p.add_peer(100, true);
        let offers = [11, 3, 14, 7];
        for i in &offers[..3] {
            p.peer_have(100, PieceIndex(*i));
        }
        // Two pieces at a time from a seed.
        let first = p.next_requests(100, now);
        assert_eq!(pieces(&first), vec![11, 3], "rng {rng}");
        p.peer_have(100, PieceIndex(offers[3]));
        for b in first {
            assert!(matches!(p.on_block(100, b), BlockOutcome::Accepted { .. }));
            p.piece_verified(b.piece);
        }
        assert_eq!(pieces(&p.next_requests(100, now)), vec![14, 7], "rng {rng}");
    }
}

/// In endgame a seed duplicates a block only once peers have sat on it for
/// the grace, and then even when two peers already have the request (the
/// endgame's limit for peers), so two slow peers do not keep it out.
#[test]
fn seed_duplicates_a_block_two_peers_sit_on_after_the_grace() {
    let mut p = picker(1, 1, 2);
    let t0 = Instant::now();
    p.add_peer(100, true);
    p.set_bitfield(100, bitfield::full(1));
    for peer in [1, 2] {
        p.add_peer(peer, false);
        p.set_bitfield(peer, bitfield::full(1));
    }
    let a = p.next_requests(1, t0);
    assert_eq!(a.len(), 1);
    assert_eq!(
        p.next_requests(2, t0),
        a,
        "endgame duplicate at the second peer"
    );
    assert!(p.next_requests(100, t0).is_empty(), "too soon for the seed");
    let later = t0 + p.cfg.seed_grace + Duration::from_millis(1);
    assert_eq!(p.next_requests(100, later), a);
    // A third peer stays within the endgame's two copies.
    p.add_peer(3, false);
    p.set_bitfield(3, bitfield::full(1));
    assert!(p.next_requests(3, later).is_empty());
}

#[test]
fn failed_piece_is_requeued_and_availability_drops_with_peers() {
    let mut p = picker(2, 1, 4);
    let now = Instant::now();
    p.add_peer(1, false);
    p.set_bitfield(1, bf(2, &[1]));
    assert!(p.is_interesting(1));
    let r = p.next_requests(1, now);
    assert_eq!(pieces(&r), vec![1]);
    assert!(matches!(
        p.on_block(1, r[0]),
        BlockOutcome::Accepted { complete: true, .. }
    ));
    p.piece_failed(PieceIndex(1));
    assert_eq!(p.active_count(), 0);
    assert_eq!(p.next_requests(1, now), r);
    p.remove_peer(1);
    assert_eq!(p.avail, vec![0, 0]);
    // Its released request is free for the next peer.
    p.add_peer(2, false);
    assert!(p.peer_have(2, PieceIndex(1)));
    assert_eq!(p.next_requests(2, now), r);
}

#[test]
fn choke_releases_requests() {
    let mut p = picker(1, 4, 4);
    let now = Instant::now();
    p.add_peer(1, false);
    p.add_peer(2, false);
    p.set_bitfield(1, bitfield::full(1));
    p.set_bitfield(2, bitfield::full(1));
    assert_eq!(p.next_requests(1, now).len(), 4);
    p.release_requests(1);
    assert_eq!(p.outstanding(1), 0);
    assert_eq!(p.next_requests(2, now).len(), 4);
}

#[test]
fn pipeline_follows_the_peer_rate_within_bounds() {
    let mut p = picker(40, 8, 3);
    let cfg = PickerConfig::default();
    p.add_peer(1, false);
    p.set_bitfield(1, bitfield::full(40));
    // 0.8 MB/s for 0.25 s is 200 kB: 13 blocks of 16 KiB.
    p.adapt_pipeline(1, 800_000);
    assert_eq!(p.next_requests(1, Instant::now()).len(), 13);
    // A fast peer is capped, an idle one keeps the minimum.
    p.adapt_pipeline(1, 1_000_000_000);
    assert_eq!(p.next_requests(1, Instant::now()).len(), cfg.pipeline - 13);
    p.add_peer(2, false);
    p.set_bitfield(2, bitfield::full(40));
    p.adapt_pipeline(2, 0);
    assert_eq!(p.next_requests(2, Instant::now()).len(), cfg.min_pipeline);
}

#[test]
fn pipeline_time_follows_the_measured_round_trip() {
    let mut p = picker(40, 8, 3);
    let cfg = PickerConfig::default();
    let depth_after = |p: &mut PiecePicker, key, rtt_ms, rate| {
        p.add_peer(key, false);
        p.set_bitfield(key, bitfield::full(40));
        if let Some(ms) = rtt_ms {
            p.set_rtt(key, Duration::from_millis(ms));
        }
        p.adapt_pipeline(key, rate);
        p.next_requests(key, Instant::now()).len()
    };
    // A short path: the 0.1 s floor of 0.8 MB/s is 80 kB, 5 blocks.
    assert_eq!(depth_after(&mut p, 1, Some(1), 800_000), 5);
    // 40 ms: four round trips, 160 ms, 128 kB: 8 blocks.
    assert_eq!(depth_after(&mut p, 2, Some(40), 800_000), 8);
    // A long path is capped at the unknown round trip's 0.25 s: 13 blocks,
    // as for a peer whose round trip was not measured.
    assert_eq!(depth_after(&mut p, 3, Some(300), 800_000), 13);
    assert_eq!(depth_after(&mut p, 4, None, 800_000), 13);
    // An idle peer on a short path keeps the minimum.
    assert_eq!(depth_after(&mut p, 5, Some(1), 0), cfg.min_pipeline);
}

#[test]
fn a_seed_pipeline_follows_its_rate_but_keeps_its_minimum() {
    // Pieces of 64 blocks, so that two of them are more than any pipeline.
    let mut p = picker(8, 64, 4);
    let cfg = PickerConfig::default();
    p.add_peer(100, true);
    p.set_bitfield(100, bitfield::full(8));
    assert_eq!(
        p.next_requests(100, Instant::now()).len(),
        cfg.seed_pipeline
    );
    // A seed shared by many agents: a slow rate keeps the minimum.
    p.adapt_pipeline(100, 300_000);
    assert!(p.next_requests(100, Instant::now()).is_empty());
    // A fast seed link: a quarter second of its rate, capped.
    p.adapt_pipeline(100, 1_000_000_000);
    assert_eq!(
        p.next_requests(100, Instant::now()).len(),
        cfg.pipeline - cfg.seed_pipeline
    );
    assert_eq!(p.outstanding(100), cfg.pipeline);
}
