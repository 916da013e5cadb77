//! [`InMemoryCheckpointStore`].

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, PoisonError};

use super::CheckpointError;

/// Checkpoints kept in memory **as serialized bytes**, so a loaded checkpoint never aliases
/// the running context: it behaves like a durable store, minus the durability.
///
/// Typed by the context and work item of the workflow it serves, as in Floxide 3.x
/// (`InMemoryCheckpointStore<C, WI>`; usually inferred). Clones share the same storage.
pub struct InMemoryCheckpointStore<C, WI> {
    entries: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    _types: PhantomData<fn() -> (C, WI)>,
}

impl<C, WI> Clone for InMemoryCheckpointStore<C, WI> {
    fn clone(&self) -> Self {
        InMemoryCheckpointStore {
            entries: Arc::clone(&self.entries),
            _types: PhantomData,
        }
    }
}

impl<C, WI> Default for InMemoryCheckpointStore<C, WI> {
    fn default() -> Self {
        InMemoryCheckpointStore {
            entries: Arc::default(),
            _types: PhantomData,
        }
    }
}

impl<C, WI> std::fmt::Debug for InMemoryCheckpointStore<C, WI> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryCheckpointStore")
            .field("ids", &self.ids())
            .finish()
    }
}

impl<C, WI> InMemoryCheckpointStore<C, WI> {
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

impl<C, WI> InMemoryCheckpointStore<C, WI> {
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

byte_checkpoint_store!(InMemoryCheckpointStore<C, WI>);
