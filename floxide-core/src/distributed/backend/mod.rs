//! The backend contract, in two small traits: [`WorkerBackend`] (the worker's path: take a
//! batch, renew a lease, load a context, commit a batch with the next take, fail, release)
//! and [`AdminBackend`] (starting runs, steering and inspecting them). [`Backend`] is both.
//!
//! Each method is one atomic state transition. A backend keeps items and contexts as bytes
//! (it never sees user types), so one backend serves any number of workflows. The run state
//! machine every backend follows is written once, in [`machine`](crate::distributed::machine);
//! the guarantees of the runtime (leases, fenced commits, delayed retries, dead letters) are
//! properties of these transitions, and the conformance suite in `floxide::conformance`
//! checks them for any backend, with a model-based test against the machine.

mod error;
pub mod history;
pub mod query;
mod shared;
mod signals;
mod types;

use std::time::Duration;

use crate::distributed::{
    DeadLetter, RunId, RunInfo, RunMetrics, RunStatus, WorkItemInfo, WorkerHealth, WorkerId,
    WorkflowError,
};
use crate::graph::{RegisteredGraph, WorkflowGraph};
use crate::ItemId;

pub use error::DistributedError;
pub use history::{StepEvent, StepEventKind};
pub use query::{RunCursor, RunPage, RunQuery};
pub use signals::RunSignals;
pub use types::poison_error;
pub use types::{
    CommitItem, CommitOutcome, CommitReply, HeardOutputs, Lease, LeaseState, NewItem, QueueStats,
    RunAction, RunWatch, StartRun, StepCommit, StepFailed, TakeOptions, TakeRequest, Taken,
    VersionedContext, KEPT_LEASE_TOKEN,
};

/// The most items one take leases, and the most chains one commit carries (a step with the
/// successors its worker ran straight after it; see the guide's "Chains", and
/// [`MAX_COMMIT_STEPS`]): a worker's batch is capped at this.
pub const MAX_BATCH: usize = 64;

/// The most steps one commit carries, however long its chains: a commit call's work stays
/// within a few times a batch (a Redis script runs alone on its server while it lasts).
pub const MAX_COMMIT_STEPS: usize = 4 * MAX_BATCH;

/// What a worker needs from shared storage.
#[async_trait::async_trait]
pub trait WorkerBackend: Send + Sync + 'static {
    /// Leases up to `take.max` ready items of `take.workflow`, waiting up to `wait` for the
    /// first to arrive (blocking on the backend, not polling); an empty batch when none came.
    /// Never waits to fill a batch.
    ///
    /// # Errors
    /// A backend error.
    async fn take_batch(
        &self,
        take: TakeRequest<'_>,
        wait: Duration,
    ) -> Result<Vec<Taken>, DistributedError>;

    /// Renews a lease for `lease_timeout`.
    ///
    /// # Errors
    /// A backend error.
    async fn heartbeat(
        &self,
        lease: &Lease,
        lease_timeout: Duration,
    ) -> Result<LeaseState, DistributedError>;

    /// A run's context.
    ///
    /// # Errors
    /// [`DistributedError::UnknownRun`] or a backend error.
    async fn load_context(&self, run_id: &str) -> Result<VersionedContext, DistributedError>;

    /// Commits steps' effects, in order, each fenced by its lease and applied (or refused) on
    /// its own: a refused step (lost lease, context conflict, inactive run) never refuses a
    /// step of another run, nor one that leaves the context unchanged. Once a step that
    /// changes a run's context is refused, the later context changes of that run in the same
    /// call are refused as [`CommitOutcome::ContextConflict`] (a worker may have joined them
    /// onto the refused one, whose version number another commit can reach). When `next` is given, also leases up to `next.max` ready items for the worker in the
    /// same call, sparing a round trip (without waiting). A step's commit is atomic; the
    /// commits of one batch need not be atomic together.
    ///
    /// # Errors
    /// A backend error: then no step of the batch was applied, or (for a backend that applies
    /// a batch in several transactions) the outcomes are unknown and the leases will expire.
    /// A failure of the take alone is not an error: the reply then holds no taken item.
    async fn commit_batch(
        &self,
        commits: &[CommitItem<'_>],
        next: Option<TakeRequest<'_>>,
    ) -> Result<CommitReply, DistributedError>;

    /// Whether [`commit_batch`](Self::commit_batch) honours
    /// [`CommitItem::keep_successor`]: then a worker may execute a step's successors before
    /// the step is committed and commit them all in one call (a chain of steps, or a tree).
    fn keeps_successors(&self) -> bool {
        false
    }

    /// Records a failed step: schedules its retry or dead-letters it, fenced by `lease`.
    ///
    /// # Errors
    /// A backend error.
    async fn fail(
        &self,
        lease: &Lease,
        failure: &StepFailed,
    ) -> Result<CommitOutcome, DistributedError>;

    /// Gives a leased item back untouched (graceful shutdown); it does not count as a delivery.
    ///
    /// # Errors
    /// A backend error.
    async fn release(&self, lease: &Lease) -> Result<(), DistributedError>;

    /// Returns when the run's record may have changed, or after `timeout`.
    async fn wait_run_change(&self, run_id: &str, timeout: Duration);

    /// Leases the next ready item of `workflow`, waiting up to `wait` for one (a
    /// [`take_batch`](Self::take_batch) of one).
    ///
    /// # Errors
    /// A backend error.
    async fn take(
        &self,
        workflow: &str,
        worker: &WorkerId,
        options: TakeOptions,
        wait: Duration,
    ) -> Result<Option<Taken>, DistributedError> {
        let batch = self
            .take_batch(TakeRequest::new(workflow, worker, options), wait)
            .await?;
        Ok(batch.into_iter().next())
    }

    /// Commits one step (a [`commit_batch`](Self::commit_batch) of one, without a take).
    ///
    /// # Errors
    /// A backend error (then nothing was applied).
    async fn commit(
        &self,
        lease: &Lease,
        step: &StepCommit,
    ) -> Result<CommitOutcome, DistributedError> {
        let reply = self
            .commit_batch(&[CommitItem::new(lease, step)], None)
            .await?;
        reply.outcomes.into_iter().next().ok_or_else(|| {
            DistributedError::Backend("the backend answered a commit without an outcome".into())
        })
    }
}

