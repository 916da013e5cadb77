//! The in-memory backend: every guarantee of the distributed runtime, in one process.
//!
//! It stores serialized bytes only (contexts and items round-trip through serde, as with
//! Redis), takes an item in O(1) whatever the number of runs, and lets idle workers wait on a
//! notification instead of polling.

mod parts;

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use parts::RESUME_MARKER;
use parts::{slot, HashMap, ItemRecord, ItemsState, QueueState, Recorded, RunItems, RunsState};
use parts::{ContextsPart, ErrorsPart, ItemsPart, LivenessPart, MetricsPart, QueuePart, RunsPart};

use crate::distributed::backend::{
    AdminBackend, CommitItem, CommitOutcome, CommitReply, DistributedError, Lease, LeaseState,
    QueueStats, RunAction, RunSignals, RunWatch, StartRun, StepCommit, StepEvent, StepEventKind,
    StepFailed, TakeOptions, TakeRequest, Taken, VersionedContext, WorkerBackend, KEPT_LEASE_TOKEN,
};
use crate::distributed::history::HISTORY_KEPT;
use crate::distributed::machine::{self, ControlEffect, FailureEffect, RunState};
use crate::distributed::types::payload_text;
use crate::distributed::{
    DeadLetter, RunId, RunInfo, RunMetrics, RunStatus, WorkItemInfo, WorkItemStatus, WorkerHealth,
    WorkerId, WorkflowError,
};
use crate::graph::{RegisteredGraph, WorkflowGraph};
use crate::ItemId;

/// Every store of the distributed runtime, in memory. Clones share the same stores.
///
/// ```
/// use floxide_core::distributed::InMemoryBackend;
/// let backend = InMemoryBackend::new();
/// let shared = backend.clone(); // the same runs, queues and contexts
/// # let _ = shared;
/// ```
#[derive(Debug, Clone)]
pub struct InMemoryBackend {
    /// How long finished runs are kept.
    retention: Duration,
    /// How long dead letters are kept.
    letter_retention: Duration,
    pub(crate) runs: RunsPart,
    pub(crate) items: ItemsPart,
    pub(crate) queue: QueuePart,
    pub(crate) contexts: ContextsPart,
    pub(crate) metrics: MetricsPart,
    pub(crate) errors: ErrorsPart,
    pub(crate) liveness: LivenessPart,
    /// Per-run change signals, for waiters on one run.
    signals: Arc<RunSignals>,
}

impl Default for InMemoryBackend {
    fn default() -> Self {
        InMemoryBackend {
            retention: Duration::from_secs(24 * 3600),
            letter_retention: Duration::from_secs(7 * 24 * 3600),
            runs: RunsPart::default(),
            items: ItemsPart::default(),
            queue: QueuePart::default(),
            contexts: ContextsPart::default(),
            metrics: MetricsPart::default(),
            errors: ErrorsPart::default(),
            liveness: LivenessPart::default(),
            signals: Arc::default(),
        }
    }
}

/// Entries of finished runs or dead letters removed per operation, so that no operation
/// does work proportional to the history (G9).
const PRUNE_SLICE: usize = 16;

/// Parked items moved back to the queue per resume marker met by a take.
const UNPARK_SLICE: usize = 256;

impl InMemoryBackend {
    /// A backend with empty stores (finished runs kept 24 h, dead letters 7 days).
    pub fn new() -> Self {
        Self::default()
    }

    /// How long finished runs are kept (default 24 h): after it, every record of the run is
    /// gone (its dead letters have their own retention).
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// How long dead letters are kept (default 7 days).
    pub fn with_dead_letter_retention(mut self, retention: Duration) -> Self {
        self.letter_retention = retention;
        self
    }

    /// Whether both values are handles to the same stores.
    pub fn same_backend(&self, other: &InMemoryBackend) -> bool {
        Arc::ptr_eq(&self.runs.part, &other.runs.part)
    }

    /// Replaces the stored bytes of a pending item (for tests of corrupt items).
    ///
    /// # Errors
    /// [`DistributedError::UnknownRun`] when the run or item does not exist.
    pub fn corrupt_item(
        &self,
        run_id: &str,
        item_id: ItemId,
        bytes: &[u8],
    ) -> Result<(), DistributedError> {
        let mut items = self.items.lock();
        let record = items
            .runs
            .get_mut(run_id)
            .and_then(|r| r.items.get_mut(&item_id))
            .ok_or_else(|| DistributedError::UnknownRun(run_id.to_owned()))?;
        record.bytes = Arc::from(bytes);
        Ok(())
    }

    /// Replaces the stored bytes of a run's context (for tests of corrupt contexts).
    ///
    /// # Errors
    /// [`DistributedError::UnknownRun`] when the run does not exist.
    pub fn corrupt_context(&self, run_id: &str, bytes: &[u8]) -> Result<(), DistributedError> {
        let mut contexts = self.contexts.lock();
        let entry = contexts
            .contexts
            .get_mut(run_id)
            .ok_or_else(|| DistributedError::UnknownRun(run_id.to_owned()))?;
        entry.0 = bytes.to_vec();
        entry.1 += 1;
        Ok(())
    }

