//! A commit applies the steps of a run it would complete ("quiet") without making their item
//! writes and history lines, and makes them after all when the run does not complete. These
//! tests check the history comes out as if they had been made step by step.

use std::time::Duration;

use floxide::distributed::*;
use floxide::ItemId;
use floxide_redis::RedisBackend;

#[path = "support/flow.rs"]
mod flow;
use flow::{completed, private_backend, start, take_one};

/// A batch that would complete its run (`x` keeping `z`, a forged `y`, `z`) has its middle
/// step refused with a "fenced" line: the lines of `x`, applied before it, come first, and
/// those of `z` after it, as the steps came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_steps_line_keeps_its_place_in_a_quiet_runs_history() {
    let (_server, backend) = private_backend("quiet:").await;
    let (me, other) = (WorkerId::from("me"), WorkerId::from("other"));
    start(&backend, "r", "a").await;
    let a = take_one(&backend, &me, 1).await;
    let (x, y) = (ItemId::ROOT.child(0), ItemId::ROOT.child(1));
    let mut fork = StepCommit::new("a");
    fork.successors.push(NewItem::new(x, "x", b"1".to_vec()));
    fork.successors.push(NewItem::new(y, "y", b"1".to_vec()));
    let done = backend.commit(&a.lease, &fork).await.unwrap();
    assert_eq!(done, CommitOutcome::Committed { finished: None });
    let (taken_1, taken_2) = (
        take_one(&backend, &me, 1).await,
        take_one(&backend, &other, 1).await,
    );
    let (mine, theirs) = if taken_1.lease.item_id == x {
        (taken_1, taken_2)
    } else {
        (taken_2, taken_1)
    };
    assert_eq!((mine.lease.item_id, theirs.lease.item_id), (x, y));

    let z = x.child(0);
    let mut step_x = StepCommit::new("x");
    step_x.successors.push(NewItem::new(z, "z", b"2".to_vec()));
    let step_y = StepCommit::new("y");
    let mut step_z = StepCommit::new("z");
    step_z.outputs.push(serde_json::json!(3));
    let forged_y = Lease::new("r", y, KEPT_LEASE_TOKEN, me.clone());
    let lease_z = Lease::new("r", z, KEPT_LEASE_TOKEN, me.clone());
    let reply = backend
        .commit_batch(
            &[
                CommitItem::new(&mine.lease, &step_x).with_successor_kept(Duration::from_secs(30)),
                CommitItem::new(&forged_y, &step_y),
                CommitItem::new(&lease_z, &step_z),
            ],
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        reply.outcomes,
        vec![
            CommitOutcome::Committed { finished: None },
            CommitOutcome::LeaseLost,
            CommitOutcome::Committed { finished: None },
        ]
    );
    let history = backend.step_history("r").await.unwrap().unwrap();
    let seen: Vec<(&str, ItemId)> = history.iter().map(|e| (e.kind.name(), e.item_id)).collect();
    let tail = &seen[seen.len() - 4..];
    assert_eq!(
        tail,
        [
            ("leased", z),
            ("committed", x),
            ("fenced", y),
            ("committed", z)
        ],
        "{seen:?}"
    );
    let items = backend.work_items("r").await.unwrap();
    let status = |id: ItemId| items.iter().find(|i| i.item_id == id).map(|i| i.status);
    assert_eq!(status(x), Some(WorkItemStatus::Completed));
    assert_eq!(status(z), Some(WorkItemStatus::Completed));
    assert_eq!(status(y), Some(WorkItemStatus::InProgress), "{items:?}");
    assert_eq!(
        backend.run_info("r").await.unwrap().status,
        RunStatus::Running
    );
}

/// Starts run `run` of `Flow` (context `null`, version 0) and takes its first item, `a`.
async fn started(backend: &RedisBackend, run: &str, me: &WorkerId) -> Taken {
    start(backend, run, "a").await;
    take_one(backend, me, 1).await
}

/// The steps of a chain from the run's first item `a` → `b` → `c`: each changes the context
/// (from the version given) and `c` returns two outputs.
fn chain_steps(from_version: u64) -> [StepCommit; 3] {
    chain_steps_of(ItemId::ROOT, from_version, ["a", "b", "c"])
}

