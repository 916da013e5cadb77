//! Fault tests with real processes on PostgreSQL: worker processes (`examples/pg_fault_worker.rs`)
//! killed with SIGKILL while runs flow, the server stopped (`pg_ctl stop -m immediate`) and
//! started again under them, their connections cut mid-transaction, corrupt bytes in stored
//! items and contexts, and a thousand concurrent runs on eight processes (G1, G2, G6, G8).
//!
//! Each test starts its own PostgreSQL server and its own worker processes, which a guard
//! kills on every path. The tests run one at a time and each ends within a bounded time.

#[allow(dead_code)]
#[path = "../examples/pg_fault_worker.rs"]
mod fault_worker;
#[allow(dead_code)]
#[path = "../../testkit/processes.rs"]
mod processes;
#[path = "../../testkit/runs.rs"]
mod runs;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fault_worker::{Env, Fault, Log, COUNTERS};
use floxide::*;
use floxide_postgres::testing::PostgresServer;
use floxide_postgres::{PostgresBackend, PostgresConfig};
use processes::{built_once, FaultWorker, Rng, Workers};

/// The workers' lease: short, so that crashed workers' items come back quickly.
const LEASE_MS: u64 = 1000;
/// How long a test waits for its runs before it declares them stuck.
const PATIENCE: Duration = Duration::from_secs(60);
/// The bound on a whole test.
const TEST_LIMIT: Duration = Duration::from_secs(120);
/// The schema the workers and the test share.
const SCHEMA: &str = "fault";

/// `target/<profile>/examples/pg_fault_worker`, built once per test binary when it is missing
/// or older than its source.
fn worker_binary() -> &'static Path {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    built_once(
        &BIN,
        "floxide-postgres",
        env!("CARGO_MANIFEST_DIR"),
        "pg_fault_worker",
    )
}

/// Worker processes `<name><n>` on the server at `url`, `concurrency` steps each.
fn fault_workers(name: &'static str, url: &str, concurrency: usize, step_ms: u64) -> Workers {
    let worker = FaultWorker {
        url: url.to_owned(),
        concurrency,
        lease_ms: LEASE_MS,
        step_ms,
    };
    Workers::new(name, move |n| {
        let mut cmd = worker.command(worker_binary(), name, n);
        cmd.env("FAULT_SCHEMA", SCHEMA);
        cmd
    })
}

async fn bounded<F: std::future::Future<Output = String>>(name: &str, body: F) {
    processes::bounded(name, TEST_LIMIT, body).await;
}

type Orchestrator = DistributedOrchestrator<Fault, Log>;

/// The orchestrator side of a test, and a direct connection for reading and corrupting rows.
struct Side {
    backend: PostgresBackend,
    orchestrator: Orchestrator,
    url: String,
}

impl Side {
    /// Connects (creating the schema and the counters' table) before any worker starts.
    async fn connect(url: &str) -> Self {
        let backend = PostgresBackend::connect_with(PostgresConfig::new(url).with_schema(SCHEMA))
            .await
            .expect("connect to the test server");
        let side = Side {
            orchestrator: Fault::new(&Env::new(url, SCHEMA, Duration::ZERO).expect("env"))
                .orchestrator(backend.clone())
                .build()
                .expect("orchestrator"),
            backend,
            url: url.to_owned(),
        };
        side.sql(COUNTERS).await;
        side
    }

