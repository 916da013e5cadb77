//! The values passed between the runtime and a backend.
//!
//! The structs a backend builds (leases, taken items, contexts, replies) are
//! `#[non_exhaustive]` with constructors, so that fields can be added without breaking
//! backends written outside this crate; a backend reads the runtime's requests by reference.

use std::sync::PoisonError;
use std::time::{Duration, SystemTime};

use crate::distributed::{RunId, RunStatus, WorkerId, WorkflowError};
use crate::ItemId;

/// A request to start a run: its record, context and first item, stored together.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StartRun {
    /// The run's id.
    pub run_id: RunId,
    /// The workflow's name.
    pub workflow: String,
    /// The serialized context.
    pub context: Vec<u8>,
    /// The first work item.
    pub first: NewItem,
    /// Starting twice with one key is refused with
    /// [`DistributedError::DuplicateRun`](super::DistributedError::DuplicateRun).
    pub idempotency_key: Option<String>,
    /// The wall-clock deadline of the whole run.
    pub deadline: Option<SystemTime>,
}

impl StartRun {
    /// A start of run `run_id` of `workflow` with `context` and its `first` item, without an
    /// idempotency key or a deadline.
    pub fn new(
        run_id: impl Into<RunId>,
        workflow: impl Into<String>,
        context: Vec<u8>,
        first: NewItem,
    ) -> Self {
        StartRun {
            run_id: run_id.into(),
            workflow: workflow.into(),
            context,
            first,
            idempotency_key: None,
            deadline: None,
        }
    }

    /// With an idempotency key.
    pub fn with_idempotency_key(mut self, key: Option<String>) -> Self {
        self.idempotency_key = key;
        self
    }

    /// With a wall-clock deadline for the whole run.
    pub fn with_deadline(mut self, deadline: Option<SystemTime>) -> Self {
        self.deadline = deadline;
        self
    }
}

/// A work item to store.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NewItem {
    /// Its id (derived from its parent's, so re-executions produce the same ids).
    pub id: ItemId,
    /// Its node.
    pub node: String,
    /// The serialized work item.
    pub bytes: Vec<u8>,
}

impl NewItem {
    /// Item `id` of `node`, serialized as `bytes`.
    pub fn new(id: ItemId, node: impl Into<String>, bytes: Vec<u8>) -> Self {
        NewItem {
            id,
            node: node.into(),
            bytes,
        }
    }
}

/// The right to execute and commit one work item, held until its deadline unless renewed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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

impl Lease {
    /// The lease of item `item_id` of run `run_id`, granted to `worker` with `token`.
    pub fn new(run_id: impl Into<RunId>, item_id: ItemId, token: u64, worker: WorkerId) -> Self {
        Lease {
            run_id: run_id.into(),
            item_id,
            token,
            worker,
        }
    }
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

/// The error a poison item fails with: it was delivered `deliveries` times without a commit,
/// over `limit` ([`TakeOptions::max_deliveries`]). Every backend and the worker give it in these
/// words (the Redis scripts too).
pub fn poison_error(deliveries: u32, limit: u32) -> String {
    format!("poison item: delivered {deliveries} times without a commit (limit {limit})")
}

/// What a worker asks for: up to `max` ready items of `workflow`.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct TakeRequest<'a> {
    /// The workflow whose items the worker executes.
    pub workflow: &'a str,
    /// The worker.
    pub worker: &'a WorkerId,
    /// Lease and poison settings.
    pub options: TakeOptions,
    /// How many items at most (the worker's free slots; at least 1).
    pub max: usize,
}

impl<'a> TakeRequest<'a> {
    /// A request for one item.
    pub fn new(workflow: &'a str, worker: &'a WorkerId, options: TakeOptions) -> Self {
        TakeRequest {
            workflow,
            worker,
            options,
            max: 1,
        }
    }

    /// For up to `max` items (at least 1).
    pub fn with_max(mut self, max: usize) -> Self {
        self.max = max.max(1);
        self
    }
}

/// A leased work item.
#[derive(Debug, Clone)]
#[non_exhaustive]
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

impl Taken {
    /// The first delivery of the first attempt of an item of `node` under `lease`, without a
    /// deadline or a prefetched context.
    pub fn new(lease: Lease, node: impl Into<String>, bytes: Vec<u8>) -> Self {
        Taken {
            lease,
            bytes,
            node: node.into(),
            attempt: 1,
            deliveries: 1,
            deadline: None,
            context: None,
        }
    }

    /// With its attempt and the deliveries of that attempt (this one included).
    pub fn with_attempt(mut self, attempt: u32, deliveries: u32) -> Self {
        self.attempt = attempt;
        self.deliveries = deliveries;
        self
    }

    /// With the run's deadline.
    pub fn with_deadline(mut self, deadline: Option<SystemTime>) -> Self {
        self.deadline = deadline;
        self
    }

    /// With the run's context, fetched with the item.
    pub fn with_context(mut self, context: Option<VersionedContext>) -> Self {
        self.context = context;
        self
    }
}

