//! G5 and G6: retries are scheduled, poison items and corrupt input are dead-lettered, a
//! panicking node is a failure, and invalid requests are typed errors.

use super::*;

/// G6: undecodable items and contexts go to the dead letters with their error; the worker
/// keeps working.
pub async fn g6_corrupt_input_is_dead_lettered<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let wf = Chain::new(Gate::open());
    let o = orchestrator(wf.clone(), &backend);
    let corrupt_item = backend
        .start_run(StartRun::new(
            new_run_id(),
            "Chain",
            serde_json::to_vec(&Trace::default()).unwrap(),
            NewItem::new(ItemId::ROOT, "a", b"\xff\xfe{not json".to_vec()),
        ))
        .await
        .unwrap();
    let good_item = serde_json::to_vec(&wf.start_work_item(1)).unwrap();
    let corrupt_ctx = backend
        .start_run(StartRun::new(
            new_run_id(),
            "Chain",
            b"{\"events\": 42".to_vec(),
            NewItem::new(ItemId::ROOT, "a", good_item),
        ))
        .await
        .unwrap();
    let mut workers = pool(wf, &backend, 1);
    for run in [&corrupt_item, &corrupt_ctx] {
        let info = finish(&o, run).await;
        assert_eq!(info.status, RunStatus::Failed, "G6: {info:?}");
    }
    let dead = o.dead_letters().await.unwrap();
    let item_letter = dead
        .iter()
        .find(|d| d.run_id == corrupt_item)
        .expect("G6: corrupt item dead-lettered");
    assert!(
        item_letter.error.contains("undecodable work item"),
        "{}",
        item_letter.error
    );
    let ctx_letter = dead
        .iter()
        .find(|d| d.run_id == corrupt_ctx)
        .expect("G6: corrupt context dead-lettered");
    assert!(
        ctx_letter.error.contains("undecodable context"),
        "{}",
        ctx_letter.error
    );
    // The same worker still completes a healthy run.
    let run = o.start_run(&ctx(), 1).await.unwrap();
    assert_eq!(
        finish(&o, &run).await.status,
        RunStatus::Completed,
        "G6: the worker died"
    );
    workers.try_stop().await.unwrap();
}

/// G6: a node that panics is a recorded failure; the worker survives.
pub async fn g6_panicking_node_is_a_failure<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let wf = Chain::new(Gate::panicking_first());
    let o = orchestrator(wf.clone(), &backend);
    let run = o.start_run(&ctx(), 1).await.unwrap();
    let mut workers = pool(wf, &backend, 1);
    let info = finish(&o, &run).await;
    assert_eq!(info.status, RunStatus::Failed);
    let errors = o.errors(&run).await.unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e.node == "b" && e.error.contains("deliberate panic")),
        "G6: the panic is recorded: {errors:?}"
    );
    let run2 = o.start_run(&ctx(), 1).await.unwrap();
    assert_eq!(
        finish(&o, &run2).await.status,
        RunStatus::Completed,
        "G6: the worker died"
    );
    // G5/G7: resuming the failed run re-enqueues only what failed.
    o.resume(&run).await.unwrap();
    let info = finish(&o, &run).await;
    workers.try_stop().await.unwrap();
    assert_eq!(info.status, RunStatus::Completed);
    let trace = o.context(&run).await.unwrap();
    assert_eq!(
        (trace.count("a:1"), trace.count("b:2"), trace.count("c:3")),
        (1, 1, 1)
    );
}

