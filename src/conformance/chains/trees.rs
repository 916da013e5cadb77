//! Trees: a step with several successors (a fan) keeps the first of them for its worker, who
//! runs them before the fan is committed and commits them with it. Backend checks apply to
//! backends that keep successors; the worker checks hold on every backend.

use std::sync::Arc;
use std::time::Duration;

use super::super::batch::Counting;
use super::super::{ctx, finish, orchestrator, worker_builder, Fan, Gate, Spread, Step, Trace};
use super::{first_item, kept_lease, last_step, options, LEASE, PATIENCE};
use crate::distributed::*;
use crate::*;

/// The commit of a step of `node` with successors `next` (of node `next_node`).
fn fan_step(node: &str, next: &[ItemId], next_node: &str) -> StepCommit {
    let mut step = StepCommit::new(node);
    for (n, id) in next.iter().enumerate() {
        step.successors
            .push(NewItem::new(*id, next_node, n.to_string().into_bytes()));
    }
    step
}

/// The status and holder of item `id` of `run`, as listed.
async fn listed(
    backend: &Arc<dyn Backend>,
    run: &RunId,
    id: ItemId,
) -> Option<(WorkItemStatus, Option<WorkerId>)> {
    let items = backend.work_items(run).await.unwrap();
    items
        .into_iter()
        .find(|i| i.item_id == id)
        .map(|i| (i.status, i.worker))
}

/// Asserts that `run` completed with its first output and `steps` steps (as many items), of
/// which `leaves` are `b`'s.
async fn completed_with(backend: &Arc<dyn Backend>, run: &RunId, steps: u64, leaves: u64) {
    let info = backend.run_info(run).await.unwrap();
    assert_eq!(info.status, RunStatus::Completed);
    assert_eq!(info.output, Some(serde_json::json!(3)));
    let metrics = backend.metrics(run).await.unwrap();
    assert_eq!(
        (metrics.completed, metrics.total_work_items),
        (steps, steps)
    );
    assert_eq!(metrics.per_node.get("b").map(|t| t.count), Some(leaves));
}

/// Starts a `Chain` run, leases its first item to `me` and commits it as a fan of three
/// leaves (node `b`) that keeps its first `kept` of them for `lease`: the run and the leaves.
async fn a_fan_keeping(
    backend: &Arc<dyn Backend>,
    me: &WorkerId,
    lease: Duration,
    kept: usize,
) -> (RunId, Vec<ItemId>) {
    let (run, a) = first_item(backend, me).await;
    let leaves: Vec<ItemId> = (0..3).map(|n| a.lease.item_id.child(n)).collect();
    let fan = fan_step("a", &leaves, "b");
    let reply = backend
        .commit_batch(
            &[CommitItem::new(&a.lease, &fan).with_successors_kept(lease, kept)],
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        reply.outcomes,
        vec![CommitOutcome::Committed { finished: None }]
    );
    (run, leaves)
}

/// G2 with trees: a fan that keeps its first two of three successors leases those two to its
/// worker (shown in progress under it, never queued) and queues the third for anyone; each
/// commits under its own lease, and the last completes the run.
pub async fn g2_a_fan_keeps_its_first_successors<B: Backend>(backend: B) {
    if !backend.keeps_successors() {
        return;
    }
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let me = WorkerId::from("chainer");
    let other = WorkerId::from("other");
    let (run, leaves) = a_fan_keeping(&backend, &me, PATIENCE, 2).await;
    let take = TakeRequest::new("Chain", &other, options(PATIENCE)).with_max(4);
    let taken = backend.take_batch(take, Duration::ZERO).await.unwrap();
    let ids: Vec<ItemId> = taken.iter().map(|t| t.lease.item_id).collect();
    assert_eq!(
        ids,
        vec![leaves[2]],
        "only the successors the fan does not keep are queued"
    );
    for &leaf in &leaves[..2] {
        assert_eq!(
            listed(&backend, &run, leaf).await,
            Some((WorkItemStatus::InProgress, Some(me.clone()))),
            "a kept successor is leased to the fan's worker"
        );
    }
    let (first, second) = (
        kept_lease(&run, leaves[0], &me),
        kept_lease(&run, leaves[1], &me),
    );
    let (step_0, step_1, step_2) = (last_step("b"), last_step("b"), last_step("b"));
    let reply = backend
        .commit_batch(
            &[
                CommitItem::new(&first, &step_0),
                CommitItem::new(&second, &step_1),
            ],
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        reply.outcomes,
        vec![CommitOutcome::Committed { finished: None }; 2]
    );
    assert_eq!(
        backend.commit(&taken[0].lease, &step_2).await.unwrap(),
        CommitOutcome::Committed {
            finished: Some(RunStatus::Completed)
        }
    );
    completed_with(&backend, &run, 4, 3).await;
}

