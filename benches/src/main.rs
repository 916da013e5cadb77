//! `floxide-bench`: the standard workloads of BENCH.md, one JSON line each on stdout.
//!
//! ```text
//! cargo run --release -p floxide-bench -- local-linear [--runs 100000]
//! cargo run --release -p floxide-bench -- dist-mem-linear [--runs 2000] [--workers 4]
//! cargo run --release -p floxide-bench -- dist-redis-linear [--runs 1000] [--workers 4]
//! cargo run --release -p floxide-bench -- dist-redis-fanout [--runs 200] [--fanout 10] [--workers 4]
//! cargo run --release -p floxide-bench -- dist-redis-bulk [--runs 30000] [--workers 4]
//! cargo run --release -p floxide-bench -- dist-redis-latency [--runs 200] [--workers 4]
//! cargo run --release -p floxide-bench -- dist-mem-latency [--runs 200] [--workers 4]
//! cargo run --release -p floxide-bench -- dist-pg-linear [--runs 1000] [--workers 4]
//! cargo run --release -p floxide-bench -- dist-pg-fanout [--runs 200] [--fanout 10] [--workers 4]
//! cargo run --release -p floxide-bench -- dist-pg-bulk [--runs 30000] [--workers 4]
//! cargo run --release -p floxide-bench -- dist-pg-latency [--runs 200] [--workers 4]
//! cargo run --release -p floxide-bench -- crash [--runs 200] [--step-ms 20] [--backend postgres://…]
//! ```
//! Common flags: `--threads N` (tokio worker threads; default: number of cores), `--redis URL`
//! (default `redis://127.0.0.1:6379/`) or `--cluster URL[,URL…]` (a Redis Cluster's seed nodes,
//! with `--partitions N`, default 48), `--prefix P` (a key prefix deleted before the run),
//! `--step-history on|off` (default on: the runs' step history is recorded), `--driver task|main`
//! (default task: the workload's driver runs as a task of the runtime, as an application's
//! request handler would; `main`: on the main thread, inside `block_on`);
//! for PostgreSQL `--pg URL` (default `postgres://postgres@127.0.0.1:5432/test`), `--schema S`
//! (dropped before the run, default `floxide_bench`) and `--pool N` (connections, default 16).

use std::time::{Duration, Instant};

use floxide::*;
use serde_json::json;

node! {
    /// `n -> n + 1`.
    pub struct Inc {};
    input = u64;
    output = u64;
    |_ctx, n| { Ok(Transition::Next(n + 1)) }
}

workflow! {
    /// `a => [b]; b => [c]; c => [];`
    pub struct Linear { a: Inc, b: Inc, c: Inc }
    start = a;
    edges { a => [b]; b => [c]; c => []; }
}

pub(crate) fn linear() -> Linear {
    Linear {
        a: Inc {},
        b: Inc {},
        c: Inc {},
    }
}

/// Parsed command line.
pub(crate) struct Args {
    pub(crate) workload: String,
    pub(crate) flags: Vec<(String, String)>,
}

impl Args {
    fn parse() -> Result<Args, String> {
        let mut it = std::env::args().skip(1);
        let workload = it
            .next()
            .ok_or("usage: floxide-bench WORKLOAD [--flag value]...")?;
        let mut flags = Vec::new();
        while let Some(flag) = it.next() {
            let name = flag
                .strip_prefix("--")
                .ok_or(format!("unexpected argument `{flag}`"))?;
            let value = it.next().ok_or(format!("--{name} needs a value"))?;
            flags.push((name.to_owned(), value));
        }
        Ok(Args { workload, flags })
    }

    pub(crate) fn get<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.flags.iter().rev().find(|(n, _)| n == name) {
            None => Ok(default),
            Some((_, v)) => v
                .parse()
                .map_err(|_| format!("--{name}: `{v}` is not valid")),
        }
    }
}

