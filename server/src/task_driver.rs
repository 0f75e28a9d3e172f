//! One task's lifecycle, run as one tracked tokio task per task:
//!
//! 1. **Build** the metainfo on the blocking pool (at most
//!    `build_concurrency` at once). A source that vanished since the `POST`
//!    ends the task `FILE_NOT_EXISTED` (GoFD's status for a missing file);
//!    any other build error fails it.
//! 2. **Queue** for a distribution slot: at most `control.maxActive` tasks
//!    distribute at once; the slot semaphore is fair, so waiting tasks start
//!    in the order their metainfo became ready (a slow hash never holds back
//!    a smaller task queued after it). Waiting tasks stay `INIT`.
//! 3. **Activate**: register the task with the seed (with the seed's own
//!    token), then push an [`AgentTask`] to every destination,
//!    `control.pushConcurrency` at a time. Each agent gets its own task token
//!    and a random peer set. An agent that cannot be reached or refuses is
//!    `FAILED` with the reason; the others go on.
//! 4. **Watch** until the task is final: reports (handled by the task
//!    manager) settle it; a watchdog fails destinations that stop reporting.
//! 5. **Clean up**: remove the task from the seed, free the slot, and send a
//!    signed `DELETE` to every agent that may hold the task, so it stops
//!    seeding (and, on cancel, drops its staging data).
//!
//! On server shutdown a driver just returns: the next start marks the task
//! failed (see [`crate::persistence`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;
use pollen_agent::seed::SeedTask;
use pollen_protocol::api::{pack_info, AgentTask, InfoEncoding};
use pollen_protocol::token::{TaskClaims, SEED_SUBJECT};
use tokio_util::sync::CancellationToken;
use tracing::instrument;

use crate::agent_client::AgentError;
use crate::metainfo_builder::{self, BuildError, BuiltMetainfo};
use crate::metrics::Metrics;
use crate::task_manager::{Inner, TaskEntry, TASK_TOKEN_TTL_SECS};

/// How a phase ended.
enum Step<T> {
    Go(T),
    /// The task is final (failed, completed or cancelled): clean up.
    Stopped,
    /// The server is shutting down: just return.
    Shutdown,
}

/// What every agent of a task is told, minus its own token and peers.
struct PushPlan {
    /// The packed info (see [`pack_info`]), the same for every agent.
    info: String,
    info_encoding: InfoEncoding,
    info_hash_hex: String,
    data_addrs: Vec<SocketAddr>,
    speed: Option<u64>,
    dest_dir: Option<String>,
}

impl Inner {
    /// Runs a task from `INIT` to its cleanup.
    #[instrument(skip_all, fields(task = %entry.id))]
    pub(crate) async fn drive(self: Arc<Self>, entry: Arc<TaskEntry>) {
        let built = match self.build(&entry).await {
            Step::Go(b) => b,
            Step::Stopped => return self.finish(&entry, None).await,
            Step::Shutdown => return,
        };
        let permit = tokio::select! {
            biased;
            () = self.shutdown.cancelled() => return,
            () = entry.stop.cancelled() => return self.finish(&entry, None).await,
            p = self.active_slots.clone().acquire_owned() => p,
        };
        let Ok(permit) = permit else { return };
        match self.activate(&entry, &built) {
            Ok(Some(plan)) => {
                tokio::select! {
                    biased;
                    () = self.shutdown.cancelled() => return,
                    () = self.push_all(&entry, &plan) => {}
                }
            }
            Ok(None) => {}
            Err(reason) => self.fail_task(&entry, &reason),
        }
        match self.watch(&entry).await {
            Step::Shutdown => return,
            Step::Go(()) | Step::Stopped => {}
        }
        self.seed_done(&entry, &built);
        drop(permit);
        self.finish(&entry, Some(&built)).await;
    }

