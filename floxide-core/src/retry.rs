//! Retry policies: how often and how long to wait before a failed step runs again.

use std::time::Duration;

use crate::FloxideError;

/// How the wait between attempts grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackoffStrategy {
    /// `initial_backoff × attempt`.
    Linear,
    /// `initial_backoff × 2^(attempt − 1)`.
    Exponential,
}

/// Which errors are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryError {
    /// Every error, including a node's `Transition::Abort`.
    All,
    /// Only [`FloxideError::Cancelled`].
    Cancelled,
    /// Only [`FloxideError::Timeout`].
    Timeout,
    /// Only [`FloxideError::Generic`].
    Generic,
}

/// When and how a failed node is retried.
///
/// `max_attempts` counts every execution, the first included: `max_attempts = 3` means one
/// try and at most two retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Executions in all, the first included.
    pub max_attempts: usize,
    /// The wait before the first retry.
    pub initial_backoff: Duration,
    /// No wait is longer than this (jitter excluded).
    pub max_backoff: Duration,
    /// How the wait grows.
    pub strategy: BackoffStrategy,
    /// At most this much random time is added to each wait.
    pub jitter: Option<Duration>,
    /// Which errors are retried.
    pub retry_error: RetryError,
}

impl RetryPolicy {
    /// A policy without jitter.
    pub fn new(
        max_attempts: usize,
        initial_backoff: Duration,
        max_backoff: Duration,
        strategy: BackoffStrategy,
        retry_error: RetryError,
    ) -> Self {
        RetryPolicy {
            max_attempts,
            initial_backoff,
            max_backoff,
            strategy,
            jitter: None,
            retry_error,
        }
    }

    /// Adds a random wait of up to `jitter` to every backoff.
    pub fn with_jitter(mut self, jitter: Duration) -> Self {
        self.jitter = Some(jitter);
        self
    }

    /// Whether `error`, raised by attempt number `attempt` (1 for the first execution), is
    /// retried.
    pub fn should_retry(&self, error: &FloxideError, attempt: usize) -> bool {
        if attempt >= self.max_attempts {
            return false;
        }
        match self.retry_error {
            RetryError::All => true,
            RetryError::Cancelled => matches!(error, FloxideError::Cancelled),
            RetryError::Timeout => matches!(error, FloxideError::Timeout(_)),
            RetryError::Generic => matches!(error, FloxideError::Generic(_)),
        }
    }

    /// The wait after attempt number `attempt` (1 for the first execution) failed, before the
    /// next one: grown by the strategy, capped at `max_backoff`, plus up to `jitter`.
    pub fn backoff_duration(&self, attempt: usize) -> Duration {
        let attempt = u32::try_from(attempt.max(1)).unwrap_or(u32::MAX);
        let base = match self.strategy {
            BackoffStrategy::Linear => self.initial_backoff.checked_mul(attempt),
            BackoffStrategy::Exponential => 2u32
                .checked_pow(attempt - 1)
                .and_then(|factor| self.initial_backoff.checked_mul(factor)),
        };
        let capped = base.map_or(self.max_backoff, |b| b.min(self.max_backoff));
        match self.jitter {
            Some(j) if !j.is_zero() => {
                let nanos = u64::try_from(j.as_nanos()).unwrap_or(u64::MAX);
                capped.saturating_add(Duration::from_nanos(fastrand::u64(0..=nanos)))
            }
            _ => capped,
        }
    }
}

/// Three attempts, exponential backoff from 100 ms up to 5 s, generic errors only.
impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::new(
            3,
            Duration::from_millis(100),
            Duration::from_secs(5),
            BackoffStrategy::Exponential,
            RetryError::Generic,
        )
    }
}

/// A node wrapped in a retry policy: a failing execution is retried in place, waiting the
/// policy's backoff between attempts. Build it with [`with_retry`].
///
/// The wait happens inside the step; the run's cancellation and deadline interrupt it. In a
/// distributed workflow prefer the `#[retry = policy]` field attribute of `workflow!`, whose
/// retries the worker schedules in the backend instead of waiting.
#[derive(Debug, Clone)]
pub struct RetryNode<N> {
    /// The wrapped node.
    pub inner: N,
    /// The policy applied to it.
    pub policy: RetryPolicy,
}

impl<N> RetryNode<N> {
    /// Wraps `inner` so that its failures are retried under `policy` (as [`with_retry`]).
    pub fn new(inner: N, policy: RetryPolicy) -> Self {
        RetryNode { inner, policy }
    }
}

/// Wraps `node` so that its failures are retried under `policy`.
pub fn with_retry<N>(node: N, policy: RetryPolicy) -> RetryNode<N> {
    RetryNode::new(node, policy)
}

/// Waiting between attempts (Floxide 3.x): on a [`WorkflowCtx`](crate::WorkflowCtx) the wait
/// ends early with its cancellation or deadline; on a bare context it is a plain sleep.
#[async_trait::async_trait]
pub trait RetryDelay {
    /// Waits `dur`.
    ///
    /// # Errors
    /// [`FloxideError::Cancelled`] or [`FloxideError::Timeout`] from a `WorkflowCtx`.
    async fn wait(&self, dur: Duration) -> Result<(), FloxideError>;
}

#[async_trait::async_trait]
impl<S: crate::Context> RetryDelay for crate::WorkflowCtx<S> {
    async fn wait(&self, dur: Duration) -> Result<(), FloxideError> {
        self.run_future(async {
            tokio::time::sleep(dur).await;
            Ok(())
        })
        .await
    }
}

#[async_trait::async_trait]
impl<S: crate::Context> RetryDelay for S {
    async fn wait(&self, dur: Duration) -> Result<(), FloxideError> {
        tokio::time::sleep(dur).await;
        Ok(())
    }
}

#[async_trait::async_trait]
impl<C, N> crate::Node<C> for RetryNode<N>
where
    C: crate::Context,
    N: crate::Node<C>,
    N::Input: Clone,
{
    type Input = N::Input;
    type Output = N::Output;

    async fn process(
        &self,
        ctx: &C,
        input: Self::Input,
    ) -> Result<crate::Transition<Self::Output>, FloxideError> {
        crate::private::invoke_with_retry(
            std::any::type_name::<N>(),
            &self.inner,
            &self.policy,
            ctx,
            input,
            crate::StepEnv::in_process(),
        )
        .await
        .map_err(|failure| failure.error)
    }
}
