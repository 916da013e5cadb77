//! Source: a channel feeds a workflow, one run per item; here a timer sends a tick every 50 ms.
//!
//! Run with `cargo run --example source_timer`.

use std::time::Duration;

use floxide::*;
use serde::{Deserialize, Serialize};

/// The context, shared by every run: the samples taken so far.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Samples {
    /// One entry per tick: `(tick, reading)`.
    pub taken: EventLog<(u32, u32)>,
}

node! {
    /// Takes a reading (simulated) for a tick.
    pub struct Sample {};
    context = Samples;
    input = u32;
    output = (u32, u32);
    |_ctx, tick| { Ok(Transition::Next((tick, tick * 7 % 10))) }
}

node! {
    /// Records the reading in the shared context.
    pub struct Record {};
    context = Samples;
    input = (u32, u32);
    output = u32;
    |ctx, (tick, reading)| {
        ctx.taken.append((tick, reading));
        Ok(Transition::Next(reading))
    }
}

workflow! {
    /// Sample, then record.
    pub struct OnTick { sample: Sample, record: Record }
    context = Samples;
    start = sample;
    edges { sample => [record]; record => []; }
}

/// Sends `ticks` ticks, 50 ms apart, and runs the workflow on each.
async fn demo(ticks: u32) -> Result<(SourceSummary, Vec<(u32, u32)>), FloxideError> {
    let (tx, ticks_source) = source::<Samples, u32>(8);
    tokio::spawn(async move {
        let mut timer = tokio::time::interval(Duration::from_millis(50));
        for tick in 0..ticks {
            timer.tick().await;
            if tx.send(tick).await.is_err() {
                break;
            }
        }
        // Dropping `tx` here ends the source once the last run has finished.
    });
    let ctx = WorkflowCtx::new(Samples::default());
    let wf = OnTick {
        sample: Sample {},
        record: Record {},
    };
    let summary = ticks_source.run(&wf, &ctx).await?;
    let taken: Vec<(u32, u32)> = ctx.store.taken.events().collect();
    println!("{summary:?}; samples {taken:?}");
    Ok((summary, taken))
}

#[tokio::main]
async fn main() -> Result<(), FloxideError> {
    demo(5).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use floxide::SourceSummary;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn one_run_per_tick() {
        let started = tokio::time::Instant::now();
        let (summary, taken) = super::demo(6).await.unwrap();
        assert_eq!(
            summary,
            SourceSummary {
                completed: 6,
                failed: 0
            }
        );
        assert_eq!(taken, [(0, 0), (1, 7), (2, 4), (3, 1), (4, 8), (5, 5)]);
        // The first tick fires at once, the sixth 5 × 50 ms later.
        assert_eq!(started.elapsed(), Duration::from_millis(250));
    }
}