    async fn build(&self, entry: &TaskEntry) -> Step<Arc<BuiltMetainfo>> {
        let slot = tokio::select! {
            biased;
            () = self.shutdown.cancelled() => return Step::Shutdown,
            () = entry.stop.cancelled() => return Step::Stopped,
            s = self.build_slots.acquire() => s,
        };
        let Ok(_slot) = slot else {
            return Step::Shutdown;
        };
        let (files, piece_length) = {
            let t = entry.lock();
            (t.spec.files.clone(), t.spec.piece_length)
        };
        let cancel = CancellationToken::new();
        let _cancel_on_exit = cancel.clone().drop_guard();
        let job = self
            .tracker
            .spawn_blocking(move || metainfo_builder::build(&files, piece_length, &cancel));
        let started = std::time::Instant::now();
        let result = tokio::select! {
            biased;
            () = self.shutdown.cancelled() => return Step::Shutdown,
            () = entry.stop.cancelled() => return Step::Stopped,
            r = job => r,
        };
        match result {
            Ok(Ok(b)) => {
                tracing::info!(
                    info_hash = %b.info_hash,
                    pieces = b.info.pieces.len() / 20,
                    piece_length = b.info.piece_length,
                    bytes = b.info.total_length(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "metainfo built"
                );
                entry
                    .lock()
                    .set_built(b.info_hash, b.info.files.iter().map(|f| f.length).collect());
                self.mark_dirty(&entry.id);
                Step::Go(Arc::new(b))
            }
            Ok(Err(BuildError::Cancelled)) => Step::Stopped,
            Ok(Err(e @ BuildError::Vanished { .. })) => {
                let reason = e.to_string();
                if entry.lock().source_missing(&reason, Utc::now()) {
                    tracing::warn!(%reason, "a source vanished before the build read it");
                    self.mark_dirty(&entry.id);
                }
                entry.stop.cancel();
                Step::Stopped
            }
            Ok(Err(e)) => {
                self.fail_task(entry, &e.to_string());
                Step::Stopped
            }
            Err(e) => {
                tracing::error!(error = %e, "metainfo job panicked");
                self.fail_task(entry, "internal error while hashing the files");
                Step::Stopped
            }
        }
    }

    fn fail_task(&self, entry: &TaskEntry, reason: &str) {
        if entry.lock().fail(reason, Utc::now()) {
            tracing::warn!(%reason, "task failed");
            self.mark_dirty(&entry.id);
        }
        entry.stop.cancel();
    }

    /// Registers the task with the seed and prepares the push. `None` when
    /// the task was cancelled meanwhile.
    fn activate(
        &self,
        entry: &TaskEntry,
        built: &BuiltMetainfo,
    ) -> Result<Option<PushPlan>, String> {
        let ih = built.info_hash.to_hex();
        let bencoded = built
            .info
            .to_bencode()
            .map_err(|e| format!("cannot encode the metainfo: {e}"))?;
        let (info, info_encoding) = pack_info(&bencoded);
        let info_bytes = Bytes::from(bencoded);
        let seed_token = self
            .keys
            .signer
            .sign(&TaskClaims::new(
                SEED_SUBJECT,
                entry.id.as_str(),
                &ih,
                TASK_TOKEN_TTL_SECS,
            ))
            .map_err(|e| format!("cannot sign the seed token: {e}"))?;
        let plan = {
            let mut t = entry.lock();
            if t.status.is_final() {
                return Ok(None);
            }
            t.start(Utc::now());
            PushPlan {
                info,
                info_encoding,
                info_hash_hex: ih,
                data_addrs: t
                    .dests
                    .iter()
                    .map(|d| SocketAddr::new(d.ip, self.opts.agent_data_port))
                    .collect(),
                speed: t.spec.speed_bytes_per_sec,
                dest_dir: t.spec.dest_dir.clone(),
            }
        };
        self.mark_dirty(&entry.id);
        self.seed.add_task(SeedTask {
            task_id: entry.id.clone(),
            info: Arc::new(built.info.clone()),
            info_hash: built.info_hash,
            info_bytes,
            sources: built.sources.clone(),
            token: seed_token,
            speed_bytes_per_sec: plan.speed,
        });
        tracing::info!(dests = plan.data_addrs.len(), "distribution started");
        Ok(Some(plan))
    }

    /// Pushes the task to every destination, `push_concurrency` at a time.
    /// With slim pushes, the first [`full_pushes`] destinations get the
    /// whole metainfo and the others, at the same time, a push without the
    /// info dictionary that names those as its sources (see
    /// `agent/src/info_fetch.rs`); a slim push that fails is made again
    /// whole. Once the task stops (cancelled, or every destination already
    /// final), no new push starts; pushes in flight finish and are
    /// recorded, so the cleanup knows whom to tell.
    async fn push_all(&self, entry: &TaskEntry, plan: &PushPlan) {
        let targets: Vec<(usize, IpAddr)> = {
            let t = entry.lock();
            t.dests
                .iter()
                .enumerate()
                .filter(|(_, d)| !d.status.is_final())
                .map(|(i, d)| (i, d.ip))
                .collect()
        };
        let n = targets.len();
        let from = self.opts.slim_pushes_from;
        let k = if from > 0 && n >= from {
            full_pushes(n)
        } else {
            n
        };
        // Every push goes out at once, so that no destination starts late:
        // a staggered start costs the swarm more than the pushes' bytes.
        // A slim destination asks its holders again until they have taken
        // the task (the agent's `HOLDER_WAIT`).
        let holders: Vec<SocketAddr> = targets[..k]
            .iter()
            .map(|&(_, ip)| SocketAddr::new(ip, self.opts.agent_data_port))
            .collect();
        futures::stream::iter(targets.into_iter().enumerate())
            .map(|(at, (i, ip))| {
                let from = if at < k {
                    Vec::new()
                } else {
                    rotated(&holders, at - k)
                };
                self.push_one(entry, plan, i, ip, from)
            })
            .buffer_unordered(self.opts.push_concurrency.max(1))
            .collect::<()>()
            .await;
    }

    /// Pushes to destination `i`: a slim push naming `info_from` as the
    /// info dictionary's sources, or a whole push when that is empty.
    async fn push_one(
        &self,
        entry: &TaskEntry,
        plan: &PushPlan,
        i: usize,
        ip: IpAddr,
        info_from: Vec<SocketAddr>,
    ) {
        if entry.stop.is_cancelled() {
            return;
        }
        let slim = !info_from.is_empty();
        let mut result = self.send_task(entry, plan, i, ip, info_from).await;
        if slim && result.is_ok() {
            Metrics::inc(&self.metrics.pushes_slim);
        }
        if slim && result.is_err() && !entry.stop.is_cancelled() {
            if let Err(e) = &result {
                tracing::debug!(agent = %ip, error = %e, "slim push failed; pushing the whole metainfo");
            }
            result = self.send_task(entry, plan, i, ip, Vec::new()).await;
        }
        self.record_push(entry, i, ip, result);
    }

    /// Builds destination `i`'s [`AgentTask`] and sends it.
    async fn send_task(
        &self,
        entry: &TaskEntry,
        plan: &PushPlan,
        i: usize,
        ip: IpAddr,
        info_from: Vec<SocketAddr>,
    ) -> Result<(), AgentError> {
        let task = self.agent_task(entry, plan, i, ip, info_from)?;
        self.agents.push(ip, &task).await
    }

    fn agent_task(
        &self,
        entry: &TaskEntry,
        plan: &PushPlan,
        i: usize,
        ip: IpAddr,
        info_from: Vec<SocketAddr>,
    ) -> Result<AgentTask, AgentError> {
        let claims = TaskClaims::new(
            &ip.to_string(),
            entry.id.as_str(),
            &plan.info_hash_hex,
            TASK_TOKEN_TTL_SECS,
        );
        let token = self.keys.signer.sign(&claims)?;
        Ok(AgentTask {
            task_id: entry.id.clone(),
            // A slim push leaves the dictionary to `info_from`.
            info: if info_from.is_empty() {
                plan.info.clone()
            } else {
                String::new()
            },
            info_encoding: if info_from.is_empty() {
                plan.info_encoding
            } else {
                InfoEncoding::Raw
            },
            info_hash: pollen_protocol::InfoHash::from_hex(&plan.info_hash_hex)
                .ok_or_else(|| AgentError::Build("bad info-hash".into()))?,
            token,
            peers: peer_set(&plan.data_addrs, i, self.opts.peer_set_size),
            seed: self.opts.seed_addr,
            report_url: self.opts.report_url.clone(),
            speed_bytes_per_sec: plan.speed,
            dest_dir: plan.dest_dir.clone(),
            info_from,
        })
    }

    fn record_push(&self, entry: &TaskEntry, i: usize, ip: IpAddr, result: Result<(), AgentError>) {
        let now = Utc::now();
        let became_final = {
            let mut t = entry.lock();
            match &result {
                Ok(()) => {
                    Metrics::inc(&self.metrics.pushes_ok);
                    tracing::debug!(agent = %ip, "task handed to the agent");
                    t.push_accepted(i, now, tokio::time::Instant::now());
                }
                Err(e) => {
                    Metrics::inc(&self.metrics.pushes_failed);
                    tracing::warn!(agent = %ip, error = %e, "cannot hand the task to the agent");
                    if let Some(d) = t.dests.get_mut(i) {
                        d.pushed |= e.maybe_delivered();
                    }
                    t.fail_dest(i, &e.to_string(), now);
                }
            }
            t.settle(now)
        };
        self.mark_dirty(&entry.id);
        if became_final {
            entry.stop.cancel();
        }
    }

    /// Waits until the task stops, failing destinations that went silent.
    async fn watch(&self, entry: &TaskEntry) -> Step<()> {
        let mut tick = tokio::time::interval(self.opts.watchdog_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Step::Shutdown,
                () = entry.stop.cancelled() => return Step::Go(()),
                _ = tick.tick() => self.watchdog(entry),
            }
        }
    }

