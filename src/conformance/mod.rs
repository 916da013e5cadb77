//! The backend conformance suite: the distributed guarantees (G1–G7), checked against any
//! [`Backend`].
//!
//! Each check is an async function taking a fresh backend; it panics with a message naming
//! the broken guarantee. A backend crate runs all of them with [`conformance_tests!`]:
//!
//! ```text
//! floxide::conformance_tests!(#[tokio::test(start_paused = true)], async { InMemoryBackend::new() });
//! ```
//!
//! The checks use short leases (400 ms) and wait real time for them to expire, so they work
//! with tokio's paused clock (the in-memory backend follows it) and with servers that keep
//! their own time.

#![allow(missing_docs)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::distributed::*;
use crate::*;

mod batch;
mod chains;
mod control;
mod graphs;
mod history;
mod lifecycle;
mod model;
mod pages;
mod waiting;
pub use batch::*;
pub use chains::*;
pub use control::*;
pub use graphs::*;
pub use history::*;
pub use lifecycle::*;
pub use model::*;
pub use pages::*;
pub use waiting::*;

/// The lease the checks use.
pub const LEASE: Duration = Duration::from_millis(400);
/// How long a check waits for a run before it declares it stuck.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The context of the suite's workflows.
#[derive(Debug, Clone, Default, Merge, serde::Serialize, serde::Deserialize)]
#[serde(crate = "crate::__private::serde")]
pub struct Trace {
    /// One event per committed node execution (`"node:input"`).
    pub events: EventLog<String>,
    /// The branches a join has seen.
    pub arrived: SharedState<BTreeSet<u32>>,
}

impl Trace {
    /// How many events equal `event`.
    pub fn count(&self, event: &str) -> usize {
        self.events.events().filter(|e| e == event).count()
    }
}

/// Counts executions of a node and can hold its first one until released.
#[derive(Debug, Clone)]
pub struct Gate {
    executions: Arc<AtomicUsize>,
    hold_first: Arc<AtomicBool>,
    release: Arc<tokio::sync::Semaphore>,
    cancelled: Arc<AtomicUsize>,
    panic_first: Arc<AtomicBool>,
    fail_first: Arc<AtomicUsize>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            executions: Arc::default(),
            hold_first: Arc::default(),
            release: Arc::new(tokio::sync::Semaphore::new(0)),
            cancelled: Arc::default(),
            panic_first: Arc::default(),
            fail_first: Arc::default(),
        }
    }
}

impl Gate {
    /// A gate that lets every execution through.
    pub fn open() -> Self {
        Gate::default()
    }
    /// A gate that holds the first execution until [`release`](Self::release) (forever if never).
    pub fn holding_first() -> Self {
        let g = Gate::default();
        g.hold_first.store(true, Ordering::SeqCst);
        g
    }
    /// A gate whose first execution panics.
    pub fn panicking_first() -> Self {
        let g = Gate::default();
        g.panic_first.store(true, Ordering::SeqCst);
        g
    }
    /// A gate whose first `n` executions fail with a generic error.
    pub fn failing_first(n: usize) -> Self {
        let g = Gate::default();
        g.fail_first.store(n, Ordering::SeqCst);
        g
    }
    /// Lets the held execution go on.
    pub fn release(&self) {
        self.release.add_permits(1);
    }
    /// Executions so far (committed or not).
    pub fn executions(&self) -> usize {
        self.executions.load(Ordering::SeqCst)
    }
    /// Executions that saw their step's cancellation token fire.
    pub fn cancelled(&self) -> usize {
        self.cancelled.load(Ordering::SeqCst)
    }

