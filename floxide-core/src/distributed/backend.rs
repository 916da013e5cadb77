//! The [`Backend`] trait: every operation the distributed runtime needs from shared storage.
//!
//! Each method is one atomic state transition. A backend keeps items and contexts as bytes
//! (it never sees user types), so one backend serves any number of workflows. The guarantees
//! of the runtime (leases, fenced commits, delayed retries, dead letters) are properties of
//! these transitions; the conformance suite in `floxide::conformance` checks them for any
//! backend.

use std::time::{Duration, SystemTime};

use crate::distributed::{
    DeadLetter, RunId, RunInfo, RunMetrics, RunStatus, WorkItemInfo, WorkerHealth, WorkerId,
    WorkflowError,
};
use crate::ItemId;

/// Errors of the distributed runtime and its backends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DistributedError {
    /// No run has this id.
    #[error("unknown run `{0}`")]
    UnknownRun(RunId),
    /// A run with this id exists already.
    #[error("a run with id `{0}` exists already")]
    RunExists(RunId),
    /// The idempotency key was used by another start.
    #[error("idempotency key `{key}` already started run `{existing}`")]
    DuplicateRun {
        /// The key.
        key: String,
        /// The run it started.
        existing: RunId,
    },
    /// The run's state does not allow the request (e.g. cancelling a finished run).
    #[error("run `{run_id}` is {status}: cannot {action}")]
    InvalidRunState {
        /// The run.
        run_id: RunId,
        /// Its status.
        status: RunStatus,
        /// What was asked.
        action: &'static str,
    },
    /// No dead letter matches.
    #[error("no dead letter for item {item_id} of run `{run_id}`")]
    UnknownDeadLetter {
        /// The run.
        run_id: RunId,
        /// The item.
        item_id: ItemId,
    },
    /// Stored bytes could not be decoded, or a value could not be encoded.
    #[error("codec error: {0}")]
    Codec(String),
    /// The backend could not be reached or answered with an error.
    #[error("backend error: {0}")]
    Backend(String),
    /// The run did not finish before the caller's deadline.
    #[error("run `{run_id}` did not finish within {waited:?}")]
    WaitTimeout {
        /// The run.
        run_id: RunId,
        /// How long the caller waited.
        waited: Duration,
    },
    /// The run finished without the requested output.
    #[error("run `{run_id}` finished as {status} without output{}", error.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    NoOutput {
        /// The run.
        run_id: RunId,
        /// How it finished.
        status: RunStatus,
        /// Why, when it failed.
        error: Option<String>,
    },
    /// The run has passed its retention: its records are gone (its dead letters may remain,
    /// to be dropped).
    #[error("run `{0}` has passed its retention: its records are gone")]
    RunExpired(RunId),
    /// A work item names a node its workflow does not have: the node was renamed or removed
    /// while items of it were queued (see the guide's deploy section).
    #[error(
        "work item of node `{node}`, which workflow `{workflow}` does not have (its nodes: \
         {known}): a node renamed or removed while its items were queued; deploy a version \
         that still has `{node}` until its items are done, then remove it"
    )]
    UnknownNode {
        /// The workflow.
        workflow: String,
        /// The node the item names.
        node: String,
        /// The workflow's nodes.
        known: String,
    },
    /// No live worker serves the run's workflow: its items wait in a queue nobody reads (a
    /// workflow renamed by a deploy while its runs were queued, or no worker deployed).
    #[error(
        "no live worker serves workflow `{workflow}` (live workers serve: {serving}): its \
         runs wait; if the workflow was renamed, run a worker of the old name until they are \
         done"
    )]
    NoWorker {
        /// The run's workflow.
        workflow: String,
        /// The workflows live workers serve.
        serving: String,
    },
    /// A builder was used without a required part.
    #[error("cannot build: {0}")]
    Build(String),
}

/// A request to start a run: its record, context and first item, stored together.
#[derive(Debug, Clone)]
pub struct StartRun {
    /// The run's id.
    pub run_id: RunId,
    /// The workflow's name.
    pub workflow: String,
    /// The serialized context.
    pub context: Vec<u8>,
    /// The first work item.
    pub first: NewItem,
    /// Starting twice with one key is refused with [`DistributedError::DuplicateRun`].
    pub idempotency_key: Option<String>,
    /// The wall-clock deadline of the whole run.
    pub deadline: Option<SystemTime>,
}

