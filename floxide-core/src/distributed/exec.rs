//! Starting runs and executing one step: take → load context → run node → commit.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, SystemTime};

use futures_util::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::context::{CancelState, RunScope};
use crate::distributed::backend::{
    Backend, CommitOutcome, DistributedError, LeaseState, NewItem, NextTake, StartRun, StepCommit,
    StepFailed, Taken,
};
use crate::distributed::metrics;
use crate::distributed::step::{with_step, StepContext};
use crate::distributed::{RunId, RunStatus, WorkerId, WorkflowError};
use crate::{
    Context, FloxideError, Merge, RetryPolicy, StepEnv, StepSink, WorkItem, Workflow, WorkflowCtx,
};

/// Serializes a value for the backend.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    serde_json::to_vec(value).map_err(|e| e.to_string())
}

/// Deserializes stored bytes.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

pub(crate) fn codec_error(message: String) -> FloxideError {
    FloxideError::Distributed(DistributedError::Codec(message))
}

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

/// Stores a run's record, context and first item at once.
pub(crate) async fn start_run<C, W>(
    workflow: &W,
    backend: &dyn Backend,
    ctx: &WorkflowCtx<C>,
    input: W::Input,
    run_id: Option<RunId>,
    idempotency_key: Option<String>,
) -> Result<RunId, FloxideError>
where
    C: Context,
    W: Workflow<C>,
{
    let first = workflow.start_work_item(input);
    let start = StartRun {
        run_id: run_id.unwrap_or_else(new_run_id),
        workflow: workflow.name().to_owned(),
        context: encode(&ctx.store).map_err(codec_error)?,
        first: NewItem {
            id: first.instance_id(),
            node: first.node_name().to_owned(),
            bytes: encode(&first).map_err(codec_error)?,
        },
        idempotency_key,
        deadline: ctx.timeout().map(|t| SystemTime::now() + t),
    };
    Ok(backend.start_run(start).await?)
}

/// One non-blocking take and step with default worker settings.
pub(crate) async fn step_once<C, W>(
    workflow: &W,
    backend: &dyn Backend,
    worker: &WorkerId,
) -> Result<Option<(RunId, W::Output)>, FloxideError>
where
    C: Context + Merge,
    W: Workflow<C>,
{
    let config = crate::distributed::worker::WorkerConfig::default();
    let Some(taken) = backend
        .take(
            workflow.name(),
            worker,
            config.take_options(),
            Duration::ZERO,
        )
        .await?
    else {
        return Ok(None);
    };
    let (out, _) = step_taken(workflow, backend, &config.exec(), worker, taken, None, None).await?;
    Ok(out)
}

/// What a committed step returns: its run and first output, if any.
pub(crate) type StepOutput<O> = Option<(RunId, O)>;

/// Executes a taken item: `Some((run, output))` when it committed a terminal output, and the
/// next item when `next` asked the commit to take one.
pub(crate) async fn step_taken<C, W>(
    workflow: &W,
    backend: &dyn Backend,
    config: &ExecConfig,
    worker: &WorkerId,
    taken: Taken,
    stop: Option<(&CancellationToken, Duration)>,
    next: Option<NextTake<'_>>,
) -> Result<(StepOutput<W::Output>, Option<Taken>), FloxideError>
where
    C: Context + Merge,
    W: Workflow<C>,
{
    let run_id = taken.lease.run_id.clone();
    match execute(workflow, backend, config, worker, taken, stop, next).await? {
        StepEnd::Committed { outputs, next, .. } => Ok((
            outputs.into_iter().next().map(|o| (run_id, o)),
            next.map(|t| *t),
        )),
        StepEnd::Retried(_)
        | StepEnd::Failed(_)
        | StepEnd::DeadLettered(_)
        | StepEnd::Abandoned { .. }
        | StepEnd::Released => Ok((None, None)),
    }
}