    async fn pass(&self) -> Result<(), FloxideError> {
        self.executions.fetch_add(1, Ordering::SeqCst);
        if self.panic_first.swap(false, Ordering::SeqCst) {
            panic!("conformance: deliberate panic");
        }
        let failing = self.fail_first.load(Ordering::SeqCst);
        if failing > 0 {
            self.fail_first.store(failing - 1, Ordering::SeqCst);
            return Err(FloxideError::Generic(
                "conformance: deliberate failure".into(),
            ));
        }
        if self.hold_first.swap(false, Ordering::SeqCst) {
            let token = current_step().map(|s| s.cancel);
            let cancelled = async {
                match &token {
                    Some(t) => t.cancelled().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                permit = self.release.acquire() => drop(permit),
                _ = cancelled => {
                    self.cancelled.fetch_add(1, Ordering::SeqCst);
                    return Err(FloxideError::Cancelled);
                }
            }
        }
        Ok(())
    }
}

node! {
    /// Records `"{name}:{n}"` and passes `n + 1` on.
    pub struct Step { name: &'static str, gate: Gate };
    context = Trace;
    input = u32;
    output = u32;
    |ctx, n| {
        self.gate.pass().await?;
        // Interleave with other steps, even on a single-threaded runtime.
        tokio::task::yield_now().await;
        ctx.events.append(format!("{}:{n}", self.name));
        Ok(Transition::Next(n + 1))
    }
}

node! {
    /// Emits `0..n`.
    pub struct Spread { n: u32 };
    context = Trace;
    input = u32;
    output = u32;
    |_ctx, _n| { Ok(Transition::NextAll((0..self.n).collect())) }
}

node! {
    /// Records its arrival and holds until `total` branches arrived, then fires once.
    pub struct Join { total: usize };
    context = Trace;
    input = u32;
    output = u32;
    |ctx, i| {
        tokio::task::yield_now().await;
        let arrived = {
            let mut set = ctx.arrived.get().await;
            set.insert(i);
            set.len()
        };
        if arrived < self.total {
            Ok(Transition::Hold)
        } else {
            Ok(Transition::Next(arrived as u32))
        }
    }
}

workflow! {
    /// `a → b → c`.
    pub struct Chain { a: Step, b: Step, c: Step }
    context = Trace;
    start = a;
    edges { a => [b]; b => [c]; c => []; }
}

impl Chain {
    /// A chain whose node `b` passes through `gate`.
    pub fn new(gate_b: Gate) -> Self {
        Chain {
            a: Step {
                name: "a",
                gate: Gate::open(),
            },
            b: Step {
                name: "b",
                gate: gate_b,
            },
            c: Step {
                name: "c",
                gate: Gate::open(),
            },
        }
    }
}

workflow! {
    /// `spread → leaf` for every element.
    pub struct Fan { spread: Spread, leaf: Step }
    context = Trace;
    start = spread;
    edges { spread => [leaf]; leaf => []; }
}

workflow! {
    /// `spread → work → join (hold until all) → done`.
    pub struct SplitJoin { spread: Spread, work: Step, join: Join, done: Step }
    context = Trace;
    start = spread;
    edges { spread => [work]; work => [join]; join => [done]; done => []; }
}

workflow! {
    /// `start → fast` and `start → slow`, both terminal.
    pub struct TwoEnds { start: Step, fast: Step, slow: Step }
    context = Trace;
    start = start;
    edges { start => [fast, slow]; fast => []; slow => []; }
}

workflow! {
    /// One node retried by the backend under `policy`.
    pub struct Retrying {
        #[retry = policy]
        flaky: Step,
        policy: RetryPolicy,
    }
    context = Trace;
    start = flaky;
    edges { flaky => []; }
}

/// The suite's worker settings: its short lease, a quick idle wait.
fn worker_builder<W: Workflow<Trace> + 'static>(
    wf: W,
    backend: &Arc<dyn Backend>,
) -> WorkerBuilder<W, Trace> {
    WorkerBuilder::new()
        .workflow(wf)
        .backend_arc(Arc::clone(backend))
        .lease_timeout(LEASE)
        .heartbeat_interval(LEASE / 4)
        .idle_sleep_duration(Duration::from_millis(50))
}

fn worker<W: Workflow<Trace> + 'static>(
    wf: W,
    backend: &Arc<dyn Backend>,
) -> DistributedWorker<W, Trace> {
    worker_builder(wf, backend)
        .build()
        .expect("conformance: worker builds")
}

fn orchestrator<W: Workflow<Trace> + 'static>(
    wf: W,
    backend: &Arc<dyn Backend>,
) -> DistributedOrchestrator<W, Trace> {
    OrchestratorBuilder::new()
        .workflow(wf)
        .backend_arc(Arc::clone(backend))
        .build()
        .expect("conformance: orchestrator builds")
}

fn pool<W: Workflow<Trace> + 'static>(
    wf: W,
    backend: &Arc<dyn Backend>,
    n: usize,
) -> WorkerPool<W, Trace> {
    let mut p =
        WorkerPool::new(worker(wf, backend), n).with_grace_period(Duration::from_millis(200));
    p.start();
    p
}

