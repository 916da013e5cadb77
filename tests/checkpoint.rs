//! Checkpointed runs: save after every step, resume after any interruption, record completion.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use floxide::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Journal {
    log: EventLog<String>,
}

/// Counts every node execution of a test; the execution numbered `fail_at` fails after
/// writing to the context (as a crash between the step and its save would).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    executed: Arc<AtomicUsize>,
    fail_at: Arc<AtomicUsize>,
}

impl Faults {
    fn failing_at(n: usize) -> Self {
        let f = Faults::default();
        f.fail_at.store(n, Ordering::SeqCst);
        f
    }

    fn tick(&self) -> Result<(), FloxideError> {
        let n = self.executed.fetch_add(1, Ordering::SeqCst) + 1;
        if self.fail_at.load(Ordering::SeqCst) == n {
            self.fail_at.store(0, Ordering::SeqCst);
            return Err(FloxideError::Generic(format!("crash at execution {n}")));
        }
        Ok(())
    }

    fn executed(&self) -> usize {
        self.executed.load(Ordering::SeqCst)
    }
}

node! {
    pub struct Fan { faults: Faults };
    context = Journal;
    input = u32;
    output = u32;
    |ctx, n| {
        ctx.log.append(format!("fan {n}"));
        self.faults.tick()?;
        Ok(Transition::NextAll(vec![n, n + 1, n + 2]))
    }
}

node! {
    pub struct Double { faults: Faults };
    context = Journal;
    input = u32;
    output = u32;
    |ctx, n| {
        ctx.log.append(format!("double {n}"));
        self.faults.tick()?;
        Ok(Transition::Next(n * 2))
    }
}

node! {
    pub struct Finish { faults: Faults };
    context = Journal;
    input = u32;
    output = String;
    |ctx, n| {
        ctx.log.append(format!("finish {n}"));
        self.faults.tick()?;
        Ok(Transition::Next(format!("result {n}")))
    }
}

workflow! {
    pub struct Pipeline { fan: Fan, double: Double, finish: Finish }
    context = Journal;
    start = fan;
    edges { fan => [double]; double => [finish]; finish => []; }
}

fn pipeline(faults: &Faults) -> Pipeline {
    Pipeline {
        fan: Fan {
            faults: faults.clone(),
        },
        double: Double {
            faults: faults.clone(),
        },
        finish: Finish {
            faults: faults.clone(),
        },
    }
}

fn journal(store: &InMemoryCheckpointStore<Journal, PipelineWorkItem>, id: &str) -> Vec<String> {
    let cp: Checkpoint<Journal, PipelineWorkItem> = futures_block(CheckpointStore::load(store, id))
        .unwrap()
        .unwrap();
    cp.context.log.events().collect()
}

fn futures_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

#[tokio::test]
async fn a_checkpointed_run_matches_a_plain_run_and_records_completion() {
    let faults = Faults::default();
    let wf = pipeline(&faults);
    let plain = wf
        .run(&WorkflowCtx::new(Journal::default()), 1)
        .await
        .unwrap();

    let store = InMemoryCheckpointStore::new();
    let ctx = WorkflowCtx::new(Journal::default());
    let out = wf
        .run_with_checkpoint(&ctx, 1, &store, "job")
        .await
        .unwrap();
    assert_eq!(out, plain);
    assert_eq!(out, "result 2");

    // Re-running the finished id executes nothing and returns the recorded output.
    let before = faults.executed();
    let again = wf
        .run_with_checkpoint(&WorkflowCtx::new(Journal::default()), 1, &store, "job")
        .await
        .unwrap();
    assert_eq!(again, out);
    assert_eq!(faults.executed(), before);

    // Resuming a finished run is refused.
    assert_eq!(
        wf.resume(&store, "job").await,
        Err(FloxideError::AlreadyCompleted)
    );
    assert_eq!(faults.executed(), before);
}

#[test]
fn a_run_interrupted_at_any_step_resumes_to_the_same_result() {
    // The uninterrupted run: 1 fan + 3 doubles + 3 finishes = 7 executions.
    let reference_store = InMemoryCheckpointStore::new();
    let reference = futures_block(pipeline(&Faults::default()).run_with_checkpoint(
        &WorkflowCtx::new(Journal::default()),
        5,
        &reference_store,
        "r",
    ))
    .unwrap();
    let reference_log = journal(&reference_store, "r");
    assert_eq!(reference_log.len(), 7);

    for k in 1..=7 {
        let faults = Faults::failing_at(k);
        let wf = pipeline(&faults);
        let store = InMemoryCheckpointStore::new();
        let first = futures_block(wf.run_with_checkpoint(
            &WorkflowCtx::new(Journal::default()),
            5,
            &store,
            "r",
        ));
        assert_eq!(
            first,
            Err(FloxideError::Generic(format!("crash at execution {k}"))),
            "interrupted at step {k}"
        );
        let resumed = futures_block(wf.resume(&store, "r")).unwrap();
        assert_eq!(resumed, reference, "resumed after step {k}");
        assert_eq!(
            journal(&store, "r"),
            reference_log,
            "context after step {k}"
        );
        assert_eq!(faults.executed(), 8, "only the interrupted step ran twice");
    }
}

