//! The building blocks: `SplitNode`, `BatchNode`, `CompositeNode` and `source`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use floxide::*;
use tokio::time::Instant;

fn counter() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

/// Counts how many executions are in flight and the most seen at once.
#[derive(Debug, Clone, Default)]
pub struct InFlight {
    now: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
}

impl InFlight {
    async fn during<T>(&self, fut: impl std::future::Future<Output = T>) -> T {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        let out = fut.await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        out
    }

    fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------------------
// SplitNode

fn words(text: String) -> Vec<String> {
    text.split_whitespace().map(str::to_owned).collect()
}

node! {
    /// Records every word it receives.
    pub struct Collect { seen: Arc<Mutex<Vec<String>>> };
    input = String;
    output = usize;
    |_ctx, word| {
        let len = word.len();
        self.seen.lock().unwrap().push(word);
        Ok(Transition::Next(len))
    }
}

workflow! {
    pub struct Words { split: SplitNode<String, String>, collect: Collect }
    start = split;
    edges { split => [collect]; collect => []; }
}

#[tokio::test]
async fn split_feeds_every_element_to_the_successor() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let wf = Words {
        split: SplitNode::new(words),
        collect: Collect { seen: seen.clone() },
    };
    let out = wf
        .run(&WorkflowCtx::new(()), "the quick brown fox".to_owned())
        .await
        .unwrap();
    assert!([3, 5].contains(&out));
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    assert_eq!(seen, ["brown", "fox", "quick", "the"]);
}

#[tokio::test]
async fn split_accepts_closures_and_returns_next_all() {
    let factor = 3;
    let split = SplitNode::new(move |n: u32| (1..=n).map(|i| i * factor).collect::<Vec<_>>());
    let copy = split.clone();
    assert_eq!(
        Node::<()>::process(&copy, &(), 3).await.unwrap(),
        Transition::NextAll(vec![3, 6, 9])
    );
    assert!(format!("{split:?}").starts_with("SplitNode"));
}

// ---------------------------------------------------------------------------------------
// BatchNode

node! {
    /// Sleeps `10 - n` × 10 ms (later elements finish first), then returns `n * 10`.
    pub struct SlowInverse { in_flight: InFlight };
    input = u64;
    output = u64;
    |_ctx, n| {
        let wait = Duration::from_millis((10 - n) * 10);
        self.in_flight.during(tokio::time::sleep(wait)).await;
        Ok(Transition::Next(n * 10))
    }
}

workflow! {
    pub struct Batched { batch: BatchNode<(), SlowInverse> }
    start = batch;
    edges { batch => []; }
}

#[tokio::test(start_paused = true)]
async fn batch_keeps_input_order_when_elements_finish_out_of_order() {
    let wf = Batched {
        batch: BatchNode::new(
            SlowInverse {
                in_flight: InFlight::default(),
            },
            10,
        ),
    };
    let started = Instant::now();
    let out = wf
        .run(&WorkflowCtx::new(()), (0..10).collect())
        .await
        .unwrap();
    assert_eq!(out, (0..10).map(|n| n * 10).collect::<Vec<_>>());
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(100),
        "all ten ran at once: the run took as long as the slowest element"
    );
}

#[tokio::test(start_paused = true)]
async fn batch_size_bounds_the_elements_in_flight() {
    let in_flight = InFlight::default();
    let batch = BatchNode::new(
        SlowInverse {
            in_flight: in_flight.clone(),
        },
        3,
    );
    let next = batch.process(&(), (0..10).collect()).await.unwrap();
    assert_eq!(
        next,
        Transition::Next((0..10).map(|n| n * 10).collect::<Vec<_>>())
    );
    assert_eq!(in_flight.max(), 3);
}

#[test]
fn batch_size_zero_means_one_at_a_time() {
    let batch: BatchNode<(), _> = BatchNode::new(
        SlowInverse {
            in_flight: InFlight::default(),
        },
        0,
    );
    assert_eq!(batch.batch_size(), 1);
}

