//! Walks `dispatchFiles` into the list of source files and their paths at
//! the destination. Blocking: run it on the blocking pool.
//!
//! * Paths must be absolute, without `..`; a symlink given directly is
//!   followed.
//! * A file lands as its base name; a directory lands as its base name with
//!   its tree below it (relative layout kept, entries sorted by name).
//! * **Symlinks inside a directory are refused** (400 naming the link), so a
//!   tree never silently loses files or escapes to another tree.
//! * Empty files are included; empty directories are not represented (the
//!   metainfo lists files only).
//! * Two entries must not land on the same name, nor may one contain another.
//! * Missing paths are `FILE_NOT_EXISTED`; unreadable ones, other file
//!   types, and trees past [`MAX_FILES`] files or [`MAX_DEPTH`] levels are
//!   `BAD_REQUEST`.

use std::fs;
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

use pollen_protocol::metainfo::check_component;

use crate::api_error::ApiError;
use crate::task_spec::{SourceFile, MAX_FILES};

/// Deepest directory nesting walked.
pub const MAX_DEPTH: usize = 64;

fn io_error(field: &str, path: &str, e: &std::io::Error) -> ApiError {
    match e.kind() {
        ErrorKind::NotFound => {
            ApiError::file_not_existed(format!("{field} {path:?} does not exist"))
        }
        ErrorKind::PermissionDenied => ApiError::bad_request(format!(
            "{field} {path:?} cannot be read: permission denied"
        )),
        _ => ApiError::bad_request(format!("{field} {path:?} cannot be read: {e}")),
    }
}

fn name_of(field: &str, path: &Path) -> Result<String, ApiError> {
    let shown = path.display().to_string();
    let name = path
        .file_name()
        .ok_or_else(|| ApiError::bad_request(format!("{field} {shown:?} has no file name")))?
        .to_str()
        .ok_or_else(|| ApiError::bad_request(format!("{field} {shown:?} is not valid UTF-8")))?;
    check_component(name, &shown).map_err(|e| ApiError::bad_request(format!("{field}: {e}")))?;
    Ok(name.to_owned())
}

/// The source files of `dispatch_files`, in order.
///
/// # Errors
/// 400 naming the entry and the problem.
pub fn resolve_files(dispatch_files: &[String]) -> Result<Vec<SourceFile>, ApiError> {
    let mut out = Vec::new();
    let mut roots: Vec<(usize, String, PathBuf)> = Vec::new();
    for (i, raw) in dispatch_files.iter().enumerate() {
        let field = format!("dispatchFiles[{i}]");
        let path = Path::new(raw);
        if raw.is_empty() || !path.is_absolute() {
            return Err(ApiError::bad_request(format!(
                "{field} {raw:?} must be an absolute path"
            )));
        }
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(ApiError::bad_request(format!(
                "{field} {raw:?} must not contain '..'"
            )));
        }
        let meta = fs::metadata(path).map_err(|e| io_error(&field, raw, &e))?;
        let name = name_of(&field, path)?;
        let canonical = fs::canonicalize(path).map_err(|e| io_error(&field, raw, &e))?;
        for (j, other_name, other) in &roots {
            if *other_name == name {
                return Err(ApiError::bad_request(format!(
                    "{field} {raw:?} and dispatchFiles[{j}] would both land as {name:?} at the destination"
                )));
            }
            if canonical.starts_with(other) || other.starts_with(&canonical) {
                return Err(ApiError::bad_request(format!(
                    "{field} {raw:?} overlaps dispatchFiles[{j}]"
                )));
            }
        }
        roots.push((i, name.clone(), canonical));
        if meta.is_file() {
            fs::File::open(path).map_err(|e| io_error(&field, raw, &e))?;
            out.push(SourceFile {
                source: path.to_path_buf(),
                path: vec![name],
                length: meta.len(),
            });
        } else if meta.is_dir() {
            walk_dir(&field, path, vec![name], 0, &mut out)?;
        } else {
            return Err(ApiError::bad_request(format!(
                "{field} {raw:?} is not a regular file or directory"
            )));
        }
        if out.len() > MAX_FILES {
            return Err(ApiError::bad_request(format!(
                "dispatchFiles hold more than {MAX_FILES} files"
            )));
        }
    }
    if out.is_empty() {
        return Err(ApiError::bad_request(
            "dispatchFiles contain no files (only empty directories)",
        ));
    }
    Ok(out)
}

fn walk_dir(
    field: &str,
    dir: &Path,
    prefix: Vec<String>,
    depth: usize,
    out: &mut Vec<SourceFile>,
) -> Result<(), ApiError> {
    let shown = dir.display().to_string();
    if depth >= MAX_DEPTH {
        return Err(ApiError::bad_request(format!(
            "{field}: {shown:?} is nested deeper than {MAX_DEPTH} levels"
        )));
    }
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_error(field, &shown, &e))? {
        let entry = entry.map_err(|e| io_error(field, &shown, &e))?;
        entries.push(entry.path());
        if entries.len() > MAX_FILES {
            return Err(ApiError::bad_request(format!(
                "{field}: {shown:?} holds more than {MAX_FILES} entries"
            )));
        }
    }
    entries.sort();
    for path in entries {
        let p = path.display().to_string();
        let meta = fs::symlink_metadata(&path).map_err(|e| io_error(field, &p, &e))?;
        let name = name_of(field, &path)?;
        let mut rel = prefix.clone();
        rel.push(name);
        let ft = meta.file_type();
        if ft.is_symlink() {
            return Err(ApiError::bad_request(format!(
                "{field}: {p:?} is a symbolic link; links inside directories are not dispatched"
            )));
        } else if ft.is_dir() {
            walk_dir(field, &path, rel, depth + 1, out)?;
        } else if ft.is_file() {
            fs::File::open(&path).map_err(|e| io_error(field, &p, &e))?;
            out.push(SourceFile {
                source: path,
                path: rel,
                length: meta.len(),
            });
            if out.len() > MAX_FILES {
                return Err(ApiError::bad_request(format!(
                    "dispatchFiles hold more than {MAX_FILES} files"
                )));
            }
        } else {
            return Err(ApiError::bad_request(format!(
                "{field}: {p:?} is not a regular file or directory"
            )));
        }
    }
    Ok(())
}
