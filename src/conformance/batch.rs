//! G4 batches: takes and commits carry several items, each settled on its own.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{ctx, finish, orchestrator, Chain, Gate, Trace, LEASE, PATIENCE};
use crate::distributed::*;
use crate::*;

fn options() -> TakeOptions {
    TakeOptions {
        lease_timeout: PATIENCE,
        max_deliveries: 5,
    }
}

/// A commit of `taken`'s step with one successor (never executed: the check cancels its
/// runs), the context left as it was read.
fn commit_of(taken: &Taken) -> StepCommit {
    let mut step = StepCommit::new(taken.node.clone());
    let id = ItemId::from_u128(taken.lease.item_id.as_u128() ^ 0x5eed);
    step.successors.push(NewItem::new(id, "b", b"{}".to_vec()));
    step
}

/// G4: a take leases up to the batch size, never more, and a batch commit applies each step
/// on its own: a step with a context conflict or a lost lease is refused without refusing the
/// others, stays as it was (a refused step can still be committed under its real lease), and
/// the commit's take hands the worker up to the slots it asked for.
pub async fn g4_batches_commit_each_step_on_its_own<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let wf = Chain::new(Gate::open());
    let o = orchestrator(wf.clone(), &backend);
    let mut runs = Vec::new();
    for i in 0..6 {
        runs.push(o.start_run(&ctx(), i).await.unwrap());
    }
    let me = WorkerId::from("batcher");
    // A take never waits to fill its batch (a partitioned backend answers from one
    // partition), so the batch of 3 may take several calls.
    let mut batch = Vec::new();
    while batch.len() < 3 {
        let want = 3 - batch.len();
        let take = TakeRequest::new(wf.name(), &me, options()).with_max(want);
        let got = backend.take_batch(take, PATIENCE).await.unwrap();
        assert!(
            !got.is_empty() && got.len() <= want,
            "G4: a take of {want} with ready items leases 1 to {want}, got {}",
            got.len()
        );
        batch.extend(got);
    }
    let mut ids: Vec<_> = batch
        .iter()
        .map(|t| (t.lease.run_id.clone(), t.lease.item_id))
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "G4: a batch leases distinct items");

    // Step 0 commits; step 1 relies on a context version that does not exist; step 2 comes
    // with a token its lease never had.
    let good = commit_of(&batch[0]);
    let mut conflicting = commit_of(&batch[1]);
    conflicting.require_version = Some(99);
    let forged = Lease::new(
        batch[2].lease.run_id.clone(),
        batch[2].lease.item_id,
        batch[2].lease.token + 1000,
        me.clone(),
    );
    let plain = commit_of(&batch[2]);
    let reply = backend
        .commit_batch(
            &[
                CommitItem::new(&batch[0].lease, &good),
                CommitItem::new(&batch[1].lease, &conflicting),
                CommitItem::new(&forged, &plain),
            ],
            Some(TakeRequest::new(wf.name(), &me, options()).with_max(2)),
        )
        .await
        .unwrap();
    assert_eq!(reply.outcomes.len(), 3, "G4: one outcome per step");
    assert_eq!(
        reply.outcomes[0],
        CommitOutcome::Committed { finished: None },
        "G4: the good step of a batch commits"
    );
    assert!(
        matches!(reply.outcomes[1], CommitOutcome::ContextConflict { .. }),
        "G4: a step with a stale version is refused alone, got {:?}",
        reply.outcomes[1]
    );
    assert_eq!(
        reply.outcomes[2],
        CommitOutcome::LeaseLost,
        "G2/G4: a step under a forged lease is refused alone"
    );
    assert!(
        !reply.taken.is_empty() && reply.taken.len() <= 2,
        "G4: the commit's take hands over 1 to 2 items (asked for 2), got {}",
        reply.taken.len()
    );

    // The refused steps are intact: committed under their real leases, they apply.
    let fixed = commit_of(&batch[1]);
    for (lease, step) in [(&batch[1].lease, &fixed), (&batch[2].lease, &plain)] {
        let outcome = backend.commit(lease, step).await.unwrap();
        assert_eq!(
            outcome,
            CommitOutcome::Committed { finished: None },
            "G4: a step refused in a batch is still leased and commits on its own"
        );
    }
    for taken in &reply.taken {
        backend.release(&taken.lease).await.unwrap();
    }
    for run in &runs {
        o.cancel(run).await.unwrap();
    }
}

