//! A deployment at schema version 6 (the last before finished runs were listed in their own
//! table, outputs stored once and lease events written lazily) upgrades in place: its
//! finished runs keep their outputs and their retention, its pending run reads and runs as
//! before.

use std::time::Duration;

use floxide::distributed::*;
use floxide_postgres::testing::PostgresServer;
use floxide_postgres::{PostgresBackend, PostgresConfig, SCHEMA_VERSION};

/// The migrations of schema version 6, as a deployment of that version applied them.
const UP_TO_6: [&str; 6] = [
    include_str!("../migrations/0001_init.sql"),
    include_str!("../migrations/0002_graphs.sql"),
    include_str!("../migrations/0003_step_history.sql"),
    include_str!("../migrations/0004_unchecked_run_keys.sql"),
    include_str!("../migrations/0005_leftover_items.sql"),
    include_str!("../migrations/0006_lean_runs.sql"),
];

/// The rows of `table` (in the `old` schema) that belong to run `done`.
async fn rows_of_done(sql: &tokio_postgres::Client, table: &str) -> i64 {
    sql.query_one(
        &format!("SELECT count(*) FROM old.{table} WHERE run_id = 'done'"),
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

async fn client(server: &PostgresServer) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_6_deployment_upgrades_with_its_runs() {
    let server = PostgresServer::start_or_panic();
    let sql = client(&server).await;
    let mut setup = String::from(
        "CREATE SCHEMA old; SET search_path TO old;
         CREATE TABLE floxide_migrations (version integer PRIMARY KEY, name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now());",
    );
    for (n, migration) in UP_TO_6.iter().enumerate() {
        setup.push_str(migration);
        setup.push_str(&format!(
            ";\nINSERT INTO floxide_migrations (version, name) VALUES ({}, 'm{}');\n",
            n + 1,
            n + 1
        ));
    }
    // As version 6 left them: a run finished two seconds ago whose first output is in its
    // record and in `outputs` (with a second output), and a pending run with its first item.
    setup.push_str(
        "INSERT INTO runs (run_id, workflow, status, context, outstanding, start_request,
             output, started_at, finished_at, finish_request)
         VALUES ('done', 'Flow', 'completed', '\\x7b7d', 0, 'req', '1',
             now() - interval '3 seconds', now() - interval '2 seconds', 'req');
         INSERT INTO outputs (run_id, value) VALUES ('done', '1'), ('done', '2');
         INSERT INTO runs (run_id, workflow, status, context, outstanding, start_request)
         VALUES ('waiting', 'Flow', 'pending', '\\x7b7d', 1, 'req');
         INSERT INTO items (run_id, item_id, workflow, node, payload, state)
         VALUES ('waiting', '00000000-0000-0000-0000-000000000001', 'Flow', 'a', '\\x31', 'P');",
    );
    sql.batch_execute(&setup).await.unwrap();

    let config = PostgresConfig::new(server.url())
        .with_schema("old")
        .with_retention(Duration::from_secs(5))
        .with_sweep_interval(Duration::from_secs(3600));
    let backend = PostgresBackend::connect_with(config).await.unwrap();
    assert_eq!(backend.schema_version().await.unwrap(), SCHEMA_VERSION);

    // The finished run: both outputs, once each, and listed for its retention.
    let done = backend.run_info("done").await.unwrap();
    assert_eq!(done.status, RunStatus::Completed);
    assert_eq!(
        done.outputs,
        vec![serde_json::json!(1), serde_json::json!(2)]
    );
    assert_eq!(rows_of_done(&sql, "finished").await, 1);
    assert_eq!(
        backend.sweep().await.unwrap().runs,
        0,
        "within its retention"
    );

    // The pending run is taken, reads as running, and completes.
    assert_eq!(
        backend.run_info("waiting").await.unwrap().status,
        RunStatus::Pending
    );
    let me = WorkerId::from("w");
    let opts = TakeOptions {
        lease_timeout: Duration::from_secs(30),
        max_deliveries: 5,
    };
    let taken = backend
        .take_batch(
            TakeRequest::new("Flow", &me, opts).with_max(1),
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(
        backend.run_info("waiting").await.unwrap().status,
        RunStatus::Running
    );
    let mut step = StepCommit::new("a");
    step.outputs.push(serde_json::json!(7));
    assert_eq!(
        backend.commit(&taken[0].lease, &step).await.unwrap(),
        CommitOutcome::Committed {
            finished: Some(RunStatus::Completed)
        }
    );
    let waiting = backend.run_info("waiting").await.unwrap();
    assert_eq!(waiting.outputs, vec![serde_json::json!(7)]);

    // Past its retention, the old run goes with its outputs.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let swept = backend.sweep().await.unwrap();
    assert_eq!(swept.runs, 1, "{swept:?}");
    assert!(matches!(
        backend.run_info("done").await,
        Err(DistributedError::UnknownRun(_))
    ));
    assert_eq!(rows_of_done(&sql, "outputs").await, 0);
}