/// [`chain_steps`] from item `a`, the steps' nodes named `nodes`.
fn chain_steps_of(a: ItemId, from_version: u64, nodes: [&str; 3]) -> [StepCommit; 3] {
    let (b, c) = (a.child(0), a.child(0).child(0));
    let mut a = StepCommit::new(nodes[0]);
    a.successors.push(NewItem::new(b, nodes[1], b"1".to_vec()));
    a.context = Some((from_version, b"1".to_vec()));
    a.duration = Duration::from_micros(300);
    let mut step_b = StepCommit::new(nodes[1]);
    step_b
        .successors
        .push(NewItem::new(c, nodes[2], b"2".to_vec()));
    step_b.context = Some((from_version + 1, b"2".to_vec()));
    step_b.duration = Duration::from_micros(200);
    let mut step_c = StepCommit::new(nodes[2]);
    step_c.outputs = vec![serde_json::json!(7), serde_json::json!(8)];
    step_c.context = Some((from_version + 2, b"3".to_vec()));
    step_c.duration = Duration::from_micros(100);
    [a, step_b, step_c]
}

/// The commits of a chain: each step under its lease, each but the last keeping its
/// successor.
fn chain_items<'a>(leases: &[&'a Lease], steps: &'a [StepCommit]) -> Vec<CommitItem<'a>> {
    let last = steps.len().saturating_sub(1);
    leases
        .iter()
        .zip(steps)
        .enumerate()
        .map(|(n, (&lease, step))| {
            let item = CommitItem::new(lease, step);
            if n < last {
                item.with_successor_kept(Duration::from_secs(30))
            } else {
                item
            }
        })
        .collect()
}

/// Commits the chain of `steps` under `leases` (see [`chain_items`]) in one call.
async fn commit_chain(
    backend: &RedisBackend,
    leases: &[&Lease],
    steps: &[StepCommit],
) -> CommitReply {
    backend
        .commit_batch(&chain_items(leases, steps), None)
        .await
        .unwrap()
}

/// Commits `items` in one call (`at_once`) or one call each; their outcomes, in order.
async fn commit_items(
    backend: &RedisBackend,
    items: Vec<CommitItem<'_>>,
    at_once: bool,
) -> Vec<CommitOutcome> {
    if at_once {
        return backend.commit_batch(&items, None).await.unwrap().outcomes;
    }
    let mut outcomes = Vec::new();
    for item in items {
        outcomes.extend(backend.commit_batch(&[item], None).await.unwrap().outcomes);
    }
    outcomes
}

/// What a finished run shows: status, outputs, (items, steps), node timings (node, count,
/// total), context (version, bytes), items left.
type FinishedState = (
    RunStatus,
    Vec<serde_json::Value>,
    (u64, u64),
    Vec<(String, u64, Duration)>,
    (u64, Vec<u8>),
    usize,
);

/// What a finished run shows (see [`FinishedState`]).
async fn finished_state(backend: &RedisBackend, run: &str) -> FinishedState {
    let info = backend.run_info(run).await.unwrap();
    let metrics = backend.metrics(run).await.unwrap();
    let context = backend.load_context(run).await.unwrap();
    let timings = metrics
        .per_node
        .iter()
        .map(|(node, t)| (node.clone(), t.count, t.total))
        .collect();
    (
        info.status,
        info.outputs,
        (metrics.total_work_items, metrics.completed),
        timings,
        (context.version, context.bytes),
        backend.work_items(run).await.unwrap().len(),
    )
}

/// A chain from the run's first item that completes the run, committed in one call (applied
/// at once), leaves the run as the same chain committed step by step, one call each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_completing_its_run_in_one_call_leaves_what_its_steps_one_by_one_leave() {
    let once = chain_once_and_step_by_step(false, ["a", "b", "c"]).await;
    assert_eq!(once.2, (3, 3));
}

/// The same for a chain that runs a node twice (its timings add up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_running_a_node_twice_counts_its_timings_as_one_by_one() {
    let once = chain_once_and_step_by_step(false, ["a", "b", "a"]).await;
    let a = &once.3[0];
    assert_eq!(
        (a.0.as_str(), a.1, a.2),
        ("a", 2, Duration::from_micros(400))
    );
}

/// The same for a chain that starts at a later item (the first one was committed alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_chain_completing_its_run_in_one_call_leaves_what_its_steps_one_by_one_leave() {
    let once = chain_once_and_step_by_step(true, ["a", "b", "c"]).await;
    assert_eq!(once.2, (4, 4));
}