/// A run's context as stored, with its version (incremented by every change).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VersionedContext {
    /// The serialized context.
    pub bytes: Vec<u8>,
    /// Its version.
    pub version: u64,
}

impl VersionedContext {
    /// `bytes` at `version`.
    pub fn new(bytes: Vec<u8>, version: u64) -> Self {
        VersionedContext { bytes, version }
    }
}

/// The effects of a successful step, committed together.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct StepCommit {
    /// `Some(v)`: commit only if the context is still at version `v` (a `Hold` step, or a
    /// step whose changes the context an earlier step of its batch leaves holds already).
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

impl StepCommit {
    /// A step of `node` with no effects yet (add them through the public fields).
    pub fn new(node: impl Into<String>) -> Self {
        StepCommit {
            node: node.into(),
            ..StepCommit::default()
        }
    }
}

/// The token of the lease a backend grants a kept successor (see
/// [`CommitItem::keep_successor`]). Leases granted by takes have larger ones, so a kept lease
/// is never mistaken for one a take granted.
pub const KEPT_LEASE_TOKEN: u64 = 0;

/// One step of a batch commit: its lease and its effects.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct CommitItem<'a> {
    /// The lease the step ran under.
    pub lease: &'a Lease,
    /// Its effects.
    pub step: &'a StepCommit,
    /// The run's context the worker holds once the step is applied (version, bytes): a take
    /// in the same call may leave that context out of its reply.
    pub held: Option<(u64, &'a [u8])>,
    /// `Some(lease_timeout)`: the step's first [`CommitItem::kept`] successors, those it
    /// creates, are leased straight to the committing worker (the lease's holder) for that
    /// long, with token [`KEPT_LEASE_TOKEN`], when the run takes items; they are not returned
    /// in the reply (its other successors are queued or handed over as usual). The worker has
    /// executed them already (chained steps) and commits, fails or releases each under that
    /// lease, in the same call or later. Only sent to a backend whose
    /// [`WorkerBackend::keeps_successors`] is true.
    ///
    /// [`WorkerBackend::keeps_successors`]: super::WorkerBackend::keeps_successors
    pub keep_successor: Option<Duration>,
    /// How many of the step's successors, from the first, `keep_successor` keeps.
    pub kept: usize,
}

impl<'a> CommitItem<'a> {
    /// The commit of `step` under `lease`.
    pub fn new(lease: &'a Lease, step: &'a StepCommit) -> Self {
        CommitItem {
            lease,
            step,
            held: None,
            keep_successor: None,
            kept: 0,
        }
    }

    /// With the step's first successor leased to the committing worker for `lease_timeout`
    /// (see [`CommitItem::keep_successor`]).
    pub fn with_successor_kept(self, lease_timeout: Duration) -> Self {
        self.with_successors_kept(lease_timeout, 1)
    }

    /// With the step's first `count` successors leased to the committing worker for
    /// `lease_timeout` (see [`CommitItem::keep_successor`]).
    pub fn with_successors_kept(mut self, lease_timeout: Duration, count: usize) -> Self {
        self.keep_successor = Some(lease_timeout);
        self.kept = count;
        self
    }

    /// Whether the step's successor at `index` (in its list) is kept for the committing
    /// worker, if the step creates it (see [`CommitItem::keep_successor`]).
    pub fn keeps(&self, index: usize) -> bool {
        self.keep_successor.is_some() && index < self.kept
    }

    /// With the context the worker holds once the step is applied.
    pub fn with_held_context(mut self, version: u64, bytes: &'a [u8]) -> Self {
        self.held = Some((version, bytes));
        self
    }
}

/// The answer to a batch commit: one outcome per step, in order, and the items the commit
/// took for the worker.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CommitReply {
    /// The outcome of each step, in the order of the request.
    pub outcomes: Vec<CommitOutcome>,
    /// The items taken for the worker (when asked).
    pub taken: Vec<Taken>,
}

impl CommitReply {
    /// A reply.
    pub fn new(outcomes: Vec<CommitOutcome>, taken: Vec<Taken>) -> Self {
        CommitReply { outcomes, taken }
    }
}

/// A failed step.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StepFailed {
    /// Its node (empty when the item could not be decoded).
    pub node: String,
    /// What went wrong.
    pub error: String,
    /// `Some(wait)`: retry after `wait`; `None`: dead-letter the item and fail the run.
    pub retry_after: Option<Duration>,
}