/// G5: retries are delayed items in the backend; the worker is free meanwhile.
pub async fn g5_retries_are_scheduled<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let flaky = Gate::failing_first(2);
    let wf = Retrying {
        flaky: Step {
            name: "flaky",
            gate: flaky.clone(),
        },
        policy: RetryPolicy::new(
            3,
            LEASE,
            LEASE,
            BackoffStrategy::Linear,
            RetryError::Generic,
        ),
    };
    let o = orchestrator(wf.clone(), &backend);
    let retried = o.start_run(&ctx(), 1).await.unwrap();
    let mut workers = pool(wf.clone(), &backend, 1);
    // While the retry waits, the single worker completes other runs.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while flaky.executions() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The failure is recorded just after the execution: wait for it (the retry is due a
    // lease later, so the item waits that long).
    let mut items = o.list_work_items(&retried).await.unwrap();
    while items[0].status == WorkItemStatus::InProgress && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
        items = o.list_work_items(&retried).await.unwrap();
    }
    assert_eq!(
        items[0].status,
        WorkItemStatus::WaitingRetry,
        "G5: {items:?}"
    );
    let info = finish(&o, &retried).await;
    workers.try_stop().await.unwrap();
    assert_eq!(info.status, RunStatus::Completed);
    let m = o.metrics(&retried).await.unwrap();
    assert_eq!((m.retries, m.failed, m.completed), (2, 2, 1), "G5: {m:?}");
    let attempts: Vec<u32> = o
        .errors(&retried)
        .await
        .unwrap()
        .iter()
        .map(|e| e.attempt)
        .collect();
    assert_eq!(attempts, [1, 2], "G7: each failure records its attempt");

    // Retries run out: the item is dead-lettered and the run fails; requeueing revives it.
    let exhausted = Gate::failing_first(5);
    let wf2 = Retrying {
        flaky: Step {
            name: "flaky",
            gate: exhausted.clone(),
        },
        policy: RetryPolicy::new(
            2,
            Duration::from_millis(10),
            Duration::from_millis(10),
            BackoffStrategy::Linear,
            RetryError::Generic,
        ),
    };
    let o2 = orchestrator(wf2.clone(), &backend);
    let run = o2.start_run(&ctx(), 1).await.unwrap();
    let mut workers = pool(wf2, &backend, 1);
    let info = finish(&o2, &run).await;
    assert_eq!(info.status, RunStatus::Failed);
    assert_eq!(exhausted.executions(), 2);
    let letter = letter_of(&o2, &run).await.expect("G5: dead letter");
    assert_eq!(letter.attempt, 2);
    exhausted.fail_first.store(0, Ordering::SeqCst);
    o2.requeue_dead_letter(&run, letter.item_id).await.unwrap();
    let info = finish(&o2, &run).await;
    workers.try_stop().await.unwrap();
    assert_eq!(
        info.status,
        RunStatus::Completed,
        "G5: a requeued dead letter completes"
    );
    assert!(letter_of(&o2, &run).await.is_none());
}

/// G5: an item delivered too many times without a commit is poison: dead-lettered.
pub async fn g5_poison_items_are_dead_lettered<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let wf = Chain::new(Gate::open());
    let o = orchestrator(wf, &backend);
    let run = o.start_run(&ctx(), 1).await.unwrap();
    let opts = TakeOptions {
        lease_timeout: Duration::from_millis(100),
        max_deliveries: 2,
    };
    for delivery in 1..=2 {
        let t = backend
            .take("Chain", &"crashy".into(), opts, Duration::from_secs(1))
            .await
            .unwrap();
        let t = t.unwrap_or_else(|| panic!("delivery {delivery} expected"));
        assert_eq!(t.deliveries, delivery);
        tokio::time::sleep(Duration::from_millis(250)).await; // the "worker" dies: the lease expires
    }
    let third = backend
        .take("Chain", &"crashy".into(), opts, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(
        third.is_none(),
        "G5: a poison item was delivered a third time"
    );
    let info = o.run_info(&run).await.unwrap();
    assert_eq!(info.status, RunStatus::Failed);
    let letter = letter_of(&o, &run).await.expect("poison dead letter");
    assert!(letter.error.contains("poison"), "{}", letter.error);
}