node! {
    /// Fails on 3 with an error, aborts on 4, holds on multiples of 5, doubles evens.
    pub struct Picky { runs: Arc<AtomicUsize> };
    input = u64;
    output = u64;
    |_ctx, n| {
        self.runs.fetch_add(1, Ordering::SeqCst);
        Ok(match n {
            3 => return Err(FloxideError::generic("three")),
            4 => Transition::Abort(FloxideError::generic("four")),
            n if n % 5 == 0 => Transition::Hold,
            n if n % 2 == 0 => Transition::NextAll(vec![n, n]),
            n => Transition::Next(n),
        })
    }
}

#[tokio::test]
async fn batch_combines_next_next_all_and_hold() {
    let batch = BatchNode::new(Picky { runs: counter() }, 2);
    let next = batch.process(&(), vec![1, 2, 5, 6, 7, 10]).await.unwrap();
    assert_eq!(next, Transition::Next(vec![1, 2, 2, 6, 6, 7]));
}

#[tokio::test]
async fn batch_fails_with_an_element_error() {
    let batch = BatchNode::new(Picky { runs: counter() }, 4);
    assert_eq!(
        batch.process(&(), vec![1, 2, 3, 6]).await,
        Err(FloxideError::generic("three"))
    );
    assert_eq!(
        batch.process(&(), vec![1, 4, 6]).await,
        Ok(Transition::Abort(FloxideError::generic("four")))
    );
}

#[tokio::test]
async fn a_failing_batch_fails_the_run() {
    workflow! {
        pub struct PickyBatch { batch: BatchNode<(), Picky> }
        start = batch;
        edges { batch => []; }
    }
    let wf = PickyBatch {
        batch: BatchNode::new(Picky { runs: counter() }, 1),
    };
    let ctx = WorkflowCtx::new(());
    assert_eq!(
        wf.run(&ctx, vec![1, 2, 3]).await,
        Err(FloxideError::generic("three"))
    );
    assert_eq!(wf.run(&ctx, vec![1, 2]).await, Ok(vec![1, 2, 2]));
}

// ---------------------------------------------------------------------------------------
// CompositeNode

node! {
    /// Sleeps `ms`, then adds `add`.
    pub struct Add { add: u64, ms: u64 };
    input = u64;
    output = u64;
    |_ctx, n| {
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        Ok(Transition::Next(n + self.add))
    }
}

workflow! {
    /// Adds twice.
    pub struct Inner { first: Add, second: Add }
    start = first;
    edges { first => [second]; second => []; }
}

fn inner(ms: u64) -> Inner {
    Inner {
        first: Add { add: 1, ms: 0 },
        second: Add { add: 10, ms },
    }
}

/// What the composite node returned, once it has.
type Seen = Arc<Mutex<Option<Result<Transition<u64>, FloxideError>>>>;

/// Executes a composite node and records what it returned.
#[derive(Debug, Clone)]
pub struct Spy {
    node: CompositeNode<(), Inner>,
    seen: Seen,
}

#[async_trait]
impl Node for Spy {
    type Input = u64;
    type Output = u64;
    async fn process(&self, ctx: &(), n: u64) -> Result<Transition<u64>, FloxideError> {
        let result = self.node.process(ctx, n).await;
        *self.seen.lock().unwrap() = Some(result.clone());
        result
    }
}

workflow! {
    /// Prepare, run the inner workflow as a node, then finish.
    pub struct Outer { prepare: Add, nested: Spy, finish: Add }
    start = prepare;
    edges { prepare => [nested]; nested => [finish]; finish => []; }
}

fn outer(inner_ms: u64, inner_ctx: &WorkflowCtx<()>) -> Outer {
    Outer {
        prepare: Add { add: 100, ms: 0 },
        nested: Spy {
            node: CompositeNode::new(inner(inner_ms), inner_ctx),
            seen: Arc::default(),
        },
        finish: Add { add: 1000, ms: 0 },
    }
}

