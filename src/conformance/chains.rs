//! Chains: a worker runs a step's single successor before the step is committed and commits
//! both together, the step's commit leasing the successor to it ("kept"). The checks at the
//! level of the backend apply to backends that keep successors
//! ([`WorkerBackend::keeps_successors`]); the others check that a worker on any backend keeps
//! every guarantee with chains (where the backend has them) as without.

use std::sync::Arc;
use std::time::Duration;

use super::batch::Counting;
use super::{ctx, finish, orchestrator, worker_builder, Chain, Gate, Trace, LEASE, PATIENCE};
use crate::distributed::*;
use crate::*;

fn options(lease_timeout: Duration) -> TakeOptions {
    TakeOptions {
        lease_timeout,
        max_deliveries: 5,
    }
}

/// The commit of a step of `node` with one successor `next` of node `next_node`.
fn step_with(node: &str, next: ItemId, next_node: &str) -> StepCommit {
    let mut step = StepCommit::new(node);
    step.successors
        .push(NewItem::new(next, next_node, b"2".to_vec()));
    step
}

/// The last step of a chain: no successor, the run's output.
fn last_step(node: &str) -> StepCommit {
    let mut step = StepCommit::new(node);
    step.outputs.push(serde_json::json!(3));
    step
}

/// The kept lease of item `item` of `run` held by `holder` (see `CommitItem::keep_successor`).
fn kept_lease(run: &RunId, item: ItemId, holder: &WorkerId) -> Lease {
    Lease::new(run.clone(), item, KEPT_LEASE_TOKEN, holder.clone())
}

/// Starts a `Chain` run and leases its first item to `me`.
async fn first_item(backend: &Arc<dyn Backend>, me: &WorkerId) -> (RunId, Taken) {
    let wf = Chain::new(Gate::open());
    let o = orchestrator(wf.clone(), backend);
    let run = o.start_run(&ctx(), 0).await.unwrap();
    let taken = backend
        .take(wf.name(), me, options(PATIENCE), PATIENCE)
        .await
        .unwrap()
        .expect("the run's first item is ready");
    assert_eq!(taken.lease.run_id, run);
    (run, taken)
}

/// Starts a `Chain` run, leases its first item `a` to `me` and commits it keeping its successor
/// `b` for `lease` (with a take of up to 4 items for `me` when `take`): the run, `b` and the
/// commit's reply (its one step committed).
async fn a_keeping_b(
    backend: &Arc<dyn Backend>,
    me: &WorkerId,
    lease: Duration,
    take: bool,
) -> (RunId, ItemId, CommitReply) {
    let (run, a) = first_item(backend, me).await;
    let b = a.lease.item_id.child(0);
    let step_a = step_with("a", b, "b");
    let next = take.then(|| TakeRequest::new("Chain", me, options(PATIENCE)).with_max(4));
    let reply = backend
        .commit_batch(
            &[CommitItem::new(&a.lease, &step_a).with_successor_kept(lease)],
            next,
        )
        .await
        .unwrap();
    assert_eq!(
        reply.outcomes,
        vec![CommitOutcome::Committed { finished: None }]
    );
    (run, b, reply)
}

