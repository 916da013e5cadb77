//! The in-memory backend: every guarantee of the distributed runtime, in one process.
//!
//! It stores serialized bytes only (contexts and items round-trip through serde, as with
//! Redis), takes an item in O(1) whatever the number of runs, and lets idle workers wait on a
//! notification instead of polling.
//!
//! `parts` holds the stores, `worker` the worker's path (take, heartbeat, commit, fail,
//! release), `admin` inspection and control, and `retention` how runs and dead letters end;
//! this module, the backend and the helpers the others share.

mod admin;
mod parts;
mod retention;
mod worker;

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use parts::RESUME_MARKER;
use parts::{slot, HashMap, ItemRecord, ItemsState, QueueState, RunItems, RunsState};
use parts::{ContextsPart, ErrorsPart, ItemsPart, LivenessPart, MetricsPart, QueuePart, RunsPart};

use crate::distributed::backend::{
    CommitOutcome, DistributedError, Lease, RunSignals, StepCommit, StepEventKind, TakeOptions,
    Taken, KEPT_LEASE_TOKEN,
};
use crate::distributed::machine;
use crate::distributed::types::payload_text;
use crate::distributed::{
    DeadLetter, RunId, RunInfo, RunStatus, WorkItemStatus, WorkerId, WorkflowError,
};
use crate::ItemId;

use retention::{add_letter, dead_of, finished, prune_finished, prune_letters, revive};

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

/// The most queue entries one take examines (stale ones, those of paused or finished runs)
/// before it lets go of the backend's locks and says to call again (G9).
const TAKE_SCAN: usize = 256;

