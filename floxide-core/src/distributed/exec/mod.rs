//! Executing steps, in named parts that call one way:
//!
//! 1. [`prepare`]: check the item's node, decode the item and the run's context;
//! 2. [`lease`]: run the node while its lease is renewed (watching cancellation and shutdown);
//! 3. [`outcome`]: classify what the node returned (failure to report, or success);
//! 4. [`commit`]: build the step's commit, and settle the backend's answer (a context
//!    conflict re-merges or re-runs a `Hold`);
//! 5. [`batch`]: the worker's loop that keeps several steps in flight and commits the
//!    finished ones together, taking the next batch in the same call.
//!
//! [`step_one`] drives one item through all of them (`run_once`, `step_once_on`, 3.x steps).

mod batch;
mod chain;
mod commit;
mod lease;
mod outcome;
mod prepare;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::distributed::backend::{poison_error, Backend, LeaseState, TakeOptions, Taken};
use crate::distributed::machine;
use crate::distributed::metrics::{self, StepOutcome};
use crate::distributed::step::{with_poison, with_step, StepContext};
use crate::distributed::{RunId, WorkerId};
use crate::{Context, FloxideError, Merge, RetryPolicy, Workflow};

pub(crate) use batch::{Batcher, Slots};
pub(crate) use chain::Speeds;
pub(crate) use commit::{Pending, Settled};

/// How the worker executes steps.
#[derive(Debug, Clone)]
pub(crate) struct ExecConfig {
    pub(crate) lease_timeout: Duration,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) retry_policy: Option<RetryPolicy>,
    /// Whether a step's successors may run before the step is committed (see
    /// [`chain`]), on backends that keep successors.
    pub(crate) chain_steps: bool,
    /// Deliveries of an item without a commit after which it is poison (see
    /// [`WorkerBuilder::max_deliveries`](crate::distributed::WorkerBuilder::max_deliveries)).
    pub(crate) max_deliveries: u32,
}

impl Default for ExecConfig {
    fn default() -> Self {
        let lease_timeout = TakeOptions::default().lease_timeout;
        ExecConfig {
            lease_timeout,
            heartbeat_interval: lease_timeout / 3,
            retry_policy: None,
            chain_steps: true,
            max_deliveries: TakeOptions::default().max_deliveries,
        }
    }
}

/// How a step ended.
#[derive(Debug)]
pub(crate) enum StepEnd<O> {
    /// Committed.
    Committed {
        /// The outputs the step produced.
        outputs: Vec<O>,
        /// How long the node ran (its last execution, for a held step run again).
        ran: Duration,
    },
    /// The node failed (with this error) and its retry is scheduled.
    Retried(FloxideError),
    /// The node failed (with this error) with no retry left: the item was dead-lettered and the
    /// run failed.
    Failed(FloxideError),
    /// The item was dead-lettered (for this reason) without a failure of its node: the item or
    /// the run's context could not be decoded, the run's deadline passed, or the context could
    /// not be serialized after the step.
    DeadLettered(String),
    /// Given up, nothing applied: the lease was lost (`lease_lost`) or the run is no longer
    /// active.
    Abandoned {
        /// Whether the lease was lost (rather than the run cancelled or finished).
        lease_lost: bool,
    },
    /// Stopped by the worker's shutdown before finishing; the lease was released.
    Released,
}

impl<O> StepEnd<O> {
    /// The plain outcome, for metrics.
    fn outcome(&self) -> StepOutcome {
        match self {
            StepEnd::Committed { ran, .. } => StepOutcome::Committed { ran: *ran },
            StepEnd::Retried(_) => StepOutcome::Retried,
            StepEnd::Failed(_) => StepOutcome::Failed,
            StepEnd::DeadLettered(_) => StepOutcome::DeadLettered,
            StepEnd::Abandoned { lease_lost } => StepOutcome::Abandoned {
                lease_lost: *lease_lost,
            },
            StepEnd::Released => StepOutcome::Released,
        }
    }
}

/// What executing a taken item led to: the step ended (its failure reported, or given up),
/// or its effects wait to be committed.
#[derive(Debug)]
pub(crate) enum Executed<O> {
    /// Nothing (more) to commit.
    Ended {
        /// The item's node.
        node: String,
        /// How.
        end: StepEnd<O>,
    },
    /// The step's commit, to send.
    Ready(Box<Pending<O>>),
}

/// Records a step's end in the metrics and hands it on.
pub(crate) fn ended<C: Context, W: Workflow<C>>(
    workflow: &W,
    node: &str,
    end: StepEnd<W::Output>,
) -> StepEnd<W::Output> {
    metrics::step_ended(workflow.name(), workflow.node_names(), node, end.outcome());
    end
}

