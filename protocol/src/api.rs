//! REST payloads shared by the server, the agents and the CLI.
//!
//! The user-facing types keep GoFD's field names and status strings
//! (`INPROGESS` included) so existing scripts work; Pollen's additions are new
//! optional fields only.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::ids::{InfoHash, TaskId};

/// `POST /api/v1/server/tasks` body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateTaskRequest {
    pub id: String,
    /// Absolute server paths of regular files or directories.
    pub dispatch_files: Vec<String>,
    /// Agent IP addresses.
    #[serde(rename = "destIPs")]
    pub dest_ips: Vec<String>,
    /// Pollen extension: a directory relative to each agent's `downdir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest_dir: Option<String>,
    /// Pollen extension: this task's upload cap in MB/s (MiB/s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    /// Pollen extension: piece length in bytes (power of two).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub piece_length: Option<u64>,
}

/// GoFD's status strings, spelling included.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskStatus {
    #[serde(rename = "INIT")]
    Init,
    #[serde(rename = "INPROGESS")]
    InProgress,
    #[serde(rename = "COMPLETED")]
    Completed,
    #[serde(rename = "FAILED")]
    Failed,
    #[serde(rename = "FILE_NOT_EXISTED")]
    FileNotExisted,
    /// Pollen extension: cancelled by `DELETE`.
    #[serde(rename = "CANCELED")]
    Canceled,
}

impl TaskStatus {
    /// The wire string.
    pub fn as_str(&self) -> &'static str {
        match self {
            TaskStatus::Init => "INIT",
            TaskStatus::InProgress => "INPROGESS",
            TaskStatus::Completed => "COMPLETED",
            TaskStatus::Failed => "FAILED",
            TaskStatus::FileNotExisted => "FILE_NOT_EXISTED",
            TaskStatus::Canceled => "CANCELED",
        }
    }

    /// Whether no further change will happen.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            TaskStatus::Completed
                | TaskStatus::Failed
                | TaskStatus::FileNotExisted
                | TaskStatus::Canceled
        )
    }
}

/// `GET /api/v1/server/tasks/{id}` body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskInfo {
    pub id: String,
    pub status: TaskStatus,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Keyed by destination IP, as given in `destIPs`.
    pub dispatch_infos: BTreeMap<String, DispatchInfo>,
    // ---- Pollen extensions ----
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info_hash: Option<InfoHash>,
    /// Bytes of the task (all files).
    #[serde(default)]
    pub total_bytes: u64,
    /// Bytes the server's seed has uploaded for this task.
    #[serde(default)]
    pub seed_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Per-destination status inside [`TaskInfo`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DispatchInfo {
    pub status: TaskStatus,
    pub percent_complete: f64,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub dispatch_files: Vec<DispatchFile>,
    // ---- Pollen extensions ----
    #[serde(default)]
    pub bytes_done: u64,
    #[serde(default)]
    pub bytes_total: u64,
    #[serde(default)]
    pub bytes_from_peers: u64,
    #[serde(default)]
    pub bytes_from_seed: u64,
    #[serde(default)]
    pub bytes_uploaded: u64,
    /// Download rate over the last report interval, bytes per second.
    #[serde(default)]
    pub rate_bps: u64,
    #[serde(default)]
    pub pieces_in_flight: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerStats>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shunned_peers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Per-file progress of one destination.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DispatchFile {
    /// Path relative to the destination directory, `/`-separated.
    pub filename: String,
    pub status: TaskStatus,
    // ---- Pollen extensions ----
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub bytes_done: u64,
    #[serde(default)]
    pub percent_complete: f64,
}

/// `GET /api/v1/server/tasks` body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskList {
    pub tasks: Vec<TaskSummary>,
}

/// One row of [`TaskList`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskSummary {
    pub id: String,
    pub status: TaskStatus,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub dest_count: usize,
    pub completed_count: usize,
    pub failed_count: usize,
    pub total_bytes: u64,
}

/// Every REST error body: a stable machine-readable `kind` and a message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// `TASK_EXISTED`, `TASK_NOT_EXISTED`, `FILE_NOT_EXISTED`, `BAD_REQUEST`,
    /// `UNAUTHORIZED`, `NOT_FOUND`, `INTERNAL`, …
    pub kind: String,
    pub message: String,
}

/// `POST /api/v1/server/token` response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenResponse {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

// ---------------------------------------------------------------------------
// Server <-> agent

/// `POST /api/v1/agent/tasks`: the server hands a task to an agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentTask {
    pub task_id: TaskId,
    /// Base64 (standard, padded) of the bencoded info dictionary. The agent
    /// recomputes the info-hash and checks it against `info_hash` and the token.
    pub info: String,
    pub info_hash: InfoHash,
    /// This agent's task token: presented on the data port and to the server.
    pub token: String,
    /// A random subset of the other destinations' data addresses.
    pub peers: Vec<SocketAddr>,
    /// The server's seed data address.
    pub seed: SocketAddr,
    /// Where to `POST` [`ProgressReport`]s.
    pub report_url: String,
    /// Task upload cap in bytes per second, if any.
    #[serde(default)]
    pub speed_bytes_per_sec: Option<u64>,
    /// Directory relative to the agent's `downdir`.
    #[serde(default)]
    pub dest_dir: Option<String>,
}

/// What an agent is doing with a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AgentTaskState {
    Running,
    Completed,
    Failed,
    Canceled,
}

/// Per-peer numbers in a [`ProgressReport`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerStats {
    pub addr: String,
    pub is_seed: bool,
    pub bytes_down: u64,
    pub bytes_up: u64,
    /// Download rate from this peer over the last interval, bytes per second.
    pub rate_down_bps: u64,
    pub rate_up_bps: u64,
    pub requests_in_flight: u32,
}

/// `POST /api/v1/agent/report` (on the server): coalesced agent progress.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProgressReport {
    pub task_id: TaskId,
    pub state: AgentTaskState,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub pieces_done: u32,
    pub pieces_total: u32,
    pub bytes_from_peers: u64,
    pub bytes_from_seed: u64,
    pub bytes_uploaded: u64,
    pub rate_bps: u64,
    pub pieces_in_flight: u32,
    /// Verified bytes per file, in metainfo order.
    pub file_bytes_done: Vec<u64>,
    #[serde(default)]
    pub peers: Vec<PeerStats>,
    #[serde(default)]
    pub shunned_peers: Vec<String>,
    #[serde(default)]
    pub error: Option<String>,
}
