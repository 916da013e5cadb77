//! The `crash` workload: two worker processes, one killed with SIGKILL mid-step.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use floxide::*;
use redis::AsyncCommands;
use serde_json::json;

use crate::redis_workloads::connect;
use crate::{framework, Args};

/// Lease of the crash workers: the killed worker's items return after at most this long.
const LEASE: Duration = Duration::from_secs(2);

node! {
    /// `INCR started:{run}:{node}`, sleep, `n -> n + 1`.
    pub struct Counted { name: &'static str, step_ms: u64, conn: Conn };
    input = u64;
    output = u64;
    |_ctx, n| {
        if let Some(step) = floxide::current_step() {
            let key = format!("{}started:{}:{}", self.conn.prefix, step.run_id, self.name);
            let mut c = self.conn.conn.clone();
            let _: Result<i64, _> = c.incr(key, 1).await;
        }
        tokio::time::sleep(Duration::from_millis(self.step_ms)).await;
        Ok(Transition::Next(n + 1))
    }
}

/// A Redis connection for the nodes' counters.
#[derive(Clone)]
pub struct Conn {
    conn: redis::aio::ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Conn")
    }
}

workflow! {
    /// Three counted steps.
    pub struct CrashFlow { a: Counted, b: Counted, c: Counted }
    start = a;
    edges { a => [b]; b => [c]; c => []; }
}

async fn flow(args: &Args, backend: &floxide_redis::RedisBackend) -> Result<CrashFlow, String> {
    let step_ms: u64 = args.get("step-ms", 20)?;
    let conn = Conn {
        conn: backend.client().connection(),
        prefix: backend.client().config().key_prefix().to_owned(),
    };
    let node = |name| Counted {
        name,
        step_ms,
        conn: conn.clone(),
    };
    Ok(CrashFlow {
        a: node("a"),
        b: node("b"),
        c: node("c"),
    })
}

/// `worker` subcommand: 4 concurrent steps (2 workers with 2 slots each, so that takes and
/// commits are batched) until killed or SIGTERM.
pub(crate) async fn worker(args: &Args) -> Result<serde_json::Value, String> {
    let backend = connect_no_clear(args).await?;
    let wf = flow(args, &backend).await?;
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

async fn connect_no_clear(args: &Args) -> Result<floxide_redis::RedisBackend, String> {
    let url: String = args.get("redis", "redis://127.0.0.1:6379/".to_owned())?;
    let prefix: String = args.get("prefix", "bench-crash:".to_owned())?;
    let client = floxide_redis::RedisClient::new(
        floxide_redis::RedisConfig::new(url).with_key_prefix(prefix),
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(floxide_redis::RedisBackend::new(client))
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
    let url: String = args.get("redis", "redis://127.0.0.1:6379/".to_owned())?;
    let prefix: String = args.get("prefix", "bench-crash:".to_owned())?;
    let mut full = Args {
        workload: "crash".into(),
        flags: args.flags.clone(),
    };
    full.flags.push(("prefix".into(), prefix.clone()));
    let backend = connect(&full).await?;
    let wf = flow(&full, &backend).await?;
    let orchestrator = wf
        .orchestrator(backend.clone())
        .build()
        .map_err(|e| e.to_string())?;

    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let spawn = || {
        Command::new(&exe)
            .args([
                "worker",
                "--redis",
                &url,
                "--prefix",
                &prefix,
                "--step-ms",
                &step_ms.to_string(),
                "--threads",
                "2",
            ])
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
    let mut duplicate_executions = 0i64;
    let mut conn = backend.client().connection();
    for id in &ids {
        for node in ["a", "b", "c"] {
            let n: Option<i64> = conn
                .get(format!("{prefix}started:{id}:{node}"))
                .await
                .map_err(|e| e.to_string())?;
            duplicate_executions += n.unwrap_or(0).saturating_sub(1).max(0);
        }
    }
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
