//! [`DistributedOrchestrator`]: start, observe and steer distributed runs.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::distributed::backend::{Backend, DistributedError, RunAction};
use crate::distributed::codec::{codec_error, decode};
use crate::distributed::compat::StoreParts;
use crate::distributed::start::{start_request, start_run};
use crate::distributed::worker::store_setters;
use crate::distributed::{
    DeadLetter, LivenessStatus, LivenessStoreError, RunId, RunInfo, RunMetrics, RunStatus,
    WorkItemInfo, WorkerHealth, WorkflowError,
};
use crate::{Context, FloxideError, ItemId, Merge, Workflow, WorkflowCtx};

/// A backend error while waiting: pause and go on, unless it is not transient or has lasted
/// too long (10 tries). Returns the new count of consecutive failures.
async fn transient(error: DistributedError, failures: u32) -> Result<u32, FloxideError> {
    if !matches!(error, DistributedError::Backend(_)) || failures >= 10 {
        return Err(error.into());
    }
    tracing::debug!(%error, "backend error while waiting for a run; retrying");
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(failures + 1)
}

/// Builds a [`DistributedOrchestrator`]: a workflow plus a backend (or its seven stores).
pub struct OrchestratorBuilder<W, C> {
    workflow: Option<W>,
    backend: Option<Arc<dyn Backend>>,
    parts: StoreParts,
    _context: PhantomData<fn() -> C>,
}

/// How many runs [`DistributedOrchestrator::start_runs`] prepares and sends to the backend in
/// one call.
const START_SLICE: usize = 1_000;

impl<W, C> Default for OrchestratorBuilder<W, C> {
    fn default() -> Self {
        OrchestratorBuilder {
            workflow: None,
            backend: None,
            parts: StoreParts::default(),
            _context: PhantomData,
        }
    }
}

impl<W, C> OrchestratorBuilder<W, C>
where
    C: Context + Merge + 'static,
    W: Workflow<C> + 'static,
{
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    store_setters!();

    /// The orchestrator.
    ///
    /// # Errors
    /// [`DistributedError::Build`] when the workflow or the backend is missing, or the stores
    /// do not form one backend.
    pub fn build(mut self) -> Result<DistributedOrchestrator<W, C>, FloxideError> {
        let backend = self.take_backend()?;
        let workflow = self.take_workflow()?;
        Ok(DistributedOrchestrator {
            workflow,
            backend,
            graph_registered: Arc::default(),
            _context: PhantomData,
        })
    }
}

/// Starts runs of a workflow on a backend, and observes and steers them.
pub struct DistributedOrchestrator<W, C> {
    workflow: W,
    backend: Arc<dyn Backend>,
    /// Whether the workflow's graph was registered (by the first start; clones share it).
    graph_registered: Arc<AtomicBool>,
    _context: PhantomData<fn() -> C>,
}

impl<W: Clone, C> Clone for DistributedOrchestrator<W, C> {
    fn clone(&self) -> Self {
        DistributedOrchestrator {
            workflow: self.workflow.clone(),
            backend: Arc::clone(&self.backend),
            graph_registered: Arc::clone(&self.graph_registered),
            _context: PhantomData,
        }
    }
}

impl<W: std::fmt::Debug, C> std::fmt::Debug for DistributedOrchestrator<W, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DistributedOrchestrator")
            .field("workflow", &self.workflow)
            .finish_non_exhaustive()
    }
}

