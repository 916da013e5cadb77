//! Step part 6: chains. A step's successors need not wait for its commit before they run:
//! the worker executes them at once, on the context the step left, and commits them all in
//! one call, the step asking the backend to lease those successors straight to this worker
//! ([`CommitItem::keep_successor`]). A linear run of fast nodes then costs one commit instead
//! of one per step, and so does a fan of fast leaves: the chain is a tree, its steps run one
//! after the other, oldest first.
//!
//! Only nodes known to be fast are chained: those whose last execution on this worker
//! finished without waiting (ready within [`SPINS`] polls); of a step's successors, those
//! from the first up to one not known to be fast. A node the worker has not run yet is
//! chained only under a backlog (the chain's first item came with others, see [`Pace`]):
//! otherwise its first execution starts only once its item is stored and leased, as without
//! chains, so that a worker's first run of a workflow shows every item before it runs. A
//! chained successor still pending after [`SPINS`] polls (it waits for I/O, a timer, a lock,
//! or must report a failure or release its item) lets the commits made so far go at once and
//! goes on alone: a step that runs for a while is listed in progress within a commit's round
//! trip of its start. The successors its parent had not started yet, and those of the
//! chain's steps not expanded yet, are queued as usual. A chain also stops after
//! [`MAX_CHAIN`] steps or [`CHAIN_TIME`]. Until the commit that creates its item is settled, a
//! successor that goes on alone renews its parent's lease, and it reports a failure or
//! releases its item only after that commit was applied (its [`Gate`]).
//!
//! [`CommitItem::keep_successor`]: crate::distributed::CommitItem::keep_successor

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::commit::Pending;
use super::{execute, ExecConfig, Executed};
use crate::distributed::backend::{
    Backend, DistributedError, Lease, LeaseState, Taken, VersionedContext, KEPT_LEASE_TOKEN,
};
use crate::distributed::{RunId, WorkerId};
use crate::{Context, FloxideError, ItemId, Merge, Workflow};

/// How long a chain runs at most before its commits go (checked between its steps).
pub(crate) const CHAIN_TIME: Duration = Duration::from_millis(2);

/// What a worker learnt of its nodes: whether each one's last execution finished without
/// waiting.
#[derive(Debug, Default)]
pub(crate) struct Speeds(std::sync::Mutex<HashMap<String, bool>>);

impl Speeds {
    /// Records an execution of `node`.
    fn record(&self, node: &str, fast: bool) {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match map.get_mut(node) {
            Some(known) => *known = fast,
            None => {
                map.insert(node.to_owned(), fast);
            }
        }
    }

    /// Whether `node` may be chained: its last execution was fast (`unknown` when the
    /// worker has not run it yet).
    fn fast(&self, node: &str, unknown: bool) -> bool {
        let map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(node).copied().unwrap_or(unknown)
    }
}

/// What a chain goes by to choose the steps it runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace<'a> {
    /// What the worker learnt of its nodes' speed.
    pub(crate) speeds: &'a Speeds,
    /// The chain's first item came with others (the worker has a backlog): a node the worker
    /// has not run yet is chained too, its speed learnt on the spot.
    pub(crate) backlog: bool,
}

/// How many times a chained step is polled (yielding to the runtime in between) before its
/// chain stops waiting for it; a node that was not ready fewer times finished "without
/// waiting".
pub(crate) const SPINS: usize = 3;

/// The most steps one chain commits together.
pub(crate) const MAX_CHAIN: usize = 16;

/// What a chained step knows of the commit that creates its item.
#[derive(Clone, Debug)]
pub(crate) struct Gate {
    /// The parent step's lease, renewed until that commit is settled.
    parent: Lease,
    /// `Some(applied)` once the parent's commit is settled.
    settled: watch::Receiver<Option<bool>>,
}

/// The sending side of a [`Gate`], kept with the parent's pending commit.
#[derive(Debug)]
pub(crate) struct GateKeeper(watch::Sender<Option<bool>>);

impl GateKeeper {
    /// The parent's commit is settled: applied, or refused for good.
    pub(crate) fn settle(self, applied: bool) {
        let _ = self.0.send(Some(applied));
    }
}

impl Gate {
    /// A gate for a successor of the step holding `parent`, and its keeper.
    pub(super) fn new(parent: Lease) -> (Gate, GateKeeper) {
        let (tx, rx) = watch::channel(None);
        (
            Gate {
                parent,
                settled: rx,
            },
            GateKeeper(tx),
        )
    }

    /// Whether the parent's commit is settled (or its outcome will never be known).
    pub(crate) fn is_settled(&self) -> bool {
        self.settled.borrow().is_some() || self.settled.has_changed().is_err()
    }

    /// Whether `lease` is the parent step's.
    pub(crate) fn is_parent(&self, lease: &Lease) -> bool {
        lease.item_id == self.parent.item_id && lease.run_id == self.parent.run_id
    }