    /// Runs `sql` in the schema on a connection of its own.
    async fn sql(&self, sql: &str) -> Vec<tokio_postgres::Row> {
        let mut config: tokio_postgres::Config = self.url.parse().expect("url");
        config.options(format!("-c search_path={SCHEMA}"));
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client.query(sql, &[]).await.expect(sql)
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

    /// Checks that every run completed with each step's effect applied exactly once and that
    /// no item is left. Returns the leases reclaimed from dead workers.
    async fn check_completed_once(&self, runs: &[(String, u64)], infos: &[RunInfo]) -> u64 {
        let events = |log: &Log| log.events.events().collect();
        let reclaimed =
            runs::check_each_completed_once(&self.orchestrator, &self.backend, runs, infos, events)
                .await;
        let left = self
            .sql("SELECT count(*) FROM items WHERE state IN ('P', 'I', 'R')")
            .await;
        assert_eq!(left[0].get::<_, i64>(0), 0, "G1: no item may be left");
        reclaimed
    }

    /// Node executions counted by the workers: (executions, duplicate executions).
    async fn executions(&self) -> (i64, i64) {
        let row = &self
            .sql(
                "SELECT coalesce(sum(count), 0)::int8, coalesce(sum(count - 1), 0)::int8 \
                 FROM fault_executions",
            )
            .await[0];
        (row.get(0), row.get(1))
    }
}

/// Starts `count` runs (inputs `0, 10, 20, …`) over about `count × 10 ms`, in a task.
fn start_spread(side: Side, count: u64) -> tokio::task::JoinHandle<Vec<(String, u64)>> {
    tokio::spawn(async move {
        let mut runs = Vec::new();
        for i in 0..count {
            let n = i * 10;
            runs.push((side.start(n).await, n));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        runs
    })
}

/// G1/G2: worker processes killed with SIGKILL mid-step while runs flow: every run completes,
/// each step's effect is applied once, nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_processes_lose_nothing() {
    bounded("pg-kill9", async {
        const RUNS: u64 = 100;
        const KILLS: usize = 4;
        let server = PostgresServer::start_or_panic();
        let side = Side::connect(&server.url()).await;
        let mut workers = fault_workers("kill9-", &server.url(), 4, 40);
        for _ in 0..3 {
            workers.spawn();
        }
        let starter = start_spread(Side::connect(&server.url()).await, RUNS);
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
        let (executions, duplicates) = side.executions().await;
        assert!(
            reclaimed >= 1,
            "the kills hit no step in flight: the test proved nothing (reclaimed = 0)"
        );
        format!(
            "{} runs completed; {KILLS} worker processes killed with SIGKILL (pids {killed:?}, \
             seed {seed:#x}); {reclaimed} leases reclaimed; {executions} node executions for {} \
             steps ({duplicates} duplicates, each applied once)",
            runs.len(),
            runs.len() * 3,
        )
    })
    .await;
}

/// G1/G6: PostgreSQL stopped with `pg_ctl stop -m immediate` (no checkpoint, like a crash)
/// and started again mid-run: workers and orchestrator reconnect, every run completes once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_run_loses_nothing() {
    bounded("pg-restart", async {
        let mut server = PostgresServer::start_or_panic();
        let side = Side::connect(&server.url()).await;
        let mut workers = fault_workers("restart-", &server.url(), 4, 40);
        for _ in 0..3 {
            workers.spawn();
        }
        let mut runs = Vec::new();
        for i in 0..60 {
            runs.push((side.start(i).await, i));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let done_before = side
            .sql("SELECT count(*) FROM runs WHERE status = 'completed'")
            .await[0]
            .get::<_, i64>(0);
        let down = Instant::now();
        server.stop_immediately().expect("pg_ctl stop -m immediate");
        tokio::time::sleep(Duration::from_millis(500)).await;
        server.start_again().expect("pg_ctl start");
        let restart_took = down.elapsed();
        for i in 60..80 {
            runs.push((side.start(i).await, i));
        }
        let infos = side.wait_all(&runs).await;
        let reclaimed = side.check_completed_once(&runs, &infos).await;
        let (executions, duplicates) = side.executions().await;
        let alive = workers
            .pids()
            .into_iter()
            .filter(|&pid| workers.alive(pid))
            .count();
        assert_eq!(alive, 3, "the worker processes survive the restart");
        assert!(
            done_before < 60,
            "every run finished before the stop: the test proved nothing"
        );
        format!(
            "{} runs completed ({done_before} before the stop; down and up in \
             {restart_took:.0?}); {reclaimed} leases reclaimed; {executions} node executions \
             for {} steps ({duplicates} duplicates, each applied once); {alive}/3 workers alive",
            runs.len(),
            runs.len() * 3,
        )
    })
    .await;
}

/// G6: every worker connection cut (`pg_terminate_backend`) again and again while runs flow,
/// mid-transaction for some: nothing is lost or applied twice, the workers carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_lose_nothing() {
    bounded("pg-dropped", async {
        const RUNS: u64 = 100;
        let server = PostgresServer::start_or_panic();
        let side = Side::connect(&server.url()).await;
        let mut workers = fault_workers("dropped-", &server.url(), 4, 20);
        for _ in 0..3 {
            workers.spawn();
        }
        let starter = start_spread(Side::connect(&server.url()).await, RUNS);
        let mut cut = 0i64;
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            // The workers' connections (the test's own carry the same application name, but
            // they live in this process: its pool reconnects just the same).
            cut += side
                .sql(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE application_name = 'floxide' AND pid <> pg_backend_pid()",
                )
                .await[0]
                .get::<_, i64>(0);
        }
        let runs = starter.await.expect("start the runs");
        let infos = side.wait_all(&runs).await;
        side.check_completed_once(&runs, &infos).await;
        let (executions, duplicates) = side.executions().await;
        let alive = workers
            .pids()
            .into_iter()
            .filter(|&pid| workers.alive(pid))
            .count();
        assert_eq!(alive, 3, "the worker processes survive the cuts");
        assert!(cut >= 5, "no connection was cut: the test proved nothing");
        format!(
            "{} runs completed; {cut} connections cut in 5 rounds; {executions} node \
             executions ({duplicates} duplicates, each applied once); {alive}/3 workers alive",
            runs.len(),
        )
    })
    .await;
}

