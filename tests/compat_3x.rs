//! Code written against Floxide 3.x: its module paths, its per-store types and builder, and
//! the low-level `start_distributed`/`step_distributed` with `StepCallbacks`, on the in-memory
//! backend. (The same on Redis: `floxide-redis/tests/compat_3x.rs`.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

// The 3.x module paths.
use floxide::batch::BatchNode;
use floxide::context::{SharedState, WorkflowCtx};
use floxide::distributed::context_store::{ContextStore, InMemoryContextStore};
use floxide::distributed::error_store::{ErrorStore, InMemoryErrorStore};
use floxide::distributed::event_log::EventLog;
use floxide::distributed::liveness_store::{InMemoryLivenessStore, LivenessStore};
use floxide::distributed::metrics_store::{InMemoryMetricsStore, MetricsStore};
use floxide::distributed::orchestrator::OrchestratorBuilder;
use floxide::distributed::run_info_store::{InMemoryRunInfoStore, RunInfoError, RunInfoStore};
use floxide::distributed::types::{ItemProcessedOutcome, RunStatus, StepCallbacks};
use floxide::distributed::work_item_store::{InMemoryWorkItemStateStore, WorkItemStateStore};
use floxide::distributed::work_queue::{InMemoryWorkQueue, WorkQueue, WorkQueueError};
use floxide::distributed::worker::{DistributedWorker, WorkerPool};
use floxide::error::FloxideError;
use floxide::merge::{Fixed, Merge};
use floxide::node::Node;
use floxide::transition::Transition;
use floxide::workflow::{WorkItem, Workflow};
use floxide::{async_trait, node, workflow};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, floxide::Merge)]
pub struct Ctx {
    pub log: EventLog<String>,
    pub label: Fixed<String>,
}

node! {
    pub struct Start {};
    context = Ctx;
    input = u32;
    output = u32;
    |ctx, n| {
        ctx.log.append(format!("start {n}"));
        Ok(Transition::Next(n))
    }
}

node! {
    pub struct Branch { add: u32 };
    context = Ctx;
    input = u32;
    output = u32;
    |ctx, n| {
        if n + self.add == 13 {
            return Err(FloxideError::Generic("thirteen".into()));
        }
        ctx.log.append(format!("branch {}", n + self.add));
        Ok(Transition::Next(n + self.add))
    }
}

workflow! {
    pub struct Fork { start: Start, left: Branch, right: Branch }
    start = start;
    context = Ctx;
    edges { start => [left, right]; left => []; right => []; }
}

fn fork() -> Fork {
    Fork {
        start: Start {},
        left: Branch { add: 1 },
        right: Branch { add: 100 },
    }
}

/// Records what the callbacks saw.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<String>>,
    fail_start: bool,
}

#[async_trait]
impl StepCallbacks<Ctx, Fork> for Recorder {
    async fn on_started(&self, run_id: String, item: ForkWorkItem) -> Result<(), FloxideError> {
        self.seen
            .lock()
            .unwrap()
            .push(format!("started {run_id} {item}"));
        if self.fail_start {
            return Err(FloxideError::Generic("not now".into()));
        }
        Ok(())
    }
    async fn on_item_processed(
        &self,
        run_id: String,
        item: ForkWorkItem,
        outcome: ItemProcessedOutcome,
    ) -> Result<(), FloxideError> {
        let what = match outcome {
            ItemProcessedOutcome::SuccessTerminal(v) => format!("terminal {v}"),
            ItemProcessedOutcome::SuccessNonTerminal => "non-terminal".to_owned(),
            ItemProcessedOutcome::Error(e) => format!("error {e}"),
        };
        self.seen
            .lock()
            .unwrap()
            .push(format!("processed {run_id} {} {what}", item.node_name()));
        Ok(())
    }
}

