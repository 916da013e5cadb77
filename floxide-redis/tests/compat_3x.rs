//! Code written against Floxide 3.x on Redis: the per-store `Redis…` types made with
//! `::new(client)` in the builders, and `start_distributed`/`step_distributed` over them,
//! against a private `redis-server`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use floxide::distributed::{ItemProcessedOutcome, StepCallbacks};
use floxide::*;
use floxide_redis::testing::{RedisServer, ServerOptions};
use floxide_redis::{
    RedisClient, RedisClientError, RedisConfig, RedisContextStore, RedisErrorStore,
    RedisLivenessStore, RedisMetricsStore, RedisRunInfoStore, RedisWorkItemStateStore,
    RedisWorkQueue,
};

static SERVER: OnceLock<RedisServer> = OnceLock::new();
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A client of the shared test server, under a key prefix of its own.
async fn client() -> Result<RedisClient, RedisClientError> {
    let server = SERVER.get_or_init(|| RedisServer::start_or_panic(ServerOptions::default()));
    let prefix = format!("compat{}:", NEXT.fetch_add(1, Ordering::SeqCst));
    RedisClient::new(
        RedisConfig::new(server.url())
            .with_key_prefix(prefix)
            .with_connection_timeout(Duration::from_secs(5)),
    )
    .await
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, Merge)]
pub struct Notes {
    pub log: EventLog<String>,
}

node! {
    pub struct Split {};
    context = Notes;
    input = u32;
    output = u32;
    |ctx, n| {
        ctx.log.append(format!("split {n}"));
        Ok(Transition::NextAll(vec![n, n + 1, n + 2]))
    }
}

node! {
    pub struct Square {};
    context = Notes;
    input = u32;
    output = u32;
    |ctx, n| {
        ctx.log.append(format!("square {n}"));
        Ok(Transition::Next(n * n))
    }
}

workflow! {
    pub struct Squares { split: Split, square: Square }
    start = split;
    context = Notes;
    edges { split => [square]; square => []; }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_shaped_worker_builder_runs_on_redis_stores() {
    let client = client().await.expect("connect");
    assert!(client.prefixed_key("x").ends_with(":x"));
    let wf = Squares {
        split: Split {},
        square: Square {},
    };
    let worker = DistributedWorker::builder()
        .workflow(wf.clone())
        .queue(RedisWorkQueue::<SquaresWorkItem>::new(client.clone()))
        .context_store(RedisContextStore::<Notes>::new(client.clone()))
        .run_info_store(RedisRunInfoStore::new(client.clone()))
        .metrics_store(RedisMetricsStore::new(client.clone()))
        .error_store(RedisErrorStore::new(client.clone()))
        .liveness_store(RedisLivenessStore::new(client.clone()))
        .work_item_state_store(RedisWorkItemStateStore::<SquaresWorkItem>::new(
            client.clone(),
        ))
        .build()
        .unwrap();
    let runs = RedisRunInfoStore::new(client.clone());
    let orchestrator = OrchestratorBuilder::new()
        .workflow(wf)
        .queue(RedisWorkQueue::<SquaresWorkItem>::new(client.clone()))
        .context_store(RedisContextStore::<Notes>::new(client.clone()))
        .run_info_store(runs.clone())
        .metrics_store(RedisMetricsStore::new(client.clone()))
        .error_store(RedisErrorStore::new(client.clone()))
        .liveness_store(RedisLivenessStore::new(client.clone()))
        .work_item_state_store(RedisWorkItemStateStore::<SquaresWorkItem>::new(
            client.clone(),
        ))
        .build()
        .unwrap();
    let run_id = orchestrator
        .start_run(&WorkflowCtx::new(Notes::default()), 3)
        .await
        .unwrap();
    let items = RedisWorkItemStateStore::<SquaresWorkItem>::new(client.clone());
    let waiting = items.get_all(&run_id).await.unwrap();
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].status, WorkItemStatus::Pending);
    assert_eq!(
        items
            .get_status(&run_id, &waiting[0].work_item)
            .await
            .unwrap(),
        WorkItemStatus::Pending
    );
    let mut pool = WorkerPool::new(worker, 2);
    pool.start();
    let info = tokio::time::timeout(
        Duration::from_secs(20),
        orchestrator.wait_for_completion(&run_id, Duration::from_millis(100)),
    )
    .await
    .expect("the run finishes")
    .unwrap();
    assert_eq!(info.status, RunStatus::Completed);
    assert_eq!(info.outputs.len(), 3);
    let context = orchestrator.context(&run_id).await.unwrap();
    assert_eq!(context.log.len(), 4);
    let stored = runs.get_run(&run_id).await.unwrap().expect("the run");
    assert_eq!(stored.status, RunStatus::Completed);
    // A completed run keeps its record, context and outputs; its items go at the finish.
    assert!(items.get_all(&run_id).await.unwrap().is_empty());
    pool.try_stop().await.unwrap();
}

struct Count(Mutex<Vec<String>>);

#[async_trait]
impl StepCallbacks<Notes, Squares> for Count {
    async fn on_started(&self, _run: String, item: SquaresWorkItem) -> Result<(), FloxideError> {
        self.0.lock().unwrap().push(format!("start {item}"));
        Ok(())
    }
    async fn on_item_processed(
        &self,
        _run: String,
        _item: SquaresWorkItem,
        outcome: ItemProcessedOutcome,
    ) -> Result<(), FloxideError> {
        let terminal = matches!(outcome, ItemProcessedOutcome::SuccessTerminal(_));
        self.0
            .lock()
            .unwrap()
            .push(format!("done terminal={terminal}"));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_and_step_distributed_on_redis_stores() {
    let client = client().await.expect("connect");
    let store = RedisContextStore::<Notes>::new(client.clone());
    let queue = RedisWorkQueue::<SquaresWorkItem>::new(client.clone());
    let wf = Squares {
        split: Split {},
        square: Square {},
    };
    wf.start_distributed(
        &WorkflowCtx::new(Notes::default()),
        2,
        &store,
        &queue,
        "run-a",
    )
    .await
    .unwrap();
    let callbacks = Arc::new(Count(Mutex::new(Vec::new())));
    // Two "workers" step concurrently until the queue is drained.
    let mut tasks = Vec::new();
    for worker in 0..2 {
        let (wf, store, queue, callbacks) =
            (wf.clone(), store.clone(), queue.clone(), callbacks.clone());
        tasks.push(tokio::spawn(async move {
            let mut outputs = Vec::new();
            let mut idle = 0;
            while idle < 20 {
                match wf
                    .step_distributed(&store, &queue, worker, callbacks.clone())
                    .await
                    .unwrap()
                {
                    Some((_, out)) => outputs.push(out),
                    None => {
                        idle += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            outputs
        }));
    }
    let mut outputs = Vec::new();
    for task in tasks {
        outputs.extend(task.await.unwrap());
    }
    outputs.sort();
    assert_eq!(outputs, [4, 9, 16]);
    let seen = callbacks.0.lock().unwrap().clone();
    assert_eq!(seen.iter().filter(|s| s.starts_with("start")).count(), 4);
    assert_eq!(
        seen.iter().filter(|s| *s == "done terminal=true").count(),
        3
    );
    // The context of the run holds every step's event (G3), read through the 3.x store.
    let notes = store.get("run-a").await.unwrap().expect("the run");
    let mut lines: Vec<String> = notes.log.events().collect();
    lines.sort();
    assert_eq!(lines, ["split 2", "square 2", "square 3", "square 4"]);
    assert!(WorkQueue::<Notes, _>::pending_work(&queue, "run-a")
        .await
        .unwrap()
        .is_empty());
}
