//! Distributed runs: many workers, in one process or many, sharing one backend.
//!
//! An [`DistributedOrchestrator`] starts runs and observes and steers them; a
//! [`DistributedWorker`] (usually several, in a [`WorkerPool`]) takes work items from the
//! backend under a lease, executes their node and commits the step's effects in one fenced
//! call. The guarantees (nothing lost when a worker dies, each item's effects applied once,
//! concurrent context changes joined with [`Merge`](crate::Merge), blocking waits, scheduled
//! retries, dead letters) are documented in the guide's "Distributed runtime" chapter and
//! checked for every backend by `floxide::conformance`.
//!
//! The [`Backend`] trait is the whole contract with storage. [`InMemoryBackend`] keeps
//! everything in memory; `floxide-redis` provides the Redis backend.

mod backend;
mod codec;
mod compat;
pub(crate) mod exec;
mod health;
pub mod machine;
mod memory;
mod metrics;
pub mod orchestrator;
pub mod overview;
mod pool;
mod runner;
pub(crate) mod start;
pub(crate) mod step;
pub mod types;
pub mod worker;

// The module paths of Floxide 3.x (`floxide::distributed::context_store::ContextStore`, ...).
// `orchestrator`, `types` and `worker` are the modules above.

/// The context store of Floxide 3.x.
pub mod context_store {
    pub use super::compat::{ContextStore, ContextStoreError, InMemoryContextStore};
}
/// The error store of Floxide 3.x.
pub mod error_store {
    pub use super::compat::{ErrorStore, ErrorStoreError, InMemoryErrorStore};
}
/// [`EventLog`], at its Floxide 3.x path.
pub mod event_log {
    pub use crate::merge::{EventLog, LoggedEvent};
}
/// The liveness store of Floxide 3.x.
pub mod liveness_store {
    pub use super::compat::{InMemoryLivenessStore, LivenessStore, LivenessStoreError};
    pub use super::types::{WorkerHealth, WorkerStatus};
}
/// The metrics store of Floxide 3.x.
pub mod metrics_store {
    pub use super::compat::{InMemoryMetricsStore, MetricsError, MetricsStore};
}
/// The run store of Floxide 3.x.
pub mod run_info_store {
    pub use super::compat::{InMemoryRunInfoStore, RunInfoError, RunInfoStore};
}
/// The work-item state store of Floxide 3.x.
pub mod work_item_store {
    pub use super::compat::{
        InMemoryWorkItemStateStore, WorkItemState, WorkItemStateStore, WorkItemStateStoreError,
    };
    pub use super::types::WorkItemStatus;
}
/// The work queue of Floxide 3.x.
pub mod work_queue {
    pub use super::compat::{InMemoryWorkQueue, WorkQueue, WorkQueueError};
}

#[cfg(feature = "prometheus")]
pub use self::metrics::install_prometheus_exporter;
pub use self::metrics::{describe_metrics, record_queue_stats};
pub use crate::merge::{EventLog, LoggedEvent};
pub use backend::poison_error;
pub use backend::{history, query};
pub use backend::{
    AdminBackend, Backend, CommitItem, CommitOutcome, CommitReply, DistributedError, HeardOutputs,
    Lease, LeaseState, NewItem, QueueStats, RunAction, RunCursor, RunPage, RunQuery, RunSignals,
    RunWatch, StartRun, StepCommit, StepEvent, StepEventKind, StepFailed, TakeOptions, TakeRequest,
    Taken, VersionedContext, WorkerBackend, KEPT_LEASE_TOKEN, MAX_BATCH, MAX_COMMIT_STEPS,
};
#[doc(hidden)]
pub use compat::{kind, StoreBinding, StoreKind, StoreParts, StoreView};
pub(crate) use compat::{
    start_distributed as compat_start_distributed, step_distributed as compat_step_distributed,
};
pub use compat::{
    ContextStore, ContextStoreError, ErrorStore, ErrorStoreError, InMemoryContextStore,
    InMemoryErrorStore, InMemoryLivenessStore, InMemoryMetricsStore, InMemoryRunInfoStore,
    InMemoryWorkItemStateStore, InMemoryWorkQueue, ItemProcessedOutcome, LivenessStore,
    LivenessStoreError, MetricsError, MetricsStore, RunInfoError, RunInfoStore, StepCallbacks,
    StepError, Unsupported, WorkItemState, WorkItemStateStore, WorkItemStateStoreError, WorkQueue,
    WorkQueueError,
};
pub use memory::InMemoryBackend;
pub use orchestrator::{DistributedOrchestrator, OrchestratorBuilder};
pub use pool::WorkerPool;
#[cfg(feature = "runner")]
pub use runner::run_worker_main;
pub use runner::{run_worker, shutdown_signal, WorkerArgs};
pub use start::new_run_id;
pub use step::{current_step, StepContext};
pub use types::{
    payload_text, stall_of, DeadLetter, LivenessStatus, NodeTiming, RunId, RunInfo, RunMetrics,
    RunStatus, WorkItemInfo, WorkItemStatus, WorkerHealth, WorkerId, WorkerStatus, WorkflowError,
};
pub use worker::{DistributedWorker, WorkerBuilder, DEFAULT_CONCURRENCY};
