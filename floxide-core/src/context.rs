//! The state a run carries ([`Context`]) and the per-run control block ([`WorkflowCtx`]).

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::FloxideError;

/// The user's state, shared by every node of a run.
///
/// Implemented for every type with the listed traits: derive
/// `Default, Debug, Clone, Serialize, Deserialize` on a struct and it is a context.
/// Distributed runs also need [`Merge`](crate::Merge) to join concurrent changes.
pub trait Context: Default + Serialize + DeserializeOwned + Debug + Clone + Send + Sync {}

impl<T: Default + Serialize + DeserializeOwned + Debug + Clone + Send + Sync> Context for T {}

/// The control block of a run: the user's context (`store`), a cancellation token and an
/// optional deadline for the whole run.
///
/// Cloning shares the cancellation token: cancelling a clone cancels the original.
#[derive(Debug, Clone)]
pub struct WorkflowCtx<S> {
    /// The user's context, passed by reference to every node.
    pub store: S,
    cancel: CancellationToken,
    timeout: Option<Duration>,
}

impl<S> WorkflowCtx<S> {
    /// A control block around `store`, not cancelled, without deadline.
    pub fn new(store: S) -> Self {
        WorkflowCtx {
            store,
            cancel: CancellationToken::new(),
            timeout: None,
        }
    }

    /// Cancels every run using this control block (and its clones): no further step starts
    /// and the run returns [`FloxideError::Cancelled`].
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Whether [`cancel`](Self::cancel) has been called.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// The cancellation token; hand a clone to code that should stop with the run.
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Completes once the run is cancelled.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// Sets a deadline for the **whole run**: a run started with this control block fails with
    /// [`FloxideError::Timeout`] once `timeout` has passed since it started, whatever step it
    /// is in.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = Some(timeout);
    }

    /// The timeout set by [`set_timeout`](Self::set_timeout).
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Runs `fut` until it completes, the control block is cancelled, or the timeout (counted
    /// from this call) passes.
    ///
    /// # Errors
    /// The future's own error, [`FloxideError::Cancelled`] or [`FloxideError::Timeout`].
    pub async fn run_future<F, T>(&self, fut: F) -> Result<T, FloxideError>
    where
        F: Future<Output = Result<T, FloxideError>>,
    {
        let deadline = self.timeout.map(|t| (tokio::time::Instant::now() + t, t));
        guard_future(&self.cancel, deadline, fut).await
    }
}

impl<S: Default> Default for WorkflowCtx<S> {
    fn default() -> Self {
        WorkflowCtx::new(S::default())
    }
}

/// The cancellation token and deadline of the in-process run being executed by the current
/// task, so that nested runs (a workflow used as a node) stop with their outer run.
#[derive(Debug, Clone)]
pub(crate) struct RunScope {
    pub(crate) cancel: CancellationToken,
    pub(crate) deadline: Option<(tokio::time::Instant, Duration)>,
}

tokio::task_local! {
    static RUN_SCOPE: RunScope;
}

impl RunScope {
    /// The scope of a run started now under `ctx`: its token, and its deadline counted from now.
    pub(crate) fn of<S>(ctx: &WorkflowCtx<S>) -> RunScope {
        RunScope {
            cancel: ctx.cancel.clone(),
            deadline: ctx.timeout.map(|t| (tokio::time::Instant::now() + t, t)),
        }
    }

    /// A scope that is never cancelled and has no deadline.
    pub(crate) fn unbounded() -> RunScope {
        RunScope {
            cancel: CancellationToken::new(),
            deadline: None,
        }
    }

    /// The scope of the run executing in this task, if any.
    pub(crate) fn current() -> Option<RunScope> {
        RUN_SCOPE.try_with(Clone::clone).ok()
    }

    /// Fails when the run is cancelled or past its deadline: checked before every step, so a
    /// node that returns at the deadline cannot let the run go on.
    pub(crate) fn check(&self) -> Result<(), FloxideError> {
        if self.cancel.is_cancelled() {
            return Err(FloxideError::Cancelled);
        }
        match self.deadline {
            Some((at, timeout)) if tokio::time::Instant::now() >= at => {
                Err(FloxideError::Timeout(timeout))
            }
            _ => Ok(()),
        }
    }

    /// Runs `fut` inside this scope.
    pub(crate) async fn enter<F: Future>(self, fut: F) -> F::Output {
        RUN_SCOPE.scope(self, fut).await
    }

    /// Runs `fut` bounded by this scope's cancellation and deadline.
    pub(crate) async fn guard<F, T>(&self, fut: F) -> Result<T, FloxideError>
    where
        F: Future<Output = Result<T, FloxideError>>,
    {
        guard_future(&self.cancel, self.deadline, fut).await
    }
}

/// Races `fut` against cancellation and an optional `(deadline, configured timeout)`.
pub(crate) async fn guard_future<F, T>(
    cancel: &CancellationToken,
    deadline: Option<(tokio::time::Instant, Duration)>,
    fut: F,
) -> Result<T, FloxideError>
where
    F: Future<Output = Result<T, FloxideError>>,
{
    if cancel.is_cancelled() {
        return Err(FloxideError::Cancelled);
    }
    match deadline {
        None => tokio::select! {
            biased;
            res = fut => res,
            _ = cancel.cancelled() => Err(FloxideError::Cancelled),
        },
        Some((at, timeout)) => tokio::select! {
            biased;
            res = fut => res,
            _ = cancel.cancelled() => Err(FloxideError::Cancelled),
            _ = tokio::time::sleep_until(at) => Err(FloxideError::Timeout(timeout)),
        },
    }
}
