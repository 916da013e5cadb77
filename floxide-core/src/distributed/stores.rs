//! The store traits: the named parts of a backend, for the per-store builder setters.
//!
//! Floxide 3.x configured workers with one store per concern. Those names remain, but a store
//! no longer works alone: the guarantees need a step's effects (successors, context, item
//! state, run completion, metrics, errors) to commit **together**, fenced by the item's lease.
//! So each store is a handle to one part of a backend, and the builders assemble the parts
//! into that backend (the in-memory parts lock together; a Redis store is a view of one
//! Redis). To write a new backend, implement [`Backend`](crate::distributed::Backend) and pass
//! it with `.backend(..)`.

use std::sync::Arc;

use crate::distributed::memory::{
    InMemoryContextStore, InMemoryErrorStore, InMemoryLivenessStore, InMemoryMetricsStore,
    InMemoryRunInfoStore, InMemoryWorkItemStateStore, InMemoryWorkQueue,
};
use crate::distributed::{Backend, DistributedError, InMemoryBackend};

/// The parts collected by a builder.
#[doc(hidden)]
#[derive(Default, Clone)]
pub struct StoreParts {
    queue: Option<InMemoryWorkQueue>,
    contexts: Option<InMemoryContextStore>,
    runs: Option<InMemoryRunInfoStore>,
    metrics: Option<InMemoryMetricsStore>,
    errors: Option<InMemoryErrorStore>,
    liveness: Option<InMemoryLivenessStore>,
    items: Option<InMemoryWorkItemStateStore>,
    /// Stores that are views of a whole backend (Redis and other backends): kind, identity
    /// of the backend (stores with one identity are views of one backend), the backend.
    views: Vec<(&'static str, String, Arc<dyn Backend>)>,
}

impl StoreParts {
    /// Whether any store was set.
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_none()
            && self.contexts.is_none()
            && self.runs.is_none()
            && self.metrics.is_none()
            && self.errors.is_none()
            && self.liveness.is_none()
            && self.items.is_none()
            && self.views.is_empty()
    }

    /// Records a store of kind `kind` that is a view of a whole backend, identified by
    /// `identity` (for example its server and key prefix).
    pub fn add_view(&mut self, kind: &'static str, identity: String, backend: Arc<dyn Backend>) {
        self.views.retain(|(k, _, _)| *k != kind);
        self.views.push((kind, identity, backend));
    }

    /// The backend made of the collected parts.
    pub(crate) fn assemble(self) -> Result<Arc<dyn Backend>, DistributedError> {
        if let Some((_, identity, first)) = self.views.first() {
            let memory_parts = self.queue.is_some()
                || self.contexts.is_some()
                || self.runs.is_some()
                || self.metrics.is_some()
                || self.errors.is_some()
                || self.liveness.is_some()
                || self.items.is_some();
            if memory_parts
                || self.views.iter().any(|(_, id, _)| id != identity)
                || self.views.len() < 7
            {
                return Err(DistributedError::Build(
                    "the stores come from different backends; give every store of one backend, \
                     or use `.backend(..)`"
                        .to_owned(),
                ));
            }
            return Ok(Arc::clone(first));
        }
        let missing: Vec<&str> = [
            ("queue", self.queue.is_none()),
            ("context_store", self.contexts.is_none()),
            ("run_info_store", self.runs.is_none()),
            ("metrics_store", self.metrics.is_none()),
            ("error_store", self.errors.is_none()),
            ("liveness_store", self.liveness.is_none()),
            ("work_item_state_store", self.items.is_none()),
        ]
        .into_iter()
        .filter_map(|(name, absent)| absent.then_some(name))
        .collect();
        if !missing.is_empty() {
            return Err(DistributedError::Build(format!(
                "missing {}: set every store, or use `.backend(InMemoryBackend::new())`",
                missing.join(", ")
            )));
        }
        Ok(Arc::new(InMemoryBackend::from_stores(
            self.queue.unwrap_or_default(),
            self.contexts.unwrap_or_default(),
            self.runs.unwrap_or_default(),
            self.metrics.unwrap_or_default(),
            self.errors.unwrap_or_default(),
            self.liveness.unwrap_or_default(),
            self.items.unwrap_or_default(),
        )))
    }
}

macro_rules! store_trait {
    ($(#[$doc:meta])* $trait:ident, $mem:ident, $field:ident, $kind:literal) => {
        $(#[$doc])*
        pub trait $trait: Send + Sync + 'static {
            /// Adds this store to the parts a builder assembles.
            #[doc(hidden)]
            fn attach(&self, parts: &mut StoreParts);
        }

        impl $trait for $mem {
            fn attach(&self, parts: &mut StoreParts) {
                parts.$field = Some(self.clone());
            }
        }

        impl $mem {
            #[doc(hidden)]
            pub const KIND: &'static str = $kind;
        }
    };
}

store_trait!(
    /// The queue part: ready, delayed and leased work items, and the dead letters.
    WorkQueue, InMemoryWorkQueue, queue, "queue"
);
store_trait!(
    /// The context part: each run's serialized context and its version.
    ContextStore, InMemoryContextStore, contexts, "context_store"
);
store_trait!(
    /// The run part: run records, statuses, outputs and idempotency keys.
    RunInfoStore, InMemoryRunInfoStore, runs, "run_info_store"
);
store_trait!(
    /// The metrics part: per-run counters and node timings.
    MetricsStore, InMemoryMetricsStore, metrics, "metrics_store"
);
store_trait!(
    /// The error part: per-run failure records.
    ErrorStore, InMemoryErrorStore, errors, "error_store"
);
store_trait!(
    /// The liveness part: worker health reports.
    LivenessStore, InMemoryLivenessStore, liveness, "liveness_store"
);
store_trait!(
    /// The work-item part: every item's state, attempt, deliveries and lease.
    WorkItemStateStore, InMemoryWorkItemStateStore, items, "work_item_state_store"
);
