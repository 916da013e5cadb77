//! Timeout: a deadline for the whole run, whatever step it is in.
//!
//! Run with `cargo run --example timeout`.

use std::time::Duration;

use floxide::*;

node! {
    /// A step that takes `ms` milliseconds.
    pub struct Step { ms: u64 };
    input = u32;
    output = u32;
    |_ctx, n| {
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        Ok(Transition::Next(n + 1))
    }
}

workflow! {
    /// Four steps in a row.
    pub struct Pipeline { a: Step, b: Step, c: Step, d: Step }
    start = a;
    edges { a => [b]; b => [c]; c => [d]; d => []; }
}

async fn demo(deadline_ms: u64) -> Result<u32, FloxideError> {
    let step = Step { ms: 150 };
    let wf = Pipeline {
        a: step.clone(),
        b: step.clone(),
        c: step.clone(),
        d: step,
    };
    let mut ctx = WorkflowCtx::new(());
    ctx.set_timeout(Duration::from_millis(deadline_ms));
    let result = wf.run(&ctx, 0).await;
    println!("4 × 150 ms under a {deadline_ms} ms deadline: {result:?}");
    result
}

#[tokio::main]
async fn main() {
    let _ = demo(200).await;
    let _ = demo(1000).await;
}

#[cfg(test)]
mod tests {
    use floxide::FloxideError;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn the_deadline_covers_the_whole_run() {
        assert_eq!(
            super::demo(200).await,
            Err(FloxideError::Timeout(Duration::from_millis(200)))
        );
        assert_eq!(super::demo(1000).await, Ok(4));
    }
}
