//! The five observing stores of Floxide 3.x (runs, metrics, errors, liveness, item states)
//! over a [`StoreView`]: reads as in 3.x; the operator actions among the writes carried out,
//! the others refused with [`Unsupported`].

use std::time::SystemTime;

use async_trait::async_trait;

use super::{
    backend_of, kind, known, ErrorStoreError, LivenessStoreError, MetricsError, RunInfoError,
    StoreView, Unsupported, WorkItemState, WorkItemStateStoreError,
};
use crate::distributed::codec::decode;
use crate::distributed::compat::binding::StoreBinding;
use crate::distributed::{
    DistributedError, RunAction, RunInfo, RunMetrics, RunStatus, WorkItemStatus, WorkerHealth,
    WorkerId, WorkflowError,
};
use crate::WorkItem;

/// The run store of Floxide 3.x: run records.
#[async_trait]
pub trait RunInfoStore: Send + Sync {
    /// Records a run (not supported on the engine's stores: starting a run records it).
    async fn insert_run(&self, info: RunInfo) -> Result<(), RunInfoError>;
    /// Sets a run's status: `Cancelled`, `Paused` and `Running` cancel, pause and resume it;
    /// the others are set by the engine only.
    async fn update_status(&self, run_id: &str, status: RunStatus) -> Result<(), RunInfoError>;
    /// Sets when a run finished (not supported on the engine's stores).
    async fn update_finished_at(
        &self,
        run_id: &str,
        finished_at: SystemTime,
    ) -> Result<(), RunInfoError>;
    /// A run's record; `None` for an unknown run.
    async fn get_run(&self, run_id: &str) -> Result<Option<RunInfo>, RunInfoError>;
    /// Runs, newest first, optionally only those with `filter`'s status.
    async fn list_runs(&self, filter: Option<RunStatus>) -> Result<Vec<RunInfo>, RunInfoError>;
    /// Sets a run's output (not supported on the engine's stores: terminal steps set it).
    async fn update_output(
        &self,
        run_id: &str,
        output: serde_json::Value,
    ) -> Result<(), RunInfoError>;

    /// What this store is a view of.
    #[doc(hidden)]
    fn binding(&self) -> StoreBinding {
        StoreBinding::Custom(std::any::type_name::<Self>())
    }
}

const RUNS_BY_ENGINE: &str = "run records are written by the engine as runs start, step and \
    finish; steer runs with `DistributedOrchestrator::{cancel, pause, resume}`";

/// The error of a control action refused or failed.
fn run_error(e: DistributedError) -> RunInfoError {
    match e {
        DistributedError::UnknownRun(_) => RunInfoError::NotFound,
        other => other.into(),
    }
}

#[async_trait]
impl<T> RunInfoStore for T
where
    T: StoreView<kind::Runs>,
{
    async fn insert_run(&self, _info: RunInfo) -> Result<(), RunInfoError> {
        Err(Unsupported {
            operation: "RunInfoStore::insert_run",
            instead: RUNS_BY_ENGINE,
        }
        .into())
    }
    async fn update_status(&self, run_id: &str, status: RunStatus) -> Result<(), RunInfoError> {
        let action = match status {
            RunStatus::Cancelled => RunAction::Cancel,
            RunStatus::Paused => RunAction::Pause,
            RunStatus::Running => RunAction::Resume,
            _ => {
                return Err(Unsupported {
                    operation: "RunInfoStore::update_status to Pending, Completed or Failed",
                    instead: RUNS_BY_ENGINE,
                }
                .into())
            }
        };
        let backend = backend_of(self)?;
        backend.control(run_id, action).await.map_err(run_error)?;
        Ok(())
    }
    async fn update_finished_at(
        &self,
        _run_id: &str,
        _finished_at: SystemTime,
    ) -> Result<(), RunInfoError> {
        Err(Unsupported {
            operation: "RunInfoStore::update_finished_at",
            instead: RUNS_BY_ENGINE,
        }
        .into())
    }
    async fn get_run(&self, run_id: &str) -> Result<Option<RunInfo>, RunInfoError> {
        let backend = backend_of(self)?;
        Ok(known(backend.run_info(run_id).await)?)
    }
    async fn list_runs(&self, filter: Option<RunStatus>) -> Result<Vec<RunInfo>, RunInfoError> {
        let backend = backend_of(self)?;
        Ok(backend.list_runs(filter).await?)
    }
    async fn update_output(
        &self,
        _run_id: &str,
        _output: serde_json::Value,
    ) -> Result<(), RunInfoError> {
        Err(Unsupported {
            operation: "RunInfoStore::update_output",
            instead: RUNS_BY_ENGINE,
        }
        .into())
    }
    fn binding(&self) -> StoreBinding {
        StoreView::binding(self)
    }
}

