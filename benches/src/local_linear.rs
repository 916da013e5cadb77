//! `local-linear`'s measurement: 1,000 warm-up runs, then `runs` runs one after another, each
//! checked to return 3, timed as a whole. `benches/v3-local-linear` includes this file too, so
//! that ours and Floxide 3.2.2 are measured by the same loop.

use std::future::Future;
use std::time::Instant;

/// Times `runs` calls of `run` (after the warm-up) and returns the workload's JSON line.
pub(crate) async fn measure<F, Fut>(
    framework: String,
    runs: u64,
    mut run: F,
) -> Result<serde_json::Value, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<u64, String>>,
{
    for _ in 0..1_000 {
        check(run().await?)?;
    }
    let started = Instant::now();
    for _ in 0..runs {
        check(run().await?)?;
    }
    let wall = started.elapsed().as_secs_f64();
    let steps = runs * 3;
    Ok(serde_json::json!({
        "framework": framework,
        "workload": "local-linear",
        "runs": runs,
        "steps": steps,
        "wall_s": wall,
        "runs_per_s": runs as f64 / wall,
        "steps_per_s": steps as f64 / wall,
        "ns_per_step": wall * 1e9 / steps as f64,
    }))
}

fn check(out: u64) -> Result<(), String> {
    match out {
        3 => Ok(()),
        other => Err(format!("wrong result {other}")),
    }
}
