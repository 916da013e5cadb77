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
mod contexts;
mod control;
mod delivery;
mod failures;
mod graphs;
mod history;
mod lifecycle;
mod model;
mod observing;
mod pages;
mod waiting;
pub use batch::*;
pub use chains::*;
pub use contexts::*;
pub use control::*;
pub use delivery::*;
pub use failures::*;
pub use graphs::*;
pub use history::*;
pub use lifecycle::*;
pub use model::*;
pub use observing::*;
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

/// Run `run`'s dead letter (the first, if it has several), read through `o`.
async fn letter_of<W: Workflow<Trace> + 'static>(
    o: &DistributedOrchestrator<W, Trace>,
    run: &str,
) -> Option<DeadLetter> {
    o.dead_letters()
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.run_id == run)
}

/// Three attempts, 10 ms apart, whatever the error: the suite's retries.
fn quick_retries() -> RetryPolicy {
    RetryPolicy::new(
        3,
        Duration::from_millis(10),
        Duration::from_millis(10),
        BackoffStrategy::Linear,
        RetryError::All,
    )
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
