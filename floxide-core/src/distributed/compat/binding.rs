//! How the 3.x store values find the one backend they are views of.
//!
//! A Floxide 3.x program creates its stores one by one (`InMemoryWorkQueue::default()`,
//! `RedisContextStore::new(client)`, ...) and hands them to a builder or to
//! `Workflow::step_distributed`. Our guarantees need every effect of a step committed together,
//! so the stores handed over together must be views of one backend:
//! - a Redis store is a view of the Redis deployment its client names;
//! - an in-memory store starts unattached, and is attached to one [`InMemoryBackend`] the first
//!   time it is used: together with other stores, they all join the backend one of them
//!   already has (or a fresh one); alone, it gets a fresh backend. Clones share the attachment.

use std::sync::{Arc, OnceLock};

use crate::distributed::{Backend, DistributedError, InMemoryBackend};

/// The backend an in-memory store is attached to, once it is.
pub(crate) type MemorySlot = Arc<OnceLock<InMemoryBackend>>;

/// What a store value is a view of.
#[doc(hidden)]
#[derive(Clone)]
pub enum StoreBinding {
    /// An in-memory store: attached to a backend on first use.
    Memory(MemorySlot),
    /// A view of a whole backend; views with one `identity` are views of one backend.
    Backend {
        /// Which deployment (for example a Redis URL and key prefix).
        identity: String,
        /// The backend.
        backend: Arc<dyn Backend>,
    },
    /// A store implemented outside Floxide (the type's name).
    Custom(&'static str),
}

impl std::fmt::Debug for StoreBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreBinding::Memory(slot) => f
                .debug_tuple("Memory")
                .field(&slot.get().is_some())
                .finish(),
            StoreBinding::Backend { identity, .. } => {
                f.debug_tuple("Backend").field(identity).finish()
            }
            StoreBinding::Custom(name) => f.debug_tuple("Custom").field(name).finish(),
        }
    }
}

impl StoreBinding {
    /// The backend of stores handed over together, each named by its kind (`"queue"`, ...).
    ///
    /// # Errors
    /// [`DistributedError::Build`] when a store is implemented outside Floxide or the stores
    /// are views of different backends.
    pub(crate) fn unify(
        stores: &[(&'static str, &StoreBinding)],
    ) -> Result<Arc<dyn Backend>, DistributedError> {
        let mut memory = Vec::new();
        let mut views: Vec<(&str, &Arc<dyn Backend>)> = Vec::new();
        for (kind, binding) in stores {
            match binding {
                StoreBinding::Custom(type_name) => {
                    return Err(DistributedError::Build(format!(
                        "the {kind} is a `{type_name}`, a store implemented outside Floxide: a \
                         step's effects are committed together, under its lease, so every store \
                         must be a view of one backend. Use the InMemory…/Redis… stores, or \
                         implement `floxide::distributed::Backend` and pass it with `.backend(..)`"
                    )))
                }
                StoreBinding::Memory(slot) => memory.push(slot),
                StoreBinding::Backend { identity, backend } => views.push((identity, backend)),
            }
        }
        let mixed = || {
            DistributedError::Build(
                "the stores come from different backends; give every store of one backend, or \
                 use `.backend(..)`"
                    .to_owned(),
            )
        };
        if let Some((identity, backend)) = views.first() {
            if !memory.is_empty() || views.iter().any(|(id, _)| id != identity) {
                return Err(mixed());
            }
            return Ok(Arc::clone(backend));
        }
        let mut attached = memory.iter().filter_map(|slot| slot.get());
        let chosen = match attached.next() {
            Some(first) => {
                if attached.any(|other| !other.same_backend(first)) {
                    return Err(mixed());
                }
                first.clone()
            }
            None => InMemoryBackend::new(),
        };
        for slot in &memory {
            // Another thread may attach the slot meanwhile: what counts is the final attachment.
            if !slot.get_or_init(|| chosen.clone()).same_backend(&chosen) {
                return Err(mixed());
            }
        }
        Ok(Arc::new(chosen))
    }
}

/// The stores collected by a builder's per-store setters.
#[doc(hidden)]
#[derive(Default, Clone, Debug)]
pub struct StoreParts {
    stores: Vec<(&'static str, StoreBinding)>,
}

/// The seven stores, in the order they are named in messages.
const KINDS: [&str; 7] = [
    "queue",
    "context_store",
    "run_info_store",
    "metrics_store",
    "error_store",
    "liveness_store",
    "work_item_state_store",
];

impl StoreParts {
    /// Records the store of kind `kind` (replacing an earlier one).
    pub(crate) fn set(&mut self, kind: &'static str, binding: StoreBinding) {
        self.stores.retain(|(k, _)| *k != kind);
        self.stores.push((kind, binding));
    }

    /// Whether no store was set.
    pub(crate) fn is_empty(&self) -> bool {
        self.stores.is_empty()
    }

    /// The backend the collected stores are views of.
    ///
    /// # Errors
    /// [`DistributedError::Build`] when a store is missing, or as [`StoreBinding::unify`].
    pub(crate) fn assemble(self) -> Result<Arc<dyn Backend>, DistributedError> {
        let missing: Vec<&str> = KINDS
            .into_iter()
            .filter(|kind| !self.stores.iter().any(|(k, _)| k == kind))
            .collect();
        if !missing.is_empty() {
            return Err(DistributedError::Build(format!(
                "missing {}: set every store, or use `.backend(InMemoryBackend::new())`",
                missing.join(", ")
            )));
        }
        let stores: Vec<(&'static str, &StoreBinding)> =
            self.stores.iter().map(|(k, b)| (*k, b)).collect();
        StoreBinding::unify(&stores)
    }
}