/// What operators and orchestrators need: starting runs, steering and inspecting them.
#[async_trait::async_trait]
pub trait AdminBackend: Send + Sync + 'static {
    /// Stores a run's record, context and first item at once.
    ///
    /// # Errors
    /// [`DistributedError::RunExists`], [`DistributedError::DuplicateRun`], or a backend error.
    async fn start_run(&self, start: StartRun) -> Result<RunId, DistributedError>;

    /// Starts many runs, each as [`start_run`](Self::start_run) would (a backend may send them
    /// together); one answer per start, in order. The default starts them one by one.
    async fn start_runs(&self, starts: Vec<StartRun>) -> Vec<Result<RunId, DistributedError>> {
        let mut out = Vec::with_capacity(starts.len());
        for start in starts {
            out.push(self.start_run(start).await);
        }
        out
    }

    /// A run's record.
    ///
    /// # Errors
    /// [`DistributedError::UnknownRun`] or a backend error.
    async fn run_info(&self, run_id: &str) -> Result<RunInfo, DistributedError>;

    /// Runs, newest first, optionally only those with `status`.
    ///
    /// # Errors
    /// A backend error.
    async fn list_runs(&self, status: Option<RunStatus>) -> Result<Vec<RunInfo>, DistributedError>;

    /// One page of runs, newest first, filtered by `query`. The default pages through
    /// [`list_runs`](Self::list_runs); a backend with many runs answers from its index.
    ///
    /// # Errors
    /// [`DistributedError::InvalidCursor`] or a backend error.
    async fn query_runs(&self, query: &RunQuery) -> Result<RunPage, DistributedError> {
        let candidates = self.list_runs(query.status).await?;
        query::page_of(self, query, candidates).await
    }

    /// Cancels, pauses or resumes a run.
    ///
    /// # Errors
    /// [`DistributedError::UnknownRun`], [`DistributedError::InvalidRunState`], or a backend
    /// error.
    async fn control(&self, run_id: &str, action: RunAction) -> Result<RunInfo, DistributedError>;

    /// A subscription to changes of run records. Take it *before* reading a run, then wait
    /// on it: a change made in between is not missed. The default never fires (waiters then
    /// re-check when their timeout passes).
    fn watch_runs(&self) -> RunWatch {
        RunWatch::never()
    }

    /// A subscription to changes of run `run_id`'s record, taken like
    /// [`watch_runs`](Self::watch_runs). A backend that can tell runs apart wakes it for that
    /// run only; the default is [`watch_runs`](Self::watch_runs) (every run's changes).
    fn watch_run(&self, run_id: &str) -> RunWatch {
        let _ = run_id;
        self.watch_runs()
    }

    /// The output (JSON bytes) of run `run_id` when this process heard it complete through
    /// the backend's own notification, which carried it (see [`HeardOutputs`]); `None`
    /// otherwise. A waiter woken by that notification then need not read the run. The
    /// default hears nothing.
    fn heard_output(&self, _run_id: &str) -> Option<Vec<u8>> {
        None
    }

    /// The failures recorded for a run.
    ///
    /// # Errors
    /// [`DistributedError::UnknownRun`] or a backend error.
    async fn errors(&self, run_id: &str) -> Result<Vec<WorkflowError>, DistributedError>;

    /// The counters of a run.
    ///
    /// # Errors
    /// [`DistributedError::UnknownRun`] or a backend error.
    async fn metrics(&self, run_id: &str) -> Result<RunMetrics, DistributedError>;

    /// Every work item of a run with its state.
    ///
    /// # Errors
    /// [`DistributedError::UnknownRun`] or a backend error.
    async fn work_items(&self, run_id: &str) -> Result<Vec<WorkItemInfo>, DistributedError>;

    /// The serialized pending items of a run (not yet committed), in no particular order.
    ///
    /// # Errors
    /// [`DistributedError::UnknownRun`] or a backend error.
    async fn pending_items(&self, run_id: &str) -> Result<Vec<Vec<u8>>, DistributedError>;

    /// A run's input, as stored (its first item's bytes); `None` (the default) when the
    /// backend does not keep it.
    ///
    /// # Errors
    /// [`DistributedError::UnknownRun`] or a backend error.
    async fn run_input(&self, run_id: &str) -> Result<Option<Vec<u8>>, DistributedError> {
        let _ = run_id;
        Ok(None)
    }

    /// A run's step history (leases taken, renewed, expired; commits applied or fenced out;
    /// failures; releases), oldest first; `None` (the default) when the backend keeps none.
    ///
    /// # Errors
    /// [`DistributedError::UnknownRun`] or a backend error.
    async fn step_history(&self, run_id: &str) -> Result<Option<Vec<StepEvent>>, DistributedError> {
        let _ = run_id;
        Ok(None)
    }

    /// Every dead letter.
    ///
    /// # Errors
    /// A backend error.
    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, DistributedError>;

    /// Puts a dead-lettered item back in the queue (its run is revived if it had failed).
    ///
    /// # Errors
    /// [`DistributedError::UnknownDeadLetter`] or a backend error.
    async fn requeue_dead_letter(
        &self,
        run_id: &str,
        item_id: ItemId,
    ) -> Result<(), DistributedError>;

    /// Deletes a dead letter for good.
    ///
    /// # Errors
    /// [`DistributedError::UnknownDeadLetter`] or a backend error.
    async fn drop_dead_letter(&self, run_id: &str, item_id: ItemId)
        -> Result<(), DistributedError>;

    /// Records a worker's health report.
    ///
    /// # Errors
    /// A backend error.
    async fn report_worker(&self, health: &WorkerHealth) -> Result<(), DistributedError>;

    /// The last report of every worker.
    ///
    /// # Errors
    /// A backend error.
    async fn workers(&self) -> Result<Vec<WorkerHealth>, DistributedError>;

    /// Records `graph` under its workflow's name and hash (a graph already known gets its
    /// `last_seen` updated): workers and orchestrators register their workflow's graph, so
    /// that tools without its code can draw its runs.
    ///
    /// # Errors
    /// A backend error.
    async fn register_graph(&self, graph: &WorkflowGraph) -> Result<(), DistributedError>;

    /// Every registered graph, the most recently first seen first (several per workflow when
    /// its graph changed between deployments).
    ///
    /// # Errors
    /// A backend error.
    async fn graphs(&self) -> Result<Vec<RegisteredGraph>, DistributedError>;

    /// The sizes of `workflow`'s queue, for metrics; `None` (the default) when the backend
    /// does not keep them. Called every few seconds by a worker process that exports
    /// metrics, so it should be cheap.
    ///
    /// # Errors
    /// A backend error.
    async fn queue_stats(&self, workflow: &str) -> Result<Option<QueueStats>, DistributedError> {
        let _ = workflow;
        Ok(None)
    }
}

/// Shared storage for distributed runs: a [`WorkerBackend`] and an [`AdminBackend`] in one
/// (implemented for every type that is both).
pub trait Backend: WorkerBackend + AdminBackend {}

impl<T: WorkerBackend + AdminBackend> Backend for T {}