/// G2 with chains: a kept successor is leased to the worker that committed its parent (not
/// handed to it again, nor to anyone else), shows as in progress under that worker, commits
/// only under that worker's kept lease (in a later call), and its own kept successor commits
/// in the same way, completing the run.
pub async fn g2_a_kept_successor_is_leased_to_its_committer<B: Backend>(backend: B) {
    if !backend.keeps_successors() {
        return;
    }
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let me = WorkerId::from("chainer");
    let other = WorkerId::from("other");
    let (run, b, reply) = a_keeping_b(&backend, &me, PATIENCE, true).await;
    assert!(
        reply.taken.is_empty(),
        "a kept successor is not handed over in the reply: {:?}",
        reply.taken
    );
    let take = TakeRequest::new("Chain", &other, options(PATIENCE));
    assert!(
        backend
            .take_batch(take, Duration::ZERO)
            .await
            .unwrap()
            .is_empty(),
        "a kept successor is not queued for other workers"
    );
    let items = backend.work_items(&run).await.unwrap();
    let kept = items
        .iter()
        .find(|i| i.item_id == b)
        .expect("the kept successor is stored");
    assert_eq!(kept.status, WorkItemStatus::InProgress);
    assert_eq!(kept.worker.as_ref(), Some(&me));
    assert_eq!((kept.attempt, kept.deliveries), (1, 1));

    let c = b.child(0);
    let step_b = step_with("b", c, "c");
    let stolen = kept_lease(&run, b, &other);
    assert_eq!(
        backend.commit(&stolen, &step_b).await.unwrap(),
        CommitOutcome::LeaseLost,
        "G2: a kept lease is its holder's only"
    );
    assert_eq!(
        backend.heartbeat(&stolen, PATIENCE).await.unwrap(),
        LeaseState::Lost,
        "G2: a kept lease is renewed by its holder only"
    );
    let failure = StepFailed::new("b", "not mine", None);
    assert_eq!(
        backend.fail(&stolen, &failure).await.unwrap(),
        CommitOutcome::LeaseLost,
        "G2: a kept lease's item is failed by its holder only"
    );
    backend.release(&stolen).await.unwrap();
    let lease_b = kept_lease(&run, b, &me);
    assert!(
        matches!(
            backend.heartbeat(&lease_b, PATIENCE).await.unwrap(),
            LeaseState::Active(_)
        ),
        "the holder's kept lease survives the others' attempts"
    );
    let reply = backend
        .commit_batch(
            &[CommitItem::new(&lease_b, &step_b).with_successor_kept(PATIENCE)],
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        reply.outcomes,
        vec![CommitOutcome::Committed { finished: None }]
    );
    let lease_c = kept_lease(&run, c, &me);
    assert_eq!(
        backend.commit(&lease_c, &last_step("c")).await.unwrap(),
        CommitOutcome::Committed {
            finished: Some(RunStatus::Completed)
        }
    );
    let info = backend.run_info(&run).await.unwrap();
    assert_eq!(info.status, RunStatus::Completed);
    assert_eq!(info.output, Some(serde_json::json!(3)));
    let metrics = backend.metrics(&run).await.unwrap();
    assert_eq!((metrics.completed, metrics.total_work_items), (3, 3));
}

/// G2 with chains: a chain's steps commit in one call, each on its own: when the first is
/// refused (a forged lease), its chained successor is refused with it and nothing of either
/// is applied; the real chain then commits whole and completes the run.
pub async fn g2_a_chain_commits_in_one_call<B: Backend>(backend: B) {
    if !backend.keeps_successors() {
        return;
    }
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let me = WorkerId::from("chainer");
    let (run, a) = first_item(&backend, &me).await;
    let (b, c) = (a.lease.item_id.child(0), a.lease.item_id.child(0).child(0));
    let (step_a, step_b, step_c) = (
        step_with("a", b, "b"),
        step_with("b", c, "c"),
        last_step("c"),
    );
    let lease_b = kept_lease(&run, b, &me);
    let lease_c = kept_lease(&run, c, &me);

    let forged = Lease::new(
        run.clone(),
        a.lease.item_id,
        a.lease.token + 1000,
        me.clone(),
    );
    let reply = backend
        .commit_batch(
            &[
                CommitItem::new(&forged, &step_a).with_successor_kept(PATIENCE),
                CommitItem::new(&lease_b, &step_b),
            ],
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        reply.outcomes,
        vec![CommitOutcome::LeaseLost, CommitOutcome::LeaseLost],
        "G2: a chained step whose parent is refused is refused too"
    );
    let items = backend.work_items(&run).await.unwrap();
    assert!(
        items.iter().all(|i| i.item_id != b),
        "G2: a refused step's successor is not stored: {items:?}"
    );

    let reply = backend
        .commit_batch(
            &[
                CommitItem::new(&a.lease, &step_a).with_successor_kept(PATIENCE),
                CommitItem::new(&lease_b, &step_b).with_successor_kept(PATIENCE),
                CommitItem::new(&lease_c, &step_c),
            ],
            Some(TakeRequest::new("Chain", &me, options(PATIENCE)).with_max(4)),
        )
        .await
        .unwrap();
    assert_eq!(
        reply.outcomes,
        vec![
            CommitOutcome::Committed { finished: None },
            CommitOutcome::Committed { finished: None },
            CommitOutcome::Committed {
                finished: Some(RunStatus::Completed)
            },
        ]
    );
    assert!(reply.taken.is_empty(), "nothing is left to take");
    let info = backend.run_info(&run).await.unwrap();
    assert_eq!(info.status, RunStatus::Completed);
    assert_eq!(info.output, Some(serde_json::json!(3)));
    let metrics = backend.metrics(&run).await.unwrap();
    assert_eq!((metrics.completed, metrics.total_work_items), (3, 3));
    for node in ["a", "b", "c"] {
        assert_eq!(
            metrics.per_node.get(node).map(|t| t.count),
            Some(1),
            "{node}"
        );
    }
}

