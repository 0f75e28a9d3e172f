//! End-to-end swarm behaviour: a corrupting peer is detected and shunned,
//! with a slow seed most bytes travel between peers, and pieces arriving
//! from the seed are relayed before they are whole, to peers that understand
//! RELAY only.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::peer::RawPeer;
use common::{assert_same_file, random_file, wait_until, Cluster, Opts, AGENT_DATA};
use pollen_protocol::api::TaskStatus;
use pollen_protocol::token::{Signer, TaskClaims};
use pollen_protocol::{InfoHash, Message};
use serde_json::json;

#[derive(Default)]
struct HostileStats {
    requests: AtomicU64,
    garbage_sent: AtomicU64,
    dropped: AtomicU64,
    refused_reconnects: AtomicU64,
}

/// Dials `target`, claims to have every piece, and answers every REQUEST with
/// random bytes. Returns when the agent drops it.
async fn hostile_session(
    me: &str,
    target: &str,
    ih: InfoHash,
    token: &str,
    num_pieces: u32,
    stats: &HostileStats,
) -> anyhow::Result<bool> {
    let addr = format!("{target}:{AGENT_DATA}").parse()?;
    let mut p = RawPeer::connect(me, addr).await?;
    p.send_handshake(ih).await?;
    p.send(&Message::Auth(token.to_owned())).await?;
    if p.read_handshake(Duration::from_secs(5)).await?.is_none() {
        return Ok(false); // refused: shunned
    }
    let bits = pollen_protocol::bitfield::full(num_pieces);
    p.send(&Message::Bitfield(
        pollen_protocol::bitfield::to_bytes(&bits).into(),
    ))
    .await?;
    p.send(&Message::Unchoke).await?;
    loop {
        match p.read_msg(Duration::from_secs(30)).await {
            Ok(Some(Message::Request {
                index,
                begin,
                length,
            })) => {
                stats.requests.fetch_add(1, Ordering::Relaxed);
                let junk: Vec<u8> = (0..length)
                    .map(|i| (i as u8).wrapping_mul(31) ^ 0x5a)
                    .collect();
                if p.send(&Message::Piece {
                    index,
                    begin,
                    data: Bytes::from(junk),
                })
                .await
                .is_err()
                {
                    break;
                }
                stats
                    .garbage_sent
                    .fetch_add(u64::from(length), Ordering::Relaxed);
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    stats.dropped.fetch_add(1, Ordering::Relaxed);
    Ok(true)
}

/// Posts task `id` of the one file `path` (`size` bytes) to every agent and
/// waits until every agent has accepted it (a peer that dials an agent
/// before then is refused: the agent does not know the info-hash yet). Its
/// info-hash, and its piece length (the server picks it adaptively; this
/// computes it the same way).
async fn start_task(
    c: &Cluster,
    id: &str,
    path: &std::path::Path,
    size: usize,
) -> anyhow::Result<(InfoHash, u64)> {
    let (code, _) = c
        .post_task(&json!({"id": id, "dispatchFiles": [path], "destIPs": c.agent_ips()}))
        .await?;
    assert_eq!(code, 202);
    let info = wait_until("the task to start", Duration::from_secs(30), || async {
        let t = c.get_task(id).await.ok()?;
        let pushed = t
            .dispatch_infos
            .values()
            .all(|d| d.status != TaskStatus::Init);
        (t.info_hash.is_some() && t.status == TaskStatus::InProgress && pushed).then_some(t)
    })
    .await?;
    let ih = info
        .info_hash
        .ok_or_else(|| anyhow::anyhow!("no info hash"))?;
    let piece_len = pollen_protocol::lengths::Lengths::choose_piece_length(size as u64, 64 * 1024);
    Ok((ih, piece_len))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_corrupt_peer_is_detected_shunned_and_bytes_stay_correct() -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(150), async {
        let c = Cluster::start(
            7,
            Opts {
                agents: 4,
                seed_speed: 1.0,
                ..Opts::default()
            },
        )
        .await?;
        let file = c.dir.path().join("src/victim.bin");
        let size = 12 * 1024 * 1024 + 333;
        random_file(&file, size, 8)?;
        let (ih, piece_len) = start_task(&c, "victim", &file, size).await?;
        let num_pieces = (size as u64).div_ceil(piece_len) as u32;

        // The hostile host holds a genuine token (e.g. a compromised host).
        let me = format!("127.0.{}.66", c.net);
        let signer = Signer::from_pem(c.private_key_pem.as_bytes())?;
        let token = signer.sign(&TaskClaims::new(&me, "victim", &ih.to_hex(), 3600))?;
        let stats = Arc::new(HostileStats::default());
        let mut sessions = Vec::new();
        for target in c.agent_ips() {
            let (me, token, stats) = (me.clone(), token.clone(), stats.clone());
            sessions.push(tokio::spawn(async move {
                // First session: gets dropped for bad data. Then try again: refused.
                let _ = hostile_session(&me, &target, ih, &token, num_pieces, &stats).await;
                if let Ok(false) =
                    hostile_session(&me, &target, ih, &token, num_pieces, &stats).await
                {
                    stats.refused_reconnects.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        let info = c.wait_final("victim", Duration::from_secs(120)).await?;
        for s in sessions {
            let _ = tokio::time::timeout(Duration::from_secs(40), s).await;
        }
        assert_eq!(info.status, TaskStatus::Completed, "{info:?}");
        for (i, ip) in c.agent_ips().iter().enumerate() {
            assert_same_file(&file, &c.downdir(i).join("victim.bin"));
            let d = &info.dispatch_infos[ip];
            assert!(
                d.shunned_peers.iter().any(|p| p.starts_with(&me)),
                "{ip} shunned the hostile peer: {:?}",
                d.shunned_peers
            );
        }
        assert!(
            stats.requests.load(Ordering::Relaxed) > 0,
            "agents asked the hostile peer for data"
        );
        assert_eq!(
            stats.dropped.load(Ordering::Relaxed),
            4,
            "every agent dropped it"
        );
        assert_eq!(
            stats.refused_reconnects.load(Ordering::Relaxed),
            4,
            "and refused it afterwards"
        );
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h_with_a_slow_seed_most_bytes_come_from_peers() -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(150), async {
        let c = Cluster::start(
            8,
            Opts {
                agents: 4,
                seed_speed: 2.0,
                ..Opts::default()
            },
        )
        .await?;
        let file = c.dir.path().join("src/shared.bin");
        let size = 20 * 1024 * 1024;
        random_file(&file, size, 9)?;
        let (code, _) = c
            .post_task(&json!({"id": "p2p", "dispatchFiles": [file], "destIPs": c.agent_ips()}))
            .await?;
        assert_eq!(code, 202);
        let info = c.wait_final("p2p", Duration::from_secs(120)).await?;
        assert_eq!(info.status, TaskStatus::Completed, "{info:?}");
        let from_seed: u64 = info
            .dispatch_infos
            .values()
            .map(|d| d.bytes_from_seed)
            .sum();
        let from_peers: u64 = info
            .dispatch_infos
            .values()
            .map(|d| d.bytes_from_peers)
            .sum();
        let total = 4 * size as u64;
        eprintln!(
            "from seed {from_seed}, from peers {from_peers}, seed count {}",
            info.seed_bytes
        );
        assert!(
            from_seed + from_peers >= total,
            "every byte is accounted for"
        );
        assert!(
            from_peers * 10 >= total * 6,
            "at least 60% from peers: {from_peers} of {total}"
        );
        assert!(
            info.seed_bytes < 2 * size as u64,
            "seed uploaded under 2x the file: {}",
            info.seed_bytes
        );
        // The seed's count never drops below what the agents got from it,
        // also while the server takes the finished task off the seed.
        for _ in 0..100 {
            let now = c.get_task("p2p").await?;
            assert!(
                now.seed_bytes >= from_seed && now.seed_bytes >= info.seed_bytes,
                "seedBytes {} after {} (agents got {from_seed} from the seed)",
                now.seed_bytes,
                info.seed_bytes
            );
        }
        for i in 0..4 {
            assert_same_file(&file, &c.downdir(i).join("shared.bin"));
        }
        anyhow::Ok(())
    })
    .await?
}

/// What a raw peer saw of an agent's announcements and relayed blocks.
#[derive(Debug, Default)]
struct Watched {
    relays: usize,
    haves: usize,
    /// Blocks received for a piece the agent had announced with RELAY only.
    before_have: usize,
    /// Blocks whose bytes matched the file.
    good_blocks: usize,
    bad_blocks: usize,
}

/// How a watching peer presents itself: its handshake's reserved bytes, and
/// whether it requests the first block of every piece announced with RELAY.
#[derive(Clone, Copy)]
struct Probe {
    reserved: [u8; 8],
    ask: bool,
}

/// Connects to `target` as `probe` says, with an empty bitfield, and records
/// what the agent sends until it closes the connection or goes quiet.
async fn watch_agent(
    me: &str,
    target: &str,
    ih: InfoHash,
    token: &str,
    probe: Probe,
    file: &[u8],
    piece_len: u64,
) -> anyhow::Result<Watched> {
    let Probe { reserved, ask } = probe;
    let addr = format!("{target}:{AGENT_DATA}").parse()?;
    let mut p = RawPeer::connect(me, addr).await?;
    p.send_handshake_reserved(ih, reserved).await?;
    p.send(&Message::Auth(token.to_owned())).await?;
    let hs = p
        .read_handshake(Duration::from_secs(5))
        .await?
        .ok_or_else(|| anyhow::anyhow!("refused"))?;
    anyhow::ensure!(
        hs.understands_relay(),
        "the agent's handshake lacks the RELAY bit"
    );
    let num_pieces = (file.len() as u64).div_ceil(piece_len) as u32;
    let none = pollen_protocol::bitfield::empty(num_pieces);
    p.send(&Message::Bitfield(
        pollen_protocol::bitfield::to_bytes(&none).into(),
    ))
    .await?;
    p.send(&Message::Unchoke).await?;
    let mut w = Watched::default();
    let mut have: HashSet<u32> = HashSet::new();
    let mut relayed: HashSet<u32> = HashSet::new();
    let until = std::time::Instant::now() + Duration::from_secs(90);
    while std::time::Instant::now() < until {
        let m = match p.read_msg(Duration::from_secs(10)).await {
            Ok(Some(m)) => m,
            Ok(None) | Err(_) => break,
        };
        match m {
            Message::Relay(i) => {
                w.relays += 1;
                relayed.insert(i.0);
                if ask && !have.contains(&i.0) {
                    let len = piece_len.min(16 * 1024) as u32;
                    p.send(&Message::Request {
                        index: i,
                        begin: 0,
                        length: len,
                    })
                    .await?;
                }
            }
            Message::Have(i) => {
                w.haves += 1;
                have.insert(i.0);
            }
            Message::Piece { index, begin, data } => {
                if relayed.contains(&index.0) && !have.contains(&index.0) {
                    w.before_have += 1;
                }
                let at = (u64::from(index.0) * piece_len + u64::from(begin)) as usize;
                if file.get(at..at + data.len()) == Some(&data[..]) {
                    w.good_blocks += 1;
                } else {
                    w.bad_blocks += 1;
                }
            }
            _ => {}
        }
    }
    Ok(w)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_pieces_from_the_seed_are_relayed_before_they_verify_only_to_peers_that_understand_it(
) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(150), async {
        let c = Cluster::start(
            12,
            Opts {
                agents: 2,
                seed_speed: 1.0,
                ..Opts::default()
            },
        )
        .await?;
        let path = c.dir.path().join("src/relayed.bin");
        let size = 6 * 1024 * 1024 + 77;
        random_file(&path, size, 12)?;
        let file = Arc::new(std::fs::read(&path)?);
        let (ih, piece_len) = start_task(&c, "relay", &path, size).await?;
        let signer = Signer::from_pem(c.private_key_pem.as_bytes())?;
        let target = c.agent_ips()[0].clone();
        // A current peer (AUTH and RELAY bits) and one of an older version
        // (AUTH only), both watching the first agent.
        let watch = |me: String, probe: Probe| {
            let token = signer.sign(&TaskClaims::new(&me, "relay", &ih.to_hex(), 3600));
            let (target, file) = (target.clone(), file.clone());
            tokio::spawn(async move {
                watch_agent(&me, &target, ih, &token?, probe, &file, piece_len).await
            })
        };
        let current = Probe {
            reserved: [0, 0, 0, 0, 0, 0x03, 0, 0],
            ask: true,
        };
        let older = Probe {
            reserved: [0, 0, 0, 0, 0, 0x01, 0, 0],
            ask: false,
        };
        let current = watch(format!("127.0.{}.67", c.net), current);
        let older = watch(format!("127.0.{}.68", c.net), older);
        let done = c.wait_final("relay", Duration::from_secs(120)).await?;
        assert_eq!(done.status, TaskStatus::Completed, "{done:?}");
        for (i, _) in c.agent_ips().iter().enumerate() {
            assert_same_file(&path, &c.downdir(i).join("relayed.bin"));
        }
        let current = current.await??;
        let older = older.await??;
        eprintln!("current peer saw {current:?}; older peer saw {older:?}");
        assert!(current.relays > 0, "no RELAY reached the current peer");
        assert!(
            current.before_have > 0,
            "no block came before its piece's HAVE: {current:?}"
        );
        assert!(
            current.good_blocks > 0 && current.bad_blocks == 0,
            "{current:?}"
        );
        assert_eq!(older.relays, 0, "an older peer was sent RELAY");
        assert!(older.haves > 0, "the older peer saw no HAVE: {older:?}");
        anyhow::Ok(())
    })
    .await?
}
