//! G1 and G2: a crashed worker's item runs again; a zombie's commit is refused.

use super::*;

/// G1: a worker that dies mid-step loses nothing: its item is re-run by another worker after
/// the lease expires, and the run completes with each item's effects applied once.
pub async fn g1_crashed_worker_item_is_rerun<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let gate = Gate::holding_first();
    let wf = Chain::new(gate.clone());
    let o = orchestrator(wf.clone(), &backend);
    let run = o.start_run(&ctx(), 1).await.unwrap();

    // Worker 1 executes `a`, then dies inside `b`.
    let doomed = worker(wf.clone(), &backend);
    let crashing = tokio::spawn(async move { doomed.run_forever("doomed").await });
    while gate.executions() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    crashing.abort();
    let _ = crashing.await;

    // Another worker takes over once the lease has expired.
    let mut survivors = pool(wf, &backend, 1);
    let info = finish(&o, &run).await;
    survivors.try_stop().await.unwrap();
    assert_eq!(
        info.status,
        RunStatus::Completed,
        "G1: run must complete after a crash: {info:?}"
    );
    assert_eq!(info.output, Some(serde_json::json!(4)));
    assert_eq!(gate.executions(), 2, "G1: the crashed step ran again");
    let trace = o.context(&run).await.unwrap();
    for e in ["a:1", "b:2", "c:3"] {
        assert_eq!(
            trace.count(e),
            1,
            "G2: effects of `{e}` applied exactly once: {:?}",
            trace.events
        );
    }
    assert_eq!(
        o.metrics(&run).await.unwrap().reclaimed,
        1,
        "the expired lease was reclaimed"
    );
}

/// G2: a worker whose lease was taken over cannot commit afterwards.
pub async fn g2_zombie_commit_is_rejected<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let gate = Gate::holding_first();
    let wf = Chain::new(gate.clone());
    let o = orchestrator(wf.clone(), &backend);
    let run = o.start_run(&ctx(), 1).await.unwrap();

    // The zombie never renews its lease (heartbeat far beyond the lease).
    let zombie = WorkerBuilder::new()
        .workflow(wf.clone())
        .backend_arc(Arc::clone(&backend))
        .lease_timeout(LEASE)
        .heartbeat_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    assert!(zombie.run_once("zombie").await.unwrap().is_none(), "a");
    let zombie_step = tokio::spawn(async move { zombie.run_once("zombie").await });
    while gate.executions() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut healthy = pool(wf, &backend, 1);
    let info = finish(&o, &run).await;
    assert_eq!(info.status, RunStatus::Completed);
    gate.release();
    let late = zombie_step.await.unwrap().unwrap();
    assert!(late.is_none(), "G2: the zombie's step must not commit");
    healthy.try_stop().await.unwrap();
    let trace = o.context(&run).await.unwrap();
    assert_eq!(
        trace.count("b:2"),
        1,
        "G2: the zombie's effects were applied: {:?}",
        trace.events
    );
    assert_eq!(gate.executions(), 2);

    // The same at the level of the backend: a commit with a stale token is refused.
    let run2 = o.start_run(&ctx(), 10).await.unwrap();
    let opts = TakeOptions {
        lease_timeout: LEASE,
        max_deliveries: 5,
    };
    let first = backend
        .take("Chain", &"w1".into(), opts, Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.lease.run_id, run2);
    tokio::time::sleep(LEASE * 2).await;
    let second = backend
        .take("Chain", &"w2".into(), opts, Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.lease.item_id, first.lease.item_id);
    assert_eq!(second.deliveries, 2);
    let stale = backend
        .commit(&first.lease, &StepCommit::new("a"))
        .await
        .unwrap();
    assert_eq!(
        stale,
        CommitOutcome::LeaseLost,
        "G2: a stale lease must not commit"
    );
    assert_eq!(
        backend.heartbeat(&first.lease, LEASE).await.unwrap(),
        LeaseState::Lost
    );
    let fresh = backend
        .commit(&second.lease, &StepCommit::new("a"))
        .await
        .unwrap();
    assert!(
        matches!(fresh, CommitOutcome::Committed { .. }),
        "{fresh:?}"
    );
}
