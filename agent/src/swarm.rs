//! The per-task orchestrator on an agent.
//!
//! [`run_task`] drives one task from push to DELETE: it dials the seed and
//! the given peers (in random order, retrying with backoff while the task
//! downloads, because peers may not have the task yet), accepts incoming
//! connections routed to it by info-hash ([`serve_incoming`]), samples rates,
//! publishes when every piece is verified, then keeps uploading until the
//! task is deleted. On failure or cancel it closes every connection and
//! removes the staging data.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pollen_protocol::api::AgentTask;
use pollen_protocol::token::{TaskClaims, SEED_SUBJECT};
use pollen_protocol::Message;
use rand::seq::SliceRandom;
use rand::Rng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::instrument;

use crate::agent::Agent;
use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::peer_auth;
use crate::peer_connection::{DownloadSide, Session, CONTROL_QUEUE};
use crate::report;
use crate::task_state::{Link, Phase, TaskState};

const DIAL_BACKOFF_MIN: Duration = Duration::from_millis(200);
const DIAL_BACKOFF_MAX: Duration = Duration::from_secs(10);
const RATE_SAMPLE: Duration = Duration::from_secs(1);

/// One task registered with the agent.
pub(crate) struct TaskEntry {
    pub(crate) spec: AgentTask,
    pub(crate) state: Arc<TaskState>,
    /// Cancelled by DELETE, a 410 from the server, or agent shutdown.
    pub(crate) cancel: CancellationToken,
    /// Parent of every connection of the task.
    pub(crate) conns: CancellationToken,
    /// Cancelled once the task's cleanup is done.
    pub(crate) finished: CancellationToken,
}

/// Runs a task until it is cancelled.
#[instrument(skip_all, fields(task = %entry.spec.task_id, info_hash = %entry.spec.info_hash))]
pub(crate) async fn run_task(agent: Arc<Agent>, entry: Arc<TaskEntry>) {
    let state = entry.state.clone();
    agent
        .tracker
        .spawn(report::run_reporter(agent.clone(), entry.clone()));
    if state.store.is_resumable() && state.phase() == Phase::Running {
        match state.store.verified_pieces(&entry.cancel).await {
            Ok(pieces) => {
                tracing::info!(
                    pieces = pieces.len(),
                    "resumed verified pieces from staging"
                );
                state.mark_resumed(&pieces);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot resume from staging; downloading everything")
            }
        }
    }
    let mut targets: Vec<(SocketAddr, bool)> =
        entry.spec.peers.iter().map(|a| (*a, false)).collect();
    targets.shuffle(&mut rand::thread_rng());
    targets.insert(0, (entry.spec.seed, true));
    for (addr, is_seed) in targets {
        if !is_seed && addr.ip() == agent.ip {
            continue;
        }
        agent
            .tracker
            .spawn(dial_loop(agent.clone(), entry.clone(), addr, is_seed));
    }
    let mut phase = state.watch_phase();
    let mut tick = tokio::time::interval(RATE_SAMPLE);
    loop {
        let current = phase.borrow_and_update().clone();
        match current {
            Phase::Downloaded => {
                let started = std::time::Instant::now();
                let published = state.store.publish(entry.spec.dest_dir.clone()).await;
                let publish_ms = started.elapsed().as_millis();
                match published {
                    Ok(dest) => {
                        tracing::info!(dest = %dest.display(), publish_ms, "task complete, files published");
                        state.set_phase(Phase::Completed);
                        state.close_seed_connections();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "publishing failed");
                        state.set_phase(Phase::Failed(format!("publish: {e}")));
                    }
                }
            }
            Phase::Failed(reason) => {
                tracing::warn!(%reason, "task failed");
                break;
            }
            Phase::Canceled => break,
            Phase::Running | Phase::Completed => {}
        }
        tokio::select! {
            () = entry.cancel.cancelled() => {
                state.set_phase(Phase::Canceled);
                break;
            }
            changed = phase.changed() => if changed.is_err() { break },
            _ = tick.tick() => state.sample_rates(),
        }
    }
    entry.conns.cancel();
    state.wait_verifications().await;
    state.uploader.drop_cache();
    // On agent shutdown the staging data stays, so a restart can resume.
    let shutting_down = agent.root.is_cancelled();
    if state.phase() != Phase::Completed && !shutting_down {
        if let Err(e) = state.store.remove_staging().await {
            tracing::warn!(error = %e, "removing staging data failed");
        }
    }
    entry.finished.cancel();
}

/// Dials one peer (or the seed) until the task stops downloading, the peer
/// is shunned, or the task is cancelled.
#[instrument(skip_all, fields(task = %entry.spec.task_id, peer = %addr, is_seed))]
async fn dial_loop(agent: Arc<Agent>, entry: Arc<TaskEntry>, addr: SocketAddr, is_seed: bool) {
    let state = &entry.state;
    let mut backoff = DIAL_BACKOFF_MIN;
    loop {
        if entry.conns.is_cancelled() || state.phase() != Phase::Running {
            return;
        }
        if !is_seed && state.is_shunned(addr.ip()) {
            return;
        }
        if is_seed || !state.is_connected(addr.ip()) {
            match dial_session(&agent, &entry, addr, is_seed).await {
                Ok(()) => backoff = DIAL_BACKOFF_MIN,
                Err(e) if e.is_peer_fault() && !is_seed => {
                    tracing::warn!(error = %e, "peer misbehaved; shunning it");
                    state.shun(addr.ip());
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "dial failed or session ended"),
            }
        }
        let jitter = rand::thread_rng().gen_range(0..=backoff.as_millis() as u64 / 2);
        tokio::select! {
            () = entry.conns.cancelled() => return,
            () = tokio::time::sleep(backoff + Duration::from_millis(jitter)) => {}
        }
        backoff = (backoff * 2).min(DIAL_BACKOFF_MAX);
    }
}

