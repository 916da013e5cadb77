//! Retention (G9): a finished run's rows and a dead letter are deleted after their own
//! retentions, by an explicit sweep and by the backend's periodic one; unfinished runs stay.

use std::time::Duration;

use floxide::*;
use floxide_postgres::testing::PostgresServer;
use floxide_postgres::{PostgresBackend, PostgresConfig};

node! {
    /// Fails on 13 (no retry: a dead letter), passes anything else on doubled.
    pub struct Double {};
    input = u32;
    output = u32;
    |_ctx, n| {
        if n == 13 {
            return Err(FloxideError::Generic("thirteen".into()));
        }
        Ok(Transition::Next(n * 2))
    }
}

workflow! {
    pub struct Twice { double: Double }
    start = double;
    edges { double => []; }
}

async fn count(server: &PostgresServer, schema: &str, table: &str) -> i64 {
    let (client, connection) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .query_one(&format!("SELECT count(*) FROM {schema}.{table}"), &[])
        .await
        .unwrap()
        .get(0)
}

async fn finish<W: Workflow<()> + 'static>(
    o: &DistributedOrchestrator<W, ()>,
    run: &str,
) -> RunInfo {
    tokio::time::timeout(
        Duration::from_secs(20),
        o.wait_for_completion(run, Duration::from_millis(50)),
    )
    .await
    .expect("the run finishes")
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_runs_and_dead_letters_go_after_their_retention() {
    let server = PostgresServer::start_or_panic();
    let config = PostgresConfig::new(server.url())
        .with_schema("kept")
        .with_retention(Duration::from_secs(1))
        .with_dead_letter_retention(Duration::from_secs(4))
        .with_sweep_interval(Duration::from_secs(3600));
    let backend = PostgresBackend::connect_with(config).await.unwrap();
    let wf = Twice { double: Double {} };
    let o = wf.orchestrator(backend.clone()).build().unwrap();
    let done = o.start_run(&WorkflowCtx::new(()), 21).await.unwrap();
    let failed = o.start_run(&WorkflowCtx::new(()), 13).await.unwrap();
    let mut pool = WorkerPool::new(wf.worker(backend.clone()).build().unwrap(), 1);
    pool.start();
    assert_eq!(finish(&o, &done).await.status, RunStatus::Completed);
    assert_eq!(finish(&o, &failed).await.status, RunStatus::Failed);
    pool.try_stop().await.unwrap();
    // No worker now: this one stays pending, unfinished, however old it gets.
    let waiting = o.start_run(&WorkflowCtx::new(()), 1).await.unwrap();

    // Within the retention nothing goes.
    let early = backend.sweep().await.unwrap();
    assert_eq!((early.runs, early.dead_letters), (0, 0));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let swept = backend.sweep().await.unwrap();
    assert_eq!(swept.runs, 2, "{swept:?}");
    for run in [&done, &failed] {
        assert!(
            matches!(
                backend.run_info(run).await,
                Err(DistributedError::UnknownRun(_))
            ),
            "run {run} outlived its retention"
        );
    }
    assert_eq!(count(&server, "kept", "outputs").await, 0);
    assert_eq!(count(&server, "kept", "errors").await, 0);
    assert_eq!(
        count(&server, "kept", "step_events").await,
        0,
        "the swept runs' step history"
    );
    assert_eq!(
        count(&server, "kept", "items").await,
        1,
        "the waiting run's item"
    );
    assert_eq!(
        backend.run_info(&waiting).await.unwrap().status,
        RunStatus::Pending
    );
    // The dead letter has a longer retention of its own.
    assert_eq!(backend.dead_letters().await.unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let later = backend.sweep().await.unwrap();
    assert_eq!(later.dead_letters, 1, "{later:?}");
    assert!(backend.dead_letters().await.unwrap().is_empty());
    assert_eq!(
        backend.run_info(&waiting).await.unwrap().status,
        RunStatus::Pending
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_sweeps_on_its_own() {
    let server = PostgresServer::start_or_panic();
    let config = PostgresConfig::new(server.url())
        .with_schema("auto")
        .with_retention(Duration::from_secs(1))
        .with_sweep_interval(Duration::from_millis(200));
    let backend = PostgresBackend::connect_with(config).await.unwrap();
    let wf = Twice { double: Double {} };
    let o = wf.orchestrator(backend.clone()).build().unwrap();
    let run = o.start_run(&WorkflowCtx::new(()), 5).await.unwrap();
    let mut pool = WorkerPool::new(wf.worker(backend.clone()).build().unwrap(), 1);
    pool.start();
    assert_eq!(finish(&o, &run).await.status, RunStatus::Completed);
    pool.try_stop().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while backend.run_info(&run).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the periodic sweep did not delete the run"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count(&server, "auto", "runs").await, 0);
}

node! {
    /// Emits `0..n`.
    pub struct Spread { n: u32 };
    input = u32;
    output = u32;
    |_ctx, _n| { Ok(Transition::NextAll((0..self.n).collect())) }
}

node! {
    /// Passes its input on.
    pub struct Pass {};
    input = u32;
    output = u32;
    |_ctx, n| { Ok(Transition::Next(n)) }
}

workflow! {
    pub struct Fan { spread: Spread, leaf: Pass }
    start = spread;
    edges { spread => [leaf]; leaf => []; }
}

fn fan(n: u32) -> Fan {
    Fan {
        spread: Spread { n },
        leaf: Pass {},
    }
}

/// A backend on schema `schema` that sweeps only when told, a `fan(n)` orchestrator, and a
/// run of it whose `n` leaves are queued (its spreading step committed).
async fn spread_run(
    server: &PostgresServer,
    schema: &str,
    n: u32,
) -> (PostgresBackend, DistributedOrchestrator<Fan, ()>, RunId) {
    let config = PostgresConfig::new(server.url())
        .with_schema(schema)
        .with_sweep_interval(Duration::from_secs(3600));
    let backend = PostgresBackend::connect_with(config).await.unwrap();
    let o = fan(n).orchestrator(backend.clone()).build().unwrap();
    let run = o.start_run(&WorkflowCtx::new(()), 0).await.unwrap();
    fan(n)
        .worker(backend.clone())
        .build()
        .unwrap()
        .run_once("spreader")
        .await
        .unwrap();
    (backend, o, run)
}

/// G9: a run that finishes with many items (cancelled with 2,500 queued, or completed after
/// 1,200 committed) drops at most 1,000 of them in the statement that finishes it; the
/// sweep deletes the rest in bounded slices, and other runs' items stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_runs_items_go_in_bounded_slices() {
    let server = PostgresServer::start_or_panic();
    // Cancelled with its leaves queued.
    let (backend, o, cancelled) = spread_run(&server, "big", 2_500).await;
    let waiting = o.start_run(&WorkflowCtx::new(()), 0).await.unwrap();
    assert_eq!(count(&server, "big", "items").await, 2_502);
    o.cancel(&cancelled).await.unwrap();
    assert_eq!(
        count(&server, "big", "items").await,
        1_502,
        "the cancel deleted 1,000 items, no more"
    );
    assert_eq!(count(&server, "big", "leftovers").await, 1);
    let swept = backend.sweep().await.unwrap();
    assert_eq!((swept.items, swept.runs), (1_501, 0), "{swept:?}");
    assert_eq!(
        count(&server, "big", "items").await,
        1,
        "the waiting run's item"
    );
    assert_eq!(count(&server, "big", "leftovers").await, 0);
    assert_eq!(
        backend.run_info(&waiting).await.unwrap().status,
        RunStatus::Pending
    );
    o.cancel(&waiting).await.unwrap();

    // Completed: its committed items go the same way.
    let o = fan(1_200).orchestrator(backend.clone()).build().unwrap();
    let done = o.start_run(&WorkflowCtx::new(()), 0).await.unwrap();
    let mut pool = WorkerPool::new(fan(1_200).worker(backend.clone()).build().unwrap(), 2);
    pool.start();
    let info = tokio::time::timeout(
        Duration::from_secs(60),
        o.wait_for_completion(&done, Duration::from_millis(50)),
    )
    .await
    .expect("the run finishes")
    .unwrap();
    pool.try_stop().await.unwrap();
    assert_eq!(info.status, RunStatus::Completed, "{info:?}");
    assert_eq!(count(&server, "big", "items").await, 201);
    let swept = backend.sweep().await.unwrap();
    assert_eq!(swept.items, 201, "{swept:?}");
    assert_eq!(count(&server, "big", "items").await, 0);
    assert_eq!(count(&server, "big", "leftovers").await, 0);
}

/// Runs `sql` on `server` and answers the rows it changed.
async fn exec(server: &PostgresServer, sql: &str) -> u64 {
    let (client, connection) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client.execute(sql, &[]).await.unwrap()
}

/// G9: resuming a run with many parked items readies them a slice (1,000) per statement: the
/// resume returns with all of them ready and nothing left listed; a resume whose caller
/// stopped midway (the run still listed in `reopening`) is finished by the sweep; the run then
/// completes with every item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_runs_resume_readies_its_items_in_slices() {
    let server = PostgresServer::start_or_panic();
    let (backend, o, run) = spread_run(&server, "reopen", 2_500).await;
    // What takes do to the items of a paused run they meet: park them.
    let park = "UPDATE reopen.items SET state = 'K' WHERE state = 'P'";

    o.pause(&run).await.unwrap();
    assert_eq!(exec(&server, park).await, 2_500);
    o.resume(&run).await.unwrap();
    assert_eq!(count(&server, "reopen", "items WHERE state = 'K'").await, 0);
    assert_eq!(
        count(&server, "reopen", "items WHERE state = 'P'").await,
        2_500
    );
    assert_eq!(count(&server, "reopen", "reopening").await, 0);

    // A resume that readied its first slice, its caller gone before the rest.
    o.pause(&run).await.unwrap();
    assert_eq!(exec(&server, park).await, 2_500);
    exec(&server, "UPDATE reopen.runs SET status = 'running'").await;
    exec(
        &server,
        "INSERT INTO reopen.reopening (run_id) SELECT run_id FROM reopen.runs",
    )
    .await;
    backend.sweep().await.unwrap();
    assert_eq!(count(&server, "reopen", "items WHERE state = 'K'").await, 0);
    assert_eq!(count(&server, "reopen", "reopening").await, 0);

    let mut pool = WorkerPool::new(fan(2_500).worker(backend.clone()).build().unwrap(), 2);
    pool.start();
    let info = tokio::time::timeout(
        Duration::from_secs(90),
        o.wait_for_completion(&run, Duration::from_millis(50)),
    )
    .await
    .expect("the run finishes")
    .unwrap();
    pool.try_stop().await.unwrap();
    assert_eq!(info.status, RunStatus::Completed, "{info:?}");
}

/// A failed run past its retention whose items the sweep has begun to delete (listed in
/// `leftovers`) cannot be resumed: it would come back without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_being_swept_is_not_resumed() {
    let server = PostgresServer::start_or_panic();
    let config = PostgresConfig::new(server.url())
        .with_schema("late")
        .with_sweep_interval(Duration::from_secs(3600));
    let backend = PostgresBackend::connect_with(config).await.unwrap();
    let wf = Twice { double: Double {} };
    let o = wf.orchestrator(backend.clone()).build().unwrap();
    let failed = o.start_run(&WorkflowCtx::new(()), 13).await.unwrap();
    let mut pool = WorkerPool::new(wf.worker(backend.clone()).build().unwrap(), 1);
    pool.start();
    assert_eq!(finish(&o, &failed).await.status, RunStatus::Failed);
    pool.try_stop().await.unwrap();
    let (client, connection) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .execute(
            "INSERT INTO late.leftovers (run_id) VALUES ($1)",
            &[&failed],
        )
        .await
        .unwrap();
    match o.resume(&failed).await {
        Err(FloxideError::Distributed(DistributedError::RunExpired(run))) => {
            assert_eq!(run, failed)
        }
        other => panic!("a run being swept must not be resumed: {other:?}"),
    }
    assert_eq!(o.status(&failed).await.unwrap(), RunStatus::Failed);
}

/// Fails its first call in this process, then passes its input on.
static FAIL_FIRST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

node! {
    /// Fails once (a dead letter), then passes anything on.
    pub struct FailsOnce {};
    input = u32;
    output = u32;
    |_ctx, n| {
        if FAIL_FIRST.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(FloxideError::Generic("first call".into()));
        }
        Ok(Transition::Next(n))
    }
}