#[tokio::test]
async fn start_and_step_distributed_run_a_fan_out_with_callbacks() {
    let store = InMemoryContextStore::<Ctx>::default();
    let queue = InMemoryWorkQueue::<ForkWorkItem>::default();
    let wf = fork();
    let ctx = WorkflowCtx::new(Ctx {
        label: Fixed::new("first".into()),
        ..Ctx::default()
    });
    wf.start_distributed(&ctx, 5, &store, &queue, "run-1")
        .await
        .unwrap();
    // Seeding an existing run does nothing (as in 3.x): the first context stays.
    let other = WorkflowCtx::new(Ctx {
        label: Fixed::new("second".into()),
        ..Ctx::default()
    });
    wf.start_distributed(&other, 7, &store, &queue, "run-1")
        .await
        .unwrap();
    assert_eq!(
        WorkQueue::<Ctx, _>::pending_work(&queue, "run-1")
            .await
            .unwrap()
            .len(),
        1
    );

    let callbacks = Arc::new(Recorder::default());
    let mut outputs = Vec::new();
    for _ in 0..3 {
        let step = wf
            .step_distributed(&store, &queue, 0, callbacks.clone())
            .await
            .unwrap();
        outputs.extend(step);
    }
    // Nothing left: the queue is empty and the call returns at once.
    assert!(wf
        .step_distributed(&store, &queue, 0, callbacks.clone())
        .await
        .unwrap()
        .is_none());
    outputs.sort();
    assert_eq!(
        outputs,
        [("run-1".to_owned(), 6), ("run-1".to_owned(), 105)]
    );

    let seen = callbacks.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 6, "{seen:?}");
    assert_eq!(seen[0], "started run-1 Start(5)");
    assert_eq!(seen[1], "processed run-1 start non-terminal");
    assert!(seen.contains(&"processed run-1 left terminal 6".to_owned()));
    assert!(seen.contains(&"processed run-1 right terminal 105".to_owned()));

    // The context store reads the merged context of the run.
    let stored = store.get("run-1").await.unwrap().expect("the run exists");
    assert_eq!(stored.label.get(), "first");
    let mut lines: Vec<String> = stored.log.events().collect();
    lines.sort();
    assert_eq!(lines, ["branch 105", "branch 6", "start 5"]);
    assert!(store.get("no-such-run").await.unwrap().is_none());
}

#[tokio::test]
async fn a_failing_step_is_recorded_and_returned_as_a_step_error() {
    let store = InMemoryContextStore::<Ctx>::default();
    let queue = InMemoryWorkQueue::<ForkWorkItem>::default();
    let runs = InMemoryRunInfoStore::default();
    let errors = InMemoryErrorStore::default();
    let wf = fork();
    wf.start_distributed(&WorkflowCtx::new(Ctx::default()), 12, &store, &queue, "r")
        .await
        .unwrap();
    let callbacks = Arc::new(Recorder::default());
    let mut failures = Vec::new();
    for _ in 0..3 {
        if let Err(e) = wf
            .step_distributed(&store, &queue, 1, callbacks.clone())
            .await
        {
            failures.push(e);
        }
    }
    // `left` got 12 + 1 = 13 and failed; `right` succeeded.
    assert_eq!(failures.len(), 1);
    let failure = &failures[0];
    assert_eq!(failure.run_id.as_deref(), Some("r"));
    assert_eq!(
        failure.work_item.as_ref().map(WorkItem::node_name),
        Some("left")
    );
    assert!(failure.error.to_string().contains("thirteen"));
    assert!(callbacks
        .seen
        .lock()
        .unwrap()
        .iter()
        .any(|s| s.starts_with("processed r left error") && s.contains("thirteen")));

    // Recorded in the backend the stores are views of: runs and errors join it through the
    // builder below, so they read the same run.
    let _orchestrator = OrchestratorBuilder::new()
        .workflow(wf.clone())
        .queue(queue.clone())
        .context_store(store.clone())
        .run_info_store(runs.clone())
        .metrics_store(InMemoryMetricsStore::default())
        .error_store(errors.clone())
        .liveness_store(InMemoryLivenessStore::default())
        .work_item_state_store(InMemoryWorkItemStateStore::<ForkWorkItem>::default())
        .build()
        .unwrap();
    let info = runs.get_run("r").await.unwrap().expect("the run exists");
    assert_eq!(info.status, RunStatus::Failed);
    let recorded = errors.get_errors("r").await.unwrap();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].node, "left");
}

#[tokio::test]
async fn an_on_started_error_gives_the_item_back() {
    let store = InMemoryContextStore::<Ctx>::default();
    let queue = InMemoryWorkQueue::<ForkWorkItem>::default();
    let wf = fork();
    wf.start_distributed(&WorkflowCtx::new(Ctx::default()), 1, &store, &queue, "r")
        .await
        .unwrap();
    let refusing = Arc::new(Recorder {
        fail_start: true,
        ..Recorder::default()
    });
    let error = wf
        .step_distributed(&store, &queue, 0, refusing)
        .await
        .unwrap_err();
    assert!(error.error.to_string().contains("not now"));
    assert_eq!(error.run_id.as_deref(), Some("r"));
    // The item was released, not lost: the next step takes and executes it.
    let callbacks = Arc::new(Recorder::default());
    let step = wf
        .step_distributed(&store, &queue, 0, callbacks.clone())
        .await
        .unwrap();
    assert!(step.is_none());
    assert_eq!(
        callbacks.seen.lock().unwrap()[1],
        "processed r start non-terminal"
    );
}