    /// Waits until the parent's commit is settled: whether the chained item may now exist.
    /// A keeper dropped without a verdict (the commit's outcome is unknown) lets the backend's
    /// fence decide.
    pub(crate) async fn opened(&self) -> bool {
        let mut settled = self.settled.clone();
        loop {
            let seen = *settled.borrow_and_update();
            if let Some(applied) = seen {
                return applied;
            }
            if settled.changed().await.is_err() {
                let last = *settled.borrow();
                return last.unwrap_or(true);
            }
        }
    }

    /// Whether the item of a step (chained behind `gate`, or not: then always) may be failed
    /// or released now: once its parent's commit is settled, unless that commit was refused.
    pub(crate) async fn lets_through(gate: Option<&Gate>) -> bool {
        match gate {
            Some(gate) => gate.opened().await,
            None => true,
        }
    }

    /// Renews the chained step's lease `own`: its parent's while the parent's commit is not
    /// settled (then its own once the parent's is gone: the commit applied meanwhile).
    pub(crate) async fn heartbeat(
        &self,
        backend: &dyn Backend,
        own: &Lease,
        timeout: Duration,
    ) -> Result<LeaseState, DistributedError> {
        let settled = *self.settled.borrow();
        match settled {
            Some(false) => return Ok(LeaseState::Lost),
            Some(true) => return backend.heartbeat(own, timeout).await,
            None => {}
        }
        match backend.heartbeat(&self.parent, timeout).await? {
            LeaseState::Lost => backend.heartbeat(own, timeout).await,
            held => Ok(held),
        }
    }
}

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A chain's end: its commits, in order (each after the first a successor kept by one
/// before it), and the successor still running when the chain stopped waiting for it.
pub(crate) struct Chained<'a, O> {
    pub(crate) commits: Vec<Pending<O>>,
    pub(crate) rest: Option<Rest<'a, O>>,
}

/// A chained step still running: its item and its execution.
pub(crate) struct Rest<'a, O> {
    pub(crate) item: (ItemId, RunId),
    pub(crate) run: Boxed<'a, Result<Executed<O>, FloxideError>>,
}

/// What executing a taken item with its chain led to.
pub(crate) enum ChainEnd<'a, O> {
    /// No chain: as [`execute`] ended.
    Single(Executed<O>),
    /// Commits to send, and maybe a step still running.
    Chain(Chained<'a, O>),
    /// The lease renewal of a step waiting for its commit that holds none of the worker's
    /// slots (see `Pending::holds_slot`), as it ended.
    Renewed(Result<Executed<O>, FloxideError>),
}

/// Successor `index` of `pending`, as the chain runs it: leased to this worker by
/// `pending`'s commit, on the context `pending` leaves.
fn successor<O>(pending: &Pending<O>, index: usize, worker: &WorkerId) -> Option<Taken> {
    let next = pending.commit.successors.get(index)?;
    let run = &pending.taken.lease.run_id;
    let lease = Lease::new(run.clone(), next.id, KEPT_LEASE_TOKEN, worker.clone());
    let mut taken = Taken::new(lease, next.node.clone(), next.bytes.clone())
        .with_deadline(pending.taken.deadline);
    let (version, bytes) = pending.held_context();
    taken.context = Some(VersionedContext::new(bytes.to_vec(), version));
    Some(taken)
}

/// Polls `run` up to `SPINS` times, yielding to the runtime in between; its output if it
/// finished by then (a fast node's step), else `None` (it goes on as the chain's rest).
async fn spin<F: std::future::Future + Unpin>(run: &mut F) -> Option<F::Output> {
    for round in 0..SPINS {
        if round > 0 {
            tokio::task::yield_now().await;
        }
        if let Some(out) = run.now_or_never() {
            return Some(out);
        }
    }
    None
}