async fn finish<W: Workflow<Trace> + 'static>(
    o: &DistributedOrchestrator<W, Trace>,
    run: &str,
) -> RunInfo {
    tokio::time::timeout(
        PATIENCE,
        o.wait_for_completion(run, Duration::from_millis(50)),
    )
    .await
    .unwrap_or_else(|_| panic!("run {run} did not finish within {PATIENCE:?}"))
    .expect("run info")
}

fn ctx() -> WorkflowCtx<Trace> {
    WorkflowCtx::new(Trace::default())
}

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

/// G3: 100 parallel branches each append one event; the final context holds all 100.
pub async fn g3_parallel_branches_keep_every_change<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let wf = Fan {
        spread: Spread { n: 100 },
        leaf: Step {
            name: "leaf",
            gate: Gate::open(),
        },
    };
    let o = orchestrator(wf.clone(), &backend);
    let run = o.start_run(&ctx(), 0).await.unwrap();
    let mut workers = pool(wf, &backend, 8);
    let info = finish(&o, &run).await;
    workers.try_stop().await.unwrap();
    assert_eq!(info.status, RunStatus::Completed);
    let trace = o.context(&run).await.unwrap();
    let events: BTreeSet<String> = trace.events.events().collect();
    assert_eq!(
        trace.events.len(),
        100,
        "G3: lost or duplicated context changes"
    );
    assert_eq!(events.len(), 100);
    for i in 0..100 {
        assert!(
            events.contains(&format!("leaf:{i}")),
            "G3: branch {i} lost its change"
        );
    }
}

/// G3: 10 runs of a 10-way split joined by a Hold-until-all node, 20 workers: every run
/// completes and each join fires exactly once.
pub async fn g3_joins_fire_exactly_once<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let wf = SplitJoin {
        spread: Spread { n: 10 },
        work: Step {
            name: "work",
            gate: Gate::open(),
        },
        join: Join { total: 10 },
        done: Step {
            name: "done",
            gate: Gate::open(),
        },
    };
    let o = orchestrator(wf.clone(), &backend);
    let mut runs = Vec::new();
    for _ in 0..10 {
        runs.push(o.start_run(&ctx(), 0).await.unwrap());
    }
    let mut workers = pool(wf, &backend, 20);
    for run in &runs {
        let info = finish(&o, run).await;
        assert_eq!(
            info.status,
            RunStatus::Completed,
            "G3: join run {run} did not complete: {info:?}"
        );
        let trace = o.context(run).await.unwrap();
        assert_eq!(
            trace.count("done:10"),
            1,
            "G3: the join fired {} times",
            trace.count("done:10")
        );
        assert_eq!(
            trace
                .events
                .events()
                .filter(|e| e.starts_with("work:"))
                .count(),
            10
        );
        assert_eq!(trace.arrived.snapshot().await.len(), 10);
    }
    workers.try_stop().await.unwrap();
}

/// G7: cancelling a run stops new steps at once and fires the in-flight step's token.
pub async fn g7_cancel_stops_the_run<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let gate = Gate::holding_first();
    let wf = Chain::new(gate.clone());
    let o = orchestrator(wf.clone(), &backend);
    let run = o.start_run(&ctx(), 1).await.unwrap();
    let mut workers = pool(wf, &backend, 2);
    while gate.executions() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    o.cancel(&run).await.unwrap();
    let info = finish(&o, &run).await;
    assert_eq!(info.status, RunStatus::Cancelled);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while gate.cancelled() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        gate.cancelled(),
        1,
        "G7: the in-flight step's cancellation token must fire"
    );
    gate.release();
    tokio::time::sleep(LEASE * 3).await;
    workers.try_stop().await.unwrap();
    let trace = o.context(&run).await.unwrap();
    assert_eq!(trace.count("c:3"), 0, "G7: a node executed after cancel");
    assert_eq!(trace.count("b:2"), 0, "G7: the cancelled step committed");
    assert!(matches!(
        o.cancel(&run).await,
        Err(FloxideError::Distributed(
            DistributedError::InvalidRunState { .. }
        ))
    ));
}