fn seen(wf: &Outer) -> Option<Result<Transition<u64>, FloxideError>> {
    wf.nested.seen.lock().unwrap().clone()
}

#[tokio::test(start_paused = true)]
async fn composite_returns_the_inner_workflow_output() {
    let ctx = WorkflowCtx::new(());
    let wf = outer(10, &ctx);
    assert_eq!(wf.run(&ctx, 0).await, Ok(1111));
    assert_eq!(seen(&wf), Some(Ok(Transition::Next(111))));
    // Outside any run, the composite runs its workflow on its own.
    let alone = CompositeNode::new(inner(10), &ctx);
    assert_eq!(
        Node::<()>::process(&alone, &(), 5).await,
        Ok(Transition::Next(16))
    );
}

#[tokio::test(start_paused = true)]
async fn outer_cancellation_stops_the_inner_run() {
    // The inner run has its own control block: only the outer run can stop it.
    let inner_ctx = WorkflowCtx::new(());
    let outer_ctx = WorkflowCtx::new(());
    let wf = outer(3_600_000, &inner_ctx);
    let started = Instant::now();
    let (result, ()) = tokio::join!(wf.run(&outer_ctx, 0), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        outer_ctx.cancel();
    });
    assert_eq!(result, Err(FloxideError::Cancelled));
    assert_eq!(started.elapsed(), Duration::from_millis(50));
    assert_eq!(
        seen(&wf),
        Some(Err(FloxideError::Cancelled)),
        "the composite node itself stopped with the outer run"
    );
    assert!(!inner_ctx.is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn outer_deadline_interrupts_the_inner_run() {
    let inner_ctx = WorkflowCtx::new(());
    let mut outer_ctx = WorkflowCtx::new(());
    outer_ctx.set_timeout(Duration::from_millis(200));
    let wf = outer(3_600_000, &inner_ctx);
    let started = Instant::now();
    let timeout = Err(FloxideError::Timeout(Duration::from_millis(200)));
    assert_eq!(wf.run(&outer_ctx, 0).await, timeout);
    assert_eq!(started.elapsed(), Duration::from_millis(200));
    assert_eq!(
        seen(&wf),
        Some(Err(FloxideError::Timeout(Duration::from_millis(200))))
    );
}

#[tokio::test(start_paused = true)]
async fn cancelling_the_stored_ctx_cancels_the_inner_run() {
    let inner_ctx = WorkflowCtx::new(());
    let wf = outer(3_600_000, &inner_ctx);
    let outer_ctx = WorkflowCtx::new(());
    let (result, ()) = tokio::join!(wf.run(&outer_ctx, 0), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        inner_ctx.cancel();
    });
    assert_eq!(result, Err(FloxideError::Cancelled));
}

// ---------------------------------------------------------------------------------------
// source

node! {
    /// Sleeps `ms` while counted in flight, then doubles; fails on odd numbers if `picky`.
    pub struct Work { ms: u64, picky: bool, runs: Arc<AtomicUsize>, in_flight: InFlight };
    input = u64;
    output = u64;
    |_ctx, n| {
        self.runs.fetch_add(1, Ordering::SeqCst);
        self.in_flight.during(tokio::time::sleep(Duration::from_millis(self.ms))).await;
        if self.picky && n % 2 == 1 {
            return Err(FloxideError::generic(format!("odd: {n}")));
        }
        Ok(Transition::Next(n * 2))
    }
}

workflow! {
    pub struct PerItem { work: Work }
    start = work;
    edges { work => []; }
}

fn per_item(ms: u64, picky: bool) -> PerItem {
    PerItem {
        work: Work {
            ms,
            picky,
            runs: counter(),
            in_flight: InFlight::default(),
        },
    }
}

