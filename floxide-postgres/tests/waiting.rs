//! Waiting for a run's output: the notification of its completion carries a short output, so
//! that a waiter it wakes need not read the run.

use std::time::Duration;

use floxide::distributed::AdminBackend;
use floxide::*;
use floxide_postgres::testing::PostgresServer;
use floxide_postgres::PostgresBackend;

node! {
    pub struct Repeat {};
    input = usize;
    output = String;
    |_ctx, n| { Ok(Transition::Next("x".repeat(n))) }
}

node! {
    pub struct Quote {};
    input = String;
    output = String;
    |_ctx, s| { Ok(Transition::Next(format!("\t{s}"))) }
}

workflow! {
    pub struct Text { a: Repeat, b: Quote }
    start = a;
    edges { a => [b]; b => []; }
}

const PATIENCE: Duration = Duration::from_secs(10);

fn text() -> Text {
    Text {
        a: Repeat {},
        b: Quote {},
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_output_reaches_every_process_with_the_completion_notification() {
    let server = PostgresServer::start_or_panic();
    let workers = PostgresBackend::connect(server.url()).await.unwrap();
    let watcher = PostgresBackend::connect(server.url()).await.unwrap();
    let wf = text();
    let orchestrator = wf.orchestrator(workers.clone()).build().unwrap();
    let mut pool = WorkerPool::new(wf.worker(workers.clone()).build().unwrap(), 2);
    pool.start();
    let short = orchestrator
        .start_run(&WorkflowCtx::new(()), 3)
        .await
        .unwrap();
    let long = orchestrator
        .start_run(&WorkflowCtx::new(()), 2000)
        .await
        .unwrap();
    let tabbed = orchestrator
        .start_run_with_id(&WorkflowCtx::new(()), 1, "order\t17")
        .await
        .unwrap();
    assert_eq!(
        orchestrator
            .wait_for_output(&short, PATIENCE)
            .await
            .unwrap(),
        "\txxx"
    );
    assert_eq!(
        orchestrator.wait_for_output(&long, PATIENCE).await.unwrap(),
        format!("\t{}", "x".repeat(2000))
    );
    assert_eq!(
        orchestrator
            .wait_for_output(&tabbed, PATIENCE)
            .await
            .unwrap(),
        "\tx"
    );
    pool.try_stop().await.unwrap();

    // The other process heard the short one too (its listener may lag a little).
    let heard = async {
        loop {
            if let Some(output) = watcher.heard_output(&short) {
                return output;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let heard = tokio::time::timeout(PATIENCE, heard)
        .await
        .expect("the completion notification carries the output");
    assert_eq!(heard, serde_json::to_vec("\txxx").unwrap());
    assert_eq!(workers.heard_output(&long), None, "too long to carry");
    assert_eq!(workers.heard_output(&tabbed), None, "a tab in the run id");

    // Its waiter takes the output from the notification, not from the record.
    let (db, connection) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let changed = db
        .execute(
            "UPDATE floxide.runs SET output = '\"stored\"'::jsonb WHERE run_id = $1",
            &[&short],
        )
        .await
        .unwrap();
    assert_eq!(changed, 1);
    let elsewhere = text().orchestrator(watcher.clone()).build().unwrap();
    assert_eq!(
        elsewhere.wait_for_output(&short, PATIENCE).await.unwrap(),
        "\txxx"
    );
    // Reads still show the record.
    let info = watcher.run_info(&short).await.unwrap();
    assert_eq!(info.output, Some(serde_json::json!("stored")));
}
