use super::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

fn schedule(pieces: u32, window: usize) -> Schedule {
    Schedule::new(pieces, window, &mut StdRng::seed_from_u64(7))
}

fn announced(s: &Schedule, key: ConnKey) -> Vec<u32> {
    s.log_since(key, 0).0.into_iter().map(|p| p.0).collect()
}

fn sorted(mut v: Vec<u32>) -> Vec<u32> {
    v.sort_unstable();
    v
}

#[test]
fn each_piece_is_offered_to_one_connection_until_the_pool_is_dry() {
    let t = Instant::now();
    let mut s = schedule(12, 2);
    let (a, _) = s.connect(t);
    let (b, _) = s.connect(t);
    let (c, _) = s.connect(t);
    let first: Vec<Vec<u32>> = [a, b, c].iter().map(|k| announced(&s, *k)).collect();
    assert!(first.iter().all(|v| v.len() == 2), "{first:?}");
    // Taking an offer brings the next one; no piece goes to two connections.
    for _ in 0..2 {
        for k in [a, b, c] {
            let next = announced(&s, k)[announced(&s, k).len() - 2];
            s.on_request(k, PieceIndex(next), t);
        }
    }
    let all: Vec<u32> = [a, b, c].iter().flat_map(|k| announced(&s, *k)).collect();
    assert_eq!(all.len(), 12);
    assert_eq!(sorted(all), (0..12).collect::<Vec<_>>());
}

#[test]
fn a_dry_pool_makes_the_seed_a_fallback_except_for_held_pieces() {
    let t = Instant::now();
    let mut s = schedule(4, 2);
    let (a, _) = s.connect(t);
    let (b, _) = s.connect(t);
    let offered_a = announced(&s, a);
    let offered_b = announced(&s, b);
    assert_eq!(offered_a.len() + offered_b.len(), 4);
    // `a` takes both offers; the pool is dry, so `a` becomes a fallback
    // connection but gets nothing `b` is about to spread.
    for p in &offered_a {
        s.on_request(a, PieceIndex(*p), t);
    }
    assert_eq!(announced(&s, a), offered_a);
    // `b` announces one of its pieces: `a` should get it from `b`, so the
    // seed does not announce it to `a` yet.
    s.on_have(b, PieceIndex(offered_b[0]), t + Duration::from_millis(10));
    s.tick(t + RELEASE_INTERVAL);
    assert_eq!(announced(&s, a), offered_a);
    // Just before HOLD, `b`'s other piece is still held back and the first
    // one may still reach `a` from `b`.
    s.on_request(b, PieceIndex(offered_b[1]), t + HOLD - RELEASE_INTERVAL);
    s.tick(t + HOLD - Duration::from_millis(1));
    assert_eq!(announced(&s, a), offered_a);
    // After HOLD both are announced: `b` is slow to receive its offer, and
    // the first piece did not reach `a` from `b` in time.
    s.tick(t + HOLD + RELEASE_INTERVAL);
    let mut expect = offered_a.clone();
    expect.extend([offered_b[0], offered_b[1]]);
    assert_eq!(sorted(announced(&s, a)), sorted(expect));
}

#[test]
fn pieces_of_a_departed_connection_are_offered_again_first() {
    let t = Instant::now();
    let mut s = schedule(8, 2);
    let (a, _) = s.connect(t);
    let gone = announced(&s, a);
    s.on_request(a, PieceIndex(gone[0]), t);
    let (b, _) = s.connect(t);
    s.disconnect(a, t);
    let (c, _) = s.connect(t);
    let to_c = announced(&s, c);
    assert!(to_c.contains(&gone[0]), "{to_c:?} should re-offer {gone:?}");
    let to_b = announced(&s, b);
    assert!(to_b.iter().all(|p| !to_c.contains(p)));
}

