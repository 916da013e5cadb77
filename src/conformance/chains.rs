//! Chains: a worker runs a step's successors before the step is committed and commits them
//! together, the step's commit leasing the successors to it ("kept"); `trees` has the steps
//! with several kept successors. The checks at the
//! level of the backend apply to backends that keep successors
//! ([`WorkerBackend::keeps_successors`]); the others check that a worker on any backend keeps
//! every guarantee with chains (where the backend has them) as without.

use std::sync::Arc;
use std::time::Duration;

use super::{ctx, orchestrator, Chain, Gate, LEASE, PATIENCE};
use crate::distributed::*;
use crate::*;

mod trees;
mod workers;

pub use trees::*;
pub use workers::*;

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