/// How the worker executes steps.
#[derive(Debug, Clone)]
pub(crate) struct ExecConfig {
    pub(crate) lease_timeout: Duration,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) retry_policy: Option<RetryPolicy>,
}

/// How a step ended.
#[derive(Debug)]
pub(crate) enum StepEnd<O> {
    /// Committed.
    Committed {
        /// The outputs the step produced.
        outputs: Vec<O>,
        /// The worker's next item, when the commit also took one.
        next: Option<Box<Taken>>,
        /// How long the node ran (its last execution, for a held step run again).
        ran: Duration,
    },
    /// The node failed (with this error) and its retry is scheduled.
    Retried(FloxideError),
    /// The node failed (with this error) with no retry left: the item was dead-lettered and the
    /// run failed.
    Failed(FloxideError),
    /// The item was dead-lettered (for this reason) without a failure of its node: the item or
    /// the run's context could not be decoded, the run's deadline passed, or the context could
    /// not be serialized after the step.
    DeadLettered(String),
    /// Given up, nothing applied: the lease was lost (`lease_lost`) or the run is no longer
    /// active.
    Abandoned {
        /// Whether the lease was lost (rather than the run cancelled or finished).
        lease_lost: bool,
    },
    /// Stopped by the worker's shutdown before finishing; the lease was released.
    Released,
}

impl<O> StepEnd<O> {
    /// How a step whose failure was reported ends: as `recorded` when the backend applied the
    /// report, abandoned when it refused it (`outcome` is a lost lease or an inactive run).
    fn after_failure(outcome: CommitOutcome, recorded: Self) -> Self {
        match outcome {
            CommitOutcome::LeaseLost => StepEnd::Abandoned { lease_lost: true },
            CommitOutcome::RunInactive(_) => StepEnd::Abandoned { lease_lost: false },
            CommitOutcome::Committed { .. } | CommitOutcome::ContextConflict { .. } => recorded,
        }
    }
}

/// What a check of the lease while the node runs found.
enum LeaseCheck {
    /// Held; the run has this status.
    Held(RunStatus),
    /// The backend did not answer, but the lease is still valid by our clock: go on.
    Unknown,
    /// Lost (taken over, or expired while the backend could not be reached).
    Lost,
}

/// Renews a step's lease while its node runs: a heartbeat every `heartbeat_interval`, and,
/// when the backend does not answer, retries with backoff for as long as the lease is valid
/// (by this process's clock, from its last renewal), so that a short outage of the backend
/// does not cost the step.
struct LeaseKeeper {
    interval: Duration,
    timeout: Duration,
    next_beat: tokio::time::Instant,
    valid_until: tokio::time::Instant,
    backoff: Duration,
}

impl LeaseKeeper {
    /// A keeper for a lease granted (or last renewed) at `granted`.
    fn new(config: &ExecConfig, granted: tokio::time::Instant) -> Self {
        LeaseKeeper {
            interval: config.heartbeat_interval,
            timeout: config.lease_timeout,
            next_beat: granted + config.heartbeat_interval,
            valid_until: granted + config.lease_timeout,
            backoff: Self::FIRST_RETRY,
        }
    }

    const FIRST_RETRY: Duration = Duration::from_millis(100);

    /// When the next heartbeat is due.
    fn next_beat(&self) -> tokio::time::Instant {
        self.next_beat
    }