/// G7: a paused run executes nothing until it is resumed; then it completes.
pub async fn g7_pause_holds_until_resume<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let wf = Chain::new(Gate::open());
    let o = orchestrator(wf.clone(), &backend);
    let run = o.start_run(&ctx(), 1).await.unwrap();
    o.pause(&run).await.unwrap();
    let mut workers = pool(wf, &backend, 2);
    tokio::time::sleep(LEASE * 2).await;
    assert_eq!(o.status(&run).await.unwrap(), RunStatus::Paused);
    assert_eq!(
        o.metrics(&run).await.unwrap().completed,
        0,
        "G7: a paused run executed a step"
    );
    assert_eq!(
        o.pending_work(&run).await.unwrap().len(),
        1,
        "G7: the held item is kept"
    );
    o.resume(&run).await.unwrap();
    let info = finish(&o, &run).await;
    workers.try_stop().await.unwrap();
    assert_eq!(info.status, RunStatus::Completed);
    assert_eq!(info.output, Some(serde_json::json!(4)));
}

/// A run with two terminal branches completes only after both.
pub async fn completion_waits_for_every_branch<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let slow_gate = Gate::holding_first();
    let wf = TwoEnds {
        start: Step {
            name: "start",
            gate: Gate::open(),
        },
        fast: Step {
            name: "fast",
            gate: Gate::open(),
        },
        slow: Step {
            name: "slow",
            gate: slow_gate.clone(),
        },
    };
    let o = orchestrator(wf.clone(), &backend);
    let run = o.start_run(&ctx(), 1).await.unwrap();
    let mut workers = pool(wf, &backend, 2);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while o.context(&run).await.unwrap().count("fast:2") == 0
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        o.status(&run).await.unwrap(),
        RunStatus::Running,
        "completed before the slow branch"
    );
    slow_gate.release();
    let info = finish(&o, &run).await;
    workers.try_stop().await.unwrap();
    assert_eq!(info.status, RunStatus::Completed);
    assert_eq!(info.outputs.len(), 2, "both terminal outputs are recorded");
    assert_eq!(o.context(&run).await.unwrap().count("slow:2"), 1);
}

/// G6: undecodable items and contexts go to the dead letters with their error; the worker
/// keeps working.
pub async fn g6_corrupt_input_is_dead_lettered<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let wf = Chain::new(Gate::open());
    let o = orchestrator(wf.clone(), &backend);
    let corrupt_item = backend
        .start_run(StartRun::new(
            new_run_id(),
            "Chain",
            serde_json::to_vec(&Trace::default()).unwrap(),
            NewItem::new(ItemId::ROOT, "a", b"\xff\xfe{not json".to_vec()),
        ))
        .await
        .unwrap();
    let good_item = serde_json::to_vec(&wf.start_work_item(1)).unwrap();
    let corrupt_ctx = backend
        .start_run(StartRun::new(
            new_run_id(),
            "Chain",
            b"{\"events\": 42".to_vec(),
            NewItem::new(ItemId::ROOT, "a", good_item),
        ))
        .await
        .unwrap();
    let mut workers = pool(wf, &backend, 1);
    for run in [&corrupt_item, &corrupt_ctx] {
        let info = finish(&o, run).await;
        assert_eq!(info.status, RunStatus::Failed, "G6: {info:?}");
    }
    let dead = o.dead_letters().await.unwrap();
    let item_letter = dead
        .iter()
        .find(|d| d.run_id == corrupt_item)
        .expect("G6: corrupt item dead-lettered");
    assert!(
        item_letter.error.contains("undecodable work item"),
        "{}",
        item_letter.error
    );
    let ctx_letter = dead
        .iter()
        .find(|d| d.run_id == corrupt_ctx)
        .expect("G6: corrupt context dead-lettered");
    assert!(
        ctx_letter.error.contains("undecodable context"),
        "{}",
        ctx_letter.error
    );
    // The same worker still completes a healthy run.
    let run = o.start_run(&ctx(), 1).await.unwrap();
    assert_eq!(
        finish(&o, &run).await.status,
        RunStatus::Completed,
        "G6: the worker died"
    );
    workers.try_stop().await.unwrap();
}