fn send_all(tx: tokio::sync::mpsc::Sender<u64>, items: std::ops::Range<u64>) {
    tokio::spawn(async move {
        for n in items {
            tx.send(n).await.unwrap();
        }
    });
}

#[tokio::test(start_paused = true)]
async fn source_runs_the_workflow_once_per_item() {
    let wf = per_item(5, false);
    let (tx, items) = source::<(), u64>(4);
    send_all(tx, 0..10);
    let mut outputs = Vec::new();
    let summary = items
        .run_with(&wf, &WorkflowCtx::new(()), |r| outputs.push(r.unwrap()))
        .await
        .unwrap();
    assert_eq!(
        summary,
        SourceSummary {
            completed: 10,
            failed: 0
        }
    );
    assert_eq!(wf.work.runs.load(Ordering::SeqCst), 10);
    assert_eq!(outputs, (0..10).map(|n| n * 2).collect::<Vec<_>>());
    assert_eq!(wf.work.in_flight.max(), 1, "one run at a time by default");
}

#[tokio::test(start_paused = true)]
async fn source_respects_its_concurrency() {
    let wf = per_item(10, false);
    let (tx, items) = source::<(), u64>(16);
    send_all(tx, 0..10);
    let started = Instant::now();
    let summary = items
        .with_concurrency(3)
        .run(&wf, &WorkflowCtx::new(()))
        .await
        .unwrap();
    assert_eq!(summary.completed, 10);
    assert_eq!(wf.work.in_flight.max(), 3);
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(40),
        "4 waves of 10 ms"
    );
}

#[tokio::test(start_paused = true)]
async fn source_counts_failed_runs() {
    let wf = per_item(1, true);
    let (tx, items) = source::<(), u64>(1);
    send_all(tx, 0..10);
    let mut errors = Vec::new();
    let summary = items
        .with_concurrency(2)
        .run_with(&wf, &WorkflowCtx::new(()), |r| {
            if let Err(e) = r {
                errors.push(e);
            }
        })
        .await
        .unwrap();
    assert_eq!(
        summary,
        SourceSummary {
            completed: 5,
            failed: 5
        }
    );
    assert_eq!(errors.len(), 5);
}

#[tokio::test(start_paused = true)]
async fn source_run_stops_at_the_first_failed_run_as_in_3x() {
    let wf = per_item(1, true);
    let (tx, items) = source::<(), u64>(1);
    send_all(tx, 0..4);
    // Item 0 succeeds, item 1 fails: `run` returns that failure; items 2 and 3 stay queued
    // for the next run of the source (a clone shares the channel).
    let result = items.run(&wf, &WorkflowCtx::new(())).await;
    assert_eq!(result, Err(FloxideError::generic("odd: 1")));
    assert_eq!(wf.work.runs.load(Ordering::SeqCst), 2);
    let again = items.clone();
    let rest = again
        .run_with(&wf, &WorkflowCtx::new(()), |_| {})
        .await
        .unwrap();
    assert_eq!(
        rest,
        SourceSummary {
            completed: 1,
            failed: 1
        }
    );
}

#[tokio::test(start_paused = true)]
async fn cancellation_stops_the_source() {
    let wf = per_item(3_600_000, false);
    let (tx, items) = source::<(), u64>(4);
    tx.send(1).await.unwrap();
    let ctx = WorkflowCtx::new(());
    let started = Instant::now();
    let items = items.with_concurrency(2);
    let (result, ()) = tokio::join!(items.run(&wf, &ctx), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        ctx.cancel();
    });
    assert_eq!(result, Err(FloxideError::Cancelled));
    assert_eq!(started.elapsed(), Duration::from_millis(50));
    assert_eq!(wf.work.runs.load(Ordering::SeqCst), 1);
    assert_eq!(
        wf.work.in_flight.now.load(Ordering::SeqCst),
        1,
        "dropped mid-run"
    );
    drop(tx); // the sender was alive all along: only cancellation ended the source
}