#[tokio::test]
async fn restarting_with_the_same_input_continues_and_another_input_is_reported() {
    let faults = Faults::failing_at(3);
    let wf = pipeline(&faults);
    let store = InMemoryCheckpointStore::new();
    let ctx = WorkflowCtx::new(Journal::default());
    assert!(wf.run_with_checkpoint(&ctx, 5, &store, "x").await.is_err());

    let err = wf
        .run_with_checkpoint(&ctx, 6, &store, "x")
        .await
        .unwrap_err();
    assert_eq!(
        err,
        FloxideError::CheckpointInputMismatch { id: "x".into() }
    );

    let executed = faults.executed();
    let out = wf.run_with_checkpoint(&ctx, 5, &store, "x").await.unwrap();
    assert_eq!(out, "result 10");
    assert_eq!(
        faults.executed(),
        executed + 5,
        "continued after the 2 saved steps"
    );
}

#[tokio::test]
async fn resuming_an_unknown_id_is_not_started() {
    let wf = pipeline(&Faults::default());
    let store = InMemoryCheckpointStore::new();
    assert_eq!(
        wf.resume(&store, "nope").await,
        Err(FloxideError::NotStarted)
    );
}

#[tokio::test]
async fn a_pending_final_step_that_failed_is_resumed_and_executed() {
    // Executions: fan(1), double×3 (2-4), finish×3 (5-7): the last finish fails.
    let faults = Faults::failing_at(7);
    let wf = pipeline(&faults);
    let store = InMemoryCheckpointStore::new();
    let ctx = WorkflowCtx::new(Journal::default());
    assert!(wf.run_with_checkpoint(&ctx, 1, &store, "f").await.is_err());
    let cp: Checkpoint<Journal, PipelineWorkItem> =
        CheckpointStore::load(&store, "f").await.unwrap().unwrap();
    assert_eq!(cp.queue.len(), 1);
    assert_eq!(cp.queue[0].node_name(), "finish");
    assert_eq!(wf.resume(&store, "f").await.unwrap(), "result 2");
    assert_eq!(faults.executed(), 8);
}

node! {
    pub struct Sleepy { ms: u64 };
    context = Journal;
    input = u32;
    output = u32;
    |_ctx, n| {
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        Ok(Transition::Next(n + 1))
    }
}

workflow! {
    pub struct Sleeps { a: Sleepy, b: Sleepy, c: Sleepy }
    context = Journal;
    start = a;
    edges { a => [b]; b => [c]; c => []; }
}

#[tokio::test(start_paused = true)]
async fn resume_honours_the_callers_deadline_and_cancellation() {
    let s = Sleepy { ms: 100 };
    let wf = Sleeps {
        a: s.clone(),
        b: s.clone(),
        c: s,
    };
    let store = InMemoryCheckpointStore::new();
    let mut ctx = WorkflowCtx::new(Journal::default());
    ctx.set_timeout(Duration::from_millis(150));
    let err = wf
        .run_with_checkpoint(&ctx, 0, &store, "s")
        .await
        .unwrap_err();
    assert_eq!(err, FloxideError::Timeout(Duration::from_millis(150)));

    // One step was saved; two are left (200 ms): a 150 ms deadline interrupts again.
    let err = wf.resume_with_ctx(&ctx, &store, "s").await.unwrap_err();
    assert_eq!(err, FloxideError::Timeout(Duration::from_millis(150)));

    let cancelled = WorkflowCtx::new(Journal::default());
    cancelled.cancel();
    assert_eq!(
        wf.resume_with_ctx(&cancelled, &store, "s").await,
        Err(FloxideError::Cancelled)
    );

    assert_eq!(wf.resume(&store, "s").await.unwrap(), 3);
}

#[tokio::test]
async fn file_store_round_trips_and_reports_corrupt_files_by_name() {
    let dir = std::env::temp_dir().join(format!("floxide-cp-{}-{}", std::process::id(), line!()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = FileCheckpointStore::new(&dir);
    let wf = pipeline(&Faults::failing_at(2));
    let ctx = WorkflowCtx::new(Journal::default());
    let id = "orders/2026 #1";
    assert!(wf.run_with_checkpoint(&ctx, 3, &store, id).await.is_err());
    let path = store.path_for(id);
    assert!(path.exists(), "{path:?}");
    assert_eq!(
        path.parent(),
        Some(dir.as_path()),
        "ids never escape the directory"
    );
    assert_eq!(wf.resume(&store, id).await.unwrap(), "result 6");
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // A torn write: half the file.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = wf.resume(&store, id).await.unwrap_err();
    match &err {
        FloxideError::Checkpoint(CheckpointError::Corrupt { location, .. }) => {
            assert!(location.contains(&path.display().to_string()), "{err}")
        }
        other => panic!("expected a corrupt-checkpoint error, got {other:?}"),
    }
    assert!(err.to_string().contains("corrupt"), "{err}");

    // Garbage bytes in the in-memory store: also typed, also named.
    let mem = InMemoryCheckpointStore::new();
    mem.set_raw("bad", b"\xff\x00not json".to_vec());
    match wf.resume(&mem, "bad").await {
        Err(FloxideError::Checkpoint(CheckpointError::Corrupt { location, .. })) => {
            assert!(location.contains("bad"))
        }
        other => panic!("expected a corrupt-checkpoint error, got {other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

node! {
    pub struct Waits {};
    context = Journal;
    input = u32;
    output = u32;
    |_ctx, _n| { Ok(Transition::Hold) }
}

workflow! {
    pub struct HoldStart { w: Waits }
    context = Journal;
    start = w;
    edges { w => []; }
}

#[tokio::test]
async fn a_checkpointed_start_node_that_holds_is_a_typed_error() {
    let store = InMemoryCheckpointStore::new();
    let err = HoldStart { w: Waits {} }
        .run_with_checkpoint(&WorkflowCtx::new(Journal::default()), 1, &store, "h")
        .await
        .unwrap_err();
    assert!(
        matches!(err, FloxideError::StartNodeHeld { node: "w", .. }),
        "{err:?}"
    );
}