/// Starts a run of `wf` (`o`'s workflow) with `input`, leases its first item to `me` and commits it with three
/// successors of node `b`, then leases those three to `me` (a take may answer with fewer than
/// it was asked for). Returns the run and the three leases.
async fn three_leased_successors(
    backend: &Arc<dyn Backend>,
    (wf, o): (&Chain, &DistributedOrchestrator<Chain, Trace>),
    me: &WorkerId,
    input: u32,
) -> (RunId, Vec<Taken>) {
    let run = o.start_run(&ctx(), input).await.unwrap();
    let take = |n| TakeRequest::new(wf.name(), me, options()).with_max(n);
    let first = backend.take_batch(take(1), PATIENCE).await.unwrap();
    assert_eq!(first.len(), 1);
    // The first step fans out into three items of the same run.
    let mut spread = StepCommit::new(first[0].node.clone());
    for k in 1..=3u128 {
        let id = ItemId::from_u128((0xb0 << 64) + k);
        spread
            .successors
            .push(NewItem::new(id, "b", b"{}".to_vec()));
    }
    let outcome = backend.commit(&first[0].lease, &spread).await.unwrap();
    assert_eq!(outcome, CommitOutcome::Committed { finished: None });
    let mut leased = Vec::new();
    while leased.len() < 3 {
        let got = backend
            .take_batch(take(3 - leased.len()), PATIENCE)
            .await
            .unwrap();
        assert!(!got.is_empty(), "the three items are ready");
        leased.extend(got);
    }
    (run, leased)
}

/// G7/G4: node timings add up over the steps of one batch: three steps of the same node of
/// one run, committed together, count three times, their durations summed and the longest
/// kept.
pub async fn g7_node_timings_add_up_within_a_batch<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let wf = Chain::new(Gate::open());
    let o = orchestrator(wf.clone(), &backend);
    let (run, leaves) =
        three_leased_successors(&backend, (&wf, &o), &WorkerId::from("timer"), 1).await;
    let steps: Vec<StepCommit> = [10u64, 30, 20]
        .iter()
        .map(|us| {
            let mut step = StepCommit::new("b");
            step.duration = Duration::from_micros(*us);
            step
        })
        .collect();
    let commits: Vec<CommitItem<'_>> = leaves
        .iter()
        .zip(&steps)
        .map(|(t, s)| CommitItem::new(&t.lease, s))
        .collect();
    let reply = backend.commit_batch(&commits, None).await.unwrap();
    assert!(reply
        .outcomes
        .iter()
        .all(|o| matches!(o, CommitOutcome::Committed { .. })));
    let m = o.metrics(&run).await.unwrap();
    let b = &m.per_node["b"];
    assert_eq!(
        (b.count, b.total, b.max),
        (3, Duration::from_micros(60), Duration::from_micros(30)),
        "G7: a batch's steps of one node add up: {m:?}"
    );
    assert_eq!(m.per_node["a"].count, 1);
}

/// G3/G4: in one batch, a worker may join a run's second context change onto its first
/// (sparing a conflict round trip). When the first is refused, the second must be refused
/// too, even though its base version exists by then: another step reached that number with
/// other contents, which the joined context lacks.
pub async fn g4_a_refused_context_change_refuses_the_runs_later_ones<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let wf = Chain::new(Gate::open());
    let o = orchestrator(wf.clone(), &backend);
    let (run, leased) =
        three_leased_successors(&backend, (&wf, &o), &WorkerId::from("joiner"), 0).await;
    let base = backend.load_context(&run).await.unwrap();
    let v = base.version;
    let change = |from: u64, tag: &str| {
        let mut step = StepCommit::new("b");
        step.context = Some((from, format!("{{\"tag\":\"{tag}\"}}").into_bytes()));
        step
    };
    // Another step changes the context first: version v + 1.
    let other = change(v, "other");
    let outcome = backend.commit(&leased[0].lease, &other).await.unwrap();
    assert_eq!(outcome, CommitOutcome::Committed { finished: None });
    // A batch: a change based on v (stale), then one joined onto it (based on v + 1).
    let stale = change(v, "stale");
    let joined = change(v + 1, "joined");
    let plain = StepCommit::new("b");
    let reply = backend
        .commit_batch(
            &[
                CommitItem::new(&leased[1].lease, &stale),
                CommitItem::new(&leased[2].lease, &joined),
            ],
            None,
        )
        .await
        .unwrap();
    assert!(
        matches!(reply.outcomes[0], CommitOutcome::ContextConflict { .. }),
        "a stale change is refused, got {:?}",
        reply.outcomes[0]
    );
    assert!(
        matches!(reply.outcomes[1], CommitOutcome::ContextConflict { .. }),
        "G3: a change after a refused change of its run in the same batch is refused, got {:?}",
        reply.outcomes[1]
    );
    let now = backend.load_context(&run).await.unwrap();
    assert_eq!(
        now.version,
        v + 1,
        "G3: the refused changes applied nothing"
    );
    assert_eq!(now.bytes, br#"{"tag":"other"}"#.to_vec());
    // Both steps are still leased: without a context change they commit (the last one ends
    // the run, which produced no output).
    for lease in [&leased[1].lease, &leased[2].lease] {
        let outcome = backend.commit(lease, &plain).await.unwrap();
        assert!(
            matches!(outcome, CommitOutcome::Committed { .. }),
            "a refused step is still leased and commits, got {outcome:?}"
        );
    }
}

