//! The REST views of a task: GoFD's `TaskInfo` with its per-destination
//! `dispatchInfos` and per-file `dispatchFiles`, and the task list's rows.
//!
//! Per-file progress comes from the reports' `fileBytesDone`; before the
//! first report every file is `INIT`. A completed destination shows every
//! file complete, whatever its last report said.

use pollen_protocol::api::{DispatchFile, DispatchInfo, TaskInfo, TaskStatus, TaskSummary};

use crate::task::{Destination, Task};

fn percent(done: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        ((done.min(total) as f64) * 10_000.0 / total as f64).round() / 100.0
    }
}

impl Task {
    fn file_views(&self, d: &Destination) -> Vec<DispatchFile> {
        let lengths: Vec<u64> = match &self.file_lengths {
            Some(l) => l.clone(),
            None => self.spec.files.iter().map(|f| f.length).collect(),
        };
        let done = d
            .report
            .as_ref()
            .map(|r| r.file_bytes_done.as_slice())
            .unwrap_or(&[]);
        self.spec
            .files
            .iter()
            .zip(lengths)
            .enumerate()
            .map(|(i, (f, size))| {
                let bytes_done = if d.status == TaskStatus::Completed {
                    size
                } else {
                    done.get(i).copied().unwrap_or(0).min(size)
                };
                let status =
                    if d.status == TaskStatus::Completed || (size > 0 && bytes_done == size) {
                        TaskStatus::Completed
                    } else if d.status.is_final() {
                        d.status
                    } else if bytes_done > 0 {
                        TaskStatus::InProgress
                    } else {
                        TaskStatus::Init
                    };
                let pct = if status == TaskStatus::Completed {
                    100.0
                } else {
                    percent(bytes_done, size)
                };
                DispatchFile {
                    filename: f.display_path(),
                    status,
                    size,
                    bytes_done,
                    percent_complete: pct,
                }
            })
            .collect()
    }

    fn dispatch_info(&self, d: &Destination) -> DispatchInfo {
        let total = self.total_bytes();
        let r = d.report.as_ref();
        let bytes_done = if d.status == TaskStatus::Completed {
            total
        } else {
            r.map_or(0, |r| r.bytes_done.min(total))
        };
        DispatchInfo {
            status: d.status,
            percent_complete: if d.status == TaskStatus::Completed {
                100.0
            } else {
                percent(bytes_done, total)
            },
            started_at: d.started_at,
            finished_at: d.finished_at,
            dispatch_files: self.file_views(d),
            bytes_done,
            bytes_total: total,
            bytes_from_peers: r.map_or(0, |r| r.bytes_from_peers),
            bytes_from_seed: r.map_or(0, |r| r.bytes_from_seed),
            bytes_uploaded: r.map_or(0, |r| r.bytes_uploaded),
            rate_bps: if d.status.is_final() {
                0
            } else {
                r.map_or(0, |r| r.rate_bps)
            },
            pieces_in_flight: if d.status.is_final() {
                0
            } else {
                r.map_or(0, |r| r.pieces_in_flight)
            },
            peers: r.map(|r| r.peers.clone()).unwrap_or_default(),
            shunned_peers: r.map(|r| r.shunned_peers.clone()).unwrap_or_default(),
            error: d.error.clone(),
        }
    }

    /// The `GET /api/v1/server/tasks/{id}` view; `live_seed_bytes` is the
    /// seed's counter while the task is being served.
    pub fn info(&self, live_seed_bytes: Option<u64>) -> TaskInfo {
        TaskInfo {
            id: self.spec.id.to_string(),
            status: self.status,
            started_at: self.started_at,
            finished_at: self.finished_at,
            dispatch_infos: self
                .dests
                .iter()
                .map(|d| (d.key.clone(), self.dispatch_info(d)))
                .collect(),
            created_at: self.created_at,
            info_hash: self.info_hash,
            total_bytes: self.total_bytes(),
            seed_bytes: live_seed_bytes
                .unwrap_or(self.seed_bytes)
                .max(self.seed_bytes),
            error: self.error.clone(),
        }
    }

    /// One row of the task list.
    pub fn summary(&self) -> TaskSummary {
        TaskSummary {
            id: self.spec.id.to_string(),
            status: self.status,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            dest_count: self.dests.len(),
            completed_count: self
                .dests
                .iter()
                .filter(|d| d.status == TaskStatus::Completed)
                .count(),
            failed_count: self
                .dests
                .iter()
                .filter(|d| matches!(d.status, TaskStatus::Failed | TaskStatus::FileNotExisted))
                .count(),
            total_bytes: self.total_bytes(),
        }
    }
}
