//! The `crash` workload: two worker processes, one killed with SIGKILL mid-step, on Redis
//! (`--redis URL`, `--prefix`) or on any backend `--backend URL` names (`postgres://…`, with
//! `--schema`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::Arc;

use ::redis::AsyncCommands;
use floxide::*;
use serde_json::json;

use crate::{framework, Args};

/// Lease of the crash workers: the killed worker's items return after at most this long.
const LEASE: Duration = Duration::from_secs(2);

node! {
    /// Counts its execution (`started:{run}:{node}`), sleeps, `n -> n + 1`.
    pub struct Counted { name: &'static str, step_ms: u64, counter: Counter };
    input = u64;
    output = u64;
    |_ctx, n| {
        if let Some(step) = floxide::current_step() {
            self.counter.incr(&step.run_id, self.name).await;
        }
        tokio::time::sleep(Duration::from_millis(self.step_ms)).await;
        Ok(Transition::Next(n + 1))
    }
}

/// Where the nodes count their executions: keys beside the Redis deployment, or a table in
/// the PostgreSQL one's schema.
#[derive(Clone)]
pub enum Counter {
    /// `INCR <prefix>started:<run>:<node>`.
    Redis(floxide_redis::RedisConnection, String),
    /// `crash_executions (run_id, node, count)`.
    Postgres(Arc<tokio_postgres::Client>),
}

impl std::fmt::Debug for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Counter")
    }
}

/// The counters' table.
const COUNTERS: &str = "CREATE TABLE IF NOT EXISTS crash_executions (
    run_id text NOT NULL, node text NOT NULL, count integer NOT NULL,
    PRIMARY KEY (run_id, node))";

impl Counter {
    async fn incr(&self, run: &str, node: &str) {
        match self {
            Counter::Redis(conn, prefix) => {
                let mut c = conn.clone();
                let _: Result<i64, _> = c.incr(format!("{prefix}started:{run}:{node}"), 1).await;
            }
            Counter::Postgres(client) => {
                let _ = client
                    .execute(
                        "INSERT INTO crash_executions (run_id, node, count) VALUES ($1, $2, 1) \
                         ON CONFLICT (run_id, node) DO UPDATE \
                         SET count = crash_executions.count + 1",
                        &[&run, &node],
                    )
                    .await;
            }
        }
    }

    /// Executions beyond one per item of `ids`.
    async fn duplicates(&self, ids: &[RunId]) -> Result<i64, String> {
        let mut duplicates = 0;
        match self {
            Counter::Redis(conn, prefix) => {
                let mut conn = conn.clone();
                for id in ids {
                    for node in ["a", "b", "c"] {
                        let n: Option<i64> = conn
                            .get(format!("{prefix}started:{id}:{node}"))
                            .await
                            .map_err(|e| e.to_string())?;
                        duplicates += n.unwrap_or(0).saturating_sub(1).max(0);
                    }
                }
            }
            Counter::Postgres(client) => {
                let row = client
                    .query_one(
                        "SELECT coalesce(sum(greatest(count - 1, 0)), 0)::int8 \
                         FROM crash_executions WHERE run_id = ANY($1)",
                        &[&ids],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                duplicates = row.get(0);
            }
        }
        Ok(duplicates)
    }
}

workflow! {
    /// Three counted steps.
    pub struct CrashFlow { a: Counted, b: Counted, c: Counted }
    start = a;
    edges { a => [b]; b => [c]; c => []; }
}

fn flow(args: &Args, counter: &Counter) -> Result<CrashFlow, String> {
    let step_ms: u64 = args.get("step-ms", 20)?;
    let node = |name| Counted {
        name,
        step_ms,
        counter: counter.clone(),
    };
    Ok(CrashFlow {
        a: node("a"),
        b: node("b"),
        c: node("c"),
    })
}

/// The deployment `--backend URL` names (default: the Redis of `--redis`), under `--prefix`
/// (Redis) or `--schema` (PostgreSQL), emptied first when `fresh`.
async fn connect(args: &Args, fresh: bool) -> Result<(Arc<dyn Backend>, Counter), String> {
    let redis_url: String = args.get("redis", "redis://127.0.0.1:6379/".to_owned())?;
    let url: String = args.get("backend", redis_url)?;
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let schema: String = args.get("schema", "floxide_crash".to_owned())?;
        let client = crate::pg_workloads::direct(&url).await?;
        if fresh {
            crate::pg_workloads::drop_schema(&client, &schema).await?;
        }
        let backend = floxide_postgres::PostgresBackend::connect_with(
            floxide_postgres::PostgresConfig::new(&url).with_schema(&schema),
        )
        .await
        .map_err(|e| e.to_string())?;
        client
            .batch_execute(&format!("SET search_path = {schema}; {COUNTERS}"))
            .await
            .map_err(|e| e.to_string())?;
        return Ok((Arc::new(backend), Counter::Postgres(Arc::new(client))));
    }
    let prefix: String = args.get("prefix", "bench-crash:".to_owned())?;
    let client = floxide_redis::RedisClient::new(
        floxide_redis::RedisConfig::new(url).with_key_prefix(prefix.clone()),
    )
    .await
    .map_err(|e| e.to_string())?;
    if fresh {
        client
            .clear()
            .await
            .map_err(|e| format!("clearing the prefix failed: {e}"))?;
    }
    let counter = Counter::Redis(client.connection(), prefix);
    Ok((Arc::new(floxide_redis::RedisBackend::new(client)), counter))
}

