//! The in-memory store types of Floxide 3.x: typed views of an [`InMemoryBackend`].

use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};

use super::binding::{MemorySlot, StoreBinding};
use super::stores::{kind, StoreView};
use crate::distributed::InMemoryBackend;

/// Generates an in-memory view type: `Name<T>` typed by `T` (work item or context), or `Name`.
macro_rules! memory_view {
    ($(#[$doc:meta])* $name:ident<$t:ident>, $kind:ty, $accessor:ident) => {
        $(#[$doc])*
        ///
        /// A new value is attached to an [`InMemoryBackend`] when first used: together with
        /// other stores (in a builder or `Workflow::step_distributed`), it joins their backend;
        /// alone, it gets a fresh one. Clones share it.
        pub struct $name<$t> {
            slot: MemorySlot,
            _value: PhantomData<fn() -> $t>,
        }

        impl<$t> $name<$t> {
            /// A store not yet attached to a backend.
            pub fn new() -> Self {
                $name { slot: MemorySlot::default(), _value: PhantomData }
            }
        }

        impl<$t> Default for $name<$t> {
            fn default() -> Self {
                Self::new()
            }
        }

        impl<$t> Clone for $name<$t> {
            fn clone(&self) -> Self {
                $name { slot: Arc::clone(&self.slot), _value: PhantomData }
            }
        }

        impl<$t> std::fmt::Debug for $name<$t> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("attached", &self.slot.get().is_some())
                    .finish()
            }
        }

        impl<$t: 'static> StoreView<$kind> for $name<$t> {
            type Value = $t;
            fn binding(&self) -> StoreBinding {
                StoreBinding::Memory(Arc::clone(&self.slot))
            }
        }

        impl InMemoryBackend {
            #[doc = concat!("A [`", stringify!($name), "`] attached to this backend.")]
            pub fn $accessor<$t>(&self) -> $name<$t> {
                $name { slot: Arc::new(OnceLock::from(self.clone())), _value: PhantomData }
            }
        }
    };
    ($(#[$doc:meta])* $name:ident, $kind:ty, $accessor:ident) => {
        $(#[$doc])*
        ///
        /// A new value is attached to an [`InMemoryBackend`] when first used: together with
        /// other stores (in a builder), it joins their backend; alone, it gets a fresh one.
        /// Clones share it.
        #[derive(Clone, Default)]
        pub struct $name {
            slot: MemorySlot,
        }

        impl $name {
            /// A store not yet attached to a backend.
            pub fn new() -> Self {
                Self::default()
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("attached", &self.slot.get().is_some())
                    .finish()
            }
        }

        impl StoreView<$kind> for $name {
            type Value = ();
            fn binding(&self) -> StoreBinding {
                StoreBinding::Memory(Arc::clone(&self.slot))
            }
        }

        impl InMemoryBackend {
            #[doc = concat!("A [`", stringify!($name), "`] attached to this backend.")]
            pub fn $accessor(&self) -> $name {
                $name { slot: Arc::new(OnceLock::from(self.clone())) }
            }
        }
    };
}

memory_view!(
    /// The work queue of an in-memory backend, typed by the workflow's work item.
    InMemoryWorkQueue<WI>, kind::Queue, queue
);
memory_view!(
    /// The run contexts of an in-memory backend, typed by the context.
    InMemoryContextStore<C>, kind::Contexts, context_store
);
memory_view!(
    /// The work-item states of an in-memory backend, typed by the workflow's work item.
    InMemoryWorkItemStateStore<W>, kind::Items, work_item_state_store
);
memory_view!(
    /// The run records of an in-memory backend.
    InMemoryRunInfoStore, kind::Runs, run_info_store
);
memory_view!(
    /// The run counters of an in-memory backend.
    InMemoryMetricsStore, kind::Metrics, metrics_store
);
memory_view!(
    /// The failure records of an in-memory backend.
    InMemoryErrorStore, kind::Errors, error_store
);
memory_view!(
    /// The worker reports of an in-memory backend.
    InMemoryLivenessStore, kind::Liveness, liveness_store
);
