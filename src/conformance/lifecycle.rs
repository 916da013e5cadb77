//! Checks of a step's life beyond its first execution: what a node sees of its attempts
//! (G1), leases kept alive by heartbeats (G1), failures routed by `on_failure` (G5),
//! graceful shutdown (G7) and idle workers that wait for work instead of polling (G4).

use std::sync::Mutex;

use super::batch::Counting;
use super::*;

/// What a node saw of its step ([`current_step`]) when it ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// [`StepContext::idempotency_key`].
    pub key: String,
    /// [`StepContext::attempt`].
    pub attempt: u32,
    /// [`StepContext::delivery`].
    pub delivery: u32,
}

/// The steps a [`Probe`] saw, shared by its clones.
#[derive(Debug, Clone, Default)]
pub struct Sightings(Arc<Mutex<Vec<Seen>>>);

impl Sightings {
    /// Everything seen so far, in order.
    pub fn all(&self) -> Vec<Seen> {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn push(&self, seen: Seen) {
        if let Ok(mut all) = self.0.lock() {
            all.push(seen);
        }
    }
}

node! {
    /// Notes what it sees of its step, waits `ms` milliseconds, then behaves as [`Step`].
    pub struct Probe { name: &'static str, gate: Gate, seen: Sightings, ms: u64 };
    context = Trace;
    input = u32;
    output = u32;
    |ctx, n| {
        let step = current_step().ok_or_else(|| {
            FloxideError::Generic("conformance: a distributed step has a step context".into())
        })?;
        self.seen.push(Seen {
            key: step.idempotency_key(),
            attempt: step.attempt,
            delivery: step.delivery,
        });
        if self.ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.ms)).await;
        }
        self.gate.pass().await?;
        ctx.events.append(format!("{}:{n}", self.name));
        Ok(Transition::Next(n + 1))
    }
}

workflow! {
    /// One probed node, retried by the backend under `policy`.
    pub struct Probed {
        #[retry = policy]
        probe: Probe,
        policy: RetryPolicy,
    }
    context = Trace;
    start = probe;
    edges { probe => []; }
}

impl Probed {
    /// A probe that runs `ms` milliseconds behind `gate`, retried up to 3 attempts.
    fn new(gate: Gate, seen: Sightings, ms: u64) -> Self {
        Probed {
            probe: Probe {
                name: "probe",
                gate,
                seen,
                ms,
            },
            policy: RetryPolicy::new(
                3,
                Duration::from_millis(10),
                Duration::from_millis(10),
                BackoffStrategy::Linear,
                RetryError::Generic,
            ),
        }
    }
}

workflow! {
    /// `risky`, whose failures go to `fallback`.
    pub struct Routed { risky: Step, fallback: Step }
    context = Trace;
    start = risky;
    edges {
        risky on_failure => { [fallback] };
        risky => [];
        fallback => [];
    }
}

/// Waits (tokio's clock) until `gate` let `n` executions in.
async fn executions_reach(gate: &Gate, n: usize) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while gate.executions() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node did not run {n} times"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A run of [`Chain`] whose `b` is executing on a pool of one worker, held by its gate.
struct HeldInB {
    gate: Gate,
    wf: Chain,
    o: DistributedOrchestrator<Chain, Trace>,
    run: RunId,
    workers: WorkerPool<Chain, Trace>,
}

impl HeldInB {
    async fn start(backend: &Arc<dyn Backend>) -> Self {
        let gate = Gate::holding_first();
        let wf = Chain::new(gate.clone());
        let o = orchestrator(wf.clone(), backend);
        let run = o.start_run(&ctx(), 1).await.unwrap();
        let workers = pool(wf.clone(), backend, 1);
        executions_reach(&gate, 1).await;
        HeldInB {
            gate,
            wf,
            o,
            run,
            workers,
        }
    }

    /// `b`'s work item, as listed now.
    async fn b(&self) -> WorkItemInfo {
        let items = self.o.list_work_items(&self.run).await.unwrap();
        items.into_iter().find(|i| i.node == "b").expect("b's item")
    }
}