pub(crate) fn framework() -> String {
    format!("floxide {}", env!("CARGO_PKG_VERSION"))
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

async fn local_linear(args: &Args) -> Result<serde_json::Value, String> {
    let runs: u64 = args.get("runs", 100_000)?;
    let (wf, ctx) = (&linear(), &WorkflowCtx::new(()));
    local_linear::measure(framework(), runs, || async move {
        wf.run(ctx, 0).await.map_err(|e| e.to_string())
    })
    .await
}

async fn dist_mem_linear(args: &Args) -> Result<serde_json::Value, String> {
    let runs: usize = args.get("runs", 2_000)?;
    let workers: usize = args.get("workers", 4)?;
    let backend = InMemoryBackend::new();
    let wf = linear();
    let orchestrator = OrchestratorBuilder::new()
        .workflow(wf.clone())
        .backend(backend.clone())
        .build()
        .map_err(|e| e.to_string())?;
    let worker = WorkerBuilder::new()
        .workflow(wf)
        .backend(backend)
        .chain_steps(workloads::chains(args)?)
        .build()
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut ids = Vec::with_capacity(runs);
    for _ in 0..runs {
        ids.push(
            orchestrator
                .start_run(&WorkflowCtx::new(()), 0)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let mut pool = WorkerPool::new(worker, workers).with_grace_period(Duration::from_secs(1));
    pool.start();
    let mut completed = 0;
    let mut latencies = Vec::with_capacity(runs);
    // The last run started is about the last to finish: waiting for it first, then reading
    // the others (finished by then, or waited for in turn), wakes this driver about once
    // instead of once per run (its watch follows one run).
    let order = ids
        .last()
        .into_iter()
        .chain(&ids[..ids.len().saturating_sub(1)]);
    for id in order {
        let info = orchestrator
            .wait_for_completion(id, Duration::from_secs(60))
            .await
            .map_err(|e| e.to_string())?;
        if info.status == RunStatus::Completed && info.output == Some(json!(3)) {
            completed += 1;
        }
        if let Some(done) = info.finished_at {
            let lat = done.duration_since(info.started_at).unwrap_or_default();
            latencies.push(lat.as_secs_f64() * 1e3);
        }
    }
    let wall = started.elapsed().as_secs_f64();
    pool.try_stop().await.map_err(|e| e.to_string())?;
    latencies.sort_by(f64::total_cmp);
    let steps = completed * 3;
    Ok(json!({
        "framework": framework(),
        "workload": "dist-mem-linear",
        "runs": runs,
        "completed": completed,
        "steps": steps,
        "wall_s": wall,
        "steps_per_s": steps as f64 / wall,
        "lat_p50_ms": percentile(&latencies, 50.0),
        "lat_p99_ms": percentile(&latencies, 99.0),
    }))
}

mod crash;
mod local_linear;
mod pg_workloads;
mod redis_workloads;
mod workloads;

fn main() -> std::process::ExitCode {
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    let threads = match args.get(
        "threads",
        std::thread::available_parallelism().map_or(2, |n| n.get()),
    ) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start tokio: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let on_main = match args.get::<String>("driver", "task".to_owned()).as_deref() {
        Ok("task") => false,
        Ok("main") => true,
        Ok(other) => {
            eprintln!("--driver: `{other}` is neither task nor main");
            return std::process::ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    let result = if on_main {
        runtime.block_on(workload(args))
    } else {
        // A driver on the main thread is woken by the runtime's threads across threads on
        // every reply (~50 µs each on a busy 2-core machine): a latency figure measured there
        // is mostly that.
        runtime.block_on(async {
            tokio::spawn(workload(args))
                .await
                .unwrap_or_else(|e| Err(format!("the workload's task failed: {e}")))
        })
    };
    match result {
        Ok(line) => {
            println!("{line}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::ExitCode::from(1)
        }
    }
}

/// Runs the workload `args` names; its JSON line, or what went wrong.
async fn workload(args: Args) -> Result<serde_json::Value, String> {
    match args.workload.as_str() {
        "local-linear" => local_linear(&args).await,
        "dist-mem-linear" => dist_mem_linear(&args).await,
        "dist-mem-latency" => workloads::latency(&workloads::in_memory(), &args).await,
        "dist-redis-linear" => {
            workloads::linear(&redis_workloads::target(&args).await?, &args).await
        }
        "dist-redis-fanout" => {
            workloads::fanout(&redis_workloads::target(&args).await?, &args).await
        }
        "dist-redis-bulk" => workloads::bulk(&redis_workloads::target(&args).await?, &args).await,
        "dist-redis-latency" => {
            workloads::latency(&redis_workloads::target(&args).await?, &args).await
        }
        "dist-pg-linear" => workloads::linear(&pg_workloads::target(&args).await?, &args).await,
        "dist-pg-fanout" => workloads::fanout(&pg_workloads::target(&args).await?, &args).await,
        "dist-pg-bulk" => workloads::bulk(&pg_workloads::target(&args).await?, &args).await,
        "dist-pg-latency" => workloads::latency(&pg_workloads::target(&args).await?, &args).await,
        "crash" => crash::driver(&args).await,
        "worker" => crash::worker(&args).await,
        other => Err(format!("unknown workload `{other}`")),
    }
}
