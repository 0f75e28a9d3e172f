//! One task's state and every status transition, as plain data.
//!
//! No I/O and no locking here: the task manager holds a `Task` under a mutex
//! and calls these methods, so the rules (GoFD's status strings; a task is
//! `COMPLETED` only when every destination is, `FAILED` once all are final
//! and any failed; final states are sticky) are unit-tested directly. The
//! struct is also the persisted form (see [`crate::persistence`]).

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use pollen_protocol::api::{AgentTaskState, CreateTaskRequest, ProgressReport, TaskStatus};
use pollen_protocol::{InfoHash, TaskId};
use serde::{Deserialize, Serialize};

use crate::task_spec::TaskSpec;

/// Most peers and shunned peers kept from one report.
const MAX_PEERS_KEPT: usize = 256;
/// Most per-host reasons quoted in a failed task's `error`.
const MAX_REASONS: usize = 5;
/// Longest reason kept, in characters.
const MAX_REASON_CHARS: usize = 300;

/// One destination of a task.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Destination {
    /// The `destIPs` string, key of `dispatchInfos`.
    pub key: String,
    pub ip: IpAddr,
    pub status: TaskStatus,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    /// The agent may hold the task, so it gets a `DELETE` when the task ends.
    pub pushed: bool,
    /// The latest report.
    pub report: Option<ProgressReport>,
    /// When the agent was last heard from (accepted the push or reported).
    #[serde(skip)]
    pub last_heard: Option<tokio::time::Instant>,
}

/// A task.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Task {
    /// The request as received, for idempotent re-posts.
    pub request: CreateTaskRequest,
    pub spec: TaskSpec,
    pub status: TaskStatus,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    pub info_hash: Option<InfoHash>,
    /// File lengths from the metainfo, once built.
    pub file_lengths: Option<Vec<u64>>,
    /// Bytes the seed uploaded, recorded when the task left the seed.
    pub seed_bytes: u64,
    pub dests: Vec<Destination>,
}

fn truncate(s: &str) -> String {
    if s.chars().count() <= MAX_REASON_CHARS {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(MAX_REASON_CHARS).collect();
        t.push('…');
        t
    }
}

impl Destination {
    fn finish(&mut self, status: TaskStatus, error: Option<String>, now: DateTime<Utc>) {
        self.status = status;
        self.error = error.map(|e| truncate(&e));
        self.finished_at.get_or_insert(now);
    }
}

impl Task {
    /// A new task in `INIT`.
    pub fn new(request: CreateTaskRequest, spec: TaskSpec, now: DateTime<Utc>) -> Self {
        let dests = spec
            .dests
            .iter()
            .map(|d| Destination {
                key: d.key.clone(),
                ip: d.ip,
                status: TaskStatus::Init,
                started_at: None,
                finished_at: None,
                error: None,
                pushed: false,
                report: None,
                last_heard: None,
            })
            .collect();
        Self {
            request,
            spec,
            status: TaskStatus::Init,
            created_at: now,
            started_at: None,
            finished_at: None,
            error: None,
            info_hash: None,
            file_lengths: None,
            seed_bytes: 0,
            dests,
        }
    }

    /// The task id.
    pub fn id(&self) -> &TaskId {
        &self.spec.id
    }

    /// Total bytes (from the metainfo once built).
    pub fn total_bytes(&self) -> u64 {
        match &self.file_lengths {
            Some(l) => l.iter().sum(),
            None => self.spec.total_length(),
        }
    }

    /// The index of the destination with address `ip`.
    pub fn dest_index(&self, ip: IpAddr) -> Option<usize> {
        self.dests.iter().position(|d| d.ip == ip)
    }

    /// Records the built metainfo.
    pub fn set_built(&mut self, info_hash: InfoHash, file_lengths: Vec<u64>) {
        self.info_hash = Some(info_hash);
        self.file_lengths = Some(file_lengths);
    }

    /// Distribution begins.
    pub fn start(&mut self, now: DateTime<Utc>) {
        if !self.status.is_final() {
            self.status = TaskStatus::InProgress;
            self.started_at.get_or_insert(now);
        }
    }

    /// The agent accepted the task.
    pub fn push_accepted(&mut self, i: usize, now: DateTime<Utc>, heard: tokio::time::Instant) {
        if let Some(d) = self.dests.get_mut(i) {
            d.pushed = true;
            d.last_heard = Some(heard);
            if !d.status.is_final() {
                d.status = TaskStatus::InProgress;
                d.started_at.get_or_insert(now);
            }
        }
    }

    /// Fails one destination (push failure, watchdog). No effect on a final one.
    pub fn fail_dest(&mut self, i: usize, reason: &str, now: DateTime<Utc>) {
        if let Some(d) = self.dests.get_mut(i).filter(|d| !d.status.is_final()) {
            d.finish(TaskStatus::Failed, Some(reason.to_owned()), now);
        }
    }

