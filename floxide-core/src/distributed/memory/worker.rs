//! The in-memory backend's worker path: take, heartbeat, commit, fail and release.

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::parts::{slot, ItemRecord, ItemsState, QueueState, Recorded, RunItems};
use super::{
    add_letter, apply_context, drop_item, fail_run, holder, leased, no_output, not_held,
    schedule_retry, unknown, InMemoryBackend,
};
use crate::distributed::backend::{
    CommitItem, CommitOutcome, CommitReply, DistributedError, Lease, LeaseState, StepCommit,
    StepEventKind, StepFailed, TakeRequest, Taken, VersionedContext, WorkerBackend,
    KEPT_LEASE_TOKEN,
};
use crate::distributed::history::HISTORY_KEPT;
use crate::distributed::machine::{self, FailureEffect, RunState};
use crate::distributed::types::payload_text;
use crate::distributed::{DeadLetter, RunId, RunInfo, RunStatus, WorkItemStatus, WorkflowError};
use crate::ItemId;

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
            // (Due now: the take left entries or due work unexamined, and goes on at once.)
            if now >= give_up && next_due.is_none_or(|due| due > now) {
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
                self.commit_one(c)?
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
            let _ = super::finished(&mut runs, &mut items, &lease.run_id, RunStatus::Failed);
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
    fn commit_one(&self, c: &CommitItem<'_>) -> Result<CommitOutcome, DistributedError> {
        let (lease, commit) = (c.lease, c.step);
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

        let (added, woken) = self.add_successors(&mut queue, run_items, info, c);
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
            .and_then(|status| super::finished(&mut runs, &mut items, &lease.run_id, status));
        drop((runs, items));
        drop(garbage);
        self.notify_work(woken);
        if finished.is_some() {
            self.notify_runs([lease.run_id.as_str()]);
        }
        Ok(CommitOutcome::Committed { finished })
    }

    /// Adds the new ones of `commit`'s successors to the run (known ids are ignored): queued,
    /// parked when the run is paused or failed, or, those the step keeps for its worker (see
    /// [`CommitItem::keep_successor`]), leased to the step's holder. Returns how many were
    /// added and queued.
    fn add_successors(
        &self,
        queue: &mut QueueState,
        run_items: &mut RunItems,
        info: &RunInfo,
        c: &CommitItem<'_>,
    ) -> (u64, usize) {
        let (lease, commit) = (c.lease, c.step);
        let held = !info.status.is_active();
        let mut added = 0u64;
        let mut woken = 0;
        for (index, s) in commit.successors.iter().enumerate() {
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
            let kept = c.keep_successor.filter(|_| !held && c.keeps(index));
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
    pub(super) fn grant(
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
    pub(super) fn record(
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
