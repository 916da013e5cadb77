//! Fault tests with real processes: worker processes (`examples/fault_worker.rs`) killed with
//! SIGKILL or frozen with SIGSTOP while runs flow, Redis itself killed and restarted, corrupt
//! bytes in stored items and contexts, and a thousand concurrent runs (G1, G2, G6, G8).
//!
//! Each test starts its own `redis-server` and its own worker processes, which a guard kills on
//! every path (also when the test fails). The tests run one at a time (they measure leases in
//! real time on a machine that may be busy) and each ends on its own within a bounded time.

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

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use fault_worker::{Env, Fault, Log};
use floxide::*;
use floxide_redis::testing::{RedisServer, ServerOptions};
use floxide_redis::{RedisBackend, RedisClient, RedisConfig};
use processes::{signal, Rng};
use support::{fault_workers, Settings, LEASE_MS};

/// How long a test waits for its runs before it declares them stuck.
const PATIENCE: Duration = Duration::from_secs(45);
/// The bound on a whole test.
const TEST_LIMIT: Duration = Duration::from_secs(100);

// ---------------------------------------------------------------------------------------------
// The test's side: an orchestrator, raw Redis access, waiting and checking
// ---------------------------------------------------------------------------------------------

type Orchestrator = DistributedOrchestrator<Fault, Log>;

/// The orchestrator side of a test, under the key prefix of its workers.
struct Side {
    backend: RedisBackend,
    orchestrator: Orchestrator,
    raw: floxide_redis::RedisConnection,
    prefix: String,
}

impl Side {
    async fn connect(url: &str, prefix: &str) -> Self {
        let client = RedisClient::new(RedisConfig::new(url).with_key_prefix(prefix))
            .await
            .expect("connect to the test redis-server");
        let env = Env::new(&client, url, prefix, Duration::ZERO).expect("environment");
        let backend = RedisBackend::new(client.clone());
        let orchestrator = Fault::new(&env)
            .orchestrator(backend.clone())
            .build()
            .expect("orchestrator");
        Side {
            backend,
            orchestrator,
            raw: client.connection(),
            prefix: prefix.to_owned(),
        }
    }

    /// A key of partition 0 (the only one): `<prefix>{p0}:<rest>`.
    fn key(&self, rest: &str) -> String {
        format!("{}{{p0}}:{rest}", self.prefix)
    }

    /// Starts a run with input `n`, retrying while the backend is away.
    async fn start(&self, n: u64) -> String {
        let ctx = WorkflowCtx::new(Log::default());
        runs::start_retrying(&self.orchestrator, &ctx, n, PATIENCE).await
    }

    /// Waits for every run to reach a final state (tolerating the backend being away).
    async fn wait_all(&self, runs: &[(String, u64)]) -> Vec<RunInfo> {
        runs::wait_all(&self.backend, runs, PATIENCE).await
    }

    /// Checks that every run completed with each step's effect applied exactly once, and that
    /// nothing is left in processing. Returns the leases reclaimed from dead workers.
    async fn check_completed_once(&self, runs: &[(String, u64)], infos: &[RunInfo]) -> u64 {
        let events = |log: &Log| log.events.events().collect();
        let reclaimed =
            runs::check_each_completed_once(&self.orchestrator, &self.backend, runs, infos, events)
                .await;
        self.assert_nothing_in_processing().await;
        reclaimed
    }

    /// No lease, no queued or delayed entry is left.
    async fn assert_nothing_in_processing(&self) {
        let mut conn = self.raw.clone();
        let (timers, ready): (u64, u64) = ::redis::pipe()
            .zcard(self.key("tm"))
            .llen(self.key("q:Fault"))
            .query_async(&mut conn)
            .await
            .expect("read the indexes");
        assert_eq!(timers, 0, "G1: no lease may be left, and no retry pending");
        assert_eq!(ready, 0, "no stale entry may be left in the queue");
    }