#[test]
fn pieces_the_agent_already_has_are_not_offered() {
    let t = Instant::now();
    let mut s = schedule(6, 3);
    let (a, _) = s.connect(t);
    let first = announced(&s, a);
    let mut has = bitfield::empty(6);
    for i in 0..6 {
        if !first.contains(&i) {
            has.set(i as usize, true);
        }
    }
    // It has everything we did not offer, plus it announces the first offer.
    s.on_bitfield(a, &has, t);
    s.on_have(a, PieceIndex(first[0]), t);
    // Nothing new exists for it; the other offers stay announced once.
    assert_eq!(announced(&s, a), first);
    let (b, _) = s.connect(t);
    assert!(
        announced(&s, b)
            .iter()
            .all(|p| !first.contains(p) || *p == first[0]),
        "pieces `a` holds open stay withheld from others"
    );
}

#[test]
fn the_feed_counts_what_was_announced() {
    let t = Instant::now();
    let mut s = schedule(5, 2);
    let (a, rx) = s.connect(t);
    assert_eq!(*rx.borrow(), 2);
    let (first, pos) = s.log_since(a, 0);
    assert_eq!(pos, 2);
    s.on_request(a, first[0], t);
    let (more, pos2) = s.log_since(a, pos);
    assert_eq!(more.len(), 1);
    assert_eq!(pos2, 3);
    assert_eq!(*rx.borrow(), 3);
}

#[test]
fn an_abandoned_offer_is_offered_again_to_one_connection_at_a_time() {
    let t = Instant::now();
    let mut s = schedule(3, 1);
    let (a, _) = s.connect(t);
    let (b, _) = s.connect(t);
    let (c, _) = s.connect(t);
    let stuck = announced(&s, b)[0];
    // `a` and `c` take their offers and become fallback connections; `b`
    // never asks for its piece.
    for k in [a, c] {
        let p = announced(&s, k)[0];
        s.on_request(k, PieceIndex(p), t);
        s.on_have(k, PieceIndex(p), t + Duration::from_millis(10));
    }
    let got = |s: &Schedule| {
        [a, c]
            .into_iter()
            .filter(|k| announced(s, *k).contains(&stuck))
            .count()
    };
    s.tick(t + HOLD - Duration::from_millis(1));
    assert_eq!(got(&s), 0, "held while `b` may still take it");
    // After HOLD exactly one of them gets it, not both.
    let t1 = t + HOLD + RELEASE_INTERVAL;
    s.tick(t1);
    assert_eq!(got(&s), 1);
    // If that one is silent too, the piece moves on to the other.
    s.tick(t1 + HOLD + RELEASE_INTERVAL);
    assert_eq!(got(&s), 2);
}

#[test]
fn a_saturated_uplink_holds_pieces_longer() {
    let t = Instant::now();
    let mut s = schedule(4, 2);
    let (a, _) = s.connect(t);
    let (b, _) = s.connect(t);
    let offered_b = announced(&s, b);
    for p in announced(&s, a) {
        s.on_request(a, PieceIndex(p), t);
    }
    // The seed sends 10 MB/s steadily: past the warm-up, that is its peak.
    let step = RELEASE_INTERVAL;
    let mut now = t;
    let mut sent = 0u64;
    let until = t + HOLD + Duration::from_secs(1);
    while now < until {
        now += step;
        sent += 2_500_000;
        s.observe_sent(now, sent);
        s.tick(now);
    }
    assert!(s.gauge.saturated());
    // Past HOLD, `b`'s untaken offers stay with `b`: sending them to `a`
    // too would delay a first copy elsewhere.
    assert!(offered_b.iter().all(|p| !announced(&s, a).contains(p)));
    // The uplink goes quiet: the usual HOLD applies again.
    for _ in 0..8 {
        now += step;
        s.observe_sent(now, sent);
        s.tick(now);
    }
    assert!(!s.gauge.saturated());
    assert!(offered_b.iter().any(|p| announced(&s, a).contains(p)));
}

/// The seed sends 10 MB/s steadily until `until`: past the warm-up, its
/// uplink counts as saturated.
fn send_steadily(s: &mut Schedule, now: &mut Instant, sent: &mut u64, until: Instant) {
    while *now < until {
        *now += RELEASE_INTERVAL;
        *sent += 2_500_000;
        s.observe_sent(*now, *sent);
    }
}