/// Runs two runs to the end of a chain of three steps of `nodes` (from the first item, or
/// from its successor when `later`): one commits the chain in one call, the other step by step; checks
/// they end alike and returns how the first ended.
async fn chain_once_and_step_by_step(later: bool, nodes: [&str; 3]) -> FinishedState {
    let (_server, backend) = private_backend("quiet:").await;
    let me = WorkerId::from("me");
    let applied = CommitOutcome::Committed { finished: None };
    let mut ends = Vec::new();
    for (run, at_once) in [("once", true), ("steps", false)] {
        let mut first = started(&backend, run, &me).await;
        if later {
            let mut step = StepCommit::new("s");
            let next = ItemId::ROOT.child(0);
            step.successors.push(NewItem::new(next, "a", b"0".to_vec()));
            let outcome = backend.commit(&first.lease, &step).await.unwrap();
            assert_eq!(outcome, applied);
            first = take_one(&backend, &me, 1).await;
            assert_eq!(first.lease.item_id, next);
        }
        let a = first.lease.item_id;
        let (b, c) = (a.child(0), a.child(0).child(0));
        let (lease_b, lease_c) = (
            Lease::new(run, b, KEPT_LEASE_TOKEN, me.clone()),
            Lease::new(run, c, KEPT_LEASE_TOKEN, me.clone()),
        );
        let steps = chain_steps_of(a, 0, nodes);
        let items = chain_items(&[&first.lease, &lease_b, &lease_c], &steps);
        let outcomes = commit_items(&backend, items, at_once).await;
        assert_eq!(
            outcomes,
            vec![applied.clone(), applied.clone(), completed()]
        );
        ends.push(finished_state(&backend, run).await);
    }
    assert_eq!(ends[0], ends[1]);
    let once = ends.swap_remove(0);
    assert_eq!(once.0, RunStatus::Completed);
    assert_eq!(once.1, vec![serde_json::json!(7), serde_json::json!(8)]);
    assert_eq!(once.4, (3, b"3".to_vec()));
    assert_eq!(once.5, 0, "a completed run's items go");
    once
}