async fn dial_session(
    agent: &Agent,
    entry: &TaskEntry,
    addr: SocketAddr,
    is_seed: bool,
) -> Result<()> {
    let expected = if is_seed {
        SEED_SUBJECT.to_owned()
    } else {
        addr.ip().to_string()
    };
    let spec = &entry.spec;
    let (mut conn, _claims, rtt, understands_relay) = peer_auth::dial(
        agent.ip,
        addr,
        spec.info_hash,
        agent.peer_id,
        &spec.token,
        &agent.verifier,
        &expected,
    )
    .await?;
    let (ctl_tx, ctl_rx) = mpsc::channel(CONTROL_QUEUE);
    let cancel = entry.conns.child_token();
    let guard = entry.state.register(
        Link {
            addr,
            own_ip: agent.ip,
            is_seed,
            dialed: true,
        },
        ctl_tx.clone(),
        cancel.clone(),
    )?;
    entry.state.set_rtt(guard.key, rtt);
    let interested = !entry.state.is_complete();
    conn.queue(&Message::Bitfield(guard.bitfield.clone()));
    conn.queue(&Message::Unchoke);
    if interested {
        conn.queue(&Message::Interested);
    }
    conn.flush().await?;
    let opened = Opened::Dialed {
        interested,
        // The seed has no use for RELAY: it has every piece.
        relays: understands_relay && !is_seed,
    };
    run_session(entry, conn, &guard, ctl_tx, ctl_rx, cancel, opened).await
}

/// How a session's connection was opened, and whether the peer is sent
/// RELAY (an agent whose handshake says it understands it).
enum Opened {
    /// We dialed; whether the greeting already said INTERESTED.
    Dialed { interested: bool, relays: bool },
    /// We accepted, and sent our greeting at `greeted`.
    Accepted { greeted: Instant, relays: bool },
}

async fn run_session(
    entry: &TaskEntry,
    conn: Connection,
    guard: &crate::task_state::PeerGuard,
    ctl_tx: mpsc::Sender<Message>,
    ctl_rx: mpsc::Receiver<Message>,
    cancel: CancellationToken,
    opened: Opened,
) -> Result<()> {
    let (interested, rtt_probe, relays) = match opened {
        Opened::Dialed { interested, relays } => (interested, None, relays),
        Opened::Accepted { greeted, relays } => (false, Some(greeted), relays),
    };
    let session = Session {
        peer: conn.peer_addr(),
        uploader: entry.state.uploader.clone(),
        download: Some(DownloadSide {
            state: entry.state.clone(),
            key: guard.key,
            have_pos: guard.have_pos,
            rtt_probe,
            relays,
        }),
        seeding: None,
        counters: guard.counters.clone(),
        ctl_tx,
        ctl_rx,
        cancel,
        interested,
    };
    session.run(conn).await
}

/// Serves a connection that the data-port listener authenticated for this
/// task: registers it, greets it, and runs the session. A peer fault shuns
/// the peer.
///
/// # Errors
/// Refusals (shunned, duplicate), network errors and peer faults.
pub(crate) async fn serve_incoming(
    agent: &Agent,
    entry: &TaskEntry,
    mut conn: Connection,
    _claims: TaskClaims,
    understands_relay: bool,
) -> Result<()> {
    let addr = conn.peer_addr();
    let (ctl_tx, ctl_rx) = mpsc::channel(CONTROL_QUEUE);
    let cancel = entry.conns.child_token();
    let guard = entry.state.register(
        Link {
            addr,
            own_ip: agent.ip,
            is_seed: false,
            dialed: false,
        },
        ctl_tx.clone(),
        cancel.clone(),
    )?;
    peer_auth::send_acceptor_greeting(
        &mut conn,
        entry.spec.info_hash,
        agent.peer_id,
        &entry.spec.token,
        guard.bitfield.clone(),
        &[],
    )
    .await?;
    // The dialer answers the greeting with its BITFIELD: the time until
    // that arrives is the round trip (plus the dialer checking our token).
    let opened = Opened::Accepted {
        greeted: Instant::now(),
        relays: understands_relay,
    };
    let res = run_session(entry, conn, &guard, ctl_tx, ctl_rx, cancel, opened).await;
    if let Err(e) = &res {
        if e.is_peer_fault() {
            tracing::warn!(peer = %addr, error = %e, "peer misbehaved; shunning it");
            entry.state.shun(addr.ip());
        }
    }
    drop(guard);
    res.or_else(|e| {
        if matches!(e, Error::Closed { .. }) {
            Ok(())
        } else {
            Err(e)
        }
    })
}
