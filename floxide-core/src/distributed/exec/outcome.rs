//! Step part 3: classify what the node returned, and report failures.

use std::time::Duration;

use super::chain::Gate;
use super::commit;
use super::lease::Finished;
use super::{ExecConfig, Executed, StepEnd};
use crate::distributed::backend::{Backend, CommitOutcome, DistributedError, StepFailed, Taken};
use crate::{Context, FloxideError, Merge, WorkItem};

/// A failure to report: the error, the scheduled retry, and whether a worker-wide retry
/// policy may still retry it.
struct Failure {
    error: FloxideError,
    retry_after: Option<Duration>,
    open: bool,
}

/// Turns a finished node into the step's commit, or reports its failure.
///
/// # Errors
/// A backend error while reporting a failure, or a codec error building the commit.
pub(super) async fn classify<C, WI, O>(
    backend: &dyn Backend,
    config: &ExecConfig,
    taken: Taken,
    finished: Box<Finished<C, WI, O>>,
    gate: Option<&Gate>,
) -> Result<Executed<O>, FloxideError>
where
    C: Context + Merge,
    WI: WorkItem,
    O: serde::Serialize,
{
    let failure = match &finished.result {
        Err(panic) => Failure {
            error: FloxideError::NodePanicked {
                node: taken.node.clone(),
                message: crate::error::panic_message(panic.as_ref()),
            },
            retry_after: None,
            open: true,
        },
        // The run's deadline passed (its cancellation was handled while the node ran).
        Ok(Err(scope_error)) => {
            let reason = scope_error.to_string();
            return dead_letter(backend, taken, reason, gate).await;
        }
        Ok(Ok(Err(f))) => Failure {
            error: f.error.clone(),
            retry_after: f.retry_after,
            open: !f.policy_applied
                && (!f.aborted
                    || config
                        .retry_policy
                        .as_ref()
                        .is_some_and(|p| p.retry_error == crate::RetryError::All)),
        },
        Ok(Ok(Ok(()))) => {
            return match commit::build(taken, *finished) {
                Ok(pending) => Ok(Executed::Ready(Box::new(pending))),
                Err(rejected) => {
                    let (taken, reason) = *rejected;
                    dead_letter(backend, taken, reason, gate).await
                }
            };
        }
    };
    report(backend, config, taken, failure, gate).await
}

/// Reports a node's failure: a retry when its policy (or the worker's) allows one, else the
/// dead letters.
async fn report<O>(
    backend: &dyn Backend,
    config: &ExecConfig,
    taken: Taken,
    failure: Failure,
    gate: Option<&Gate>,
) -> Result<Executed<O>, FloxideError> {
    let Failure {
        error,
        mut retry_after,
        open,
    } = failure;
    if retry_after.is_none() && open {
        if let Some(policy) = &config.retry_policy {
            let attempt = taken.attempt as usize;
            if policy.should_retry(&error, attempt) {
                retry_after = Some(policy.backoff_duration(attempt));
            }
        }
    }
    tracing::debug!(%error, ?retry_after, "step failed");
    let report = StepFailed::new(taken.node.clone(), error.to_string(), retry_after);
    let outcome = fail(backend, &taken, &report, gate).await?;
    let recorded = match retry_after {
        Some(_) => StepEnd::Retried(error),
        None => StepEnd::Failed(error),
    };
    Ok(after_report(taken.node, outcome, recorded))
}

/// Dead-letters an item that cannot be executed, for `reason`.
///
/// # Errors
/// A backend error.
pub(super) async fn dead_letter<O>(
    backend: &dyn Backend,
    taken: Taken,
    reason: String,
    gate: Option<&Gate>,
) -> Result<Executed<O>, FloxideError> {
    tracing::warn!(error = %reason, "dead-lettering work item");
    let report = StepFailed::new(taken.node.clone(), reason.clone(), None);
    let outcome = fail(backend, &taken, &report, gate).await?;
    Ok(after_report(
        taken.node,
        outcome,
        StepEnd::DeadLettered(reason),
    ))
}

/// Reports `taken`'s failure; a chained step's once its item exists (after its parent's
/// commit), and not at all when that commit was refused.
async fn fail(
    backend: &dyn Backend,
    taken: &Taken,
    report: &StepFailed,
    gate: Option<&Gate>,
) -> Result<CommitOutcome, DistributedError> {
    if !Gate::lets_through(gate).await {
        return Ok(CommitOutcome::LeaseLost);
    }
    backend.fail(&taken.lease, report).await
}

/// How a step whose failure was reported ends: as `recorded` when the backend applied the
/// report, abandoned when it refused it (a lost lease or an inactive run).
fn after_report<O>(node: String, outcome: CommitOutcome, recorded: StepEnd<O>) -> Executed<O> {
    let end = match outcome {
        CommitOutcome::LeaseLost => StepEnd::Abandoned { lease_lost: true },
        CommitOutcome::RunInactive(_) => StepEnd::Abandoned { lease_lost: false },
        CommitOutcome::Committed { .. } | CommitOutcome::ContextConflict { .. } => recorded,
    };
    Executed::Ended { node, end }
}