/// A chain from its run's first lease reads only what the start and run control can have
/// written by then. Such a run, started with an idempotency key and a deadline and paused and
/// resumed before its take, ends as the same chain committed step by step: its deadline is
/// kept and its key expires with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_from_a_first_lease_keeps_what_the_start_and_run_control_wrote() {
    let (server, backend) = private_backend("fresh:").await;
    let me = WorkerId::from("me");
    let deadline = std::time::UNIX_EPOCH + Duration::from_millis(4_102_444_800_000);
    let mut conn = ::redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut ends = Vec::new();
    for (run, at_once) in [("once", true), ("steps", false)] {
        let first = NewItem::new(ItemId::ROOT, "a", b"0".to_vec());
        let start = StartRun::new(run, "Flow", b"null".to_vec(), first)
            .with_idempotency_key(Some(format!("key-{run}")))
            .with_deadline(Some(deadline));
        backend.start_run(start).await.unwrap();
        backend.control(run, RunAction::Pause).await.unwrap();
        let parked = backend
            .take_batch(
                TakeRequest::new("Flow", &me, flow::options()),
                Duration::ZERO,
            )
            .await
            .unwrap();
        assert!(
            parked.is_empty(),
            "a paused run's item is parked: {parked:?}"
        );
        backend.control(run, RunAction::Resume).await.unwrap();
        let taken = take_one(&backend, &me, 1).await;
        assert_eq!((taken.lease.item_id, taken.lease.token), (ItemId::ROOT, 1));
        let (b, c) = (ItemId::ROOT.child(0), ItemId::ROOT.child(0).child(0));
        let (lease_b, lease_c) = (
            Lease::new(run, b, KEPT_LEASE_TOKEN, me.clone()),
            Lease::new(run, c, KEPT_LEASE_TOKEN, me.clone()),
        );
        let steps = chain_steps(0);
        let items = chain_items(&[&taken.lease, &lease_b, &lease_c], &steps);
        let outcomes = commit_items(&backend, items, at_once).await;
        let applied = CommitOutcome::Committed { finished: None };
        assert_eq!(outcomes, vec![applied.clone(), applied, completed()]);
        let info = backend.run_info(run).await.unwrap();
        assert_eq!(info.deadline, Some(deadline), "{run}");
        assert_eq!(info.idempotency_key, Some(format!("key-{run}")), "{run}");
        let ttl: i64 = ::redis::cmd("PTTL")
            .arg(format!("fresh:{{p0}}:idem:key-{run}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 0, "{run}: the key expires with its run (PTTL {ttl})");
        ends.push(finished_state(&backend, run).await);
    }
    assert_eq!(ends[0], ends[1]);
    assert_eq!(ends[0].0, RunStatus::Completed);
    assert_eq!(ends[0].4, (3, b"3".to_vec()));
}

/// The id of a run's first item, `ItemId::ROOT`, given by the backend's caller to a later item
/// (the first has another id): its first lease is not its run's first, and a commit of it
/// counts the run's other items. Here the run still has `y` after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_item_with_the_first_items_id_does_not_finish_its_run_early() {
    let (_server, backend) = private_backend("later-root:").await;
    let me = WorkerId::from("me");
    let (x, y) = (ItemId::from_u128(42), ItemId::from_u128(43));
    let first = NewItem::new(x, "a", b"0".to_vec());
    backend
        .start_run(StartRun::new("r", "Flow", b"null".to_vec(), first))
        .await
        .unwrap();
    let taken = take_one(&backend, &me, 1).await;
    assert_eq!(taken.lease.item_id, x);
    let mut step = StepCommit::new("a");
    step.successors = vec![
        NewItem::new(ItemId::ROOT, "b", b"1".to_vec()),
        NewItem::new(y, "b", b"2".to_vec()),
    ];
    let applied = CommitOutcome::Committed { finished: None };
    assert_eq!(backend.commit(&taken.lease, &step).await.unwrap(), applied);
    let mut leases = backend
        .take_batch(
            TakeRequest::new("Flow", &me, flow::options()).with_max(2),
            Duration::ZERO,
        )
        .await
        .unwrap();
    leases.sort_by_key(|t| t.lease.item_id != ItemId::ROOT);
    assert_eq!(leases.len(), 2);
    assert_eq!(
        (leases[0].lease.item_id, leases[0].lease.token),
        (ItemId::ROOT, 1)
    );
    // Sent as a whole chain (the first item's id, an output, nothing kept).
    let mut last = StepCommit::new("b");
    last.outputs = vec![serde_json::json!(1)];
    let reply = backend
        .commit_batch(&[CommitItem::new(&leases[0].lease, &last)], None)
        .await
        .unwrap();
    assert_eq!(reply.outcomes, vec![applied]);
    assert_eq!(
        backend.run_info("r").await.unwrap().status,
        RunStatus::Running
    );
    let mut other = StepCommit::new("b");
    other.outputs = vec![serde_json::json!(2)];
    let outcome = backend.commit(&leases[1].lease, &other).await.unwrap();
    assert_eq!(outcome, completed());
    let info = backend.run_info("r").await.unwrap();
    assert_eq!(
        info.outputs,
        vec![serde_json::json!(1), serde_json::json!(2)]
    );
}

/// A chain that would complete its run, whose first lease is no longer held, changes nothing:
/// its steps are refused as they are one by one, and the live lease still completes the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completing_chain_on_a_lost_lease_changes_nothing() {
    let (_server, backend) = private_backend("quiet:").await;
    let me = WorkerId::from("me");
    let (b, c) = (ItemId::ROOT.child(0), ItemId::ROOT.child(0).child(0));
    let first = started(&backend, "r", &me).await;
    let forged = Lease::new("r", first.lease.item_id, first.lease.token + 1, me.clone());
    let (lease_b, lease_c) = (
        Lease::new("r", b, KEPT_LEASE_TOKEN, me.clone()),
        Lease::new("r", c, KEPT_LEASE_TOKEN, me.clone()),
    );
    let steps = chain_steps(0);
    let reply = commit_chain(&backend, &[&forged, &lease_b, &lease_c], &steps).await;
    // (The later steps' context changes build on the refused one's: refused too.)
    let conflict = CommitOutcome::ContextConflict { current: 0 };
    assert_eq!(
        reply.outcomes,
        vec![CommitOutcome::LeaseLost, conflict.clone(), conflict]
    );
    let info = backend.run_info("r").await.unwrap();
    assert_eq!((info.status, info.outputs.len()), (RunStatus::Running, 0));
    assert_eq!(backend.load_context("r").await.unwrap().version, 0);
    let items = backend.work_items("r").await.unwrap();
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0].status, WorkItemStatus::InProgress);

    let reply = commit_chain(&backend, &[&first.lease, &lease_b, &lease_c], &steps).await;
    assert_eq!(reply.outcomes.last(), Some(&completed()));
}