    /// Wakes the waiters on `changed` runs and those on every run.
    fn notify_runs<'a>(&self, changed: impl IntoIterator<Item = &'a str>) {
        for run in changed {
            self.signals.changed(run);
        }
        self.runs
            .part
            .version
            .send_modify(|v| *v = v.wrapping_add(1));
    }

    fn notify_work(&self, n: usize) {
        for _ in 0..n.min(64) {
            self.queue.part.changed.notify_one();
        }
        if n > 64 {
            self.queue.part.changed.notify_waiters();
        }
    }

    /// One non-blocking take; `Err(next_due)` when nothing is ready.
    fn try_take(
        &self,
        workflow: &str,
        worker: &WorkerId,
        options: TakeOptions,
    ) -> Result<Taken, Option<Instant>> {
        let now = Instant::now();
        let mut runs = self.runs.lock();
        let mut items = self.items.lock();
        let mut queue = self.queue.lock();
        // Runs whose record this take changes (started, or failed by a poison item).
        let mut changed: Vec<RunId> = Vec::new();

        self.due_work(&mut items, &mut queue, now);

        let mut failed_now: Option<RunId> = None;
        let result = loop {
            let Some((run_id, item_id)) = queue.ready.get_mut(workflow).and_then(|q| q.pop_front())
            else {
                break Err(queue.next_due());
            };
            // Entries of finished runs (whose items are gone) are dropped here.
            let Some(run_items) = items.runs.get_mut(&run_id) else {
                continue;
            };
            let Some(info) = runs.runs.get_mut(&run_id) else {
                continue;
            };
            if item_id == RESUME_MARKER {
                if machine::takes_items(info.status) {
                    unpark(&mut queue, workflow, run_id, run_items);
                }
                continue;
            }
            let Some(record) = run_items.items.get_mut(&item_id) else {
                continue;
            };
            if record.status != WorkItemStatus::Pending {
                continue;
            }
            if !machine::takes_items(info.status) {
                if machine::accepts_results(info.status) {
                    // Paused or failed: the item waits, parked, for a resume.
                    record.status = WorkItemStatus::Held;
                    run_items.parked.push_back(item_id);
                }
                continue;
            }
            record.deliveries += 1;
            if record.deliveries > options.max_deliveries {
                let limit = options.max_deliveries;
                let left = &mut run_items.outstanding;
                if self.poisoned(&mut queue, (&run_id, item_id), record, left, info, limit) {
                    failed_now = Some(run_id.clone());
                }
                changed.push(run_id);
                continue;
            }
            queue.next_token += 1;
            let token = queue.next_token;
            let holder: Arc<str> = Arc::from(worker.0.as_str());
            let lease = (token, holder, options.lease_timeout);
            self.grant(&mut queue, (&run_id, item_id, workflow), record, lease);
            if info.status == RunStatus::Pending {
                info.status = RunStatus::Running;
                changed.push(run_id.clone());
            }
            let lease = Lease {
                run_id,
                item_id,
                token,
                worker: worker.clone(),
            };
            break Ok(taken(lease, record, info.deadline));
        };
        let garbage =
            failed_now.and_then(|run| finished(&mut runs, &mut items, &run, RunStatus::Failed));
        drop((runs, items, queue));
        drop(garbage);
        if !changed.is_empty() {
            self.notify_runs(changed.iter().map(String::as_str));
        }
        result
    }

    /// Hands expired leases back to the queue and makes due retries ready.
    fn due_work(&self, items: &mut ItemsState, queue: &mut QueueState, now: Instant) {
        while let Some(Reverse((at, token, wf, run, item))) = queue.leases.peek().cloned() {
            if at > now {
                break;
            }
            queue.leases.pop();
            let Some(record) = items
                .runs
                .get_mut(&run)
                .and_then(|r| r.items.get_mut(&item))
            else {
                continue;
            };
            match record.lease.take() {
                Some((t, holder, expiry)) if t == token && expiry <= now => {
                    record.status = WorkItemStatus::Pending;
                    queue.push_ready(&wf, (run.clone(), item));
                    self.metrics
                        .lock()
                        .runs
                        .entry(run.clone())
                        .or_default()
                        .reclaimed += 1;
                    let kind = StepEventKind::Expired;
                    self.record(&run, item, record, kind, Some(holder), token);
                }
                other => record.lease = other,
            }
        }
        while let Some(Reverse((due, _, wf, run, item))) = queue.delayed.peek().cloned() {
            if due > now {
                break;
            }
            queue.delayed.pop();
            if let Some(record) = items
                .runs
                .get_mut(&run)
                .and_then(|r| r.items.get_mut(&item))
            {
                if record.status == WorkItemStatus::WaitingRetry {
                    record.status = WorkItemStatus::Pending;
                    queue.push_ready(&wf, (run, item));
                }
            }
        }
    }

    /// Item `at` (its `record`) was delivered more than `limit` times without a commit: it goes
    /// to the dead letters with the error, its run's `outstanding` count drops, and the run
    /// fails unless it already finished. Returns whether the run failed now.
    fn poisoned(
        &self,
        queue: &mut QueueState,
        (run_id, item_id): (&RunId, ItemId),
        record: &mut ItemRecord,
        outstanding: &mut usize,
        info: &mut RunInfo,
        limit: u32,
    ) -> bool {
        let error = format!(
            "poison item: delivered {} times without a commit (limit {limit})",
            record.deliveries - 1,
        );
        record.status = WorkItemStatus::PermanentlyFailed;
        *outstanding = outstanding.saturating_sub(1);
        let letter = DeadLetter {
            run_id: run_id.clone(),
            item_id,
            node: record.node.to_string(),
            error: error.clone(),
            deliveries: record.deliveries - 1,
            attempt: record.attempt,
            at: SystemTime::now(),
            payload: payload_text(&record.bytes),
        };
        add_letter(queue, letter, self.letter_retention);
        self.errors
            .lock()
            .runs
            .entry(run_id.clone())
            .or_default()
            .push(WorkflowError {
                work_item: item_id,
                node: record.node.to_string(),
                error: error.clone(),
                attempt: record.attempt,
                handled: false,
                timestamp: SystemTime::now(),
            });
        fail_run(info, error)
    }
}

/// Removes the runs past their `retention`, a slice at a time (each start prunes one): no
/// operation does work proportional to the history (G9). Returns what they held, to be
/// dropped once the locks are released.
fn prune_finished(
    runs: &mut RunsState,
    (items, contexts, metrics, errors): (
        &mut ItemsState,
        &mut parts::ContextsState,
        &mut parts::MetricsState,
        &mut parts::ErrorsState,
    ),
    retention: Duration,
) -> Vec<impl Sized> {
    let mut gone = Vec::new();
    let now = Instant::now();
    for _ in 0..PRUNE_SLICE {
        let Some((at, run)) = runs.finished.front().cloned() else {
            break;
        };
        if at + retention > now {
            break;
        }
        runs.finished.pop_front();
        // A run resumed since (or finished again later) is not this entry's to remove.
        if runs.finished_at.get(&run) != Some(&at) {
            continue;
        }
        runs.finished_at.remove(&run);
        runs.inputs.remove(&run);
        if let Some(info) = runs.runs.remove(&run) {
            if let Some(key) = &info.idempotency_key {
                runs.keys.remove(key);
            }
        }
        if let Some(seq) = runs.seq_of.remove(&run) {
            runs.order.remove(&seq);
        }
        gone.push((
            items.runs.remove(&run),
            contexts.contexts.remove(&run),
            metrics.runs.remove(&run),
            errors.runs.remove(&run),
            errors.history.remove(&run),
        ));
    }
    gone
}

/// Schedules the next attempt of `lease`'s item (its `record`, of `workflow`) in `wait`: it
/// waits for its retry, with its deliveries counted anew.
fn schedule_retry(
    queue: &mut QueueState,
    record: &mut ItemRecord,
    (workflow, lease): (&str, &Lease),
    wait: Duration,
) {
    record.status = WorkItemStatus::WaitingRetry;
    record.attempt += 1;
    record.deliveries = 0;
    queue.seq += 1;
    let seq = queue.seq;
    queue.delayed.push(Reverse((
        Instant::now() + wait,
        seq,
        workflow.to_owned(),
        lease.run_id.clone(),
        lease.item_id,
    )));
}

