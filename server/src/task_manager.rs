//! The task registry and the operations the REST API calls: create, query,
//! list, cancel, and agents' progress reports.
//!
//! Each operation takes the registry lock or one task's lock briefly, never
//! across an `.await`. Everything slow happens elsewhere: request validation
//! walks the file system on the blocking pool, and each task's lifecycle
//! (metainfo, queue, push, watchdog, cleanup) runs in its own driver (see
//! [`crate::task_driver`]). Status changes mark the task dirty; one writer
//! saves dirty tasks at most once per `persist_interval` each.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::Utc;
use pollen_protocol::api::{CreateTaskRequest, ProgressReport, TaskInfo, TaskList, TaskStatus};
use pollen_protocol::token::{TaskClaims, AUD_TASK};
use pollen_protocol::TaskId;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::instrument;

use crate::agent_client::AgentClient;
use crate::api_error::{kind, ApiError};
use crate::bootstrap::Keys;
use crate::error::{Error, Result};
use crate::manager_options::ManagerOptions;
use crate::metrics::{Metrics, Snapshot};
use crate::persistence::Store;
use crate::seed_port::SeedPort;
use crate::task::Task;
use crate::task_spec::TaskSpec;

/// Lifetime of task tokens: 7 days.
pub const TASK_TOKEN_TTL_SECS: i64 = 7 * 24 * 3600;

/// Request validations (file system walks) running at once.
const MAX_CONCURRENT_WALKS: usize = 4;

/// One task in the registry.
#[derive(Debug)]
pub(crate) struct TaskEntry {
    pub(crate) id: TaskId,
    state: Mutex<Task>,
    /// Fired when the task becomes final (or is cancelled): its driver then
    /// cleans up.
    pub(crate) stop: CancellationToken,
}

impl TaskEntry {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Task> {
        // A panic while holding the lock cannot leave a `Task` half-updated
        // in a way that matters more than losing the server; keep serving.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

pub(crate) struct Inner {
    pub(crate) opts: ManagerOptions,
    pub(crate) keys: Keys,
    pub(crate) agents: AgentClient,
    pub(crate) seed: Arc<dyn SeedPort>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) build_slots: Semaphore,
    walk_slots: Semaphore,
    pub(crate) active_slots: Arc<Semaphore>,
    pub(crate) tracker: TaskTracker,
    pub(crate) shutdown: CancellationToken,
    tasks: Mutex<HashMap<TaskId, Arc<TaskEntry>>>,
    store: Option<Store>,
    dirty: Mutex<HashSet<TaskId>>,
    dirty_notify: Notify,
    /// One flush at a time, so two writes of one task never interleave.
    flush_lock: tokio::sync::Mutex<()>,
}

/// The task manager: a cheap, cloneable handle.
#[derive(Clone)]
pub struct TaskManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TaskManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskManager")
            .field("opts", &self.inner.opts)
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn registry(&self) -> MutexGuard<'_, HashMap<TaskId, Arc<TaskEntry>>> {
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn entry(&self, id: &str) -> Option<Arc<TaskEntry>> {
        let id = TaskId::new(id).ok()?;
        self.registry().get(&id).cloned()
    }

    /// Queues a save of task `id`.
    pub(crate) fn mark_dirty(&self, id: &TaskId) {
        if self.store.is_none() {
            return;
        }
        self.dirty
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.clone());
        self.dirty_notify.notify_one();
    }

    /// The seed's live counter for a task it serves: also after the task
    /// turned final and before the seed let go of it, when the recorded
    /// count is not taken yet.
    pub(crate) fn live_seed_bytes(&self, task: &Task) -> Option<u64> {
        let ih = task.info_hash?;
        self.seed.task_uploaded(task.id(), &ih)
    }

    async fn flush_dirty(&self) {
        let Some(store) = &self.store else { return };
        let _one_at_a_time = self.flush_lock.lock().await;
        let ids: Vec<TaskId> = self
            .dirty
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain()
            .collect();
        for id in ids {
            let Some(entry) = self.registry().get(&id).cloned() else {
                continue;
            };
            let snapshot = entry.lock().clone();
            let store = store.clone();
            match tokio::task::spawn_blocking(move || store.save(&snapshot)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(task = %id, error = %e, "cannot save task state"),
                Err(e) => tracing::warn!(task = %id, error = %e, "task save job failed"),
            }
        }
    }

    async fn persist_loop(self: Arc<Self>) {
        loop {
            tokio::select! {
                () = self.dirty_notify.notified() => {}
                () = self.shutdown.cancelled() => break,
            }
            self.flush_dirty().await;
            tokio::select! {
                () = tokio::time::sleep(self.opts.persist_interval) => {}
                () = self.shutdown.cancelled() => break,
            }
        }
        self.flush_dirty().await;
    }
}