/// Four connections on a saturated uplink. Each takes its first offer and
/// the first three announce it within 50 ms; the fourth has not yet.
/// Returns the connections, the time and the bytes sent so far.
fn three_fast_takers_and_one_pending(s: &mut Schedule) -> (Vec<ConnKey>, Instant, u64) {
    let t = Instant::now();
    let conns: Vec<ConnKey> = (0..4).map(|_| s.connect(t).0).collect();
    let (mut now, mut sent) = (t, 0u64);
    send_steadily(s, &mut now, &mut sent, t + Duration::from_secs(2));
    assert!(s.gauge.saturated());
    for &k in &conns {
        let first = announced(s, k)[0];
        s.on_request(k, PieceIndex(first), now);
    }
    for &k in &conns[..3] {
        let first = announced(s, k)[0];
        s.on_have(k, PieceIndex(first), now + Duration::from_millis(50));
    }
    (conns, now, sent)
}

#[test]
fn a_slow_connection_gets_no_new_offers_and_gives_its_own_back() {
    let mut s = schedule(64, 2);
    let (conns, mut now, sent) = three_fast_takers_and_one_pending(&mut s);
    let (fast, slow) = (&conns[..3], conns[3]);
    // The last one announces its first offer only after 2 s.
    assert!(
        !s.is_slow(slow, now + Duration::from_millis(50)),
        "no delivery measured for it yet"
    );
    let before = announced(&s, slow);
    let untaken = before[1];
    s.on_have(slow, PieceIndex(before[0]), now + Duration::from_secs(2));
    assert!(s.is_slow(slow, now + Duration::from_secs(2)));
    // No new offer for it; its untaken offer goes to the next fast taker.
    assert_eq!(announced(&s, slow), before, "no new offer");
    let k = fast[0];
    let next = *announced(&s, k).last().unwrap();
    s.on_request(k, PieceIndex(next), now + Duration::from_secs(2));
    assert!(
        announced(&s, k).contains(&untaken),
        "{:?}",
        announced(&s, k)
    );
    // Once the uplink has room again, it is served like anyone.
    for _ in 0..8 {
        now += RELEASE_INTERVAL;
        s.observe_sent(now, sent);
    }
    assert!(!s.is_slow(slow, now));
}

#[test]
fn a_slow_verdict_expires_when_nothing_new_is_measured() {
    let mut s = schedule(256, 2);
    // The uplink stays saturated throughout.
    let (conns, mut now, mut sent) = three_fast_takers_and_one_pending(&mut s);
    let slow = conns[3];
    let first = announced(&s, slow)[0];
    let judged = now + Duration::from_secs(2);
    s.on_have(slow, PieceIndex(first), judged);
    assert!(s.is_slow(slow, judged));
    let before = announced(&s, slow);
    // Still slow just before SLOW_RETRY: no new offer.
    send_steadily(
        &mut s,
        &mut now,
        &mut sent,
        judged + SLOW_RETRY - RELEASE_INTERVAL,
    );
    assert!(s.gauge.saturated());
    assert!(s.is_slow(slow, now));
    s.tick(now);
    assert_eq!(announced(&s, slow), before);
    // Past SLOW_RETRY with nothing new measured, it is offered pieces again.
    send_steadily(&mut s, &mut now, &mut sent, judged + SLOW_RETRY);
    assert!(s.gauge.saturated());
    assert!(!s.is_slow(slow, now));
    // (Any message from it re-examines its offers; here a repeated HAVE.)
    s.on_have(slow, PieceIndex(before[0]), now);
    let offers = announced(&s, slow);
    assert!(offers.len() > before.len(), "{offers:?}");
    // It delivers the new one slowly again: judged slow again at once.
    let next = offers[before.len()];
    s.on_request(slow, PieceIndex(next), now);
    let late = now + Duration::from_secs(2);
    send_steadily(&mut s, &mut now, &mut sent, late);
    s.on_have(slow, PieceIndex(next), now);
    assert!(s.is_slow(slow, now));
}

