//! What a node can learn about the distributed step executing it.

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