    /// Renews the lease when a heartbeat is due, else reads the run's status (after a run
    /// event).
    async fn check(
        &mut self,
        backend: &dyn Backend,
        lease: &crate::distributed::Lease,
    ) -> LeaseCheck {
        let now = tokio::time::Instant::now();
        if now < self.next_beat {
            return match backend.run_info(&lease.run_id).await {
                Ok(info) => LeaseCheck::Held(info.status),
                Err(_) => LeaseCheck::Unknown,
            };
        }
        match backend.heartbeat(lease, self.timeout).await {
            Ok(LeaseState::Active(status)) => {
                self.valid_until = now + self.timeout;
                self.next_beat = now + self.interval;
                self.backoff = Self::FIRST_RETRY;
                LeaseCheck::Held(status)
            }
            Ok(LeaseState::Lost) => LeaseCheck::Lost,
            Err(error) if now + self.backoff < self.valid_until => {
                tracing::warn!(%error, retry_in = ?self.backoff, "heartbeat failed; the lease is still valid, retrying");
                self.next_beat = now + self.backoff;
                self.backoff = (self.backoff * 2).min(self.interval);
                LeaseCheck::Unknown
            }
            Err(error) => {
                tracing::warn!(%error, "heartbeat failed until the lease expired");
                LeaseCheck::Lost
            }
        }
    }
}

/// Executes the leased item `taken` and commits its effects.
pub(crate) async fn execute<C, W>(
    workflow: &W,
    backend: &dyn Backend,
    config: &ExecConfig,
    worker: &WorkerId,
    mut taken: Taken,
    stop: Option<(&CancellationToken, Duration)>,
    next: Option<NextTake<'_>>,
) -> Result<StepEnd<W::Output>, FloxideError>
where
    C: Context + Merge,
    W: Workflow<C>,
{
    let lease = &taken.lease;
    let span = tracing::debug_span!(
        "floxide.step",
        run_id = %lease.run_id,
        node = %taken.node,
        item_id = %lease.item_id,
        attempt = taken.attempt,
        worker = %worker,
    );
    let token = CancellationToken::new();
    let step = StepContext {
        run_id: lease.run_id.clone(),
        item_id: lease.item_id,
        node: taken.node.clone(),
        attempt: taken.attempt,
        delivery: taken.deliveries,
        worker: worker.clone(),
        cancel: token.clone(),
    };
    let inner = execute_inner(workflow, backend, config, &mut taken, stop, token, next);
    let end = with_step(step, tracing::Instrument::instrument(inner, span)).await?;
    metrics::step_ended(workflow.name(), &taken.node, &end);
    Ok(end)
}

/// Dead-letters an item that its worker cannot execute.
async fn dead_letter<O>(
    backend: &dyn Backend,
    taken: &Taken,
    error: String,
) -> Result<StepEnd<O>, FloxideError> {
    tracing::warn!(%error, "dead-lettering work item");
    let outcome = backend
        .fail(
            &taken.lease,
            StepFailed {
                node: taken.node.clone(),
                error: error.clone(),
                retry_after: None,
            },
        )
        .await?;
    Ok(StepEnd::after_failure(
        outcome,
        StepEnd::DeadLettered(error),
    ))
}

