//! Waiting for a run's output: the event of its completion carries a short output, so that a
//! waiter it wakes need not read the run.

use std::time::Duration;

use floxide::distributed::AdminBackend;
use floxide::*;
use floxide_redis::testing::{RedisServer, ServerOptions};
use floxide_redis::{RedisBackend, RedisClient, RedisConfig};

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

const PREFIX: &str = "wait:";
const PATIENCE: Duration = Duration::from_secs(10);

async fn backend(server: &RedisServer) -> RedisBackend {
    let config = RedisConfig::new(server.url()).with_key_prefix(PREFIX);
    RedisBackend::new(RedisClient::new(config).await.expect("connect"))
}

fn text() -> Text {
    Text {
        a: Repeat {},
        b: Quote {},
    }
}

/// Overwrites the output stored in a finished run's record (partition 0 of one).
async fn overwrite_stored_output(server: &RedisServer, run: &str, output: &str) {
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{PREFIX}{{p0}}:r:{run}");
    let fields: usize = redis::cmd("HSET")
        .arg(&key)
        .arg("out")
        .arg(output)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        fields, 0,
        "the record of run {run} holds an output at {key}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_output_reaches_every_process_with_the_completion_event() {
    let server = RedisServer::start_or_panic(ServerOptions::default());
    let (workers, watcher) = (backend(&server).await, backend(&server).await);
    let wf = text();
    let orchestrator = wf.orchestrator(workers.clone()).build().unwrap();
    let mut pool = WorkerPool::new(wf.worker(workers).build().unwrap(), 2);
    pool.start();
    let run = orchestrator
        .start_run(&WorkflowCtx::new(()), 3)
        .await
        .unwrap();
    assert_eq!(
        orchestrator.wait_for_output(&run, PATIENCE).await.unwrap(),
        "\txxx"
    );
    pool.try_stop().await.unwrap();

    // The other process heard it too (its listener may lag the waiter a little).
    let heard = async {
        loop {
            if let Some(output) = watcher.heard_output(&run) {
                return output;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let heard = tokio::time::timeout(PATIENCE, heard)
        .await
        .expect("the completion event carries the output");
    assert_eq!(heard, serde_json::to_vec("\txxx").unwrap());

    // Its waiter takes the output from the event, not from the record.
    overwrite_stored_output(&server, &run, "\"stored\"").await;
    let elsewhere = text().orchestrator(watcher.clone()).build().unwrap();
    assert_eq!(
        elsewhere.wait_for_output(&run, PATIENCE).await.unwrap(),
        "\txxx"
    );
    // Reads still show the record.
    let info = watcher.run_info(&run).await.unwrap();
    assert_eq!(info.output, Some(serde_json::json!("stored")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_outputs_and_tabbed_run_ids_are_read_from_the_record() {
    let server = RedisServer::start_or_panic(ServerOptions::default());
    let backend = backend(&server).await;
    let wf = text();
    let orchestrator = wf.orchestrator(backend.clone()).build().unwrap();
    let mut pool = WorkerPool::new(wf.worker(backend.clone()).build().unwrap(), 2);
    pool.start();
    let long = orchestrator
        .start_run(&WorkflowCtx::new(()), 2000)
        .await
        .unwrap();
    let tabbed = orchestrator
        .start_run_with_id(&WorkflowCtx::new(()), 1, "order\t17")
        .await
        .unwrap();
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
    assert_eq!(backend.heard_output(&long), None, "too long for an event");
    assert_eq!(backend.heard_output(&tabbed), None, "a tab in the run id");
}