    /// Applies an agent's report to destination `i`. Returns whether the
    /// destination's status changed.
    pub fn apply_report(
        &mut self,
        i: usize,
        mut report: ProgressReport,
        now: DateTime<Utc>,
        heard: tokio::time::Instant,
    ) -> bool {
        let Some(d) = self.dests.get_mut(i) else {
            return false;
        };
        report.peers.truncate(MAX_PEERS_KEPT);
        report.shunned_peers.truncate(MAX_PEERS_KEPT);
        let before = d.status;
        d.last_heard = Some(heard);
        if !d.status.is_final() {
            match report.state {
                AgentTaskState::Running => {
                    d.status = TaskStatus::InProgress;
                    d.started_at.get_or_insert(now);
                }
                AgentTaskState::Completed => {
                    d.started_at.get_or_insert(now);
                    d.finish(TaskStatus::Completed, None, now);
                }
                AgentTaskState::Failed => {
                    let why = report
                        .error
                        .clone()
                        .unwrap_or_else(|| "the agent reported a failure".into());
                    d.finish(TaskStatus::Failed, Some(why), now);
                }
                AgentTaskState::Canceled => {
                    d.finish(
                        TaskStatus::Failed,
                        Some("the agent dropped the task".into()),
                        now,
                    );
                }
            }
        }
        d.report = Some(report);
        d.status != before
    }