/// G2 with chains: a chain refused after its first step (the second relied on a context
/// version the run is not at) keeps what was applied and nothing more: the first step is
/// committed, its kept successor stored and leased to the worker (in the step history too),
/// the successor's own successor not stored; the run goes on, and completes once the
/// successor and its successor commit.
pub async fn g2_a_chain_refused_midway_keeps_its_first_step<B: Backend>(backend: B) {
    if !backend.keeps_successors() {
        return;
    }
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let me = WorkerId::from("chainer");
    let (run, a) = first_item(&backend, &me).await;
    let (b, c) = (a.lease.item_id.child(0), a.lease.item_id.child(0).child(0));
    let step_a = step_with("a", b, "b");
    let mut stale_b = step_with("b", c, "c");
    stale_b.require_version = Some(41);
    let step_c = last_step("c");
    let lease_b = kept_lease(&run, b, &me);
    let lease_c = kept_lease(&run, c, &me);
    // The whole chain, as a worker sends it: were every step applied, it would complete the run.
    let reply = backend
        .commit_batch(
            &[
                CommitItem::new(&a.lease, &step_a).with_successor_kept(PATIENCE),
                CommitItem::new(&lease_b, &stale_b).with_successor_kept(PATIENCE),
                CommitItem::new(&lease_c, &step_c),
            ],
            None,
        )
        .await
        .unwrap();
    assert!(
        matches!(
            reply.outcomes.as_slice(),
            [
                CommitOutcome::Committed { finished: None },
                CommitOutcome::ContextConflict { .. },
                CommitOutcome::LeaseLost,
            ]
        ),
        "{:?}",
        reply.outcomes
    );
    assert_eq!(
        backend.run_info(&run).await.unwrap().status,
        RunStatus::Running
    );
    let items = backend.work_items(&run).await.unwrap();
    let status = |id: ItemId| {
        items
            .iter()
            .find(|i| i.item_id == id)
            .map(|i| (i.status, i.worker.clone()))
    };
    assert_eq!(
        status(a.lease.item_id).map(|s| s.0),
        Some(WorkItemStatus::Completed),
        "{items:?}"
    );
    assert_eq!(
        status(b),
        Some((WorkItemStatus::InProgress, Some(me.clone()))),
        "the kept successor is leased to its committer: {items:?}"
    );
    assert_eq!(status(c), None, "a refused step's successor is not stored");
    if let Some(history) = backend.step_history(&run).await.unwrap() {
        let mut seen: Vec<(&str, ItemId)> =
            history.iter().map(|e| (e.kind.name(), e.item_id)).collect();
        seen.sort();
        let mut expected = vec![
            ("committed", a.lease.item_id),
            ("leased", a.lease.item_id),
            ("leased", b),
        ];
        expected.sort();
        assert_eq!(seen, expected, "{history:#?}");
    }

    let reply = backend
        .commit_batch(
            &[
                CommitItem::new(&lease_b, &step_with("b", c, "c")).with_successor_kept(PATIENCE),
                CommitItem::new(&lease_c, &step_c),
            ],
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        reply.outcomes,
        vec![
            CommitOutcome::Committed { finished: None },
            CommitOutcome::Committed {
                finished: Some(RunStatus::Completed)
            },
        ]
    );
    let metrics = backend.metrics(&run).await.unwrap();
    assert_eq!((metrics.completed, metrics.total_work_items), (3, 3));
}