/// The most expired leases and due retries one take hands back to the queue (the rest go on
/// the next one, at once).
const DUE_SLICE: usize = 256;

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

    /// One non-blocking take; `Err(next_due)` when nothing is ready (due now when entries or
    /// due work were left for another call: each examines a bounded number).
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
        let mut examined = 0;
        let result = loop {
            if examined == TAKE_SCAN {
                break Err(Some(now));
            }
            examined += 1;
            let Some(entry) = queue.ready.get_mut(workflow).and_then(|q| q.pop_front()) else {
                break Err(queue.next_due());
            };
            let state = (&mut *runs, &mut *items, &mut *queue);
            match self.examine(state, entry, workflow, worker, &options) {
                Examined::Skipped => {}
                Examined::Poisoned(run_id, failed) => {
                    if failed {
                        failed_now = Some(run_id.clone());
                    }
                    changed.push(run_id);
                }
                Examined::Leased(taken, started) => {
                    if let Some(run_id) = started {
                        changed.push(run_id);
                    }
                    break Ok(taken);
                }
            }
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

    /// What a take does with one queue entry of `workflow`: drops it (its run is over, or it
    /// is stale), parks it (its run is paused or failed), dead-letters it (poison), or leases
    /// its item to `worker`.
    fn examine(
        &self,
        (runs, items, queue): (&mut RunsState, &mut ItemsState, &mut QueueState),
        (run_id, item_id): (RunId, ItemId),
        workflow: &str,
        worker: &WorkerId,
        options: &TakeOptions,
    ) -> Examined {
        // Entries of finished runs (whose items are gone) are dropped here.
        let (Some(run_items), Some(info)) =
            (items.runs.get_mut(&run_id), runs.runs.get_mut(&run_id))
        else {
            return Examined::Skipped;
        };
        if item_id == RESUME_MARKER {
            if machine::takes_items(info.status) {
                unpark(queue, workflow, run_id, run_items);
            }
            return Examined::Skipped;
        }
        let Some(record) = run_items.items.get_mut(&item_id) else {
            return Examined::Skipped;
        };
        if record.status != WorkItemStatus::Pending {
            return Examined::Skipped;
        }
        if !machine::takes_items(info.status) {
            if machine::accepts_results(info.status) {
                // Paused or failed: the item waits, parked, for a resume.
                record.status = WorkItemStatus::Held;
                run_items.parked.push_back(item_id);
            }
            return Examined::Skipped;
        }
        record.deliveries += 1;
        if record.deliveries > options.max_deliveries {
            let limit = options.max_deliveries;
            let left = &mut run_items.outstanding;
            let failed = self.poisoned(queue, (&run_id, item_id), record, left, info, limit);
            return Examined::Poisoned(run_id, failed);
        }
        queue.next_token += 1;
        let token = queue.next_token;
        let holder: Arc<str> = Arc::from(worker.0.as_str());
        let lease = (token, holder, options.lease_timeout);
        self.grant(queue, (&run_id, item_id, workflow), record, lease);
        let started = (info.status == RunStatus::Pending).then(|| {
            info.status = RunStatus::Running;
            run_id.clone()
        });
        let lease = Lease {
            run_id,
            item_id,
            token,
            worker: worker.clone(),
        };
        Examined::Leased(taken(lease, record, info.deadline), started)
    }

    /// Hands expired leases back to the queue and makes due retries ready, [`DUE_SLICE`] of
    /// each at most.
    fn due_work(&self, items: &mut ItemsState, queue: &mut QueueState, now: Instant) {
        for _ in 0..DUE_SLICE {
            let Some(Reverse((at, token, wf, run, item))) = queue.leases.peek().cloned() else {
                break;
            };
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
        for _ in 0..DUE_SLICE {
            let Some(Reverse((due, _, wf, run, item))) = queue.delayed.peek().cloned() else {
                break;
            };
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
        let error = crate::distributed::poison_error(record.deliveries - 1, limit);
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

/// What a take did with one queue entry (see `InMemoryBackend::examine`).
enum Examined {
    /// Dropped, parked or unparked: the take goes on.
    Skipped,
    /// Dead-lettered as poison: its run changed (and failed, when `true`).
    Poisoned(RunId, bool),
    /// Leased to the worker; the run it started, when it was pending.
    Leased(Taken, Option<RunId>),
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

/// `Ok` when `runs` holds run `run_id`, else [`DistributedError::UnknownRun`].
fn known(runs: &RunsState, run_id: &str) -> Result<(), DistributedError> {
    if runs.runs.contains_key(run_id) {
        Ok(())
    } else {
        Err(unknown(run_id))
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    use crate::distributed::{
        AdminBackend, NewItem, RunAction, StartRun, TakeRequest, WorkerBackend,
    };

    fn start(run: &str) -> StartRun {
        StartRun::new(
            run,
            "wf",
            b"null".to_vec(),
            NewItem::new(ItemId::ROOT, "a", b"0".to_vec()),
        )
    }

    fn queued(backend: &InMemoryBackend) -> usize {
        backend
            .queue
            .lock()
            .ready
            .get("wf")
            .map_or(0, VecDeque::len)
    }

    /// G9: a take examines a bounded number of queue entries per hold of the locks. 1,000
    /// cancelled runs leave 1,000 stale entries ahead of a live run's item: one call examines
    /// `TAKE_SCAN` of them and says to call again at once; a take then goes on until it finds
    /// the live item, even when it was asked not to wait.
    #[tokio::test]
    async fn a_take_examines_a_bounded_number_of_entries() {
        let backend = InMemoryBackend::new();
        for n in 0..1000 {
            let run = backend
                .start_run(start(&format!("dead-{n}")))
                .await
                .unwrap();
            backend.control(&run, RunAction::Cancel).await.unwrap();
        }
        backend.start_run(start("live")).await.unwrap();
        assert_eq!(queued(&backend), 1001);
        let worker = WorkerId("w".to_owned());
        let options = TakeOptions::default();
        let before = Instant::now();
        match backend.try_take("wf", &worker, options) {
            Err(Some(due)) => assert!(due >= before && due <= Instant::now(), "due now"),
            other => panic!("expected `call again at once`, got {other:?}"),
        }
        assert_eq!(queued(&backend), 1001 - TAKE_SCAN);
        let take = TakeRequest::new("wf", &worker, options);
        let taken = backend.take_batch(take, Duration::ZERO).await.unwrap();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].lease.run_id, "live");
        assert_eq!(queued(&backend), 0);
    }

    /// G9: a take hands back a bounded number of expired leases per call; the rest go on the
    /// next calls, and every one is taken again.
    #[tokio::test]
    async fn expired_leases_come_back_a_slice_at_a_time() {
        let backend = InMemoryBackend::new();
        let runs = DUE_SLICE + 44;
        for n in 0..runs {
            backend.start_run(start(&format!("r-{n}"))).await.unwrap();
        }
        let worker = WorkerId("w".to_owned());
        let short = TakeOptions {
            lease_timeout: Duration::from_millis(200),
            ..TakeOptions::default()
        };
        let mut take = TakeRequest::new("wf", &worker, short);
        take.max = runs;
        let first = backend.take_batch(take, Duration::ZERO).await.unwrap();
        assert_eq!(first.len(), runs);
        tokio::time::sleep(Duration::from_millis(300)).await;
        // One call: a slice of the expired leases back in the queue, one of them leased again.
        let again = backend.try_take("wf", &worker, TakeOptions::default());
        assert!(again.is_ok(), "an expired item is taken again");
        assert_eq!(queued(&backend), DUE_SLICE - 1);
        assert_eq!(backend.queue.lock().leases.len(), runs - DUE_SLICE + 1);
        let mut take = TakeRequest::new("wf", &worker, TakeOptions::default());
        take.max = runs;
        let rest = backend.take_batch(take, Duration::ZERO).await.unwrap();
        assert_eq!(
            rest.len(),
            runs - 1,
            "every other expired item is taken again"
        );
    }
}
