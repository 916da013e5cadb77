//! A shared backend is a backend: `Arc<B>` (and so `Arc<dyn Backend>`, what a URL-dispatching
//! connect returns) implements both traits by handing every call to `B`, its own overrides of
//! the provided methods included.

use std::sync::Arc;
use std::time::Duration;

use super::{AdminBackend, WorkerBackend};
use crate::distributed::{
    CommitItem, CommitOutcome, CommitReply, DeadLetter, DistributedError, Lease, LeaseState,
    QueueStats, RunAction, RunId, RunInfo, RunMetrics, RunPage, RunQuery, RunStatus, RunWatch,
    StartRun, StepCommit, StepEvent, StepFailed, TakeOptions, TakeRequest, Taken, VersionedContext,
    WorkItemInfo, WorkerHealth, WorkerId, WorkflowError,
};
use crate::graph::{RegisteredGraph, WorkflowGraph};
use crate::ItemId;

#[async_trait::async_trait]
impl<B: WorkerBackend + ?Sized> WorkerBackend for Arc<B> {
    fn keeps_successors(&self) -> bool {
        (**self).keeps_successors()
    }

    async fn take_batch(
        &self,
        take: TakeRequest<'_>,
        wait: Duration,
    ) -> Result<Vec<Taken>, DistributedError> {
        (**self).take_batch(take, wait).await
    }

    async fn heartbeat(
        &self,
        lease: &Lease,
        lease_timeout: Duration,
    ) -> Result<LeaseState, DistributedError> {
        (**self).heartbeat(lease, lease_timeout).await
    }

    async fn load_context(&self, run_id: &str) -> Result<VersionedContext, DistributedError> {
        (**self).load_context(run_id).await
    }

    async fn commit_batch(
        &self,
        commits: &[CommitItem<'_>],
        next: Option<TakeRequest<'_>>,
    ) -> Result<CommitReply, DistributedError> {
        (**self).commit_batch(commits, next).await
    }

    async fn fail(
        &self,
        lease: &Lease,
        failure: &StepFailed,
    ) -> Result<CommitOutcome, DistributedError> {
        (**self).fail(lease, failure).await
    }

    async fn release(&self, lease: &Lease) -> Result<(), DistributedError> {
        (**self).release(lease).await
    }

    async fn wait_run_change(&self, run_id: &str, timeout: Duration) {
        (**self).wait_run_change(run_id, timeout).await
    }

    async fn take(
        &self,
        workflow: &str,
        worker: &WorkerId,
        options: TakeOptions,
        wait: Duration,
    ) -> Result<Option<Taken>, DistributedError> {
        (**self).take(workflow, worker, options, wait).await
    }

    async fn commit(
        &self,
        lease: &Lease,
        step: &StepCommit,
    ) -> Result<CommitOutcome, DistributedError> {
        (**self).commit(lease, step).await
    }
}

#[async_trait::async_trait]
impl<B: AdminBackend + ?Sized> AdminBackend for Arc<B> {
    async fn start_run(&self, start: StartRun) -> Result<RunId, DistributedError> {
        (**self).start_run(start).await
    }

    async fn start_runs(&self, starts: Vec<StartRun>) -> Vec<Result<RunId, DistributedError>> {
        (**self).start_runs(starts).await
    }

    async fn run_info(&self, run_id: &str) -> Result<RunInfo, DistributedError> {
        (**self).run_info(run_id).await
    }

    async fn list_runs(&self, status: Option<RunStatus>) -> Result<Vec<RunInfo>, DistributedError> {
        (**self).list_runs(status).await
    }

    async fn query_runs(&self, query: &RunQuery) -> Result<RunPage, DistributedError> {
        (**self).query_runs(query).await
    }

    async fn run_input(&self, run_id: &str) -> Result<Option<Vec<u8>>, DistributedError> {
        (**self).run_input(run_id).await
    }

    async fn step_history(&self, run_id: &str) -> Result<Option<Vec<StepEvent>>, DistributedError> {
        (**self).step_history(run_id).await
    }

    async fn control(&self, run_id: &str, action: RunAction) -> Result<RunInfo, DistributedError> {
        (**self).control(run_id, action).await
    }

    fn watch_runs(&self) -> RunWatch {
        (**self).watch_runs()
    }

    fn watch_run(&self, run_id: &str) -> RunWatch {
        (**self).watch_run(run_id)
    }

    fn heard_output(&self, run_id: &str) -> Option<Vec<u8>> {
        (**self).heard_output(run_id)
    }

    async fn errors(&self, run_id: &str) -> Result<Vec<WorkflowError>, DistributedError> {
        (**self).errors(run_id).await
    }

    async fn metrics(&self, run_id: &str) -> Result<RunMetrics, DistributedError> {
        (**self).metrics(run_id).await
    }

    async fn work_items(&self, run_id: &str) -> Result<Vec<WorkItemInfo>, DistributedError> {
        (**self).work_items(run_id).await
    }

    async fn pending_items(&self, run_id: &str) -> Result<Vec<Vec<u8>>, DistributedError> {
        (**self).pending_items(run_id).await
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, DistributedError> {
        (**self).dead_letters().await
    }

    async fn requeue_dead_letter(
        &self,
        run_id: &str,
        item_id: ItemId,
    ) -> Result<(), DistributedError> {
        (**self).requeue_dead_letter(run_id, item_id).await
    }

    async fn drop_dead_letter(
        &self,
        run_id: &str,
        item_id: ItemId,
    ) -> Result<(), DistributedError> {
        (**self).drop_dead_letter(run_id, item_id).await
    }

    async fn report_worker(&self, health: &WorkerHealth) -> Result<(), DistributedError> {
        (**self).report_worker(health).await
    }

    async fn workers(&self) -> Result<Vec<WorkerHealth>, DistributedError> {
        (**self).workers().await
    }

    async fn register_graph(&self, graph: &WorkflowGraph) -> Result<(), DistributedError> {
        (**self).register_graph(graph).await
    }

    async fn graphs(&self) -> Result<Vec<RegisteredGraph>, DistributedError> {
        (**self).graphs().await
    }

    async fn queue_stats(&self, workflow: &str) -> Result<Option<QueueStats>, DistributedError> {
        (**self).queue_stats(workflow).await
    }
}
