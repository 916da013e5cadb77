//! The Floxide 3.x surface of the distributed runtime, as one thin layer over our design.
//!
//! Floxide 3.x configured workers with one store per concern (`WorkQueue`, `ContextStore`,
//! ... each with an `InMemory…` and a `Redis…` type) and stepped runs with
//! `Workflow::start_distributed`/`step_distributed` and [`StepCallbacks`]. Those names work
//! unchanged, but a store no longer works alone: the guarantees need every effect of a step
//! committed together under its lease, so each store value is a typed *view* of one
//! [`Backend`](crate::distributed::Backend). The store traits' reads work as in 3.x; writes
//! that would bypass the engine's steps return an [`Unsupported`] error naming what to use.
//!
//! The core never calls into this module: the builders' per-store setters and the two
//! `Workflow` methods are its only entry points.

mod binding;
mod memory;
mod steps;
mod stores;

#[doc(hidden)]
pub use binding::{StoreBinding, StoreParts};
pub use memory::{
    InMemoryContextStore, InMemoryErrorStore, InMemoryLivenessStore, InMemoryMetricsStore,
    InMemoryRunInfoStore, InMemoryWorkItemStateStore, InMemoryWorkQueue,
};
pub(crate) use steps::{start as start_distributed, step as step_distributed};
pub use steps::{ItemProcessedOutcome, StepCallbacks, StepError};
#[doc(hidden)]
pub use stores::{kind, StoreKind, StoreView};
pub use stores::{
    ContextStore, ContextStoreError, ErrorStore, ErrorStoreError, LivenessStore,
    LivenessStoreError, MetricsError, MetricsStore, RunInfoError, RunInfoStore, Unsupported,
    WorkItemState, WorkItemStateStore, WorkItemStateStoreError, WorkQueue, WorkQueueError,
};
