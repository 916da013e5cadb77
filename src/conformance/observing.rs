//! G7: cancel and pause take effect, and runs and workers can be observed.

use super::*;

/// G7: cancelling a run stops new steps at once and fires the in-flight step's token.
pub async fn g7_cancel_stops_the_run<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let gate = Gate::holding_first();
    let wf = Chain::new(gate.clone());
    let o = orchestrator(wf.clone(), &backend);
    let run = o.start_run(&ctx(), 1).await.unwrap();
    let mut workers = pool(wf, &backend, 2);
    while gate.executions() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    o.cancel(&run).await.unwrap();
    let info = finish(&o, &run).await;
    assert_eq!(info.status, RunStatus::Cancelled);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while gate.cancelled() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        gate.cancelled(),
        1,
        "G7: the in-flight step's cancellation token must fire"
    );
    gate.release();
    tokio::time::sleep(LEASE * 3).await;
    workers.try_stop().await.unwrap();
    let trace = o.context(&run).await.unwrap();
    assert_eq!(trace.count("c:3"), 0, "G7: a node executed after cancel");
    assert_eq!(trace.count("b:2"), 0, "G7: the cancelled step committed");
    assert!(matches!(
        o.cancel(&run).await,
        Err(FloxideError::Distributed(
            DistributedError::InvalidRunState { .. }
        ))
    ));
}

/// G7: a paused run executes nothing until it is resumed; then it completes.
pub async fn g7_pause_holds_until_resume<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let wf = Chain::new(Gate::open());
    let o = orchestrator(wf.clone(), &backend);
    let run = o.start_run(&ctx(), 1).await.unwrap();
    o.pause(&run).await.unwrap();
    let mut workers = pool(wf, &backend, 2);
    tokio::time::sleep(LEASE * 2).await;
    assert_eq!(o.status(&run).await.unwrap(), RunStatus::Paused);
    assert_eq!(
        o.metrics(&run).await.unwrap().completed,
        0,
        "G7: a paused run executed a step"
    );
    assert_eq!(
        o.pending_work(&run).await.unwrap().len(),
        1,
        "G7: the held item is kept"
    );
    o.resume(&run).await.unwrap();
    let info = finish(&o, &run).await;
    workers.try_stop().await.unwrap();
    assert_eq!(info.status, RunStatus::Completed);
    assert_eq!(info.output, Some(serde_json::json!(4)));
}

/// G7: runs, workers and items can be observed.
pub async fn g7_runs_and_workers_are_observable<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let wf = Chain::new(Gate::open());
    let o = orchestrator(wf.clone(), &backend);
    let run = o.start_run(&ctx(), 5).await.unwrap();
    let pending = o.pending_work(&run).await.unwrap();
    assert_eq!(pending.len(), 1);
    let stats = backend.queue_stats("Chain").await.unwrap();
    let stats = stats.expect("G7: the backend reports its queue");
    assert!(
        stats.ready >= 1,
        "queue stats count the ready item: {stats:?}"
    );
    assert_eq!(pending[0].node_name(), "a");
    let mut workers = pool(wf, &backend, 2);
    let info = finish(&o, &run).await;
    assert!(info.finished_at.is_some());
    assert_eq!(o.wait_for_output(&run, PATIENCE).await.unwrap(), 8);
    let m = o.metrics(&run).await.unwrap();
    assert_eq!(m.completed, 3);
    assert_eq!(m.per_node.len(), 3);
    assert!(o.pending_work(&run).await.unwrap().is_empty());
    assert!(o
        .list_work_items(&run)
        .await
        .unwrap()
        .iter()
        .all(|i| i.status == WorkItemStatus::Completed));
    let listed = o.list_runs(Some(RunStatus::Completed)).await.unwrap();
    assert!(listed.iter().any(|r| r.run_id == run));
    let stats = backend.queue_stats("Chain").await.unwrap();
    let stats = stats.expect("G7: the backend reports its queue");
    assert_eq!(
        stats.in_flight, 0,
        "nothing leased after completion: {stats:?}"
    );
    // Each worker reports when its task first runs, which may be after the run finished.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut health = workers.try_health().await.unwrap();
    while health.len() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        health = workers.try_health().await.unwrap();
    }
    assert_eq!(health.len(), 2, "G7: every worker reports its health");
    workers.try_stop().await.unwrap();
    let after = o.liveness().await.unwrap();
    assert!(
        after
            .iter()
            .filter(|h| h.status == WorkerStatus::Stopped)
            .count()
            >= 2
    );
    // The stop report carries every step the workers committed.
    let steps: u64 = after
        .iter()
        .filter(|h| h.workflow == "Chain")
        .map(|h| h.steps_done)
        .sum();
    assert_eq!(
        steps, 3,
        "the workers count their committed steps: {after:?}"
    );
}

/// G7: a batch start (`start_runs`) over more runs than the orchestrator sends in one call
/// answers every input, in order, and starts each run with its own input.
pub async fn g7_a_batch_start_answers_every_input_in_order<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let wf = Chain::new(Gate::open());
    let o = orchestrator(wf.clone(), &backend);
    let n: u32 = 2_345;
    let answers = o.start_runs(&ctx(), 0..n).await;
    assert_eq!(answers.len(), n as usize, "one answer per input");
    let ids: Vec<RunId> = answers
        .into_iter()
        .map(|a| a.expect("every start succeeds"))
        .collect();
    let distinct: BTreeSet<&RunId> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "every run gets its own id");
    for i in [0, 1, 999, 1_000, 1_001, 1_999, 2_000, n - 1] {
        let pending = o.pending_work(&ids[i as usize]).await.unwrap();
        let json = |item| serde_json::to_value(item).unwrap();
        assert_eq!(
            pending.iter().map(json).collect::<Vec<_>>(),
            vec![json(&wf.start_work_item(i))],
            "run {i} starts with its own input"
        );
    }
}
