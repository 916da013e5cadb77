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
pub(crate) mod exec;
mod memory;
mod metrics;
mod orchestrator;
mod pool;
mod runner;
mod step;
mod stores;
mod types;
pub(crate) mod worker;

#[cfg(feature = "prometheus")]
pub use self::metrics::install_prometheus_exporter;
pub use self::metrics::{describe_metrics, record_queue_stats};
pub use crate::merge::EventLog;
pub use backend::{
    Backend, CommitOutcome, DistributedError, Lease, LeaseState, NewItem, NextTake, QueueStats,
    RunAction, RunWatch, StartRun, StepCommit, StepFailed, TakeOptions, Taken, VersionedContext,
};
pub use exec::new_run_id;
pub use memory::{
    InMemoryBackend, InMemoryContextStore, InMemoryErrorStore, InMemoryLivenessStore,
    InMemoryMetricsStore, InMemoryRunInfoStore, InMemoryWorkItemStateStore, InMemoryWorkQueue,
};
pub use orchestrator::{DistributedOrchestrator, OrchestratorBuilder};
pub use pool::WorkerPool;
pub use runner::{run_worker, run_worker_main, shutdown_signal, WorkerArgs};
pub use step::{current_step, StepContext};
pub use stores::{
    ContextStore, ErrorStore, LivenessStore, MetricsStore, RunInfoStore, StoreParts,
    WorkItemStateStore, WorkQueue,
};
pub use types::{
    DeadLetter, LivenessStatus, NodeTiming, RunId, RunInfo, RunMetrics, RunStatus, WorkItemInfo,
    WorkItemStatus, WorkerHealth, WorkerId, WorkerStatus, WorkflowError,
};
pub use worker::{DistributedWorker, WorkerBuilder};
