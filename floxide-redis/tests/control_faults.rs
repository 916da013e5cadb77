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
            assert!(Instant::now() < deadline, "the subscription never came back");
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
