//! The state a run carries ([`Context`]) and the per-run control block ([`WorkflowCtx`]).

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::FloxideError;

/// [`SharedState`] also lives here, its Floxide 3.x path (`floxide::context::SharedState`).
pub use crate::merge::SharedState;

/// The user's state, shared by every node of a run.
///
/// Implemented for every type with the listed traits: derive
/// `Default, Debug, Clone, Serialize, Deserialize` on a struct and it is a context.
/// Distributed runs also need [`Merge`](crate::Merge) to join concurrent changes.
pub trait Context:
    Default + Serialize + DeserializeOwned + Debug + Clone + Send + Sync + 'static
{
}

impl<T: Default + Serialize + DeserializeOwned + Debug + Clone + Send + Sync + 'static> Context
    for T
{
}

/// The control block of a run: the user's context (`store`), a cancellation token and an
/// optional deadline for the whole run.
///
/// Cloning shares the cancellation token: cancelling a clone cancels the original.
#[derive(Debug, Clone)]
pub struct WorkflowCtx<S> {
    /// The user's context, passed by reference to every node.
    pub store: S,
    pub(crate) cancel: Arc<CancelState>,
    timeout: Option<Duration>,
}

/// A cancellation token plus a flag that steps can read without taking the token's lock.
#[derive(Debug, Default)]
pub(crate) struct CancelState {
    flag: AtomicBool,
    pub(crate) token: CancellationToken,
}

impl CancelState {
    /// A state around `token`.
    pub(crate) fn new(token: CancellationToken) -> Self {
        CancelState {
            flag: AtomicBool::new(false),
            token,
        }
    }

    /// Cancels: sets the flag and fires the token.
    pub(crate) fn cancel(&self) {
        self.flag.store(true, Ordering::Release);
        self.token.cancel();
    }

    /// Whether cancelled, through [`cancel`](Self::cancel) or the token itself.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::Acquire) || self.token.is_cancelled()
    }

    /// The flag alone: set by [`cancel`](Self::cancel); a cancel made directly on the token
    /// is seen by [`is_cancelled`](Self::is_cancelled) and by the next wait.
    fn flagged(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }
}

impl<S> WorkflowCtx<S> {
    /// A control block around `store`, not cancelled, without deadline.
    pub fn new(store: S) -> Self {
        WorkflowCtx {
            store,
            cancel: Arc::default(),
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
        &self.cancel.token
    }

    /// Calls `f` with the context (Floxide 3.x; the same as `f(&ctx.store)`).
    pub fn with_store<F, R>(&self, f: F) -> R
    where
        F: FnOnce(&S) -> R,
    {
        f(&self.store)
    }

    /// Completes once the run is cancelled.
    pub async fn cancelled(&self) {
        self.cancel.token.cancelled().await;
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
    pub async fn run_future<T, F>(&self, fut: F) -> Result<T, FloxideError>
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
    pub(crate) cancel: Arc<CancelState>,
    pub(crate) deadline: Option<(tokio::time::Instant, Duration)>,
}

tokio::task_local! {
    static RUN_SCOPE: RunScope;
}

impl RunScope {
    /// The scope of a run started now under `ctx`: its token, and its deadline counted from now.
    pub(crate) fn of<S>(ctx: &WorkflowCtx<S>) -> RunScope {
        RunScope {
            cancel: Arc::clone(&ctx.cancel),
            deadline: ctx.timeout.map(|t| (tokio::time::Instant::now() + t, t)),
        }
    }

    /// A scope that is never cancelled and has no deadline.
    pub(crate) fn unbounded() -> RunScope {
        RunScope {
            cancel: Arc::default(),
            deadline: None,
        }
    }

    /// The scope of the run executing in this task, if any.
    pub(crate) fn current() -> Option<RunScope> {
        RUN_SCOPE.try_with(Clone::clone).ok()
    }

    /// The per-step check of this scope.
    pub(crate) fn gate(&self) -> StepGate<'_> {
        StepGate {
            cancel: &self.cancel,
            deadline: self.deadline,
        }
    }

    /// `fut` inside this scope and bounded by its cancellation and deadline, as one future
    /// (nesting `guard` and `enter` would store the run's state several times over).
    /// `cancel` is this scope's state, borrowed from its owner for as long as the run lasts.
    pub(crate) fn guarded<F, T>(self, cancel: &CancelState, fut: F) -> Guarded<'_, F>
    where
        F: Future<Output = Result<T, FloxideError>>,
    {
        let deadline = self.deadline;
        Guarded {
            inner: RUN_SCOPE.scope(self, fut),
            cancel,
            deadline,
            cancelled: None,
            sleep: None,
        }
    }

    /// Runs `fut` bounded by this scope's cancellation and deadline.
    pub(crate) async fn guard<F, T>(&self, fut: F) -> Result<T, FloxideError>
    where
        F: Future<Output = Result<T, FloxideError>>,
    {
        guard_future(&self.cancel, self.deadline, fut).await
    }
}

/// What every step of a run checks before it starts (borrowed, so checking costs no
/// reference counting).
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepGate<'a> {
    pub(crate) cancel: &'a CancelState,
    pub(crate) deadline: Option<(tokio::time::Instant, Duration)>,
}