    fn watchdog(&self, entry: &TaskEntry) {
        let now = tokio::time::Instant::now();
        let limit = self.opts.report_timeout;
        let reason = format!(
            "agent stopped reporting (no report for {}s)",
            limit.as_secs()
        );
        let became_final = {
            let mut t = entry.lock();
            let silent: Vec<usize> = t
                .dests
                .iter()
                .enumerate()
                .filter(|(_, d)| {
                    d.pushed
                        && !d.status.is_final()
                        && d.last_heard.is_some_and(|h| now.duration_since(h) >= limit)
                })
                .map(|(i, _)| i)
                .collect();
            if silent.is_empty() {
                return;
            }
            let wall = Utc::now();
            for &i in &silent {
                tracing::warn!(agent = %t.dests[i].ip, "agent stopped reporting");
                t.fail_dest(i, &reason, wall);
            }
            t.settle(wall)
        };
        self.mark_dirty(&entry.id);
        if became_final {
            entry.stop.cancel();
        }
    }

    /// Takes the task off the seed, keeping its upload count. The task's
    /// lock is held across the removal, so a status read (which takes the
    /// task's lock, then asks the seed) sees either the seed's live count or
    /// the recorded one, never neither.
    fn seed_done(&self, entry: &TaskEntry, built: &BuiltMetainfo) {
        let mut t = entry.lock();
        if let Some(bytes) = self.seed.remove_task(&entry.id, &built.info_hash) {
            t.seed_bytes = t.seed_bytes.max(bytes);
        }
    }