/// The first `most` items of run `run_id` in the dead letters.
fn dead_of(queue: &QueueState, run_id: &str, most: usize) -> Vec<ItemId> {
    queue
        .dead
        .range(
            (run_id.to_owned(), ItemId::from_u128(0))
                ..=(run_id.to_owned(), ItemId::from_u128(u128::MAX)),
        )
        .map(|(key, _)| key.1)
        .take(most)
        .collect()
}

/// Takes items `ids` of run `run_id` out of the dead letters: each one that failed for good
/// is outstanding again, parked (with its deliveries counted anew) until the run's resume
/// queues it.
fn revive(queue: &mut QueueState, run_id: &str, run_items: &mut RunItems, ids: &[ItemId]) {
    for id in ids {
        queue.dead.remove(&(run_id.to_owned(), *id));
        if let Some(r) = run_items.items.get_mut(id) {
            if r.status == WorkItemStatus::PermanentlyFailed {
                r.status = WorkItemStatus::Held;
                r.deliveries = 0;
                run_items.outstanding += 1;
                run_items.parked.push_back(*id);
            }
        }
    }
}

/// Applies `commit`'s context change to the run's stored context (bytes, version) unless the
/// version the commit required or was based on is not the stored one: that one is returned.
fn apply_context(
    contexts: &mut HashMap<RunId, (Vec<u8>, u64)>,
    run_id: &RunId,
    commit: &StepCommit,
) -> Option<u64> {
    slot(contexts, run_id, |(ctx_bytes, version)| {
        let base = commit.context.as_ref().map(|(base, _)| *base);
        if [commit.require_version, base]
            .iter()
            .flatten()
            .any(|v| v != version)
        {
            return Some(*version);
        }
        if let Some((_, bytes)) = &commit.context {
            ctx_bytes.clone_from(bytes);
            *version += 1;
        }
        None
    })
}

/// What a take of the item in `record` under `lease` hands the worker (its context is loaded
/// apart).
fn taken(lease: Lease, record: &ItemRecord, deadline: Option<SystemTime>) -> Taken {
    Taken {
        lease,
        bytes: record.bytes.to_vec(),
        node: record.node.to_string(),
        attempt: record.attempt,
        deliveries: record.deliveries,
        deadline,
        context: None,
    }
}

/// A resumed run's parked items go back to `workflow`'s queue, a slice at a time (a marker
/// queued after them brings the next slice).
fn unpark(queue: &mut QueueState, workflow: &str, run_id: RunId, run_items: &mut RunItems) {
    for _ in 0..UNPARK_SLICE {
        let Some(id) = run_items.parked.pop_front() else {
            break;
        };
        if let Some(r) = run_items.items.get_mut(&id) {
            if r.status == WorkItemStatus::Held {
                r.status = WorkItemStatus::Pending;
                queue.push_ready(workflow, (run_id.clone(), id));
            }
        }
    }
    if !run_items.parked.is_empty() {
        queue.push_ready(workflow, (run_id, RESUME_MARKER));
    }
}

/// The holder of `lease`, shared with the item's lease record while that is still `lease`.
fn holder(record: &ItemRecord, lease: &Lease) -> Arc<str> {
    match &record.lease {
        Some((token, worker, _)) if *token == lease.token => worker.clone(),
        _ => Arc::from(lease.worker.0.as_str()),
    }
}

/// Drops a leased item of a run that is over.
fn drop_item(run_items: &mut RunItems, item: ItemId) {
    if let Some(r) = run_items.items.get_mut(&item) {
        r.status = WorkItemStatus::Cancelled;
        r.lease = None;
        run_items.outstanding = run_items.outstanding.saturating_sub(1);
    }
}

/// The error of a run that finished without output.
fn no_output(workflow: &str) -> String {
    format!("workflow `{workflow}` finished without output: no terminal node produced a value")
}

/// Marks a run failed with `error`; returns whether it was not finished before.
fn fail_run(info: &mut RunInfo, error: String) -> bool {
    if info.status.is_finished() {
        return false;
    }
    info.status = RunStatus::Failed;
    info.finished_at = Some(SystemTime::now());
    info.error = Some(error);
    true
}

/// A run reached a final status: remembered for its retention, and the items of a completed
/// or cancelled run go (returned, to be dropped once the locks are released: no lock is held
/// while a large run's items are freed). A failed run keeps its items, which a resume needs.
fn finished(
    runs: &mut RunsState,
    items: &mut ItemsState,
    run_id: &str,
    status: RunStatus,
) -> Option<RunItems> {
    let now = Instant::now();
    runs.finished.push_back((now, run_id.to_owned()));
    runs.finished_at.insert(run_id.to_owned(), now);
    if status == RunStatus::Failed {
        None
    } else {
        items.runs.remove(run_id)
    }
}

/// Adds a dead letter (and drops those past their retention, a slice at a time).
fn add_letter(queue: &mut QueueState, letter: DeadLetter, retention: Duration) {
    let now = Instant::now();
    queue
        .dead_order
        .push_back((now, letter.run_id.clone(), letter.item_id));
    queue
        .dead
        .insert((letter.run_id.clone(), letter.item_id), letter);
    prune_letters(queue, retention, PRUNE_SLICE, now);
}

/// Drops up to `most` dead letters past their `retention` at `now`, oldest first.
fn prune_letters(queue: &mut QueueState, retention: Duration, most: usize, now: Instant) {
    for _ in 0..most {
        match queue.dead_order.front() {
            Some((at, _, _)) if *at + retention <= now => {
                if let Some((_, run, item)) = queue.dead_order.pop_front() {
                    queue.dead.remove(&(run, item));
                }
            }
            _ => break,
        }
    }
}

/// The record of a leased item, if `lease` still holds it.
fn leased<'a>(items: &'a mut ItemsState, lease: &Lease) -> Option<(&'a mut RunItems, bool)> {
    let run_items = items.runs.get_mut(&lease.run_id)?;
    let holds = run_items.items.get(&lease.item_id).is_some_and(|r| {
        r.status == WorkItemStatus::InProgress
            && r.lease.as_ref().is_some_and(|l| {
                // A kept lease (token 0) is its holder's only.
                l.0 == lease.token && (l.0 != KEPT_LEASE_TOKEN || *l.1 == *lease.worker.0)
            })
    });
    Some((run_items, holds))
}

