//! [`CompositeNode`]: a whole workflow used as one node.

use crate::context::RunScope;
use crate::{Context, FloxideError, Node, Transition, Workflow, WorkflowCtx};

/// A workflow used as a node of another workflow: each execution runs the inner workflow to
/// completion and returns its output as `Next(output)`.
///
/// The inner workflow runs with the control block given to [`new`](Self::new) (a clone of
/// it: the cancellation token is shared, the context is copied once, at construction),
/// not with the outer run's context, so the two workflows may use different context types.
/// Context changes made by the inner run are visible outside only through shared state
/// (such as [`SharedState`](crate::SharedState) or [`EventLog`](crate::EventLog)).
///
/// The inner run stops with either run:
/// - cancelling the stored control block, or reaching its own timeout, stops the inner run
///   as for any run;
/// - when executed inside an in-process run (an outer [`Workflow::run`]), the inner run also
///   stops when that outer run is cancelled ([`FloxideError::Cancelled`]) or reaches its
///   deadline ([`FloxideError::Timeout`] with the outer timeout). The outer run is the one
///   executing the node at call time; nothing about it is stored.
///
/// In a workflow (the complete program is `examples/nested_workflow.rs`):
///
/// ```text
/// workflow! {
///     pub struct Outer { prepare: Prepare, inner: CompositeNode<(), Inner>, report: Report }
///     start = prepare;
///     edges { prepare => [inner]; inner => [report]; report => []; }
/// }
///
/// let ctx = WorkflowCtx::new(());
/// let outer = Outer {
///     prepare: Prepare {},
///     inner: CompositeNode::new(inner_wf, &ctx),
///     report: Report {},
/// };
/// outer.run(&ctx, input).await?;
/// ```
#[derive(Debug, Clone)]
pub struct CompositeNode<C, W> {
    workflow: W,
    ctx: WorkflowCtx<C>,
}

impl<C: Clone, W> CompositeNode<C, W> {
    /// A node that runs `workflow` with a clone of `ctx`.
    pub fn new(workflow: W, ctx: &WorkflowCtx<C>) -> Self {
        CompositeNode {
            workflow,
            ctx: ctx.clone(),
        }
    }
}

impl<C, W> CompositeNode<C, W> {
    /// The inner workflow.
    pub fn workflow(&self) -> &W {
        &self.workflow
    }

    /// The control block the inner workflow runs with.
    pub fn ctx(&self) -> &WorkflowCtx<C> {
        &self.ctx
    }
}

#[async_trait::async_trait]
impl<Outer, C, W> Node<Outer> for CompositeNode<C, W>
where
    Outer: Context,
    C: Context,
    W: Workflow<C>,
{
    type Input = W::Input;
    type Output = W::Output;

    /// # Errors
    /// The inner run's error (see [`Workflow::run`]), or [`FloxideError::Cancelled`] /
    /// [`FloxideError::Timeout`] when the outer run is cancelled or reaches its deadline.
    async fn process(
        &self,
        _ctx: &Outer,
        input: W::Input,
    ) -> Result<Transition<W::Output>, FloxideError> {
        let inner = self.workflow.run(&self.ctx, input);
        let output = match RunScope::current() {
            Some(outer) => outer.guard(inner).await?,
            None => inner.await?,
        };
        Ok(Transition::Next(output))
    }
}
