//! Checkpointed runs: the state of a run saved after every step, so that it can resume.

/// Implements [`CheckpointStore`] for a store of bytes with inherent
/// `async fn write_bytes(&self, id, Vec<u8>) -> Result<(), CheckpointError>` and
/// `async fn read_bytes(&self, id) -> Result<Option<(String, Vec<u8>)>, CheckpointError>`
/// (the `String` names where the bytes came from, for errors).
macro_rules! byte_checkpoint_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl<C, WI> $crate::CheckpointStore<C, WI> for $store
        where
            C: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
            WI: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
        {
            async fn save(
                &self,
                id: &str,
                checkpoint: &$crate::Checkpoint<C, WI>,
            ) -> Result<(), $crate::CheckpointError> {
                self.write_bytes(id, super::encode(id, checkpoint, None)?)
                    .await
            }

            async fn load(
                &self,
                id: &str,
            ) -> Result<Option<$crate::Checkpoint<C, WI>>, $crate::CheckpointError> {
                Ok(
                    <Self as $crate::CheckpointStore<C, WI>>::load_with_record(self, id)
                        .await?
                        .map(|(cp, _)| cp),
                )
            }

            async fn save_with_record(
                &self,
                id: &str,
                checkpoint: &$crate::Checkpoint<C, WI>,
                record: &$crate::CheckpointRecord,
            ) -> Result<(), $crate::CheckpointError> {
                self.write_bytes(id, super::encode(id, checkpoint, Some(record))?)
                    .await
            }

            async fn load_with_record(
                &self,
                id: &str,
            ) -> Result<
                Option<($crate::Checkpoint<C, WI>, Option<$crate::CheckpointRecord>)>,
                $crate::CheckpointError,
            > {
                match self.read_bytes(id).await? {
                    None => Ok(None),
                    Some((location, bytes)) => super::decode(&location, &bytes).map(Some),
                }
            }
        }
    };
}

mod file;
mod memory;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use file::FileCheckpointStore;
pub use memory::InMemoryCheckpointStore;

/// The saved state of a run: its context and the work items not executed yet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint<C, WI> {
    /// The run's context after the last saved step.
    pub context: C,
    /// The pending work items, in execution order.
    pub queue: VecDeque<WI>,
}

impl<C, WI> Checkpoint<C, WI> {
    /// A checkpoint of `context` with `queue` pending.
    pub fn new(context: C, queue: VecDeque<WI>) -> Self {
        Checkpoint { context, queue }
    }
}

/// Bookkeeping saved next to a checkpoint by the stores that support it: which input started
/// the run, the run's output once produced, and whether it completed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    /// The workflow that owns the checkpoint.
    pub workflow: String,
    /// A stable digest of the serialized input that started the run.
    pub input_digest: u64,
    /// The first terminal output, serialized, once a terminal produced it.
    pub output: Option<serde_json::Value>,
    /// Whether the run has finished (no work left).
    pub completed: bool,
}

/// Why a checkpoint could not be saved or loaded.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// Reading or writing the store failed.
    #[error("checkpoint I/O failed on {path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The stored bytes are not a valid checkpoint (torn write, manual edit, other type).
    #[error("checkpoint {location} is corrupt: {reason}")]
    Corrupt {
        /// The file path or the id of the checkpoint.
        location: String,
        /// What failed to decode.
        reason: String,
    },
    /// The checkpoint could not be serialized.
    #[error("checkpoint {id} could not be serialized: {reason}")]
    Serialize {
        /// The checkpoint's id.
        id: String,
        /// What failed.
        reason: String,
    },
    /// A store of your own failed (Floxide 3.x's catch-all).
    #[error("Store error: {0}")]
    Store(String),
}

/// An I/O error of a store of your own (Floxide 3.x: `?` on an `io::Result` in a store),
/// without a path.
impl From<std::io::Error> for CheckpointError {
    fn from(source: std::io::Error) -> Self {
        CheckpointError::Io {
            path: PathBuf::new(),
            source: Arc::new(source),
        }
    }
}

