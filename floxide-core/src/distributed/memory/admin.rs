//! Inspection and control of the in-memory backend's runs, queues and workers.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::time::Instant;

use super::parts::{ItemRecord, Recorded, RunItems};
use super::{
    dead_of, finished, known, no_output, prune_finished, prune_letters, queue_resume, revive,
    unknown, InMemoryBackend,
};
use crate::distributed::backend::{
    AdminBackend, DistributedError, QueueStats, RunAction, RunWatch, StartRun, StepEvent,
};
use crate::distributed::machine::{self, ControlEffect, RunState};
use crate::distributed::types::payload_text;
use crate::distributed::{
    DeadLetter, RunId, RunInfo, RunMetrics, RunStatus, WorkItemInfo, WorkItemStatus, WorkerHealth,
    WorkerId, WorkflowError,
};
use crate::graph::{RegisteredGraph, WorkflowGraph};
use crate::ItemId;

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
        known(&runs, run_id)?;
        Ok(runs.inputs.get(run_id).map(|bytes| bytes.to_vec()))
    }

    async fn step_history(&self, run_id: &str) -> Result<Option<Vec<StepEvent>>, DistributedError> {
        known(&self.runs.lock(), run_id)?;
        let errors = self.errors.lock();
        let history = errors.history.get(run_id);
        Ok(Some(
            history
                .map(|h| h.iter().map(Recorded::to_event).collect())
                .unwrap_or_default(),
        ))
    }

    async fn errors(&self, run_id: &str) -> Result<Vec<WorkflowError>, DistributedError> {
        known(&self.runs.lock(), run_id)?;
        Ok(self
            .errors
            .lock()
            .runs
            .get(run_id)
            .cloned()
            .unwrap_or_default())
    }

    async fn metrics(&self, run_id: &str) -> Result<RunMetrics, DistributedError> {
        known(&self.runs.lock(), run_id)?;
        Ok(self
            .metrics
            .lock()
            .runs
            .get(run_id)
            .cloned()
            .unwrap_or_default())
    }

    async fn work_items(&self, run_id: &str) -> Result<Vec<WorkItemInfo>, DistributedError> {
        let mut out = self.items_of(run_id, |run_items| {
            run_items
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
                .collect()
        })?;
        out.sort_by_key(|i| i.item_id);
        Ok(out)
    }

    async fn pending_items(&self, run_id: &str) -> Result<Vec<Vec<u8>>, DistributedError> {
        self.items_of(run_id, |run_items| {
            run_items
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
                .collect()
        })
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

impl InMemoryBackend {
    /// `list` of the items of run `run_id`: none once they are gone (a completed or cancelled
    /// run's go when it finishes).
    ///
    /// # Errors
    /// [`DistributedError::UnknownRun`] for a run this backend does not know.
    fn items_of<T>(
        &self,
        run_id: &str,
        list: impl FnOnce(&RunItems) -> Vec<T>,
    ) -> Result<Vec<T>, DistributedError> {
        let runs = self.runs.lock();
        let items = self.items.lock();
        known(&runs, run_id)?;
        Ok(items.runs.get(run_id).map(list).unwrap_or_default())
    }
}
