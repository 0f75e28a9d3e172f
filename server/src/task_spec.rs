//! A validated task request: what to send, where it lands, to whom.
//!
//! [`TaskSpec::validate`] turns a [`CreateTaskRequest`] into a spec or a 400
//! that names the offending field. Cheap checks (id, destinations, options)
//! come first, then the file system is walked (blocking: run it on the
//! blocking pool).
//!
//! The rules for `dispatchFiles` are in [`crate::source_walk`].

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;

use pollen_protocol::api::CreateTaskRequest;
use pollen_protocol::lengths::{MAX_PIECES, MAX_PIECE_LEN, MIN_PIECE_LEN};
use pollen_protocol::metainfo::check_component;
use pollen_protocol::TaskId;
use serde::{Deserialize, Serialize};

use crate::api_error::ApiError;
use crate::source_walk::resolve_files;

/// Most files one task may have.
pub const MAX_FILES: usize = 100_000;
/// Most destinations one task may have.
pub const MAX_DESTS: usize = 10_000;

/// One source file and its path under the destination directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFile {
    /// Absolute path on the server.
    pub source: PathBuf,
    /// Destination path components.
    pub path: Vec<String>,
    /// Length when the request was validated.
    pub length: u64,
}

impl SourceFile {
    /// The destination path joined with `/`.
    pub fn display_path(&self) -> String {
        self.path.join("/")
    }
}

/// One destination agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestSpec {
    /// The string as given in `destIPs` (the `dispatchInfos` key).
    pub key: String,
    pub ip: IpAddr,
}

/// A validated [`CreateTaskRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub id: TaskId,
    pub files: Vec<SourceFile>,
    pub dests: Vec<DestSpec>,
    /// Normalised: relative, `/`-separated, no trailing `/`.
    pub dest_dir: Option<String>,
    pub speed_bytes_per_sec: Option<u64>,
    pub piece_length: Option<u64>,
}

/// The checks that need no I/O; see [`TaskSpec::validate`].
#[derive(Debug)]
pub struct CheckedFields {
    id: TaskId,
    dests: Vec<DestSpec>,
    dest_dir: Option<String>,
    speed_bytes_per_sec: Option<u64>,
    piece_length: Option<u64>,
}

impl TaskSpec {
    /// Validates the task id alone.
    ///
    /// # Errors
    /// 400 naming `id`.
    pub fn check_id(id: &str) -> Result<TaskId, ApiError> {
        TaskId::new(id).map_err(|reason| ApiError::bad_request(format!("id {id:?} {reason}")))
    }

    /// Everything but the file system.
    ///
    /// # Errors
    /// 400 naming the field.
    pub fn check_fields(req: &CreateTaskRequest) -> Result<CheckedFields, ApiError> {
        let id = Self::check_id(&req.id)?;
        if req.dispatch_files.is_empty() {
            return Err(ApiError::bad_request("dispatchFiles must not be empty"));
        }
        if req.dispatch_files.len() > MAX_FILES {
            return Err(ApiError::bad_request(format!(
                "dispatchFiles has more than {MAX_FILES} entries"
            )));
        }
        let dests = check_dests(&req.dest_ips)?;
        let dest_dir = req.dest_dir.as_deref().map(check_dest_dir).transpose()?;
        let speed_bytes_per_sec = match req.speed {
            Some(s) if !s.is_finite() || s < 0.0 => {
                return Err(ApiError::bad_request(
                    "speed must be a non-negative number of MB/s (0 is unlimited)",
                ))
            }
            Some(s) => pollen_config::speed_to_bytes(s),
            None => None,
        };
        if let Some(p) = req.piece_length {
            if !p.is_power_of_two() || !(MIN_PIECE_LEN..=MAX_PIECE_LEN).contains(&p) {
                return Err(ApiError::bad_request(format!(
                    "pieceLength {p} must be a power of two between {MIN_PIECE_LEN} and {MAX_PIECE_LEN}"
                )));
            }
        }
        Ok(CheckedFields {
            id,
            dests,
            dest_dir,
            speed_bytes_per_sec,
            piece_length: req.piece_length,
        })
    }

