//! One authenticated peer connection: a reader loop, a writer loop and an
//! upload loop under one `select!`.
//!
//! * The reader decodes messages, feeds the download side ([`TaskState`])
//!   and queues incoming REQUESTs. It never waits on the writer: control
//!   messages (REQUEST, CANCEL, INTERESTED) go through a bounded channel with
//!   `try_send`, whose bound the pipeline depth guarantees.
//! * The upload loop takes queued requests in order, reads each block
//!   through the shared [`Uploader`] (cache, disk, rate limits) and hands the
//!   PIECE to the writer over a small bounded channel. A block of a piece
//!   the agent relays from the seed comes from memory instead, as soon as it
//!   has arrived; a request for one that has not arrived yet lets the
//!   requests behind it pass ([`TaskState::servable`]). CANCEL removes a
//!   request that has not been read yet. More than [`MAX_QUEUED_REQUESTS`]
//!   pending requests is a protocol violation.
//! * The writer sends control messages first, then the announcements (HAVE
//!   for newly verified pieces, RELAY for pieces arriving from the seed),
//!   then PIECEs, and a keep-alive after [`KEEPALIVE_INTERVAL`] idle.
//!
//! The seed runs the same code with no download side; what it announces
//! comes from its super-seeding schedule ([`crate::super_seed`]).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pollen_protocol::{Message, PieceIndex};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::instrument;

use crate::connection::{Connection, FrameReader, FrameWriter, READ_TIMEOUT};
use crate::error::{Error, Result};
use crate::piece_picker::PeerKey;
use crate::super_seed::{SeedPeer, RELEASE_INTERVAL};
use crate::task_state::{PeerCounters, Servable, TaskState};
use crate::upload::Uploader;

/// Send a keep-alive after this long without writing.
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Most REQUESTs a peer may have pending with us.
pub(crate) const MAX_QUEUED_REQUESTS: usize = 256;
/// A peer that leaves our requests unanswered this long is dropped.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound of the control-message channel (requests are bounded by the
/// pipeline depth, so this never fills in practice).
pub(crate) const CONTROL_QUEUE: usize = 512;
const DATA_QUEUE: usize = 4;
/// How often an idle session re-asks the picker (seed fallback, endgame).
const WORK_TICK: Duration = Duration::from_millis(500);

/// The download side of a session.
pub(crate) struct DownloadSide {
    pub(crate) state: Arc<TaskState>,
    pub(crate) key: PeerKey,
    pub(crate) have_pos: usize,
    /// When we sent an accepted connection's greeting: its first message
    /// back measures the round trip.
    pub(crate) rtt_probe: Option<std::time::Instant>,
    /// Whether the peer is an agent that understands RELAY.
    pub(crate) relays: bool,
}

/// An append-only log of announcements: the agent's verified pieces (HAVE)
/// and the pieces it relays from the seed (RELAY), or what the seed's
/// schedule offers one connection (HAVE).
pub(crate) trait HaveLog: Send + Sync {
    /// Entries from position `pos` on, and the new position.
    fn announcements_since(&self, pos: usize) -> (Vec<Message>, usize);
}

/// Where a session's announcements come from: a log, a watch on its length,
/// and how much of it the peer already knows.
pub(crate) struct HaveFeed {
    pub(crate) log: Arc<dyn HaveLog>,
    pub(crate) changed: watch::Receiver<usize>,
    pub(crate) pos: usize,
    /// Whether RELAY announcements go to this peer.
    pub(crate) relays: bool,
}

/// A seed session's super-seeding state.
pub(crate) struct SeedSide {
    pub(crate) peer: Arc<SeedPeer>,
    /// Changes when the schedule announces more to this connection.
    pub(crate) changed: watch::Receiver<usize>,
    /// How many of its announcements the greeting already carried.
    pub(crate) sent: usize,
}