/// G6: a node that panics is a recorded failure; the worker survives.
pub async fn g6_panicking_node_is_a_failure<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let wf = Chain::new(Gate::panicking_first());
    let o = orchestrator(wf.clone(), &backend);
    let run = o.start_run(&ctx(), 1).await.unwrap();
    let mut workers = pool(wf, &backend, 1);
    let info = finish(&o, &run).await;
    assert_eq!(info.status, RunStatus::Failed);
    let errors = o.errors(&run).await.unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e.node == "b" && e.error.contains("deliberate panic")),
        "G6: the panic is recorded: {errors:?}"
    );
    let run2 = o.start_run(&ctx(), 1).await.unwrap();
    assert_eq!(
        finish(&o, &run2).await.status,
        RunStatus::Completed,
        "G6: the worker died"
    );
    // G5/G7: resuming the failed run re-enqueues only what failed.
    o.resume(&run).await.unwrap();
    let info = finish(&o, &run).await;
    workers.try_stop().await.unwrap();
    assert_eq!(info.status, RunStatus::Completed);
    let trace = o.context(&run).await.unwrap();
    assert_eq!(
        (trace.count("a:1"), trace.count("b:2"), trace.count("c:3")),
        (1, 1, 1)
    );
}

/// G5: retries are delayed items in the backend; the worker is free meanwhile.
pub async fn g5_retries_are_scheduled<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let flaky = Gate::failing_first(2);
    let wf = Retrying {
        flaky: Step {
            name: "flaky",
            gate: flaky.clone(),
        },
        policy: RetryPolicy::new(
            3,
            LEASE,
            LEASE,
            BackoffStrategy::Linear,
            RetryError::Generic,
        ),
    };
    let o = orchestrator(wf.clone(), &backend);
    let retried = o.start_run(&ctx(), 1).await.unwrap();
    let mut workers = pool(wf.clone(), &backend, 1);
    // While the retry waits, the single worker completes other runs.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while flaky.executions() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The failure is recorded just after the execution: wait for it (the retry is due a
    // lease later, so the item waits that long).
    let mut items = o.list_work_items(&retried).await.unwrap();
    while items[0].status == WorkItemStatus::InProgress && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
        items = o.list_work_items(&retried).await.unwrap();
    }
    assert_eq!(
        items[0].status,
        WorkItemStatus::WaitingRetry,
        "G5: {items:?}"
    );
    let info = finish(&o, &retried).await;
    workers.try_stop().await.unwrap();
    assert_eq!(info.status, RunStatus::Completed);
    let m = o.metrics(&retried).await.unwrap();
    assert_eq!((m.retries, m.failed, m.completed), (2, 2, 1), "G5: {m:?}");
    let attempts: Vec<u32> = o
        .errors(&retried)
        .await
        .unwrap()
        .iter()
        .map(|e| e.attempt)
        .collect();
    assert_eq!(attempts, [1, 2], "G7: each failure records its attempt");

    // Retries run out: the item is dead-lettered and the run fails; requeueing revives it.
    let exhausted = Gate::failing_first(5);
    let wf2 = Retrying {
        flaky: Step {
            name: "flaky",
            gate: exhausted.clone(),
        },
        policy: RetryPolicy::new(
            2,
            Duration::from_millis(10),
            Duration::from_millis(10),
            BackoffStrategy::Linear,
            RetryError::Generic,
        ),
    };
    let o2 = orchestrator(wf2.clone(), &backend);
    let run = o2.start_run(&ctx(), 1).await.unwrap();
    let mut workers = pool(wf2, &backend, 1);
    let info = finish(&o2, &run).await;
    assert_eq!(info.status, RunStatus::Failed);
    assert_eq!(exhausted.executions(), 2);
    let letter = o2
        .dead_letters()
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.run_id == run)
        .expect("G5: dead letter");
    assert_eq!(letter.attempt, 2);
    exhausted.fail_first.store(0, Ordering::SeqCst);
    o2.requeue_dead_letter(&run, letter.item_id).await.unwrap();
    let info = finish(&o2, &run).await;
    workers.try_stop().await.unwrap();
    assert_eq!(
        info.status,
        RunStatus::Completed,
        "G5: a requeued dead letter completes"
    );
    assert!(o2
        .dead_letters()
        .await
        .unwrap()
        .iter()
        .all(|d| d.run_id != run));
}