/// G2 with trees: a fan and all its leaves commit in one call, each on its own. When the fan
/// is refused (a forged lease), every leaf is refused with it and none is stored; the real
/// tree then commits whole and completes the run.
pub async fn g2_a_fan_and_its_leaves_commit_in_one_call<B: Backend>(backend: B) {
    if !backend.keeps_successors() {
        return;
    }
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let me = WorkerId::from("chainer");
    let (run, a) = first_item(&backend, &me).await;
    let leaves: Vec<ItemId> = (0..3).map(|n| a.lease.item_id.child(n)).collect();
    let fan = fan_step("a", &leaves, "b");
    let leases: Vec<Lease> = leaves.iter().map(|&l| kept_lease(&run, l, &me)).collect();
    let steps: Vec<StepCommit> = leaves.iter().map(|_| last_step("b")).collect();
    let tree = |fan_lease: &Lease| -> Vec<(Lease, &StepCommit, usize)> {
        let mut tree = vec![(fan_lease.clone(), &fan, 3)];
        tree.extend(leases.iter().cloned().zip(&steps).map(|(l, s)| (l, s, 0)));
        tree
    };
    let forged = Lease::new(
        run.clone(),
        a.lease.item_id,
        a.lease.token + 1000,
        me.clone(),
    );
    let refused = tree(&forged);
    let reply = backend
        .commit_batch(&tree_items(&refused), None)
        .await
        .unwrap();
    assert_eq!(
        reply.outcomes,
        vec![CommitOutcome::LeaseLost; 4],
        "G2: the leaves of a refused fan are refused too"
    );
    for &leaf in &leaves {
        assert_eq!(
            listed(&backend, &run, leaf).await,
            None,
            "G2: a refused step's successors are not stored"
        );
    }

    let whole = tree(&a.lease);
    let take = TakeRequest::new("Chain", &me, options(PATIENCE)).with_max(4);
    let reply = backend
        .commit_batch(&tree_items(&whole), Some(take))
        .await
        .unwrap();
    let mut expected = vec![CommitOutcome::Committed { finished: None }; 3];
    expected.push(CommitOutcome::Committed {
        finished: Some(RunStatus::Completed),
    });
    assert_eq!(reply.outcomes, expected);
    assert!(reply.taken.is_empty(), "nothing is left to take");
    completed_with(&backend, &run, 4, 3).await;
}

/// The commits of a tree's steps (lease, step, successors it keeps), as a worker sends them.
fn tree_items<'a>(tree: &'a [(Lease, &StepCommit, usize)]) -> Vec<CommitItem<'a>> {
    tree.iter()
        .map(|(lease, step, kept)| {
            CommitItem::new(lease, step).with_successors_kept(PATIENCE, *kept)
        })
        .collect()
}