/// Everything a session needs besides the socket.
pub(crate) struct Session {
    pub(crate) peer: SocketAddr,
    pub(crate) uploader: Arc<Uploader>,
    pub(crate) download: Option<DownloadSide>,
    /// The seed side: the connection's place in the super-seeding schedule.
    pub(crate) seeding: Option<SeedSide>,
    pub(crate) counters: Arc<PeerCounters>,
    pub(crate) ctl_tx: mpsc::Sender<Message>,
    pub(crate) ctl_rx: mpsc::Receiver<Message>,
    pub(crate) cancel: CancellationToken,
    /// Whether INTERESTED was already sent during the greeting.
    pub(crate) interested: bool,
}

type Req = (PieceIndex, u32, u32);

#[derive(Default)]
struct RequestQueue {
    q: Mutex<VecDeque<Req>>,
    notify: Notify,
}

impl RequestQueue {
    fn push(&self, r: (PieceIndex, u32, u32)) -> Result<()> {
        let mut q = self.q.lock().unwrap_or_else(PoisonError::into_inner);
        if q.len() >= MAX_QUEUED_REQUESTS {
            return Err(Error::Violation {
                what: "too many pending requests",
            });
        }
        q.push_back(r);
        drop(q);
        self.notify.notify_one();
        Ok(())
    }

    fn cancel(&self, r: (PieceIndex, u32, u32)) {
        self.q
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|x| *x != r);
    }

    async fn pop(&self) -> Req {
        loop {
            if let Some(r) = self
                .q
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop_front()
            {
                return r;
            }
            self.notify.notified().await;
        }
    }

    /// The oldest request that `ready` can serve now, with what `ready`
    /// made of it. Requests for blocks of a relayed piece that have not
    /// arrived stay queued without holding up the ones behind them; they
    /// are looked at again when `progress` changes.
    async fn pop_ready<T>(
        &self,
        mut ready: impl FnMut(Req) -> Option<T>,
        progress: &mut watch::Receiver<u64>,
    ) -> Result<(Req, T)> {
        loop {
            progress.borrow_and_update();
            {
                let mut q = self.q.lock().unwrap_or_else(PoisonError::into_inner);
                let found = q
                    .iter()
                    .enumerate()
                    .find_map(|(n, r)| ready(*r).map(|t| (n, t)));
                if let Some((n, t)) = found {
                    if let Some(r) = q.remove(n) {
                        return Ok((r, t));
                    }
                }
            }
            tokio::select! {
                () = self.notify.notified() => {}
                changed = progress.changed() => changed.map_err(|_| Error::Stopped)?,
            }
        }
    }
}

impl Session {
    /// Runs the session until the peer leaves, an error occurs or `cancel`
    /// fires. A clean close by either side is `Ok`.
    ///
    /// # Errors
    /// Network errors, timeouts and protocol violations; see
    /// [`Error::is_peer_fault`] for the ones that warrant shunning.
    #[instrument(skip_all, fields(peer = %self.peer, seed_side = self.download.is_none()))]
    pub(crate) async fn run(self, conn: Connection) -> Result<()> {
        let Session {
            peer: _,
            uploader,
            download,
            seeding,
            counters,
            ctl_tx,
            ctl_rx,
            cancel,
            interested,
        } = self;
        let (reader, writer) = conn.into_split();
        let queue = RequestQueue::default();
        let (data_tx, data_rx) = mpsc::channel(DATA_QUEUE);
        let haves = match (&download, &seeding) {
            (Some(d), _) => Some(HaveFeed {
                log: d.state.clone(),
                changed: d.state.watch_haves(),
                pos: d.have_pos,
                relays: d.relays,
            }),
            (None, Some(side)) => Some(HaveFeed {
                log: side.peer.clone(),
                changed: side.changed.clone(),
                pos: side.sent,
                relays: false,
            }),
            (None, None) => None,
        };
        let mut r = Reader {
            uploader: &uploader,
            download: download.as_ref(),
            seeding: seeding.as_ref().map(|s| &*s.peer),
            ctl: &ctl_tx,
            queue: &queue,
            interested,
            choked: true,
            info_requests_left: 2 * uploader.info_chunks(),
        };
        let result = tokio::select! {
            res = r.run(reader) => res,
            res = write_loop(writer, ctl_rx, data_rx, haves) => res,
            res = serve_loop(&uploader, download.as_ref().map(|d| &*d.state), &counters, &queue, data_tx) => res,
            () = cancel.cancelled() => Ok(()),
        };
        tracing::debug!(result = ?result.as_ref().err(), "session ended");
        result
    }
}