impl TaskManager {
    /// A manager with no tasks. Spawns its persistence writer on `tracker`;
    /// drivers of new tasks are spawned there too and end with `shutdown`.
    ///
    /// # Errors
    /// If the agent HTTP client cannot be built.
    pub fn new(
        opts: ManagerOptions,
        keys: Keys,
        seed: Arc<dyn SeedPort>,
        store: Option<Store>,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Result<Self> {
        let agents =
            AgentClient::new(keys.signer.clone(), opts.agent.clone()).map_err(Error::Client)?;
        let inner = Arc::new(Inner {
            active_slots: Arc::new(Semaphore::new(opts.max_active.max(1))),
            build_slots: Semaphore::new(opts.build_concurrency.max(1)),
            walk_slots: Semaphore::new(MAX_CONCURRENT_WALKS),
            opts,
            keys,
            agents,
            seed,
            metrics: Arc::new(Metrics::default()),
            tracker,
            shutdown,
            tasks: Mutex::new(HashMap::new()),
            store,
            dirty: Mutex::new(HashSet::new()),
            dirty_notify: Notify::new(),
            flush_lock: tokio::sync::Mutex::new(()),
        });
        inner.tracker.spawn(inner.clone().persist_loop());
        Ok(Self { inner })
    }

    /// The event counters.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Loads saved tasks. Tasks that were not final are failed with "server
    /// restarted" (their metainfo and seed state are gone). Returns how many
    /// were loaded.
    ///
    /// # Errors
    /// If the store cannot be listed.
    pub async fn restore(&self) -> Result<usize> {
        let Some(store) = self.inner.store.clone() else {
            return Ok(0);
        };
        let tasks = tokio::task::spawn_blocking(move || store.load_all()).await??;
        let n = tasks.len();
        let now = Utc::now();
        let mut reg = self.inner.registry();
        for mut task in tasks {
            let id = task.id().clone();
            if task.fail("server restarted", now) {
                tracing::info!(task = %id, "task was unfinished when the server stopped; marked FAILED");
                self.inner.mark_dirty(&id);
            }
            let stop = CancellationToken::new();
            stop.cancel();
            reg.insert(
                id.clone(),
                Arc::new(TaskEntry {
                    id,
                    state: Mutex::new(task),
                    stop,
                }),
            );
        }
        Ok(n)
    }

    /// `POST /api/v1/server/tasks`: validates and registers a task, then
    /// starts its driver. Re-posting an identical request is accepted again.
    ///
    /// # Errors
    /// 400 `TASK_EXISTED` for the same id with another body; 400 naming the
    /// field for an invalid request; 503 `TOO_MANY_TASKS` when the registry is
    /// full of unfinished tasks.
    #[instrument(skip_all, fields(task = %req.id))]
    pub async fn create(&self, req: CreateTaskRequest) -> Result<TaskInfo, ApiError> {
        let id = TaskSpec::check_id(&req.id)?;
        if let Some(found) = self.existing(&id, &req) {
            return found;
        }
        let fields = TaskSpec::check_fields(&req)?;
        let spec = {
            let _slot = self
                .inner
                .walk_slots
                .acquire()
                .await
                .map_err(ApiError::internal)?;
            let files = req.dispatch_files.clone();
            tokio::task::spawn_blocking(move || TaskSpec::with_files(fields, &files))
                .await
                .map_err(ApiError::internal)??
        };
        let entry = {
            let mut reg = self.inner.registry();
            if let Some(e) = reg.get(&id) {
                let e = e.clone();
                drop(reg);
                return Self::same_or_existed(&e, &req);
            }
            self.make_room(&mut reg)?;
            let task = Task::new(req, spec, Utc::now());
            let entry = Arc::new(TaskEntry {
                id: id.clone(),
                state: Mutex::new(task),
                stop: CancellationToken::new(),
            });
            reg.insert(id.clone(), entry.clone());
            entry
        };
        Metrics::inc(&self.inner.metrics.tasks_created);
        self.inner.mark_dirty(&id);
        let info = entry.lock().info(None);
        tracing::info!(
            dests = info.dispatch_infos.len(),
            bytes = info.total_bytes,
            "task accepted"
        );
        self.inner.tracker.spawn(self.inner.clone().drive(entry));
        Ok(info)
    }

    fn existing(&self, id: &TaskId, req: &CreateTaskRequest) -> Option<Result<TaskInfo, ApiError>> {
        let e = self.inner.registry().get(id).cloned()?;
        Some(Self::same_or_existed(&e, req))
    }

    fn same_or_existed(e: &TaskEntry, req: &CreateTaskRequest) -> Result<TaskInfo, ApiError> {
        let t = e.lock();
        if t.request == *req {
            Ok(t.info(None))
        } else {
            Err(ApiError::task_existed(&req.id))
        }
    }

    /// Forgets the oldest final tasks while the registry is full.
    fn make_room(&self, reg: &mut HashMap<TaskId, Arc<TaskEntry>>) -> Result<(), ApiError> {
        while reg.len() >= self.inner.opts.max_tasks {
            let oldest = reg
                .values()
                .filter_map(|e| {
                    let t = e.lock();
                    t.status.is_final().then(|| (t.created_at, e.id.clone()))
                })
                .min();
            let Some((_, id)) = oldest else {
                return Err(ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    kind::TOO_MANY_TASKS,
                    format!("{} unfinished tasks; try again later", reg.len()),
                ));
            };
            reg.remove(&id);
            if let Some(store) = self.inner.store.clone() {
                self.inner.tracker.spawn_blocking(move || {
                    if let Err(e) = store.remove(&id) {
                        tracing::warn!(task = %id, error = %e, "cannot remove forgotten task's file");
                    }
                });
            }
        }
        Ok(())
    }