/// A backend that counts the worker's batch commits (and delegates everything); a `deaf`
/// one never hears run changes (its waits for them last their whole timeout).
pub(super) struct Counting {
    inner: Arc<dyn Backend>,
    commits: AtomicUsize,
    steps: AtomicUsize,
    applied: AtomicUsize,
    largest: AtomicUsize,
    taken: AtomicUsize,
    largest_take: AtomicUsize,
    released: AtomicUsize,
    /// How long the next commit call waits before it goes (ms, 0 for none).
    delay_next: std::sync::atomic::AtomicU64,
    /// How long every commit call waits before it goes (ms, 0 for none).
    delay_each: std::sync::atomic::AtomicU64,
    deaf: bool,
    /// Whether the inner backend's chains show through (else the worker runs no chains).
    chains: bool,
    /// The next call that leases items tells the first and waits for the second before it
    /// answers (see [`Counting::hold_next_take`]).
    take_hold: std::sync::Mutex<Option<TakeHold>>,
}

/// A take held before its answer: it tells `took`, then waits for `go`.
type TakeHold = (
    tokio::sync::oneshot::Sender<()>,
    tokio::sync::oneshot::Receiver<()>,
);

impl Counting {
    /// Counts the calls to `inner`.
    pub(super) fn over(inner: Arc<dyn Backend>, deaf: bool) -> Self {
        Counting {
            inner,
            commits: AtomicUsize::new(0),
            steps: AtomicUsize::new(0),
            applied: AtomicUsize::new(0),
            largest: AtomicUsize::new(0),
            taken: AtomicUsize::new(0),
            largest_take: AtomicUsize::new(0),
            released: AtomicUsize::new(0),
            delay_next: std::sync::atomic::AtomicU64::new(0),
            delay_each: std::sync::atomic::AtomicU64::new(0),
            deaf,
            chains: false,
            take_hold: std::sync::Mutex::new(None),
        }
    }

    /// Counts the calls to `inner`, whose chains show through.
    pub(super) fn chaining(inner: Arc<dyn Backend>) -> Self {
        Counting {
            chains: true,
            ..Counting::over(inner, false)
        }
    }