struct Reader<'a> {
    uploader: &'a Uploader,
    download: Option<&'a DownloadSide>,
    seeding: Option<&'a SeedPeer>,
    ctl: &'a mpsc::Sender<Message>,
    queue: &'a RequestQueue,
    interested: bool,
    choked: bool,
    /// INFO_REQUESTs this peer may still make: enough to fetch the info
    /// dictionary twice, so that it cannot make us send it without end.
    info_requests_left: usize,
}

impl Reader<'_> {
    async fn run(&mut self, mut reader: FrameReader<OwnedReadHalf>) -> Result<()> {
        let mut last_block = Instant::now();
        let mut last_read = Instant::now();
        let mut rtt_probe = self.download.and_then(|d| d.rtt_probe);
        let mut work = self.download.map(|d| d.state.watch_work());
        let mut tick = tokio::time::interval(if self.seeding.is_some() {
            RELEASE_INTERVAL
        } else {
            WORK_TICK
        });
        loop {
            let woken = async {
                match work.as_mut() {
                    Some(w) => tokio::select! {
                        _ = w.changed() => {}
                        _ = tick.tick() => {}
                    },
                    None if self.seeding.is_some() => {
                        tick.tick().await;
                    }
                    None => std::future::pending().await,
                }
            };
            let left = READ_TIMEOUT.saturating_sub(last_read.elapsed());
            // `read_message` keeps partial frames in its buffer, so dropping
            // it for a wake-up loses nothing.
            let msg = tokio::select! {
                m = reader.read_message(left) => m?,
                () = woken => {
                    if let Some(s) = self.seeding {
                        s.tick();
                    }
                    if let Some(d) = self.download {
                        if d.state.both_complete(d.key) {
                            return Ok(());
                        }
                        if d.state.outstanding(d.key) == 0 {
                            last_block = Instant::now();
                        } else if last_block.elapsed() > REQUEST_TIMEOUT {
                            return Err(Error::Timeout { op: "waiting for requested blocks" });
                        }
                    }
                    self.request_more()?;
                    continue;
                }
            };
            last_read = Instant::now();
            if let (Some(sent), Some(d)) = (rtt_probe.take(), self.download) {
                d.state.set_rtt(d.key, sent.elapsed());
            }
            let Some(msg) = msg else { return Ok(()) };
            match msg {
                Message::KeepAlive | Message::Interested | Message::NotInterested => {}
                Message::Choke => {
                    self.choked = true;
                    if let Some(d) = self.download {
                        d.state.on_choke(d.key);
                    }
                }
                Message::Unchoke => {
                    self.choked = false;
                    self.request_more()?;
                }
                // A peer relaying a piece from the seed: its blocks can be
                // requested now, as for a HAVE.
                Message::Have(i) | Message::Relay(i) => {
                    let wanted = match self.download {
                        Some(d) => d.state.on_have(d.key, i)?,
                        None if !self.uploader.lengths().contains(i) => {
                            return Err(Error::Violation {
                                what: "HAVE for a piece outside the task",
                            })
                        }
                        None => {
                            if let (Some(s), Message::Have(_)) = (self.seeding, &msg) {
                                s.on_have(i);
                            }
                            false
                        }
                    };
                    if wanted {
                        self.want()?;
                        self.request_more()?;
                    }
                }
                Message::Bitfield(bytes) => {
                    let wanted = match self.download {
                        Some(d) => d.state.on_bitfield(d.key, &bytes)?,
                        None => {
                            let bf = pollen_protocol::bitfield::from_bytes(
                                &bytes,
                                self.uploader.lengths().num_pieces(),
                            )
                            .ok_or(Error::Violation {
                                what: "bitfield does not match the piece count",
                            })?;
                            if let Some(s) = self.seeding {
                                s.on_bitfield(&bf);
                            }
                            false
                        }
                    };
                    if wanted {
                        self.want()?;
                        self.request_more()?;
                    }
                }
                Message::Request {
                    index,
                    begin,
                    length,
                } => {
                    if !self.uploader.lengths().valid_request(index, begin, length) {
                        return Err(Error::Violation {
                            what: "request outside the piece",
                        });
                    }
                    if self.download.is_some_and(|d| !d.state.may_serve(index)) {
                        return Err(Error::Violation {
                            what: "request for a piece we do not have",
                        });
                    }
                    self.queue.push((index, begin, length))?;
                    if let Some(s) = self.seeding {
                        s.on_request(index);
                    }
                }
                Message::Cancel {
                    index,
                    begin,
                    length,
                } => self.queue.cancel((index, begin, length)),
                Message::Piece { index, begin, data } => {
                    let Some(d) = self.download else {
                        return Err(Error::Violation {
                            what: "PIECE sent to the seed",
                        });
                    };
                    let n = data.len() as u64;
                    d.state.on_piece(d.key, index, begin, data).await?;
                    last_block = Instant::now();
                    d.state.download_limits.consume(n).await;
                    self.request_more()?;
                }
                Message::Auth(_) => {
                    return Err(Error::Violation {
                        what: "AUTH after the handshake",
                    })
                }
                Message::InfoRequest { offset } => {
                    let reply = self
                        .info_requests_left
                        .checked_sub(1)
                        .and_then(|left| {
                            self.info_requests_left = left;
                            self.uploader.info_reply(offset)
                        })
                        .ok_or(Error::Violation {
                            what: "INFO_REQUEST past the info dictionary, or too many",
                        })?;
                    self.send(reply)?;
                }
                Message::InfoData { .. } => {
                    return Err(Error::Violation {
                        what: "INFO_DATA that was not asked for",
                    })
                }
            }
        }
    }

    fn send(&self, msg: Message) -> Result<()> {
        self.ctl.try_send(msg).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Error::Overloaded {
                what: "control queue",
            },
            mpsc::error::TrySendError::Closed(_) => Error::Stopped,
        })
    }

    fn want(&mut self) -> Result<()> {
        if !self.interested {
            self.interested = true;
            self.send(Message::Interested)?;
        }
        Ok(())
    }

    fn request_more(&mut self) -> Result<()> {
        let Some(d) = self.download else {
            return Ok(());
        };
        if self.choked {
            return Ok(());
        }
        for b in d.state.next_requests(d.key) {
            self.send(Message::Request {
                index: b.piece,
                begin: b.begin,
                length: b.length,
            })?;
        }
        Ok(())
    }
}