#[tokio::test]
async fn step_distributed_never_takes_an_item_leased_by_a_worker() {
    // G1/G2 for the 3.x entry point: a worker holds the only item under its lease, so
    // step_distributed finds nothing to do instead of executing it a second time.
    let backend = floxide::InMemoryBackend::new();
    let store = backend.context_store::<Ctx>();
    let queue = backend.queue::<ForkWorkItem>();
    let wf = fork();
    wf.start_distributed(&WorkflowCtx::new(Ctx::default()), 1, &store, &queue, "r")
        .await
        .unwrap();
    let leased = floxide::WorkerBackend::take(
        &backend,
        wf.name(),
        &floxide::WorkerId::from("holder"),
        floxide::TakeOptions::default(),
        Duration::ZERO,
    )
    .await
    .unwrap()
    .expect("the first item");
    let callbacks = Arc::new(Recorder::default());
    assert!(wf
        .step_distributed(&store, &queue, 0, callbacks.clone())
        .await
        .unwrap()
        .is_none());
    assert!(callbacks.seen.lock().unwrap().is_empty());
    drop(leased);
}

node! {
    pub struct Double {};
    context = ();
    input = u64;
    output = u64;
    |_ctx, n| { Ok(Transition::Next(n * 2)) }
}

workflow! {
    pub struct Doubler { double: Double }
    start = double;
    edges { double => []; }
}

/// The shape of the 3.x tutorial: `DistributedWorker::builder()` with every store set,
/// `run_forever` on a clone in a task, an orchestrator over the same stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_shaped_worker_builder_runs_on_in_memory_stores() {
    let my_queue = InMemoryWorkQueue::<DoublerWorkItem>::default();
    let my_context_store = InMemoryContextStore::<()>::default();
    let my_run_info_store = InMemoryRunInfoStore::default();
    let my_metrics_store = InMemoryMetricsStore::default();
    let my_error_store = InMemoryErrorStore::default();
    let my_liveness_store = InMemoryLivenessStore::default();
    let my_work_item_state_store = InMemoryWorkItemStateStore::<DoublerWorkItem>::default();

    let mut worker = DistributedWorker::builder()
        .workflow(Doubler { double: Double {} })
        .queue(my_queue.clone())
        .context_store(my_context_store.clone())
        .run_info_store(my_run_info_store.clone())
        .metrics_store(my_metrics_store.clone())
        .error_store(my_error_store.clone())
        .liveness_store(my_liveness_store.clone())
        .work_item_state_store(my_work_item_state_store.clone())
        .build()
        .unwrap();
    worker.set_retry_policy(floxide::RetryPolicy::default());
    // WorkerPool lives at its 3.x path too.
    let _pool: fn(DistributedWorker<Doubler, ()>, usize) -> WorkerPool<Doubler, ()> =
        WorkerPool::new;
    let worker_id = 42;
    let worker_clone = worker.clone();
    // As in 3.x, `run_forever` never returns: its type is `Infallible`.
    let task = tokio::spawn(async move {
        let never: std::convert::Infallible = worker_clone.run_forever(worker_id).await;
        match never {}
    });

    let orchestrator = OrchestratorBuilder::new()
        .workflow(Doubler { double: Double {} })
        .queue(my_queue)
        .context_store(my_context_store)
        .run_info_store(my_run_info_store.clone())
        .metrics_store(my_metrics_store.clone())
        .error_store(my_error_store)
        .liveness_store(my_liveness_store.clone())
        .work_item_state_store(my_work_item_state_store.clone())
        .build()
        .unwrap();
    let run_id = orchestrator
        .start_run(&WorkflowCtx::new(()), 21)
        .await
        .unwrap();
    let info = tokio::time::timeout(
        Duration::from_secs(10),
        orchestrator.wait_for_completion(&run_id, Duration::from_millis(50)),
    )
    .await
    .expect("the run finishes")
    .unwrap();
    assert_eq!(info.status, RunStatus::Completed);
    assert_eq!(info.output, Some(serde_json::json!(42)));

    // The per-store views read what the run left.
    let metrics = my_metrics_store
        .get_metrics(&run_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(metrics.completed, 1);
    // A completed run's items go at its finish (its record, context and output stay).
    assert!(my_work_item_state_store
        .get_all(&run_id)
        .await
        .unwrap()
        .is_empty());
    let listed = my_run_info_store
        .list_runs(Some(RunStatus::Completed))
        .await;
    assert_eq!(listed.unwrap().len(), 1);
    assert!(my_liveness_store
        .list_health()
        .await
        .unwrap()
        .iter()
        .any(|h| h.worker_id.as_str() == "42"));
    assert_eq!(my_liveness_store.list_workers().await.unwrap(), [42]);
    task.abort();
}