/// `worker` subcommand: 4 concurrent steps (2 workers with 2 slots each, so that takes and
/// commits are batched) until killed or SIGTERM.
pub(crate) async fn worker(args: &Args) -> Result<serde_json::Value, String> {
    let (backend, counter) = connect(args, false).await?;
    let wf = flow(args, &counter)?;
    let worker = wf
        .worker(backend)
        .lease_timeout(LEASE)
        .heartbeat_interval(LEASE / 4)
        .concurrency(2)
        .build()
        .map_err(|e| e.to_string())?;
    let mut pool = WorkerPool::new(worker, 2).with_grace_period(Duration::from_secs(5));
    pool.start();
    floxide::shutdown_signal().await;
    pool.try_stop().await.map_err(|e| e.to_string())?;
    Ok(json!({ "worker": "stopped" }))
}

struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The driver: starts the workers and runs, kills one worker mid-step, checks the records.
pub(crate) async fn driver(args: &Args) -> Result<serde_json::Value, String> {
    let runs: usize = args.get("runs", 200)?;
    let step_ms: u64 = args.get("step-ms", 20)?;
    let (backend, counter) = connect(args, true).await?;
    let wf = flow(args, &counter)?;
    let orchestrator = wf
        .orchestrator(backend.clone())
        .build()
        .map_err(|e| e.to_string())?;

    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let spawn = || {
        Command::new(&exe)
            .arg("worker")
            // The same deployment flags (backend, prefix, schema).
            .args(
                args.flags
                    .iter()
                    .filter(|(k, _)| {
                        matches!(k.as_str(), "redis" | "backend" | "prefix" | "schema")
                    })
                    .flat_map(|(k, v)| [format!("--{k}"), v.clone()]),
            )
            .args(["--step-ms", &step_ms.to_string(), "--threads", "2"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start a worker process: {e}"))
    };
    let mut workers = Workers(vec![spawn()?, spawn()?]);
    let mut ids = Vec::with_capacity(runs);
    for _ in 0..runs {
        ids.push(
            orchestrator
                .start_run(&WorkflowCtx::new(()), 0)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Kill while a step is in flight: find a worker holding an item.
    let victim = orchestrator
        .liveness()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|h| h.current_work_item.is_some())
        .map(|h| h.pid);
    let index = workers
        .0
        .iter()
        .position(|c| Some(c.id()) == victim)
        .unwrap_or(0);
    let _ = workers.0[index].kill();
    let _ = workers.0[index].wait();
    let killed_at = Instant::now();

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut completed = 0usize;
    let mut last_completion = killed_at;
    let mut duplicate_commits = 0u64;
    for id in &ids {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(
            left,
            orchestrator.wait_for_completion(id, Duration::from_secs(1)),
        )
        .await
        {
            Ok(Ok(info)) if info.status == RunStatus::Completed => {
                completed += 1;
                last_completion = Instant::now().max(last_completion);
            }
            _ => continue,
        }
        let metrics = orchestrator.metrics(id).await.map_err(|e| e.to_string())?;
        for timing in metrics.per_node.values() {
            duplicate_commits += timing.count.saturating_sub(1);
        }
    }
    let duplicate_executions = counter.duplicates(&ids).await?;
    let mut stranded = 0usize;
    for id in &ids {
        let items = orchestrator
            .list_work_items(id)
            .await
            .map_err(|e| e.to_string())?;
        stranded += items
            .iter()
            .filter(|i| !matches!(i.status, WorkItemStatus::Completed))
            .count();
    }
    drop(workers);
    Ok(json!({
        "framework": framework(),
        "workload": "crash",
        "runs_started": runs,
        "runs_completed": completed,
        "runs_lost": runs - completed,
        "duplicate_step_executions": duplicate_executions,
        "duplicate_commits": duplicate_commits,
        "stranded_items": stranded,
        "recovery_s": last_completion.duration_since(killed_at).as_secs_f64(),
    }))
}