async fn serve_loop(
    uploader: &Uploader,
    state: Option<&TaskState>,
    counters: &PeerCounters,
    queue: &RequestQueue,
    data_tx: mpsc::Sender<Message>,
) -> Result<()> {
    let mut progress = state.map(TaskState::watch_relay);
    loop {
        let ((index, begin, length), buffered) = match (state, progress.as_mut()) {
            (Some(state), Some(progress)) => {
                queue
                    .pop_ready(
                        |(i, b, l)| match state.servable(i, b, l) {
                            Servable::Stored => Some(None),
                            Servable::Buffered(data) => Some(Some(data)),
                            Servable::NotYet => None,
                        },
                        progress,
                    )
                    .await?
            }
            _ => (queue.pop().await, None),
        };
        let data = match buffered {
            Some(data) => data,
            None => uploader.read_block(index, begin, length).await?,
        };
        uploader.throttle(u64::from(length)).await;
        if data_tx
            .send(Message::Piece { index, begin, data })
            .await
            .is_err()
        {
            return Ok(());
        }
        uploader.count_uploaded(u64::from(length));
        counters.up.fetch_add(u64::from(length), Ordering::Relaxed);
    }
}

/// Most bytes the writer gathers before one write.
const WRITE_BATCH: usize = 256 * 1024;

