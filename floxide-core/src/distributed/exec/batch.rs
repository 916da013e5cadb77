//! Step part 5: a worker's loop with several steps in flight.
//!
//! A worker has `capacity` slots. When idle it blocks on the backend for up to `capacity`
//! items (one take). Each step runs concurrently with the others; as soon as any finish, the
//! finished ones are committed together in one call that also takes up to as many new items
//! as slots are free (never waiting to fill a batch: a lone run's step is committed at once,
//! and its single successor comes back in the same reply). Steps that finish while a commit
//! is in flight go in the next one. When steps run long and slots are free, a blocking take
//! for the free slots runs alongside them. Each step of a batch is settled on its own: a
//! context conflict re-merges (or re-runs a `Hold`) and commits again, without touching the
//! others.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;

use super::chain::{execute_chain, ChainEnd, Chained, Pace, Speeds};
use super::commit::{self, Pending, Settled};
use super::{ended, execute, ExecConfig, Executed, StepEnd};
use crate::distributed::backend::{
    Backend, CommitItem, CommitReply, DistributedError, TakeOptions, TakeRequest, Taken, MAX_BATCH,
    MAX_COMMIT_STEPS,
};
use crate::distributed::health::HealthReporter;
use crate::distributed::{RunId, WorkerId, WorkerStatus};
use crate::{Context, FloxideError, ItemId, Merge, Workflow};

/// How long a busy worker with free slots waits for one of its steps to finish before it
/// also waits for new work (so that fast steps keep refilling slots through their commits).
const QUIET: Duration = Duration::from_millis(10);

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A worker's slots and idle waits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slots {
    /// Steps in flight at most.
    pub(crate) capacity: usize,
    /// How long one idle wait lasts before the worker re-checks.
    pub(crate) idle_wait: Duration,
    /// A random extra for each idle wait.
    pub(crate) idle_jitter: Duration,
}

/// Everything a worker's loop needs; see the module documentation.
pub(crate) struct Batcher<'a, C, W> {
    pub(crate) workflow: &'a W,
    pub(crate) backend: &'a dyn Backend,
    pub(crate) config: &'a ExecConfig,
    pub(crate) worker: &'a WorkerId,
    pub(crate) options: TakeOptions,
    pub(crate) slots: Slots,
    pub(crate) stop: &'a CancellationToken,
    pub(crate) grace: Duration,
    /// What the worker learnt of its nodes' speed (which ones it chains).
    pub(crate) speeds: &'a Speeds,
    pub(crate) context: PhantomData<fn() -> C>,
}

/// The loop's state: steps running, finished ones waiting for a commit, the commit and the
/// take in flight.
struct State<'a, O> {
    running: FuturesUnordered<Boxed<'a, Result<ChainEnd<'a, O>, FloxideError>>>,
    ready: Vec<Pending<O>>,
    committing: Option<Boxed<'a, CommitDone<O>>>,
    committing_len: usize,
    /// The slots the commit in flight holds (a chain's steps hold one).
    committing_slots: usize,
    /// Running renewals of steps that hold no slot.
    slotless: usize,
    taker: Option<Boxed<'a, Result<Vec<Taken>, DistributedError>>>,
    reserved: usize,
    /// A health report on its way (it never holds up the steps).
    reporting: Option<Boxed<'a, ()>>,
    take_failures: u32,
    current: Option<(ItemId, RunId, u32)>,
}

/// A finished commit call: the steps it carried and the backend's reply.
type CommitDone<O> = (Vec<Pending<O>>, Result<CommitReply, DistributedError>);

impl<O> State<'_, O> {
    /// Nothing running, ready, committing or being taken.
    fn new() -> Self {
        State {
            running: FuturesUnordered::new(),
            ready: Vec::new(),
            committing: None,
            committing_len: 0,
            committing_slots: 0,
            slotless: 0,
            taker: None,
            reserved: 0,
            reporting: None,
            take_failures: 0,
            current: None,
        }
    }

    /// Steps in flight: running, or waiting for or in a commit.
    fn busy(&self) -> usize {
        self.running.len() + self.ready.len() + self.committing_len
    }

    /// Slots in use: as `busy`, but a chain's steps hold one slot between them (they run one
    /// at a time), so a worker committing chains takes as many items as it can run.
    fn used(&self) -> usize {
        self.running.len() - self.slotless + slots(&self.ready) + self.committing_slots
    }
}

