//! Cancellation: another task cancels a running workflow; no further step starts.
//!
//! Run with `cargo run --example cancellation`.

use std::time::Duration;

use floxide::*;
use serde::{Deserialize, Serialize};

/// The context records which steps ran.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    /// Names of the finished steps.
    pub done: EventLog<u32>,
}

node! {
    /// A step that works for 50 ms.
    pub struct Work {};
    context = Progress;
    input = u32;
    output = u32;
    |ctx, step| {
        tokio::time::sleep(Duration::from_millis(50)).await;
        ctx.done.append(step);
        Ok(Transition::Next(step + 1))
    }
}

workflow! {
    /// Five steps of work in a row.
    pub struct Job { s1: Work, s2: Work, s3: Work, s4: Work, s5: Work }
    context = Progress;
    start = s1;
    edges { s1 => [s2]; s2 => [s3]; s3 => [s4]; s4 => [s5]; s5 => []; }
}

async fn demo() -> (Result<u32, FloxideError>, Vec<u32>) {
    let wf = Job {
        s1: Work {},
        s2: Work {},
        s3: Work {},
        s4: Work {},
        s5: Work {},
    };
    let ctx = WorkflowCtx::new(Progress::default());
    let handle = ctx.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(120)).await;
        println!("cancelling");
        handle.cancel();
    });
    let result = wf.run(&ctx, 1).await;
    let done: Vec<u32> = ctx.store.done.events().collect();
    println!("result: {result:?}; finished steps: {done:?}");
    (result, done)
}

#[tokio::main]
async fn main() {
    let _ = demo().await;
}

#[cfg(test)]
mod tests {
    use floxide::FloxideError;

    #[tokio::test(start_paused = true)]
    async fn the_run_stops_at_the_cancel() {
        let (result, done) = super::demo().await;
        assert_eq!(result, Err(FloxideError::Cancelled));
        assert_eq!(done, [1, 2]);
    }
}
