//! Step part 2: run the node while its lease is renewed, watching the run's cancellation and
//! the worker's shutdown.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::FutureExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::chain::Gate;
use super::prepare::Prepared;
use super::{ExecConfig, StepEnd};
use crate::context::{CancelState, RunScope};
use crate::distributed::backend::{Backend, Lease, LeaseState, Taken, VersionedContext};
use crate::distributed::RunStatus;
use crate::workflow::StepFailure;
use crate::{Context, FloxideError, StepEnv, StepSink, Workflow};

/// What a node's execution returned: a panic, the run's deadline passing, or the node's own
/// result.
pub(super) type NodeResult =
    Result<Result<Result<(), StepFailure>, FloxideError>, Box<dyn std::any::Any + Send>>;

/// A node that ran to its end, with everything the step needs afterwards.
pub(super) struct Finished<C, WI, O> {
    pub(super) result: NodeResult,
    pub(super) sink: StepSink<WI, O>,
    pub(super) ctx: C,
    pub(super) loaded: VersionedContext,
    /// How long the node ran.
    pub(super) ran: Duration,
    /// How many times the node waited (its future was not ready).
    pub(super) waits: u32,
    /// How long the step has taken so far (preparation included).
    pub(super) elapsed: Duration,
    /// When the lease was last granted or renewed.
    pub(super) renewed: Instant,
}

/// How running the node ended.
pub(super) enum Ran<C, WI, O> {
    /// The node returned (or panicked).
    Finished(Box<Finished<C, WI, O>>),
    /// The step is over without a result: lease lost, run cancelled, or released on shutdown.
    Gone(StepEnd<O>),
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
    next_beat: Instant,
    valid_until: Instant,
    backoff: Duration,
    /// When a step still running looks at its run once, whatever it heard: a change made
    /// between the take and the keeper's first wait (a cancel) is not heard.
    first_look: Option<Instant>,
}

impl LeaseKeeper {
    const FIRST_RETRY: Duration = Duration::from_millis(100);
    /// How long after its take a step first looks at its run.
    const FIRST_LOOK: Duration = Duration::from_millis(50);

    /// A keeper for a lease granted (or last renewed) at `granted`.
    fn new(config: &ExecConfig, granted: Instant) -> Self {
        LeaseKeeper {
            interval: config.heartbeat_interval,
            timeout: config.lease_timeout,
            next_beat: granted + config.heartbeat_interval,
            valid_until: granted + config.lease_timeout,
            backoff: Self::FIRST_RETRY,
            first_look: Some(granted + Self::FIRST_LOOK),
        }
    }

    /// When the keeper next needs to act: a heartbeat, or its first look at the run.
    fn next_wake(&self) -> Instant {
        self.first_look
            .map_or(self.next_beat, |first| first.min(self.next_beat))
    }