/// G5: an item delivered too many times without a commit is poison: dead-lettered.
pub async fn g5_poison_items_are_dead_lettered<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let wf = Chain::new(Gate::open());
    let o = orchestrator(wf, &backend);
    let run = o.start_run(&ctx(), 1).await.unwrap();
    let opts = TakeOptions {
        lease_timeout: Duration::from_millis(100),
        max_deliveries: 2,
    };
    for delivery in 1..=2 {
        let t = backend
            .take("Chain", &"crashy".into(), opts, Duration::from_secs(1))
            .await
            .unwrap();
        let t = t.unwrap_or_else(|| panic!("delivery {delivery} expected"));
        assert_eq!(t.deliveries, delivery);
        tokio::time::sleep(Duration::from_millis(250)).await; // the "worker" dies: the lease expires
    }
    let third = backend
        .take("Chain", &"crashy".into(), opts, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(
        third.is_none(),
        "G5: a poison item was delivered a third time"
    );
    let info = o.run_info(&run).await.unwrap();
    assert_eq!(info.status, RunStatus::Failed);
    let letter = o
        .dead_letters()
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.run_id == run)
        .expect("poison dead letter");
    assert!(letter.error.contains("poison"), "{}", letter.error);
}

/// G6: invalid API use returns typed errors.
pub async fn g6_invalid_requests_are_typed_errors<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let wf = Chain::new(Gate::open());
    let o = orchestrator(wf.clone(), &backend);
    assert!(matches!(
        o.status("no-such-run").await,
        Err(FloxideError::Distributed(DistributedError::UnknownRun(_)))
    ));
    let first = o.start_run_with_key(&ctx(), 1, "order-17").await.unwrap();
    let again = o.start_run_with_key(&ctx(), 1, "order-17").await;
    match again {
        Err(FloxideError::Distributed(DistributedError::DuplicateRun { existing, .. })) => {
            assert_eq!(existing, first)
        }
        other => panic!("G6: a duplicate idempotency key must be refused, got {other:?}"),
    }
    assert!(matches!(
        o.resume(&first).await,
        Err(FloxideError::Distributed(
            DistributedError::InvalidRunState { .. }
        ))
    ));
    let mut workers = pool(wf, &backend, 1);
    assert_eq!(o.wait_for_output(&first, PATIENCE).await.unwrap(), 4);
    workers.try_stop().await.unwrap();
    assert!(matches!(
        o.cancel(&first).await,
        Err(FloxideError::Distributed(
            DistributedError::InvalidRunState {
                status: RunStatus::Completed,
                ..
            }
        ))
    ));
    let by_id = o.start_run_with_id(&ctx(), 1, first.clone()).await;
    assert!(matches!(
        by_id,
        Err(FloxideError::Distributed(DistributedError::RunExists(_)))
    ));
}

/// G7: runs, workers and items can be observed.
pub async fn g7_runs_and_workers_are_observable<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let wf = Chain::new(Gate::open());
    let o = orchestrator(wf.clone(), &backend);
    let run = o.start_run(&ctx(), 5).await.unwrap();
    let pending = o.pending_work(&run).await.unwrap();
    assert_eq!(pending.len(), 1);
    let stats = backend.queue_stats("Chain").await.unwrap();
    let stats = stats.expect("G7: the backend reports its queue");
    assert!(
        stats.ready >= 1,
        "queue stats count the ready item: {stats:?}"
    );
    assert_eq!(pending[0].node_name(), "a");
    let mut workers = pool(wf, &backend, 2);
    let info = finish(&o, &run).await;
    assert!(info.finished_at.is_some());
    assert_eq!(o.wait_for_output(&run, PATIENCE).await.unwrap(), 8);
    let m = o.metrics(&run).await.unwrap();
    assert_eq!(m.completed, 3);
    assert_eq!(m.per_node.len(), 3);
    assert!(o.pending_work(&run).await.unwrap().is_empty());
    assert!(o
        .list_work_items(&run)
        .await
        .unwrap()
        .iter()
        .all(|i| i.status == WorkItemStatus::Completed));
    let listed = o.list_runs(Some(RunStatus::Completed)).await.unwrap();
    assert!(listed.iter().any(|r| r.run_id == run));
    let stats = backend.queue_stats("Chain").await.unwrap();
    let stats = stats.expect("G7: the backend reports its queue");
    assert_eq!(
        stats.in_flight, 0,
        "nothing leased after completion: {stats:?}"
    );
    // Each worker reports when its task first runs, which may be after the run finished.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut health = workers.try_health().await.unwrap();
    while health.len() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        health = workers.try_health().await.unwrap();
    }
    assert_eq!(health.len(), 2, "G7: every worker reports its health");
    workers.try_stop().await.unwrap();
    let after = o.liveness().await.unwrap();
    assert!(
        after
            .iter()
            .filter(|h| h.status == WorkerStatus::Stopped)
            .count()
            >= 2
    );
    // The stop report carries every step the workers committed.
    let steps: u64 = after
        .iter()
        .filter(|h| h.workflow == "Chain")
        .map(|h| h.steps_done)
        .sum();
    assert_eq!(
        steps, 3,
        "the workers count their committed steps: {after:?}"
    );
}