/// G1: a node sees which attempt and which delivery of it is running, under an idempotency
/// key (run id + item id) that stays the same across retries and re-deliveries.
pub async fn g1_steps_see_their_attempt_and_a_stable_idempotency_key<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    // The first execution fails (a retry follows); the second is held until its worker dies
    // (another delivery of the same attempt follows); the third completes.
    let gate = Gate::holding_first();
    gate.fail_first.store(1, Ordering::SeqCst);
    let seen = Sightings::default();
    let wf = Probed::new(gate.clone(), seen.clone(), 0);
    let o = orchestrator(wf.clone(), &backend);
    let run = o.start_run(&ctx(), 1).await.unwrap();

    let doomed = worker(wf.clone(), &backend);
    let crashing = tokio::spawn(async move { doomed.run_forever("doomed").await });
    executions_reach(&gate, 2).await;
    crashing.abort();
    let _ = crashing.await;
    let mut survivors = pool(wf, &backend, 1);
    let info = finish(&o, &run).await;
    survivors.try_stop().await.unwrap();
    assert_eq!(info.status, RunStatus::Completed, "{info:?}");

    let item = o.list_work_items(&run).await.unwrap();
    let key = match item.first() {
        Some(item) => format!("{run}:{}", item.item_id),
        // A completed run's items may be gone: the key is still the first one seen.
        None => seen.all()[0].key.clone(),
    };
    assert!(
        key.starts_with(&format!("{run}:")),
        "G1: the key names the run: {key}"
    );
    let expected = [(1, 1), (2, 1), (2, 2)].map(|(attempt, delivery)| Seen {
        key: key.clone(),
        attempt,
        delivery,
    });
    assert_eq!(
        seen.all(),
        expected,
        "G1: attempt 1 failed, attempt 2 was delivered twice, all under one key"
    );
}

/// G1: a step that runs longer than its lease keeps it by its heartbeats: no other worker
/// takes the item meanwhile, and it runs once.
pub async fn g1_heartbeats_keep_a_long_step_alive<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let gate = Gate::open();
    let seen = Sightings::default();
    let long = LEASE.as_millis() as u64 * 4;
    let wf = Probed::new(gate.clone(), seen.clone(), long);
    let o = orchestrator(wf.clone(), &backend);
    let run = o.start_run(&ctx(), 1).await.unwrap();
    let mut workers = pool(wf, &backend, 2);
    let info = finish(&o, &run).await;
    workers.try_stop().await.unwrap();
    assert_eq!(info.status, RunStatus::Completed, "{info:?}");
    assert_eq!(
        gate.executions(),
        1,
        "G1: a step of {long} ms under a {LEASE:?} lease ran again: {:?}",
        seen.all()
    );
    assert_eq!(
        o.metrics(&run).await.unwrap().reclaimed,
        0,
        "G1: the renewed lease was reclaimed"
    );
}

/// G5: a failure the workflow routes with `on_failure` goes to its fallback: the run
/// completes with the fallback's output, not Failed, and nothing is dead-lettered.
pub async fn g5_routed_failures_complete_the_run<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let wf = Routed {
        risky: Step {
            name: "risky",
            gate: Gate::failing_first(usize::MAX),
        },
        fallback: Step {
            name: "fallback",
            gate: Gate::open(),
        },
    };
    let o = orchestrator(wf.clone(), &backend);
    let run = o.start_run(&ctx(), 5).await.unwrap();
    let mut workers = pool(wf, &backend, 1);
    let info = finish(&o, &run).await;
    workers.try_stop().await.unwrap();
    assert_eq!(
        (info.status, info.output),
        (RunStatus::Completed, Some(serde_json::json!(6))),
        "G5: the fallback got risky's input (5) and finished the run"
    );
    let trace = o.context(&run).await.unwrap();
    assert_eq!(trace.count("fallback:5"), 1, "{:?}", trace.events);
    assert_eq!(trace.count("risky:5"), 0, "{:?}", trace.events);
    let letters = o.dead_letters().await.unwrap();
    assert!(
        letters.iter().all(|l| l.run_id != run),
        "G5: a routed failure is not a dead letter: {letters:?}"
    );
}