/// A chain that would complete its run, whose first step's context change is based on a
/// version the run is no longer at, is refused step by step: conflicts (the worker re-merges),
/// nothing applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completing_chain_on_a_stale_context_is_refused_step_by_step() {
    let (_server, backend) = private_backend("quiet:").await;
    let me = WorkerId::from("me");
    let (b, c) = (ItemId::ROOT.child(0), ItemId::ROOT.child(0).child(0));
    let first = started(&backend, "r", &me).await;
    let (lease_b, lease_c) = (
        Lease::new("r", b, KEPT_LEASE_TOKEN, me.clone()),
        Lease::new("r", c, KEPT_LEASE_TOKEN, me.clone()),
    );
    let stale = chain_steps(4);
    let reply = commit_chain(&backend, &[&first.lease, &lease_b, &lease_c], &stale).await;
    assert_eq!(
        reply.outcomes,
        vec![CommitOutcome::ContextConflict { current: 0 }; 3]
    );
    assert_eq!(
        backend.run_info("r").await.unwrap().status,
        RunStatus::Running
    );
    assert_eq!(backend.load_context("r").await.unwrap().version, 0);

    let fresh = chain_steps(0);
    let reply = commit_chain(&backend, &[&first.lease, &lease_b, &lease_c], &fresh).await;
    assert_eq!(reply.outcomes.last(), Some(&completed()));
    assert_eq!(backend.load_context("r").await.unwrap().version, 3);
}

/// A chain from the run's first item that completes the run after that item's first lease
/// expired is no routine run: its steps go one by one, and the history that explains the
/// second delivery stays with every step's lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completing_chain_after_an_expired_lease_keeps_its_history() {
    let (_server, backend) = private_backend("quiet:").await;
    let (me, other) = (WorkerId::from("me"), WorkerId::from("other"));
    let short = TakeOptions {
        lease_timeout: Duration::from_millis(50),
        max_deliveries: 5,
    };
    start(&backend, "r", "a").await;
    let lost = backend
        .take_batch(TakeRequest::new("Flow", &other, short), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(lost.len(), 1);
    tokio::time::sleep(Duration::from_millis(120)).await;
    let first = take_one(&backend, &me, 1).await;
    assert_eq!(
        (first.lease.item_id, first.deliveries),
        (ItemId::ROOT, 2),
        "the expired lease's item, delivered again"
    );
    let (b, c) = (ItemId::ROOT.child(0), ItemId::ROOT.child(0).child(0));
    let reply = commit_chain(
        &backend,
        &[
            &first.lease,
            &Lease::new("r", b, KEPT_LEASE_TOKEN, me.clone()),
            &Lease::new("r", c, KEPT_LEASE_TOKEN, me.clone()),
        ],
        &chain_steps(0),
    )
    .await;
    assert_eq!(reply.outcomes.last(), Some(&completed()));
    let history = backend.step_history("r").await.unwrap();
    let history = history.expect("a history that explains something is kept");
    let committed: Vec<ItemId> = history
        .iter()
        .filter(|e| e.kind.name() == "committed")
        .map(|e| e.item_id)
        .collect();
    assert_eq!(committed, [ItemId::ROOT, b, c], "{history:?}");
    assert!(
        history.iter().any(|e| e.kind.name() == "expired"),
        "{history:?}"
    );
}