    /// Executions per node as counted by the workers (`started:<run>:<node>`): (executions,
    /// duplicate executions).
    async fn executions(&self, runs: &[(String, u64)]) -> (u64, u64) {
        let keys: Vec<String> = runs
            .iter()
            .flat_map(|(run, _)| {
                ["a", "b", "c"].map(|node| format!("{}started:{run}:{node}", self.prefix))
            })
            .collect();
        let mut conn = self.raw.clone();
        let counts: Vec<Option<u64>> = ::redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .expect("read the execution counters");
        let total: u64 = counts.iter().map(|c| c.unwrap_or(0)).sum();
        let duplicates = counts
            .iter()
            .map(|c| c.unwrap_or(0).saturating_sub(1))
            .sum();
        (total, duplicates)
    }

    async fn get(&self, key: &str) -> Option<String> {
        let mut conn = self.raw.clone();
        ::redis::cmd("GET")
            .arg(key)
            .query_async(&mut conn)
            .await
            .expect("GET")
    }
}

/// Runs `body` one test at a time, within [`TEST_LIMIT`].
async fn bounded<F: std::future::Future<Output = String>>(name: &str, body: F) {
    processes::bounded(name, TEST_LIMIT, body).await;
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

/// G1/G2: worker processes killed with SIGKILL mid-step, again and again while runs flow: every
/// run completes, each step's effect is applied once, nothing is left in processing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_processes_lose_nothing() {
    bounded("kill9", async {
        const RUNS: u64 = 100;
        const KILLS: usize = 4;
        let server = RedisServer::start_or_panic(ServerOptions::default());
        let prefix = "kill9:";
        let settings = Settings {
            concurrency: 4,
            step_ms: 40,
        };
        let mut workers = fault_workers("kill9-", &server.url(), prefix, settings);
        for _ in 0..3 {
            workers.spawn();
        }
        let side = Side::connect(&server.url(), prefix).await;

        // Runs arrive over about a second while workers die.
        let starter = {
            let side = Side::connect(&server.url(), prefix).await;
            tokio::spawn(async move {
                let mut runs = Vec::new();
                for i in 0..RUNS {
                    let n = i * 10;
                    runs.push((side.start(n).await, n));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                runs
            })
        };
        let mut rng = Rng::seeded();
        let seed = rng.0;
        let mut killed = Vec::new();
        for _ in 0..KILLS {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let victim = rng.below(workers.len());
            killed.push(workers.kill(victim));
            workers.spawn();
        }
        let runs = starter.await.expect("start the runs");
        let infos = side.wait_all(&runs).await;
        let reclaimed = side.check_completed_once(&runs, &infos).await;
        let (executions, duplicates) = side.executions(&runs).await;
        let summary = format!(
            "{} runs completed; {} worker processes killed with SIGKILL (pids {killed:?}, \
             seed {seed:#x}); {reclaimed} leases reclaimed; {executions} node executions for {} steps \
             ({duplicates} duplicate executions, each applied once); 0 leases left",
            runs.len(),
            KILLS,
            runs.len() * 3,
        );
        assert!(
            reclaimed >= 1,
            "the kills hit no step in flight: the test proved nothing (reclaimed = 0)"
        );
        drop(workers);
        summary
    })
    .await;
}

/// G1/G6: Redis killed with SIGKILL and restarted (`appendonly yes`) mid-run: the workers and
/// the orchestrator reconnect, and every run completes with its effects applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_mid_run_loses_nothing() {
    bounded("redis-restart", async {
        let mut server = RedisServer::start_or_panic(ServerOptions {
            appendonly: true,
            ..ServerOptions::default()
        });
        let prefix = "restart:";
        let settings = Settings {
            concurrency: 4,
            step_ms: 40,
        };
        let mut workers = fault_workers("restart-", &server.url(), prefix, settings);
        for _ in 0..3 {
            workers.spawn();
        }
        let side = Side::connect(&server.url(), prefix).await;
        let mut runs = Vec::new();
        for i in 0..60 {
            runs.push((side.start(i).await, i));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let done_before = {
            let mut conn = side.raw.clone();
            let done: u64 = ::redis::cmd("LLEN")
                .arg(side.key("fin"))
                .query_async(&mut conn)
                .await
                .unwrap_or(0);
            done
        };
        let down = Instant::now();
        server.restart().expect("restart redis-server");
        let restart_took = down.elapsed();
        for i in 60..80 {
            runs.push((side.start(i).await, i));
        }
        let infos = side.wait_all(&runs).await;
        let reclaimed = side.check_completed_once(&runs, &infos).await;
        let (executions, duplicates) = side.executions(&runs).await;
        let alive = workers
            .pids()
            .into_iter()
            .filter(|&pid| workers.alive(pid))
            .count();
        assert_eq!(alive, 3, "the worker processes survive the restart");
        let summary = format!(
            "{} runs completed ({done_before} before Redis was killed, \
             restart took {restart_took:.0?}); {reclaimed} leases reclaimed; {executions} node \
             executions for {} steps ({duplicates} duplicate executions, each applied once); \
             {alive}/3 workers alive; 0 leases left",
            runs.len(),
            runs.len() * 3,
        );
        assert!(
            (done_before as usize) < 60,
            "every run finished before the restart: the test proved nothing"
        );
        summary
    })
    .await;
}

/// G2: a worker cut off for longer than its lease (SIGSTOP inside a step) is a zombie: another
/// worker takes the item over and commits, and the zombie's late commit is rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zombie_commit_after_lease_loss_is_rejected() {
    bounded("zombie", async {
        const STALL_MS: u64 = 1500;
        let server = RedisServer::start_or_panic(ServerOptions::default());
        let prefix = "zombie:";
        let settings = Settings {
            concurrency: 2,
            step_ms: 20,
        };
        let mut workers = fault_workers("zombie-", &server.url(), prefix, settings);
        workers.spawn();
        workers.spawn();
        let side = Side::connect(&server.url(), prefix).await;
        let mut conn = side.raw.clone();
        // The first execution of `b` stalls (the flag is taken by exactly one execution).
        ::redis::cmd("SET")
            .arg(format!("{prefix}stall:b"))
            .arg(STALL_MS)
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
        let run = side.start(1).await;
        let runs = vec![(run.clone(), 1)];

        let deadline = Instant::now() + PATIENCE;
        let zombie: u32 = loop {
            if let Some(pid) = side.get(&format!("{prefix}stalled")).await {
                break pid.parse().expect("pid");
            }
            assert!(Instant::now() < deadline, "`b` never stalled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert!(signal(zombie, "-STOP"), "SIGSTOP {zombie}");
        let stopped = Instant::now();

        // The lease runs out; the other worker re-executes `b`, commits it and finishes the run.
        let infos = side.wait_all(&runs).await;
        assert_eq!(infos[0].status, RunStatus::Completed, "{:?}", infos[0]);
        // Resume it only once its node's sleep is over, so that it goes straight to the commit.
        tokio::time::sleep_until((stopped + Duration::from_millis(STALL_MS + 100)).into()).await;
        let cut_for = stopped.elapsed();

        // The zombie wakes up with its node's sleep over: it ends the node and tries to commit.
        let resumed = SystemTime::now();
        assert!(signal(zombie, "-CONT"), "SIGCONT {zombie}");
        let finished_key = format!("{prefix}finished:{run}:b");
        let deadline = Instant::now() + PATIENCE;
        while side.get(&finished_key).await.is_none() {
            assert!(
                Instant::now() < deadline,
                "the zombie never finished its step"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await; // its commit attempt lands

        let reclaimed = side.check_completed_once(&runs, &infos).await;
        assert_eq!(reclaimed, 1, "the zombie's lease was reclaimed once");
        let started_b = side.get(&format!("{prefix}started:{run}:b")).await;
        assert_eq!(
            started_b.as_deref(),
            Some("2"),
            "`b` ran twice: in the zombie and in its successor"
        );
        let info = side.backend.run_info(&run).await.unwrap();
        assert_eq!(info.status, RunStatus::Completed);
        assert!(workers.alive(zombie), "the zombie process keeps running");
        // Its worker loop goes on: it reports its health again.
        let deadline = Instant::now() + PATIENCE;
        while !side
            .orchestrator
            .liveness()
            .await
            .unwrap()
            .iter()
            .any(|h| h.pid == zombie && h.last_heartbeat > resumed)
        {
            assert!(
                Instant::now() < deadline,
                "the zombie's workers never reported again"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // And the deployment still completes runs.
        let more: Vec<(String, u64)> = {
            let mut more = Vec::new();
            for n in [100, 200, 300, 400] {
                more.push((side.start(n).await, n));
            }
            more
        };
        let infos = side.wait_all(&more).await;
        side.check_completed_once(&more, &infos).await;
        let summary = format!(
            "1 run; worker {zombie} frozen (SIGSTOP) inside `b` for {cut_for:.1?} \
             (lease {LEASE_MS} ms); `b` executed 2 times, committed once (context holds `b:2` once, \
             3 commits); the zombie's late commit was rejected; it stays alive and reports again; {} more \
             runs completed",
            more.len()
        );
        summary
    })
    .await;
}

/// G7: a worker process stopped with SIGTERM (the provided runner's graceful shutdown) lets a
/// step that ends within its grace period commit, gives back one that does not (its item is
/// Pending as soon as the process has exited, not after its lease), and exits by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_or_releases_the_steps_in_flight() {
    bounded("sigterm", async {
        let server = RedisServer::start_or_panic(ServerOptions::default());
        let prefix = "term:";
        let settings = Settings {
            concurrency: 2,
            step_ms: 20,
        };
        let mut workers = fault_workers("term-", &server.url(), prefix, settings);
        let side = Side::connect(&server.url(), prefix).await;
        let mut summary = Vec::new();
        // (stall of `a` in ms, the worker's grace in s): the first ends within the grace.
        for (stall_ms, grace_s) in [(600u64, 5u64), (60_000, 1)] {
            let mut conn = side.raw.clone();
            ::redis::cmd("SET")
                .arg(format!("{prefix}stall:a"))
                .arg(stall_ms)
                .query_async::<()>(&mut conn)
                .await
                .unwrap();
            ::redis::cmd("DEL")
                .arg(format!("{prefix}stalled"))
                .query_async::<()>(&mut conn)
                .await
                .unwrap();
            let pid = workers.spawn_with(&["--grace", &grace_s.to_string()]);
            let run = side.start(stall_ms).await;
            let deadline = Instant::now() + PATIENCE;
            while side.get(&format!("{prefix}stalled")).await.is_none() {
                assert!(Instant::now() < deadline, "`a` never stalled");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert!(signal(pid, "-TERM"), "SIGTERM {pid}");
            let termed = Instant::now();
            while workers.alive(pid) {
                assert!(
                    termed.elapsed() < Duration::from_secs(grace_s + 10),
                    "G7: the worker did not exit within its grace period ({grace_s} s)"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let exited = termed.elapsed();
            let items = side.orchestrator.list_work_items(&run).await.unwrap();
            let a = items.iter().find(|i| i.node == "a").expect("a's item");
            let finished = stall_ms < grace_s * 1000;
            let expected = if finished {
                WorkItemStatus::Completed
            } else {
                WorkItemStatus::Pending
            };
            assert_eq!(a.status, expected, "G7: after SIGTERM: {items:?}");
            assert!(
                items.iter().all(|i| i.status != WorkItemStatus::InProgress),
                "G7: the stopped worker holds no lease: {items:?}"
            );
            workers.spawn();
            let runs = vec![(run.clone(), stall_ms)];
            let infos = side.wait_all(&runs).await;
            let reclaimed = side.check_completed_once(&runs, &infos).await;
            assert_eq!(reclaimed, 0, "G7: released, not reclaimed after a lease");
            let started = side.get(&format!("{prefix}started:{run}:a")).await;
            let runs_of_a = if finished { "1" } else { "2" };
            assert_eq!(started.as_deref(), Some(runs_of_a), "executions of `a`");
            summary.push(format!(
                "stall {stall_ms} ms, grace {grace_s} s: exited {exited:.1?} after SIGTERM, \
                 `a` {}",
                if finished {
                    "committed"
                } else {
                    "released and run again"
                }
            ));
            // The next round's worker is the one just spawned; stop it too.
            for pid in workers.pids() {
                if workers.alive(pid) && signal(pid, "-TERM") {
                    while workers.alive(pid) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }
        summary.join("; ")
    })
    .await;
}

/// G6: garbage written into a queued item's payload, into runs' contexts and into the queue
/// itself: the items go to the dead letters with a decoding error, those runs fail, the worker
/// processes stay alive and healthy runs complete afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_items_and_contexts_are_dead_lettered() {
    bounded("corrupt", async {
        let server = RedisServer::start_or_panic(ServerOptions::default());
        let prefix = "corrupt:";
        let side = Side::connect(&server.url(), prefix).await;
        let mut conn = side.raw.clone();

        // Three runs, queued before any worker runs; then their stored bytes are damaged.
        let bad_item = side.start(1).await;
        let bad_ctx = side.start(2).await;
        let wrong_ctx = side.start(3).await;
        let items = side.backend.work_items(&bad_item).await.unwrap();
        assert_eq!(items.len(), 1);
        let item_id = items[0].item_id.to_string();
        assert_eq!(item_id.len(), 32);
        ::redis::cmd("HSET")
            .arg(side.key(&format!("i:{bad_item}")))
            .arg(&item_id)
            .arg(&b"\xff\x00garbage{\"a\":"[..])
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
        ::redis::cmd("HSET")
            .arg(side.key(&format!("r:{bad_ctx}")))
            .arg("ctx")
            .arg(&b"\xff\xfenot json at all"[..])
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
        ::redis::cmd("HSET")
            .arg(side.key(&format!("r:{wrong_ctx}")))
            .arg("ctx")
            .arg(r#"{"events": 42}"#)
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
        // And entries in the queue itself that name no item at all.
        ::redis::cmd("RPUSH")
            .arg(side.key("q:Fault"))
            .arg(&b"\xff\xfe garbage"[..])
            .arg("x")
            .arg(format!("{}:no-such-run", "0".repeat(32)))
            .query_async::<()>(&mut conn)
            .await
            .unwrap();

        let mut workers = fault_workers(
            "corrupt-",
            &server.url(),
            prefix,
            Settings {
                concurrency: 2,
                step_ms: 20,
            },
        );
        workers.spawn();
        workers.spawn();
        let corrupt = [
            (bad_item.clone(), 1),
            (bad_ctx.clone(), 2),
            (wrong_ctx.clone(), 3),
        ];
        let infos = side.wait_all(&corrupt).await;
        for info in &infos {
            assert_eq!(info.status, RunStatus::Failed, "G6: {info:?}");
        }
        let letters = side.orchestrator.dead_letters().await.unwrap();
        let letter = |run: &str| {
            letters
                .iter()
                .find(|d| d.run_id == run)
                .unwrap_or_else(|| panic!("G6: no dead letter for run {run}: {letters:#?}"))
                .clone()
        };
        let item_letter = letter(&bad_item);
        assert!(
            item_letter.error.contains("undecodable work item"),
            "{}",
            item_letter.error
        );
        assert!(
            item_letter.payload.contains("not UTF-8"),
            "{}",
            item_letter.payload
        );
        for run in [&bad_ctx, &wrong_ctx] {
            let l = letter(run);
            assert!(l.error.contains("undecodable context"), "{}", l.error);
            let info = side.backend.run_info(run).await.unwrap();
            assert!(
                info.error
                    .as_deref()
                    .is_some_and(|e| e.contains("undecodable context")),
                "{info:?}"
            );
        }
        for (run, _) in &corrupt {
            let items = side.backend.work_items(run).await.unwrap();
            assert!(
                items
                    .iter()
                    .all(|i| i.status == WorkItemStatus::PermanentlyFailed),
                "{items:#?}"
            );
        }

        // The workers survived and still work.
        let pids = workers.pids();
        for &pid in &pids {
            assert!(workers.alive(pid), "G6: worker {pid} died on bad input");
        }
        let healthy = vec![(side.start(10).await, 10), (side.start(20).await, 20)];
        let infos = side.wait_all(&healthy).await;
        side.check_completed_once(&healthy, &infos).await;
        for &pid in &pids {
            assert!(workers.alive(pid), "G6: worker {pid} died");
        }
        let summary = format!(
            "3 runs with corrupt bytes (1 item payload, 2 contexts; plus 3 garbage queue \
             entries) failed with {} dead letters (`{}` / `{}`); {}/{} worker processes alive; {} healthy runs \
             completed afterwards",
            letters.len(),
            item_letter.error.chars().take(60).collect::<String>(),
            letter(&bad_ctx).error.chars().take(60).collect::<String>(),
            pids.len(),
            pids.len(),
            healthy.len()
        );
        summary
    })
    .await;
}

/// G8: a thousand concurrent runs over eight worker processes (four steps at a time each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_runs_complete() {
    bounded("thousand", async {
        const RUNS: u64 = 1000;
        let server = RedisServer::start_or_panic(ServerOptions::default());
        let prefix = "many:";
        let mut workers = fault_workers(
            "many-",
            &server.url(),
            prefix,
            Settings {
                concurrency: 4,
                step_ms: 10,
            },
        );
        for _ in 0..8 {
            workers.spawn();
        }
        let side = Side::connect(&server.url(), prefix).await;
        let started = Instant::now();
        let mut runs = Vec::with_capacity(RUNS as usize);
        for chunk in (0..RUNS).collect::<Vec<_>>().chunks(100) {
            let ids = futures_util::future::join_all(chunk.iter().map(|&n| side.start(n))).await;
            runs.extend(ids.into_iter().zip(chunk.iter().copied()));
        }
        let start_took = started.elapsed();
        // Wait on the finished-runs index, then check every run.
        let mut conn = side.raw.clone();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let done: u64 = ::redis::cmd("LLEN")
                .arg(side.key("fin"))
                .query_async(&mut conn)
                .await
                .unwrap();
            if done >= RUNS {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "only {done} of {RUNS} runs finished within {PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let all_done = started.elapsed();
        let infos = side.wait_all(&runs).await;
        let reclaimed = side.check_completed_once(&runs, &infos).await;
        let (executions, duplicates) = side.executions(&runs).await;
        let mut per_worker: BTreeMap<String, u64> = BTreeMap::new();
        for h in side.orchestrator.liveness().await.unwrap() {
            *per_worker.entry(h.pid.to_string()).or_default() += 1;
        }
        let summary = format!(
            "{} runs ({} steps) completed on {} worker processes x 4 in {all_done:.1?} \
             (starting them took {start_took:.1?}); {executions} node executions ({duplicates} \
             duplicates), {reclaimed} leases reclaimed; 0 leases left",
            runs.len(),
            runs.len() * 3,
            workers.len(),
        );
        assert_eq!(
            per_worker.len(),
            8,
            "every worker process reported: {per_worker:?}"
        );
        summary
    })
    .await;
}
