//! Redis faults around run control and waiting, against private `redis-server`s: a dropped
//! event subscription, heartbeats through a Redis restart, and the edges of retention.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use floxide::*;
use floxide_redis::testing::{RedisServer, ServerOptions};
use floxide_redis::{RedisBackend, RedisClient, RedisConfig};
use tokio::sync::Semaphore;

node! {
    /// Waits for a permit of `gate`, then passes its input on; counts its executions.
    pub struct Wait { gate: Arc<Semaphore>, runs: Arc<AtomicUsize> };
    input = u64;
    output = u64;
    |_ctx, n| {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let permit = self.gate.acquire().await.map_err(FloxideError::generic)?;
        permit.forget();
        Ok(Transition::Next(n))
    }
}

workflow! {
    pub struct Once { wait: Wait }
    start = wait;
    edges { wait => []; }
}

fn once(gate: &Arc<Semaphore>) -> Once {
    Once {
        wait: Wait {
            gate: Arc::clone(gate),
            runs: Arc::default(),
        },
    }
}

async fn client(server: &RedisServer, prefix: &str) -> RedisClient {
    RedisClient::new(RedisConfig::new(server.url()).with_key_prefix(prefix))
        .await
        .expect("connect to the test redis-server")
}

/// Waits until `run` has an item in progress.
async fn until_in_progress(o: &DistributedOrchestrator<Once, ()>, run: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let items = o.list_work_items(run).await.unwrap();
        if items.iter().any(|i| i.status == WorkItemStatus::InProgress) {
            return;
        }
        assert!(Instant::now() < deadline, "the item was never taken");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Issue 11, case 4: events published while the subscription is down are lost, so a waiter
/// must be woken once the subscription is back. The subscription is killed just before the
/// run finishes; the waiter must return within 2 s (not after its 30 s timeout), 20 of 20.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_is_woken_after_the_event_subscription_drops() {
    let server = RedisServer::start_or_panic(ServerOptions::default());
    let client = client(&server, "sub:").await;
    let backend = RedisBackend::new(client.clone());
    let gate = Arc::new(Semaphore::new(0));
    let wf = once(&gate);
    let o = wf.orchestrator(backend.clone()).build().unwrap();
    let mut pool = WorkerPool::new(wf.worker(backend).build().unwrap(), 1);
    pool.start();
    let mut admin = client.connection();
    for attempt in 0..20u64 {
        // The subscription killed by the previous try is back before this one starts.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let subscribers: String = ::redis::cmd("CLIENT")
                .arg("LIST")
                .arg("TYPE")
                .arg("pubsub")
                .query_async(&mut admin)
                .await
                .unwrap();
            if !subscribers.trim().is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the subscription never came back"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let run = o.start_run(&WorkflowCtx::new(()), attempt).await.unwrap();
        until_in_progress(&o, &run).await;
        let waiter = {
            let (o, run) = (o.clone(), run.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let out = o.wait_for_output(&run, Duration::from_secs(30)).await;
                (out, started.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let killed: u64 = ::redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut admin)
            .await
            .unwrap();
        assert!(killed >= 1, "the event subscription was killed");
        gate.add_permits(1);
        let (out, waited) = waiter.await.unwrap();
        assert_eq!(out.unwrap(), attempt);
        assert!(
            waited < Duration::from_secs(2),
            "try {attempt}: the waiter missed the finish and waited {waited:?}"
        );
    }
    pool.try_stop().await.unwrap();
}

/// A waiter on one run is woken by that run's events only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_watch_wakes_for_its_own_run_only() {
    let server = RedisServer::start_or_panic(ServerOptions::default());
    let backend = RedisBackend::new(client(&server, "watch:").await);
    floxide::conformance::a_run_watch_wakes_for_its_own_run_only(backend).await;
}

node! {
    /// Sleeps `ms`, counting its executions.
    pub struct Slow { ms: u64, runs: Arc<AtomicUsize> };
    input = u64;
    output = u64;
    |_ctx, n| {
        self.runs.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        Ok(Transition::Next(n))
    }
}

workflow! {
    pub struct Long { slow: Slow }
    start = slow;
    edges { slow => []; }
}

/// Runs one `Long` step of `node_ms` under `lease` (heartbeat every `beat`) while Redis is
/// down from `down_at` for `outage` after the step starts; returns its executions.
async fn step_through_outage(
    node_ms: u64,
    lease: Duration,
    beat: Duration,
    down_at: Duration,
    outage: Duration,
) -> usize {
    let mut server = RedisServer::start_or_panic(ServerOptions {
        appendonly: true,
        ..ServerOptions::default()
    });
    let client = client(&server, "hb:").await;
    let backend = RedisBackend::new(client);
    let runs = Arc::new(AtomicUsize::new(0));
    let wf = Long {
        slow: Slow {
            ms: node_ms,
            runs: Arc::clone(&runs),
        },
    };
    let o = wf.orchestrator(backend.clone()).build().unwrap();
    let worker = wf
        .worker(backend)
        .lease_timeout(lease)
        .heartbeat_interval(beat)
        .build()
        .unwrap();
    let mut pool = WorkerPool::new(worker, 1);
    pool.start();
    let run = o.start_run(&WorkflowCtx::new(()), 7).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while runs.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the step never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(down_at).await;
    server.kill();
    tokio::time::sleep(outage).await;
    server.restart().expect("redis-server restarts");
    let out = o
        .wait_for_output(&run, Duration::from_secs(60))
        .await
        .unwrap();
    pool.try_stop().await.unwrap();
    assert_eq!(out, 7);
    let metrics = o.metrics(&run).await.unwrap();
    assert_eq!(metrics.completed, 1);
    runs.load(Ordering::SeqCst)
}

/// Issue 11, case 7: a Redis outage shorter than the lease does not cost the step: an 8 s
/// node under a 6 s lease, Redis down from t = 3 s for 1.5 s. One execution, one commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_redis_outage_does_not_cost_the_running_step() {
    let executions = step_through_outage(
        8000,
        Duration::from_secs(6),
        Duration::from_secs(2),
        Duration::from_secs(3),
        Duration::from_millis(1500),
    )
    .await;
    assert_eq!(executions, 1, "the step executed again");
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Nothing;

node! {
    /// Emits `0..n`.
    pub struct Spread { n: u64 };
    input = u64;
    output = u64;
    |_ctx, _n| { Ok(Transition::NextAll((0..self.n).collect())) }
}

node! {
    pub struct Leaf {};
    input = u64;
    output = u64;
    |_ctx, n| { Ok(Transition::Next(n)) }
}

workflow! {
    pub struct Fan { spread: Spread, leaf: Leaf }
    start = spread;
    edges { spread => [leaf]; leaf => []; }
}

fn fan(n: u64) -> Fan {
    Fan {
        spread: Spread { n },
        leaf: Leaf {},
    }
}

/// A run of 200,000 queued leaves on a fresh server (`prefix`), another run queued behind
/// them, and from then on the server's slow log recording every command of 100 ms or more.
struct HugeRun {
    /// Kept for as long as the test runs (dropping it stops the server).
    _server: RedisServer,
    backend: RedisBackend,
    o: DistributedOrchestrator<Fan, ()>,
    big: String,
    other: String,
    conn: ::redis::aio::MultiplexedConnection,
}

impl HugeRun {
    async fn queued(prefix: &str) -> Self {
        let server = RedisServer::start_or_panic(ServerOptions::default());
        let backend = RedisBackend::new(client(&server, prefix).await);
        let o = fan(200_000).orchestrator(backend.clone()).build().unwrap();
        let big = o.start_run(&WorkflowCtx::new(()), 0).await.unwrap();
        let spreader = fan(200_000).worker(backend.clone()).build().unwrap();
        spreader.run_once("spreader").await.unwrap();
        assert_eq!(
            backend.progress(&big).await.unwrap().outstanding,
            200_000,
            "the leaves are queued"
        );
        let other = o.start_run(&WorkflowCtx::new(()), 0).await.unwrap();
        let mut conn = raw(&server).await;
        let _: () = ::redis::cmd("CONFIG")
            .arg("SET")
            .arg("slowlog-log-slower-than")
            .arg(100_000)
            .query_async(&mut conn)
            .await
            .unwrap();
        let _: () = ::redis::cmd("SLOWLOG")
            .arg("RESET")
            .query_async(&mut conn)
            .await
            .unwrap();
        HugeRun {
            _server: server,
            backend,
            o,
            big,
            other,
            conn,
        }
    }

    /// Fails (naming `what`) when a command ran for 100 ms or more since [`Self::queued`].
    async fn assert_nothing_slow(&mut self, what: &str) {
        // (Each entry: its id, start time, duration in µs and the command's first arguments.)
        let slow: Vec<::redis::Value> = ::redis::cmd("SLOWLOG")
            .arg("GET")
            .arg(-1)
            .query_async(&mut self.conn)
            .await
            .unwrap();
        assert!(
            slow.is_empty(),
            "G9: commands ran for 100 ms or more while {what}: {slow:?}"
        );
    }
}

/// Issue 11, case 3 (G9): every script does bounded work. A run with 200,000 queued items is
/// cancelled, and another run of the same workflow, queued behind them, is then executed: no
/// command or script runs for 100 ms or more. The server times its commands itself (its slow
/// log), so a test process short of CPU on a busy machine cannot make a fast script look slow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_huge_run_does_not_block_redis() {
    let mut huge = HugeRun::queued("big:").await;
    let o = &huge.o;
    o.cancel(&huge.big).await.unwrap();
    // The other run's items sit behind 200,000 entries of the cancelled run.
    let mut pool = WorkerPool::new(fan(1).worker(huge.backend.clone()).build().unwrap(), 2);
    pool.start();
    let out = o
        .wait_for_output(&huge.other, Duration::from_secs(60))
        .await;
    pool.try_stop().await.unwrap();
    assert_eq!(out.unwrap(), 0);
    assert_eq!(o.status(&huge.big).await.unwrap(), RunStatus::Cancelled);
    huge.assert_nothing_slow("a huge run was cancelled and its queue drained")
        .await;
}

