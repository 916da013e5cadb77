//! Semantics of the in-process `run`: concurrency, completion, errors, cancellation, deadline.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use floxide::*;
use serde::{Deserialize, Serialize};
use tokio::sync::Barrier;

fn counter() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

node! {
    /// Passes its input on, counting executions.
    pub struct Pass { runs: Arc<AtomicUsize> };
    input = u64;
    output = u64;
    |_ctx, n| {
        self.runs.fetch_add(1, Ordering::SeqCst);
        Ok(Transition::Next(n))
    }
}

node! {
    /// Waits until `barrier` is full, then passes its input on.
    pub struct Meet { barrier: Arc<Barrier>, runs: Arc<AtomicUsize> };
    input = u64;
    output = u64;
    |_ctx, n| {
        self.barrier.wait().await;
        self.runs.fetch_add(1, Ordering::SeqCst);
        Ok(Transition::Next(n))
    }
}

workflow! {
    pub struct FanOut { start: Pass, a: Meet, b: Meet }
    start = start;
    edges { start => [a, b]; a => []; b => []; }
}

#[tokio::test]
async fn fan_out_branches_both_run_and_run_concurrently() {
    let barrier = Arc::new(Barrier::new(2));
    let runs = counter();
    let wf = FanOut {
        start: Pass { runs: runs.clone() },
        a: Meet {
            barrier: barrier.clone(),
            runs: runs.clone(),
        },
        b: Meet {
            barrier,
            runs: runs.clone(),
        },
    };
    // Each branch waits for the other at the barrier: run sequentially, this never finishes.
    let out = tokio::time::timeout(Duration::from_secs(10), wf.run(&WorkflowCtx::new(()), 5))
        .await
        .expect("branches did not run concurrently")
        .unwrap();
    assert_eq!(out, 5);
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

node! {
    /// Sleeps `ms`, then adds `add` and counts the execution.
    pub struct Slow { ms: u64, add: u64, runs: Arc<AtomicUsize> };
    input = u64;
    output = u64;
    |_ctx, n| {
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        self.runs.fetch_add(1, Ordering::SeqCst);
        Ok(Transition::Next(n + self.add))
    }
}

workflow! {
    pub struct TwoTerminals { start: Pass, fast: Slow, slow: Slow, slower: Slow }
    start = start;
    edges { start => [fast, slow]; fast => []; slow => [slower]; slower => []; }
}

#[tokio::test(start_paused = true)]
async fn run_returns_when_no_work_is_left_with_the_first_terminal_output() {
    let runs = counter();
    let wf = TwoTerminals {
        start: Pass { runs: counter() },
        fast: Slow {
            ms: 1,
            add: 1,
            runs: runs.clone(),
        },
        slow: Slow {
            ms: 50,
            add: 2,
            runs: runs.clone(),
        },
        slower: Slow {
            ms: 50,
            add: 3,
            runs: runs.clone(),
        },
    };
    let out = wf.run(&WorkflowCtx::new(()), 10).await.unwrap();
    assert_eq!(out, 11, "the first terminal output is returned");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        3,
        "the slow branch finished before run returned"
    );
}

node! {
    pub struct Split { parts: u64 };
    input = u64;
    output = u64;
    |_ctx, n| { Ok(Transition::NextAll((0..self.parts).map(|i| n + i).collect())) }
}

workflow! {
    pub struct SplitRun { split: Split, each: Pass }
    start = split;
    edges { split => [each]; each => []; }
}

