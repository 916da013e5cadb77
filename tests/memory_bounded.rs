//! G9 on the in-memory backend: cancel, pause and resume do bounded work (items are dropped
//! or parked when takes meet them, and parked items come back a slice at a time), a
//! completed or cancelled run's items go at its finish, and finished runs and dead letters
//! leave after their retentions.

use std::time::Duration;

use floxide::*;

node! {
    /// Emits `from..from + n` (`from` is the input).
    pub struct Spread { n: u64 };
    input = u64;
    output = u64;
    |_ctx, from| { Ok(Transition::NextAll((from..from + self.n).collect())) }
}

node! {
    /// Fails on 13.
    pub struct Leaf {};
    input = u64;
    output = u64;
    |_ctx, n| {
        if n == 13 {
            return Err(FloxideError::generic("thirteen"));
        }
        Ok(Transition::Next(n))
    }
}

workflow! {
    pub struct Fan { spread: Spread, leaf: Leaf }
    start = spread;
    edges { spread => [leaf]; leaf => []; }
}

fn fan(n: u64) -> Fan {
    Fan {
        spread: Spread { n },
        leaf: Leaf {},
    }
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_runs_queue_is_dropped_lazily_and_others_go_on() {
    let backend = InMemoryBackend::new();
    let o = fan(20_000).orchestrator(backend.clone()).build().unwrap();
    let big = o.start_run(&WorkflowCtx::new(()), 100).await.unwrap();
    fan(20_000)
        .worker(backend.clone())
        .build()
        .unwrap()
        .run_once("spreader")
        .await
        .unwrap();
    assert_eq!(o.pending_work(&big).await.unwrap().len(), 20_000);
    let other = o.start_run(&WorkflowCtx::new(()), 5).await.unwrap();
    o.cancel(&big).await.unwrap();
    // The cancelled run's items are gone at once; its queue entries go as takes meet them.
    assert!(o.list_work_items(&big).await.unwrap().is_empty());
    let mut pool = WorkerPool::new(fan(1).worker(backend).build().unwrap(), 2);
    pool.start();
    assert_eq!(
        o.wait_for_output(&other, Duration::from_secs(30))
            .await
            .unwrap(),
        5
    );
    pool.try_stop().await.unwrap();
    assert_eq!(o.status(&big).await.unwrap(), RunStatus::Cancelled);
    assert_eq!(
        o.metrics(&big).await.unwrap().completed,
        1,
        "only the spread ran"
    );
}

#[tokio::test(start_paused = true)]
async fn a_paused_runs_items_are_parked_and_come_back_on_resume() {
    let backend = InMemoryBackend::new();
    let o = fan(1000).orchestrator(backend.clone()).build().unwrap();
    let run = o.start_run(&WorkflowCtx::new(()), 100).await.unwrap();
    let worker = fan(1000).worker(backend.clone()).build().unwrap();
    worker.run_once("spreader").await.unwrap();
    o.pause(&run).await.unwrap();
    // Takes meet the paused run's entries and park them.
    assert_eq!(worker.run_once("w").await.unwrap(), None);
    let items = o.list_work_items(&run).await.unwrap();
    assert!(
        items
            .iter()
            .filter(|i| i.node == "leaf")
            .all(|i| i.status == WorkItemStatus::Held),
        "a paused run's ready items are held"
    );
    o.resume(&run).await.unwrap();
    let mut pool = WorkerPool::new(worker, 2);
    pool.start();
    let info = o.wait_for_completion(&run, Duration::from_millis(50)).await;
    pool.try_stop().await.unwrap();
    let info = info.unwrap();
    // Every leaf (parked, then queued again 256 at a time) committed.
    assert_eq!(info.status, RunStatus::Completed);
    assert_eq!(o.metrics(&run).await.unwrap().completed, 1 + 1000);
}

#[tokio::test(start_paused = true)]
async fn finished_runs_and_dead_letters_leave_after_their_retentions() {
    let backend = InMemoryBackend::new()
        .with_retention(Duration::from_secs(60))
        .with_dead_letter_retention(Duration::from_secs(600));
    let o = fan(20).orchestrator(backend.clone()).build().unwrap();
    let worker = fan(20).worker(backend.clone()).build().unwrap();
    let mut pool = WorkerPool::new(worker, 2);
    pool.start();
    let done = o.start_run(&WorkflowCtx::new(()), 0).await.unwrap();
    let info = o
        .wait_for_completion(&done, Duration::from_millis(10))
        .await;
    pool.try_stop().await.unwrap();
    assert_eq!(info.unwrap().status, RunStatus::Failed, "item 13 failed");
    let letter = o.dead_letters().await.unwrap().remove(0);
    assert_eq!(letter.run_id, done);

    // Within the retention the run is there; after it, the next start removes it.
    tokio::time::advance(Duration::from_secs(30)).await;
    o.start_run(&WorkflowCtx::new(()), 1).await.unwrap();
    assert!(o.run_info(&done).await.is_ok());
    tokio::time::advance(Duration::from_secs(31)).await;
    o.start_run(&WorkflowCtx::new(()), 2).await.unwrap();
    assert!(matches!(
        o.run_info(&done).await,
        Err(FloxideError::Distributed(DistributedError::UnknownRun(_)))
    ));
    assert!(matches!(
        o.context(&done).await,
        Err(FloxideError::Distributed(DistributedError::UnknownRun(_)))
    ));
    // The dead letter outlives its run; requeueing it now is refused and keeps it.
    assert!(matches!(
        o.requeue_dead_letter(&done, letter.item_id).await,
        Err(FloxideError::Distributed(DistributedError::RunExpired(_)))
    ));
    assert_eq!(o.dead_letters().await.unwrap().len(), 1);
    // It goes after its own retention, with no new letter or start to prune it.
    tokio::time::advance(Duration::from_secs(600)).await;
    assert!(
        o.dead_letters().await.unwrap().is_empty(),
        "G9: a dead letter outlived its retention"
    );
}