    /// Validates a whole request, walking `dispatchFiles`. Blocking.
    ///
    /// # Errors
    /// 400 naming the field; `FILE_NOT_EXISTED` for a missing path.
    pub fn validate(req: &CreateTaskRequest) -> Result<Self, ApiError> {
        let fields = Self::check_fields(req)?;
        Self::with_files(fields, &req.dispatch_files)
    }

    /// Completes [`TaskSpec::check_fields`] by walking the files. Blocking.
    ///
    /// # Errors
    /// As [`TaskSpec::validate`].
    pub fn with_files(fields: CheckedFields, dispatch_files: &[String]) -> Result<Self, ApiError> {
        let files = resolve_files(dispatch_files)?;
        let total: u64 = files.iter().map(|f| f.length).sum();
        if let Some(p) = fields.piece_length {
            if total.div_ceil(p) > MAX_PIECES {
                return Err(ApiError::bad_request(format!(
                    "pieceLength {p} is too small for {total} bytes (at most {MAX_PIECES} pieces)"
                )));
            }
        } else if total.div_ceil(MAX_PIECE_LEN) > MAX_PIECES {
            return Err(ApiError::bad_request(format!(
                "the task is too large: {total} bytes"
            )));
        }
        Ok(Self {
            id: fields.id,
            files,
            dests: fields.dests,
            dest_dir: fields.dest_dir,
            speed_bytes_per_sec: fields.speed_bytes_per_sec,
            piece_length: fields.piece_length,
        })
    }

    /// Total bytes at validation time.
    pub fn total_length(&self) -> u64 {
        self.files.iter().map(|f| f.length).sum()
    }
}