async fn execute_inner<C, W>(
    workflow: &W,
    backend: &dyn Backend,
    config: &ExecConfig,
    taken: &mut Taken,
    stop: Option<(&CancellationToken, Duration)>,
    token: CancellationToken,
    next: Option<NextTake<'_>>,
) -> Result<StepEnd<W::Output>, FloxideError>
where
    C: Context + Merge,
    W: Workflow<C>,
{
    // The context fetched with the item moves into the first execution (no copy of its
    // bytes); a re-execution (a held step that saw a newer context) loads the latest one.
    let mut prefetched = taken.context.take();
    let taken: &Taken = taken;
    let lease = &taken.lease;
    let started = tokio::time::Instant::now();
    let nodes = workflow.node_names();
    if !nodes.is_empty() && !taken.node.is_empty() && !nodes.contains(&taken.node.as_str()) {
        let error = DistributedError::UnknownNode {
            workflow: workflow.name().to_owned(),
            node: taken.node.clone(),
            known: nodes.join(", "),
        };
        return dead_letter(backend, taken, error.to_string()).await;
    }
    loop {
        let item: W::WorkItem = match decode(&taken.bytes) {
            Ok(item) => item,
            Err(e) => {
                return dead_letter(backend, taken, format!("undecodable work item: {e}")).await;
            }
        };
        let loaded = match prefetched.take() {
            Some(ctx) => ctx,
            None => backend.load_context(&lease.run_id).await?,
        };
        let ctx: C = match decode(&loaded.bytes) {
            Ok(ctx) => ctx,
            Err(e) => {
                let error = format!("undecodable context of run `{}`: {e}", lease.run_id);
                return dead_letter(backend, taken, error).await;
            }
        };

        // The run's wall-clock deadline, as an instant of this process.
        let deadline = taken.deadline.map(|at| {
            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
            (tokio::time::Instant::now() + left, left)
        });
        let cancel = std::sync::Arc::new(CancelState::new(token.clone()));
        let scope = RunScope {
            cancel: std::sync::Arc::clone(&cancel),
            deadline,
        };
        let mut sink = StepSink::new();
        let env = StepEnv::scheduled(taken.attempt);
        let node_started = tokio::time::Instant::now();
        let result = {
            let node_run = scope.guarded(&cancel, async {
                Ok(workflow.process_work_item(&ctx, item, env, &mut sink).await)
            });
            let node_run = AssertUnwindSafe(node_run).catch_unwind();
            tokio::pin!(node_run);
            let mut keeper = LeaseKeeper::new(config, started);
            let mut stop_at: Option<tokio::time::Instant> = None;
            loop {
                let wake = keeper.next_beat();
                let wake = stop_at.map_or(wake, |s| s.min(wake));
                tokio::select! {
                    biased;
                    r = &mut node_run => break Some(r),
                    _ = async {
                        match stop {
                            Some((s, _)) if stop_at.is_none() => s.cancelled().await,
                            _ => std::future::pending().await,
                        }
                    } => {
                        let grace = stop.map_or(Duration::ZERO, |(_, g)| g);
                        stop_at = Some(tokio::time::Instant::now() + grace);
                    }
                    _ = backend.wait_run_change(&lease.run_id, wake.saturating_duration_since(tokio::time::Instant::now())) => {
                        let now = tokio::time::Instant::now();
                        if stop_at.is_some_and(|s| now >= s) {
                            break None;
                        }
                        let status = match keeper.check(backend, lease).await {
                            LeaseCheck::Held(status) => status,
                            LeaseCheck::Unknown => continue,
                            LeaseCheck::Lost => {
                                tracing::warn!("lease lost while the node ran; abandoning the step");
                                cancel.cancel();
                                return Ok(StepEnd::Abandoned { lease_lost: true });
                            }
                        };
                        if status == RunStatus::Cancelled {
                            tracing::info!("run cancelled; signalling the running node");
                            cancel.cancel();
                            // Let the node see its token and stop cleanly; its result is
                            // discarded either way (the backend rejects the commit).
                            let _ = tokio::time::timeout(config.heartbeat_interval, &mut node_run).await;
                            return Ok(StepEnd::Abandoned { lease_lost: false });
                        }
                    }
                }
            }
        };
        let ran = node_started.elapsed();
        let Some(result) = result else {
            cancel.cancel();
            backend.release(lease).await?;
            return Ok(StepEnd::Released);
        };
        // (error, scheduled retry, whether a worker-wide policy may still retry it)
        let failure = match result {
            Err(panic) => Some((
                FloxideError::NodePanicked {
                    node: taken.node.clone(),
                    message: crate::error::panic_message(panic.as_ref()),
                },
                None,
                true,
            )),
            Ok(Err(scope_error)) => {
                // The run's deadline passed (cancellation returned above).
                return dead_letter(backend, taken, scope_error.to_string()).await;
            }
            Ok(Ok(Err(f))) => {
                let open = !f.policy_applied
                    && (!f.aborted
                        || config
                            .retry_policy
                            .as_ref()
                            .is_some_and(|p| p.retry_error == crate::RetryError::All));
                Some((f.error, f.retry_after, open))
            }
            Ok(Ok(Ok(()))) => None,
        };
        if let Some((error, mut retry_after, open)) = failure {
            if retry_after.is_none() && open {
                if let Some(policy) = &config.retry_policy {
                    let attempt = taken.attempt as usize;
                    if policy.should_retry(&error, attempt) {
                        retry_after = Some(policy.backoff_duration(attempt));
                    }
                }
            }
            tracing::debug!(%error, ?retry_after, "step failed");
            let outcome = backend
                .fail(
                    lease,
                    StepFailed {
                        node: taken.node.clone(),
                        error: error.to_string(),
                        retry_after,
                    },
                )
                .await?;
            let recorded = match retry_after {
                Some(_) => StepEnd::Retried(error),
                None => StepEnd::Failed(error),
            };
            return Ok(StepEnd::after_failure(outcome, recorded));
        }

        let after = match encode(&ctx) {
            Ok(bytes) => bytes,
            Err(e) => {
                let error = format!("the context could not be serialized after the step: {e}");
                return dead_letter(backend, taken, error).await;
            }
        };
        drop(ctx);
        let held = sink.held();
        let changed = after != loaded.bytes;
        let mut commit = StepCommit {
            require_version: held.then_some(loaded.version),
            context: None,
            successors: Vec::with_capacity(sink.item_count()),
            outputs: Vec::with_capacity(sink.outputs().len()),
            handled_failures: sink
                .handled_failures()
                .iter()
                .map(|(node, error)| WorkflowError {
                    work_item: lease.item_id,
                    node: (*node).to_owned(),
                    error: error.to_string(),
                    attempt: taken.attempt,
                    handled: true,
                    timestamp: SystemTime::now(),
                })
                .collect(),
            node: taken.node.clone(),
            duration: started.elapsed(),
        };
        let (items, outputs, _) = sink.take();
        for item in &items {
            commit.successors.push(NewItem {
                id: item.instance_id(),
                node: item.node_name().to_owned(),
                bytes: encode(item).map_err(codec_error)?,
            });
        }
        for output in &outputs {
            commit
                .outputs
                .push(serde_json::to_value(output).map_err(|e| codec_error(e.to_string()))?);
        }
        if changed {
            commit.context = Some((loaded.version, after.clone()));
        }
        loop {
            match backend.commit_and_take(lease, commit.clone(), next).await? {
                (CommitOutcome::Committed { .. }, next) => {
                    return Ok(StepEnd::Committed {
                        outputs,
                        next: next.map(Box::new),
                        ran,
                    })
                }
                (outcome, _) => match outcome {
                    CommitOutcome::Committed { .. } => unreachable!("handled above"),
                    CommitOutcome::LeaseLost => {
                        tracing::warn!(
                            "lease lost before the commit; the step's effects are discarded"
                        );
                        return Ok(StepEnd::Abandoned { lease_lost: true });
                    }
                    CommitOutcome::RunInactive(status) => {
                        tracing::info!(%status, "run no longer active; the step's effects are discarded");
                        return Ok(StepEnd::Abandoned { lease_lost: false });
                    }
                    CommitOutcome::ContextConflict { .. } if held => {
                        metrics::commit_conflict(workflow.name());
                        break;
                    }
                    CommitOutcome::ContextConflict { .. } => {
                        metrics::commit_conflict(workflow.name());
                        // Another step of the run committed first: join our context into the
                        // latest one and commit again (the node does not run again).
                        let latest = backend.load_context(&lease.run_id).await?;
                        let mut merged: C = decode(&latest.bytes).map_err(codec_error)?;
                        let ours: C = decode(&after).map_err(codec_error)?;
                        merged.merge(ours);
                        let bytes = encode(&merged).map_err(codec_error)?;
                        commit.context = (bytes != latest.bytes).then_some((latest.version, bytes));
                    }
                },
            }
        }
        tracing::debug!("a held step saw a newer context; executing it again");
    }
}
