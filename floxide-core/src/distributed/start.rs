//! Starting runs: a run's record, context and first item, built from user values.

use std::time::SystemTime;

use crate::distributed::backend::{AdminBackend, NewItem, StartRun};
use crate::distributed::codec::{codec_error, encode};
use crate::distributed::RunId;
use crate::{Context, FloxideError, WorkItem, Workflow, WorkflowCtx};

/// A fresh run id: 128 random bits in the familiar 8-4-4-4-12 hex layout.
pub fn new_run_id() -> RunId {
    let hex = format!("{:032x}", fastrand::u128(..));
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The backend request that starts a run of `workflow` from `input` (a fresh id unless
/// `run_id` is given; `ctx`'s timeout becomes the run's deadline).
pub(crate) fn start_request<C, W>(
    workflow: &W,
    ctx: &WorkflowCtx<C>,
    input: W::Input,
    run_id: Option<RunId>,
    idempotency_key: Option<String>,
) -> Result<StartRun, FloxideError>
where
    C: Context,
    W: Workflow<C>,
{
    let first = workflow.start_work_item(input);
    let item = NewItem::new(
        first.instance_id(),
        first.node_name(),
        encode(&first).map_err(codec_error)?,
    );
    let context = encode(&ctx.store).map_err(codec_error)?;
    Ok(StartRun::new(
        run_id.unwrap_or_else(new_run_id),
        workflow.name(),
        context,
        item,
    )
    .with_idempotency_key(idempotency_key)
    .with_deadline(ctx.timeout().map(|t| SystemTime::now() + t)))
}

/// Stores a run's record, context and first item at once.
pub(crate) async fn start_run<C, W, B>(
    workflow: &W,
    backend: &B,
    ctx: &WorkflowCtx<C>,
    input: W::Input,
    run_id: Option<RunId>,
    idempotency_key: Option<String>,
) -> Result<RunId, FloxideError>
where
    C: Context,
    W: Workflow<C>,
    B: AdminBackend + ?Sized,
{
    let start = start_request(workflow, ctx, input, run_id, idempotency_key)?;
    Ok(backend.start_run(start).await?)
}