/// G9: pausing and resuming a run with 200,000 queued items does bounded work too: while
/// the huge run is paused, another run queued behind it completes; after the resume its own
/// items flow again; no command or script runs for 100 ms or more throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_and_resuming_a_huge_run_does_not_block_redis() {
    let mut huge = HugeRun::queued("bigp:").await;
    let (o, big) = (&huge.o, &huge.big);
    o.pause(big).await.unwrap();
    let mut pool = WorkerPool::new(fan(1).worker(huge.backend.clone()).build().unwrap(), 2);
    pool.start();
    // The other run's item sits behind the paused run's 200,000 entries.
    assert_eq!(
        o.wait_for_output(&huge.other, Duration::from_secs(60))
            .await
            .unwrap(),
        0
    );
    assert_eq!(o.status(big).await.unwrap(), RunStatus::Paused);
    let before = o.metrics(big).await.unwrap().completed;
    o.resume(big).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while o.metrics(big).await.unwrap().completed < before + 1_000 {
        assert!(
            Instant::now() < deadline,
            "the resumed run's items did not come back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    o.cancel(big).await.unwrap();
    pool.try_stop().await.unwrap();
    huge.assert_nothing_slow("a huge run was paused and resumed")
        .await;
}

/// Issue 11, case 2: an idempotency key is honoured whatever partition the run would land
/// in, and the partition count is recorded: a client configured with another is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_hold_across_partitions() {
    let server = RedisServer::start_or_panic(ServerOptions::default());
    let config = RedisConfig::new(server.url())
        .with_key_prefix("parts:")
        .with_partitions(8);
    let backend = RedisBackend::new(RedisClient::new(config.clone()).await.unwrap());
    let o = once(&Arc::new(Semaphore::new(0)))
        .orchestrator(backend)
        .build()
        .unwrap();
    for i in 0..50 {
        let key = format!("order-{i}");
        let first = o
            .start_run_with_key(&WorkflowCtx::new(()), i, &key)
            .await
            .unwrap();
        match o.start_run_with_key(&WorkflowCtx::new(()), i, &key).await {
            Err(FloxideError::Distributed(DistributedError::DuplicateRun { existing, .. })) => {
                assert_eq!(existing, first)
            }
            other => panic!("key {key} started twice: {other:?}"),
        }
    }
    let refused = RedisClient::new(config.with_partitions(4)).await;
    match refused {
        Err(floxide_redis::RedisBackendError::PartitionMismatch {
            configured: 4,
            recorded: 8,
            ..
        }) => {}
        other => panic!("a client with another partition count must be refused: {other:?}"),
    }
}