impl StepFailed {
    /// A failure of `node` with `error`, retried after `retry_after` (`None`: dead-lettered).
    pub fn new(
        node: impl Into<String>,
        error: impl Into<String>,
        retry_after: Option<Duration>,
    ) -> Self {
        StepFailed {
            node: node.into(),
            error: error.into(),
            retry_after,
        }
    }
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

/// The queue of one workflow at one moment (see
/// [`AdminBackend::queue_stats`](super::AdminBackend::queue_stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
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

/// The outputs of runs this process heard complete, when the backend's notification carried
/// the output: kept briefly (the latest 1,024, for a second) so that a waiter woken by that
/// notification need not read the run (see
/// [`AdminBackend::heard_output`](super::AdminBackend::heard_output)). A completed run's first
/// output never changes; the short life only keeps a run id that is used again once its run's
/// retention is over (a retention of seconds) from meeting the old run's output.
#[derive(Debug, Default)]
pub struct HeardOutputs {
    heard: std::sync::Mutex<HeardInner>,
}

#[derive(Debug, Default)]
struct HeardInner {
    outputs: std::collections::HashMap<String, (std::time::Instant, Vec<u8>)>,
    order: std::collections::VecDeque<String>,
}

impl HeardOutputs {
    const KEEP: usize = 1024;
    const FOR: Duration = Duration::from_secs(1);

    /// Records that run `run_id` completed with `output` (JSON bytes).
    pub fn insert(&self, run_id: &str, output: Vec<u8>) {
        let mut heard = self.heard.lock().unwrap_or_else(PoisonError::into_inner);
        let now = std::time::Instant::now();
        if heard
            .outputs
            .insert(run_id.to_owned(), (now, output))
            .is_none()
        {
            heard.order.push_back(run_id.to_owned());
        }
        while heard.order.len() > Self::KEEP {
            if let Some(old) = heard.order.pop_front() {
                heard.outputs.remove(&old);
            }
        }
    }

    /// The output run `run_id` completed with, when heard in the last second.
    pub fn get(&self, run_id: &str) -> Option<Vec<u8>> {
        let heard = self.heard.lock().unwrap_or_else(PoisonError::into_inner);
        heard
            .outputs
            .get(run_id)
            .filter(|(at, _)| at.elapsed() < Self::FOR)
            .map(|(_, output)| output.clone())
    }

    /// Run `run_id` as a notification line names it (`<id>` or `<id>\t<output>`): as it is,
    /// or, when it holds a tab or a line break or starts with ESC, ESC and its bytes in hex, so
    /// that the line stays whole.
    pub fn line_id(run_id: &str) -> std::borrow::Cow<'_, str> {
        if run_id.contains(['\t', '\n']) || run_id.starts_with('\u{1b}') {
            let hex: String = run_id.bytes().map(|b| format!("{b:02x}")).collect();
            format!("\u{1b}{hex}").into()
        } else {
            run_id.into()
        }
    }

    /// The run a notification line's id names (see [`HeardOutputs::line_id`]); `None` when it
    /// is malformed.
    pub fn run_of_line(id: &str) -> Option<String> {
        let Some(hex) = id.strip_prefix('\u{1b}') else {
            return Some(id.to_owned());
        };
        if hex.len() % 2 != 0 {
            return None;
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        String::from_utf8(bytes).ok()
    }
}

/// A subscription to run changes (see [`AdminBackend::watch_runs`](super::AdminBackend::watch_runs)).
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

#[cfg(test)]
mod tests {
    use super::HeardOutputs;

    #[test]
    fn notification_lines_name_their_run_plainly_or_in_hex() {
        for run in ["order-17", "a\nb", "tab\there", "\u{1b}escaped", "", "ünï"] {
            let line_id = HeardOutputs::line_id(run);
            assert!(!line_id.contains(['\t', '\n']), "{line_id:?}");
            assert_eq!(HeardOutputs::run_of_line(&line_id).as_deref(), Some(run));
        }
        assert_eq!(HeardOutputs::line_id("order-17"), "order-17");
        assert_eq!(HeardOutputs::line_id("a\nb"), "\u{1b}610a62");
        assert_eq!(HeardOutputs::run_of_line("\u{1b}610"), None, "odd length");
        assert_eq!(HeardOutputs::run_of_line("\u{1b}zz"), None, "not hex");
        assert_eq!(HeardOutputs::run_of_line("\u{1b}ff"), None, "not UTF-8");
        assert_eq!(
            HeardOutputs::run_of_line("\u{1b}é"),
            None,
            "a non-ASCII digit"
        );
    }

    #[test]
    fn heard_outputs_keep_the_latest_runs_only() {
        let heard = HeardOutputs::default();
        heard.insert("first", b"1".to_vec());
        assert_eq!(heard.get("first"), Some(b"1".to_vec()));
        assert_eq!(heard.get("other"), None);
        // Heard again (a retried publication): still one entry.
        heard.insert("first", b"1".to_vec());
        for n in 0..HeardOutputs::KEEP - 1 {
            heard.insert(&format!("run-{n}"), n.to_string().into_bytes());
        }
        assert_eq!(heard.get("first"), Some(b"1".to_vec()), "1,024 kept");
        heard.insert("last", b"2".to_vec());
        assert_eq!(heard.get("first"), None, "the oldest made room");
        assert_eq!(heard.get("run-0"), Some(b"0".to_vec()));
        assert_eq!(heard.get("last"), Some(b"2".to_vec()));
    }
}
