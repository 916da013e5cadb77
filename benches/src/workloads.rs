//! The distributed workloads of BENCH.md, on any backend: workers are tasks of this process
//! sharing one backend value; a [`Meter`] reads the server's own counters.

use std::time::{Duration, Instant};

use floxide::distributed::Backend;
use floxide::*;
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

/// A server's own counters, read before and after a workload.
#[async_trait::async_trait]
pub(crate) trait Meter: Send + Sync {
    /// The prefix of the JSON fields (`redis`, `pg`).
    fn name(&self) -> &'static str;
    /// What [`Meter::operations`] counts (`cmds`, `txns`).
    fn unit(&self) -> &'static str;
    /// Operations the server executed so far.
    async fn operations(&self) -> Result<u64, String>;
    /// CPU seconds the server used so far.
    async fn cpu(&self) -> Result<f64, String>;
    /// Bytes the server keeps for the workload, per run.
    async fn bytes_per_run(&self, runs: usize) -> Result<f64, String>;
}

/// No server to read counters from: the in-memory backend.
struct NoServer;

#[async_trait::async_trait]
impl Meter for NoServer {
    fn name(&self) -> &'static str {
        "mem"
    }
    fn unit(&self) -> &'static str {
        "ops"
    }
    async fn operations(&self) -> Result<u64, String> {
        Err("the in-memory backend counts no operations".to_owned())
    }
    async fn cpu(&self) -> Result<f64, String> {
        Err("the in-memory backend has no server".to_owned())
    }
    async fn bytes_per_run(&self, _runs: usize) -> Result<f64, String> {
        Err("the in-memory backend has no server".to_owned())
    }
}

/// The in-memory backend as a target (`dist-mem-latency`: what a lone run costs without a
/// server, the client's own share of the Redis and PostgreSQL latencies).
pub(crate) fn in_memory() -> Target<InMemoryBackend> {
    Target {
        family: "dist-mem",
        backend: InMemoryBackend::new(),
        meter: Box::new(NoServer),
    }
}

/// The CPU seconds (user and system) a `/proc/<pid>/stat` line counts, when its process is
/// named `name` (any when `None`).
pub(crate) fn stat_cpu(stat: &str, name: Option<&str>) -> Option<f64> {
    // pid (comm) state ... utime stime: fields 14 and 15, counted after the name.
    let (comm, rest) = stat.split_once(") ")?;
    if name.is_some_and(|n| !comm.ends_with(&format!("({n}"))) {
        return None;
    }
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some((field(11).unwrap_or(0) + field(12).unwrap_or(0)) as f64 / 100.0)
}

/// The CPU seconds this process (the workers, the driver) used so far (0 where /proc cannot
/// be read).
fn client_cpu() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| stat_cpu(&stat, None))
        .unwrap_or(0.0)
}

pub(crate) fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A workload's backend and its meter.
pub(crate) struct Target<B> {
    /// The prefix of the workload names (`dist-redis`, `dist-pg`).
    pub(crate) family: &'static str,
    pub(crate) backend: B,
    pub(crate) meter: Box<dyn Meter>,
}

/// How a drain starts its runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Start {
    /// `start_run` calls, 64 in flight.
    Concurrent,
    /// `start_runs`: pipelined, a hundred per round trip.
    Pipelined,
    /// Pipelined while the workers drain them (they start first).
    PipelinedWhileDraining,
}

/// Starts `runs` runs of `wf`, drains them with `workers` worker tasks, and reports.
#[allow(clippy::too_many_arguments)]
async fn drain<B: Backend + Clone + 'static, W: Workflow<()> + 'static>(
    target: &Target<B>,
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
    let backend = target.backend.clone();
    let meter = &target.meter;
    let workload = format!("{}-{workload}", target.family);
    let orchestrator = OrchestratorBuilder::new()
        .workflow(wf.clone())
        .backend(backend.clone())
        .build()
        .map_err(err)?;
    let worker = WorkerBuilder::new()
        .workflow(wf)
        .backend(backend.clone())
        .concurrency(batch)
        .chain_steps(chains(args)?)
        .build()
        .map_err(err)?;
    let before = meter.operations().await?;
    let cpu0 = meter.cpu().await?;
    let client0 = client_cpu();
    let mut pool = WorkerPool::new(worker, workers).with_grace_period(Duration::from_secs(1));
    let overlap = start == Start::PipelinedWhileDraining;
    if overlap {
        pool.start();
    }
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
        Start::Pipelined | Start::PipelinedWhileDraining => {
            orchestrator
                .start_runs(&ctx, (0..runs).map(|_| input()))
                .await
        }
    }
    .into_iter()
    .collect::<Result<_, _>>()
    .map_err(err)?;
    let start_phase = started.elapsed().unwrap_or_default().as_secs_f64();
    let cpu1 = meter.cpu().await?;
    if !overlap {
        pool.start();
    }
    // The last run started is about the last to finish: wait for it first, so that the runs'
    // records are read (for their results and times) once the workers have drained the
    // backlog, not while they do (as the floors' drivers check their runs at the end).
    if let Some(id) = ids.last() {
        orchestrator
            .wait_for_completion(id, Duration::from_secs(1))
            .await
            .map_err(err)?;
    }
    // The server's time for the drain: taken before the records are read back below.
    let cpu2 = meter.cpu().await?;
    let client2 = client_cpu();
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
    pool.try_stop().await.map_err(err)?;
    let ops = meter.operations().await?.saturating_sub(before);
    latencies.sort_by(f64::total_cmp);
    let steps = completed * steps_per_run;
    let bytes = meter.bytes_per_run(runs).await?;
    let (name, unit) = (meter.name(), meter.unit());
    let mut out = json!({
        "framework": framework(),
        "workload": workload,
        "runs": runs,
        "completed": completed,
        "steps": steps,
        "wall_s": wall,
        "steps_per_s": steps as f64 / wall,
        "lat_p50_ms": percentile(&latencies, 50.0),
        "lat_p99_ms": percentile(&latencies, 99.0),
        "batch": batch,
        "start_phase_s": start_phase,
    });
    if let Some(map) = out.as_object_mut() {
        map.insert(
            format!("{name}_{unit}_per_step"),
            json!(ops as f64 / steps.max(1) as f64),
        );
        map.insert(format!("{name}_bytes_per_finished_run"), json!(bytes));
        // This process's time (workers and starts), from the first start to the last
        // completion.
        map.insert(
            "client_cpu_us_per_step".to_owned(),
            json!((client2 - client0) * 1e6 / steps.max(1) as f64),
        );
        if overlap {
            // Starts and steps share the server's time: all of it, per step.
            map.insert(
                format!("{name}_cpu_us_per_step_with_starts"),
                json!((cpu2 - cpu0) * 1e6 / steps.max(1) as f64),
            );
        } else {
            map.insert(
                format!("{name}_cpu_us_per_start"),
                json!((cpu1 - cpu0) * 1e6 / runs.max(1) as f64),
            );
            map.insert(
                format!("{name}_cpu_us_per_step"),
                json!((cpu2 - cpu1) * 1e6 / steps.max(1) as f64),
            );
        }
    }
    Ok(out)
}