#[tokio::test]
async fn next_all_feeds_every_element_to_the_successors() {
    let runs = counter();
    let wf = SplitRun {
        split: Split { parts: 4 },
        each: Pass { runs: runs.clone() },
    };
    let out = wf.run(&WorkflowCtx::new(()), 100).await.unwrap();
    assert!((100..104).contains(&out));
    assert_eq!(runs.load(Ordering::SeqCst), 4);
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Parity {
    Even(u64),
    Odd(u64),
}

node! {
    pub struct SplitParity {};
    input = u64;
    output = Parity;
    |_ctx, n| {
        Ok(Transition::NextAll((0..n).map(|i| if i % 2 == 0 { Parity::Even(i) } else { Parity::Odd(i) }).collect()))
    }
}

workflow! {
    pub struct ParityRun { split: SplitParity, even: Pass, odd: Pass }
    start = split;
    edges {
        split => { Parity::Even(x) => [even]; Parity::Odd(x) => [odd]; };
        even => [];
        odd => [];
    }
}

#[tokio::test]
async fn next_all_from_a_branching_node_routes_each_element_by_variant() {
    let (evens, odds) = (counter(), counter());
    let wf = ParityRun {
        split: SplitParity {},
        even: Pass {
            runs: evens.clone(),
        },
        odd: Pass { runs: odds.clone() },
    };
    wf.run(&WorkflowCtx::new(()), 7).await.unwrap();
    assert_eq!(evens.load(Ordering::SeqCst), 4);
    assert_eq!(odds.load(Ordering::SeqCst), 3);
}

node! {
    pub struct Holder {};
    input = u64;
    output = u64;
    |_ctx, _n| { Ok(Transition::Hold) }
}

workflow! {
    pub struct HoldsAtStart { h: Holder, end: Pass }
    start = h;
    edges { h => [end]; end => []; }
}

workflow! {
    pub struct HoldsLater { first: Pass, h: Holder }
    start = first;
    edges { first => [h]; h => []; }
}

#[tokio::test]
async fn a_start_node_that_holds_is_a_typed_error() {
    let wf = HoldsAtStart {
        h: Holder {},
        end: Pass { runs: counter() },
    };
    let err = wf.run(&WorkflowCtx::new(()), 1).await.unwrap_err();
    assert!(
        matches!(
            err,
            FloxideError::StartNodeHeld {
                workflow: "HoldsAtStart",
                node: "h"
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_run_without_terminal_output_is_a_typed_error() {
    let wf = HoldsLater {
        first: Pass { runs: counter() },
        h: Holder {},
    };
    let err = wf.run(&WorkflowCtx::new(()), 1).await.unwrap_err();
    assert!(
        matches!(
            err,
            FloxideError::NoOutput {
                workflow: "HoldsLater"
            }
        ),
        "{err:?}"
    );

    let wf = SplitRun {
        split: Split { parts: 0 },
        each: Pass { runs: counter() },
    };
    let err = wf.run(&WorkflowCtx::new(()), 1).await.unwrap_err();
    assert!(matches!(err, FloxideError::NoOutput { .. }), "{err:?}");
}

node! {
    pub struct Fails { abort: bool };
    input = u64;
    output = u64;
    |_ctx, n| {
        if self.abort {
            Ok(Transition::Abort(FloxideError::Generic(format!("abort {n}"))))
        } else {
            Err(FloxideError::Generic(format!("error {n}")))
        }
    }
}

workflow! {
    pub struct Failing { first: Pass, bad: Fails, after: Pass }
    start = first;
    edges { first => [bad]; bad => [after]; after => []; }
}

#[tokio::test]
async fn a_failing_node_fails_the_run_with_its_error_and_nothing_after_it_runs() {
    for abort in [false, true] {
        let after = counter();
        let wf = Failing {
            first: Pass { runs: counter() },
            bad: Fails { abort },
            after: Pass {
                runs: after.clone(),
            },
        };
        let err = wf.run(&WorkflowCtx::new(()), 3).await.unwrap_err();
        let expected = if abort { "abort 3" } else { "error 3" };
        assert_eq!(err, FloxideError::Generic(expected.into()));
        assert_eq!(after.load(Ordering::SeqCst), 0);
    }
}

workflow! {
    pub struct Chain4 { a: Slow, b: Slow, c: Slow, d: Slow }
    start = a;
    edges { a => [b]; b => [c]; c => [d]; d => []; }
}

fn chain4(ms: u64, runs: &Arc<AtomicUsize>) -> Chain4 {
    let s = || Slow {
        ms,
        add: 1,
        runs: runs.clone(),
    };
    Chain4 {
        a: s(),
        b: s(),
        c: s(),
        d: s(),
    }
}

#[tokio::test(start_paused = true)]
async fn the_timeout_is_a_deadline_for_the_whole_run() {
    let runs = counter();
    let wf = chain4(150, &runs);
    let mut ctx = WorkflowCtx::new(());
    ctx.set_timeout(Duration::from_millis(200));
    let err = wf.run(&ctx, 0).await.unwrap_err();
    assert_eq!(err, FloxideError::Timeout(Duration::from_millis(200)));
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "only the first 150 ms step fits in 200 ms"
    );

    // The same chain within its deadline completes.
    let mut ctx = WorkflowCtx::new(());
    ctx.set_timeout(Duration::from_millis(700));
    assert_eq!(wf.run(&ctx, 0).await.unwrap(), 4);
}

#[tokio::test(start_paused = true)]
async fn cancelling_stops_the_run_and_no_further_node_executes() {
    let runs = counter();
    let wf = chain4(100, &runs);
    let ctx = WorkflowCtx::new(());
    let canceller = ctx.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        canceller.cancel();
    });
    let err = wf.run(&ctx, 0).await.unwrap_err();
    assert_eq!(err, FloxideError::Cancelled);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "no step finished after the cancel"
    );
    assert!(ctx.is_cancelled());

    // A cancelled control block refuses to start.
    let err = wf.run(&ctx, 0).await.unwrap_err();
    assert_eq!(err, FloxideError::Cancelled);
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tally {
    seen: SharedState<Vec<u64>>,
    log: EventLog<String>,
}

node! {
    pub struct Record {};
    context = Tally;
    input = u64;
    output = u64;
    |ctx, n| {
        ctx.seen.get().await.push(n);
        ctx.log.append(format!("saw {n}"));
        Ok(Transition::Next(n))
    }
}

node! {
    pub struct Spread {};
    context = Tally;
    input = u64;
    output = u64;
    |_ctx, n| { Ok(Transition::NextAll(vec![n, n + 1, n + 2])) }
}

workflow! {
    pub struct Recorded { spread: Spread, record: Record }
    context = Tally;
    start = spread;
    edges { spread => [record]; record => []; }
}

#[tokio::test]
async fn nodes_share_the_context_of_the_run() {
    let wf = Recorded {
        spread: Spread {},
        record: Record {},
    };
    let ctx = WorkflowCtx::new(Tally::default());
    wf.run(&ctx, 10).await.unwrap();
    let mut seen = ctx.store.seen.get().await.clone();
    seen.sort_unstable();
    assert_eq!(seen, vec![10, 11, 12]);
    assert_eq!(ctx.store.log.len(), 3);
}

#[tokio::test]
async fn run_future_honours_cancellation_and_timeout() {
    let mut ctx = WorkflowCtx::new(());
    assert_eq!(ctx.run_future(async { Ok(7) }).await, Ok(7));
    ctx.set_timeout(Duration::from_millis(10));
    let slow = ctx
        .run_future(async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(())
        })
        .await;
    assert_eq!(slow, Err(FloxideError::Timeout(Duration::from_millis(10))));
    ctx.cancel();
    assert_eq!(
        ctx.run_future(async { Ok(1) }).await,
        Err(FloxideError::Cancelled)
    );
}

#[test]
fn names_and_work_items() {
    let wf = Chain4 {
        a: Slow {
            ms: 0,
            add: 0,
            runs: counter(),
        },
        b: Slow {
            ms: 0,
            add: 0,
            runs: counter(),
        },
        c: Slow {
            ms: 0,
            add: 0,
            runs: counter(),
        },
        d: Slow {
            ms: 0,
            add: 0,
            runs: counter(),
        },
    };
    assert_eq!(wf.name(), "Chain4");
    assert_eq!(wf.start_node(), "a");
    let item = wf.start_work_item(9);
    assert_eq!(item.node_name(), "a");
    assert_eq!(item.instance_id(), ItemId::ROOT);
    assert!(matches!(item, Chain4WorkItem::A(_, 9)));
    let json = serde_json::to_string(&item).unwrap();
    let back: Chain4WorkItem = serde_json::from_str(&json).unwrap();
    assert!(matches!(back, Chain4WorkItem::A(id, 9) if id == ItemId::ROOT));
}

node! {
    pub struct Panics {};
    input = u64;
    output = u64;
    |_ctx, n| {
        if n == 13 {
            panic!("unlucky {n}");
        }
        Ok(Transition::Next(n))
    }
}

workflow! {
    pub struct Panicky { first: Pass, bad: Panics }
    start = first;
    edges { first => [bad]; bad => []; }
}

workflow! {
    pub struct PanickyFan { split: Split, bad: Panics }
    start = split;
    edges { split => [bad]; bad => []; }
}

#[tokio::test]
async fn a_panicking_node_is_a_typed_error_not_a_panic_of_run() {
    let wf = Panicky {
        first: Pass { runs: counter() },
        bad: Panics {},
    };
    let err = wf.run(&WorkflowCtx::new(()), 13).await.unwrap_err();
    match err {
        FloxideError::NodePanicked { node, message } => {
            assert_eq!(node, "bad");
            assert_eq!(message, "unlucky 13");
        }
        other => panic!("expected NodePanicked, got {other:?}"),
    }
    assert_eq!(wf.run(&WorkflowCtx::new(()), 12).await.unwrap(), 12);

    // The same in a concurrent branch (12, 13, 14: the middle one panics).
    let fan = PanickyFan {
        split: Split { parts: 3 },
        bad: Panics {},
    };
    let err = fan.run(&WorkflowCtx::new(()), 12).await.unwrap_err();
    assert!(matches!(err, FloxideError::NodePanicked { .. }), "{err:?}");
}