/// G1 with chains: a kept successor whose worker died (it never commits it) is handed to
/// another worker once its lease expires, as a second delivery; the dead worker's kept lease
/// is fenced out.
pub async fn g1_a_kept_successor_of_a_dead_worker_is_rerun<B: Backend>(backend: B) {
    if !backend.keeps_successors() {
        return;
    }
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let me = WorkerId::from("doomed");
    let (run, b, _) = a_keeping_b(&backend, &me, LEASE, false).await;
    let heir = WorkerId::from("heir");
    let again = backend
        .take("Chain", &heir, options(PATIENCE), PATIENCE)
        .await
        .unwrap()
        .expect("G1: the kept successor comes back once its lease expired");
    assert_eq!(
        (again.lease.run_id.as_str(), again.lease.item_id),
        (run.as_str(), b)
    );
    assert_eq!((again.attempt, again.deliveries), (1, 2));
    assert!(again.lease.token > KEPT_LEASE_TOKEN);
    let dead = kept_lease(&run, b, &me);
    let step_b = step_with("b", b.child(0), "c");
    assert_eq!(
        backend.commit(&dead, &step_b).await.unwrap(),
        CommitOutcome::LeaseLost,
        "G2: the dead worker's kept lease no longer commits"
    );
    assert!(matches!(
        backend.commit(&again.lease, &step_b).await.unwrap(),
        CommitOutcome::Committed { .. }
    ));
    backend.control(&run, RunAction::Cancel).await.unwrap();
}

/// A worker over `backend` with `concurrency` slots and a retry policy.
fn chaining_worker(
    wf: Chain,
    backend: &Arc<dyn Backend>,
    concurrency: usize,
) -> DistributedWorker<Chain, Trace> {
    worker_builder(wf, backend)
        .concurrency(concurrency)
        .retry_policy(RetryPolicy::new(
            3,
            Duration::from_millis(10),
            Duration::from_millis(10),
            BackoffStrategy::Linear,
            RetryError::All,
        ))
        .build()
        .expect("conformance: worker builds")
}

/// Runs one run of `wf` to completion (a worker learns which of its nodes are fast).
async fn warm_up(o: &DistributedOrchestrator<Chain, Trace>) {
    let run = o.start_run(&ctx(), 100).await.unwrap();
    assert_eq!(finish(o, &run).await.status, RunStatus::Completed);
}

/// A `Chain` whose `b` passes through the returned gate, with one worker of `slots` slots that
/// has run it once (so it chains `b` and `c` from now on).
async fn warmed_up(
    backend: &Arc<dyn Backend>,
    slots: usize,
) -> (
    Gate,
    DistributedOrchestrator<Chain, Trace>,
    WorkerPool<Chain, Trace>,
) {
    let gate = Gate::open();
    let wf = Chain::new(gate.clone());
    let o = orchestrator(wf.clone(), backend);
    let mut pool = WorkerPool::new(chaining_worker(wf, backend, slots), 1)
        .with_grace_period(Duration::from_millis(200));
    pool.start();
    warm_up(&o).await;
    (gate, o, pool)
}

/// Asserts that each node of `run` (started with 0) was applied once.
async fn each_node_once(o: &DistributedOrchestrator<Chain, Trace>, run: &str) {
    let trace = o.context(run).await.unwrap();
    for event in ["a:0", "b:1", "c:2"] {
        assert_eq!(trace.count(event), 1, "{event}: {:?}", trace.events);
    }
}