#[tokio::test]
async fn writes_that_bypass_the_engine_are_typed_errors_and_status_changes_steer_the_run() {
    let backend = floxide::InMemoryBackend::new();
    let queue = backend.queue::<DoublerWorkItem>();
    let contexts = backend.context_store::<()>();
    let runs = backend.run_info_store();
    let items = backend.work_item_state_store::<DoublerWorkItem>();
    let wf = Doubler { double: Double {} };
    wf.start_distributed(&WorkflowCtx::new(()), 1, &contexts, &queue, "r")
        .await
        .unwrap();

    let pending = WorkQueue::<(), _>::pending_work(&queue, "r").await.unwrap();
    assert_eq!(pending.len(), 1);
    assert!(pending[0].is_terminal());
    let all = items.get_all("r").await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].work_item.to_string(), "Double(1)");
    assert_eq!(
        items.get_status("r", &all[0].work_item).await.unwrap(),
        floxide::WorkItemStatus::Pending
    );
    assert_eq!(items.get_attempts("r", &all[0].work_item).await.unwrap(), 1);
    let dequeue = WorkQueue::<(), _>::dequeue(&queue).await.unwrap_err();
    assert!(
        matches!(dequeue, WorkQueueError::Unsupported(_)),
        "{dequeue}"
    );
    assert!(
        dequeue.to_string().contains("step_distributed"),
        "{dequeue}"
    );
    assert!(matches!(
        WorkQueue::<(), _>::enqueue(&queue, "r", pending[0].clone()).await,
        Err(WorkQueueError::Unsupported(_))
    ));
    assert!(contexts.set("r", ()).await.is_err());
    assert!(items
        .set_status("r", &pending[0], floxide::WorkItemStatus::Completed)
        .await
        .is_err());

    // update_status drives the run's control actions.
    runs.update_status("r", RunStatus::Paused).await.unwrap();
    assert_eq!(
        runs.get_run("r").await.unwrap().unwrap().status,
        RunStatus::Paused
    );
    runs.update_status("r", RunStatus::Running).await.unwrap();
    runs.update_status("r", RunStatus::Cancelled).await.unwrap();
    assert_eq!(
        runs.get_run("r").await.unwrap().unwrap().status,
        RunStatus::Cancelled
    );
    assert!(matches!(
        runs.update_status("missing", RunStatus::Paused).await,
        Err(RunInfoError::NotFound)
    ));
    assert!(matches!(
        runs.update_status("r", RunStatus::Completed).await,
        Err(RunInfoError::Unsupported(_))
    ));
    assert!(runs.get_run("missing").await.unwrap().is_none());
}

/// A queue written for 3.x, outside Floxide: it cannot take part in leased, atomic steps.
#[derive(Clone)]
struct MyQueue;

#[async_trait]
impl WorkQueue<(), DoublerWorkItem> for MyQueue {
    async fn enqueue(&self, _: &str, _: DoublerWorkItem) -> Result<(), WorkQueueError> {
        Ok(())
    }
    async fn dequeue(&self) -> Result<Option<(String, DoublerWorkItem)>, WorkQueueError> {
        Ok(None)
    }
    async fn purge_run(&self, _: &str) -> Result<(), WorkQueueError> {
        Ok(())
    }
    async fn pending_work(&self, _: &str) -> Result<Vec<DoublerWorkItem>, WorkQueueError> {
        Ok(Vec::new())
    }
}

