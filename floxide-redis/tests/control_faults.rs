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
            let subscribers: String = redis::cmd("CLIENT")
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
        let killed: u64 = redis::cmd("CLIENT")
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
