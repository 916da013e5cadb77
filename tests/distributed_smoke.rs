use floxide::*;
use std::time::Duration;

node! {
    pub struct AddOne {};
    input = u64;
    output = u64;
    |_ctx, n| { Ok(Transition::Next(n + 1)) }
}

workflow! {
    pub struct Chain { a: AddOne, b: AddOne, c: AddOne }
    start = a;
    edges { a => [b]; b => [c]; c => []; }
}

fn chain() -> Chain {
    Chain {
        a: AddOne {},
        b: AddOne {},
        c: AddOne {},
    }
}

#[tokio::test]
async fn a_run_completes_through_run_once() {
    let wf = chain();
    let backend = InMemoryBackend::new();
    let orch = OrchestratorBuilder::new()
        .workflow(wf.clone())
        .backend(backend.clone())
        .build()
        .unwrap();
    let worker = WorkerBuilder::new()
        .workflow(wf)
        .backend(backend)
        .build()
        .unwrap();
    let run = orch.start_run(&WorkflowCtx::new(()), 1).await.unwrap();
    assert_eq!(orch.status(&run).await.unwrap(), RunStatus::Pending);
    assert_eq!(worker.run_once(0).await.unwrap(), None);
    assert_eq!(worker.run_once(0).await.unwrap(), None);
    assert_eq!(worker.run_once(0).await.unwrap(), Some((run.clone(), 4)));
    assert_eq!(worker.run_once(0).await.unwrap(), None);
    let info = orch
        .wait_for_completion(&run, Duration::from_millis(10))
        .await
        .unwrap();
    assert_eq!(info.status, RunStatus::Completed);
    assert_eq!(
        orch.wait_for_output(&run, Duration::from_secs(1))
            .await
            .unwrap(),
        4
    );
    let m = orch.metrics(&run).await.unwrap();
    assert_eq!(m.completed, 3);
}

#[tokio::test]
async fn per_store_builders_share_state() {
    let wf = chain();
    let q = InMemoryWorkQueue::default();
    let cs = InMemoryContextStore::default();
    let ri = InMemoryRunInfoStore::default();
    let ms = InMemoryMetricsStore::default();
    let es = InMemoryErrorStore::default();
    let ls = InMemoryLivenessStore::default();
    let ws = InMemoryWorkItemStateStore::default();
    let orch = OrchestratorBuilder::new()
        .workflow(wf.clone())
        .queue(q.clone())
        .context_store(cs.clone())
        .run_info_store(ri.clone())
        .metrics_store(ms.clone())
        .error_store(es.clone())
        .liveness_store(ls.clone())
        .work_item_state_store(ws.clone())
        .build()
        .unwrap();
    let worker = DistributedWorker::builder()
        .workflow(wf)
        .queue(q)
        .context_store(cs)
        .run_info_store(ri)
        .metrics_store(ms)
        .error_store(es)
        .liveness_store(ls)
        .work_item_state_store(ws)
        .build()
        .unwrap();
    let run = orch.start_run(&WorkflowCtx::new(()), 10).await.unwrap();
    let mut pool = WorkerPool::new(worker, 2);
    pool.start();
    assert_eq!(
        orch.wait_for_output(&run, Duration::from_secs(5))
            .await
            .unwrap(),
        13
    );
    pool.try_stop().await.unwrap();
}

#[tokio::test]
async fn generated_glue_builds_workers_and_orchestrators() {
    let wf = chain();
    assert_eq!(Chain::NODE_NAMES, ["a", "b", "c"]);
    let backend = InMemoryBackend::new();
    let orch = wf.orchestrator(backend.clone()).build().unwrap();
    let worker = wf
        .worker(backend)
        .lease_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let run = orch.start_run(&WorkflowCtx::new(()), 0).await.unwrap();
    while worker.run_once("w").await.unwrap().is_none() {}
    assert_eq!(
        orch.wait_for_output(&run, Duration::from_secs(1))
            .await
            .unwrap(),
        3
    );
}