/// G7: a worker stopped while a step runs finishes it within the grace period, or gives the
/// item back at once (no lease to wait out); the run then completes on another worker with
/// each item's effects applied once.
pub async fn g7_a_stopped_worker_finishes_or_releases_its_steps<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);

    // A step that ends within the grace period is committed.
    let HeldInB {
        gate: quick,
        wf,
        o,
        run,
        workers: mut stopping,
    } = HeldInB::start(&backend).await;
    let stop = tokio::spawn(async move { stopping.try_stop().await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    quick.release();
    stop.await.unwrap().unwrap();
    let mut rest = pool(wf, &backend, 1);
    let info = finish(&o, &run).await;
    rest.try_stop().await.unwrap();
    assert_eq!(info.status, RunStatus::Completed, "{info:?}");
    assert_eq!(
        quick.executions(),
        1,
        "G7: the step finished within the grace period"
    );
    assert_eq!(o.context(&run).await.unwrap().count("b:2"), 1);

    // A step that does not end within it is released: its item is Pending again as soon as
    // the worker has stopped, and the next worker runs it without waiting for the lease.
    let mut held = HeldInB::start(&backend).await;
    tokio::time::timeout(PATIENCE, held.workers.try_stop())
        .await
        .expect("G7: the worker exits after its grace period")
        .unwrap();
    let b = held.b().await;
    let HeldInB {
        gate: stuck,
        wf,
        o,
        run,
        ..
    } = held;
    assert_eq!(
        b.status,
        WorkItemStatus::Pending,
        "G7: the unfinished step's item was given back: {b:?}"
    );
    let mut rest = pool(wf, &backend, 1);
    let info = finish(&o, &run).await;
    rest.try_stop().await.unwrap();
    assert_eq!(info.status, RunStatus::Completed, "{info:?}");
    assert_eq!(stuck.executions(), 2);
    assert_eq!(o.context(&run).await.unwrap().count("b:2"), 1);
    assert_eq!(
        o.metrics(&run).await.unwrap().reclaimed,
        0,
        "G7: the item was released, not reclaimed after its lease expired"
    );
}

/// G4: an idle worker waits on the backend and wakes when work arrives, long before its idle
/// wait (set to a minute here) would have it look again.
pub async fn g4_idle_workers_wake_when_work_arrives<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let wf = Chain::new(Gate::open());
    let o = orchestrator(wf.clone(), &backend);
    let idle = Duration::from_secs(60);
    let w = WorkerBuilder::new()
        .workflow(wf)
        .backend_arc(Arc::clone(&backend))
        .lease_timeout(LEASE)
        .idle_sleep_duration(idle)
        .build()
        .unwrap();
    let mut workers = WorkerPool::new(w, 2).with_grace_period(Duration::from_millis(200));
    workers.start();
    // Both workers have found the queue empty and wait.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for input in [1, 10] {
        let run = o.start_run(&ctx(), input).await.unwrap();
        let info = tokio::time::timeout(
            idle / 4,
            o.wait_for_completion(&run, Duration::from_millis(50)),
        )
        .await
        .expect("G4: an idle worker did not wake for new work")
        .unwrap();
        assert_eq!(info.status, RunStatus::Completed, "{info:?}");
    }
    workers.try_stop().await.unwrap();
}

/// G5: a failed step's retry waits in the backend, not in its worker: the worker (one step
/// at a time) completes another run meanwhile, and the retry survives the worker's death and
/// runs on another worker when it falls due.
pub async fn g5_a_scheduled_retry_frees_its_worker_and_survives_it<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let gate = Gate::failing_first(1);
    let seen = Sightings::default();
    let backoff = LEASE * 5;
    let wf = Probed {
        policy: RetryPolicy::new(
            3,
            backoff,
            backoff,
            BackoffStrategy::Linear,
            RetryError::Generic,
        ),
        ..Probed::new(gate.clone(), seen.clone(), 0)
    };
    let o = orchestrator(wf.clone(), &backend);
    let retried = o.start_run(&ctx(), 1).await.unwrap();
    let single = WorkerBuilder::new()
        .workflow(wf.clone())
        .backend_arc(Arc::clone(&backend))
        .lease_timeout(LEASE)
        .heartbeat_interval(LEASE / 4)
        .idle_sleep_duration(Duration::from_millis(50))
        .concurrency(1)
        .build()
        .unwrap();
    let doomed = tokio::spawn(async move { single.run_forever("single").await });
    executions_reach(&gate, 1).await;
    // While the retry waits, the same worker runs another run to its end.
    let other = o.start_run(&ctx(), 2).await.unwrap();
    let info = finish(&o, &other).await;
    assert_eq!(info.status, RunStatus::Completed, "{info:?}");
    let items = o.list_work_items(&retried).await.unwrap();
    assert_eq!(
        items.iter().map(|i| i.status).collect::<Vec<_>>(),
        [WorkItemStatus::WaitingRetry],
        "G5: the retry is still waiting in the backend while its worker did other work"
    );
    // The worker dies; the retry still runs, on another one.
    doomed.abort();
    let _ = doomed.await;
    let mut rest = pool(wf, &backend, 1);
    let info = finish(&o, &retried).await;
    rest.try_stop().await.unwrap();
    assert_eq!(info.status, RunStatus::Completed, "{info:?}");
    let attempts: Vec<u32> = seen
        .all()
        .iter()
        .filter(|s| s.key.starts_with(&format!("{retried}:")))
        .map(|s| s.attempt)
        .collect();
    assert_eq!(
        attempts,
        [1, 2],
        "G5: the scheduled retry ran after its worker died"
    );
}

