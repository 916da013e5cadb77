//! A commit applies the steps of a run it would complete ("quiet") without making their item
//! writes and history lines, and makes them after all when the run does not complete. These
//! tests check the history comes out as if they had been made step by step.

use std::time::Duration;

use floxide::distributed::*;
use floxide::ItemId;
use floxide_redis::testing::{RedisServer, ServerOptions};
use floxide_redis::{RedisBackend, RedisClient, RedisConfig};

#[path = "support/flow.rs"]
mod flow;
use flow::take_one;

/// A batch that would complete its run (`x` keeping `z`, a forged `y`, `z`) has its middle
/// step refused with a "fenced" line: the lines of `x`, applied before it, come first, and
/// those of `z` after it, as the steps came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_steps_line_keeps_its_place_in_a_quiet_runs_history() {
    let server = RedisServer::start_or_panic(ServerOptions::default());
    let config = RedisConfig::new(server.url()).with_key_prefix("quiet:");
    let backend = RedisBackend::new(RedisClient::new(config).await.unwrap());
    let (me, other) = (WorkerId::from("me"), WorkerId::from("other"));
    backend
        .start_run(StartRun::new(
            "r",
            "Flow",
            b"null".to_vec(),
            NewItem::new(ItemId::ROOT, "a", b"0".to_vec()),
        ))
        .await
        .unwrap();
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
