//! What a node can learn about the distributed step executing it.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio_util::sync::CancellationToken;

use crate::distributed::{RunId, WorkerId};
use crate::ItemId;

/// The step a node is executing in, when run by a distributed worker.
///
/// Delivery is at-least-once: a node's side effects outside Floxide may happen more than once
/// (after a worker crash, a lost lease or a retry). Use [`idempotency_key`] to make them
/// idempotent; it is the same for every execution of one work item.
///
/// [`idempotency_key`]: StepContext::idempotency_key
#[derive(Debug, Clone)]
pub struct StepContext {
    /// The run.
    pub run_id: RunId,
    /// The work item.
    pub item_id: ItemId,
    /// The node.
    pub node: String,
    /// The attempt (1 for the first; retries count up).
    pub attempt: u32,
    /// Deliveries of this attempt (more than 1 after a crash or a lost lease).
    pub delivery: u32,
    /// The executing worker.
    pub worker: WorkerId,
    /// Fires when the run is cancelled (or the step is abandoned): stop early.
    pub cancel: CancellationToken,
}

impl StepContext {
    /// `"{run_id}:{item_id}"`: stable across re-executions of the same work item.
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}", self.run_id, self.item_id)
    }
}

tokio::task_local! {
    static CURRENT_STEP: StepContext;
}

/// The distributed step executing in this task, if any (`None` in in-process runs).
pub fn current_step() -> Option<StepContext> {
    CURRENT_STEP.try_with(Clone::clone).ok()
}

pub(crate) async fn with_step<F: std::future::Future>(step: StepContext, fut: F) -> F::Output {
    CURRENT_STEP.scope(step, fut).await
}

tokio::task_local! {
    /// Why the step executing in this task is poison (see [`with_poison`]).
    static POISON: String;
}

/// Poison steps executing in this process: while there are none, [`poison`] reads no
/// task-local (every node invocation asks).
static POISON_STEPS: AtomicUsize = AtomicUsize::new(0);

/// Runs `fut`, the step of an item delivered too many times without a commit: its node does
/// not run again; the step fails with the error made from `reason` (routed by the workflow's
/// `on_failure` edges where it has them, else dead-lettered, the run failing).
pub(crate) async fn with_poison<F: std::future::Future>(reason: String, fut: F) -> F::Output {
    /// Counts the step out however it ends (or is dropped).
    struct Counted;
    impl Drop for Counted {
        fn drop(&mut self) {
            POISON_STEPS.fetch_sub(1, Ordering::Relaxed);
        }
    }
    POISON_STEPS.fetch_add(1, Ordering::Relaxed);
    let _counted = Counted;
    POISON.scope(reason, fut).await
}

/// Why the step executing in this task is poison, if it is (see [`with_poison`]).
pub(crate) fn poison() -> Option<String> {
    if POISON_STEPS.load(Ordering::Relaxed) == 0 {
        return None;
    }
    POISON.try_with(Clone::clone).ok()
}