/// A completing chain the script sends back (its first lease is lost) in a commit that also
/// takes: the take's items arrive, the chain's steps are answered as one by one, and another
/// run's step in the same batch is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_sent_again_leaves_the_take_and_the_other_steps_of_its_call_whole() {
    let (_server, backend) = private_backend("quiet:").await;
    let me = WorkerId::from("me");
    let keep = Duration::from_secs(30);
    let first = started(&backend, "r", &me).await;
    let other = started(&backend, "s", &me).await;
    for run in ["t", "u"] {
        start(&backend, run, "a").await;
    }
    let forged = Lease::new("r", ItemId::ROOT, first.lease.token + 1, me.clone());
    let b = ItemId::ROOT.child(0);
    let lease_b = Lease::new("r", b, KEPT_LEASE_TOKEN, me.clone());
    let mut step_a = StepCommit::new("a");
    step_a.successors.push(NewItem::new(b, "b", b"1".to_vec()));
    let mut step_b = StepCommit::new("b");
    step_b.outputs.push(serde_json::json!(1));
    let steps = [step_a, step_b];
    let mut fork = StepCommit::new("a");
    fork.successors
        .push(NewItem::new(ItemId::ROOT.child(0), "x", b"1".to_vec()));
    fork.successors
        .push(NewItem::new(ItemId::ROOT.child(1), "y", b"1".to_vec()));
    let reply = backend
        .commit_batch(
            &[
                CommitItem::new(&forged, &steps[0]).with_successor_kept(keep),
                CommitItem::new(&other.lease, &fork),
                CommitItem::new(&lease_b, &steps[1]),
            ],
            Some(TakeRequest::new("Flow", &me, flow::options()).with_max(8)),
        )
        .await
        .unwrap();
    assert_eq!(
        reply.outcomes,
        vec![
            CommitOutcome::LeaseLost,
            CommitOutcome::Committed { finished: None },
            CommitOutcome::LeaseLost,
        ]
    );
    // The take: `s`'s two new items (handed over) and the first items of `t` and `u`.
    let mut taken: Vec<(String, ItemId)> = reply
        .taken
        .iter()
        .map(|t| (t.lease.run_id.to_string(), t.lease.item_id))
        .collect();
    let mut expected = vec![
        ("s".to_owned(), ItemId::ROOT.child(0)),
        ("s".to_owned(), ItemId::ROOT.child(1)),
        ("t".to_owned(), ItemId::ROOT),
        ("u".to_owned(), ItemId::ROOT),
    ];
    taken.sort();
    expected.sort();
    assert_eq!(taken, expected);
    // `r` is as it was: its first item still leased under the live lease.
    let items = backend.work_items("r").await.unwrap();
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0].status, WorkItemStatus::InProgress);
    let done = commit_chain(&backend, &[&first.lease, &lease_b], &steps).await;
    assert_eq!(done.outcomes.last(), Some(&completed()));
}

/// A take's pop holding several items of each of two runs (whose items have the same ids), and
/// a second entry of one item: each item is leased once, with its own bytes, and the second
/// entry is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pop_of_several_items_per_run_leases_each_item_once() {
    let (server, backend) = private_backend("many:").await;
    let me = WorkerId::from("me");
    start(&backend, "a", "fan").await;
    start(&backend, "b", "fan").await;
    for _ in 0..2 {
        let root = take_one(&backend, &me, 1).await;
        let run = root.lease.run_id.clone();
        let mut step = StepCommit::new("fan");
        step.successors = (0..3)
            .map(|n| {
                NewItem::new(
                    ItemId::ROOT.child(n),
                    "leaf",
                    format!("{run}{n}").into_bytes(),
                )
            })
            .collect();
        committed_alone(&backend, &root.lease, &step).await;
    }
    // A second entry of run a's first leaf, queued behind the others.
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: i64 = redis::cmd("LPUSH")
        .arg("many:{p0}:q:Flow")
        .arg(format!("{}:a", ItemId::ROOT.child(0)))
        .query_async(&mut conn)
        .await
        .unwrap();

    let taken = backend
        .take_batch(
            TakeRequest::new("Flow", &me, flow::options()).with_max(10),
            Duration::ZERO,
        )
        .await
        .unwrap();
    let mut got: Vec<(String, String)> = taken
        .iter()
        .map(|t| {
            assert_eq!(t.node, "leaf");
            (
                t.lease.run_id.clone(),
                String::from_utf8(t.bytes.clone()).unwrap(),
            )
        })
        .collect();
    got.sort();
    let want: Vec<(String, String)> = ["a", "b"]
        .iter()
        .flat_map(|run| (0..3).map(move |n| (run.to_string(), format!("{run}{n}"))))
        .collect();
    assert_eq!(got, want, "each leaf once, with its own bytes");
    let left: i64 = redis::cmd("LLEN")
        .arg("many:{p0}:q:Flow")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 0, "the second entry is dropped");
    // Every lease holds: each leaf commits.
    for t in &taken {
        committed_alone(&backend, &t.lease, &StepCommit::new("leaf")).await;
    }
}

/// Commits `step` under `lease` on its own, and checks that it was applied.
async fn committed_alone(backend: &RedisBackend, lease: &Lease, step: &StepCommit) {
    let reply = backend
        .commit_batch(&[CommitItem::new(lease, step)], None)
        .await
        .unwrap();
    assert!(
        matches!(reply.outcomes[0], CommitOutcome::Committed { .. }),
        "{:?}",
        reply.outcomes
    );
}