#[tokio::test]
async fn stores_of_other_origins_are_refused_with_a_clear_error() {
    let wf = Doubler { double: Double {} };
    let custom = DistributedWorker::builder()
        .workflow(wf.clone())
        .queue(MyQueue)
        .context_store(InMemoryContextStore::<()>::default())
        .run_info_store(InMemoryRunInfoStore::default())
        .metrics_store(InMemoryMetricsStore::default())
        .error_store(InMemoryErrorStore::default())
        .liveness_store(InMemoryLivenessStore::default())
        .work_item_state_store(InMemoryWorkItemStateStore::<DoublerWorkItem>::default())
        .build()
        .unwrap_err()
        .to_string();
    assert!(custom.contains("MyQueue"), "{custom}");
    assert!(
        custom.contains("implement `floxide::distributed::Backend`"),
        "{custom}"
    );

    // Two in-memory backends cannot be mixed.
    let a = floxide::InMemoryBackend::new();
    let b = floxide::InMemoryBackend::new();
    let error = wf
        .start_distributed(
            &WorkflowCtx::new(()),
            1,
            &a.context_store::<()>(),
            &b.queue::<DoublerWorkItem>(),
            "r",
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("different backends"), "{error}");
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Route {
    Small(u32),
    Large(u32),
    Pair(u32, String),
    Done(u32),
}

node! {
    pub struct Classify {};
    input = u32;
    output = Route;
    |_ctx, n| {
        Ok(Transition::Next(match n {
            0..=9 => Route::Small(n),
            10..=99 => Route::Large(n),
            100 => Route::Pair(n, "pair".into()),
            _ => Route::Done(n),
        }))
    }
}

node! {
    pub struct Show { tag: &'static str };
    input = u32;
    output = String;
    |_ctx, n| { Ok(Transition::Next(format!("{} {n}", self.tag))) }
}

node! {
    pub struct ShowPair {};
    input = (u32, String);
    output = String;
    |_ctx, pair| { Ok(Transition::Next(format!("{} {}", pair.1, pair.0))) }
}

node! {
    pub struct Finish {};
    input = u32;
    output = String;
    |_ctx, n| { Ok(Transition::Next(format!("done {n}"))) }
}

workflow! {
    pub struct Router { classify: Classify, small: Show, large: Show, pair: ShowPair, finish: Finish }
    start = classify;
    edges {
        classify => {
            Route::Small(_) => [small];
            Route::Large(_) => [large];
            Route::Pair(_, _) => [pair];
            Route::Done(_) => [finish];
        };
        small => [];
        large => [];
        pair => [];
        finish => [];
    }
}

#[tokio::test]
async fn a_wildcard_in_a_variant_forwards_its_payload_as_in_3x() {
    let wf = Router {
        classify: Classify {},
        small: Show { tag: "small" },
        large: Show { tag: "large" },
        pair: ShowPair {},
        finish: Finish {},
    };
    let ctx = WorkflowCtx::new(());
    assert_eq!(wf.run(&ctx, 5).await.unwrap(), "small 5");
    assert_eq!(wf.run(&ctx, 42).await.unwrap(), "large 42");
    assert_eq!(wf.run(&ctx, 100).await.unwrap(), "pair 100");
    assert_eq!(wf.run(&ctx, 500).await.unwrap(), "done 500");
}

#[test]
fn work_items_display_compare_and_know_their_terminals() {
    let wf = fork();
    let first = wf.start_work_item(3);
    assert_eq!(first.to_string(), "Start(3)");
    assert_eq!(first, wf.start_work_item(3));
    assert_ne!(first, wf.start_work_item(4));
    assert!(!first.is_terminal());
    let left = ForkWorkItem::Left(floxide::ItemId::ROOT, 1);
    assert!(left.is_terminal());
    assert_ne!(left, ForkWorkItem::Right(floxide::ItemId::ROOT, 1));
}

#[tokio::test]
async fn batch_node_names_its_context_and_processes_a_batch() {
    let batch: BatchNode<(), Double> = BatchNode::new(Double {}, 2);
    assert_eq!(batch.batch_size, 2);
    assert_eq!(
        batch.process_batch((), vec![1, 2, 3]).await.unwrap(),
        [2, 4, 6]
    );
    let next = Node::process(&batch, &(), vec![5]).await.unwrap();
    assert_eq!(next, Transition::Next(vec![10]));
    let shared = SharedState::new(1u32);
    assert_eq!(*shared.get().await, 1);
    let mut a = Fixed::new(1u32);
    a.merge(Fixed::default());
    assert_eq!(*a.get(), 1);
}