/// Executes `taken`, then, as long as the chain is young and small, the successors of each
/// step run that are known to finish without waiting (see the module documentation).
///
/// # Errors
/// As [`execute`].
pub(crate) async fn execute_chain<'a, C, W>(
    workflow: &'a W,
    backend: &'a dyn Backend,
    config: &'a ExecConfig,
    worker: &'a WorkerId,
    taken: Taken,
    stop: Option<(&'a CancellationToken, Duration)>,
    pace: Pace<'a>,
) -> Result<ChainEnd<'a, W::Output>, FloxideError>
where
    C: Context + Merge,
    W: Workflow<C>,
{
    let first = match execute(workflow, backend, config, worker, taken, stop, None).await? {
        Executed::Ready(pending) => pending,
        ended => return Ok(ChainEnd::Single(ended)),
    };
    if !config.chain_steps || !backend.keeps_successors() {
        return Ok(ChainEnd::Single(Executed::Ready(first)));
    }
    pace.speeds
        .record(&first.taken.node, first.waits() < SPINS as u32);
    let mut tree = Tree {
        deadline: Instant::now() + CHAIN_TIME,
        stop: stop.map(|(token, _)| token),
        commits: Vec::new(),
        waiting: VecDeque::new(),
    };
    let count = tree.runnable(&first, pace);
    if count == 0 {
        // No successor runs here: the step goes on its own (and nothing is allocated for it).
        return Ok(ChainEnd::Single(Executed::Ready(first)));
    }
    let runner = Runner {
        workflow,
        backend,
        config,
        worker,
        stop,
    };
    // Each step in turn, oldest first: its successors run (those that fit and are known to
    // be fast), then it waits for the commit.
    let mut next = Some((first, count));
    while let Some((mut pending, count)) = next.take() {
        if count == 0 {
            tree.commits.push(*pending);
        } else {
            let (gate, keeper) = Gate::new(pending.taken.lease.clone());
            let (started, rest) = runner
                .successors(&mut tree, &pending, count, &gate, pace.speeds)
                .await;
            pending.keep_successors(config.lease_timeout, started, keeper);
            tree.commits.push(*pending);
            if rest.is_some() {
                // The steps run but not expanded keep none of their successors: those are
                // queued.
                tree.commits.extend(tree.waiting.drain(..).map(|p| *p));
                return Ok(ChainEnd::Chain(Chained {
                    commits: tree.commits,
                    rest,
                }));
            }
        }
        next = tree.waiting.pop_front().map(|p| {
            let count = tree.runnable(&p, pace);
            (p, count)
        });
    }
    Ok(ChainEnd::Chain(Chained {
        commits: tree.commits,
        rest: None,
    }))
}

/// What each step of a chain runs with.
struct Runner<'a, W> {
    workflow: &'a W,
    backend: &'a dyn Backend,
    config: &'a ExecConfig,
    worker: &'a WorkerId,
    stop: Option<(&'a CancellationToken, Duration)>,
}

impl<'a, W> Runner<'a, W> {
    /// Runs `pending`'s first `count` successors one after the other (while the chain is
    /// young), under `gate`: those that finish join the tree's waiting steps. Returns how many
    /// started, and the one that did not finish without waiting, if any (the chain stops
    /// there).
    async fn successors<C>(
        &self,
        tree: &mut Tree<'a, W::Output>,
        pending: &Pending<W::Output>,
        count: usize,
        gate: &Gate,
        speeds: &Speeds,
    ) -> (usize, Option<Rest<'a, W::Output>>)
    where
        C: Context + Merge,
        W: Workflow<C>,
    {
        let (workflow, backend, config, worker, stop) = (
            self.workflow,
            self.backend,
            self.config,
            self.worker,
            self.stop,
        );
        let mut started = 0;
        while started < count && (started == 0 || tree.young()) {
            let Some(next) = successor(pending, started, worker) else {
                break;
            };
            started += 1;
            let item = (next.lease.item_id, next.lease.run_id.clone());
            let node = next.node.clone();
            let gate = gate.clone();
            let mut run: Boxed<'a, _> = Box::pin(async move {
                let ran = execute(workflow, backend, config, worker, next, stop, Some(&gate));
                match ran.await? {
                    Executed::Ready(pending) => Ok(Executed::Ready(pending.tied(gate.clone()))),
                    ended => Ok(ended),
                }
            });
            match spin(&mut run).await {
                Some(Ok(Executed::Ready(next))) => {
                    speeds.record(&next.taken.node, true);
                    tree.waiting.push_back(next.chained());
                }
                None => {
                    speeds.record(&node, false);
                    return (started, Some(Rest { item, run }));
                }
                // Over without a commit (the run cancelled, the lease lost, a backend error):
                // its parent's commit goes on; the batcher records how the step ended.
                Some(ended) => {
                    let run: Boxed<'a, _> = Box::pin(async move { ended });
                    return (started, Some(Rest { item, run }));
                }
            }
        }
        (started, None)
    }
}

/// A chain's steps so far (a tree when a step has several successors).
struct Tree<'a, O> {
    /// When the chain stops starting steps.
    deadline: Instant,
    /// The worker's stop token: a stopping worker starts no more.
    stop: Option<&'a CancellationToken>,
    /// The steps whose successors are settled (run here or left to the queue), in order.
    commits: Vec<Pending<O>>,
    /// The steps run whose successors are not settled yet, oldest first.
    waiting: VecDeque<Box<Pending<O>>>,
}

impl<O> Tree<'_, O> {
    /// Whether the chain may start another step (time and stop wise).
    fn young(&self) -> bool {
        Instant::now() < self.deadline && !self.stop.is_some_and(CancellationToken::is_cancelled)
    }

    /// How many of `pending`'s successors, from the first, the chain runs: those known to be
    /// fast (see [`Pace`]), up to the chain's room (none once it is old).
    fn runnable(&self, pending: &Pending<O>, pace: Pace<'_>) -> usize {
        let size = self.commits.len() + self.waiting.len() + 1;
        let room = MAX_CHAIN.saturating_sub(size);
        if room == 0 || !self.young() {
            return 0;
        }
        pending
            .commit
            .successors
            .iter()
            .take(room)
            .take_while(|next| pace.speeds.fast(&next.node, pace.backlog))
            .count()
    }
}
