//! The Redis workloads: workers are tasks of this process sharing one `RedisBackend`.

use std::time::{Duration, Instant};

use floxide::*;
use floxide_redis::{RedisBackend, RedisClient, RedisConfig};
use futures_util::StreamExt;
use serde_json::json;

use crate::{framework, percentile, Args};

node! {
    /// Emits `0..fanout`.
    pub struct Fan { fanout: u64 };
    input = u64;
    output = u64;
    |_ctx, _n| { Ok(Transition::NextAll((0..self.fanout).collect())) }
}

node! {
    /// `n -> n`.
    pub struct Leaf {};
    input = u64;
    output = u64;
    |_ctx, n| { Ok(Transition::Next(n)) }
}

workflow! {
    /// `fan => [leaf]; leaf => [];`
    pub struct FanOut { fan: Fan, leaf: Leaf }
    start = fan;
    edges { fan => [leaf]; leaf => []; }
}

/// Connects under `--prefix` (default `bench:`) and clears it.
pub(crate) async fn connect(args: &Args) -> Result<RedisBackend, String> {
    let url: String = args.get("redis", "redis://127.0.0.1:6379/".to_owned())?;
    let prefix: String = args.get("prefix", "bench:".to_owned())?;
    let client = RedisClient::new(RedisConfig::new(url).with_key_prefix(prefix))
        .await
        .map_err(|e| e.to_string())?;
    client
        .clear()
        .await
        .map_err(|e| format!("clearing the prefix failed: {e}"))?;
    Ok(RedisBackend::new(client))
}

/// Total commands the server executed so far (INFO commandstats).
pub(crate) async fn commands(backend: &RedisBackend) -> Result<u64, String> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut backend.client().connection())
        .await
        .map_err(|e| e.to_string())?;
    Ok(info
        .lines()
        .filter_map(|l| l.split("calls=").nth(1))
        .filter_map(|rest| rest.split(',').next()?.parse::<u64>().ok())
        .sum())
}

