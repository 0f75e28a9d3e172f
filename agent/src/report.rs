//! Progress reports to the server.
//!
//! One reporter per task POSTs a [`ProgressReport`] to the task's
//! `report_url` with the task token as bearer: about once a second while the
//! task downloads (coalesced, never per piece), at once when the state
//! changes, and after completion only when something changed or every
//! [`IDLE_INTERVAL`]. A 410 means the server no longer wants the task: the
//! reporter removes it (stopping its swarm and its staging data). Other
//! failures are retried on the next tick; the first of a run is a warning.

use std::sync::Arc;
use std::time::Duration;

use pollen_protocol::api::{AgentTaskState, ProgressReport};
use reqwest::StatusCode;
use tokio::time::Instant;
use tracing::instrument;

use crate::agent::Agent;
use crate::error::{Error, Result};
use crate::swarm::TaskEntry;

/// Report period while downloading.
pub(crate) const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Longest gap between reports of an unchanged task.
pub(crate) const IDLE_INTERVAL: Duration = Duration::from_secs(10);

/// What the server said to a report.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ack {
    /// Accepted.
    Ok,
    /// The server does not know or wants to stop the task (410).
    Gone,
}

/// Sends one report.
///
/// # Errors
/// [`Error::Http`] for transport errors and non-success statuses other than 410.
pub(crate) async fn send_report(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    report: &ProgressReport,
) -> Result<Ack> {
    let resp = http
        .post(url)
        .bearer_auth(token)
        .json(report)
        .send()
        .await
        .map_err(|source| Error::Http {
            op: "sending a report",
            source,
        })?;
    if resp.status() == StatusCode::GONE {
        return Ok(Ack::Gone);
    }
    resp.error_for_status().map_err(|source| Error::Http {
        op: "sending a report",
        source,
    })?;
    Ok(Ack::Ok)
}

/// Reports task progress until the task is cancelled.
#[instrument(skip_all, fields(task = %entry.spec.task_id))]
pub(crate) async fn run_reporter(agent: Arc<Agent>, entry: Arc<TaskEntry>) {
    let mut phase = entry.state.watch_phase();
    let mut tick = tokio::time::interval(REPORT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<(ProgressReport, Instant)> = None;
    let mut failing = false;
    loop {
        tokio::select! {
            () = entry.cancel.cancelled() => return,
            changed = phase.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
        let report = entry.state.snapshot();
        let unchanged = last.as_ref().is_some_and(|(r, at)| {
            r == &report && report.state != AgentTaskState::Running && at.elapsed() < IDLE_INTERVAL
        });
        if unchanged {
            continue;
        }
        let send = send_report(
            &agent.http,
            &entry.spec.report_url,
            &entry.spec.token,
            &report,
        );
        let ack = tokio::select! {
            () = entry.cancel.cancelled() => return,
            r = send => r,
        };
        match ack {
            Ok(Ack::Ok) => {
                failing = false;
                last = Some((report, Instant::now()));
            }
            Ok(Ack::Gone) => {
                tracing::info!("server no longer knows the task; stopping it");
                agent.remove_task(&entry.spec.task_id).await;
                return;
            }
            // The first failure in a row is worth an operator's eye (a wrong
            // scheme or an untrusted certificate shows here); repeats are not.
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %with_causes(&e), url = %entry.spec.report_url, "report failed; retrying every tick");
            }
            Err(e) => tracing::debug!(error = %e, "report failed; retrying on the next tick"),
        }
    }
}

/// `e` and its causes on one line: reqwest's own message names only the URL,
/// the innermost cause says what went wrong (refused, certificate unknown).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let msg = c.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cause = c.source();
    }
    out
}
