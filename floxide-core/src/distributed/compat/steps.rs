//! `Workflow::start_distributed` and `Workflow::step_distributed` of Floxide 3.x, on the same
//! leased, fenced machinery as [`DistributedWorker`](crate::distributed::DistributedWorker).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::binding::StoreBinding;
use super::stores::{kind, ContextStore, StoreKind, WorkQueue};
use crate::distributed::codec::{codec_error, decode};
use crate::distributed::exec::{self, StepEnd};
use crate::distributed::worker::WorkerConfig;
use crate::distributed::{Backend, DistributedError, WorkerId};
use crate::{Context, FloxideError, Merge, Workflow, WorkflowCtx};

/// How a step of [`Workflow::step_distributed`] ended, for [`StepCallbacks::on_item_processed`].
#[derive(Debug, Clone)]
pub enum ItemProcessedOutcome {
    /// Committed with a terminal output (as JSON).
    SuccessTerminal(serde_json::Value),
    /// Committed without a terminal output (successors enqueued, or a `Hold`).
    SuccessNonTerminal,
    /// The node failed: the failure is recorded (retry scheduled or dead letter).
    Error(FloxideError),
}

/// Hooks around each step of [`Workflow::step_distributed`].
#[async_trait]
pub trait StepCallbacks<C: Context, W: Workflow<C>>: Send + Sync {
    /// Called once the item is leased, before its node runs. An error gives the item back
    /// (it is taken again later) and is returned by `step_distributed`.
    async fn on_started(&self, run_id: String, item: W::WorkItem) -> Result<(), FloxideError>;

    /// Called after the step's outcome was recorded. An error is returned by
    /// `step_distributed`; what was recorded stays.
    async fn on_item_processed(
        &self,
        run_id: String,
        item: W::WorkItem,
        outcome: ItemProcessedOutcome,
    ) -> Result<(), FloxideError>;
}

/// A step of [`Workflow::step_distributed`] that did not succeed: its error, and the run and
/// item when known.
#[derive(Debug, Clone)]
pub struct StepError<W> {
    /// What went wrong.
    pub error: FloxideError,
    /// The run of the item.
    pub run_id: Option<String>,
    /// The item.
    pub work_item: Option<W>,
}

impl<W> std::fmt::Display for StepError<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.run_id {
            Some(run) => write!(f, "step of run `{run}` failed: {}", self.error),
            None => write!(f, "step failed: {}", self.error),
        }
    }
}

impl<W: std::fmt::Debug> std::error::Error for StepError<W> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// The backend a context store and a queue are views of.
fn backend_of<C, WI, CS, Q>(
    context_store: &CS,
    queue: &Q,
) -> Result<Arc<dyn Backend>, DistributedError>
where
    C: Context + Merge,
    WI: crate::WorkItem,
    CS: ContextStore<C>,
    Q: WorkQueue<C, WI>,
{
    StoreBinding::unify(&[
        (kind::Contexts::NAME, &context_store.binding()),
        (kind::Queue::NAME, &queue.binding()),
    ])
}