/// The slots `steps` waiting for a commit hold: one per chain (see `Pending::holds_slot`).
fn slots<O>(steps: &[Pending<O>]) -> usize {
    steps.iter().filter(|p| p.holds_slot()).count()
}

/// Takes the next commit's steps out of the finished ones, `ready`, oldest first (a parent
/// before the steps chained to it): a batch of slots, where a chain's steps hold one between
/// them (a worker that ran `MAX_BATCH` chains commits them together), and never more than
/// `MAX_COMMIT_STEPS` steps. A chained step whose parent is not in the batch and not settled
/// (it renews its lease meanwhile) stays for a later one.
fn next_batch<O>(ready: &mut Vec<Pending<O>>) -> Vec<Pending<O>> {
    ready.sort_by_key(Pending::born);
    let mut batch: Vec<Pending<O>> = Vec::new();
    let mut rest = Vec::new();
    let (mut held, mut full) = (0, false);
    for pending in ready.drain(..) {
        full =
            full || batch.len() == MAX_COMMIT_STEPS || (pending.holds_slot() && held == MAX_BATCH);
        if full || pending.waits_for_parent(&batch) {
            rest.push(pending);
            continue;
        }
        held += usize::from(pending.holds_slot());
        batch.push(pending);
    }
    *ready = rest;
    batch
}

