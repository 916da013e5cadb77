//! The in-process engine behind [`Workflow::run`].

use std::collections::VecDeque;

use futures_util::stream::{FuturesUnordered, StreamExt};

use crate::checkpoint::stable_digest;
use crate::context::{RunScope, StepGate};
use crate::{
    Checkpoint, CheckpointRecord, CheckpointStore, Context, FloxideError, StepEnv, StepFailure,
    StepSink, WorkItem, Workflow, WorkflowCtx,
};

/// Runs `wf` from `input` until no work is left, under `ctx`'s cancellation and deadline.
pub(crate) async fn run_local<C, W>(
    wf: &W,
    ctx: &WorkflowCtx<C>,
    input: W::Input,
) -> Result<W::Output, FloxideError>
where
    C: Context,
    W: Workflow<C>,
{
    let scope = RunScope::of(ctx);
    if scope.cancel.is_cancelled() {
        return Err(FloxideError::Cancelled);
    }
    let gate = StepGate {
        cancel: &ctx.cancel,
        deadline: scope.deadline,
    };
    scope
        .guarded(&ctx.cancel, drive(wf, ctx, input, gate))
        .await
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
    scope: StepGate<'_>,
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
    if sink.held && sink.item_count() == 0 && sink.outputs.is_empty() {
        return Err(FloxideError::StartNodeHeld {
            workflow: wf.name(),
            node: start_node,
        });
    }

    // Items ready to start, and branches running concurrently. While nothing runs
    // concurrently, a lone ready item runs inline: linear workflows never pay for the
    // concurrent machinery.
    let mut ready: VecDeque<W::WorkItem> = VecDeque::new();
    // Created on the first fan-out: it allocates, and linear runs never need it.
    let mut in_flight: Option<FuturesUnordered<_>> = None;
    let mut current: Option<W::WorkItem> = None;
    absorb(&mut sink, &mut first_output, &mut current, &mut ready);

    loop {
        if let Some(item) = current.take() {
            scope.check()?;
            sink.reset();
            wf.process_work_item(store, item, StepEnv::in_process(), &mut sink)
                .await
                .map_err(|f| f.error)?;
            absorb(&mut sink, &mut first_output, &mut current, &mut ready);
            continue;
        }
        if in_flight.as_ref().is_none_or(FuturesUnordered::is_empty) {
            match ready.len() {
                0 => break,
                1 => {
                    current = ready.pop_front();
                    continue;
                }
                _ => {}
            }
        }
        if !ready.is_empty() {
            scope.check()?;
        }
        let running = in_flight.get_or_insert_with(FuturesUnordered::new);
        for item in ready.drain(..) {
            running.push(step_owned(wf, store, item));
        }
        match running.next().await {
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
    sink.drain_items_into(current, ready);
}

/// The engine behind `run_with_checkpoint` and `resume`: one step at a time, saving the
/// context, the pending items and the run record after each.
pub(crate) async fn run_checkpointed<C, W, S>(
    wf: &W,
    scope: RunScope,
    fresh: Option<(&C, W::Input)>,
    store: &S,
    id: &str,
) -> Result<W::Output, FloxideError>
where
    C: Context + 'static,
    W: Workflow<C>,
    S: CheckpointStore<C, W::WorkItem>,
{
    if scope.cancel.is_cancelled() {
        return Err(FloxideError::Cancelled);
    }
    let check = scope.clone();
    scope
        .guarded(
            &check.cancel,
            drive_checkpointed(wf, check.gate(), fresh, store, id),
        )
        .await
}

async fn drive_checkpointed<C, W, S>(
    wf: &W,
    scope: StepGate<'_>,
    fresh: Option<(&C, W::Input)>,
    store: &S,
    id: &str,
) -> Result<W::Output, FloxideError>
where
    C: Context + 'static,
    W: Workflow<C>,
    S: CheckpointStore<C, W::WorkItem>,
{
    let is_fresh = fresh.is_some();
    let (mut cp, mut record, mut first_step) = match load_or_begin(wf, fresh, store, id).await? {
        Loaded::Drive(cp, record, first_step) => (cp, record, first_step),
        Loaded::Completed(Some(output)) if is_fresh => return decode_output(output),
        Loaded::Completed(_) => return Err(FloxideError::AlreadyCompleted),
    };

    let mut first_output: Option<W::Output> = None;
    let mut sink = StepSink::new();
    while let Some(item) = cp.queue.pop_front() {
        scope.check()?;
        let node = item.node_name();
        sink.reset();
        wf.process_work_item(&cp.context, item, StepEnv::in_process(), &mut sink)
            .await
            .map_err(|f| f.error)?;
        if first_step && sink.held && sink.item_count() == 0 && sink.outputs.is_empty() {
            return Err(FloxideError::StartNodeHeld {
                workflow: wf.name(),
                node,
            });
        }
        first_step = false;
        let (items, outputs, _) = sink.take();
        cp.queue.extend(items);
        if record.output.is_none() {
            if let Some(output) = outputs.into_iter().next() {
                record.output = Some(
                    serde_json::to_value(&output)
                        .map_err(|e| FloxideError::SerializationError(e.to_string()))?,
                );
                first_output = Some(output);
            }
        }
        record.completed = cp.queue.is_empty();
        store.save_with_record(id, &cp, &record).await?;
    }

    match (first_output, record.output) {
        (Some(output), _) => Ok(output),
        (None, Some(saved)) => decode_output(saved),
        (None, None) => Err(FloxideError::NoOutput {
            workflow: wf.name(),
        }),
    }
}

/// Where a checkpointed run stands when it is driven.
enum Loaded<C, I> {
    /// Work is left: the checkpoint, its record, and whether the next step is the run's first.
    Drive(Checkpoint<C, I>, CheckpointRecord, bool),
    /// The run completed before, with this output (if any).
    Completed(Option<serde_json::Value>),
}

/// Loads checkpoint `id` (refusing a different input than the one that started it), or saves
/// a new one for `fresh` when there is none.
async fn load_or_begin<C, W, S>(
    wf: &W,
    fresh: Option<(&C, W::Input)>,
    store: &S,
    id: &str,
) -> Result<Loaded<C, W::WorkItem>, FloxideError>
where
    C: Context + 'static,
    W: Workflow<C>,
    S: CheckpointStore<C, W::WorkItem>,
{
    let digest = match &fresh {
        Some((_, input)) => Some(input_digest(input)?),
        None => None,
    };
    let new_record = |digest: Option<u64>| CheckpointRecord {
        workflow: wf.name().to_owned(),
        input_digest: digest.unwrap_or_default(),
        output: None,
        completed: false,
    };
    match (store.load_with_record(id).await?, fresh) {
        (Some((cp, record)), _) => {
            if let (Some(rec), Some(digest)) = (&record, digest) {
                if rec.input_digest != digest {
                    return Err(FloxideError::CheckpointInputMismatch { id: id.to_owned() });
                }
            }
            let completed = record.as_ref().map_or(cp.queue.is_empty(), |r| r.completed);
            if completed {
                return Ok(Loaded::Completed(record.and_then(|r| r.output)));
            }
            let record = record.unwrap_or_else(|| new_record(digest));
            Ok(Loaded::Drive(cp, record, false))
        }
        (None, Some((context, input))) => {
            let record = new_record(digest);
            let cp = Checkpoint::new(context.clone(), VecDeque::from([wf.start_work_item(input)]));
            store.save_with_record(id, &cp, &record).await?;
            Ok(Loaded::Drive(cp, record, true))
        }
        (None, None) => Err(FloxideError::NotStarted),
    }
}

fn input_digest<I: serde::Serialize>(input: &I) -> Result<u64, FloxideError> {
    let bytes =
        serde_json::to_vec(input).map_err(|e| FloxideError::SerializationError(e.to_string()))?;
    Ok(stable_digest(&bytes))
}

fn decode_output<O: serde::de::DeserializeOwned>(
    value: serde_json::Value,
) -> Result<O, FloxideError> {
    serde_json::from_value(value).map_err(|e| FloxideError::DeserializationError(e.to_string()))
}