    /// `GET /api/v1/server/tasks/{id}`.
    ///
    /// # Errors
    /// 400 `TASK_NOT_EXISTED`.
    pub fn get(&self, id: &str) -> Result<TaskInfo, ApiError> {
        let e = self
            .inner
            .entry(id)
            .ok_or_else(|| ApiError::task_not_existed(id))?;
        let t = e.lock();
        Ok(t.info(self.inner.live_seed_bytes(&t)))
    }

    /// `GET /api/v1/server/tasks`, oldest first.
    pub fn list(&self) -> TaskList {
        let entries: Vec<Arc<TaskEntry>> = self.inner.registry().values().cloned().collect();
        let mut tasks: Vec<_> = entries.iter().map(|e| e.lock().summary()).collect();
        tasks.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        TaskList { tasks }
    }

    /// `DELETE /api/v1/server/tasks/{id}`: cancels the task. Its agents are
    /// told to stop and drop their staging data; published files stay.
    /// Cancelling a finished task changes nothing.
    ///
    /// # Errors
    /// 400 `TASK_NOT_EXISTED`.
    #[instrument(skip_all, fields(task = %id))]
    pub fn cancel(&self, id: &str) -> Result<(), ApiError> {
        let e = self
            .inner
            .entry(id)
            .ok_or_else(|| ApiError::task_not_existed(id))?;
        if e.lock().cancel(Utc::now()) {
            tracing::info!("task cancelled");
            self.inner.mark_dirty(&e.id);
            e.stop.cancel();
        }
        Ok(())
    }

