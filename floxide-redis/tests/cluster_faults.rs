//! Fault tests on a real Redis Cluster (G8): worker processes (`examples/fault_worker.rs`)
//! under load while the cluster moves slots between masters, loses a master to SIGKILL, or
//! loses workers to SIGKILL. Each test starts its own six-node cluster (three masters, three
//! replicas) and its own workers, and checks that every run completes with each step's
//! effects applied once.

#[allow(dead_code)]
#[path = "../examples/fault_worker.rs"]
mod fault_worker;
#[allow(dead_code)]
#[path = "../../testkit/processes.rs"]
mod processes;
#[path = "../../testkit/runs.rs"]
mod runs;
#[path = "support/fault_workers.rs"]
mod support;

use std::time::{Duration, Instant};

use fault_worker::{Env, Fault, Log};
use floxide::*;
use floxide_redis::testing::RedisCluster;
use floxide_redis::{RedisBackend, RedisClient, RedisConfig};
use processes::{Rng, Workers};
use support::{fault_workers, Settings};

/// How long a test waits for its runs before it declares them stuck.
const PATIENCE: Duration = Duration::from_secs(60);
/// The bound on a whole test.
const TEST_LIMIT: Duration = Duration::from_secs(150);

/// Worker processes `<name><n>` on the cluster at `url` (`redis+cluster://…`), 4 steps at
/// once each, 30 ms per step.
fn cluster_workers(name: &'static str, url: &str, prefix: &str) -> Workers {
    let settings = Settings {
        concurrency: 4,
        step_ms: 30,
    };
    fault_workers(name, url, prefix, settings)
}

/// A fresh cluster with three worker processes `<name><n>` and a test side, under `prefix`.
async fn loaded(name: &'static str, prefix: &str) -> (RedisCluster, Workers, Side) {
    let cluster = blocking(RedisCluster::start_or_panic).await;
    let url = cluster.url();
    let mut workers = cluster_workers(name, &url, prefix);
    for _ in 0..3 {
        workers.spawn();
    }
    let side = Side::connect(&url, prefix).await;
    (cluster, workers, side)
}

/// The orchestrator side of a test.
struct Side {
    client: RedisClient,
    backend: RedisBackend,
    orchestrator: DistributedOrchestrator<Fault, Log>,
}

impl Side {
    async fn connect(url: &str, prefix: &str) -> Self {
        let client = RedisClient::new(RedisConfig::new(url).with_key_prefix(prefix))
            .await
            .expect("connect to the test cluster");
        let env = Env::new(&client, url, prefix, Duration::ZERO).expect("environment");
        let backend = RedisBackend::new(client.clone());
        let orchestrator = Fault::new(&env)
            .orchestrator(backend.clone())
            .build()
            .expect("orchestrator");
        Side {
            client,
            backend,
            orchestrator,
        }
    }

    /// Starts a run with input `n`: no error may reach the caller.
    async fn start(&self, n: u64) -> String {
        let ctx = WorkflowCtx::new(Log::default());
        match self.orchestrator.start_run(&ctx, n).await {
            Ok(run) => run,
            Err(e) => panic!("G8: starting a run failed while the cluster changed: {e}"),
        }
    }

    /// Starts `count` runs (inputs `first`, `first + 10`, …), one every `every`.
    fn start_over_time(
        url: &str,
        prefix: &str,
        first: u64,
        count: u64,
        every: Duration,
    ) -> tokio::task::JoinHandle<Vec<(String, u64)>> {
        let (url, prefix) = (url.to_owned(), prefix.to_owned());
        tokio::spawn(async move {
            let side = Side::connect(&url, &prefix).await;
            let mut runs = Vec::new();
            for i in 0..count {
                let n = first + i * 10;
                runs.push((side.start(n).await, n));
                tokio::time::sleep(every).await;
            }
            runs
        })
    }

