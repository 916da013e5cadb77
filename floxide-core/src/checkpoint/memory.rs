//! [`InMemoryCheckpointStore`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::CheckpointError;

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

impl InMemoryCheckpointStore {
    async fn write_bytes(&self, id: &str, bytes: Vec<u8>) -> Result<(), CheckpointError> {
        self.entries().insert(id.to_owned(), bytes);
        Ok(())
    }

    async fn read_bytes(&self, id: &str) -> Result<Option<(String, Vec<u8>)>, CheckpointError> {
        Ok(self
            .raw(id)
            .map(|bytes| (format!("`{id}` (in memory)"), bytes)))
    }
}

byte_checkpoint_store!(InMemoryCheckpointStore);