/// A `Chain` workflow on `backend` behind a call counter (its chains show through), with one
/// chaining worker of 8 slots that has run one run (so it chains `b` and `c` from now on).
async fn counted_and_warm<B: Backend>(
    backend: B,
) -> (
    Arc<Counting>,
    DistributedOrchestrator<Chain, Trace>,
    WorkerPool<Chain, Trace>,
) {
    let counting = Arc::new(Counting::chaining(Arc::new(backend)));
    let backend: Arc<dyn Backend> = counting.clone();
    let (_, o, pool) = warmed_up(&backend, 8).await;
    (counting, o, pool)
}

/// G4 with chains: a worker runs a node it has not run yet only once its item is stored (a
/// first run is one commit per step); once it knows the nodes finish without waiting, a lone
/// run is one commit call on a backend that keeps successors (one per step on the others),
/// every step applied once; queued runs are committed in far fewer calls than steps.
pub async fn g4_a_chain_of_fast_steps_is_one_commit<B: Backend>(backend: B) {
    let chains = backend.keeps_successors();
    let (counting, o, mut pool) = counted_and_warm(backend).await;
    assert_eq!(
        counting.counts(),
        (3, 3),
        "nodes a worker has not run yet are not chained"
    );
    let lone = o.start_run(&ctx(), 0).await.unwrap();
    assert_eq!(finish(&o, &lone).await.status, RunStatus::Completed);
    let (commits, steps) = counting.counts();
    assert_eq!(steps, 6, "every step committed once");
    assert_eq!(
        commits,
        if chains { 4 } else { 6 },
        "a lone run's fast steps are committed together where the backend keeps successors"
    );
    each_node_once(&o, &lone).await;
    let mut runs = Vec::new();
    for i in 0..20 {
        runs.push(o.start_run(&ctx(), i).await.unwrap());
    }
    for run in &runs {
        assert_eq!(finish(&o, run).await.status, RunStatus::Completed);
        assert_eq!(o.metrics(run).await.unwrap().completed, 3);
    }
    pool.try_stop().await.unwrap();
    let (commits, steps) = counting.counts();
    assert_eq!(steps, 66, "every step committed once");
    assert!(commits < 66, "{commits} commits for 66 steps");
}

/// G4 with chains: a worker draining a backlog of runs whose steps it chains takes only what
/// it can run. A chain's steps hold one slot while they wait for their commit, so the items
/// a commit takes for the slots it frees are all started, none given back unstarted.
pub async fn g4_a_worker_draining_chains_gives_nothing_back<B: Backend>(backend: B) {
    let (counting, o, mut pool) = counted_and_warm(backend).await;
    let mut runs = Vec::new();
    for i in 0..300 {
        runs.push(o.start_run(&ctx(), i).await.unwrap());
    }
    for run in &runs {
        assert_eq!(finish(&o, run).await.status, RunStatus::Completed);
    }
    pool.try_stop().await.unwrap();
    let (_, steps) = counting.counts();
    assert_eq!(steps, 903, "every step committed once");
    assert_eq!(
        counting.released(),
        0,
        "a worker gave back items it took for slots it did not have"
    );
}