/// A work item to store.
#[derive(Debug, Clone)]
pub struct NewItem {
    /// Its id (derived from its parent's, so re-executions produce the same ids).
    pub id: ItemId,
    /// Its node.
    pub node: String,
    /// The serialized work item.
    pub bytes: Vec<u8>,
}

/// The right to execute and commit one work item, held until `deadline` unless renewed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The item's run.
    pub run_id: RunId,
    /// The item.
    pub item_id: ItemId,
    /// The fencing token: commits with an older token are rejected.
    pub token: u64,
    /// The holder.
    pub worker: WorkerId,
}

/// Settings of a take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TakeOptions {
    /// How long the lease lasts without renewal.
    pub lease_timeout: Duration,
    /// An item delivered more often than this in one attempt without a commit is poison: it is
    /// dead-lettered instead of delivered again.
    pub max_deliveries: u32,
}

impl Default for TakeOptions {
    fn default() -> Self {
        TakeOptions {
            lease_timeout: Duration::from_secs(30),
            max_deliveries: 5,
        }
    }
}

/// What to take after a commit (see [`Backend::commit_and_take`]).
#[derive(Debug, Clone, Copy)]
pub struct NextTake<'a> {
    /// The workflow whose items the worker executes.
    pub workflow: &'a str,
    /// The worker.
    pub worker: &'a WorkerId,
    /// Lease and poison settings.
    pub options: TakeOptions,
}

/// A leased work item.
#[derive(Debug, Clone)]
pub struct Taken {
    /// The lease to renew and to commit with.
    pub lease: Lease,
    /// The serialized work item.
    pub bytes: Vec<u8>,
    /// Its node, as recorded.
    pub node: String,
    /// The attempt (1 for the first execution).
    pub attempt: u32,
    /// Deliveries in this attempt, this one included.
    pub deliveries: u32,
    /// The run's wall-clock deadline.
    pub deadline: Option<SystemTime>,
    /// The run's context, when the backend fetched it with the item (saves a round trip).
    pub context: Option<VersionedContext>,
}

/// A run's context as stored, with its version (incremented by every change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionedContext {
    /// The serialized context.
    pub bytes: Vec<u8>,
    /// Its version.
    pub version: u64,
}

/// The effects of a successful step, committed together.
#[derive(Debug, Clone, Default)]
pub struct StepCommit {
    /// `Some(v)`: commit only if the context is still at version `v` (a `Hold` step).
    pub require_version: Option<u64>,
    /// `Some((base, bytes))`: replace the context, which must still be at version `base`.
    pub context: Option<(u64, Vec<u8>)>,
    /// Successor items (already-known ids are ignored).
    pub successors: Vec<NewItem>,
    /// Terminal outputs, as JSON.
    pub outputs: Vec<serde_json::Value>,
    /// Failures the step routed to `on_failure` successors.
    pub handled_failures: Vec<WorkflowError>,
    /// The node that ran.
    pub node: String,
    /// How long it ran.
    pub duration: Duration,
}

/// A failed step.
#[derive(Debug, Clone)]
pub struct StepFailed {
    /// Its node (empty when the item could not be decoded).
    pub node: String,
    /// What went wrong.
    pub error: String,
    /// `Some(wait)`: retry after `wait`; `None`: dead-letter the item and fail the run.
    pub retry_after: Option<Duration>,
}

/// The answer to a commit or a failure report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Applied. `finished` holds the run's final status when this step ended it.
    Committed {
        /// The run's status if this step finished it.
        finished: Option<RunStatus>,
    },
    /// The context changed since the version the step relied on: nothing was applied.
    ContextConflict {
        /// The current version.
        current: u64,
    },
    /// The lease expired and the item went to another worker: nothing was applied.
    LeaseLost,
    /// The run was cancelled: nothing was applied.
    RunInactive(RunStatus),
}

/// The queue of one workflow at one moment (see [`Backend::queue_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Items ready to be taken.
    pub ready: u64,
    /// Items waiting for a scheduled retry.
    pub delayed: u64,
    /// Items leased by a worker.
    pub in_flight: u64,
    /// Dead letters kept (until requeued or dropped).
    pub dead_letters: u64,
    /// Expired leases put back in the queue so far (a count that only grows).
    pub leases_reclaimed: u64,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Renewed; the run has this status.
    Active(RunStatus),
    /// The lease is gone: another worker may hold the item.
    Lost,
}