async fn write_loop(
    mut writer: FrameWriter<OwnedWriteHalf>,
    mut ctl_rx: mpsc::Receiver<Message>,
    mut data_rx: mpsc::Receiver<Message>,
    haves: Option<HaveFeed>,
) -> Result<()> {
    let (log, mut have_rx, mut have_pos, relays) = match haves {
        Some(f) => (Some(f.log), Some(f.changed), f.pos, f.relays),
        None => (None, None, 0, false),
    };
    let mut idle = Box::pin(tokio::time::sleep(KEEPALIVE_INTERVAL));
    loop {
        tokio::select! {
            biased;
            m = ctl_rx.recv() => {
                let Some(m) = m else { return Ok(()) };
                writer.queue(&m);
                while let Ok(m) = ctl_rx.try_recv() {
                    writer.queue(&m);
                }
            }
            changed = async { match have_rx.as_mut() { Some(rx) => rx.changed().await, None => std::future::pending().await } } => {
                if changed.is_err() {
                    have_rx = None;
                    continue;
                }
                if let Some(log) = &log {
                    let (new, pos) = log.announcements_since(have_pos);
                    have_pos = pos;
                    for m in new.iter().filter(|m| relays || !matches!(m, Message::Relay(_))) {
                        writer.queue(m);
                    }
                }
            }
            m = data_rx.recv() => {
                let Some(m) = m else { return Ok(()) };
                writer.queue(&m);
                // Coalesce blocks that are already waiting into one write:
                // one syscall per batch instead of one per block.
                while writer.pending() < WRITE_BATCH {
                    let Ok(m) = data_rx.try_recv() else { break };
                    writer.queue(&m);
                }
            }
            () = &mut idle => writer.queue(&Message::KeepAlive),
        }
        writer.flush().await?;
        idle.as_mut().reset(Instant::now() + KEEPALIVE_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(piece: u32) -> Req {
        (PieceIndex(piece), 0, 16 * 1024)
    }

    /// A request that cannot be served yet (a relayed block still on its
    /// way) does not hold up the ones queued behind it, and is served once
    /// the progress watch says its block arrived.
    #[tokio::test]
    async fn a_waiting_request_lets_later_ones_pass_and_is_served_on_progress() {
        let queue = RequestQueue::default();
        let (tx, mut rx) = watch::channel(0u64);
        let arrived = std::sync::atomic::AtomicBool::new(false);
        let ready = |r: Req| (r.0 .0 != 1 || arrived.load(Ordering::Relaxed)).then_some(r.0 .0);
        queue.push(req(1)).unwrap();
        queue.push(req(2)).unwrap();
        let (r, got) = queue.pop_ready(ready, &mut rx).await.unwrap();
        assert_eq!((r, got), (req(2), 2));

        // Only the waiting request is left: nothing is served until the
        // block arrives and the watch moves.
        let waiting =
            tokio::time::timeout(Duration::from_millis(50), queue.pop_ready(ready, &mut rx)).await;
        assert!(waiting.is_err(), "served a block that has not arrived");
        arrived.store(true, Ordering::Relaxed);
        tx.send_modify(|n| *n += 1);
        let (r, got) =
            tokio::time::timeout(Duration::from_secs(5), queue.pop_ready(ready, &mut rx))
                .await
                .expect("not woken by the progress watch")
                .unwrap();
        assert_eq!((r, got), (req(1), 1));

        // A CANCEL removes a waiting request.
        queue.push(req(3)).unwrap();
        queue.cancel(req(3));
        assert!(queue.q.lock().unwrap().is_empty());
    }
}