/// G7: a worker executing a retry says so in its liveness report, with the attempt and its
/// retry policy's maximum.
pub async fn g7_liveness_shows_a_retry_and_its_attempts<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    // `b` fails once, then its retry holds until released.
    let gate = Gate::failing_first(1);
    gate.hold_first
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let wf = Chain::new(gate.clone());
    let o = orchestrator(wf.clone(), &backend);
    let worker = worker_builder(wf, &backend)
        .retry_policy(quick_retries())
        .build()
        .expect("conformance: worker builds");
    let mut workers = WorkerPool::new(worker, 1).with_grace_period(Duration::from_millis(200));
    workers.start();
    let run = o.start_run(&ctx(), 1).await.unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let report = loop {
        let reports = o.liveness().await.unwrap();
        if let Some(h) = reports.iter().find(|h| {
            h.current_work_item_run_id.as_deref() == Some(run.as_str())
                && matches!(h.status, WorkerStatus::Retrying(..))
        }) {
            break h.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "G7: no worker report shows the retry in progress: {reports:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(report.status, WorkerStatus::Retrying(2, 3), "{report:?}");
    gate.release();
    assert_eq!(finish(&o, &run).await.status, RunStatus::Completed);
    workers.try_stop().await.unwrap();
}

/// G7: a worker's liveness shows what it is doing: while a step runs, its report names the
/// step's item and run, with a recent heartbeat; once it has stopped, it says so.
pub async fn g7_liveness_names_the_item_in_progress<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let started = std::time::SystemTime::now();
    let held = HeldInB::start(&backend).await;
    let b = held.b().await;
    let HeldInB {
        gate,
        o,
        run,
        mut workers,
        ..
    } = held;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let report = loop {
        let reports = o.liveness().await.unwrap();
        if let Some(h) = reports
            .iter()
            .find(|h| h.current_work_item_run_id.as_deref() == Some(run.as_str()))
        {
            break h.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "G7: no worker report names the item in progress: {reports:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(report.current_work_item, Some(b.item_id), "{report:?}");
    assert_eq!(report.status, WorkerStatus::InProgress, "{report:?}");
    assert_eq!(report.workflow, "Chain");
    assert!(
        report.last_heartbeat >= started - Duration::from_secs(1),
        "G7: the heartbeat time is the report's: {report:?}"
    );
    gate.release();
    let info = finish(&o, &run).await;
    assert_eq!(info.status, RunStatus::Completed);
    workers.try_stop().await.unwrap();
    let after = o.liveness().await.unwrap();
    let mine = after
        .iter()
        .find(|h| h.worker_id == report.worker_id)
        .expect("the worker's last report");
    assert_eq!(mine.status, WorkerStatus::Stopped, "{mine:?}");
    assert_eq!(mine.current_work_item, None, "{mine:?}");
}

node! {
    /// Waits for its step's cancellation (a minute at most) and counts it when it comes.
    pub struct UntilCancelled { seen: Arc<AtomicUsize> };
    context = Trace;
    input = u32;
    output = u32;
    |_ctx, n| {
        if let Some(step) = current_step() {
            let fired = tokio::time::timeout(Duration::from_secs(60), step.cancel.cancelled());
            if fired.await.is_ok() {
                self.seen.fetch_add(1, Ordering::SeqCst);
                return Err(FloxideError::Cancelled);
            }
        }
        Ok(Transition::Next(n))
    }
}

workflow! {
    /// One node that runs until its run is cancelled.
    pub struct Cancellable { wait: UntilCancelled }
    context = Trace;
    start = wait;
    edges { wait => []; }
}

/// G7: a running step learns of its run's cancel even when it did not hear it (a cancel made
/// between the take and the step's first wait for run changes): it looks at its run once
/// soon after its take, not only at its next heartbeat. The backend here hears no change.
pub async fn g7_a_step_learns_of_a_cancel_it_did_not_hear<B: Backend>(backend: B) {
    let counting = Arc::new(Counting::over(Arc::new(backend), true));
    let backend: Arc<dyn Backend> = counting.clone();
    let seen = Arc::new(AtomicUsize::new(0));
    let wf = Cancellable {
        wait: UntilCancelled { seen: seen.clone() },
    };
    let o = orchestrator(wf.clone(), &backend);
    // Heartbeats far apart: only the step's first look can find the cancel in time.
    let w = WorkerBuilder::new()
        .workflow(wf)
        .backend_arc(Arc::clone(&backend))
        .lease_timeout(Duration::from_secs(900))
        .heartbeat_interval(Duration::from_secs(300))
        .build()
        .unwrap();
    // The cancel comes between the take and the step's start, however slow the machine.
    let (took, go) = counting.hold_next_take();
    let mut workers = WorkerPool::new(w, 1).with_grace_period(Duration::from_millis(200));
    workers.start();
    let run = o.start_run(&ctx(), 1).await.unwrap();
    tokio::time::timeout(PATIENCE, took)
        .await
        .expect("the run's item was never taken")
        .expect("the take was held");
    o.cancel(&run).await.unwrap();
    let _ = go.send(());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "G7: the running step did not learn of its run's cancel"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    workers.try_stop().await.unwrap();
}