/// G2/G3 with trees: a tree that starts at a later item (leased by a take) commits in one call
/// whatever the order of its leaves; a leaf refused inside a tree (a context version the run
/// is not at) is refused alone, its siblings applied, and it commits later under its kept
/// lease.
pub async fn g2_a_leaf_refused_inside_a_tree_is_refused_alone<B: Backend>(backend: B) {
    if !backend.keeps_successors() {
        return;
    }
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let me = WorkerId::from("chainer");
    let (run, a) = first_item(&backend, &me).await;
    let b = a.lease.item_id.child(0);
    let reply = backend
        .commit_batch(
            &[CommitItem::new(&a.lease, &fan_step("a", &[b], "b"))],
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        reply.outcomes,
        vec![CommitOutcome::Committed { finished: None }]
    );
    let taken = backend
        .take("Chain", &me, options(PATIENCE), PATIENCE)
        .await
        .unwrap()
        .expect("b is queued");
    assert_eq!(taken.lease.item_id, b);
    let leaves: Vec<ItemId> = (0..3).map(|n| b.child(n)).collect();
    let fan = fan_step("b", &leaves, "c");
    let leases: Vec<Lease> = leaves.iter().map(|&l| kept_lease(&run, l, &me)).collect();
    let mut stale = last_step("c");
    stale.require_version = Some(41);
    let fine = last_step("c");
    // The leaves out of order, the middle one stale.
    let reply = backend
        .commit_batch(
            &[
                CommitItem::new(&taken.lease, &fan).with_successors_kept(PATIENCE, 3),
                CommitItem::new(&leases[2], &fine),
                CommitItem::new(&leases[1], &stale),
                CommitItem::new(&leases[0], &fine),
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
                CommitOutcome::Committed { finished: None },
                CommitOutcome::ContextConflict { .. },
                CommitOutcome::Committed { finished: None },
            ]
        ),
        "{:?}",
        reply.outcomes
    );
    assert_eq!(
        backend.run_info(&run).await.unwrap().status,
        RunStatus::Running
    );
    assert_eq!(
        listed(&backend, &run, leaves[1]).await,
        Some((WorkItemStatus::InProgress, Some(me.clone()))),
        "the refused leaf is still leased to the tree's worker"
    );
    assert_eq!(
        backend.commit(&leases[1], &fine).await.unwrap(),
        CommitOutcome::Committed {
            finished: Some(RunStatus::Completed)
        }
    );
    let metrics = backend.metrics(&run).await.unwrap();
    assert_eq!((metrics.completed, metrics.total_work_items), (5, 5));
    assert_eq!(metrics.per_node.get("c").map(|t| t.count), Some(3));
}

/// G1 with trees: the kept leaves of a worker that died before committing them come back,
/// each once, to another worker once their lease expires (a second delivery of the first
/// attempt), and the dead worker's kept leases are fenced out.
pub async fn g1_kept_leaves_of_a_dead_worker_are_rerun<B: Backend>(backend: B) {
    if !backend.keeps_successors() {
        return;
    }
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let me = WorkerId::from("doomed");
    let (run, leaves) = a_fan_keeping(&backend, &me, LEASE, 3).await;
    let heir = WorkerId::from("heir");
    let mut again = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while again.len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "G1: the dead worker's kept leaves did not come back: {again:?}"
        );
        let take = TakeRequest::new("Chain", &heir, options(PATIENCE)).with_max(4);
        again.extend(backend.take_batch(take, LEASE).await.unwrap());
    }
    let mut ids: Vec<ItemId> = again.iter().map(|t| t.lease.item_id).collect();
    ids.sort();
    let mut expected = leaves.clone();
    expected.sort();
    assert_eq!(ids, expected, "each kept leaf comes back once");
    for taken in &again {
        assert_eq!((taken.attempt, taken.deliveries), (1, 2));
        let dead = kept_lease(&run, taken.lease.item_id, &me);
        assert_eq!(
            backend.commit(&dead, &last_step("b")).await.unwrap(),
            CommitOutcome::LeaseLost,
            "G2: the dead worker's kept lease no longer commits"
        );
    }
    for taken in &again {
        assert!(matches!(
            backend.commit(&taken.lease, &last_step("b")).await.unwrap(),
            CommitOutcome::Committed { .. }
        ));
    }
    completed_with(&backend, &run, 4, 3).await;
}

/// A `Fan` of `n` leaves whose leaves pass through `gate`.
fn fan(n: u32, gate: Gate) -> Fan {
    Fan {
        spread: Spread { n },
        leaf: Step { name: "leaf", gate },
    }
}

/// Asserts that each leaf of `run` (a fan of `n`) was applied once.
async fn each_leaf_once(o: &DistributedOrchestrator<Fan, Trace>, run: &str, n: u32) {
    let trace = o.context(run).await.unwrap();
    for leaf in 0..n {
        let event = format!("leaf:{leaf}");
        assert_eq!(trace.count(&event), 1, "{event}: {:?}", trace.events);
    }
}