/// Steps of one run never observe a predecessor's context without its changes.
pub async fn g3_successors_see_predecessor_changes<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let wf = Chain::new(Gate::open());
    let o = orchestrator(wf.clone(), &backend);
    let mut workers = pool(wf, &backend, 3);
    let mut runs = Vec::new();
    for i in 0..20 {
        runs.push(o.start_run(&ctx(), i).await.unwrap());
    }
    for run in &runs {
        let info = finish(&o, run).await;
        assert_eq!(info.status, RunStatus::Completed);
        let events: Vec<String> = o.context(run).await.unwrap().events.events().collect();
        assert_eq!(events.len(), 3);
        assert!(
            events[0].starts_with("a:")
                && events[1].starts_with("b:")
                && events[2].starts_with("c:"),
            "{events:?}"
        );
    }
    workers.try_stop().await.unwrap();
}

/// Runs every check with a backend from `make` and the test attribute given.
#[macro_export]
macro_rules! conformance_tests {
    (#[$attr:meta], $make:expr) => {
        $crate::conformance_tests!(@each #[$attr], $make,
            g1_crashed_worker_item_is_rerun,
            g2_zombie_commit_is_rejected,
            g3_parallel_branches_keep_every_change,
            g3_joins_fire_exactly_once,
            g3_successors_see_predecessor_changes,
            g5_retries_are_scheduled,
            g5_poison_items_are_dead_lettered,
            g6_corrupt_input_is_dead_lettered,
            g6_panicking_node_is_a_failure,
            g6_invalid_requests_are_typed_errors,
            g7_cancel_stops_the_run,
            g7_pause_holds_until_resume,
            g7_runs_and_workers_are_observable,
            g7_a_run_paused_during_its_last_step_finishes_on_resume,
            g7_resuming_a_run_with_nothing_left_is_refused,
            g5_failures_of_a_cancelled_run_are_not_dead_lettered,
            g4_batches_commit_each_step_on_its_own,
            g4_a_refused_context_change_refuses_the_runs_later_ones,
            g4_a_worker_batches_queued_work,
            g7_node_timings_add_up_within_a_batch,
            g7_waiters_get_short_and_long_outputs,
            model_based_sequences_agree_with_the_machine,
            completion_waits_for_every_branch,
            g7_workflow_graphs_are_registered,
            g7_runs_are_listed_page_by_page,
            g7_step_history_explains_every_lease,
            g1_steps_see_their_attempt_and_a_stable_idempotency_key,
            g1_heartbeats_keep_a_long_step_alive,
            g5_routed_failures_complete_the_run,
            g7_a_stopped_worker_finishes_or_releases_its_steps,
            g4_idle_workers_wake_when_work_arrives,
            g5_a_scheduled_retry_frees_its_worker_and_survives_it,
            g7_liveness_names_the_item_in_progress,
            g7_a_step_learns_of_a_cancel_it_did_not_hear,
            g2_a_kept_successor_is_leased_to_its_committer,
            g2_a_chain_commits_in_one_call,
            g2_a_chain_refused_midway_keeps_its_first_step,
            g1_a_kept_successor_of_a_dead_worker_is_rerun,
            g4_a_chain_of_fast_steps_is_one_commit,
            g4_a_worker_draining_chains_gives_nothing_back,
            g4_a_commit_carries_a_batch_of_chains,
            g5_a_chained_step_that_fails_is_retried,
            g7_a_slow_chained_step_lets_its_parent_commit
        );
    };
    (@each #[$attr:meta], $make:expr, $($check:ident),*) => {
        $(
            #[$attr]
            async fn $check() {
                let backend = $make.await;
                $crate::conformance::$check(backend).await;
            }
        )*
    };
}