node! {
    /// Fails on 3; waits for `gate` on 2.
    pub struct Picky { gate: Arc<Semaphore> };
    input = u64;
    output = u64;
    |_ctx, n| {
        if n == 3 {
            return Err(FloxideError::generic("three"));
        }
        if n == 2 {
            let permit = self.gate.acquire().await.map_err(FloxideError::generic)?;
            permit.forget();
        }
        Ok(Transition::Next(n))
    }
}

node! {
    /// Emits its input and the next number.
    pub struct Pair {};
    input = u64;
    output = u64;
    |_ctx, n| { Ok(Transition::NextAll(vec![n, n + 1])) }
}

workflow! {
    pub struct Mixed { pair: Pair, picky: Picky }
    start = pair;
    edges { pair => [picky]; picky => []; }
}

/// Starts a run of [`Mixed`] that fails (`pair` emits 2 and 3; 3 fails) and waits for it.
async fn failed_run(o: &DistributedOrchestrator<Mixed, ()>) -> String {
    let failed = o.start_run(&WorkflowCtx::new(()), 2).await.unwrap();
    let info = o
        .wait_for_completion(&failed, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(info.status, RunStatus::Failed, "{info:?}");
    failed
}

fn mixed(gate: &Arc<Semaphore>) -> Mixed {
    Mixed {
        pair: Pair {},
        picky: Picky {
            gate: Arc::clone(gate),
        },
    }
}

/// The keys of `run` left in the server (of any kind).
/// A plain connection to `server`, for looking at its keys directly.
async fn raw(server: &RedisServer) -> ::redis::aio::MultiplexedConnection {
    ::redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn keys_of(server: &RedisServer, run: &str) -> Vec<String> {
    let mut conn = raw(server).await;
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("*{run}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    keys
}

/// Issue 11, cases 5 and 8 (G9): after the retention, no key of a finished run remains —
/// whether it completed, was cancelled, or failed and then took a late commit and more
/// failures; a dead letter outlives its run (its own retention), and requeueing it then is a
/// typed error that keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_of_a_finished_run_outlives_its_retention() {
    let server = RedisServer::start_or_panic(ServerOptions::default());
    let retention = Duration::from_secs(2);
    let client = RedisClient::new(
        RedisConfig::new(server.url())
            .with_key_prefix("ret:")
            .with_retention(retention),
    )
    .await
    .unwrap();
    let backend = RedisBackend::new(client);
    let gate = Arc::new(Semaphore::new(0));
    let wf = mixed(&gate);
    let o = wf.orchestrator(backend.clone()).build().unwrap();
    let mut pool = WorkerPool::new(wf.worker(backend.clone()).build().unwrap(), 3);
    pool.start();

    // `pair` emits 2 and 3: the run fails (3 is odd) while 2 waits for the gate, which opens
    // after the failure: a late commit to a failed run.
    let failed = failed_run(&o).await;
    gate.add_permits(1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while o.metrics(&failed).await.unwrap().completed < 2 {
        assert!(Instant::now() < deadline, "the late commit never came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Completed: 4 and 5 pass.
    let completed = o.start_run(&WorkflowCtx::new(()), 4).await.unwrap();
    assert_eq!(
        o.wait_for_completion(&completed, Duration::from_millis(50))
            .await
            .unwrap()
            .status,
        RunStatus::Completed
    );
    pool.try_stop().await.unwrap();
    // Cancelled while its first item waits in the queue.
    let cancelled = o.start_run(&WorkflowCtx::new(()), 4).await.unwrap();
    o.cancel(&cancelled).await.unwrap();

    let letter = o
        .dead_letters()
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.run_id == failed)
        .expect("the failed run's dead letter");
    assert!(!keys_of(&server, &failed).await.is_empty());
    tokio::time::sleep(retention + Duration::from_millis(1500)).await;
    for run in [&failed, &completed, &cancelled] {
        let left = keys_of(&server, run).await;
        assert!(
            left.is_empty(),
            "G9: keys of run {run} outlived its retention: {left:?}"
        );
    }
    // The next run to finish drops them from the run index and its list of finished runs.
    let later = o.start_run(&WorkflowCtx::new(()), 4).await.unwrap();
    o.cancel(&later).await.unwrap();
    let mut conn = raw(&server).await;
    let indexed: Vec<String> = ::redis::cmd("ZRANGE")
        .arg("ret:{p0}:runs")
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        indexed,
        vec![later.clone()],
        "G9: the run index forgets expired runs"
    );
    let finished: Vec<String> = ::redis::cmd("LRANGE")
        .arg("ret:{p0}:fin")
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(finished.len(), 1, "{finished:?}");
    assert!(finished[0].ends_with(&format!(" {later}")), "{finished:?}");
    // The dead letter is still there; requeueing it is a typed error and keeps it.
    match o.requeue_dead_letter(&failed, letter.item_id).await {
        Err(FloxideError::Distributed(DistributedError::RunExpired(run))) => {
            assert_eq!(run, failed)
        }
        other => panic!("requeue after the retention must be refused: {other:?}"),
    }
    assert!(o
        .dead_letters()
        .await
        .unwrap()
        .iter()
        .any(|d| d.run_id == failed && d.item_id == letter.item_id));
    o.backend()
        .drop_dead_letter(&failed, letter.item_id)
        .await
        .unwrap();
}

/// G9: a dead letter goes after its own retention, longer than its run's, even when no other
/// letter comes to prune it: the listing stops showing it and the keys that held it expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_expire_after_their_own_retention() {
    let server = RedisServer::start_or_panic(ServerOptions::default());
    let client = RedisClient::new(
        RedisConfig::new(server.url())
            .with_key_prefix("dlret:")
            .with_retention(Duration::from_secs(1))
            .with_dead_letter_retention(Duration::from_secs(3)),
    )
    .await
    .unwrap();
    let backend = RedisBackend::new(client);
    let gate = Arc::new(Semaphore::new(1));
    let wf = mixed(&gate);
    let o = wf.orchestrator(backend.clone()).build().unwrap();
    let mut pool = WorkerPool::new(wf.worker(backend.clone()).build().unwrap(), 1);
    pool.start();
    let failed = failed_run(&o).await;
    pool.try_stop().await.unwrap();
    let letters = o.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let mut conn = raw(&server).await;
    let (hash, index) = ("dlret:{p0}:dlh", "dlret:{p0}:dlq");
    // The run goes after its retention; its letter stays.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert!(keys_of(&server, &failed).await.is_empty());
    assert_eq!(o.dead_letters().await.unwrap().len(), 1);
    // Then the letter goes too: hidden, and its keys expired.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert!(
        o.dead_letters().await.unwrap().is_empty(),
        "G9: a dead letter outlived its retention"
    );
    let left: u64 = ::redis::cmd("EXISTS")
        .arg(hash)
        .arg(index)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        left, 0,
        "G9: the dead letters' keys outlived the newest letter"
    );
}