fn unknown(run_id: &str) -> DistributedError {
    DistributedError::UnknownRun(run_id.to_owned())
}

/// The answer to a commit or failure report whose lease is not held: the run is over
/// (cancelled or completed: its items are gone), or the lease was lost.
fn not_held(runs: &RunsState, run_id: &str) -> CommitOutcome {
    match runs.runs.get(run_id) {
        Some(info) if !machine::accepts_results(info.status) => {
            CommitOutcome::RunInactive(info.status)
        }
        _ => CommitOutcome::LeaseLost,
    }
}

/// Queues a resume marker for a run with parked items: takes move them back, a slice at a
/// time.
fn queue_resume(queue: &mut QueueState, workflow: &str, run_id: &str, run_items: &RunItems) {
    if !run_items.parked.is_empty() {
        match queue.ready.get_mut(workflow) {
            Some(q) => q.push_front((run_id.to_owned(), RESUME_MARKER)),
            None => queue.push_ready(workflow, (run_id.to_owned(), RESUME_MARKER)),
        }
    }
}

#[async_trait::async_trait]
impl AdminBackend for InMemoryBackend {
    async fn start_run(&self, start: StartRun) -> Result<RunId, DistributedError> {
        let mut runs = self.runs.lock();
        if let Some(key) = &start.idempotency_key {
            if let Some(existing) = runs.keys.get(key) {
                return Err(DistributedError::DuplicateRun {
                    key: key.clone(),
                    existing: existing.clone(),
                });
            }
        }
        if runs.runs.contains_key(&start.run_id) {
            return Err(DistributedError::RunExists(start.run_id));
        }
        let mut items = self.items.lock();
        let mut queue = self.queue.lock();
        let mut contexts = self.contexts.lock();
        let mut metrics = self.metrics.lock();
        let mut errors = self.errors.lock();
        let gone = prune_finished(
            &mut runs,
            (&mut items, &mut contexts, &mut metrics, &mut errors),
            self.retention,
        );
        drop(errors);
        let run_id = start.run_id.clone();
        runs.inputs
            .insert(run_id.clone(), Arc::from(start.first.bytes.as_slice()));
        runs.runs.insert(
            run_id.clone(),
            RunInfo {
                run_id: run_id.clone(),
                workflow: start.workflow.clone(),
                status: RunStatus::Pending,
                started_at: SystemTime::now(),
                finished_at: None,
                output: None,
                outputs: Vec::new(),
                error: None,
                idempotency_key: start.idempotency_key.clone(),
                deadline: start.deadline,
            },
        );
        let seq = runs.next_seq;
        runs.next_seq += 1;
        runs.order.insert(seq, run_id.clone());
        runs.seq_of.insert(run_id.clone(), seq);
        if let Some(key) = start.idempotency_key {
            runs.keys.insert(key, run_id.clone());
        }
        let mut run_items = RunItems::default();
        run_items.items.insert(
            start.first.id,
            ItemRecord {
                node: Arc::from(start.first.node),
                bytes: Arc::from(start.first.bytes),
                status: WorkItemStatus::Pending,
                attempt: 1,
                deliveries: 0,
                lease: None,
            },
        );
        run_items.outstanding = 1;
        items.runs.insert(run_id.clone(), run_items);
        contexts.contexts.insert(run_id.clone(), (start.context, 0));
        metrics.runs.insert(
            run_id.clone(),
            RunMetrics {
                total_work_items: 1,
                ..RunMetrics::default()
            },
        );
        queue.push_ready(&start.workflow, (run_id.clone(), start.first.id));
        drop((runs, items, queue, contexts, metrics));
        drop(gone);
        self.notify_work(1);
        self.notify_runs([run_id.as_str()]);
        Ok(run_id)
    }

    async fn run_info(&self, run_id: &str) -> Result<RunInfo, DistributedError> {
        self.runs
            .lock()
            .runs
            .get(run_id)
            .cloned()
            .ok_or_else(|| unknown(run_id))
    }

    async fn list_runs(&self, status: Option<RunStatus>) -> Result<Vec<RunInfo>, DistributedError> {
        let runs = self.runs.lock();
        Ok(runs
            .order
            .values()
            .rev()
            .filter_map(|id| runs.runs.get(id))
            .filter(|r| status.is_none_or(|s| r.status == s))
            .cloned()
            .collect())
    }

    async fn control(&self, run_id: &str, action: RunAction) -> Result<RunInfo, DistributedError> {
        let mut runs = self.runs.lock();
        let mut items = self.items.lock();
        let mut queue = self.queue.lock();
        let mut runs_finished_at_clear = false;
        let info = runs.runs.get_mut(run_id).ok_or_else(|| unknown(run_id))?;
        let invalid = |status, action| DistributedError::InvalidRunState {
            run_id: run_id.to_owned(),
            status,
            action,
        };
        let outstanding = items.runs.get(run_id).map_or(0, |r| r.outstanding) as u64;
        let state = RunState {
            status: info.status,
            outstanding,
            has_output: info.output.is_some(),
        };
        // A failed run's dead letters are revived by a resume (up to 1000 per resume).
        let revivable: Vec<ItemId> = match action {
            RunAction::Resume if info.status == RunStatus::Failed => dead_of(&queue, run_id, 1000),
            _ => Vec::new(),
        };
        let effect = match action {
            RunAction::Cancel => machine::cancel(info.status),
            RunAction::Pause => machine::pause(info.status),
            RunAction::Resume => machine::resume(state, revivable.len() as u64),
        }
        .map_err(|refused| invalid(info.status, refused.action))?;
        let mut woken = 0;
        let mut finish = None;
        match effect {
            // Bounded work: the run's queued entries are dropped when takes meet them.
            ControlEffect::Cancel => {
                info.status = RunStatus::Cancelled;
                info.finished_at = Some(SystemTime::now());
                finish = Some(RunStatus::Cancelled);
            }
            ControlEffect::Pause => info.status = RunStatus::Paused,
            ControlEffect::Resume(status) => {
                let run_items = items.runs.entry(run_id.to_owned()).or_default();
                revive(&mut queue, run_id, run_items, &revivable);
                if info.status == RunStatus::Failed {
                    runs_finished_at_clear = true;
                }
                info.status = status;
                if status.is_finished() {
                    info.finished_at = Some(SystemTime::now());
                    if status == RunStatus::Failed {
                        info.error = Some(no_output(&info.workflow));
                    }
                    finish = Some(status);
                } else {
                    info.finished_at = None;
                    info.error = None;
                    // The parked items go back to the queue through a marker at its front.
                    queue_resume(&mut queue, &info.workflow, run_id, run_items);
                    woken = 1;
                }
            }
        }
        let info = info.clone();
        if runs_finished_at_clear {
            runs.finished_at.remove(run_id);
        }
        let garbage = finish.and_then(|status| finished(&mut runs, &mut items, run_id, status));
        drop((runs, items, queue));
        drop(garbage);
        self.notify_runs([run_id]);
        self.notify_work(woken);
        Ok(info)
    }