fn check_dests(dest_ips: &[String]) -> Result<Vec<DestSpec>, ApiError> {
    if dest_ips.is_empty() {
        return Err(ApiError::bad_request("destIPs must not be empty"));
    }
    if dest_ips.len() > MAX_DESTS {
        return Err(ApiError::bad_request(format!(
            "destIPs has more than {MAX_DESTS} entries"
        )));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(dest_ips.len());
    for (i, s) in dest_ips.iter().enumerate() {
        let ip: IpAddr = s.parse().map_err(|_| {
            ApiError::bad_request(format!("destIPs[{i}] {s:?} is not an IP address"))
        })?;
        if ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::from([255, 255, 255, 255]) {
            return Err(ApiError::bad_request(format!(
                "destIPs[{i}] {s:?} is not a host address"
            )));
        }
        if !seen.insert(ip) {
            return Err(ApiError::bad_request(format!(
                "destIPs[{i}] {s:?} is listed twice"
            )));
        }
        out.push(DestSpec { key: s.clone(), ip });
    }
    Ok(out)
}

fn check_dest_dir(d: &str) -> Result<String, ApiError> {
    let bad = |why: &str| ApiError::bad_request(format!("destDir {d:?} {why}"));
    let trimmed = d.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(bad("must name a directory relative to the agent's downdir"));
    }
    if trimmed.starts_with('/') {
        return Err(bad("must be relative to the agent's downdir"));
    }
    for c in trimmed.split('/') {
        check_component(c, d).map_err(|e| bad(&format!("is unsafe: {e}")))?;
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn req(files: Vec<String>, dests: &[&str]) -> CreateTaskRequest {
        CreateTaskRequest {
            id: "t".into(),
            dispatch_files: files,
            dest_ips: dests.iter().map(|s| s.to_string()).collect(),
            dest_dir: None,
            speed: None,
            piece_length: None,
        }
    }

    fn err(r: &CreateTaskRequest) -> ApiError {
        TaskSpec::validate(r).unwrap_err()
    }

    #[test]
    fn walks_directories_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("tree");
        fs::create_dir_all(d.join("sub/deeper")).unwrap();
        fs::create_dir_all(d.join("emptydir")).unwrap();
        fs::write(d.join("b.txt"), b"bb").unwrap();
        fs::write(d.join("a.txt"), b"").unwrap();
        fs::write(d.join("sub/deeper/c"), b"ccc").unwrap();
        let single = tmp.path().join("single.bin");
        fs::write(&single, b"12345").unwrap();
        let r = req(
            vec![d.display().to_string(), single.display().to_string()],
            &["127.2.0.1", "::1"],
        );
        let s = TaskSpec::validate(&r).unwrap();
        let names: Vec<String> = s.files.iter().map(SourceFile::display_path).collect();
        assert_eq!(
            names,
            [
                "tree/a.txt",
                "tree/b.txt",
                "tree/sub/deeper/c",
                "single.bin"
            ]
        );
        assert_eq!(s.total_length(), 10);
        assert_eq!(s.dests[1].ip, "::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn rejects_bad_files() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        fs::write(&a, b"x").unwrap();
        let sub = tmp.path().join("sub");
        fs::create_dir(&sub).unwrap();
        fs::write(sub.join("a"), b"y").unwrap();
        let a_str = a.display().to_string();
        assert!(err(&req(vec!["rel/path".into()], &["127.2.0.1"]))
            .message()
            .contains("absolute"));
        let dotdot = format!("{}/../a", sub.display());
        assert!(err(&req(vec![dotdot], &["127.2.0.1"]))
            .message()
            .contains(".."));
        let missing = err(&req(
            vec![tmp.path().join("nope").display().to_string()],
            &["127.2.0.1"],
        ));
        assert_eq!(missing.kind(), "FILE_NOT_EXISTED");
        let clash = err(&req(
            vec![a_str.clone(), sub.join("a").display().to_string()],
            &["127.2.0.1"],
        ));
        assert!(clash.message().contains("land"), "{clash}");
        let overlap = err(&req(
            vec![
                sub.display().to_string(),
                sub.join("a").display().to_string(),
            ],
            &["127.2.0.1"],
        ));
        assert!(
            overlap.message().contains("land") || overlap.message().contains("overlap"),
            "{overlap}"
        );
        assert!(err(&req(vec![], &["127.2.0.1"]))
            .message()
            .contains("dispatchFiles"));
        assert!(err(&req(vec!["/".into()], &["127.2.0.1"]))
            .message()
            .contains("file name"));
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&a, sub.join("link")).unwrap();
            let e = err(&req(vec![sub.display().to_string()], &["127.2.0.1"]));
            assert!(e.message().contains("symbolic link"), "{e}");
        }
        let empty = tmp.path().join("empty");
        fs::create_dir(&empty).unwrap();
        assert!(err(&req(vec![empty.display().to_string()], &["127.2.0.1"]))
            .message()
            .contains("no files"));
    }

    #[test]
    fn rejects_bad_fields() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        fs::write(&a, b"x").unwrap();
        let f = vec![a.display().to_string()];
        let field_err = |mut r: CreateTaskRequest, edit: &dyn Fn(&mut CreateTaskRequest)| {
            edit(&mut r);
            TaskSpec::validate(&r).unwrap_err().message().to_owned()
        };
        let base = req(f.clone(), &["127.2.0.1"]);
        assert!(field_err(base.clone(), &|r| r.id = " ".into()).contains("id"));
        assert!(field_err(base.clone(), &|r| r.dest_ips.clear()).contains("destIPs"));
        assert!(
            field_err(base.clone(), &|r| r.dest_ips = vec!["host".into()]).contains("not an IP")
        );
        assert!(
            field_err(base.clone(), &|r| r.dest_ips = vec!["0.0.0.0".into()])
                .contains("host address")
        );
        assert!(field_err(base.clone(), &|r| r.dest_ips =
            vec!["::1".into(), "0::1".into()])
        .contains("twice"));
        assert!(field_err(base.clone(), &|r| r.dest_dir = Some("../x".into())).contains("destDir"));
        assert!(
            field_err(base.clone(), &|r| r.dest_dir = Some("/abs".into())).contains("relative")
        );
        assert!(field_err(base.clone(), &|r| r.speed = Some(-1.0)).contains("speed"));
        assert!(field_err(base.clone(), &|r| r.speed = Some(f64::NAN)).contains("speed"));
        assert!(field_err(base.clone(), &|r| r.piece_length = Some(1000)).contains("pieceLength"));
        let mut ok = base.clone();
        ok.dest_dir = Some("a/b/".into());
        ok.speed = Some(1.5);
        ok.piece_length = Some(1 << 20);
        let s = TaskSpec::validate(&ok).unwrap();
        assert_eq!(s.dest_dir.as_deref(), Some("a/b"));
        assert_eq!(s.speed_bytes_per_sec, Some(1_572_864));
    }
}
