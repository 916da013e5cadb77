//! The in-process engine behind [`Workflow::run`].

use std::collections::VecDeque;
use std::future::Future;

use futures_util::stream::{FuturesUnordered, StreamExt};

use crate::context::guard_future;
use crate::{
    Context, FloxideError, StepEnv, StepFailure, StepSink, WorkItem, Workflow, WorkflowCtx,
};

/// Runs `wf` from `input` until no work is left, under `ctx`'s cancellation and deadline.
pub(crate) fn run_local<'a, C, W>(
    wf: &'a W,
    ctx: &'a WorkflowCtx<C>,
    input: W::Input,
) -> impl Future<Output = Result<W::Output, FloxideError>> + Send + 'a
where
    C: Context,
    W: Workflow<C>,
{
    async move {
        let deadline = ctx.timeout().map(|t| (tokio::time::Instant::now() + t, t));
        guard_future(ctx.cancel_token(), deadline, drive(wf, ctx, input)).await
    }
}

/// One step with its own sink, for concurrent branches.
async fn step_owned<C: Context, W: Workflow<C>>(
    wf: &W,
    store: &C,
    item: W::WorkItem,
) -> Result<StepSink<W::WorkItem, W::Output>, StepFailure> {
    let mut sink = StepSink::new();
    wf.process_work_item(store, item, StepEnv::in_process(), &mut sink)
        .await?;
    Ok(sink)
}

async fn drive<C: Context, W: Workflow<C>>(
    wf: &W,
    ctx: &WorkflowCtx<C>,
    input: W::Input,
) -> Result<W::Output, FloxideError> {
    let store = &ctx.store;
    let mut first_output: Option<W::Output> = None;
    let mut sink: StepSink<W::WorkItem, W::Output> = StepSink::new();

    // The start step: a Hold here can never be resumed.
    let start = wf.start_work_item(input);
    let start_node = start.node_name();
    wf.process_work_item(store, start, StepEnv::in_process(), &mut sink)
        .await
        .map_err(|f| f.error)?;
    if sink.held && sink.items.is_empty() && sink.outputs.is_empty() {
        return Err(FloxideError::StartNodeHeld {
            workflow: wf.name(),
            node: start_node,
        });
    }

    // Items ready to start, and branches running concurrently. While nothing runs
    // concurrently, a lone ready item runs inline: linear workflows never pay for the
    // concurrent machinery.
    let mut ready: VecDeque<W::WorkItem> = VecDeque::new();
    let mut in_flight = FuturesUnordered::new();
    let mut current: Option<W::WorkItem> = None;
    absorb(&mut sink, &mut first_output, &mut current, &mut ready);

    loop {
        if let Some(item) = current.take() {
            if ctx.is_cancelled() {
                return Err(FloxideError::Cancelled);
            }
            sink.reset();
            wf.process_work_item(store, item, StepEnv::in_process(), &mut sink)
                .await
                .map_err(|f| f.error)?;
            absorb(&mut sink, &mut first_output, &mut current, &mut ready);
            continue;
        }
        if in_flight.is_empty() {
            match ready.len() {
                0 => break,
                1 => {
                    current = ready.pop_front();
                    continue;
                }
                _ => {}
            }
        }
        if !ready.is_empty() && ctx.is_cancelled() {
            return Err(FloxideError::Cancelled);
        }
        for item in ready.drain(..) {
            in_flight.push(step_owned(wf, store, item));
        }
        match in_flight.next().await {
            Some(Ok(mut done)) => {
                let mut queued = None;
                absorb(&mut done, &mut first_output, &mut queued, &mut ready);
                ready.extend(queued);
            }
            Some(Err(failure)) => return Err(failure.error),
            None => {}
        }
    }

    first_output.ok_or(FloxideError::NoOutput {
        workflow: wf.name(),
    })
}

/// Moves a finished step's results out of `sink`: the first terminal output is kept; a single
/// successor goes to `current` when it is free, the others to `ready`.
fn absorb<WI, O>(
    sink: &mut StepSink<WI, O>,
    first_output: &mut Option<O>,
    current: &mut Option<WI>,
    ready: &mut VecDeque<WI>,
) {
    if first_output.is_none() && !sink.outputs.is_empty() {
        *first_output = Some(sink.outputs.swap_remove(0));
    }
    if sink.items.len() == 1 && current.is_none() && ready.is_empty() {
        *current = sink.items.pop();
    } else {
        ready.extend(sink.items.drain(..));
    }
}