/// A pool of one worker of 8 slots running `wf` over `backend`.
fn fan_pool(wf: Fan, backend: &Arc<dyn Backend>) -> WorkerPool<Fan, Trace> {
    let worker = worker_builder(wf, backend)
        .concurrency(8)
        .build()
        .expect("conformance: worker builds");
    let mut pool = WorkerPool::new(worker, 1).with_grace_period(Duration::from_millis(200));
    pool.start();
    pool
}

/// G4 with trees: once a worker knows its leaves are fast, a lone fan and its leaves are one
/// commit call on a backend that keeps successors, every leaf applied once; a leaf that now
/// waits lets the fan commit (it is stored and in progress while it waits), the leaves after
/// it are queued, and the run completes once it is released.
pub async fn g4_a_fan_of_fast_leaves_is_one_commit<B: Backend>(backend: B) {
    let chains = backend.keeps_successors();
    let counting = Arc::new(Counting::chaining(Arc::new(backend)));
    let backend: Arc<dyn Backend> = counting.clone();
    let gate = Gate::open();
    let wf = fan(4, gate.clone());
    let o = orchestrator(wf.clone(), &backend);
    let mut pool = fan_pool(wf, &backend);
    let warm = o.start_run(&ctx(), 0).await.unwrap();
    assert_eq!(finish(&o, &warm).await.status, RunStatus::Completed);
    // A chain also ends at its time limit (2 ms), which a busy machine can pass by preempting
    // the worker: up to five lone runs are tried for one in one call.
    let (mut lone_runs, mut one_call) = (0, !chains);
    while lone_runs < 5 && !one_call {
        let (before, _) = counting.counts();
        let lone = o.start_run(&ctx(), 0).await.unwrap();
        assert_eq!(finish(&o, &lone).await.status, RunStatus::Completed);
        each_leaf_once(&o, &lone, 4).await;
        lone_runs += 1;
        let applied = counting.applied_once(5 + 5 * lone_runs).await;
        assert_eq!(applied, 5 + 5 * lone_runs, "every step committed once");
        one_call = counting.counts().0 - before == 1;
    }
    assert!(
        one_call,
        "a lone fan of fast leaves is committed in one call"
    );

    gate.hold_first
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let held = o.start_run(&ctx(), 0).await.unwrap();
    let waited = tokio::time::Instant::now();
    loop {
        let items = o.list_work_items(&held).await.unwrap();
        let waiting = items
            .iter()
            .any(|i| i.node == "leaf" && i.status == WorkItemStatus::InProgress);
        if waiting {
            break;
        }
        assert!(
            waited.elapsed() < PATIENCE,
            "the fan was not committed while its first leaf waits: {items:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gate.release();
    assert_eq!(finish(&o, &held).await.status, RunStatus::Completed);
    pool.try_stop().await.unwrap();
    each_leaf_once(&o, &held, 4).await;
    assert_eq!(o.metrics(&held).await.unwrap().completed, 5);
}

/// G4 with trees: a worker that takes a backlog of fans chains their leaves from its first
/// take on (it learns their speed on the spot), on a backend that keeps successors: fewer items
/// are leased by takes and commits than there are steps; every run completes with each leaf
/// applied once.
pub async fn g4_a_backlog_of_fans_is_chained_from_the_start<B: Backend>(backend: B) {
    let chains = backend.keeps_successors();
    let counting = Arc::new(Counting::chaining(Arc::new(backend)));
    let backend: Arc<dyn Backend> = counting.clone();
    let wf = fan(3, Gate::open());
    let o = orchestrator(wf.clone(), &backend);
    let mut runs = Vec::new();
    for i in 0..6 {
        runs.push(o.start_run(&ctx(), i).await.unwrap());
    }
    let mut pool = fan_pool(wf, &backend);
    for run in &runs {
        assert_eq!(finish(&o, run).await.status, RunStatus::Completed);
        each_leaf_once(&o, run, 3).await;
    }
    pool.try_stop().await.unwrap();
    assert_eq!(
        counting.applied_once(24).await,
        24,
        "every step applied once"
    );
    if chains {
        assert!(
            counting.taken() < 24,
            "leaves of the first fans were kept, not leased again: {} of 24 leased",
            counting.taken()
        );
    }
}