    /// Waits (at most `PATIENCE`) until a run has completed: the worker processes are up and
    /// stepping (on a loaded machine they take a while to start).
    async fn wait_for_progress(&self) {
        let since = Instant::now();
        while since.elapsed() < PATIENCE {
            if let Ok(done) = self.backend.list_runs(Some(RunStatus::Completed)).await {
                if !done.is_empty() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the runs and checks each completed with each step applied once; returns
    /// the leases reclaimed.
    async fn check_completed_once(&self, runs: &[(String, u64)]) -> u64 {
        let infos = runs::wait_all(&self.backend, runs, PATIENCE).await;
        let events = |log: &Log| log.events.events().collect();
        runs::check_each_completed_once(&self.orchestrator, &self.backend, runs, &infos, events)
            .await
    }

    /// Node executions beyond one per step, from the workers' own counters.
    async fn duplicate_executions(&self, runs: &[(String, u64)]) -> u64 {
        let mut conn = self.client.connection();
        let mut duplicates = 0;
        for (run, _) in runs {
            for node in ["a", "b", "c"] {
                let key = format!("{}started:{run}:{node}", self.client.key_prefix());
                let count: Option<u64> = ::redis::cmd("GET")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .expect("read an execution counter");
                duplicates += count.unwrap_or(0).saturating_sub(1);
            }
        }
        duplicates
    }
}

async fn bounded<F: std::future::Future<Output = String>>(name: &str, body: F) {
    processes::bounded(name, TEST_LIMIT, body).await;
}

/// Runs a blocking cluster operation (it shells out to `redis-cli`) off the test's runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("cluster operation")
}

/// G8/G2: slots move between masters (`redis-cli --cluster reshard`, keys included) while
/// runs flow: no error reaches a caller, every run completes, no step is applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_migration_under_load_loses_nothing() {
    bounded("cluster-reshard", async {
        let (cluster, workers, side) = loaded("reshard-", "reshard:").await;
        let (url, prefix) = (cluster.url(), "reshard:");
        let cluster = std::sync::Arc::new(cluster);
        let slots = side.client.partition_slots();
        let before: Vec<u16> = {
            let cluster = cluster.clone();
            let slots = slots.clone();
            blocking(move || {
                slots
                    .iter()
                    .map(|&s| cluster.master_of(s).unwrap_or(0))
                    .collect()
            })
            .await
        };
        let starter = Side::start_over_time(&url, prefix, 0, 150, Duration::from_millis(20));
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Move 2,000 slots (a third of a master's share, with the partitions in them) away
        // from the master of partition 0, while runs start and steps commit.
        let moved = Instant::now();
        {
            let cluster = cluster.clone();
            let first = slots[0];
            blocking(move || cluster.reshard_from(first, 2000))
                .await
                .expect("reshard");
        }
        let reshard_took = moved.elapsed();
        let runs = starter.await.expect("start the runs");
        let after: Vec<u16> = {
            let cluster = cluster.clone();
            let slots = slots.clone();
            blocking(move || {
                slots
                    .iter()
                    .map(|&s| cluster.master_of(s).unwrap_or(0))
                    .collect()
            })
            .await
        };
        let partitions_moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        assert!(
            partitions_moved > 0,
            "no partition changed master: the test proved nothing"
        );
        let reclaimed = side.check_completed_once(&runs).await;
        let duplicates = side.duplicate_executions(&runs).await;
        drop(workers);
        format!(
            "{} runs completed; {partitions_moved} of {} partitions moved to another master \
             in {reshard_took:.1?}; {reclaimed} leases reclaimed; {duplicates} duplicate \
             executions, each applied once",
            runs.len(),
            slots.len()
        )
    })
    .await;
}

/// G8/G1: a master is killed with SIGKILL while runs start and steps commit; its replica
/// takes over and workers follow. Every run whose start was acknowledged completes with each
/// step applied once, except runs lost with writes the replica had not yet received (Redis
/// replicates asynchronously): the test counts them. Runs started after the failover all
/// complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_failover_under_load() {
    bounded("cluster-failover", async {
        let (cluster, mut workers, side) = loaded("failover-", "failover:").await;
        let (url, prefix) = (cluster.url(), "failover:");
        let slot = side.client.partition_slots()[0];
        // Runs start over two seconds; the master of partition 0 dies half a second in.
        let starter = {
            let (url, prefix) = (url.clone(), prefix.to_owned());
            tokio::spawn(async move {
                let side = Side::connect(&url, &prefix).await;
                let mut runs = Vec::new();
                for i in 0..100 {
                    let ctx = WorkflowCtx::new(Log::default());
                    let run =
                        runs::start_retrying(&side.orchestrator, &ctx, i * 10, PATIENCE).await;
                    runs.push((run, i * 10, Instant::now()));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                runs
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let down = Instant::now();
        let (cluster, killed) = blocking(move || {
            let mut cluster = cluster;
            let killed = cluster.kill_master_of(slot);
            (cluster, killed)
        })
        .await;
        let killed = killed.expect("failover");
        let failover_took = down.elapsed();
        let started = starter.await.expect("start the runs");
        let during = started.iter().filter(|(_, _, at)| *at > down).count();
        assert!(
            during > 0 && during < started.len(),
            "the kill did not fall in the middle of the load: the test proved nothing"
        );
        // Each acknowledged run completed once, or was lost with the master's unreplicated
        // writes.
        let mut kept = Vec::new();
        let mut lost = 0;
        for (run, n, _) in started {
            match side.backend.run_info(&run).await {
                Err(DistributedError::UnknownRun(_)) => lost += 1,
                _ => kept.push((run, n)),
            }
        }
        let reclaimed = side.check_completed_once(&kept).await;
        let duplicates = side.duplicate_executions(&kept).await;
        // After the failover, every run completes.
        let mut after = Vec::new();
        for i in 0..30 {
            after.push((side.start(5000 + i * 10).await, 5000 + i * 10));
        }
        side.check_completed_once(&after).await;
        let alive = workers
            .pids()
            .into_iter()
            .filter(|&pid| workers.alive(pid))
            .count();
        assert_eq!(alive, 3, "the worker processes survive the failover");
        drop(workers);
        drop(cluster);
        format!(
            "master on port {killed} killed mid-load; failover took {failover_took:.1?}; of 100 \
             acknowledged runs ({during} started after the kill) {} completed once \
             ({reclaimed} leases reclaimed, {duplicates} duplicate executions) and {lost} were \
             lost with unreplicated writes; 30 runs started after the failover completed",
            kept.len()
        )
    })
    .await;
}

/// G1/G2 on a cluster: worker processes killed with SIGKILL mid-step while runs flow: every
/// run completes, each step's effect is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_workers_on_a_cluster_lose_nothing() {
    bounded("cluster-kill9", async {
        let (cluster, mut workers, side) = loaded("ckill9-", "kill9:").await;
        let (url, prefix) = (cluster.url(), "kill9:");
        let starter = Side::start_over_time(&url, prefix, 0, 100, Duration::from_millis(10));
        let mut rng = Rng::seeded();
        let seed = rng.0;
        // The kills must find steps in flight: they begin once the workers are stepping.
        side.wait_for_progress().await;
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let victim = rng.below(workers.len());
            workers.kill(victim);
            workers.spawn();
        }
        let runs = starter.await.expect("start the runs");
        let reclaimed = side.check_completed_once(&runs).await;
        let duplicates = side.duplicate_executions(&runs).await;
        assert!(
            reclaimed >= 1,
            "the kills hit no step in flight: the test proved nothing (reclaimed = 0)"
        );
        drop(workers);
        drop(cluster);
        format!(
            "{} runs completed; 4 workers killed (seed {seed:#x}); {reclaimed} leases \
             reclaimed; {duplicates} duplicate executions, each applied once",
            runs.len()
        )
    })
    .await;
}

/// G4/G8: after a failover, idle workers are still woken by new work, and waiters by run
/// events, on the promoted master (the sharded subscriptions follow it): with a 30 s lease
/// and nothing else to wake them, runs started from another client in the failed-over
/// partitions complete within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_ups_follow_a_failover() {
    wake_ups_follow("failover", |mut cluster, slot| {
        cluster.kill_master_of(slot).expect("failover");
        cluster
    })
    .await;
}

/// G4/G8: the same after the partition's slot moved to another master (the server ends the
/// sharded subscriptions of a slot that moves away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_ups_follow_a_slot_migration() {
    wake_ups_follow("reshard", |cluster, slot| {
        let before = cluster.master_of(slot).expect("a master");
        cluster.reshard_from(slot, 2000).expect("reshard");
        let after = cluster.master_of(slot).expect("a master");
        assert_ne!(
            before, after,
            "partition 0 did not move: the test proves nothing"
        );
        cluster
    })
    .await;
}

/// Idle workers with a 30 s lease, `fault` applied to the master of partition 0, then runs
/// started from another client: they must all complete within 10 s each.
async fn wake_ups_follow(
    name: &'static str,
    fault: impl FnOnce(RedisCluster, u16) -> RedisCluster + Send + 'static,
) {
    bounded(&format!("cluster-wakeups-{name}"), async {
        let cluster = blocking(RedisCluster::start_or_panic).await;
        let client = RedisClient::new(RedisConfig::new(cluster.url()).with_key_prefix("wake:"))
            .await
            .expect("connect to the test cluster");
        let env = Env::new(&client, &cluster.url(), "wake:", Duration::ZERO).expect("environment");
        let backend = RedisBackend::new(client.clone());
        // The orchestrator has a client of its own, as in another process: its starts reach
        // the workers only through the cluster.
        let starter = RedisClient::new(RedisConfig::new(cluster.url()).with_key_prefix("wake:"))
            .await
            .expect("connect to the test cluster");
        let orchestrator = Fault::new(&env)
            .orchestrator(RedisBackend::new(starter))
            .build()
            .expect("orchestrator");
        let worker = Fault::new(&env)
            .worker(backend.clone())
            .lease_timeout(Duration::from_secs(30))
            .build()
            .expect("worker");
        let mut pool = WorkerPool::new(worker, 2);
        pool.start();
        let ctx = WorkflowCtx::new(Log::default());
        let warm = orchestrator.start_run(&ctx, 0).await.expect("start");
        orchestrator
            .wait_for_output(&warm, Duration::from_secs(10))
            .await
            .expect("a run before the failover");
        // Let the idle workers find every partition empty: from now on only a wake-up
        // message (or the 30 s lease timeout) makes them look again.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let slot = client.partition_slots()[0];
        let cluster = blocking(move || fault(cluster, slot)).await;
        // Runs in every partition, partition 0 included.
        let took = Instant::now();
        let mut runs = Vec::new();
        for i in 1..=40 {
            let ctx = WorkflowCtx::new(Log::default());
            runs.push(runs::start_retrying(&orchestrator, &ctx, i * 10, PATIENCE).await);
        }
        for run in &runs {
            if let Err(e) = orchestrator
                .wait_for_output(run, Duration::from_secs(10))
                .await
            {
                let info = backend.run_info(run).await;
                let items = backend.work_items(run).await;
                panic!("run {run} after the {name}: {e}\n{info:?}\n{items:?}");
            }
        }
        let elapsed = took.elapsed();
        pool.try_stop().await.expect("stop the workers");
        drop(cluster);
        format!("40 runs started after the {name} completed in {elapsed:.1?} (lease 30 s)")
    })
    .await;
}