workflow! {
    pub struct Once { step: FailsOnce }
    start = step;
    edges { step => []; }
}

/// A run's retention counts from its last finish: a run that failed, was resumed after the
/// retention of that failure had passed, and completed, stays a retention after completing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_runs_retention_counts_from_its_last_finish() {
    let server = PostgresServer::start_or_panic();
    let config = PostgresConfig::new(server.url())
        .with_schema("again")
        .with_retention(Duration::from_secs(1))
        .with_sweep_interval(Duration::from_secs(3600));
    let backend = PostgresBackend::connect_with(config).await.unwrap();
    let wf = Once { step: FailsOnce {} };
    let o = wf.orchestrator(backend.clone()).build().unwrap();
    let run = o.start_run(&WorkflowCtx::new(()), 8).await.unwrap();
    let mut pool = WorkerPool::new(wf.worker(backend.clone()).build().unwrap(), 1);
    pool.start();
    assert_eq!(finish(&o, &run).await.status, RunStatus::Failed);
    assert_eq!(count(&server, "again", "finished").await, 1);
    // The failure's retention passes; the run is resumed and completes before any sweep.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    o.resume(&run).await.unwrap();
    let info = finish(&o, &run).await;
    assert_eq!(info.status, RunStatus::Completed, "{info:?}");
    pool.try_stop().await.unwrap();
    assert_eq!(count(&server, "again", "finished").await, 2);
    let swept = backend.sweep().await.unwrap();
    assert_eq!(swept.runs, 0, "{swept:?}");
    assert_eq!(
        backend.run_info(&run).await.unwrap().output,
        Some(serde_json::json!(8))
    );
    assert_eq!(
        count(&server, "again", "finished").await,
        1,
        "the failure's line is dropped, the completion's kept"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let swept = backend.sweep().await.unwrap();
    assert_eq!(swept.runs, 1, "{swept:?}");
    assert!(matches!(
        backend.run_info(&run).await,
        Err(DistributedError::UnknownRun(_))
    ));
    assert_eq!(count(&server, "again", "finished").await, 0);
}