    fn watch_runs(&self) -> RunWatch {
        RunWatch::new(self.runs.part.version.subscribe())
    }

    fn watch_run(&self, run_id: &str) -> RunWatch {
        self.signals.watch(run_id)
    }

    async fn run_input(&self, run_id: &str) -> Result<Option<Vec<u8>>, DistributedError> {
        let runs = self.runs.lock();
        if !runs.runs.contains_key(run_id) {
            return Err(unknown(run_id));
        }
        Ok(runs.inputs.get(run_id).map(|bytes| bytes.to_vec()))
    }

    async fn step_history(&self, run_id: &str) -> Result<Option<Vec<StepEvent>>, DistributedError> {
        if !self.runs.lock().runs.contains_key(run_id) {
            return Err(unknown(run_id));
        }
        let errors = self.errors.lock();
        let history = errors.history.get(run_id);
        Ok(Some(
            history
                .map(|h| h.iter().map(Recorded::to_event).collect())
                .unwrap_or_default(),
        ))
    }

    async fn errors(&self, run_id: &str) -> Result<Vec<WorkflowError>, DistributedError> {
        if !self.runs.lock().runs.contains_key(run_id) {
            return Err(unknown(run_id));
        }
        Ok(self
            .errors
            .lock()
            .runs
            .get(run_id)
            .cloned()
            .unwrap_or_default())
    }

    async fn metrics(&self, run_id: &str) -> Result<RunMetrics, DistributedError> {
        if !self.runs.lock().runs.contains_key(run_id) {
            return Err(unknown(run_id));
        }
        Ok(self
            .metrics
            .lock()
            .runs
            .get(run_id)
            .cloned()
            .unwrap_or_default())
    }

    async fn work_items(&self, run_id: &str) -> Result<Vec<WorkItemInfo>, DistributedError> {
        let runs = self.runs.lock();
        let items = self.items.lock();
        if !runs.runs.contains_key(run_id) {
            return Err(unknown(run_id));
        }
        // A completed or cancelled run's items are gone.
        let Some(run_items) = items.runs.get(run_id) else {
            return Ok(Vec::new());
        };
        let mut out: Vec<WorkItemInfo> = run_items
            .items
            .iter()
            .map(|(id, r)| WorkItemInfo {
                item_id: *id,
                node: r.node.to_string(),
                status: r.status,
                attempt: r.attempt,
                deliveries: r.deliveries,
                worker: r.lease.as_ref().map(|l| WorkerId(l.1.to_string())),
                payload: payload_text(&r.bytes),
            })
            .collect();
        out.sort_by_key(|i| i.item_id);
        Ok(out)
    }