impl PartialEq for CheckpointError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                CheckpointError::Io { path: a, source: x },
                CheckpointError::Io { path: b, source: y },
            ) => a == b && x.kind() == y.kind(),
            (
                CheckpointError::Corrupt {
                    location: a,
                    reason: x,
                },
                CheckpointError::Corrupt {
                    location: b,
                    reason: y,
                },
            ) => a == b && x == y,
            (
                CheckpointError::Serialize { id: a, reason: x },
                CheckpointError::Serialize { id: b, reason: y },
            ) => a == b && x == y,
            (CheckpointError::Store(a), CheckpointError::Store(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for CheckpointError {}

/// Where checkpoints are kept.
///
/// `save` and `load` are all a store must provide. Stores that also keep the
/// [`CheckpointRecord`] (both provided stores do) let `run_with_checkpoint` recognise a
/// finished run and a run restarted with a different input.
#[async_trait::async_trait]
pub trait CheckpointStore<C, WI>: Send + Sync
where
    C: Send + Sync + 'static,
    WI: Send + Sync + 'static,
{
    /// Saves `checkpoint` under `id`, replacing the previous one.
    ///
    /// # Errors
    /// When the store cannot write.
    async fn save(&self, id: &str, checkpoint: &Checkpoint<C, WI>) -> Result<(), CheckpointError>;

    /// The checkpoint saved under `id`, if any.
    ///
    /// # Errors
    /// When the store cannot read, or the saved bytes are corrupt.
    async fn load(&self, id: &str) -> Result<Option<Checkpoint<C, WI>>, CheckpointError>;

    /// Saves `checkpoint` and `record` together. The default keeps only the checkpoint.
    ///
    /// # Errors
    /// When the store cannot write.
    async fn save_with_record(
        &self,
        id: &str,
        checkpoint: &Checkpoint<C, WI>,
        record: &CheckpointRecord,
    ) -> Result<(), CheckpointError> {
        let _ = record;
        self.save(id, checkpoint).await
    }

    /// The checkpoint and record saved under `id`. The default has no record.
    ///
    /// # Errors
    /// When the store cannot read, or the saved bytes are corrupt.
    async fn load_with_record(
        &self,
        id: &str,
    ) -> Result<Option<(Checkpoint<C, WI>, Option<CheckpointRecord>)>, CheckpointError> {
        Ok(self.load(id).await?.map(|cp| (cp, None)))
    }
}

/// The on-disk (and in-memory) form: one JSON document holding both parts.
#[derive(Serialize, Deserialize)]
struct Envelope<C, WI> {
    version: u32,
    checkpoint: Checkpoint<C, WI>,
    record: Option<CheckpointRecord>,
}

const ENVELOPE_VERSION: u32 = 1;

fn encode<C: Serialize, WI: Serialize>(
    id: &str,
    checkpoint: &Checkpoint<C, WI>,
    record: Option<&CheckpointRecord>,
) -> Result<Vec<u8>, CheckpointError> {
    #[derive(Serialize)]
    struct EnvelopeRef<'a, C, WI> {
        version: u32,
        checkpoint: &'a Checkpoint<C, WI>,
        record: Option<&'a CheckpointRecord>,
    }
    serde_json::to_vec(&EnvelopeRef {
        version: ENVELOPE_VERSION,
        checkpoint,
        record,
    })
    .map_err(|e| CheckpointError::Serialize {
        id: id.to_owned(),
        reason: e.to_string(),
    })
}

fn decode<C: DeserializeOwned, WI: DeserializeOwned>(
    location: &str,
    bytes: &[u8],
) -> Result<(Checkpoint<C, WI>, Option<CheckpointRecord>), CheckpointError> {
    let envelope: Envelope<C, WI> =
        serde_json::from_slice(bytes).map_err(|e| CheckpointError::Corrupt {
            location: location.to_owned(),
            reason: e.to_string(),
        })?;
    if envelope.version != ENVELOPE_VERSION {
        return Err(CheckpointError::Corrupt {
            location: location.to_owned(),
            reason: format!(
                "unsupported checkpoint format version {} (this build reads {ENVELOPE_VERSION})",
                envelope.version
            ),
        });
    }
    Ok((envelope.checkpoint, envelope.record))
}

/// A digest of `bytes` that is the same on every platform and Rust version (FNV-1a, 64 bit).
pub(crate) fn stable_digest(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
