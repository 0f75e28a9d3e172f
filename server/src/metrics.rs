//! Counters for `GET /metrics`, rendered in the Prometheus text format.
//!
//! Gauges that can be computed from the task registry (tasks by status, seed
//! bytes) are computed when scraped; only events are counted here.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use pollen_protocol::api::TaskStatus;

/// Event counters.
#[derive(Debug, Default)]
pub struct Metrics {
    pub tasks_created: AtomicU64,
    pub reports_received: AtomicU64,
    pub reports_rejected: AtomicU64,
    pub pushes_ok: AtomicU64,
    pub pushes_failed: AtomicU64,
    pub pushes_slim: AtomicU64,
}

/// Values computed at scrape time.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub tasks_by_status: BTreeMap<&'static str, u64>,
    pub seed_bytes: u64,
    pub active_tasks: u64,
}

const ALL_STATUSES: [TaskStatus; 6] = [
    TaskStatus::Init,
    TaskStatus::InProgress,
    TaskStatus::Completed,
    TaskStatus::Failed,
    TaskStatus::FileNotExisted,
    TaskStatus::Canceled,
];

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self, snap: &Snapshot) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP pollen_tasks Tasks known to the server, by status."
        );
        let _ = writeln!(out, "# TYPE pollen_tasks gauge");
        for s in ALL_STATUSES {
            let n = snap.tasks_by_status.get(s.as_str()).copied().unwrap_or(0);
            let _ = writeln!(out, "pollen_tasks{{status=\"{}\"}} {n}", s.as_str());
        }
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let counter = |out: &mut String, name: &str, help: &str, c: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c.load(Ordering::Relaxed)
            );
        };
        gauge(
            &mut out,
            "pollen_active_tasks",
            "Tasks holding a distribution slot (control.maxActive).",
            snap.active_tasks,
        );
        gauge(
            &mut out,
            "pollen_seed_uploaded_bytes",
            "Payload bytes the seed uploaded, over known tasks.",
            snap.seed_bytes,
        );
        counter(
            &mut out,
            "pollen_tasks_created_total",
            "Tasks accepted by POST /api/v1/server/tasks.",
            &self.tasks_created,
        );
        counter(
            &mut out,
            "pollen_reports_received_total",
            "Agent progress reports accepted.",
            &self.reports_received,
        );
        counter(
            &mut out,
            "pollen_reports_rejected_total",
            "Agent progress reports refused (401, 410, 400).",
            &self.reports_rejected,
        );
        counter(
            &mut out,
            "pollen_agent_pushes_total",
            "Tasks handed to agents.",
            &self.pushes_ok,
        );
        counter(
            &mut out,
            "pollen_agent_push_failures_total",
            "Agents a task could not be handed to.",
            &self.pushes_failed,
        );
        counter(
            &mut out,
            "pollen_agent_slim_pushes_total",
            "Tasks handed to agents without the info dictionary, which they fetched from other agents or the seed.",
            &self.pushes_slim,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_status() {
        let m = Metrics::default();
        Metrics::inc(&m.reports_received);
        let mut snap = Snapshot::default();
        snap.tasks_by_status.insert("COMPLETED", 2);
        let text = m.render(&snap);
        assert!(text.contains("pollen_tasks{status=\"COMPLETED\"} 2"));
        assert!(text.contains("pollen_tasks{status=\"INPROGESS\"} 0"));
        assert!(text.contains("pollen_reports_received_total 1"));
    }
}