/// A step's execution that starts no chain, as the loop keeps it.
fn single<'a, O: 'a>(
    run: impl Future<Output = Result<Executed<O>, FloxideError>> + Send + 'a,
) -> Boxed<'a, Result<ChainEnd<'a, O>, FloxideError>> {
    Box::pin(run.map(|r| r.map(ChainEnd::Single)))
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Awaits the future in `slot`, or never when there is none.
async fn opt<F: Future + Unpin>(slot: &mut Option<F>) -> F::Output {
    match slot {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

impl<'a, C, W> Batcher<'a, C, W>
where
    C: Context + Merge,
    W: Workflow<C>,
{
    /// Runs until the stop token is cancelled and every step in flight is settled.
    pub(crate) async fn run(&self, reporter: &mut HealthReporter) {
        // The workflow's graph, for tools that draw its runs without its code (best effort).
        if let Err(error) = self.backend.register_graph(&self.workflow.graph()).await {
            tracing::warn!(%error, "could not register the workflow's graph");
        }
        let mut st = State::new();
        let mut quiet = false;
        loop {
            let stopping = self.stop.is_cancelled();
            if st.committing.is_none() && !st.ready.is_empty() {
                self.start_commit(&mut st, stopping);
            }
            let busy = st.busy();
            let free = self.slots.capacity.saturating_sub(st.used() + st.reserved);
            if st.taker.is_none() && !stopping && free > 0 && (busy == 0 || quiet) {
                st.taker = Some(self.start_take(free, busy == 0, st.take_failures));
                st.reserved = free;
            }
            if stopping && busy == 0 {
                break;
            }
            if st.reporting.is_none() {
                self.start_report(&mut st, reporter);
            }
            // Steps waiting for a commit (a slow backend, a commit in flight) keep their leases.
            let keep_due = st.ready.iter().map(|p| p.renewal_due(self.config)).min();
            let wait_quiet = st.taker.is_none() && !stopping && free > 0 && busy > 0;
            quiet = false;
            tokio::select! {
                biased;
                _ = self.stop.cancelled(), if !stopping => {}
                () = opt(&mut st.reporting) => st.reporting = None,
                Some(result) = st.running.next(), if !st.running.is_empty() => {
                    self.executed(&mut st, result, reporter);
                    // Everything else that finished meanwhile joins the same commit.
                    while let Some(Some(result)) = st.running.next().now_or_never() {
                        self.executed(&mut st, result, reporter);
                    }
                }
                (batch, reply) = opt(&mut st.committing) => {
                    st.committing = None;
                    st.committing_len = 0;
                    st.committing_slots = 0;
                    self.committed(&mut st, batch, reply, reporter);
                }
                taken = opt(&mut st.taker) => self.took(&mut st, taken, reporter),
                _ = tokio::time::sleep(QUIET), if wait_quiet => quiet = true,
                () = sleep_until_opt(keep_due) => self.keep_waiting(&mut st),
            }
        }
        // A take still waiting is dropped here: what it leases from now on is released.
    }

    /// Sends a health report when one is due (it never holds up the steps).
    fn start_report(&self, st: &mut State<'a, W::Output>, reporter: &mut HealthReporter) {
        let (status, item) = Self::health(st, self.config);
        if let Some(health) = reporter.due(status, item) {
            let backend = self.backend;
            st.reporting = Some(Box::pin(async move {
                if let Err(error) = backend.report_worker(&health).await {
                    tracing::debug!(%error, "could not report worker health");
                }
            }));
        }
    }

    /// A take answered: its items start; a failed take is counted (the next one backs off).
    fn took(
        &self,
        st: &mut State<'a, W::Output>,
        taken: Result<Vec<Taken>, DistributedError>,
        reporter: &mut HealthReporter,
    ) {
        st.taker = None;
        st.reserved = 0;
        match taken {
            Ok(items) => {
                st.take_failures = 0;
                let backlog = items.len() > 1;
                for taken in items {
                    self.launch(st, taken, backlog);
                }
            }
            Err(error) => {
                st.take_failures += 1;
                reporter.errors += 1;
                tracing::warn!(worker = %self.worker, %error, "backend error while taking work; retrying");
            }
        }
    }

    /// Starts executing `taken` (or, once the worker is stopping, gives it back unstarted);
    /// `backlog`: it came with other items (see `Pace`).
    fn launch(&self, st: &mut State<'a, W::Output>, taken: Taken, backlog: bool) {
        let (workflow, backend, config, worker) =
            (self.workflow, self.backend, self.config, self.worker);
        if self.stop.is_cancelled() {
            self.give_back(st, taken);
            return;
        }
        st.current = Some((
            taken.lease.item_id,
            taken.lease.run_id.clone(),
            taken.attempt,
        ));
        let stop = Some((self.stop, self.grace));
        st.running.push(Box::pin(execute_chain(
            workflow,
            backend,
            config,
            worker,
            taken,
            stop,
            Pace {
                speeds: self.speeds,
                backlog,
            },
        )));
    }

    /// Runs a held step again (after a context conflict), renewing its lease first: the node
    /// ran under it already, and its keeper starts afresh.
    fn rerun(&self, st: &mut State<'a, W::Output>, taken: Taken) {
        if self.stop.is_cancelled() {
            self.give_back(st, taken);
            return;
        }
        let (workflow, backend, config, worker) =
            (self.workflow, self.backend, self.config, self.worker);
        let stop = Some((self.stop, self.grace));
        st.running.push(single(async move {
            match super::renew(backend, config, &taken).await? {
                Some(end) => Ok(Executed::Ended {
                    node: taken.node,
                    end,
                }),
                None => execute(workflow, backend, config, worker, taken, stop, None).await,
            }
        }));
    }

    /// A step's execution ended: its commit waits for the next batch, or it is over.
    fn executed(
        &self,
        st: &mut State<'a, W::Output>,
        result: Result<ChainEnd<'a, W::Output>, FloxideError>,
        reporter: &mut HealthReporter,
    ) {
        match result {
            Ok(ChainEnd::Renewed(renewed)) => {
                st.slotless -= 1;
                self.executed(st, renewed.map(ChainEnd::Single), reporter);
            }
            Ok(ChainEnd::Single(Executed::Ready(pending))) => st.ready.push(*pending),
            Ok(ChainEnd::Single(Executed::Ended { node, end })) => {
                reporter.step_ended(&ended(self.workflow, &node, end));
            }
            Ok(ChainEnd::Chain(Chained { mut commits, rest })) => {
                if rest.is_some() {
                    // The slot stays with the step that goes on.
                    commits.iter_mut().for_each(Pending::leave_slot);
                }
                st.ready.extend(commits);
                if let Some(rest) = rest {
                    // The chained step still running is the item this worker executes now.
                    let (item, run) = rest.item;
                    st.current = Some((item, run, 1));
                    st.running.push(single(rest.run));
                }
            }
            Err(error) => {
                reporter.errors += 1;
                tracing::warn!(worker = %self.worker, %error, "step could not be completed; its lease will expire");
            }
        }
    }

    /// A batch commit answered: settle each step, run what came back with it.
    fn committed(
        &self,
        st: &mut State<'a, W::Output>,
        batch: Vec<Pending<W::Output>>,
        reply: Result<CommitReply, DistributedError>,
        reporter: &mut HealthReporter,
    ) {
        let reply = match reply {
            Ok(reply) => reply,
            Err(error) => {
                reporter.errors += 1;
                tracing::warn!(worker = %self.worker, %error, steps = batch.len(), "commit failed; the steps' leases will expire and their items run again");
                return;
            }
        };
        let CommitReply { outcomes, taken } = reply;
        if outcomes.len() != batch.len() {
            tracing::error!(
                expected = batch.len(),
                got = outcomes.len(),
                "the backend answered a batch commit with a wrong number of outcomes; the unanswered steps' leases will expire"
            );
        }
        for (pending, outcome) in batch.into_iter().zip(outcomes) {
            match commit::settle(self.workflow.name(), pending, outcome) {
                Settled::Done { node, end } => {
                    reporter.step_ended(&ended(self.workflow, &node, end));
                }
                Settled::Rerun(taken) => self.rerun(st, taken),
                Settled::Remerge(stale) => {
                    let (backend, config) = (self.backend, self.config);
                    st.running
                        .push(single(commit::remerge::<C, _>(backend, config, stale)));
                }
            }
        }
        // Steps refused with a conflict stay in flight (re-merged or run again): what the
        // commit took beyond the free slots goes back.
        let backlog = taken.len() > 1;
        for item in taken {
            if st.used() + st.reserved < self.slots.capacity {
                self.launch(st, item, backlog);
            } else {
                self.give_back(st, item);
            }
        }
    }

    /// Renews the leases of the steps that have waited a heartbeat interval for their commit
    /// (they come back ready, or end when their lease is gone).
    fn keep_waiting(&self, st: &mut State<'a, W::Output>) {
        let now = tokio::time::Instant::now();
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut st.ready)
            .into_iter()
            .partition(|p| p.renewal_due(self.config) <= now);
        st.ready = waiting;
        let (backend, config) = (self.backend, self.config);
        for pending in due {
            let holds_slot = pending.holds_slot();
            let keep = Box::new(pending).keep(backend, config);
            if holds_slot {
                st.running.push(single(keep));
            } else {
                st.slotless += 1;
                st.running
                    .push(Box::pin(keep.map(|r| Ok(ChainEnd::Renewed(r)))));
            }
        }
    }

    /// Releases `taken` unstarted (its slot is busy until the release is answered).
    fn give_back(&self, st: &mut State<'a, W::Output>, taken: Taken) {
        let backend = self.backend;
        st.running.push(single(async move {
            backend.release(&taken.lease).await?;
            Ok(Executed::Ended {
                node: taken.node,
                end: StepEnd::Released,
            })
        }));
    }

    /// Sends the finished steps (up to a batch) in one commit that also takes new items for
    /// the slots it frees.
    fn start_commit(&self, st: &mut State<'a, W::Output>, stopping: bool) {
        let mut batch = next_batch(&mut st.ready);
        if batch.is_empty() {
            // Only chained steps waiting for their parents' lease renewals.
            return;
        }
        commit::chain::<C, _>(&mut batch);
        let left = st.running.len() + slots(&st.ready) + st.reserved;
        let free = self.slots.capacity.saturating_sub(left).min(MAX_BATCH);
        let next = (!stopping && free > 0).then(|| {
            TakeRequest::new(self.workflow.name(), self.worker, self.options).with_max(free)
        });
        let backend = self.backend;
        st.committing_len = batch.len();
        // Until the reply, the batch holds its slots, and the slots its take asks for are
        // spoken for (a chained step holds none, so a batch of them may hold fewer).
        let asked = if next.is_some() { free } else { 0 };
        st.committing_slots = slots(&batch).max(asked);
        st.committing = Some(Box::pin(async move {
            let items: Vec<CommitItem<'_>> = batch.iter().map(Pending::item).collect();
            let reply = backend.commit_batch(&items, next).await;
            drop(items);
            if reply.is_err() {
                // The backend has been unreachable for its whole retry window: pause a little.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (batch, reply)
        }));
    }

    /// A blocking take of up to `n` items (`idle`: the worker has nothing else to do), after
    /// a backoff when the last ones failed.
    fn start_take(
        &self,
        n: usize,
        idle: bool,
        failures: u32,
    ) -> Boxed<'a, Result<Vec<Taken>, DistributedError>> {
        let backend = self.backend;
        let request = TakeRequest::new(self.workflow.name(), self.worker, self.options)
            .with_max(n.min(MAX_BATCH));
        let mut wait = self.slots.idle_wait;
        if idle && !self.slots.idle_jitter.is_zero() {
            wait +=
                Duration::from_nanos(fastrand::u64(0..=self.slots.idle_jitter.as_nanos() as u64));
        }
        let backoff = (Duration::from_millis(50) * 2u32.saturating_pow(failures.min(7)))
            .min(Duration::from_secs(5));
        Box::pin(async move {
            if failures > 0 {
                tokio::time::sleep(backoff).await;
            }
            backend.take_batch(request, wait).await
        })
    }

    /// What the worker's health report says now: its status and an item it executes (a retry
    /// names the worker's retry policy's attempts, 0 when only a node's own policy knows them).
    fn health(
        st: &State<'a, W::Output>,
        config: &ExecConfig,
    ) -> (WorkerStatus, Option<(ItemId, RunId)>) {
        if st.busy() == 0 {
            return (WorkerStatus::Idle, None);
        }
        match &st.current {
            Some((item, run, attempt)) if *attempt > 1 => (
                WorkerStatus::Retrying(
                    *attempt,
                    config
                        .retry_policy
                        .as_ref()
                        .map_or(0, |p| u32::try_from(p.max_attempts).unwrap_or(u32::MAX)),
                ),
                Some((*item, run.clone())),
            ),
            Some((item, run, _)) => (WorkerStatus::InProgress, Some((*item, run.clone()))),
            None => (WorkerStatus::InProgress, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::chain::Gate;
    use super::super::commit::tests::step;
    use super::*;

    fn items<O>(steps: &[Pending<O>]) -> Vec<u128> {
        steps
            .iter()
            .map(|p| p.taken.lease.item_id.as_u128())
            .collect()
    }

    #[test]
    fn a_parent_goes_before_the_step_chained_to_it() {
        let parent = step(1, 4, &[], &["a"]);
        let (gate, _keeper) = Gate::new(parent.taken.lease.clone());
        let child = *Box::new(step(2, 5, &["a"], &["a", "b"]))
            .tied(gate)
            .chained();
        // A lease renewal put the parent behind its child.
        let mut ready = vec![child, parent];
        let batch = next_batch(&mut ready);
        assert_eq!(items(&batch), [1, 2]);
        assert!(ready.is_empty());
    }

    #[test]
    fn a_chained_step_waits_for_a_parent_that_renews_its_lease() {
        let parent = step(1, 4, &[], &["a"]);
        let (gate, keeper) = Gate::new(parent.taken.lease.clone());
        let child = *Box::new(step(2, 5, &["a"], &["a", "b"])).tied(gate.clone());
        let other = step(3, 0, &[], &["c"]);
        let mut ready = vec![child, other];
        assert_eq!(items(&next_batch(&mut ready)), [3]);
        assert_eq!(items(&ready), [2], "the child waits for its parent");
        keeper.settle(false);
        assert_eq!(
            items(&next_batch(&mut ready)),
            [2],
            "its parent was refused"
        );

        // A keeper dropped unsettled (its parent's lease was lost) lets the child go too.
        let (gate, keeper) = Gate::new(parent.taken.lease.clone());
        let mut ready = vec![*Box::new(step(4, 5, &["a"], &["a", "d"])).tied(gate)];
        assert!(next_batch(&mut ready).is_empty());
        drop(keeper);
        assert_eq!(items(&next_batch(&mut ready)), [4]);
    }
}