    /// Settles the task's own status from its destinations while it is
    /// distributing. Returns true when the task just became final.
    pub fn settle(&mut self, now: DateTime<Utc>) -> bool {
        if self.status != TaskStatus::InProgress || !self.dests.iter().all(|d| d.status.is_final())
        {
            return false;
        }
        let failed: Vec<&Destination> = self
            .dests
            .iter()
            .filter(|d| d.status != TaskStatus::Completed)
            .collect();
        if failed.is_empty() {
            self.status = TaskStatus::Completed;
        } else {
            let reasons: Vec<String> = failed
                .iter()
                .take(MAX_REASONS)
                .map(|d| format!("{}: {}", d.key, d.error.as_deref().unwrap_or("failed")))
                .collect();
            let more = failed.len().saturating_sub(MAX_REASONS);
            let tail = if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            };
            self.error = Some(format!(
                "{} of {} destinations failed: {}{tail}",
                failed.len(),
                self.dests.len(),
                reasons.join("; ")
            ));
            self.status = TaskStatus::Failed;
        }
        self.finished_at = Some(now);
        true
    }

    /// Fails the whole task (e.g. the metainfo could not be built). Returns
    /// false if it was already final.
    pub fn fail(&mut self, reason: &str, now: DateTime<Utc>) -> bool {
        self.end(TaskStatus::Failed, reason, now)
    }

    /// Ends the whole task `FILE_NOT_EXISTED`: a source vanished after the
    /// `POST` accepted it, before its metainfo was built. Every unfinished
    /// destination gets the same status and reason. Returns false if the
    /// task was already final.
    pub fn source_missing(&mut self, reason: &str, now: DateTime<Utc>) -> bool {
        self.end(TaskStatus::FileNotExisted, reason, now)
    }

    fn end(&mut self, status: TaskStatus, reason: &str, now: DateTime<Utc>) -> bool {
        if self.status.is_final() {
            return false;
        }
        self.status = status;
        self.error = Some(truncate(reason));
        self.finished_at = Some(now);
        for d in &mut self.dests {
            if !d.status.is_final() {
                d.finish(status, Some(reason.to_owned()), now);
            }
        }
        true
    }

    /// Cancels the task (`DELETE`). Returns false if it was already final.
    pub fn cancel(&mut self, now: DateTime<Utc>) -> bool {
        if self.status.is_final() {
            return false;
        }
        self.status = TaskStatus::Canceled;
        self.finished_at = Some(now);
        for d in &mut self.dests {
            if !d.status.is_final() {
                d.finish(TaskStatus::Canceled, None, now);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task_spec::{DestSpec, SourceFile};

    fn task(dests: &[&str]) -> Task {
        let spec = TaskSpec {
            id: TaskId::new("t").unwrap(),
            files: vec![
                SourceFile {
                    source: "/a".into(),
                    path: vec!["a".into()],
                    length: 100,
                },
                SourceFile {
                    source: "/e".into(),
                    path: vec!["e".into()],
                    length: 0,
                },
                SourceFile {
                    source: "/b".into(),
                    path: vec!["d".into(), "b".into()],
                    length: 300,
                },
            ],
            dests: dests
                .iter()
                .map(|s| DestSpec {
                    key: s.to_string(),
                    ip: s.parse().unwrap(),
                })
                .collect(),
            dest_dir: None,
            speed_bytes_per_sec: None,
            piece_length: None,
        };
        let req = CreateTaskRequest {
            id: "t".into(),
            dispatch_files: vec![],
            dest_ips: vec![],
            dest_dir: None,
            speed: None,
            piece_length: None,
        };
        Task::new(req, spec, Utc::now())
    }

    fn report(state: AgentTaskState, done: Vec<u64>) -> ProgressReport {
        ProgressReport {
            task_id: TaskId::new("t").unwrap(),
            state,
            bytes_done: done.iter().sum(),
            bytes_total: 400,
            pieces_done: 0,
            pieces_total: 1,
            bytes_from_peers: 10,
            bytes_from_seed: 20,
            bytes_uploaded: 0,
            rate_bps: 5,
            pieces_in_flight: 1,
            file_bytes_done: done,
            peers: vec![],
            shunned_peers: vec![],
            error: Some("disk full".into()),
        }
    }

    #[test]
    fn completes_only_when_every_destination_does() {
        let now = Utc::now();
        let heard = tokio::time::Instant::now();
        let mut t = task(&["127.2.0.1", "127.2.0.2"]);
        t.start(now);
        t.push_accepted(0, now, heard);
        t.push_accepted(1, now, heard);
        assert!(t.apply_report(
            0,
            report(AgentTaskState::Completed, vec![100, 0, 300]),
            now,
            heard
        ));
        assert!(!t.settle(now));
        assert_eq!(t.status, TaskStatus::InProgress);
        t.apply_report(
            1,
            report(AgentTaskState::Running, vec![100, 0, 50]),
            now,
            heard,
        );
        let info = t.info(None);
        let d1 = &info.dispatch_infos["127.2.0.2"];
        assert_eq!(d1.status, TaskStatus::InProgress);
        assert_eq!(d1.percent_complete, 37.5);
        let statuses: Vec<TaskStatus> = d1.dispatch_files.iter().map(|f| f.status).collect();
        assert_eq!(
            statuses,
            [
                TaskStatus::Completed,
                TaskStatus::Init,
                TaskStatus::InProgress
            ]
        );
        assert_eq!(d1.dispatch_files[2].filename, "d/b");
        t.apply_report(
            1,
            report(AgentTaskState::Completed, vec![100, 0, 300]),
            now,
            heard,
        );
        assert!(t.settle(now));
        assert_eq!(t.status, TaskStatus::Completed);
        assert!(t.finished_at.is_some());
        assert_eq!(
            t.info(None).dispatch_infos["127.2.0.2"].percent_complete,
            100.0
        );
    }

    #[test]
    fn fails_when_all_final_and_one_failed() {
        let now = Utc::now();
        let heard = tokio::time::Instant::now();
        let mut t = task(&["127.2.0.1", "127.2.0.2"]);
        t.start(now);
        t.fail_dest(0, "connect: refused", now);
        assert!(!t.settle(now));
        t.apply_report(1, report(AgentTaskState::Failed, vec![0, 0, 0]), now, heard);
        assert!(t.settle(now));
        assert_eq!(t.status, TaskStatus::Failed);
        let e = t.error.clone().unwrap();
        assert!(
            e.contains("127.2.0.1: connect: refused") && e.contains("disk full"),
            "{e}"
        );
        // Final states are sticky.
        t.apply_report(
            0,
            report(AgentTaskState::Completed, vec![100, 0, 300]),
            now,
            heard,
        );
        assert_eq!(t.dests[0].status, TaskStatus::Failed);
        assert!(!t.cancel(now));
    }

    #[test]
    fn a_missing_source_ends_task_and_destinations_file_not_existed() {
        let now = Utc::now();
        let mut t = task(&["127.2.0.1", "127.2.0.2"]);
        assert!(t.source_missing("source /a vanished", now));
        assert_eq!(t.status, TaskStatus::FileNotExisted);
        assert_eq!(t.error.as_deref(), Some("source /a vanished"));
        assert_eq!(t.finished_at, Some(now));
        for d in &t.dests {
            assert_eq!(d.status, TaskStatus::FileNotExisted);
            assert_eq!(d.error.as_deref(), Some("source /a vanished"));
        }
        let s = t.summary();
        assert_eq!((s.completed_count, s.failed_count), (0, 2));
        // Final: neither a cancel nor a later failure changes it.
        assert!(!t.cancel(now));
        assert!(!t.fail("late", now));
        assert_eq!(t.status, TaskStatus::FileNotExisted);
    }

    #[test]
    fn cancel_marks_unfinished_destinations() {
        let now = Utc::now();
        let heard = tokio::time::Instant::now();
        let mut t = task(&["127.2.0.1", "127.2.0.2"]);
        t.start(now);
        t.apply_report(
            0,
            report(AgentTaskState::Completed, vec![100, 0, 300]),
            now,
            heard,
        );
        assert!(t.cancel(now));
        assert_eq!(t.status, TaskStatus::Canceled);
        assert_eq!(t.dests[0].status, TaskStatus::Completed);
        assert_eq!(t.dests[1].status, TaskStatus::Canceled);
        assert_eq!(t.summary().completed_count, 1);
    }
}
