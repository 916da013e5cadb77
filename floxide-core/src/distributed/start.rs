//! Starting runs: a run's record, context and first item, built from user values.

use std::time::SystemTime;

use crate::distributed::backend::{AdminBackend, NewItem, StartRun};
use crate::distributed::codec::{codec_error, encode};
use crate::distributed::RunId;
use crate::{Context, FloxideError, WorkItem, Workflow, WorkflowCtx};

/// A fresh run id: 128 random bits in the familiar 8-4-4-4-12 hex layout.
pub fn new_run_id() -> RunId {
    let bits = fastrand::u128(..);
    // Written digit by digit into its final size: one allocation per run started.
    let mut id = String::with_capacity(36);
    for i in 0..32 {
        if matches!(i, 8 | 12 | 16 | 20) {
            id.push('-');
        }
        let nibble = ((bits >> (124 - 4 * i)) & 0xf) as u32;
        id.extend(char::from_digit(nibble, 16));
    }
    id
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

#[cfg(test)]
mod tests {
    use super::new_run_id;

    #[test]
    fn run_ids_are_fresh_lowercase_hex_in_the_8_4_4_4_12_layout() {
        let id = new_run_id();
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
        assert!(
            id.chars()
                .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c)),
            "{id}"
        );
        assert_ne!(id, new_run_id());
    }
}
