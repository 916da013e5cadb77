//! Starting and awaiting runs while a backend may be away (a server restarted, connections
//! cut), for the backends' fault tests (included with `#[path]`, like `processes.rs`).

use std::time::{Duration, Instant};

use floxide::*;

/// Starts a run of `input` under a fresh id, retrying while the backend is unreachable (a
/// retry that finds the id taken means an earlier attempt went through); panics after
/// `patience`.
pub async fn start_retrying<W, C>(
    orchestrator: &DistributedOrchestrator<W, C>,
    ctx: &WorkflowCtx<C>,
    input: W::Input,
    patience: Duration,
) -> String
where
    C: Context + Merge + 'static,
    W: Workflow<C> + 'static,
    W::Input: Clone,
{
    let id = new_run_id();
    let deadline = Instant::now() + patience;
    loop {
        match orchestrator
            .start_run_with_id(ctx, input.clone(), id.clone())
            .await
        {
            Ok(run) => return run,
            Err(FloxideError::Distributed(DistributedError::RunExists(_))) => return id,
            Err(e) if Instant::now() >= deadline => panic!("cannot start a run: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Waits for every run of `runs` to reach a final state, tolerating the backend being away;
/// panics (with the run's items) after `patience`.
pub async fn wait_all<T>(
    backend: &dyn Backend,
    runs: &[(String, T)],
    patience: Duration,
) -> Vec<RunInfo> {
    let deadline = Instant::now() + patience;
    let mut out = Vec::with_capacity(runs.len());
    for (run, _) in runs {
        loop {
            match backend.run_info(run).await {
                Ok(info) if info.status.is_finished() => {
                    out.push(info);
                    break;
                }
                Ok(info) if Instant::now() >= deadline => {
                    let items = backend.work_items(run).await;
                    panic!(
                        "run {run} did not finish within {patience:?}: {:?}\nitems: {items:#?}",
                        info.status
                    );
                }
                Ok(_) => {
                    backend
                        .wait_run_change(run, Duration::from_millis(200))
                        .await
                }
                Err(e) if Instant::now() >= deadline => panic!("run {run}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
    out
}

/// Checks that each run of `runs` (run, input `n`) of the fault workflows (`a → b → c`, each
/// node appending `"<node>:<input>"` and passing `input + 1` on) completed with output `n + 3`,
/// each node's event exactly once, no item left and one commit per item. `events` reads a
/// run's context's events. Returns the leases reclaimed from dead workers.
pub async fn check_each_completed_once<W, C>(
    orchestrator: &DistributedOrchestrator<W, C>,
    backend: &dyn Backend,
    runs: &[(String, u64)],
    infos: &[RunInfo],
    events: impl Fn(&C) -> Vec<String>,
) -> u64
where
    C: Context + Merge + 'static,
    W: Workflow<C> + 'static,
{
    let mut reclaimed = 0;
    for ((run, n), info) in runs.iter().zip(infos) {
        assert_eq!(info.status, RunStatus::Completed, "run {run}: {info:?}");
        assert_eq!(info.output, Some(serde_json::json!(n + 3)), "run {run}");
        let context = orchestrator.context(run).await.expect("context");
        let mut events = events(&context);
        events.sort();
        assert_eq!(
            events,
            vec![
                format!("a:{n}"),
                format!("b:{}", n + 1),
                format!("c:{}", n + 2)
            ],
            "G2: run {run} must hold each node's event exactly once"
        );
        // A completed run's items go at its finish (its record, context and outputs stay).
        let items = backend.work_items(run).await.expect("work items");
        assert!(items.is_empty(), "run {run}: {items:#?}");
        let metrics = backend.metrics(run).await.expect("metrics");
        assert_eq!(metrics.completed, 3, "G2: one commit per item: {metrics:?}");
        reclaimed += metrics.reclaimed;
    }
    reclaimed
}