/// A change of a run's status requested by an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunAction {
    /// Stop the run for good.
    Cancel,
    /// Hold the run's items.
    Pause,
    /// Release held items (of a paused run), or re-enqueue what failed (of a failed run).
    Resume,
}

/// A subscription to run changes (see [`Backend::watch_runs`]).
#[derive(Debug)]
pub struct RunWatch {
    rx: Option<tokio::sync::watch::Receiver<u64>>,
}

impl RunWatch {
    /// A subscription that fires on every value sent through `rx`'s sender.
    pub fn new(rx: tokio::sync::watch::Receiver<u64>) -> Self {
        RunWatch { rx: Some(rx) }
    }

    /// A subscription that never fires.
    pub fn never() -> Self {
        RunWatch { rx: None }
    }

    /// Waits until some run changed since the subscription was taken (or since the last
    /// wait returned), or `timeout` passed.
    pub async fn changed(&mut self, timeout: Duration) {
        match self.rx.as_mut() {
            Some(rx) => {
                if let Ok(Err(_closed)) = tokio::time::timeout(timeout, rx.changed()).await {
                    // The backend is gone: behave like a subscription that never fires.
                    self.rx = None;
                }
            }
            None => tokio::time::sleep(timeout).await,
        }
    }
}

/// Shared storage for distributed runs. See the module documentation.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Stores a run's record, context and first item at once.
    ///
    /// # Errors
    /// [`DistributedError::RunExists`], [`DistributedError::DuplicateRun`], or a backend error.
    async fn start_run(&self, start: StartRun) -> Result<RunId, DistributedError>;

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

    /// Cancels, pauses or resumes a run.
    ///
    /// # Errors
    /// [`DistributedError::UnknownRun`], [`DistributedError::InvalidRunState`], or a backend
    /// error.
    async fn control(&self, run_id: &str, action: RunAction) -> Result<RunInfo, DistributedError>;

    /// Returns when the run's record may have changed, or after `timeout`.
    async fn wait_run_change(&self, run_id: &str, timeout: Duration);

    /// A subscription to changes of run records. Take it *before* reading a run, then wait
    /// on it: a change made in between is not missed. The default never fires (waiters then
    /// re-check when their timeout passes).
    fn watch_runs(&self) -> RunWatch {
        RunWatch::never()
    }

    /// Leases the next ready item of `workflow`, waiting up to `wait` for one to arrive
    /// (blocking on the backend, not polling).
    ///
    /// # Errors
    /// A backend error.
    async fn take(
        &self,
        workflow: &str,
        worker: &WorkerId,
        options: TakeOptions,
        wait: Duration,
    ) -> Result<Option<Taken>, DistributedError>;

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

    /// Commits a step's effects, fenced by `lease`.
    ///
    /// # Errors
    /// A backend error (then nothing was applied).
    async fn commit(
        &self,
        lease: &Lease,
        commit: StepCommit,
    ) -> Result<CommitOutcome, DistributedError>;

    /// Commits like [`commit`](Self::commit) and, when `next` is given and the commit
    /// applied, leases the caller's next ready item in the same call, sparing a round trip.
    /// The default commits, then takes without waiting.
    ///
    /// # Errors
    /// A backend error (then nothing was applied).
    async fn commit_and_take(
        &self,
        lease: &Lease,
        commit: StepCommit,
        next: Option<NextTake<'_>>,
    ) -> Result<(CommitOutcome, Option<Taken>), DistributedError> {
        let outcome = self.commit(lease, commit).await?;
        let taken = match (&outcome, next) {
            (CommitOutcome::Committed { .. }, Some(n)) => {
                self.take(n.workflow, n.worker, n.options, Duration::ZERO)
                    .await?
            }
            _ => None,
        };
        Ok((outcome, taken))
    }

    /// Records a failed step: schedules its retry or dead-letters it, fenced by `lease`.
    ///
    /// # Errors
    /// A backend error.
    async fn fail(
        &self,
        lease: &Lease,
        failure: StepFailed,
    ) -> Result<CommitOutcome, DistributedError>;

    /// Gives a leased item back untouched (graceful shutdown); it does not count as a delivery.
    ///
    /// # Errors
    /// A backend error.
    async fn release(&self, lease: &Lease) -> Result<(), DistributedError>;

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
