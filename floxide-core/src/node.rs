//! The unit of work: a node turns one input into a [`Transition`].

use crate::{Context, FloxideError, Transition};

/// One step of a workflow.
///
/// Implement it with `#[async_trait]` (re-exported as `floxide::async_trait`), or generate it
/// with the `node!` macro:
///
/// ```
/// use floxide_core::*;
///
/// #[derive(Debug, Clone)]
/// struct Double;
///
/// #[async_trait]
/// impl Node for Double {
///     type Input = u64;
///     type Output = u64;
///     async fn process(&self, _ctx: &(), n: u64) -> Result<Transition<u64>, FloxideError> {
///         Ok(Transition::Next(n * 2))
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait Node<C: Context = ()>: Send + Sync {
    /// What the node receives.
    type Input: Send + Sync;
    /// What the node produces.
    type Output: Send + Sync;

    /// Runs the node once.
    ///
    /// # Errors
    /// Any error fails the step; the workflow routes it to the node's `on_failure` edge, retries
    /// it under a retry policy, or fails the run.
    async fn process(
        &self,
        ctx: &C,
        input: Self::Input,
    ) -> Result<Transition<Self::Output>, FloxideError>;
}