    /// Verifies the task token of a report (audience [`AUD_TASK`]).
    ///
    /// # Errors
    /// 401 (`WWW-Authenticate: Bearer`) for a missing or invalid token.
    pub fn verify_report_token(&self, bearer: Option<&str>) -> Result<TaskClaims, ApiError> {
        let token =
            bearer.ok_or_else(|| ApiError::unauthorized_bearer("a task token is required"))?;
        self.inner
            .keys
            .verifier
            .verify(token, AUD_TASK)
            .map_err(|e| ApiError::unauthorized_bearer(format!("task token rejected: {e}")))
    }

    /// `POST /api/v1/server/reports`: applies an agent's progress report,
    /// whose token [`TaskManager::verify_report_token`] accepted, to
    /// `dispatchInfos[claims.sub]`.
    ///
    /// # Errors
    /// 401 when the token is for another task or not for a destination;
    /// 410 `TASK_NOT_EXISTED` / `TASK_CANCELED` / `TASK_FINISHED` when the
    /// agent should stop; 400 for a report that does not fit the task.
    #[instrument(skip_all, fields(task = %report.task_id, agent = %claims.sub))]
    pub fn report(&self, claims: &TaskClaims, report: ProgressReport) -> Result<(), ApiError> {
        if claims.tid != report.task_id.as_str() {
            return Err(ApiError::unauthorized_bearer(
                "the task token is for another task",
            ));
        }
        let ip: IpAddr = claims
            .sub
            .parse()
            .map_err(|_| ApiError::unauthorized_bearer("the task token is not a destination's"))?;
        let id = report.task_id.as_str().to_owned();
        let entry = self.inner.entry(&id).ok_or_else(|| {
            ApiError::gone(
                kind::TASK_NOT_EXISTED,
                format!("task {id:?} does not exist"),
            )
        })?;
        let became_final = {
            let mut t = entry.lock();
            if t.info_hash.is_some_and(|ih| ih.to_hex() != claims.ih) {
                return Err(ApiError::gone(
                    kind::TASK_NOT_EXISTED,
                    format!("task {id:?} was replaced"),
                ));
            }
            let idx = t.dest_index(ip).ok_or_else(|| {
                ApiError::unauthorized_bearer(format!("{ip} is not a destination of task {id:?}"))
            })?;
            match t.status {
                TaskStatus::Canceled => {
                    return Err(ApiError::gone(
                        kind::TASK_CANCELED,
                        format!("task {id:?} was cancelled"),
                    ))
                }
                s if s.is_final() => {
                    return Err(ApiError::gone(
                        kind::TASK_FINISHED,
                        format!("task {id:?} is {}", s.as_str()),
                    ));
                }
                _ => {}
            }
            let files = t.file_lengths.as_ref().map_or(t.spec.files.len(), Vec::len);
            if report.file_bytes_done.len() != files {
                return Err(ApiError::bad_request(format!(
                    "fileBytesDone has {} entries; the task has {files} files",
                    report.file_bytes_done.len()
                )));
            }
            let now = Utc::now();
            let changed = t.apply_report(idx, report, now, tokio::time::Instant::now());
            if changed {
                let d = &t.dests[idx];
                tracing::info!(agent = %ip, status = d.status.as_str(), error = d.error.as_deref(), "destination status changed");
                self.inner.mark_dirty(&entry.id);
            }
            t.settle(now)
        };
        if became_final {
            entry.stop.cancel();
        }
        Ok(())
    }

    /// The values of `GET /metrics` computed from the registry, and the
    /// rendered exposition.
    pub fn render_metrics(&self) -> String {
        let entries: Vec<Arc<TaskEntry>> = self.inner.registry().values().cloned().collect();
        let mut snap = Snapshot::default();
        for e in entries {
            let t = e.lock();
            *snap.tasks_by_status.entry(t.status.as_str()).or_default() += 1;
            snap.seed_bytes += self
                .inner
                .live_seed_bytes(&t)
                .unwrap_or(t.seed_bytes)
                .max(t.seed_bytes);
        }
        let max = self.inner.opts.max_active.max(1);
        snap.active_tasks = (max - self.inner.active_slots.available_permits().min(max)) as u64;
        self.inner.metrics.render(&snap)
    }

    /// Writes every pending task change now (used at shutdown).
    pub async fn flush(&self) {
        self.inner.flush_dirty().await;
    }
}