/// Issue 11, case 9: a worker shutting down while its take is on the wire loses nothing. The
/// worker talks to Redis through a proxy that holds every reply for 300 ms; the pool is
/// stopped while the take's reply (which leases the item) is held. The item must come back
/// to the queue at once, not wait for its 60 s lease to expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_cut_short_by_shutdown_gives_its_item_back() {
    let server = RedisServer::start_or_panic(ServerOptions::default());
    let proxy = floxide_redis::testing::FaultProxy::start(server.port())
        .await
        .unwrap();
    let direct = RedisBackend::new(client(&server, "stop:").await);
    let slow = RedisBackend::new(
        RedisClient::new(RedisConfig::new(proxy.url()).with_key_prefix("stop:"))
            .await
            .unwrap(),
    );
    let gate = Arc::new(Semaphore::new(0));
    let wf = once(&gate);
    let o = wf.orchestrator(direct.clone()).build().unwrap();
    let worker = wf
        .worker(slow)
        .lease_timeout(Duration::from_secs(60))
        .idle_sleep_duration(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut pool = WorkerPool::new(worker, 1).with_grace_period(Duration::ZERO);
    pool.start();
    // The worker is idle, blocked on its wake-up list.
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.delay_replies(Duration::from_millis(300));
    let run = o.start_run(&WorkflowCtx::new(()), 1).await.unwrap();
    // The wake-up reaches the worker ~300 ms later; its take's reply ~300 ms after that.
    tokio::time::sleep(Duration::from_millis(450)).await;
    pool.try_stop().await.unwrap();
    proxy.delay_replies(Duration::ZERO);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let items = o.list_work_items(&run).await.unwrap();
        if items[0].status == WorkItemStatus::Pending {
            assert_eq!(items[0].deliveries, 0, "a release is not a delivery");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the item taken for a stopped worker was not given back: {items:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Another worker takes it at once.
    let mut pool = WorkerPool::new(wf.worker(direct).build().unwrap(), 1);
    pool.start();
    gate.add_permits(1);
    assert_eq!(
        o.wait_for_output(&run, Duration::from_secs(10))
            .await
            .unwrap(),
        1
    );
    pool.try_stop().await.unwrap();
}