    async fn pending_items(&self, run_id: &str) -> Result<Vec<Vec<u8>>, DistributedError> {
        let runs = self.runs.lock();
        let items = self.items.lock();
        if !runs.runs.contains_key(run_id) {
            return Err(unknown(run_id));
        }
        let Some(run_items) = items.runs.get(run_id) else {
            return Ok(Vec::new());
        };
        Ok(run_items
            .items
            .values()
            .filter(|r| {
                matches!(
                    r.status,
                    WorkItemStatus::Pending
                        | WorkItemStatus::InProgress
                        | WorkItemStatus::WaitingRetry
                        | WorkItemStatus::Held
                )
            })
            .map(|r| r.bytes.to_vec())
            .collect())
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, DistributedError> {
        let mut queue = self.queue.lock();
        // Those past their retention go now (the listing is proportional to the letters
        // anyway), not only as new letters come.
        prune_letters(
            &mut queue,
            self.letter_retention,
            usize::MAX,
            Instant::now(),
        );
        let mut letters: Vec<DeadLetter> = queue.dead.values().cloned().collect();
        drop(queue);
        letters.sort_by_key(|d| d.at);
        Ok(letters)
    }

    async fn requeue_dead_letter(
        &self,
        run_id: &str,
        item_id: ItemId,
    ) -> Result<(), DistributedError> {
        let mut runs = self.runs.lock();
        let mut items = self.items.lock();
        let mut queue = self.queue.lock();
        if !queue.dead.contains_key(&(run_id.to_owned(), item_id)) {
            return Err(DistributedError::UnknownDeadLetter {
                run_id: run_id.to_owned(),
                item_id,
            });
        }
        // The run may have passed its retention: the letter stays.
        let info = runs
            .runs
            .get_mut(run_id)
            .ok_or_else(|| DistributedError::RunExpired(run_id.to_owned()))?;
        if !machine::accepts_results(info.status) {
            return Err(DistributedError::InvalidRunState {
                run_id: run_id.to_owned(),
                status: info.status,
                action: "requeue a dead letter",
            });
        }
        queue.dead.remove(&(run_id.to_owned(), item_id));
        let run_items = items.runs.entry(run_id.to_owned()).or_default();
        let mut woken = 0;
        if let Some(r) = run_items.items.get_mut(&item_id) {
            if r.status == WorkItemStatus::PermanentlyFailed {
                r.status = WorkItemStatus::Pending;
                r.deliveries = 0;
                run_items.outstanding += 1;
                queue.push_ready(&info.workflow, (run_id.to_owned(), item_id));
                woken += 1;
            }
        }
        let revived = info.status == RunStatus::Failed;
        if revived {
            info.status = RunStatus::Running;
            info.finished_at = None;
            info.error = None;
            queue_resume(&mut queue, &info.workflow.clone(), run_id, run_items);
            woken += 1;
            runs.finished_at.remove(run_id);
        }
        drop((runs, items, queue));
        self.notify_runs([run_id]);
        self.notify_work(woken);
        Ok(())
    }

    async fn drop_dead_letter(
        &self,
        run_id: &str,
        item_id: ItemId,
    ) -> Result<(), DistributedError> {
        let mut queue = self.queue.lock();
        if queue.dead.remove(&(run_id.to_owned(), item_id)).is_none() {
            return Err(DistributedError::UnknownDeadLetter {
                run_id: run_id.to_owned(),
                item_id,
            });
        }
        Ok(())
    }

    async fn report_worker(&self, health: &WorkerHealth) -> Result<(), DistributedError> {
        self.liveness
            .lock()
            .workers
            .insert(health.worker_id.clone(), health.clone());
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<WorkerHealth>, DistributedError> {
        Ok(self.liveness.lock().workers.values().cloned().collect())
    }

    async fn register_graph(&self, graph: &WorkflowGraph) -> Result<(), DistributedError> {
        let now = SystemTime::now();
        let key = (graph.workflow.clone(), graph.hash());
        let mut liveness = self.liveness.lock();
        let graphs = &mut liveness.graphs;
        graphs
            .entry(key.clone())
            .and_modify(|known| known.last_seen = now)
            .or_insert_with(|| RegisteredGraph::new(graph.clone(), now, now));
        // The workflow's least recently registered versions beyond the kept count go.
        let versions = graphs
            .iter()
            .filter(|((workflow, _), _)| *workflow == key.0)
            .map(|((_, hash), g)| (hash.as_str(), g.last_seen));
        for hash in crate::graph::versions_to_drop(versions, &key.1) {
            graphs.remove(&(key.0.clone(), hash));
        }
        Ok(())
    }

    async fn graphs(&self) -> Result<Vec<RegisteredGraph>, DistributedError> {
        let mut graphs: Vec<RegisteredGraph> =
            self.liveness.lock().graphs.values().cloned().collect();
        graphs.sort_by_key(|g| std::cmp::Reverse(g.first_seen));
        Ok(graphs)
    }

    /// Counts the items of the workflow's unfinished runs (those of finished runs are no
    /// longer work): O(runs of the workflow + items of the unfinished ones).
    async fn queue_stats(&self, workflow: &str) -> Result<Option<QueueStats>, DistributedError> {
        let runs = self.runs.lock();
        let items = self.items.lock();
        let queue = self.queue.lock();
        let metrics = self.metrics.lock();
        let mut stats = QueueStats::default();
        let of_workflow = |run_id: &str| {
            runs.runs
                .get(run_id)
                .is_some_and(|r| r.workflow == workflow)
        };
        for (run_id, info) in runs.runs.iter().filter(|(_, r)| r.workflow == workflow) {
            stats.leases_reclaimed += metrics.runs.get(run_id).map_or(0, |m| m.reclaimed);
            if info.status.is_finished() {
                continue;
            }
            let Some(run_items) = items.runs.get(run_id) else {
                continue;
            };
            for record in run_items.items.values() {
                match record.status {
                    WorkItemStatus::Pending => stats.ready += 1,
                    WorkItemStatus::WaitingRetry => stats.delayed += 1,
                    WorkItemStatus::InProgress => stats.in_flight += 1,
                    _ => {}
                }
            }
        }
        stats.dead_letters = queue
            .dead
            .values()
            .filter(|d| of_workflow(&d.run_id))
            .count() as u64;
        Ok(Some(stats))
    }
}

#[async_trait::async_trait]
impl WorkerBackend for InMemoryBackend {
    fn keeps_successors(&self) -> bool {
        true
    }

    async fn take_batch(
        &self,
        take: TakeRequest<'_>,
        wait: Duration,
    ) -> Result<Vec<Taken>, DistributedError> {
        let (workflow, worker, options) = (take.workflow, take.worker, take.options);
        let give_up = Instant::now() + wait;
        loop {
            let notified = self.queue.part.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next_due = match self.try_take(workflow, worker, options) {
                Ok(first) => return Ok(self.take_more(first, take)),
                Err(next_due) => next_due,
            };
            let now = Instant::now();
            if now >= give_up {
                return Ok(Vec::new());
            }
            let until = next_due.map_or(give_up, |d| d.min(give_up));
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    async fn heartbeat(
        &self,
        lease: &Lease,
        lease_timeout: Duration,
    ) -> Result<LeaseState, DistributedError> {
        let runs = self.runs.lock();
        let mut items = self.items.lock();
        let mut queue = self.queue.lock();
        let Some((run_items, true)) = leased(&mut items, lease) else {
            // A cancelled or completed run's items are gone: tell the step its run is over.
            return Ok(match not_held(&runs, &lease.run_id) {
                CommitOutcome::RunInactive(status) => LeaseState::Active(status),
                _ => LeaseState::Lost,
            });
        };
        let status = runs
            .runs
            .get(&lease.run_id)
            .map_or(RunStatus::Cancelled, |r| r.status);
        let workflow = runs
            .runs
            .get(&lease.run_id)
            .map(|r| r.workflow.clone())
            .unwrap_or_default();
        let expiry = Instant::now() + lease_timeout;
        if let Some(record) = run_items.items.get_mut(&lease.item_id) {
            record.lease = Some((lease.token, holder(record, lease), expiry));
            let until = SystemTime::now() + lease_timeout;
            self.record_of(lease, record, StepEventKind::Renewed { until });
        }
        queue.leases.push(Reverse((
            expiry,
            lease.token,
            workflow,
            lease.run_id.clone(),
            lease.item_id,
        )));
        Ok(LeaseState::Active(status))
    }

    async fn load_context(&self, run_id: &str) -> Result<VersionedContext, DistributedError> {
        let contexts = self.contexts.lock();
        let (bytes, version) = contexts
            .contexts
            .get(run_id)
            .ok_or_else(|| unknown(run_id))?;
        Ok(VersionedContext {
            bytes: bytes.clone(),
            version: *version,
        })
    }

    async fn commit_batch(
        &self,
        commits: &[CommitItem<'_>],
        next: Option<TakeRequest<'_>>,
    ) -> Result<CommitReply, DistributedError> {
        let mut outcomes = Vec::with_capacity(commits.len());
        let mut chains = machine::ContextChains::default();
        for c in commits {
            let run = c.lease.run_id.as_str();
            let changes = c.step.context.is_some();
            let outcome = if chains.refuses(run, changes) {
                let contexts = self.contexts.lock();
                let current = contexts
                    .contexts
                    .get(run)
                    .map_or(0, |(_, version)| *version);
                CommitOutcome::ContextConflict { current }
            } else {
                self.commit_one(c.lease, c.step, c.keep_successor)?
            };
            chains.settled(
                run,
                changes,
                matches!(outcome, CommitOutcome::Committed { .. }),
            );
            outcomes.push(outcome);
        }
        let taken = match next {
            Some(take) => match self.try_take(take.workflow, take.worker, take.options) {
                Ok(first) => self.take_more(first, take),
                Err(_) => Vec::new(),
            },
            None => Vec::new(),
        };
        Ok(CommitReply::new(outcomes, taken))
    }

    async fn fail(
        &self,
        lease: &Lease,
        failure: &StepFailed,
    ) -> Result<CommitOutcome, DistributedError> {
        let mut runs = self.runs.lock();
        let mut items = self.items.lock();
        let mut queue = self.queue.lock();
        let Some((run_items, true)) = leased(&mut items, lease) else {
            let outcome = not_held(&runs, &lease.run_id);
            self.fenced(&items, lease, &outcome);
            return Ok(outcome);
        };
        let info = runs
            .runs
            .get_mut(&lease.run_id)
            .ok_or_else(|| unknown(&lease.run_id))?;
        let effect = machine::after_failure(info.status, failure.retry_after.is_some());
        if effect == FailureEffect::Inactive {
            drop_item(run_items, lease.item_id);
            return Ok(CommitOutcome::RunInactive(info.status));
        }
        let Some(record) = run_items.items.get_mut(&lease.item_id) else {
            return Ok(CommitOutcome::LeaseLost);
        };
        let attempt = record.attempt;
        let node = if failure.node.is_empty() {
            record.node.to_string()
        } else {
            failure.node.clone()
        };
        let mut finished = None;
        let retry_at = match (failure.retry_after, effect) {
            (Some(wait), FailureEffect::Retry) => Some(SystemTime::now() + wait),
            _ => None,
        };
        self.record_of(lease, record, StepEventKind::Failed { retry_at });
        record.lease = None;
        match (failure.retry_after, effect) {
            (Some(wait), FailureEffect::Retry) => {
                schedule_retry(&mut queue, record, (&info.workflow, lease), wait);
            }
            _ => {
                record.status = WorkItemStatus::PermanentlyFailed;
                run_items.outstanding = run_items.outstanding.saturating_sub(1);
                let letter = DeadLetter {
                    run_id: lease.run_id.clone(),
                    item_id: lease.item_id,
                    node: node.clone(),
                    error: failure.error.clone(),
                    deliveries: record.deliveries,
                    attempt,
                    at: SystemTime::now(),
                    payload: payload_text(&record.bytes),
                };
                add_letter(&mut queue, letter, self.letter_retention);
                if let FailureEffect::DeadLetter(status) = effect {
                    if status != info.status {
                        fail_run(info, format!("node `{node}` failed: {}", failure.error));
                        finished = Some(status);
                    }
                }
            }
        }
        drop(queue);
        self.count_failure(lease, node, failure, attempt);
        if finished.is_some() {
            // A failed run keeps its items (nothing to drop).
            let _ = self::finished(&mut runs, &mut items, &lease.run_id, RunStatus::Failed);
        }
        drop((runs, items));
        self.notify_work(1);
        if finished.is_some() {
            self.notify_runs([lease.run_id.as_str()]);
        }
        Ok(CommitOutcome::Committed { finished })
    }

    async fn release(&self, lease: &Lease) -> Result<(), DistributedError> {
        let runs = self.runs.lock();
        let mut items = self.items.lock();
        let mut queue = self.queue.lock();
        let Some((run_items, true)) = leased(&mut items, lease) else {
            return Ok(());
        };
        if let Some(record) = run_items.items.get_mut(&lease.item_id) {
            self.record_of(lease, record, StepEventKind::Released);
            record.lease = None;
            record.status = WorkItemStatus::Pending;
            record.deliveries = record.deliveries.saturating_sub(1);
            let workflow = runs
                .runs
                .get(&lease.run_id)
                .map(|r| r.workflow.clone())
                .unwrap_or_default();
            match queue.ready.get_mut(&workflow) {
                Some(q) => q.push_front((lease.run_id.clone(), lease.item_id)),
                None => queue.push_ready(&workflow, (lease.run_id.clone(), lease.item_id)),
            }
        }
        drop((runs, items, queue));
        self.notify_work(1);
        Ok(())
    }

    async fn wait_run_change(&self, run_id: &str, timeout: Duration) {
        let mut change = self.signals.subscribe(run_id);
        // A cancel made before this subscription (between the take and the step's first
        // wait) is not a change to come: answer at once (the step then stops).
        let cancelled = self
            .runs
            .lock()
            .runs
            .get(run_id)
            .is_some_and(|info| info.status == RunStatus::Cancelled);
        if cancelled {
            return;
        }
        let _ = tokio::time::timeout(timeout, change.changed()).await;
    }
}

impl InMemoryBackend {
    /// Commits one step (see [`WorkerBackend::commit_batch`]).
    fn commit_one(
        &self,
        lease: &Lease,
        commit: &StepCommit,
        keep: Option<Duration>,
    ) -> Result<CommitOutcome, DistributedError> {
        let mut runs = self.runs.lock();
        let mut items = self.items.lock();
        let mut queue = self.queue.lock();
        let mut contexts = self.contexts.lock();
        let Some((run_items, true)) = leased(&mut items, lease) else {
            let outcome = not_held(&runs, &lease.run_id);
            self.fenced(&items, lease, &outcome);
            return Ok(outcome);
        };
        let info = runs
            .runs
            .get_mut(&lease.run_id)
            .ok_or_else(|| unknown(&lease.run_id))?;
        if !machine::accepts_results(info.status) {
            drop_item(run_items, lease.item_id);
            return Ok(CommitOutcome::RunInactive(info.status));
        }
        let conflict = apply_context(&mut contexts.contexts, &lease.run_id, commit);
        if let Some(current) = conflict {
            return Ok(CommitOutcome::ContextConflict { current });
        }
        drop(contexts);

        let (added, woken) = self.add_successors(&mut queue, run_items, info, lease, commit, keep);
        if let Some(r) = run_items.items.get_mut(&lease.item_id) {
            r.status = WorkItemStatus::Completed;
            self.record_of(lease, r, StepEventKind::Committed);
            r.lease = None;
        }
        run_items.outstanding = run_items.outstanding.saturating_sub(1);
        let outstanding = run_items.outstanding;
        drop(queue);

        if info.output.is_none() {
            info.output = commit.outputs.first().cloned();
        }
        info.outputs.extend(commit.outputs.iter().cloned());
        let status = machine::after_commit(RunState {
            status: info.status,
            outstanding: outstanding as u64,
            has_output: info.output.is_some(),
        });
        let mut finished = None;
        if status.is_finished() && !info.status.is_finished() {
            info.finished_at = Some(SystemTime::now());
            if status == RunStatus::Failed {
                info.error = Some(no_output(&info.workflow));
            }
            finished = Some(status);
        }
        info.status = status;
        self.count_step(&lease.run_id, commit, added);
        if !commit.handled_failures.is_empty() {
            let mut errors = self.errors.lock();
            errors
                .runs
                .entry(lease.run_id.clone())
                .or_default()
                .extend(commit.handled_failures.iter().cloned());
        }
        let garbage = finished
            .and_then(|status| self::finished(&mut runs, &mut items, &lease.run_id, status));
        drop((runs, items));
        drop(garbage);
        self.notify_work(woken);
        if finished.is_some() {
            self.notify_runs([lease.run_id.as_str()]);
        }
        Ok(CommitOutcome::Committed { finished })
    }

    /// Adds the new ones of `commit`'s successors to the run (known ids are ignored): queued,
    /// parked when the run is paused or failed, or, the single successor of a chained step
    /// (`keep`), leased to the step's holder. Returns how many were added and queued.
    fn add_successors(
        &self,
        queue: &mut QueueState,
        run_items: &mut RunItems,
        info: &RunInfo,
        lease: &Lease,
        commit: &StepCommit,
        keep: Option<Duration>,
    ) -> (u64, usize) {
        let held = !info.status.is_active();
        let mut added = 0u64;
        let mut woken = 0;
        for s in &commit.successors {
            if run_items.items.contains_key(&s.id) {
                continue;
            }
            let status = if held {
                WorkItemStatus::Held
            } else {
                WorkItemStatus::Pending
            };
            let mut record = ItemRecord {
                node: Arc::from(s.node.as_str()),
                bytes: Arc::from(s.bytes.as_slice()),
                status,
                attempt: 1,
                deliveries: 0,
                lease: None,
            };
            run_items.outstanding += 1;
            added += 1;
            let kept = match (keep, held, commit.successors.len()) {
                (Some(timeout), false, 1) => Some(timeout),
                _ => None,
            };
            if let Some(timeout) = kept {
                // A chained step: the worker executed it already and holds its first lease.
                let holder = match run_items.items.get(&lease.item_id) {
                    Some(parent) => holder(parent, lease),
                    None => Arc::from(lease.worker.0.as_str()),
                };
                record.deliveries = 1;
                let item = (&lease.run_id, s.id, info.workflow.as_str());
                self.grant(
                    queue,
                    item,
                    &mut record,
                    (KEPT_LEASE_TOKEN, holder, timeout),
                );
            }
            run_items.items.insert(s.id, record);
            match (kept, held) {
                // Neither queued nor parked: its worker runs it.
                (Some(_), _) => {}
                (None, true) => run_items.parked.push_back(s.id),
                (None, false) => {
                    queue.push_ready(&info.workflow, (lease.run_id.clone(), s.id));
                    woken += 1;
                }
            }
        }
        (added, woken)
    }

    /// Counts a committed step in its run's metrics: one more step, `added` more items, and
    /// the node's time.
    fn count_step(&self, run_id: &RunId, commit: &StepCommit, added: u64) {
        slot(&mut self.metrics.lock().runs, run_id, |m| {
            m.completed += 1;
            m.total_work_items += added;
            let t = match m.per_node.get_mut(&commit.node) {
                Some(t) => t,
                None => m.per_node.entry(commit.node.clone()).or_default(),
            };
            t.count += 1;
            t.total += commit.duration;
            t.max = t.max.max(commit.duration);
        });
    }

    /// Counts a failed step of `lease`'s item (at `attempt`, in `node`) in its run's metrics
    /// (a retry when one is scheduled) and errors.
    fn count_failure(&self, lease: &Lease, node: String, failure: &StepFailed, attempt: u32) {
        slot(&mut self.metrics.lock().runs, &lease.run_id, |m| {
            m.failed += 1;
            if failure.retry_after.is_some() {
                m.retries += 1;
            }
        });
        self.errors
            .lock()
            .runs
            .entry(lease.run_id.clone())
            .or_default()
            .push(WorkflowError {
                work_item: lease.item_id,
                node,
                error: failure.error.clone(),
                attempt,
                handled: false,
                timestamp: SystemTime::now(),
            });
    }

    /// Leases item `record` (`run`, its id, its workflow) to a holder under a token for a while:
    /// in progress, its expiry queued, the lease in the step history (at its delivery).
    fn grant(
        &self,
        queue: &mut QueueState,
        (run, item, workflow): (&RunId, ItemId, &str),
        record: &mut ItemRecord,
        (token, holder, timeout): (u64, Arc<str>, Duration),
    ) {
        let expiry = Instant::now() + timeout;
        record.status = WorkItemStatus::InProgress;
        record.lease = Some((token, holder.clone(), expiry));
        let kind = StepEventKind::Leased {
            until: SystemTime::now() + timeout,
            delivery: record.deliveries,
        };
        self.record(run, item, record, kind, Some(holder), token);
        queue.leases.push(Reverse((
            expiry,
            token,
            workflow.to_owned(),
            run.clone(),
            item,
        )));
    }

    /// Appends an event about item `item` (`record`) to `run`'s step history. Takes the
    /// errors lock: callers hold none after it (the lock order).
    fn record(
        &self,
        run: &str,
        item: ItemId,
        record: &ItemRecord,
        kind: StepEventKind,
        worker: Option<Arc<str>>,
        token: u64,
    ) {
        let event = Recorded {
            at: SystemTime::now(),
            item,
            node: record.node.clone(),
            kind,
            worker,
            token,
            attempt: record.attempt,
        };
        slot(&mut self.errors.lock().history, run, |history| {
            history.push_back(event);
            if history.len() > HISTORY_KEPT {
                history.pop_front();
            }
        });
    }

    /// Appends an event about the item of `lease`, by its holder.
    fn record_of(&self, lease: &Lease, record: &ItemRecord, kind: StepEventKind) {
        let worker = Some(holder(record, lease));
        self.record(
            &lease.run_id,
            lease.item_id,
            record,
            kind,
            worker,
            lease.token,
        );
    }

    /// Records a commit or failure report refused because its lease was lost (not one
    /// refused because the run is over).
    fn fenced(&self, items: &ItemsState, lease: &Lease, outcome: &CommitOutcome) {
        if *outcome != CommitOutcome::LeaseLost {
            return;
        }
        let record = items
            .runs
            .get(&lease.run_id)
            .and_then(|r| r.items.get(&lease.item_id));
        if let Some(record) = record {
            self.record_of(lease, record, StepEventKind::Fenced);
        }
    }

    /// `first` and up to `take.max - 1` more ready items, without waiting.
    fn take_more(&self, first: Taken, take: TakeRequest<'_>) -> Vec<Taken> {
        let mut out = vec![first];
        while out.len() < take.max {
            match self.try_take(take.workflow, take.worker, take.options) {
                Ok(taken) => out.push(taken),
                Err(_) => break,
            }
        }
        out
    }
}
