//! Distributed: an orchestrator and a pool of workers share one backend (here in memory;
//! with `floxide-redis` the workers can live in other processes and machines).
//!
//! The workflow splits a document into chunks, counts the words of each chunk in parallel on
//! whichever worker takes it, and joins the counts: the join node holds until every chunk has
//! reported, so exactly one join fires. The orchestrator watches the run and inspects its
//! metrics, context and workers.
//!
//! Run with `cargo run --example distributed`.

use std::collections::BTreeMap;
use std::time::Duration;

use floxide::*;
use serde::{Deserialize, Serialize};

/// The shared state of a run: each chunk's word count, merged across workers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, Merge)]
pub struct Counts {
    /// Word count per chunk index (a map of sets merges by union).
    pub per_chunk: SharedState<BTreeMap<u32, std::collections::BTreeSet<usize>>>,
    /// The chunks the join has seen: each join step adds its own, so only the step that
    /// completes the set sees all of them.
    pub joined: SharedState<std::collections::BTreeSet<u32>>,
    /// What happened, in a clock-independent order.
    pub log: EventLog<String>,
}

node! {
    /// Splits the text into chunks of `size` lines.
    pub struct Chunk { size: usize };
    context = Counts;
    input = String;
    output = (u32, String);
    |_ctx, text| {
        let lines: Vec<&str> = text.lines().collect();
        let chunks = lines
            .chunks(self.size)
            .enumerate()
            .map(|(i, c)| (i as u32, c.join("\n")))
            .collect();
        Ok(Transition::NextAll(chunks))
    }
}

node! {
    /// Counts one chunk's words and records the count.
    pub struct CountWords {};
    context = Counts;
    input = (u32, String);
    output = u32;
    |ctx, (index, chunk)| {
        let words = chunk.split_whitespace().count();
        tokio::time::sleep(Duration::from_millis(20)).await; // some real work
        ctx.per_chunk.get().await.entry(index).or_default().insert(words);
        let worker = floxide::current_step().map(|s| s.worker.to_string()).unwrap_or_default();
        ctx.log.append(format!("chunk {index}: {words} words on {worker}"));
        Ok(Transition::Next(index))
    }
}

node! {
    /// Holds until all `chunks` counts are in, then sums them (fires once).
    pub struct Total { chunks: usize };
    context = Counts;
    input = u32;
    output = usize;
    |ctx, index| {
        let joined = {
            let mut joined = ctx.joined.get().await;
            joined.insert(index);
            joined.len()
        };
        if joined < self.chunks {
            // A held step commits only if the context did not change since it was read;
            // otherwise it runs again on the fresh context, so the last arrival sees all.
            return Ok(Transition::Hold);
        }
        let counts = ctx.per_chunk.get().await;
        Ok(Transition::Next(counts.values().flat_map(|s| s.iter()).sum()))
    }
}

workflow! {
    /// chunk → count (in parallel) → total (join).
    pub struct WordCount { chunk: Chunk, count: CountWords, total: Total }
    context = Counts;
    start = chunk;
    edges { chunk => [count]; count => [total]; total => []; }
}

const TEXT: &str = "the quick brown fox\njumps over\nthe lazy dog\nand runs away\nfast\ninto the woods\nwhere it hides\nuntil dark";

async fn demo() -> Result<(usize, RunInfo, RunMetrics, Vec<String>), FloxideError> {
    let lines = TEXT.lines().count();
    let wf = WordCount {
        chunk: Chunk { size: 2 },
        count: CountWords {},
        total: Total {
            chunks: lines.div_ceil(2),
        },
    };
    let backend = InMemoryBackend::new();
    let orchestrator = OrchestratorBuilder::new()
        .workflow(wf.clone())
        .backend(backend.clone())
        .build()?;
    let worker = WorkerBuilder::new().workflow(wf).backend(backend).build()?;
    let mut pool = WorkerPool::new(worker, 4);
    pool.start();

    let run = orchestrator
        .start_run(&WorkflowCtx::new(Counts::default()), TEXT.to_owned())
        .await?;
    println!("started run {run}");
    let total = orchestrator
        .wait_for_output(&run, Duration::from_secs(10))
        .await?;
    let info = orchestrator.run_info(&run).await?;
    let metrics = orchestrator.metrics(&run).await?;
    let context = orchestrator.context(&run).await?;
    let log: Vec<String> = context.log.events().collect();
    println!("status: {:?}, total words: {total}", info.status);
    println!(
        "steps: {} completed, {} failed, {} retried",
        metrics.completed, metrics.failed, metrics.retries
    );
    for (node, timing) in &metrics.per_node {
        println!(
            "  {node}: {} steps, {:?} in all",
            timing.count, timing.total
        );
    }
    for line in &log {
        println!("  {line}");
    }
    for health in pool.try_health().await? {
        println!("worker {}: {:?}", health.worker_id, health.status);
    }
    pool.try_stop().await?;
    Ok((total, info, metrics, log))
}

#[tokio::main]
async fn main() -> Result<(), FloxideError> {
    demo().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_split_join_run_completes_on_a_pool() {
        let (total, info, metrics, log) = super::demo().await.unwrap();
        assert_eq!(total, super::TEXT.split_whitespace().count());
        assert_eq!(info.outputs.len(), 1, "the join fired exactly once");
        assert_eq!(log.len(), 4, "one count per chunk: {log:?}");
        // 1 chunk + 4 counts + 4 joins (3 held, 1 fired) committed.
        assert_eq!(metrics.completed, 9);
        assert_eq!(metrics.per_node["total"].count, 4);
    }
}