/// `dist-*-linear`.
pub(crate) async fn linear<B: Backend + Clone + 'static>(
    target: &Target<B>,
    args: &Args,
) -> Result<serde_json::Value, String> {
    drain(
        target,
        "linear",
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

/// `dist-*-fanout`.
pub(crate) async fn fanout<B: Backend + Clone + 'static>(
    target: &Target<B>,
    args: &Args,
) -> Result<serde_json::Value, String> {
    let fanout: u64 = args.get("fanout", 10)?;
    let wf = FanOut {
        fan: Fan { fanout },
        leaf: Leaf {},
    };
    let mut out = drain(
        target,
        "fanout",
        wf,
        || 0,
        None,
        1 + fanout,
        args,
        200,
        (Start::Concurrent, 16),
    )
    .await?;
    // Any leaf's output is the run's output; completion is what is checked here. (BENCH.md
    // counts commands per step for the linear shape only; the server's time is kept.)
    if let Some(map) = out.as_object_mut() {
        map.retain(|k, _| !k.ends_with("cmds_per_step"));
    }
    Ok(out)
}

/// `--start while|before`: whether a bulk drain's workers run while its runs are started
/// (pipelined), or start once they all are. The default is each backend's faster way: `while`
/// on Redis (the server would idle through part of the start phase), `before` on PostgreSQL
/// (concurrent starts and steps contend there: 5-8k steps/s against 11-13k).
fn bulk_start(args: &Args, family: &str) -> Result<Start, String> {
    let default = if family == "dist-pg" {
        "before"
    } else {
        "while"
    };
    match args.get::<String>("start", default.to_owned())?.as_str() {
        "while" => Ok(Start::PipelinedWhileDraining),
        "before" => Ok(Start::Pipelined),
        other => Err(format!("--start: `{other}` is neither while nor before")),
    }
}

/// `dist-*-bulk`: a large backlog started (pipelined) while the workers drain it, or before.
pub(crate) async fn bulk<B: Backend + Clone + 'static>(
    target: &Target<B>,
    args: &Args,
) -> Result<serde_json::Value, String> {
    let mut out = drain(
        target,
        "bulk",
        crate::linear(),
        || 0,
        Some(json!(3)),
        3,
        args,
        30_000,
        (bulk_start(args, target.family)?, MAX_BATCH),
    )
    .await?;
    if let Some(map) = out.as_object_mut() {
        map.remove("lat_p50_ms");
        map.remove("lat_p99_ms");
    }
    Ok(out)
}

/// `dist-*-latency`: one run at a time, start → completion measured by the client.
pub(crate) async fn latency<B: Backend + Clone + 'static>(
    target: &Target<B>,
    args: &Args,
) -> Result<serde_json::Value, String> {
    let runs: usize = args.get("runs", 200)?;
    let workers: usize = args.get("workers", 4)?;
    let backend = target.backend.clone();
    let wf = crate::linear();
    let orchestrator = wf.orchestrator(backend.clone()).build().map_err(err)?;
    let mut pool = WorkerPool::new(
        wf.worker(backend)
            .chain_steps(chains(args)?)
            .build()
            .map_err(err)?,
        workers,
    )
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
        "workload": format!("{}-latency", target.family),
        "runs": runs,
        "lat_p50_ms": percentile(&latencies, 50.0),
        "lat_p90_ms": percentile(&latencies, 90.0),
        "lat_p99_ms": percentile(&latencies, 99.0),
        "lat_max_ms": latencies.last().copied().unwrap_or(0.0),
    }))
}

/// `--chain on|off` (default on): whether workers chain fast steps (`chain_steps`).
pub(crate) fn chains(args: &Args) -> Result<bool, String> {
    match args.get::<String>("chain", "on".to_owned())?.as_str() {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("--chain: `{other}` is neither on nor off")),
    }
}

/// `--step-history on|off` (default on): whether the backend records the runs' step history.
pub(crate) fn step_history(args: &Args) -> Result<bool, String> {
    match args
        .get::<String>("step-history", "on".to_owned())?
        .as_str()
    {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("--step-history: `{other}` is neither on nor off")),
    }
}