/// G6: a stored item and a stored context with corrupt bytes go to the dead letters with the
/// decoding error (their runs fail); the workers live and the other runs complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_items_and_contexts_are_dead_lettered() {
    bounded("pg-corrupt", async {
        let server = PostgresServer::start_or_panic();
        let side = Side::connect(&server.url()).await;
        let bad_item = side.start(1).await;
        let bad_ctx = side.start(2).await;
        let mut good = Vec::new();
        for n in 10..20 {
            good.push((side.start(n).await, n));
        }
        // Before any worker runs: the first item's bytes, and the context's.
        side.sql(&format!(
            "UPDATE items SET payload = '\\xff00fe'::bytea WHERE run_id = '{bad_item}'"
        ))
        .await;
        side.sql(&format!(
            "UPDATE runs SET context = '\\x7b7b7b'::bytea WHERE run_id = '{bad_ctx}'"
        ))
        .await;
        let mut workers = fault_workers("corrupt-", &server.url(), 2, 10);
        workers.spawn();
        workers.spawn();
        let corrupt = [(bad_item.clone(), 1), (bad_ctx.clone(), 2)];
        for info in side.wait_all(&corrupt).await {
            assert_eq!(info.status, RunStatus::Failed, "G6: {info:?}");
        }
        let letters = side
            .orchestrator
            .dead_letters()
            .await
            .expect("dead letters");
        let letter = |run: &str| {
            letters
                .iter()
                .find(|d| d.run_id == run)
                .unwrap_or_else(|| panic!("G6: no dead letter for run {run}: {letters:#?}"))
                .clone()
        };
        let item = letter(&bad_item);
        assert!(
            item.error.contains("undecodable work item"),
            "{}",
            item.error
        );
        let ctx = letter(&bad_ctx);
        assert!(ctx.error.contains("undecodable context"), "{}", ctx.error);
        let infos = side.wait_all(&good).await;
        // The corrupt runs' items are dead letters, not left in the queue.
        side.check_completed_once(&good, &infos).await;
        for pid in workers.pids() {
            assert!(workers.alive(pid), "G6: worker {pid} died on bad input");
        }
        format!(
            "2 runs with corrupt bytes dead-lettered ({}; {}), 10 others completed, 2/2 \
             workers alive",
            item.error, ctx.error
        )
    })
    .await;
}

/// G8: a thousand concurrent runs over eight worker processes (four steps at a time each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_runs_complete() {
    bounded("pg-thousand", async {
        const RUNS: u64 = 1000;
        let server = PostgresServer::start_or_panic();
        let side = Side::connect(&server.url()).await;
        let mut workers = fault_workers("many-", &server.url(), 4, 10);
        for _ in 0..8 {
            workers.spawn();
        }
        let started = Instant::now();
        let mut runs = Vec::with_capacity(RUNS as usize);
        for chunk in (0..RUNS).collect::<Vec<_>>().chunks(100) {
            let ids = futures_util::future::join_all(chunk.iter().map(|&n| side.start(n))).await;
            runs.extend(ids.into_iter().zip(chunk.iter().copied()));
        }
        let start_took = started.elapsed();
        let infos = side.wait_all(&runs).await;
        let all_done = started.elapsed();
        let reclaimed = side.check_completed_once(&runs, &infos).await;
        let (executions, duplicates) = side.executions().await;
        let reporting: BTreeSet<u32> = side
            .orchestrator
            .liveness()
            .await
            .expect("liveness")
            .iter()
            .map(|h| h.pid)
            .collect();
        assert_eq!(
            reporting.len(),
            8,
            "every worker process reported: {reporting:?}"
        );
        format!(
            "{} runs ({} steps) completed on {} worker processes x 4 in {all_done:.1?} \
             (starting them took {start_took:.1?}); {executions} node executions ({duplicates} \
             duplicates), {reclaimed} leases reclaimed",
            runs.len(),
            runs.len() * 3,
            workers.len(),
        )
    })
    .await;
}
