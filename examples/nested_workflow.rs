//! Nested workflow: a whole workflow used as one node of another, with `CompositeNode`.
//!
//! The inner run stops with the outer one: cancelling the outer run, or reaching its
//! deadline, interrupts the inner workflow wherever it is.
//!
//! Run with `cargo run --example nested_workflow`.

use std::time::Duration;

use floxide::*;

node! {
    /// Trims the text.
    pub struct Trim {};
    input = String;
    output = String;
    |_ctx, text| { Ok(Transition::Next(text.trim().to_owned())) }
}

node! {
    /// Lower-cases the text, taking `ms` milliseconds.
    pub struct Lower { ms: u64 };
    input = String;
    output = String;
    |_ctx, text| {
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        Ok(Transition::Next(text.to_lowercase()))
    }
}

workflow! {
    /// The inner workflow: trim, then lower-case.
    pub struct Normalize { trim: Trim, lower: Lower }
    start = trim;
    edges { trim => [lower]; lower => []; }
}

node! {
    /// Counts the words.
    pub struct Count {};
    input = String;
    output = usize;
    |_ctx, text| { Ok(Transition::Next(text.split_whitespace().count())) }
}

workflow! {
    /// The outer workflow: normalize (a whole workflow), then count.
    pub struct CountWords { normalize: CompositeNode<(), Normalize>, count: Count }
    start = normalize;
    edges { normalize => [count]; count => []; }
}

/// Runs the outer workflow; the inner one's second step takes `inner_ms`, and the outer run
/// has a deadline of `deadline_ms`.
async fn demo(inner_ms: u64, deadline_ms: u64) -> Result<usize, FloxideError> {
    let mut ctx = WorkflowCtx::new(());
    ctx.set_timeout(Duration::from_millis(deadline_ms));
    let inner = Normalize {
        trim: Trim {},
        lower: Lower { ms: inner_ms },
    };
    // The inner workflow gets its own control block, without deadline: only the outer run's
    // deadline can stop it.
    let wf = CountWords {
        normalize: CompositeNode::new(inner, &WorkflowCtx::new(())),
        count: Count {},
    };
    let result = wf
        .run(&ctx, "  Workflows All The Way Down ".to_owned())
        .await;
    println!("inner step {inner_ms} ms, outer deadline {deadline_ms} ms: {result:?}");
    result
}

#[tokio::main]
async fn main() {
    let _ = demo(10, 1000).await;
    let _ = demo(5000, 100).await;
}

#[cfg(test)]
mod tests {
    use floxide::FloxideError;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn the_inner_workflow_runs_as_a_node() {
        assert_eq!(super::demo(10, 1000).await, Ok(5));
    }

    #[tokio::test(start_paused = true)]
    async fn the_outer_deadline_interrupts_the_inner_run() {
        let started = tokio::time::Instant::now();
        assert_eq!(
            super::demo(5000, 100).await,
            Err(FloxideError::Timeout(Duration::from_millis(100)))
        );
        assert_eq!(started.elapsed(), Duration::from_millis(100));
    }
}