#[test]
fn a_connection_that_announces_nothing_is_judged_by_its_oldest_take() {
    let mut s = schedule(64, 2);
    let (conns, mut now, mut sent) = three_fast_takers_and_one_pending(&mut s);
    let (fast, quiet) = (conns[0], conns[3]);
    let took = now;
    let taken = announced(&s, quiet)[0];
    // Its piece has been on the way for less than SLOW_MIN: not judged.
    assert!(!s.is_slow(quiet, took + SLOW_MIN - Duration::from_millis(1)));
    // It never announces it and sends nothing more; the seed's clock alone
    // judges it and gives its piece to a faster connection.
    send_steadily(&mut s, &mut now, &mut sent, took + Duration::from_secs(2));
    assert!(s.gauge.saturated());
    assert!(s.is_slow(quiet, now));
    s.tick(now);
    assert!(!s.held.contains_key(&taken), "{:?}", s.held.get(&taken));
    // Its open offers and the piece it took go back to the pool's front,
    // to the connections that take their offers.
    let mine = announced(&s, quiet);
    let front: Vec<u32> = s.pool.iter().take(mine.len()).copied().collect();
    assert_eq!(sorted(front), sorted(mine.clone()));
    for _ in 0..mine.len() {
        let next = *announced(&s, fast).last().unwrap();
        s.on_request(fast, PieceIndex(next), now);
    }
    assert!(
        announced(&s, fast).contains(&taken),
        "{:?} should hold {taken}",
        announced(&s, fast)
    );
    assert_eq!(announced(&s, quiet), mine, "no new offer for it");
    // Once it announces the piece, its delivery time alone judges it.
    s.on_have(quiet, PieceIndex(taken), now);
    assert!(s.is_slow(quiet, now), "a 2 s delivery is slow");
}

#[test]
fn a_lagging_connection_gives_back_its_first_copies_on_an_idle_uplink_too() {
    let mut s = schedule(64, 2);
    let (conns, mut now, sent) = three_fast_takers_and_one_pending(&mut s);
    let quiet = conns[3];
    let taken = announced(&s, quiet)[0];
    let until = now + Duration::from_secs(2);
    while now < until {
        now += RELEASE_INTERVAL;
        s.observe_sent(now, sent);
    }
    assert!(!s.gauge.saturated());
    assert!(s.held.get(&taken).is_some_and(|h| h.0 == quiet));
    s.tick(now);
    assert!(!s.held.contains_key(&taken));
    assert!(s.pool.iter().take(3).any(|p| *p == taken), "{:?}", s.pool);
}

#[test]
fn a_lagging_fallback_connection_gets_no_piece_nobody_has() {
    let t = Instant::now();
    let ms = Duration::from_millis;
    let mut s = schedule(10, 2);
    let conns: Vec<ConnKey> = (0..5).map(|_| s.connect(t).0).collect();
    let (fast, lagging, leaving) = (&conns[..3], conns[3], conns[4]);
    // The pool is dry; every connection takes its offers and becomes a
    // fallback connection.
    for &k in &conns {
        s.on_request(k, PieceIndex(announced(&s, k)[0]), t);
    }
    for &k in [lagging, leaving].iter() {
        s.on_request(k, PieceIndex(announced(&s, k)[1]), t);
    }
    // The fast ones deliver in 50 ms and are busy with one more piece;
    // `lagging` takes a second for each of its pieces.
    for &k in fast {
        s.on_have(k, PieceIndex(announced(&s, k)[0]), t + ms(50));
    }
    for &k in fast {
        s.on_request(k, PieceIndex(announced(&s, k)[1]), t + ms(900));
    }
    for p in announced(&s, lagging) {
        s.on_have(lagging, PieceIndex(p), t + ms(1000));
    }
    let before = announced(&s, lagging);
    // `leaving` goes away with two pieces nobody has. The least busy
    // connection chooses first, and that is `lagging`: the pieces go to a
    // fast connection instead.
    let orphans = announced(&s, leaving);
    s.disconnect(leaving, t + ms(1000));
    assert_eq!(announced(&s, lagging), before);
    let to_fast: Vec<u32> = fast.iter().flat_map(|k| announced(&s, *k)).collect();
    assert!(
        orphans.iter().all(|p| to_fast.contains(p)),
        "{orphans:?} should go to {to_fast:?}"
    );
}