/// The metrics store of Floxide 3.x: each run's counters.
#[async_trait]
pub trait MetricsStore: Send + Sync {
    /// Replaces a run's counters (not supported on the engine's stores: steps count).
    async fn update_metrics(&self, run_id: &str, metrics: RunMetrics) -> Result<(), MetricsError>;
    /// A run's counters; `None` for an unknown run.
    async fn get_metrics(&self, run_id: &str) -> Result<Option<RunMetrics>, MetricsError>;

    /// What this store is a view of.
    #[doc(hidden)]
    fn binding(&self) -> StoreBinding {
        StoreBinding::Custom(std::any::type_name::<Self>())
    }
}

#[async_trait]
impl<T> MetricsStore for T
where
    T: StoreView<kind::Metrics>,
{
    async fn update_metrics(&self, _run_id: &str, _m: RunMetrics) -> Result<(), MetricsError> {
        Err(Unsupported {
            operation: "MetricsStore::update_metrics",
            instead: "a run's counters are kept by the engine, atomically with each step",
        }
        .into())
    }
    async fn get_metrics(&self, run_id: &str) -> Result<Option<RunMetrics>, MetricsError> {
        let backend = backend_of(self)?;
        Ok(known(backend.metrics(run_id).await)?)
    }
    fn binding(&self) -> StoreBinding {
        StoreView::binding(self)
    }
}

/// The error store of Floxide 3.x: each run's failure records.
#[async_trait]
pub trait ErrorStore: Send + Sync {
    /// Records a failure (not supported on the engine's stores: failed steps record theirs).
    async fn record_error(&self, run_id: &str, error: WorkflowError)
        -> Result<(), ErrorStoreError>;
    /// A run's failure records (empty for an unknown run).
    async fn get_errors(&self, run_id: &str) -> Result<Vec<WorkflowError>, ErrorStoreError>;

    /// What this store is a view of.
    #[doc(hidden)]
    fn binding(&self) -> StoreBinding {
        StoreBinding::Custom(std::any::type_name::<Self>())
    }
}

#[async_trait]
impl<T> ErrorStore for T
where
    T: StoreView<kind::Errors>,
{
    async fn record_error(
        &self,
        _run_id: &str,
        _error: WorkflowError,
    ) -> Result<(), ErrorStoreError> {
        Err(Unsupported {
            operation: "ErrorStore::record_error",
            instead: "failures are recorded by the engine, atomically with the failed step",
        }
        .into())
    }
    async fn get_errors(&self, run_id: &str) -> Result<Vec<WorkflowError>, ErrorStoreError> {
        let backend = backend_of(self)?;
        Ok(known(backend.errors(run_id).await)?.unwrap_or_default())
    }
    fn binding(&self) -> StoreBinding {
        StoreView::binding(self)
    }
}

