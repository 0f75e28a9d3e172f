//! The task store: one JSON file per task under `<datadir>/tasks/`.
//!
//! A file is named by the SHA-1 (hex) of the task id, so any id is a safe
//! file name. Writes go to a temporary file that is fsynced and renamed over
//! the old one (then the directory is fsynced), so a crash leaves either the
//! old or the new state, never a torn file. Plain files were chosen over an
//! embedded database: the server writes a task only when its status changes,
//! reads everything once at start, and the files stay inspectable with `jq`.
//!
//! On start, tasks that were not final are marked `FAILED` with the reason
//! "server restarted": the metainfo and the seed's state are not kept, and
//! agents that still run such a task are told to stop (410) at their next
//! report.
//!
//! Every method is blocking; call them from the blocking pool.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use pollen_protocol::TaskId;
use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

use crate::error::{Error, Result};
use crate::task::Task;

const FORMAT_VERSION: u32 = 1;
/// Largest task file read back; bigger ones are skipped as corrupt.
const MAX_FILE_LEN: u64 = 256 * 1024 * 1024;

#[derive(Serialize)]
struct RecordRef<'a> {
    version: u32,
    task: &'a Task,
}

#[derive(Deserialize)]
struct Record {
    version: u32,
    task: Task,
}

/// Task files in one directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating) the directory.
    ///
    /// # Errors
    /// If it cannot be created.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| Error::io("create task directory", &dir, e))?;
        Ok(Self { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of task `id`.
    pub fn path_of(&self, id: &TaskId) -> PathBuf {
        self.dir.join(format!(
            "{}.json",
            hex::encode(Sha1::digest(id.as_str().as_bytes()))
        ))
    }

    /// Saves one task atomically.
    ///
    /// # Errors
    /// I/O errors naming the file.
    pub fn save(&self, task: &Task) -> Result<()> {
        let path = self.path_of(task.id());
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(&RecordRef {
            version: FORMAT_VERSION,
            task,
        })
        .map_err(|e| Error::io("encode", &path, std::io::Error::other(e)))?;
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| Error::io("create", &tmp, e))?;
        f.write_all(&bytes)
            .map_err(|e| Error::io("write", &tmp, e))?;
        f.sync_all().map_err(|e| Error::io("sync", &tmp, e))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(|e| Error::io("rename", &tmp, e))?;
        sync_dir(&self.dir);
        Ok(())
    }

    /// Deletes the file of task `id`, if any.
    ///
    /// # Errors
    /// I/O errors other than "not found".
    pub fn remove(&self, id: &TaskId) -> Result<()> {
        let path = self.path_of(id);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io("remove", &path, e))
            }
            _ => Ok(()),
        }
    }

    /// Loads every task. Unreadable or corrupt files are skipped with a
    /// warning (and left in place for inspection).
    ///
    /// # Errors
    /// If the directory cannot be listed.
    pub fn load_all(&self) -> Result<Vec<Task>> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.dir).map_err(|e| Error::io("list", &self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list", &self.dir, e))?;
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match Self::load_one(&path) {
                Ok(t) if self.path_of(t.id()) == path => out.push(t),
                Ok(t) => {
                    tracing::warn!(path = %path.display(), task = %t.id(), "task file has the wrong name; skipped")
                }
                Err(reason) => {
                    tracing::warn!(path = %path.display(), %reason, "unreadable task file; skipped")
                }
            }
        }
        out.sort_by_key(|t| t.created_at);
        Ok(out)
    }

    fn load_one(path: &Path) -> std::result::Result<Task, String> {
        let f = File::open(path).map_err(|e| e.to_string())?;
        let len = f.metadata().map_err(|e| e.to_string())?.len();
        if len > MAX_FILE_LEN {
            return Err(format!("{len} bytes is too large"));
        }
        let rec: Record =
            serde_json::from_reader(std::io::BufReader::new(f)).map_err(|e| e.to_string())?;
        if rec.version != FORMAT_VERSION {
            return Err(format!("unknown format version {}", rec.version));
        }
        Ok(rec.task)
    }
}

fn sync_dir(dir: &Path) {
    // Best effort: makes the rename durable on Linux; not possible everywhere.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task_spec::{DestSpec, SourceFile, TaskSpec};
    use pollen_protocol::api::{CreateTaskRequest, TaskStatus};

    fn task(id: &str) -> Task {
        let spec = TaskSpec {
            id: TaskId::new(id).unwrap(),
            files: vec![SourceFile {
                source: "/a".into(),
                path: vec!["a".into()],
                length: 1,
            }],
            dests: vec![DestSpec {
                key: "127.2.0.1".into(),
                ip: "127.2.0.1".parse().unwrap(),
            }],
            dest_dir: None,
            speed_bytes_per_sec: None,
            piece_length: None,
        };
        let req = CreateTaskRequest {
            id: id.into(),
            dispatch_files: vec!["/a".into()],
            dest_ips: vec!["127.2.0.1".into()],
            dest_dir: None,
            speed: Some(1.0),
            piece_length: None,
        };
        Task::new(req, spec, chrono::Utc::now())
    }

    #[test]
    fn save_load_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path().join("tasks")).unwrap();
        let mut t = task("weird id ?#%..");
        t.status = TaskStatus::Completed;
        s.save(&t).unwrap();
        s.save(&task("b")).unwrap();
        fs::write(s.dir().join("junk.json"), b"{").unwrap();
        let all = s.load_all().unwrap();
        assert_eq!(all.len(), 2);
        let back = all
            .iter()
            .find(|x| x.id().as_str() == "weird id ?#%..")
            .unwrap();
        assert_eq!(back.status, TaskStatus::Completed);
        assert_eq!(back.request, t.request);
        assert!(s.path_of(t.id()).starts_with(s.dir()));
        s.remove(t.id()).unwrap();
        s.remove(t.id()).unwrap();
        assert_eq!(s.load_all().unwrap().len(), 1);
    }
}
