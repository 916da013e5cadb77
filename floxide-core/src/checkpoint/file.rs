//! [`FileCheckpointStore`]: one file per checkpoint, replaced atomically.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::CheckpointError;

/// Durable checkpoints: one JSON file per id in a directory.
///
/// Every save writes a temporary file, flushes it to disk (`fsync`), renames it over the
/// previous checkpoint and syncs the directory, so a crash at any moment leaves either the
/// old or the new checkpoint, never a mix. A file that is nevertheless torn or edited gives
/// [`CheckpointError::Corrupt`] naming the file.
#[derive(Debug, Clone)]
pub struct FileCheckpointStore {
    dir: PathBuf,
}

impl FileCheckpointStore {
    /// A store keeping its files in `dir` (created on the first save).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileCheckpointStore { dir: dir.into() }
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file holding the checkpoint `id`. Ids are encoded so that any string is a safe
    /// file name: letters, digits, `-` and `_` are kept, every other byte becomes `%XX`.
    pub fn path_for(&self, id: &str) -> PathBuf {
        let mut name = String::with_capacity(id.len() + 5);
        for b in id.bytes() {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                name.push(char::from(b));
            } else {
                name.push_str(&format!("%{b:02X}"));
            }
        }
        if name.is_empty() {
            name.push('%');
        }
        name.push_str(".json");
        self.dir.join(name)
    }

    async fn write_bytes(&self, id: &str, bytes: Vec<u8>) -> Result<(), CheckpointError> {
        let dir = self.dir.clone();
        let path = self.path_for(id);
        blocking(move || write_atomically(&dir, &path, &bytes)).await
    }

    async fn read_bytes(&self, id: &str) -> Result<Option<(String, Vec<u8>)>, CheckpointError> {
        let path = self.path_for(id);
        blocking(move || match std::fs::read(&path) {
            Ok(bytes) => Ok(Some((path.display().to_string(), bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(&path, e)),
        })
        .await
    }
}

fn io_error(path: &Path, source: std::io::Error) -> CheckpointError {
    CheckpointError::Io {
        path: path.to_owned(),
        source: Arc::new(source),
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CheckpointError> + Send + 'static,
) -> Result<T, CheckpointError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(join) => Err(CheckpointError::Io {
            path: PathBuf::new(),
            source: Arc::new(std::io::Error::other(format!(
                "checkpoint file task failed: {join}"
            ))),
        }),
    }
}

/// temp file → fsync → rename → fsync(dir).
fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{file_name}.{}.{:016x}.tmp",
        std::process::id(),
        fastrand::u64(..)
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp).map_err(|e| io_error(&tmp, e))?;
        file.write_all(bytes).map_err(|e| io_error(&tmp, e))?;
        file.sync_all().map_err(|e| io_error(&tmp, e))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(|e| io_error(path, e))?;
        let dir_handle = std::fs::File::open(dir).map_err(|e| io_error(dir, e))?;
        dir_handle.sync_all().map_err(|e| io_error(dir, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

byte_checkpoint_store!(FileCheckpointStore);
