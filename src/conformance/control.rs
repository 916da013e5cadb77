//! Run control at its edges: pause and resume around a run's last step, resuming a run with
//! nothing left, and failures reported for a cancelled run.

use super::*;

/// A chain whose last node `c` passes through `gate`.
fn chain_gated_at_c(gate: Gate) -> Chain {
    let mut wf = Chain::new(Gate::open());
    wf.c.gate = gate;
    wf
}

/// Waits until `done()` holds, or panics with `what` after [`PATIENCE`].
async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// G7: a run paused while its last step runs keeps that step's commit; resuming it then
/// finishes it (nothing is left to release), with the step's output.
pub async fn g7_a_run_paused_during_its_last_step_finishes_on_resume<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let gate = Gate::holding_first();
    let wf = chain_gated_at_c(gate.clone());
    let o = orchestrator(wf.clone(), &backend);
    let run = o.start_run(&ctx(), 1).await.unwrap();
    let mut workers = pool(wf, &backend, 1);
    eventually("the last step starts", async || gate.executions() == 1).await;
    o.pause(&run).await.unwrap();
    gate.release();
    eventually("the last step commits", async || {
        o.metrics(&run).await.unwrap().completed == 3
    })
    .await;
    assert_eq!(
        o.status(&run).await.unwrap(),
        RunStatus::Paused,
        "G7: a paused run stays paused until resumed"
    );
    o.resume(&run).await.unwrap();
    let info = finish(&o, &run).await;
    workers.try_stop().await.unwrap();
    assert_eq!(info.status, RunStatus::Completed, "{info:?}");
    assert_eq!(info.output, Some(serde_json::json!(4)));
    assert!(info.finished_at.is_some());
}

/// G7: resuming a run that failed because it finished without output has nothing to run:
/// it is refused, and the run stays failed (its retention is kept).
pub async fn g7_resuming_a_run_with_nothing_left_is_refused<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let wf = Fan {
        spread: Spread { n: 0 },
        leaf: Step {
            name: "leaf",
            gate: Gate::open(),
        },
    };
    let o = orchestrator(wf.clone(), &backend);
    let run = o.start_run(&ctx(), 1).await.unwrap();
    let mut workers = pool(wf, &backend, 1);
    let info = finish(&o, &run).await;
    workers.try_stop().await.unwrap();
    assert_eq!(info.status, RunStatus::Failed, "{info:?}");
    let resumed = o.resume(&run).await;
    assert!(
        matches!(
            resumed,
            Err(FloxideError::Distributed(
                DistributedError::InvalidRunState {
                    status: RunStatus::Failed,
                    ..
                }
            ))
        ),
        "G7: resuming a run with nothing left must be refused, got {resumed:?}"
    );
    let after = o.backend().run_info(&run).await.unwrap();
    assert_eq!(after.status, RunStatus::Failed);
    assert_eq!(after.finished_at, info.finished_at);
}

/// G5/G7: a failure reported for an item of a cancelled run is not a dead letter: the run is
/// over, and the report is answered as inactive.
pub async fn g5_failures_of_a_cancelled_run_are_not_dead_lettered<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let wf = Chain::new(Gate::open());
    let o = orchestrator(wf.clone(), &backend);
    let options = TakeOptions {
        lease_timeout: PATIENCE,
        max_deliveries: 5,
    };
    for retry_after in [None, Some(Duration::from_millis(10))] {
        let run = o.start_run(&ctx(), 1).await.unwrap();
        let taken = backend
            .take(wf.name(), &WorkerId::from("w"), options, PATIENCE)
            .await
            .unwrap()
            .expect("the first item");
        o.cancel(&run).await.unwrap();
        let outcome = backend
            .fail(
                &taken.lease,
                &StepFailed::new(taken.node.clone(), "failed after the cancel", retry_after),
            )
            .await
            .unwrap();
        assert_eq!(
            outcome,
            CommitOutcome::RunInactive(RunStatus::Cancelled),
            "G7: a failure of a cancelled run is answered as inactive"
        );
        assert!(
            o.dead_letters()
                .await
                .unwrap()
                .iter()
                .all(|d| d.run_id != run),
            "G5: a cancelled run's failure must not create a dead letter"
        );
        assert_eq!(o.status(&run).await.unwrap(), RunStatus::Cancelled);
    }
}