/// The liveness store of Floxide 3.x: workers' health reports, by numeric worker id.
#[async_trait]
pub trait LivenessStore: Send + Sync {
    /// Records that worker `worker_id` was alive at `timestamp`.
    async fn update_heartbeat(
        &self,
        worker_id: usize,
        timestamp: SystemTime,
    ) -> Result<(), LivenessStoreError>;
    /// When worker `worker_id` last reported.
    async fn get_heartbeat(
        &self,
        worker_id: usize,
    ) -> Result<Option<SystemTime>, LivenessStoreError>;
    /// The workers that reported, by numeric id (workers named otherwise are left out).
    async fn list_workers(&self) -> Result<Vec<usize>, LivenessStoreError>;
    /// Records worker `worker_id`'s health report.
    async fn update_health(
        &self,
        worker_id: usize,
        health: WorkerHealth,
    ) -> Result<(), LivenessStoreError>;
    /// Worker `worker_id`'s last health report.
    async fn get_health(
        &self,
        worker_id: usize,
    ) -> Result<Option<WorkerHealth>, LivenessStoreError>;
    /// Every worker's last health report.
    async fn list_health(&self) -> Result<Vec<WorkerHealth>, LivenessStoreError>;

    /// What this store is a view of.
    #[doc(hidden)]
    fn binding(&self) -> StoreBinding {
        StoreBinding::Custom(std::any::type_name::<Self>())
    }
}

#[async_trait]
impl<T> LivenessStore for T
where
    T: StoreView<kind::Liveness>,
{
    async fn update_heartbeat(
        &self,
        worker_id: usize,
        timestamp: SystemTime,
    ) -> Result<(), LivenessStoreError> {
        let mut health = self
            .get_health(worker_id)
            .await?
            .unwrap_or_else(|| WorkerHealth {
                worker_id: WorkerId::from(worker_id),
                ..WorkerHealth::default()
            });
        health.last_heartbeat = timestamp;
        self.update_health(worker_id, health).await
    }
    async fn get_heartbeat(
        &self,
        worker_id: usize,
    ) -> Result<Option<SystemTime>, LivenessStoreError> {
        Ok(self.get_health(worker_id).await?.map(|h| h.last_heartbeat))
    }
    async fn list_workers(&self) -> Result<Vec<usize>, LivenessStoreError> {
        let health = self.list_health().await?;
        Ok(health
            .iter()
            .filter_map(|h| h.worker_id.as_str().parse().ok())
            .collect())
    }
    async fn update_health(
        &self,
        worker_id: usize,
        mut health: WorkerHealth,
    ) -> Result<(), LivenessStoreError> {
        health.worker_id = WorkerId::from(worker_id);
        let backend = backend_of(self)?;
        Ok(backend.report_worker(&health).await?)
    }
    async fn get_health(
        &self,
        worker_id: usize,
    ) -> Result<Option<WorkerHealth>, LivenessStoreError> {
        let id = WorkerId::from(worker_id);
        let health = self.list_health().await?;
        Ok(health.into_iter().find(|h| h.worker_id == id))
    }
    async fn list_health(&self) -> Result<Vec<WorkerHealth>, LivenessStoreError> {
        let backend = backend_of(self)?;
        Ok(backend.workers().await?)
    }
    fn binding(&self) -> StoreBinding {
        StoreView::binding(self)
    }
}

/// The work-item state store of Floxide 3.x: each work item's state and attempt.
#[async_trait]
pub trait WorkItemStateStore<W: WorkItem>: Send + Sync {
    /// The state of `item` of run `run_id`.
    async fn get_status(
        &self,
        run_id: &str,
        item: &W,
    ) -> Result<WorkItemStatus, WorkItemStateStoreError>;
    /// Sets an item's state (not supported on the engine's stores: steps move items on).
    async fn set_status(
        &self,
        run_id: &str,
        item: &W,
        status: WorkItemStatus,
    ) -> Result<(), WorkItemStateStoreError>;
    /// The attempt `item` is at (1 for the first).
    async fn get_attempts(&self, run_id: &str, item: &W) -> Result<u32, WorkItemStateStoreError>;
    /// Counts an attempt (not supported on the engine's stores: takes count them).
    async fn increment_attempts(
        &self,
        run_id: &str,
        item: &W,
    ) -> Result<u32, WorkItemStateStoreError>;
    /// Resets the attempts (not supported on the engine's stores: requeue a dead letter, or
    /// resume a failed run).
    async fn reset_attempts(&self, run_id: &str, item: &W) -> Result<(), WorkItemStateStoreError>;
    /// Every work item of the run with its state.
    async fn get_all(&self, run_id: &str)
        -> Result<Vec<WorkItemState<W>>, WorkItemStateStoreError>;

