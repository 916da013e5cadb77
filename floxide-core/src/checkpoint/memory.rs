//! [`InMemoryCheckpointStore`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{decode, encode, Checkpoint, CheckpointError, CheckpointRecord, CheckpointStore};

/// Checkpoints kept in memory **as serialized bytes**, so a loaded checkpoint never aliases
/// the running context: it behaves like a durable store, minus the durability.
///
/// Clones share the same storage.
#[derive(Debug, Clone, Default)]
pub struct InMemoryCheckpointStore {
    entries: Arc<Mutex<HashMap<String, Vec<u8>>>>,
}

impl InMemoryCheckpointStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<u8>>> {
        // Every update is a single insert or remove, so a poisoned map is still consistent.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The ids with a saved checkpoint, sorted.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.entries().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Removes the checkpoint saved under `id`; returns whether there was one.
    pub fn remove(&self, id: &str) -> bool {
        self.entries().remove(id).is_some()
    }

    /// The raw bytes saved under `id` (for inspection and tests).
    pub fn raw(&self, id: &str) -> Option<Vec<u8>> {
        self.entries().get(id).cloned()
    }

    /// Replaces the raw bytes saved under `id` (for tests of corrupt checkpoints).
    pub fn set_raw(&self, id: &str, bytes: Vec<u8>) {
        self.entries().insert(id.to_owned(), bytes);
    }
}

#[async_trait::async_trait]
impl<C, WI> CheckpointStore<C, WI> for InMemoryCheckpointStore
where
    C: Serialize + DeserializeOwned + Send + Sync + 'static,
    WI: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    async fn save(&self, id: &str, checkpoint: &Checkpoint<C, WI>) -> Result<(), CheckpointError> {
        let bytes = encode(id, checkpoint, None)?;
        self.entries().insert(id.to_owned(), bytes);
        Ok(())
    }

    async fn load(&self, id: &str) -> Result<Option<Checkpoint<C, WI>>, CheckpointError> {
        Ok(<Self as CheckpointStore<C, WI>>::load_with_record(self, id)
            .await?
            .map(|(cp, _)| cp))
    }

    async fn save_with_record(
        &self,
        id: &str,
        checkpoint: &Checkpoint<C, WI>,
        record: &CheckpointRecord,
    ) -> Result<(), CheckpointError> {
        let bytes = encode(id, checkpoint, Some(record))?;
        self.entries().insert(id.to_owned(), bytes);
        Ok(())
    }

    async fn load_with_record(
        &self,
        id: &str,
    ) -> Result<Option<(Checkpoint<C, WI>, Option<CheckpointRecord>)>, CheckpointError> {
        let Some(bytes) = self.raw(id) else {
            return Ok(None);
        };
        decode(&format!("`{id}` (in memory)"), &bytes).map(Some)
    }
}