/// Fails every time, counting its executions.
#[derive(Debug, Clone, Default)]
pub struct AlwaysFails {
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait]
impl Node for AlwaysFails {
    type Input = u64;
    type Output = u64;
    async fn process(&self, _ctx: &(), _n: u64) -> Result<Transition<u64>, FloxideError> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Err(FloxideError::Generic("always".into()))
    }
}

workflow! {
    pub struct OwnPolicy {
        #[retry = policy]
        node: AlwaysFails,
        policy: RetryPolicy,
    }
    start = node;
    edges { node => []; }
}

#[tokio::test(start_paused = true)]
async fn a_nodes_own_retry_policy_is_not_extended_by_the_worker_policy() {
    let node = AlwaysFails::default();
    let wf = OwnPolicy {
        node: node.clone(),
        policy: RetryPolicy::new(
            2,
            Duration::from_millis(10),
            Duration::from_millis(10),
            BackoffStrategy::Linear,
            RetryError::Generic,
        ),
    };
    let backend = InMemoryBackend::new();
    let orch = wf.orchestrator(backend.clone()).build().unwrap();
    let worker = wf
        .worker(backend)
        .retry_policy(RetryPolicy::new(
            5,
            Duration::from_millis(10),
            Duration::from_millis(10),
            BackoffStrategy::Linear,
            RetryError::All,
        ))
        .build()
        .unwrap();
    let run = orch.start_run(&WorkflowCtx::new(()), 0).await.unwrap();
    let mut pool = WorkerPool::new(worker, 1);
    pool.start();
    let info = orch
        .wait_for_completion(&run, Duration::from_secs(5))
        .await
        .unwrap();
    pool.try_stop().await.unwrap();
    assert_eq!(info.status, RunStatus::Failed);
    assert_eq!(
        node.calls.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the node's own policy allows 2 attempts"
    );
}

#[tokio::test]
async fn pools_in_one_process_have_distinct_worker_ids() {
    let wf = chain();
    let backend = InMemoryBackend::new();
    let mut one = WorkerPool::new(wf.worker(backend.clone()).build().unwrap(), 2);
    let mut two = WorkerPool::new(wf.worker(backend).build().unwrap(), 2);
    one.start();
    two.start();
    let mut ids: Vec<_> = one
        .worker_ids()
        .iter()
        .chain(two.worker_ids())
        .cloned()
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4);
    one.try_stop().await.unwrap();
    two.try_stop().await.unwrap();
}

/// On the in-memory backend a waiter on one run is woken by that run's changes only (not
/// by every run's, which would wake every waiter of a busy process on each change).
#[tokio::test(start_paused = true)]
async fn a_run_watch_wakes_for_its_own_run_only() {
    floxide::conformance::a_run_watch_wakes_for_its_own_run_only(InMemoryBackend::new()).await;
}

/// A step's wait for changes of its run (its lease keeper's) that starts after the run was
/// cancelled answers at once: a cancel made between the take and the step's first wait
/// reaches the step now, not at its next heartbeat.
#[tokio::test(start_paused = true)]
async fn a_wait_that_starts_after_a_cancel_answers_at_once() {
    let wf = chain();
    let backend = InMemoryBackend::new();
    let o = wf.orchestrator(backend.clone()).build().unwrap();
    let run = o.start_run(&WorkflowCtx::new(()), 1).await.unwrap();
    let options = TakeOptions::default();
    let taken = backend
        .take("Chain", &WorkerId::from("w"), options, Duration::ZERO)
        .await
        .unwrap()
        .expect("the first item");
    assert_eq!(taken.lease.run_id, run);
    let long = Duration::from_secs(60);
    // Still running: the wait lasts until its timeout.
    let before = tokio::time::Instant::now();
    backend.wait_run_change(&run, long).await;
    assert_eq!(before.elapsed(), long);
    // Cancelled before the wait began: it answers at once.
    o.cancel(&run).await.unwrap();
    let before = tokio::time::Instant::now();
    backend.wait_run_change(&run, long).await;
    assert!(before.elapsed() < long, "the cancel was missed");
}
