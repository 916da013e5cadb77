//! Node timings as the commit script keeps them, one field of the run's record
//! (`<node> <count> <total µs> <max µs>;...`): a commit rewrites only its nodes' segments, finds
//! them whatever other node names share their letters, and starts a segment it cannot read
//! over (G7); a run's first commit writes its nodes' segments from the steps as sent.

use std::time::Duration;

use floxide::distributed::*;
use floxide::ItemId;
use floxide_redis::RedisBackend;

#[path = "support/flow.rs"]
mod flow;
use flow::{completed, private_backend, start, take_one};

const PREFIX: &str = "timing:";

/// A step of `node`, `us` microseconds long, with a successor at `next` (or an output).
fn step_of(node: &str, us: u64, next: Option<(ItemId, &str)>) -> StepCommit {
    let mut commit = StepCommit::new(node);
    commit.duration = Duration::from_micros(us);
    match next {
        Some((id, node)) => commit
            .successors
            .push(NewItem::new(id, node, b"1".to_vec())),
        None => commit.outputs.push(serde_json::json!(1)),
    }
    commit
}

/// Takes the run's one ready item and commits it as `node`, `us` microseconds long, with a
/// successor at `next` (or an output).
async fn step(backend: &RedisBackend, node: &str, us: u64, next: Option<(u128, &str)>) {
    let taken = take_one(backend, &WorkerId::from("w"), 4).await;
    assert_eq!(taken.node, node);
    let commit = step_of(
        node,
        us,
        next.map(|(id, node)| (ItemId::from_u128(id), node)),
    );
    let outcome = backend.commit(&taken.lease, &commit).await.unwrap();
    assert!(
        matches!(outcome, CommitOutcome::Committed { .. }),
        "{outcome:?}"
    );
}

async fn timings(backend: &RedisBackend, run: &str) -> Vec<(String, u64, u64, u64)> {
    let metrics = backend.metrics(run).await.unwrap();
    metrics
        .per_node
        .iter()
        .map(|(node, t)| {
            (
                node.clone(),
                t.count,
                t.total.as_micros() as u64,
                t.max.as_micros() as u64,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_rewrites_only_its_nodes_timings() {
    let (server, backend) = private_backend(PREFIX).await;
    start(&backend, "r1", "a").await;
    // Timings written before (by other steps): `ab` begins with `a` and ends with `b`, and
    // `a`'s own segment does not read as numbers.
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("HSET")
        .arg(format!("{PREFIX}{{p0}}:r:r1"))
        .arg("nt")
        .arg("ab 2 20 15;b 4 40 30;a x y z")
        .query_async(&mut conn)
        .await
        .unwrap();

    step(&backend, "a", 5, Some((2, "ab"))).await;
    let row = |n: &str, c, t, m| (n.to_owned(), c, t, m);
    assert_eq!(
        timings(&backend, "r1").await,
        [row("a", 1, 5, 5), row("ab", 2, 20, 15), row("b", 4, 40, 30)],
        "an unreadable segment starts again; the others stay as they were"
    );
    step(&backend, "ab", 7, Some((3, "b"))).await;
    assert_eq!(
        timings(&backend, "r1").await,
        [row("a", 1, 5, 5), row("ab", 3, 27, 15), row("b", 4, 40, 30)]
    );
    step(&backend, "b", 50, None).await;
    assert_eq!(
        timings(&backend, "r1").await,
        [row("a", 1, 5, 5), row("ab", 3, 27, 15), row("b", 5, 90, 50)]
    );
    assert_eq!(
        backend.run_info("r1").await.unwrap().status,
        RunStatus::Completed
    );
}

/// A run's first timings come from the commit's steps as sent: each node once (a chain's
/// usual shape) or a node repeated within the commit, whose steps add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_first_commit_writes_its_nodes_timings() {
    let (_server, backend) = private_backend(PREFIX).await;
    let me = WorkerId::from("w");
    let row = |n: &str, c, t, m| (n.to_owned(), c, t, m);
    // Chains of three steps, nodes as given, each `us` long, committed in one call.
    for (run, nodes, expected) in [
        (
            "distinct",
            ["a", "b", "c"],
            vec![
                row("a", 1, 10, 10),
                row("b", 1, 20, 20),
                row("c", 1, 30, 30),
            ],
        ),
        (
            "repeated",
            ["a", "b", "a"],
            vec![row("a", 2, 40, 30), row("b", 1, 20, 20)],
        ),
    ] {
        start(&backend, run, nodes[0]).await;
        let taken = take_one(&backend, &me, 4).await;
        let (second, third) = (ItemId::ROOT.child(0), ItemId::ROOT.child(0).child(0));
        let steps = [
            step_of(nodes[0], 10, Some((second, nodes[1]))),
            step_of(nodes[1], 20, Some((third, nodes[2]))),
            step_of(nodes[2], 30, None),
        ];
        let kept = |id| Lease::new(run, id, KEPT_LEASE_TOKEN, me.clone());
        let (lease_2, lease_3) = (kept(second), kept(third));
        let keep = Duration::from_secs(30);
        let reply = backend
            .commit_batch(
                &[
                    CommitItem::new(&taken.lease, &steps[0]).with_successor_kept(keep),
                    CommitItem::new(&lease_2, &steps[1]).with_successor_kept(keep),
                    CommitItem::new(&lease_3, &steps[2]),
                ],
                None,
            )
            .await
            .unwrap();
        assert_eq!(
            reply.outcomes.last(),
            Some(&completed()),
            "{run}: {:?}",
            reply.outcomes
        );
        assert_eq!(timings(&backend, run).await, expected, "{run}");
    }
}