    /// Makes the next commit call wait `delay` before it goes (a slow backend).
    pub(super) fn delay_next_commit(&self, delay: Duration) {
        self.delay_next
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Makes every commit call wait `delay` before it goes (a slow backend).
    pub(super) fn delay_each_commit(&self, delay: Duration) {
        self.delay_each
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Holds the next call that leases items before it answers: the first receiver hears when
    /// it has leased them, and the call answers once the sender is used (or dropped).
    pub(super) fn hold_next_take(
        &self,
    ) -> (
        tokio::sync::oneshot::Receiver<()>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let (took, heard) = tokio::sync::oneshot::channel();
        let (go, wait) = tokio::sync::oneshot::channel();
        *self
            .take_hold
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((took, wait));
        (heard, go)
    }

    /// Waits as [`hold_next_take`](Self::hold_next_take) asked, when `n` items were leased.
    async fn held_take(&self, n: usize) {
        if n == 0 {
            return;
        }
        let hold = self
            .take_hold
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some((took, wait)) = hold {
            let _ = took.send(());
            let _ = wait.await;
        }
    }

    /// The items take calls and commit calls leased so far.
    pub(super) fn taken(&self) -> usize {
        self.taken.load(Ordering::SeqCst)
    }

    /// The most items one take call leased.
    pub(super) fn largest_take(&self) -> usize {
        self.largest_take.load(Ordering::SeqCst)
    }

    /// The most steps one commit call carried.
    pub(super) fn largest(&self) -> usize {
        self.largest.load(Ordering::SeqCst)
    }

    /// Commit calls and the steps they carried so far (a step sent again after its lease was
    /// lost, as a loaded machine may make it, counts again).
    pub(super) fn counts(&self) -> (usize, usize) {
        (
            self.commits.load(Ordering::SeqCst),
            self.steps.load(Ordering::SeqCst),
        )
    }

    /// The steps the backend answered as applied so far: each item's once, however often it
    /// was sent.
    pub(super) fn applied(&self) -> usize {
        self.applied.load(Ordering::SeqCst)
    }

    /// The steps applied once at least `n` are (or [`PATIENCE`] has passed): a run is seen
    /// complete before the worker's commit call that completed it has returned here.
    pub(super) async fn applied_once(&self, n: usize) -> usize {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.applied() < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.applied()
    }

    /// Items released unfinished so far.
    pub(super) fn released(&self) -> usize {
        self.released.load(Ordering::SeqCst)
    }

    fn count_taken(&self, n: usize) {
        self.taken.fetch_add(n, Ordering::SeqCst);
        self.largest_take.fetch_max(n, Ordering::SeqCst);
    }
}

#[async_trait]
impl WorkerBackend for Counting {
    fn keeps_successors(&self) -> bool {
        self.chains && self.inner.keeps_successors()
    }
    async fn take_batch(
        &self,
        take: TakeRequest<'_>,
        wait: Duration,
    ) -> Result<Vec<Taken>, DistributedError> {
        let taken = self.inner.take_batch(take, wait).await?;
        self.count_taken(taken.len());
        self.held_take(taken.len()).await;
        Ok(taken)
    }
    async fn heartbeat(&self, lease: &Lease, t: Duration) -> Result<LeaseState, DistributedError> {
        self.inner.heartbeat(lease, t).await
    }
    async fn load_context(&self, run_id: &str) -> Result<VersionedContext, DistributedError> {
        self.inner.load_context(run_id).await
    }
    async fn commit_batch(
        &self,
        commits: &[CommitItem<'_>],
        next: Option<TakeRequest<'_>>,
    ) -> Result<CommitReply, DistributedError> {
        self.commits.fetch_add(1, Ordering::SeqCst);
        let delay =
            self.delay_next.swap(0, Ordering::SeqCst) + self.delay_each.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        self.steps.fetch_add(commits.len(), Ordering::SeqCst);
        self.largest.fetch_max(commits.len(), Ordering::SeqCst);
        let reply = self.inner.commit_batch(commits, next).await?;
        let applied = reply
            .outcomes
            .iter()
            .filter(|o| matches!(o, CommitOutcome::Committed { .. }))
            .count();
        self.applied.fetch_add(applied, Ordering::SeqCst);
        self.count_taken(reply.taken.len());
        self.held_take(reply.taken.len()).await;
        Ok(reply)
    }
    async fn fail(&self, lease: &Lease, f: &StepFailed) -> Result<CommitOutcome, DistributedError> {
        self.inner.fail(lease, f).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), DistributedError> {
        self.released.fetch_add(1, Ordering::SeqCst);
        self.inner.release(lease).await
    }
    async fn wait_run_change(&self, run_id: &str, timeout: Duration) {
        if self.deaf {
            tokio::time::sleep(timeout).await;
        } else {
            self.inner.wait_run_change(run_id, timeout).await
        }
    }
}

#[async_trait]
impl AdminBackend for Counting {
    async fn start_run(&self, start: StartRun) -> Result<RunId, DistributedError> {
        self.inner.start_run(start).await
    }
    async fn run_info(&self, run_id: &str) -> Result<RunInfo, DistributedError> {
        self.inner.run_info(run_id).await
    }
    async fn list_runs(&self, s: Option<RunStatus>) -> Result<Vec<RunInfo>, DistributedError> {
        self.inner.list_runs(s).await
    }
    async fn control(&self, run_id: &str, a: RunAction) -> Result<RunInfo, DistributedError> {
        self.inner.control(run_id, a).await
    }
    fn watch_runs(&self) -> RunWatch {
        self.inner.watch_runs()
    }
    fn watch_run(&self, run_id: &str) -> RunWatch {
        self.inner.watch_run(run_id)
    }
    async fn errors(&self, run_id: &str) -> Result<Vec<WorkflowError>, DistributedError> {
        self.inner.errors(run_id).await
    }
    async fn metrics(&self, run_id: &str) -> Result<RunMetrics, DistributedError> {
        self.inner.metrics(run_id).await
    }
    async fn work_items(&self, run_id: &str) -> Result<Vec<WorkItemInfo>, DistributedError> {
        self.inner.work_items(run_id).await
    }
    async fn pending_items(&self, run_id: &str) -> Result<Vec<Vec<u8>>, DistributedError> {
        self.inner.pending_items(run_id).await
    }
    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, DistributedError> {
        self.inner.dead_letters().await
    }
    async fn requeue_dead_letter(&self, run: &str, item: ItemId) -> Result<(), DistributedError> {
        self.inner.requeue_dead_letter(run, item).await
    }
    async fn drop_dead_letter(&self, run: &str, item: ItemId) -> Result<(), DistributedError> {
        self.inner.drop_dead_letter(run, item).await
    }
    async fn report_worker(&self, health: &WorkerHealth) -> Result<(), DistributedError> {
        self.inner.report_worker(health).await
    }
    async fn workers(&self) -> Result<Vec<WorkerHealth>, DistributedError> {
        self.inner.workers().await
    }
    async fn register_graph(&self, graph: &WorkflowGraph) -> Result<(), DistributedError> {
        self.inner.register_graph(graph).await
    }
    async fn graphs(&self) -> Result<Vec<RegisteredGraph>, DistributedError> {
        self.inner.graphs().await
    }
}

/// G4: a worker with queued work takes and commits batches (never more than its slots); a
/// lone run is committed step by step, without waiting to fill a batch.
pub async fn g4_a_worker_batches_queued_work<B: Backend>(backend: B) {
    let counting = Arc::new(Counting::over(Arc::new(backend), false));
    let backend: Arc<dyn Backend> = counting.clone();
    let wf = Chain::new(Gate::open());
    let o = orchestrator(wf.clone(), &backend);
    let worker = WorkerBuilder::<Chain, Trace>::new()
        .workflow(wf.clone())
        .backend_arc(Arc::clone(&backend))
        .lease_timeout(LEASE)
        .heartbeat_interval(LEASE / 4)
        .idle_sleep_duration(Duration::from_millis(50))
        .concurrency(8)
        .build()
        .expect("conformance: worker builds");

    // A lone run, with an idle worker waiting.
    let mut pool = WorkerPool::new(worker.clone(), 1).with_grace_period(Duration::from_millis(200));
    pool.start();
    let lone = o.start_run(&ctx(), 0).await.unwrap();
    assert_eq!(finish(&o, &lone).await.status, RunStatus::Completed);
    assert_eq!(
        counting.largest.load(Ordering::SeqCst),
        1,
        "G4: a lone run's steps are committed one by one, as they finish"
    );
    assert_eq!(counting.applied_once(3).await, 3);
    pool.try_stop().await.unwrap();

    // 40 runs queued before the worker starts.
    let mut runs = Vec::new();
    for i in 0..40 {
        runs.push(o.start_run(&ctx(), i).await.unwrap());
    }
    let (commits0, steps0, applied0) = (
        counting.commits.load(Ordering::SeqCst),
        counting.steps.load(Ordering::SeqCst),
        counting.applied(),
    );
    let mut pool = WorkerPool::new(worker, 1).with_grace_period(Duration::from_millis(200));
    pool.start();
    for run in &runs {
        assert_eq!(finish(&o, run).await.status, RunStatus::Completed);
    }
    pool.try_stop().await.unwrap();
    let commits = counting.commits.load(Ordering::SeqCst) - commits0;
    let steps = counting.steps.load(Ordering::SeqCst) - steps0;
    assert_eq!(
        counting.applied() - applied0,
        120,
        "every step committed once"
    );
    assert!(
        commits < steps,
        "G4: a worker with queued work commits batches: {commits} commits for {steps} steps"
    );
    assert!(
        counting.largest.load(Ordering::SeqCst) > 1,
        "G4: some commit carried several steps"
    );
    assert!(
        counting.largest.load(Ordering::SeqCst) <= 8 && counting.largest_take.load(Ordering::SeqCst) <= 8,
        "G4: a worker never takes or commits more than its 8 slots (largest commit {}, largest take {})",
        counting.largest.load(Ordering::SeqCst),
        counting.largest_take.load(Ordering::SeqCst)
    );
    for run in &runs {
        let trace = o.context(run).await.unwrap();
        assert_eq!(trace.events.len(), 3, "each step's effects applied once");
    }
}