/// Starts run `run_id` with `ctx.store` and `input`; nothing happens when the run exists.
pub(crate) async fn start<C, W, CS, Q>(
    workflow: &W,
    ctx: &WorkflowCtx<C>,
    input: W::Input,
    context_store: &CS,
    queue: &Q,
    run_id: &str,
) -> Result<(), FloxideError>
where
    C: Context + Merge,
    W: Workflow<C>,
    CS: ContextStore<C>,
    Q: WorkQueue<C, W::WorkItem>,
{
    let backend = backend_of(context_store, queue)?;
    match crate::distributed::start::start_run(
        workflow,
        &*backend,
        ctx,
        input,
        Some(run_id.to_owned()),
        None,
    )
    .await
    {
        Ok(_) | Err(FloxideError::Distributed(DistributedError::RunExists(_))) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A failed step of `run_id` (if known) on `item` (if decoded).
fn step_error<WI: Clone>(
    error: FloxideError,
    run_id: Option<&str>,
    item: Option<&WI>,
) -> StepError<WI> {
    StepError {
        error,
        run_id: run_id.map(str::to_owned),
        work_item: item.cloned(),
    }
}

/// A step's outcome for the 3.x callbacks, and its result for the caller.
type Reported<WI, O> = (
    ItemProcessedOutcome,
    Result<Option<(String, O)>, StepError<WI>>,
);

/// What a step's end is for 3.x: the outcome its callbacks see and the step's result; `None`
/// when nothing was applied (the lease was lost or the run is no longer active), so that the
/// item's current holder, if any, reports it.
///
/// # Errors
/// The output could not be encoded as JSON for the callbacks.
fn reported<WI: Clone, O: serde::Serialize>(
    end: StepEnd<O>,
    run_id: &str,
    item: Option<&WI>,
) -> Result<Option<Reported<WI, O>>, StepError<WI>> {
    let failed = |error| step_error(error, Some(run_id), item);
    Ok(Some(match end {
        StepEnd::Committed { mut outputs, .. } if !outputs.is_empty() => {
            let output = outputs.swap_remove(0);
            let json =
                serde_json::to_value(&output).map_err(|e| failed(codec_error(e.to_string())))?;
            (
                ItemProcessedOutcome::SuccessTerminal(json),
                Ok(Some((run_id.to_owned(), output))),
            )
        }
        StepEnd::Committed { .. } => (ItemProcessedOutcome::SuccessNonTerminal, Ok(None)),
        StepEnd::Retried(error) | StepEnd::Failed(error) => (
            ItemProcessedOutcome::Error(error.clone()),
            Err(failed(error)),
        ),
        StepEnd::DeadLettered(reason) => {
            let error = FloxideError::Generic(reason);
            (
                ItemProcessedOutcome::Error(error.clone()),
                Err(failed(error)),
            )
        }
        StepEnd::Abandoned { .. } | StepEnd::Released => return Ok(None),
    }))
}

pub(crate) async fn step<C, W, CS, Q>(
    workflow: &W,
    context_store: &CS,
    queue: &Q,
    worker_id: usize,
    callbacks: Arc<dyn StepCallbacks<C, W>>,
) -> Result<Option<(String, W::Output)>, StepError<W::WorkItem>>
where
    C: Context + Merge + 'static,
    W: Workflow<C>,
    CS: ContextStore<C>,
    Q: WorkQueue<C, W::WorkItem>,
{
    let failed = step_error::<W::WorkItem>;
    let backend = backend_of(context_store, queue).map_err(|e| failed(e.into(), None, None))?;
    let config = WorkerConfig::default();
    let worker = WorkerId::from(worker_id);
    let taken = backend
        .take(
            workflow.name(),
            &worker,
            config.take_options(),
            Duration::ZERO,
        )
        .await
        .map_err(|e| failed(e.into(), None, None))?;
    let Some(taken) = taken else {
        return Ok(None);
    };
    let run_id = taken.lease.run_id.clone();
    // The callbacks see the item; an undecodable one goes to the dead letters in `execute`.
    let item: Option<W::WorkItem> = decode(&taken.bytes).ok();
    if let Some(item) = &item {
        if let Err(error) = callbacks.on_started(run_id.clone(), item.clone()).await {
            backend
                .release(&taken.lease)
                .await
                .map_err(|e| failed(e.into(), Some(&run_id), Some(item)))?;
            return Err(failed(error, Some(&run_id), Some(item)));
        }
    }
    let end = exec::step_one(workflow, &*backend, &config.exec(), &worker, taken, None)
        .await
        .map_err(|e| failed(e, Some(&run_id), item.as_ref()))?;
    let Some((outcome, result)) = reported(end, &run_id, item.as_ref())? else {
        return Ok(None);
    };
    if let Some(item) = &item {
        if let Err(error) = callbacks
            .on_item_processed(run_id.clone(), item.clone(), outcome)
            .await
        {
            return Err(failed(error, Some(&run_id), Some(item)));
        }
    }
    result
}