/// G4 with chains: a commit carries a batch of chains, not of steps. A worker of
/// `MAX_BATCH` slots that took a full batch of three-step runs it chains commits more than
/// `MAX_BATCH` steps in one call (never more than `MAX_COMMIT_STEPS`), every step applied
/// once. (Spread over many partitions, a backlog this small never fills
/// a take: only the bound is checked then.)
pub async fn g4_a_commit_carries_a_batch_of_chains<B: Backend>(backend: B) {
    let counting = Arc::new(Counting::chaining(Arc::new(backend)));
    let backend: Arc<dyn Backend> = counting.clone();
    let wf = Chain::new(Gate::open());
    let o = orchestrator(wf.clone(), &backend);
    let worker = chaining_worker(wf, &backend, MAX_BATCH);
    let mut pool = WorkerPool::new(worker.clone(), 1).with_grace_period(Duration::from_millis(200));
    pool.start();
    warm_up(&o).await;
    pool.try_stop().await.unwrap();
    let mut runs = Vec::new();
    for i in 0..200 {
        runs.push(o.start_run(&ctx(), i).await.unwrap());
    }
    let mut pool = WorkerPool::new(worker, 1).with_grace_period(Duration::from_millis(200));
    pool.start();
    for run in &runs {
        assert_eq!(finish(&o, run).await.status, RunStatus::Completed);
    }
    pool.try_stop().await.unwrap();
    let (_, steps) = counting.counts();
    assert_eq!(steps, 603, "every step committed once");
    let (largest, largest_take) = (counting.largest(), counting.largest_take());
    assert!(
        largest <= MAX_COMMIT_STEPS,
        "the largest commit carried {largest} steps"
    );
    if largest_take == MAX_BATCH {
        assert!(
            largest > MAX_BATCH,
            "after a full take, the largest commit carried {largest} steps"
        );
    }
}

/// G5 with chains: a chained step (its node ran fast before) that fails reports its failure
/// once its parent is committed: the retry is scheduled as usual, the node runs exactly as
/// often as without a chain (one failure, one success), and the run completes.
pub async fn g5_a_chained_step_that_fails_is_retried<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let (gate, o, mut pool) = warmed_up(&backend, 4).await;
    gate.fail_first
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let run = o.start_run(&ctx(), 0).await.unwrap();
    let info = finish(&o, &run).await;
    pool.try_stop().await.unwrap();
    assert_eq!(info.status, RunStatus::Completed, "{info:?}");
    assert_eq!(
        gate.executions(),
        3,
        "b ran once to warm up, failed once, then succeeded"
    );
    let metrics = o.metrics(&run).await.unwrap();
    assert_eq!(
        (metrics.completed, metrics.failed, metrics.retries),
        (3, 1, 1)
    );
    let errors = o.errors(&run).await.unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!((errors[0].node.as_str(), errors[0].attempt), ("b", 1));
    each_node_once(&o, &run).await;
}

/// G7 with chains: a chained step (its node ran fast before) that now waits long does not hold
/// back its parent's commit: the parent is committed (observable in the run's metrics and
/// items) while the successor runs, under its own lease and named by the worker's liveness;
/// once released, the run completes with every node executed once.
pub async fn g7_a_slow_chained_step_lets_its_parent_commit<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let (gate, o, mut pool) = warmed_up(&backend, 4).await;
    gate.hold_first
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let run = o.start_run(&ctx(), 0).await.unwrap();
    let waited = tokio::time::Instant::now();
    loop {
        let metrics = o.metrics(&run).await.unwrap();
        if gate.executions() == 2 && metrics.completed == 1 {
            break;
        }
        assert!(
            waited.elapsed() < PATIENCE,
            "a's commit did not come while b runs: {metrics:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let items = o.list_work_items(&run).await.unwrap();
    let b = items
        .iter()
        .find(|i| i.node == "b")
        .expect("b is stored once a is committed");
    assert_eq!(b.status, WorkItemStatus::InProgress, "{items:?}");
    let b = b.item_id;
    loop {
        let workers = o.liveness().await.unwrap();
        if workers.iter().any(|w| w.current_work_item == Some(b)) {
            break;
        }
        assert!(
            waited.elapsed() < PATIENCE,
            "G7: liveness does not name the chained step's item: {workers:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Lease renewals keep b alive past its lease while it is held.
    tokio::time::sleep(LEASE * 2).await;
    assert_eq!(
        gate.executions(),
        2,
        "b is not delivered again while it runs"
    );
    gate.release();
    let info = finish(&o, &run).await;
    pool.try_stop().await.unwrap();
    assert_eq!(info.status, RunStatus::Completed);
    assert_eq!(gate.executions(), 2);
    each_node_once(&o, &run).await;
    let reclaimed = o.metrics(&run).await.unwrap().reclaimed;
    assert_eq!(reclaimed, 0, "no lease expired");
}
