//! Step part 1: check the item's node, decode the item and the run's context.

use crate::distributed::backend::{Backend, DistributedError, Taken, VersionedContext};
use crate::distributed::codec::decode;
use crate::{Context, FloxideError, Workflow};

/// What a node needs to run: its item, the run's context, and the stored context it came from.
pub(super) struct Prepared<C, WI> {
    pub(super) item: WI,
    pub(super) ctx: C,
    pub(super) loaded: VersionedContext,
}

/// The item and context of `taken` (using `context` when it came with the item), or why the
/// item cannot be executed (it goes to the dead letters).
///
/// # Errors
/// A backend error while loading the context.
pub(super) async fn prepare<C, W>(
    workflow: &W,
    backend: &dyn Backend,
    taken: &Taken,
    context: Option<VersionedContext>,
) -> Result<Result<Prepared<C, W::WorkItem>, String>, FloxideError>
where
    C: Context,
    W: Workflow<C>,
{
    let nodes = workflow.node_names();
    if !nodes.is_empty() && !taken.node.is_empty() && !nodes.contains(&taken.node.as_str()) {
        let error = DistributedError::UnknownNode {
            workflow: workflow.name().to_owned(),
            node: taken.node.clone(),
            known: nodes.join(", "),
        };
        return Ok(Err(error.to_string()));
    }
    let item = match decode(&taken.bytes) {
        Ok(item) => item,
        Err(e) => return Ok(Err(format!("undecodable work item: {e}"))),
    };
    let loaded = match context {
        Some(ctx) => ctx,
        None => backend.load_context(&taken.lease.run_id).await?,
    };
    match decode(&loaded.bytes) {
        Ok(ctx) => Ok(Ok(Prepared { item, ctx, loaded })),
        Err(e) => Ok(Err(format!(
            "undecodable context of run `{}`: {e}",
            taken.lease.run_id
        ))),
    }
}
