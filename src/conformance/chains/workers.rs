//! Chains seen from a worker: on any backend, a worker that chains fast steps keeps every
//! guarantee it keeps without (and commits a chain as one step where the backend keeps
//! successors).

use std::sync::Arc;
use std::time::Duration;

use super::super::batch::Counting;
use super::super::{
    ctx, finish, orchestrator, quick_retries, worker_builder, Chain, Gate, Trace, LEASE, PATIENCE,
};
use crate::distributed::*;

/// A worker over `backend` with `concurrency` slots and a retry policy.
fn chaining_worker(
    wf: Chain,
    backend: &Arc<dyn Backend>,
    concurrency: usize,
) -> DistributedWorker<Chain, Trace> {
    worker_builder(wf, backend)
        .concurrency(concurrency)
        .retry_policy(quick_retries())
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
    // A lone run. A chain also ends at its time limit (2 ms), which a busy machine can pass by
    // preempting the worker mid-chain: up to five lone runs are tried for one in one call.
    let (mut lone_runs, mut one_call) = (0, false);
    while lone_runs < 5 && !one_call {
        let (before, _) = counting.counts();
        let lone = o.start_run(&ctx(), 0).await.unwrap();
        assert_eq!(finish(&o, &lone).await.status, RunStatus::Completed);
        each_node_once(&o, &lone).await;
        lone_runs += 1;
        let applied = counting.applied_once(3 + 3 * lone_runs).await;
        let (commits, _) = counting.counts();
        assert_eq!(applied, 3 + 3 * lone_runs, "every step committed once");
        if chains {
            one_call = commits - before == 1;
        } else {
            assert_eq!(
                commits - before,
                3,
                "one commit per step without kept successors"
            );
            one_call = true;
        }
    }
    assert!(
        one_call,
        "a lone run's fast steps are committed together where the backend keeps successors"
    );
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
    assert_eq!(
        counting.applied(),
        63 + 3 * lone_runs,
        "every step committed once"
    );
    assert!(commits < steps, "{commits} commits for {steps} steps");
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
    assert_eq!(counting.applied(), 903, "every step committed once");
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
    assert_eq!(counting.applied(), 603, "every step committed once");
    let (largest, largest_take) = (counting.largest(), counting.largest_take());
    assert!(
        largest <= MAX_COMMIT_STEPS,
        "the largest commit carried {largest} steps"
    );
    // (A backend that keeps no successors commits each step on its own: no more than a take.)
    if largest_take == MAX_BATCH && counting.keeps_successors() {
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

/// G1/G4 with chains: chained steps that wait for their commit longer than a heartbeat
/// interval, behind their parent's slow commit, are kept: their kept leases do not exist until
/// that commit makes them, so a renewal that finds none does not end them. The run completes
/// in the next commit, with no lease left to expire and each node executed once.
pub async fn g4_chained_steps_waiting_behind_a_slow_commit_are_kept<B: Backend>(backend: B) {
    let counting = Arc::new(Counting::chaining(Arc::new(backend)));
    let backend: Arc<dyn Backend> = counting.clone();
    let (gate, o, mut pool) = warmed_up(&backend, 8).await;
    gate.hold_first
        .store(true, std::sync::atomic::Ordering::SeqCst);
    // `a`'s commit waits 2.5 heartbeat intervals (less than a lease) while `b`, held as it
    // began, goes on alone; `b` and `c` then finish while that commit is still on its way.
    counting.delay_next_commit(LEASE * 5 / 8);
    let (commits, _) = counting.counts();
    let run = o.start_run(&ctx(), 0).await.unwrap();
    let waited = tokio::time::Instant::now();
    while counting.counts().0 == commits || gate.executions() < 2 {
        assert!(
            waited.elapsed() < PATIENCE,
            "a was not committed while b runs"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    gate.release();
    assert_eq!(finish(&o, &run).await.status, RunStatus::Completed);
    pool.try_stop().await.unwrap();
    each_node_once(&o, &run).await;
    let metrics = o.metrics(&run).await.unwrap();
    assert_eq!(metrics.reclaimed, 0, "no lease expired: {metrics:?}");
    assert_eq!(gate.executions(), 2, "b ran once to warm up, then once");
}

/// G3 with chains and a slow backend: steps wait longer for their commit than a heartbeat
/// interval, so their leases are renewed while the steps chained to them wait beside them.
/// A renewal must not let a chained step's commit go ahead of its parent's and turn that
/// into a no-op: every run keeps each node's context change once, and no kept item is left
/// for its lease to expire (none is reclaimed).
pub async fn g3_chained_steps_keep_every_change_under_slow_commits<B: Backend>(backend: B) {
    let counting = Arc::new(Counting::chaining(Arc::new(backend)));
    let backend: Arc<dyn Backend> = counting.clone();
    let wf = Chain::new(Gate::open());
    let o = orchestrator(wf.clone(), &backend);
    let worker = worker_builder(wf, &backend)
        .concurrency(16)
        .lease_timeout(Duration::from_secs(10))
        .heartbeat_interval(Duration::from_millis(20))
        .build()
        .expect("conformance: worker builds");
    let mut pool = WorkerPool::new(worker, 1).with_grace_period(Duration::from_millis(200));
    pool.start();
    warm_up(&o).await;
    counting.delay_each_commit(Duration::from_millis(60));
    let mut runs = Vec::new();
    for i in 0..40 {
        runs.push((i, o.start_run(&ctx(), i).await.unwrap()));
    }
    for (i, run) in &runs {
        assert_eq!(finish(&o, run).await.status, RunStatus::Completed);
        let trace = o.context(run).await.unwrap();
        for event in [
            format!("a:{i}"),
            format!("b:{}", i + 1),
            format!("c:{}", i + 2),
        ] {
            assert_eq!(
                trace.count(&event),
                1,
                "G3: {event} was lost or doubled: {:?}",
                trace.events
            );
        }
        assert_eq!(
            o.metrics(run).await.unwrap().reclaimed,
            0,
            "G3: a kept item waited for its lease to expire"
        );
    }
    pool.try_stop().await.unwrap();
}