    /// What this store is a view of.
    #[doc(hidden)]
    fn binding(&self) -> StoreBinding {
        StoreBinding::Custom(std::any::type_name::<Self>())
    }
}

const ITEMS_BY_ENGINE: &str = "work items change state as the engine takes, commits, retries \
    and dead-letters them; requeue a dead letter with \
    `DistributedOrchestrator::requeue_dead_letter`, or resume a failed run";

/// The stored record of `item` of run `run_id`.
async fn item_record<W, T>(
    view: &T,
    run_id: &str,
    item: &W,
) -> Result<crate::distributed::WorkItemInfo, WorkItemStateStoreError>
where
    W: WorkItem,
    T: StoreView<kind::Items, Value = W>,
{
    let backend = backend_of(view)?;
    let id = item.instance_id();
    known(backend.work_items(run_id).await)?
        .and_then(|items| items.into_iter().find(|i| i.item_id == id))
        .ok_or(WorkItemStateStoreError::NotFound)
}

#[async_trait]
impl<W, T> WorkItemStateStore<W> for T
where
    W: WorkItem,
    T: StoreView<kind::Items, Value = W>,
{
    async fn get_status(
        &self,
        run_id: &str,
        item: &W,
    ) -> Result<WorkItemStatus, WorkItemStateStoreError> {
        Ok(item_record(self, run_id, item).await?.status)
    }
    async fn set_status(
        &self,
        _run_id: &str,
        _item: &W,
        _status: WorkItemStatus,
    ) -> Result<(), WorkItemStateStoreError> {
        Err(Unsupported {
            operation: "WorkItemStateStore::set_status",
            instead: ITEMS_BY_ENGINE,
        }
        .into())
    }
    async fn get_attempts(&self, run_id: &str, item: &W) -> Result<u32, WorkItemStateStoreError> {
        Ok(item_record(self, run_id, item).await?.attempt)
    }
    async fn increment_attempts(
        &self,
        _run_id: &str,
        _item: &W,
    ) -> Result<u32, WorkItemStateStoreError> {
        Err(Unsupported {
            operation: "WorkItemStateStore::increment_attempts",
            instead: ITEMS_BY_ENGINE,
        }
        .into())
    }
    async fn reset_attempts(
        &self,
        _run_id: &str,
        _item: &W,
    ) -> Result<(), WorkItemStateStoreError> {
        Err(Unsupported {
            operation: "WorkItemStateStore::reset_attempts",
            instead: ITEMS_BY_ENGINE,
        }
        .into())
    }
    async fn get_all(
        &self,
        run_id: &str,
    ) -> Result<Vec<WorkItemState<W>>, WorkItemStateStoreError> {
        let backend = backend_of(self)?;
        let Some(items) = known(backend.work_items(run_id).await)? else {
            return Err(WorkItemStateStoreError::NotFound);
        };
        items
            .into_iter()
            .map(|info| {
                let work_item = decode(info.payload.as_bytes()).map_err(|e| {
                    WorkItemStateStoreError::Other(format!("work item {}: {e}", info.item_id))
                })?;
                Ok(WorkItemState {
                    status: info.status,
                    attempts: info.attempt,
                    work_item,
                })
            })
            .collect()
    }
    fn binding(&self) -> StoreBinding {
        StoreView::binding(self)
    }
}