impl<W, C> DistributedOrchestrator<W, C>
where
    C: Context + Merge + 'static,
    W: Workflow<C> + 'static,
{
    /// A builder.
    pub fn builder() -> OrchestratorBuilder<W, C> {
        OrchestratorBuilder::new()
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Registers the workflow's graph in the backend before the first start (best effort: a
    /// failure is logged, and the next start tries again).
    async fn register_graph(&self) {
        if self.graph_registered.load(Ordering::Relaxed) {
            return;
        }
        match self.backend.register_graph(&self.workflow.graph()).await {
            Ok(()) => self.graph_registered.store(true, Ordering::Relaxed),
            Err(error) => tracing::warn!(%error, "could not register the workflow's graph"),
        }
    }

    /// Starts a run from `input` with `ctx.store` as its context; `ctx`'s timeout becomes the
    /// run's deadline. The run record, context and first item are stored at once.
    ///
    /// # Errors
    /// Codec and backend errors.
    pub async fn start_run(
        &self,
        ctx: &WorkflowCtx<C>,
        input: W::Input,
    ) -> Result<RunId, FloxideError> {
        self.register_graph().await;
        start_run(&self.workflow, &*self.backend, ctx, input, None, None).await
    }

    /// Starts one run per input, all with `ctx.store` as their context, sent to the backend
    /// together (the Redis backend sends them 250 per round trip), a thousand at a time (the
    /// first runs start before the later ones are prepared, and a long iterator is never held
    /// in memory whole). One answer per input, in order; a failed start does not stop the
    /// others.
    pub async fn start_runs(
        &self,
        ctx: &WorkflowCtx<C>,
        inputs: impl IntoIterator<Item = W::Input>,
    ) -> Vec<Result<RunId, FloxideError>> {
        self.register_graph().await;
        let mut inputs = inputs.into_iter().peekable();
        let mut out = Vec::new();
        while inputs.peek().is_some() {
            let slice = inputs.by_ref().take(START_SLICE);
            out.extend(self.start_slice(ctx, slice).await);
        }
        out
    }

    /// Starts one run per input of `inputs` in one call to the backend (see
    /// [`start_runs`](Self::start_runs)).
    async fn start_slice(
        &self,
        ctx: &WorkflowCtx<C>,
        inputs: impl Iterator<Item = W::Input>,
    ) -> Vec<Result<RunId, FloxideError>> {
        let mut answers: Vec<Option<Result<RunId, FloxideError>>> = Vec::new();
        let mut requests = Vec::new();
        for input in inputs {
            match start_request(&self.workflow, ctx, input, None, None) {
                Ok(request) => {
                    requests.push(request);
                    answers.push(None);
                }
                Err(error) => answers.push(Some(Err(error))),
            }
        }
        let mut started = self.backend.start_runs(requests).await.into_iter();
        answers
            .into_iter()
            .map(|answer| {
                answer.unwrap_or_else(|| match started.next() {
                    Some(result) => result.map_err(FloxideError::from),
                    None => Err(DistributedError::Backend(
                        "the backend answered fewer starts than it was sent".to_owned(),
                    )
                    .into()),
                })
            })
            .collect()
    }

    /// Starts a run unless one was already started with `key`.
    ///
    /// # Errors
    /// [`DistributedError::DuplicateRun`] when `key` was used before; codec and backend errors.
    pub async fn start_run_with_key(
        &self,
        ctx: &WorkflowCtx<C>,
        input: W::Input,
        key: impl Into<String>,
    ) -> Result<RunId, FloxideError> {
        self.register_graph().await;
        start_run(
            &self.workflow,
            &*self.backend,
            ctx,
            input,
            None,
            Some(key.into()),
        )
        .await
    }

    /// Starts a run under a chosen id.
    ///
    /// # Errors
    /// [`DistributedError::RunExists`] when the id is taken; codec and backend errors.
    pub async fn start_run_with_id(
        &self,
        ctx: &WorkflowCtx<C>,
        input: W::Input,
        run_id: impl Into<RunId>,
    ) -> Result<RunId, FloxideError> {
        self.register_graph().await;
        start_run(
            &self.workflow,
            &*self.backend,
            ctx,
            input,
            Some(run_id.into()),
            None,
        )
        .await
    }

    /// The run's status.
    ///
    /// # Errors
    /// [`DistributedError::UnknownRun`] and backend errors.
    pub async fn status(&self, run_id: &str) -> Result<RunStatus, FloxideError> {
        Ok(self.backend.run_info(run_id).await?.status)
    }

    /// The run's record.
    ///
    /// # Errors
    /// [`DistributedError::UnknownRun`] and backend errors.
    pub async fn run_info(&self, run_id: &str) -> Result<RunInfo, FloxideError> {
        Ok(self.backend.run_info(run_id).await?)
    }

    /// Runs, newest first, optionally only those with `status`.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn list_runs(&self, status: Option<RunStatus>) -> Result<Vec<RunInfo>, FloxideError> {
        Ok(self.backend.list_runs(status).await?)
    }

    /// Cancels a run: no further step starts, in-flight steps are signalled (their
    /// cancellation token fires) and their commits are rejected.
    ///
    /// # Errors
    /// [`DistributedError::InvalidRunState`] for a finished run; unknown run; backend errors.
    pub async fn cancel(&self, run_id: &str) -> Result<(), FloxideError> {
        self.backend.control(run_id, RunAction::Cancel).await?;
        Ok(())
    }

    /// Pauses a run: its items are held (none is lost) until [`resume`](Self::resume).
    ///
    /// # Errors
    /// [`DistributedError::InvalidRunState`] unless the run is pending or running.
    pub async fn pause(&self, run_id: &str) -> Result<(), FloxideError> {
        self.backend.control(run_id, RunAction::Pause).await?;
        Ok(())
    }

    /// Resumes a paused run, or a failed one: then only what failed is re-enqueued.
    ///
    /// # Errors
    /// [`DistributedError::InvalidRunState`] unless the run is paused or failed.
    pub async fn resume(&self, run_id: &str) -> Result<(), FloxideError> {
        self.backend.control(run_id, RunAction::Resume).await?;
        Ok(())
    }

    /// The failures recorded for a run.
    ///
    /// # Errors
    /// Unknown run; backend errors.
    pub async fn errors(&self, run_id: &str) -> Result<Vec<WorkflowError>, FloxideError> {
        Ok(self.backend.errors(run_id).await?)
    }

    /// The last health report of every worker.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn liveness(&self) -> Result<Vec<WorkerHealth>, FloxideError> {
        Ok(self.backend.workers().await?)
    }

    /// The workers that reported, by numeric id (Floxide 3.x; workers named otherwise, like
    /// those of a [`WorkerPool`](crate::distributed::WorkerPool), are in
    /// [`liveness`](Self::liveness)).
    ///
    /// # Errors
    /// Backend errors.
    pub async fn list_workers(&self) -> Result<Vec<usize>, LivenessStoreError> {
        let health = self.backend.workers().await?;
        Ok(health
            .iter()
            .filter_map(|h| h.worker_id.as_str().parse().ok())
            .collect())
    }

    /// Every worker's last report (Floxide 3.x; the same as [`liveness`](Self::liveness)).
    ///
    /// # Errors
    /// Backend errors.
    pub async fn list_worker_health(&self) -> Result<Vec<WorkerHealth>, LivenessStoreError> {
        Ok(self.backend.workers().await?)
    }

    /// The liveness of the workers numbered `worker_ids` (Floxide 3.x): `Alive` when the last
    /// report is younger than `threshold`, `Stale` within three times that, `Dead` otherwise or
    /// without a report (or when the backend cannot be read).
    pub async fn check_worker_liveness(
        &self,
        worker_ids: &[usize],
        threshold: Duration,
    ) -> Vec<(usize, LivenessStatus)> {
        let health = self.backend.workers().await.unwrap_or_default();
        let now = std::time::SystemTime::now();
        worker_ids
            .iter()
            .map(|&n| {
                let id = crate::distributed::WorkerId::from(n);
                let status = match health.iter().find(|h| h.worker_id == id) {
                    Some(h) if h.status == crate::distributed::WorkerStatus::Stopped => {
                        LivenessStatus::Stopped
                    }
                    Some(h) => {
                        let silent = now.duration_since(h.last_heartbeat).unwrap_or_default();
                        if silent < threshold {
                            LivenessStatus::Alive
                        } else if silent < threshold * 3 {
                            LivenessStatus::Stale
                        } else {
                            LivenessStatus::Dead
                        }
                    }
                    None => LivenessStatus::Dead,
                };
                (n, status)
            })
            .collect()
    }

    /// The run's context as stored now.
    ///
    /// # Errors
    /// Unknown run; a context that does not decode; backend errors.
    pub async fn context(&self, run_id: &str) -> Result<C, FloxideError> {
        let stored = self.backend.load_context(run_id).await?;
        decode(&stored.bytes).map_err(|e| codec_error(format!("context of run `{run_id}`: {e}")))
    }

    /// The run's counters.
    ///
    /// # Errors
    /// Unknown run; backend errors.
    pub async fn metrics(&self, run_id: &str) -> Result<RunMetrics, FloxideError> {
        Ok(self.backend.metrics(run_id).await?)
    }

    /// The run's work items not yet committed (pending, in progress, waiting a retry, held).
    ///
    /// # Errors
    /// Unknown run; an item that does not decode; backend errors.
    pub async fn pending_work(&self, run_id: &str) -> Result<Vec<W::WorkItem>, FloxideError> {
        let mut items = Vec::new();
        for bytes in self.backend.pending_items(run_id).await? {
            items.push(decode::<W::WorkItem>(&bytes).map_err(codec_error)?);
        }
        items.sort_by_key(crate::WorkItem::instance_id);
        Ok(items)
    }

    /// Every work item of the run with its state.
    ///
    /// # Errors
    /// Unknown run; backend errors.
    pub async fn list_work_items(&self, run_id: &str) -> Result<Vec<WorkItemInfo>, FloxideError> {
        Ok(self.backend.work_items(run_id).await?)
    }

    /// Every dead letter of the backend.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, FloxideError> {
        Ok(self.backend.dead_letters().await?)
    }

    /// Re-enqueues a dead letter (reviving its run if it had failed).
    ///
    /// # Errors
    /// [`DistributedError::UnknownDeadLetter`]; backend errors.
    pub async fn requeue_dead_letter(
        &self,
        run_id: &str,
        item_id: ItemId,
    ) -> Result<(), FloxideError> {
        Ok(self.backend.requeue_dead_letter(run_id, item_id).await?)
    }

    /// Waits until the run is Completed, Failed or Cancelled, checking at least every
    /// `poll_interval` (the backend wakes it earlier when it can notify).
    ///
    /// # Errors
    /// Unknown run; backend errors.
    pub async fn wait_for_completion(
        &self,
        run_id: &str,
        poll_interval: Duration,
    ) -> Result<RunInfo, FloxideError> {
        let mut watch = self.backend.watch_run(run_id);
        let mut failures = 0;
        loop {
            let info = match self.backend.run_info(run_id).await {
                Ok(info) => info,
                Err(e) => {
                    failures = transient(e, failures).await?;
                    continue;
                }
            };
            failures = 0;
            if info.status.is_finished() {
                return Ok(info);
            }
            watch.changed(poll_interval).await;
        }
    }

    /// Waits up to `timeout` for the run to finish and returns its typed output.
    ///
    /// # Errors
    /// [`DistributedError::WaitTimeout`] when it is still running; [`DistributedError::NoOutput`]
    /// when it failed or was cancelled; unknown run; decode and backend errors.
    pub async fn wait_for_output(
        &self,
        run_id: &str,
        timeout: Duration,
    ) -> Result<W::Output, FloxideError> {
        let started = Instant::now();
        let mut watch = self.backend.watch_run(run_id);
        let mut failures = 0;
        let info = loop {
            // Heard complete, with its output: no need to read the run.
            if let Some(output) = self.backend.heard_output(run_id) {
                return decode_output(run_id, &output);
            }
            let info = match self.backend.run_info(run_id).await {
                Ok(info) => info,
                Err(e) if started.elapsed() < timeout => {
                    failures = transient(e, failures).await?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            failures = 0;
            if info.status.is_finished() {
                break info;
            }
            let left = timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(DistributedError::WaitTimeout {
                    run_id: run_id.to_owned(),
                    waited: timeout,
                }
                .into());
            }
            watch.changed(left).await;
        };
        match (info.status, info.output) {
            (RunStatus::Completed, Some(output)) => {
                serde_json::from_value(output).map_err(|e| output_error(run_id, &e))
            }
            (status, _) => Err(DistributedError::NoOutput {
                run_id: run_id.to_owned(),
                status,
                error: info.error,
            }
            .into()),
        }
    }
}

/// Decodes the output (JSON bytes) of run `run_id`.
fn decode_output<T: serde::de::DeserializeOwned>(
    run_id: &str,
    output: &[u8],
) -> Result<T, FloxideError> {
    serde_json::from_slice(output).map_err(|e| output_error(run_id, &e))
}

/// The error for an output that does not decode as the workflow's output type.
fn output_error(run_id: &str, error: &serde_json::Error) -> FloxideError {
    codec_error(format!("output of run `{run_id}`: {error}"))
}