/// Executes the leased item `taken` up to its commit (see the module documentation); `gate`
/// for a chained step (see [`chain`]).
pub(crate) async fn execute<C, W>(
    workflow: &W,
    backend: &dyn Backend,
    config: &ExecConfig,
    worker: &WorkerId,
    mut taken: Taken,
    stop: Option<(&CancellationToken, Duration)>,
    gate: Option<&chain::Gate>,
) -> Result<Executed<W::Output>, FloxideError>
where
    C: Context + Merge,
    W: Workflow<C>,
{
    let lease = &taken.lease;
    let span = tracing::debug_span!(
        "floxide.step",
        run_id = %lease.run_id,
        node = %taken.node,
        item_id = %lease.item_id,
        attempt = taken.attempt,
        worker = %worker,
    );
    let token = CancellationToken::new();
    let step = StepContext {
        run_id: lease.run_id.clone(),
        item_id: lease.item_id,
        node: taken.node.clone(),
        attempt: taken.attempt,
        delivery: taken.deliveries,
        worker: worker.clone(),
        cancel: token.clone(),
    };
    let context = taken.context.take();
    let poison = (taken.deliveries > config.max_deliveries)
        .then(|| poison_error(taken.deliveries - 1, config.max_deliveries));
    let run = run_step(workflow, backend, config, taken, context, stop, token, gate);
    let run = tracing::Instrument::instrument(run, span);
    match poison {
        Some(reason) => {
            tracing::warn!(%reason, "failing a poison item without running its node");
            with_step(step, with_poison(reason, run)).await
        }
        None => with_step(step, run).await,
    }
}

/// Prepares, runs and classifies one execution of `taken`'s node.
#[allow(clippy::too_many_arguments)]
async fn run_step<C, W>(
    workflow: &W,
    backend: &dyn Backend,
    config: &ExecConfig,
    taken: Taken,
    context: Option<crate::distributed::VersionedContext>,
    stop: Option<(&CancellationToken, Duration)>,
    token: CancellationToken,
    gate: Option<&chain::Gate>,
) -> Result<Executed<W::Output>, FloxideError>
where
    C: Context + Merge,
    W: Workflow<C>,
{
    let started = tokio::time::Instant::now();
    let prepared = match prepare::prepare::<C, W>(workflow, backend, &taken, context).await? {
        Ok(prepared) => prepared,
        Err(reason) => return outcome::dead_letter(backend, taken, reason, gate).await,
    };
    let ran = lease::run_node(
        workflow, backend, config, &taken, prepared, stop, token, started, gate,
    );
    match ran.await? {
        lease::Ran::Finished(finished) => {
            outcome::classify(backend, config, taken, finished, gate).await
        }
        lease::Ran::Gone(end) => Ok(Executed::Ended {
            node: taken.node,
            end,
        }),
    }
}

/// Renews `taken`'s lease before its node runs again (a held step after a conflict): `None`
/// when renewed, or how the step ends when the lease is gone or the run is over.
///
/// # Errors
/// A backend error.
pub(crate) async fn renew<O>(
    backend: &dyn Backend,
    config: &ExecConfig,
    taken: &Taken,
) -> Result<Option<StepEnd<O>>, FloxideError> {
    match backend
        .heartbeat(&taken.lease, config.lease_timeout)
        .await?
    {
        LeaseState::Lost => Ok(Some(StepEnd::Abandoned { lease_lost: true })),
        LeaseState::Active(status) if !machine::accepts_results(status) => {
            Ok(Some(StepEnd::Abandoned { lease_lost: false }))
        }
        LeaseState::Active(_) => Ok(None),
    }
}

/// Executes `taken` and commits its effects alone, settling conflicts (one item's path).
pub(crate) async fn step_one<C, W>(
    workflow: &W,
    backend: &dyn Backend,
    config: &ExecConfig,
    worker: &WorkerId,
    mut taken: Taken,
    stop: Option<(&CancellationToken, Duration)>,
) -> Result<StepEnd<W::Output>, FloxideError>
where
    C: Context + Merge,
    W: Workflow<C>,
{
    loop {
        let mut pending =
            match execute(workflow, backend, config, worker, taken, stop, None).await? {
                Executed::Ended { node, end } => return Ok(ended(workflow, &node, end)),
                Executed::Ready(pending) => pending,
            };
        loop {
            let outcome = backend
                .commit(&pending.taken.lease, &pending.commit)
                .await?;
            match commit::settle(workflow.name(), *pending, outcome) {
                Settled::Done { node, end } => return Ok(ended(workflow, &node, end)),
                Settled::Rerun(again) => {
                    if let Some(end) = renew(backend, config, &again).await? {
                        return Ok(ended(workflow, &again.node, end));
                    }
                    taken = again;
                    break;
                }
                Settled::Remerge(stale) => {
                    match commit::remerge::<C, _>(backend, config, stale).await? {
                        Executed::Ready(merged) => pending = merged,
                        Executed::Ended { node, end } => return Ok(ended(workflow, &node, end)),
                    }
                }
            }
        }
    }
}

/// One non-blocking take and step with default worker settings: the run and its first
/// output when the step committed one.
pub(crate) async fn step_once<C, W>(
    workflow: &W,
    backend: &dyn Backend,
    worker: &WorkerId,
) -> Result<Option<(RunId, W::Output)>, FloxideError>
where
    C: Context + Merge,
    W: Workflow<C>,
{
    let options = TakeOptions::default();
    let Some(taken) = backend
        .take(workflow.name(), worker, options, Duration::ZERO)
        .await?
    else {
        return Ok(None);
    };
    let run_id = taken.lease.run_id.clone();
    let config = ExecConfig::default();
    match step_one(workflow, backend, &config, worker, taken, None).await? {
        StepEnd::Committed { outputs, .. } => Ok(outputs.into_iter().next().map(|o| (run_id, o))),
        _ => Ok(None),
    }
}
