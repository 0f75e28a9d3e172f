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
    /// Base64 (standard, padded) of the bencoded info dictionary, packed
    /// as `info_encoding` says. The agent recomputes the info-hash and
    /// checks it against `info_hash` and the token. Empty (absent) in a
    /// *slim* push: the agent then fetches the dictionary over the data
    /// port from `info_from`, then from the seed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub info: String,
    /// How `info` is packed inside its base64; `raw` when absent.
    #[serde(default, skip_serializing_if = "InfoEncoding::is_raw")]
    pub info_encoding: InfoEncoding,
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
    /// Data addresses of destinations that already hold the task, to fetch
    /// the info dictionary from when `info` is absent (tried in order).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub info_from: Vec<SocketAddr>,
}

/// How an [`AgentTask`]'s `info` is packed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InfoEncoding {
    /// The bencoded bytes themselves.
    #[default]
    Raw,
    /// Raw deflate (RFC 1951) of the bencoded bytes.
    Deflate,
}

impl InfoEncoding {
    fn is_raw(&self) -> bool {
        *self == InfoEncoding::Raw
    }
}

/// Why an [`AgentTask`]'s `info` cannot be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum InfoPackError {
    #[error("info is not base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("info is not valid deflate data: {0}")]
    Deflate(std::io::Error),
    #[error("info inflates to more than {max} bytes")]
    TooLarge { max: usize },
}

/// Packs a bencoded info dictionary for an [`AgentTask`]: deflated when
/// that saves at least a tenth (a many-file task's paths shrink three- to
/// fourfold; piece hashes do not shrink at all), else as it is.
///
/// The same packed info goes to every destination of a task, and it is
/// most of each push: pushes to 8 agents of a 2,000-file task took
/// 1.7 MB of the server's uplink before any piece could move.
pub fn pack_info(bencoded: &[u8]) -> (String, InfoEncoding) {
    use base64::Engine as _;
    use std::io::Write as _;
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    let deflated = enc.write_all(bencoded).and_then(|()| enc.finish());
    match deflated {
        Ok(d) if d.len() <= bencoded.len() - bencoded.len() / 10 => (
            base64::engine::general_purpose::STANDARD.encode(d),
            InfoEncoding::Deflate,
        ),
        _ => (
            base64::engine::general_purpose::STANDARD.encode(bencoded),
            InfoEncoding::Raw,
        ),
    }
}

impl AgentTask {
    /// The bencoded info dictionary, unpacked; at most `max` bytes.
    ///
    /// # Errors
    /// [`InfoPackError`] for bad base64, bad deflate data, or more than
    /// `max` bytes once inflated (a small body must not become a large
    /// allocation).
    pub fn info_bytes(&self, max: usize) -> Result<Vec<u8>, InfoPackError> {
        use base64::Engine as _;
        use std::io::Read as _;
        let packed = base64::engine::general_purpose::STANDARD.decode(self.info.as_bytes())?;
        match self.info_encoding {
            InfoEncoding::Raw if packed.len() > max => Err(InfoPackError::TooLarge { max }),
            InfoEncoding::Raw => Ok(packed),
            InfoEncoding::Deflate => {
                let mut out = Vec::new();
                let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
                flate2::read::DeflateDecoder::new(packed.as_slice())
                    .take(limit)
                    .read_to_end(&mut out)
                    .map_err(InfoPackError::Deflate)?;
                if out.len() > max {
                    return Err(InfoPackError::TooLarge { max });
                }
                Ok(out)
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn task(info: String, info_encoding: InfoEncoding) -> AgentTask {
        AgentTask {
            task_id: TaskId::new("t").unwrap(),
            info,
            info_encoding,
            info_hash: InfoHash([1; 20]),
            token: "x".into(),
            peers: vec![],
            seed: "127.0.0.1:1".parse().unwrap(),
            report_url: "http://127.0.0.1:1/r".into(),
            speed_bytes_per_sec: None,
            dest_dir: None,
            info_from: vec![],
        }
    }

    #[test]
    fn a_file_list_is_deflated_and_hashes_are_not() {
        let mut paths = Vec::new();
        for i in 0..500 {
            paths.extend_from_slice(
                format!("d6:lengthi4096e4:modei420e4:pathl2:d{}5:f{i:03}ee", i % 7).as_bytes(),
            );
        }
        let (packed, enc) = pack_info(&paths);
        assert_eq!(enc, InfoEncoding::Deflate);
        assert!(
            packed.len() * 3 < paths.len(),
            "{} of {}",
            packed.len(),
            paths.len()
        );
        let t = task(packed, enc);
        assert_eq!(t.info_bytes(paths.len()).unwrap(), paths);
        assert!(matches!(
            t.info_bytes(paths.len() - 1),
            Err(InfoPackError::TooLarge { .. })
        ));

        // SHA-1 output does not compress: it goes as it is.
        use sha1::Digest as _;
        let hashes: Vec<u8> = (0..1_000u32)
            .flat_map(|i| sha1::Sha1::digest(i.to_le_bytes()))
            .collect();
        let (packed, enc) = pack_info(&hashes);
        assert_eq!(enc, InfoEncoding::Raw);
        assert_eq!(task(packed, enc).info_bytes(hashes.len()).unwrap(), hashes);
    }

    #[test]
    fn the_encoding_is_raw_unless_said_and_only_sent_when_not() {
        let json = serde_json::to_value(task("AAAA".into(), InfoEncoding::Raw)).unwrap();
        assert!(json.get("infoEncoding").is_none(), "{json}");
        let json = serde_json::to_value(task("AAAA".into(), InfoEncoding::Deflate)).unwrap();
        assert_eq!(json["infoEncoding"], "deflate");
        let mut json = serde_json::to_value(task("AAAA".into(), InfoEncoding::Raw)).unwrap();
        let back: AgentTask = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back.info_encoding, InfoEncoding::Raw);
        json["infoEncoding"] = "gzip".into();
        assert!(serde_json::from_value::<AgentTask>(json).is_err());
    }
}