impl StepGate<'_> {
    /// Fails when the run is cancelled or past its deadline: checked before every step, so a
    /// node that returns at the deadline cannot let the run go on.
    pub(crate) fn check(&self) -> Result<(), FloxideError> {
        if self.cancel.flagged() {
            return Err(FloxideError::Cancelled);
        }
        match self.deadline {
            Some((at, timeout)) if tokio::time::Instant::now() >= at => {
                Err(FloxideError::Timeout(timeout))
            }
            _ => Ok(()),
        }
    }
}

pin_project_lite::pin_project! {
    /// A run future inside its [`RunScope`], failing with `Cancelled` or `Timeout`. The
    /// cancellation and deadline waits are armed only once the run is pending, so a run that
    /// completes without waiting never registers them.
    pub(crate) struct Guarded<'a, F: Future> {
        #[pin]
        inner: tokio::task::futures::TaskLocalFuture<RunScope, F>,
        cancel: &'a CancelState,
        deadline: Option<(tokio::time::Instant, Duration)>,
        #[pin]
        cancelled: Option<tokio_util::sync::WaitForCancellationFutureOwned>,
        #[pin]
        sleep: Option<tokio::time::Sleep>,
    }
}

impl<F, T> Future for Guarded<'_, F>
where
    F: Future<Output = Result<T, FloxideError>>,
{
    type Output = Result<T, FloxideError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(out);
        }
        if this.cancelled.is_none() {
            let token = this.cancel.token.clone();
            this.cancelled.set(Some(token.cancelled_owned()));
        }
        if let Some(cancelled) = this.cancelled.as_mut().as_pin_mut() {
            if cancelled.poll(cx).is_ready() {
                return Poll::Ready(Err(FloxideError::Cancelled));
            }
        }
        if let Some((at, timeout)) = *this.deadline {
            if this.sleep.is_none() {
                this.sleep.set(Some(tokio::time::sleep_until(at)));
            }
            if let Some(sleep) = this.sleep.as_mut().as_pin_mut() {
                if sleep.poll(cx).is_ready() {
                    return Poll::Ready(Err(FloxideError::Timeout(timeout)));
                }
            }
        }
        Poll::Pending
    }
}

/// Races `fut` against cancellation and an optional `(deadline, configured timeout)`.
pub(crate) async fn guard_future<F, T>(
    cancel: &CancelState,
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
            _ = cancel.token.cancelled() => Err(FloxideError::Cancelled),
        },
        Some((at, timeout)) => tokio::select! {
            biased;
            res = fut => res,
            _ = cancel.token.cancelled() => Err(FloxideError::Cancelled),
            _ = tokio::time::sleep_until(at) => Err(FloxideError::Timeout(timeout)),
        },
    }
}