    /// Tells every agent that may hold the task to drop it.
    async fn finish(&self, entry: &TaskEntry, built: Option<&BuiltMetainfo>) {
        let (targets, status) = {
            let t = entry.lock();
            (
                t.dests
                    .iter()
                    .filter(|d| d.pushed)
                    .map(|d| d.ip)
                    .collect::<Vec<_>>(),
                t.status,
            )
        };
        self.mark_dirty(&entry.id);
        tracing::info!(
            status = status.as_str(),
            info_hash = built.map(|b| b.info_hash.to_hex()),
            agents = targets.len(),
            "task finished; stopping its agents"
        );
        let deletes = futures::stream::iter(targets)
            .map(|ip| async move {
                if let Err(e) = self.agents.delete(ip, &entry.id).await {
                    tracing::info!(agent = %ip, error = %e, "cannot tell the agent to drop the task; it will at its next report");
                }
            })
            .buffer_unordered(self.opts.push_concurrency.max(1))
            .collect::<()>();
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => {}
            () = deletes => {}
        }
    }
}

/// How many of `n` destinations get the whole metainfo when the rest get
/// slim pushes: at least 4, and about the square root of `n`, so that each
/// of them serves the dictionary to about as many others as there are of
/// them.
fn full_pushes(n: usize) -> usize {
    let mut root = 1;
    while root * root < n {
        root += 1;
    }
    root.max(4).min(n)
}

/// `holders`, starting at the `n`-th (modulo their number), so that slim
/// pushes spread their fetches over every holder.
fn rotated(holders: &[SocketAddr], n: usize) -> Vec<SocketAddr> {
    let mut v = holders.to_vec();
    if !v.is_empty() {
        let at = n % v.len();
        v.rotate_left(at);
    }
    v
}

/// Up to `k` data addresses other than `me`'s, chosen at random.
fn peer_set(all: &[SocketAddr], me: usize, k: usize) -> Vec<SocketAddr> {
    let others = all.len().saturating_sub(1);
    let mut rng = rand::thread_rng();
    rand::seq::index::sample(&mut rng, others, k.min(others))
        .into_iter()
        .map(|j| if j >= me { all[j + 1] } else { all[j] })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_pushes_are_at_least_four_and_about_the_square_root() {
        let got: Vec<usize> = [0, 1, 3, 4, 5, 16, 17, 100, 1000]
            .iter()
            .map(|&n| full_pushes(n))
            .collect();
        assert_eq!(got, [0, 1, 3, 4, 4, 4, 5, 10, 32]);
    }

    #[test]
    fn slim_pushes_start_at_different_holders() {
        let h: Vec<SocketAddr> = (1..=3)
            .map(|i| SocketAddr::from(([127, 0, 0, i], 1)))
            .collect();
        assert_eq!(rotated(&h, 0), h);
        assert_eq!(rotated(&h, 4), vec![h[1], h[2], h[0]]);
        assert!(rotated(&[], 5).is_empty());
    }

    #[test]
    fn peer_sets_exclude_self_and_are_bounded() {
        let all: Vec<SocketAddr> = (1..=50)
            .map(|i| SocketAddr::from(([127, 2, 0, i], 45011)))
            .collect();
        for me in [0, 7, 49] {
            let p = peer_set(&all, me, 30);
            assert_eq!(p.len(), 30);
            assert!(!p.contains(&all[me]));
            let unique: std::collections::HashSet<_> = p.iter().collect();
            assert_eq!(unique.len(), 30);
        }
        assert_eq!(peer_set(&all[..1], 0, 30), Vec::<SocketAddr>::new());
        assert_eq!(peer_set(&all[..3], 1, 30).len(), 2);
    }
}