/// CPU seconds the Redis server has used so far (INFO cpu: user + system, main thread).
pub(crate) async fn server_cpu(backend: &RedisBackend) -> Result<f64, String> {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(&mut backend.client().connection())
        .await
        .map_err(|e| e.to_string())?;
    Ok(info
        .lines()
        .filter(|l| l.starts_with("used_cpu_sys:") || l.starts_with("used_cpu_user:"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .sum())
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Bytes Redis holds under the backend's prefix (MEMORY USAGE of every key), per run.
pub(crate) async fn bytes_per_run(backend: &RedisBackend, runs: usize) -> Result<f64, String> {
    let pattern = format!("{}*", backend.client().key_prefix());
    let mut conn = backend.client().connection();
    let mut cursor = 0u64;
    let mut total = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .map_err(err)?;
        if !keys.is_empty() {
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("MEMORY")
                    .arg("USAGE")
                    .arg(key)
                    .arg("SAMPLES")
                    .arg(0);
            }
            let sizes: Vec<Option<u64>> = pipe.query_async(&mut conn).await.map_err(err)?;
            total += sizes.into_iter().flatten().sum::<u64>();
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    Ok(total as f64 / runs.max(1) as f64)
}

/// How a drain starts its runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Start {
    /// `start_run` calls, 64 in flight.
    Concurrent,
    /// `start_runs`: pipelined, a hundred per round trip.
    Pipelined,
}

/// Starts `runs` runs of `wf`, drains them with `workers` worker tasks, and reports.
#[allow(clippy::too_many_arguments)]
async fn drain<W: Workflow<()> + 'static>(
    workload: &str,
    wf: W,
    input: impl Fn() -> W::Input,
    expected: Option<serde_json::Value>,
    steps_per_run: u64,
    args: &Args,
    default_runs: usize,
    (start, default_batch): (Start, usize),
) -> Result<serde_json::Value, String> {
    let runs: usize = args.get("runs", default_runs)?;
    let workers: usize = args.get("workers", 4)?;
    let batch: usize = args.get("batch", default_batch)?;
    let backend = connect(args).await?;
    let orchestrator = OrchestratorBuilder::new()
        .workflow(wf.clone())
        .backend(backend.clone())
        .build()
        .map_err(err)?;
    let worker = WorkerBuilder::new()
        .workflow(wf)
        .backend(backend.clone())
        .concurrency(batch)
        .build()
        .map_err(err)?;
    let before = commands(&backend).await?;
    let cpu0 = server_cpu(&backend).await?;
    let started = std::time::SystemTime::now();
    let ctx = WorkflowCtx::new(());
    let ids: Vec<RunId> = match start {
        // Starts are independent: keep 64 in flight (each is one round trip).
        Start::Concurrent => {
            futures_util::stream::iter((0..runs).map(|_| orchestrator.start_run(&ctx, input())))
                .buffered(64)
                .collect::<Vec<_>>()
                .await
        }
        Start::Pipelined => {
            orchestrator
                .start_runs(&ctx, (0..runs).map(|_| input()))
                .await
        }
    }
    .into_iter()
    .collect::<Result<_, _>>()
    .map_err(err)?;
    let cpu1 = server_cpu(&backend).await?;
    let mut pool = WorkerPool::new(worker, workers).with_grace_period(Duration::from_secs(1));
    pool.start();
    let mut completed = 0u64;
    let mut last = started;
    let mut latencies = Vec::with_capacity(runs);
    for id in &ids {
        let info = orchestrator
            .wait_for_completion(id, Duration::from_secs(1))
            .await
            .map_err(err)?;
        if info.status == RunStatus::Completed
            && expected
                .as_ref()
                .is_none_or(|e| info.output.as_ref() == Some(e))
        {
            completed += 1;
        }
        if let Some(done) = info.finished_at {
            latencies.push(
                done.duration_since(info.started_at)
                    .unwrap_or_default()
                    .as_secs_f64()
                    * 1e3,
            );
            last = last.max(done);
        }
    }
    // First start to last completion (the server's clock, millisecond resolution).
    let wall = last
        .duration_since(started)
        .unwrap_or_default()
        .as_secs_f64()
        .max(1e-3);
    let cpu2 = server_cpu(&backend).await?;
    pool.try_stop().await.map_err(err)?;
    let cmds = commands(&backend).await?.saturating_sub(before);
    latencies.sort_by(f64::total_cmp);
    let steps = completed * steps_per_run;
    let bytes = bytes_per_run(&backend, runs).await?;
    Ok(json!({
        "framework": framework(),
        "workload": workload,
        "runs": runs,
        "completed": completed,
        "steps": steps,
        "wall_s": wall,
        "steps_per_s": steps as f64 / wall,
        "lat_p50_ms": percentile(&latencies, 50.0),
        "lat_p99_ms": percentile(&latencies, 99.0),
        "redis_cmds_per_step": cmds as f64 / steps.max(1) as f64,
        "redis_bytes_per_finished_run": bytes,
        "batch": batch,
        "redis_cpu_us_per_start": (cpu1 - cpu0) * 1e6 / runs.max(1) as f64,
        "redis_cpu_us_per_step": (cpu2 - cpu1) * 1e6 / steps.max(1) as f64,
    }))
}

/// `dist-redis-linear`.
pub(crate) async fn linear(args: &Args) -> Result<serde_json::Value, String> {
    drain(
        "dist-redis-linear",
        crate::linear(),
        || 0,
        Some(json!(3)),
        3,
        args,
        1_000,
        (Start::Concurrent, DEFAULT_CONCURRENCY),
    )
    .await
}

/// `dist-redis-fanout`.
pub(crate) async fn fanout(args: &Args) -> Result<serde_json::Value, String> {
    let fanout: u64 = args.get("fanout", 10)?;
    let wf = FanOut {
        fan: Fan { fanout },
        leaf: Leaf {},
    };
    let mut out = drain(
        "dist-redis-fanout",
        wf,
        || 0,
        None,
        1 + fanout,
        args,
        200,
        (Start::Concurrent, 16),
    )
    .await?;
    // Any leaf's output is the run's output; completion is what is checked here.
    if let Some(map) = out.as_object_mut() {
        map.remove("redis_cmds_per_step");
    }
    Ok(out)
}

/// `dist-redis-bulk`: a large backlog started before the workers drain it.
pub(crate) async fn bulk(args: &Args) -> Result<serde_json::Value, String> {
    let mut out = drain(
        "dist-redis-bulk",
        crate::linear(),
        || 0,
        Some(json!(3)),
        3,
        args,
        30_000,
        (Start::Pipelined, MAX_BATCH),
    )
    .await?;
    if let Some(map) = out.as_object_mut() {
        map.remove("lat_p50_ms");
        map.remove("lat_p99_ms");
    }
    Ok(out)
}

/// `dist-redis-latency`: one run at a time, start → completion measured by the client.
pub(crate) async fn latency(args: &Args) -> Result<serde_json::Value, String> {
    let runs: usize = args.get("runs", 200)?;
    let workers: usize = args.get("workers", 4)?;
    let backend = connect(args).await?;
    let wf = crate::linear();
    let orchestrator = wf.orchestrator(backend.clone()).build().map_err(err)?;
    let mut pool = WorkerPool::new(wf.worker(backend).build().map_err(err)?, workers)
        .with_grace_period(Duration::from_secs(1));
    pool.start();
    // Warm up: connections, scripts, idle workers blocked on the queue.
    for _ in 0..20 {
        let id = orchestrator
            .start_run(&WorkflowCtx::new(()), 0)
            .await
            .map_err(err)?;
        orchestrator
            .wait_for_output(&id, Duration::from_secs(10))
            .await
            .map_err(err)?;
    }
    let mut latencies = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let id = orchestrator
            .start_run(&WorkflowCtx::new(()), 0)
            .await
            .map_err(err)?;
        let out = orchestrator
            .wait_for_output(&id, Duration::from_secs(10))
            .await
            .map_err(err)?;
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
        if out != 3 {
            return Err(format!("wrong result {out}"));
        }
    }
    pool.try_stop().await.map_err(err)?;
    latencies.sort_by(f64::total_cmp);
    Ok(json!({
        "framework": framework(),
        "workload": "dist-redis-latency",
        "runs": runs,
        "lat_p50_ms": percentile(&latencies, 50.0),
        "lat_p90_ms": percentile(&latencies, 90.0),
        "lat_p99_ms": percentile(&latencies, 99.0),
        "lat_max_ms": latencies.last().copied().unwrap_or(0.0),
    }))
}