/// Takes the one item of `workflow` `n` times without committing it (the taker dies: each
/// lease expires), with a delivery limit of `n` at the backend.
async fn deliver_and_die(backend: &Arc<dyn Backend>, workflow: &str, n: u32) {
    let opts = TakeOptions {
        lease_timeout: Duration::from_millis(100),
        max_deliveries: n,
    };
    for delivery in 1..=n {
        let t = backend
            .take(workflow, &"crashy".into(), opts, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(t.map(|t| t.deliveries), Some(delivery));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A pool of one worker over `backend` that takes an item delivered `n` times as poison.
fn poison_pool<W: Workflow<Trace> + 'static>(
    wf: W,
    backend: &Arc<dyn Backend>,
    n: u32,
) -> WorkerPool<W, Trace> {
    let worker = worker_builder(wf, backend)
        .max_deliveries(n)
        .build()
        .expect("conformance: worker builds");
    let mut pool = WorkerPool::new(worker, 1).with_grace_period(Duration::from_millis(200));
    pool.start();
    pool
}

/// G5 through a worker: the next delivery of an item delivered too many times without a
/// commit does not run its node; the item goes to the dead letters with a poison error and the
/// run fails (its workflow routes no failure).
pub async fn g5_a_worker_dead_letters_a_poison_item<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let wf = Chain::new(Gate::open());
    let o = orchestrator(wf.clone(), &backend);
    let run = o.start_run(&ctx(), 1).await.unwrap();
    deliver_and_die(&backend, "Chain", 2).await;
    let mut workers = poison_pool(wf, &backend, 2);
    let info = finish(&o, &run).await;
    workers.try_stop().await.unwrap();
    assert_eq!(info.status, RunStatus::Failed);
    let trace = o.context(&run).await.unwrap();
    assert_eq!(
        trace.count("a:1"),
        0,
        "G5: a poison item's node ran again: {:?}",
        trace.events
    );
    let letter = letter_of(&o, &run).await.expect("poison dead letter");
    assert!(
        letter.error.contains("poison item: delivered 2 times"),
        "{}",
        letter.error
    );
}

/// G5: a poison item is a failure like any other for the workflow: with `on_failure` edges,
/// the fallback gets the item's input and the run completes; the node does not run again and
/// nothing is dead-lettered; the run's errors keep the poison failure, as handled.
pub async fn g5_a_poison_item_is_routed_by_on_failure<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let wf = super::lifecycle::Routed {
        risky: Step {
            name: "risky",
            gate: Gate::open(),
        },
        fallback: Step {
            name: "fallback",
            gate: Gate::open(),
        },
    };
    let o = orchestrator(wf.clone(), &backend);
    let run = o.start_run(&ctx(), 5).await.unwrap();
    deliver_and_die(&backend, "Routed", 2).await;
    let mut workers = poison_pool(wf, &backend, 2);
    let info = finish(&o, &run).await;
    workers.try_stop().await.unwrap();
    assert_eq!(
        (info.status, info.output),
        (RunStatus::Completed, Some(serde_json::json!(6))),
        "G5: the fallback got the poison item's input (5) and finished the run"
    );
    let trace = o.context(&run).await.unwrap();
    assert_eq!(trace.count("fallback:5"), 1, "{:?}", trace.events);
    assert_eq!(trace.count("risky:5"), 0, "{:?}", trace.events);
    assert!(letter_of(&o, &run).await.is_none());
    let errors = o.errors(&run).await.unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e.handled && e.node == "risky" && e.error.contains("poison item")),
        "{errors:?}"
    );
}

/// G6: invalid API use returns typed errors.
pub async fn g6_invalid_requests_are_typed_errors<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let wf = Chain::new(Gate::open());
    let o = orchestrator(wf.clone(), &backend);
    assert!(matches!(
        o.status("no-such-run").await,
        Err(FloxideError::Distributed(DistributedError::UnknownRun(_)))
    ));
    let first = o.start_run_with_key(&ctx(), 1, "order-17").await.unwrap();
    let again = o.start_run_with_key(&ctx(), 1, "order-17").await;
    match again {
        Err(FloxideError::Distributed(DistributedError::DuplicateRun { existing, .. })) => {
            assert_eq!(existing, first)
        }
        other => panic!("G6: a duplicate idempotency key must be refused, got {other:?}"),
    }
    assert!(matches!(
        o.resume(&first).await,
        Err(FloxideError::Distributed(
            DistributedError::InvalidRunState { .. }
        ))
    ));
    let mut workers = pool(wf, &backend, 1);
    assert_eq!(o.wait_for_output(&first, PATIENCE).await.unwrap(), 4);
    workers.try_stop().await.unwrap();
    assert!(matches!(
        o.cancel(&first).await,
        Err(FloxideError::Distributed(
            DistributedError::InvalidRunState {
                status: RunStatus::Completed,
                ..
            }
        ))
    ));
    let by_id = o.start_run_with_id(&ctx(), 1, first.clone()).await;
    assert!(matches!(
        by_id,
        Err(FloxideError::Distributed(DistributedError::RunExists(_)))
    ));
}