    /// Renews the lease when a heartbeat is due, else reads the run's status (after a run
    /// event).
    async fn check(
        &mut self,
        backend: &dyn Backend,
        lease: &Lease,
        gate: Option<&Gate>,
    ) -> LeaseCheck {
        self.first_look = None;
        let now = Instant::now();
        if now < self.next_beat {
            return match backend.run_info(&lease.run_id).await {
                Ok(info) => LeaseCheck::Held(info.status),
                Err(_) => LeaseCheck::Unknown,
            };
        }
        let beat = match gate {
            Some(gate) => gate.heartbeat(backend, lease, self.timeout).await,
            None => backend.heartbeat(lease, self.timeout).await,
        };
        match beat {
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

/// Waits for the worker's shutdown signal, once (never after it was seen, or without one).
async fn stop_signal(stop: Option<(&CancellationToken, Duration)>, seen: bool) {
    match stop {
        Some((token, _)) if !seen => token.cancelled().await,
        _ => std::future::pending().await,
    }
}

/// Runs `taken`'s node on `prepared` under its lease (granted at `granted`). On shutdown the
/// node gets the grace period, then its lease is released.
///
/// # Errors
/// A backend error while releasing the lease.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_node<C, W>(
    workflow: &W,
    backend: &dyn Backend,
    config: &ExecConfig,
    taken: &Taken,
    prepared: Prepared<C, W::WorkItem>,
    stop: Option<(&CancellationToken, Duration)>,
    token: CancellationToken,
    granted: Instant,
    gate: Option<&Gate>,
) -> Result<Ran<C, W::WorkItem, W::Output>, FloxideError>
where
    C: Context,
    W: Workflow<C>,
{
    let Prepared { item, ctx, loaded } = prepared;
    let lease = &taken.lease;
    // The run's wall-clock deadline, as an instant of this process.
    let deadline = taken.deadline.map(|at| {
        let left = at.duration_since(SystemTime::now()).unwrap_or_default();
        (Instant::now() + left, left)
    });
    let cancel = Arc::new(CancelState::new(token));
    let scope = RunScope {
        cancel: Arc::clone(&cancel),
        deadline,
    };
    let mut sink = StepSink::new();
    let env = StepEnv::scheduled(taken.attempt);
    let node_started = Instant::now();
    let mut keeper = LeaseKeeper::new(config, granted);
    let (result, waits) = {
        let node_run = scope.guarded(&cancel, async {
            Ok(workflow.process_work_item(&ctx, item, env, &mut sink).await)
        });
        let node_run = AssertUnwindSafe(node_run).catch_unwind();
        tokio::pin!(node_run);
        let mut node_run = Counted {
            inner: node_run,
            waits: 0,
        };
        let mut stop_at: Option<Instant> = None;
        loop {
            let wake = stop_at.map_or(keeper.next_wake(), |s| s.min(keeper.next_wake()));
            tokio::select! {
                biased;
                r = &mut node_run => break (Some(r), node_run.waits),
                _ = stop_signal(stop, stop_at.is_some()) => {
                    let grace = stop.map_or(Duration::ZERO, |(_, g)| g);
                    stop_at = Some(Instant::now() + grace);
                }
                _ = backend.wait_run_change(&lease.run_id, wake.saturating_duration_since(Instant::now())) => {
                    if stop_at.is_some_and(|s| Instant::now() >= s) {
                        break (None, node_run.waits);
                    }
                    let check = keeper.check(backend, lease, gate).await;
                    if let Some(end) = abandon(check, &cancel, config, &mut node_run).await {
                        return Ok(Ran::Gone(end));
                    }
                }
            }
        }
    };
    let ran = node_started.elapsed();
    let Some(result) = result else {
        cancel.cancel();
        if Gate::lets_through(gate).await {
            backend.release(lease).await?;
        }
        return Ok(Ran::Gone(StepEnd::Released));
    };
    Ok(Ran::Finished(Box::new(Finished {
        result,
        sink,
        ctx,
        loaded,
        ran,
        waits,
        elapsed: granted.elapsed(),
        renewed: keeper.valid_until - keeper.timeout,
    })))
}

/// Whether a lease check made while the node runs ends the step: the run was cancelled (the
/// node is signalled and given a heartbeat interval to stop cleanly; its result is discarded
/// either way, as the backend refuses the commit) or the lease was lost (the node is signalled).
async fn abandon<F: std::future::Future + Unpin, O>(
    check: LeaseCheck,
    cancel: &CancelState,
    config: &ExecConfig,
    node_run: &mut F,
) -> Option<StepEnd<O>> {
    match check {
        LeaseCheck::Held(RunStatus::Cancelled) => {
            tracing::info!("run cancelled; signalling the running node");
            cancel.cancel();
            let _ = tokio::time::timeout(config.heartbeat_interval, node_run).await;
            Some(StepEnd::Abandoned { lease_lost: false })
        }
        LeaseCheck::Held(_) | LeaseCheck::Unknown => None,
        LeaseCheck::Lost => {
            tracing::warn!("lease lost while the node ran; abandoning the step");
            cancel.cancel();
            Some(StepEnd::Abandoned { lease_lost: true })
        }
    }
}

/// A future that counts how often it was not ready (how often the node waited).
struct Counted<F> {
    inner: F,
    waits: u32,
}

impl<F: std::future::Future + Unpin> std::future::Future for Counted<F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let polled = std::pin::Pin::new(&mut self.inner).poll(cx);
        if polled.is_pending() {
            self.waits = self.waits.saturating_add(1);
        }
        polled
    }
}
