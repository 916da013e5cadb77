//! Retry: a flaky node wrapped with `with_retry`, retried with exponential backoff and jitter.
//!
//! `with_retry(node, policy)` returns a `RetryNode`, which is itself a node: a layer around
//! the flaky one that re-runs it in place, waiting the policy's backoff between attempts.
//! Here the wrapped node is a field of a workflow; it could as well be called on its own.
//!
//! Run with `cargo run --example retry`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use floxide::*;
use tokio::time::Instant;

node! {
    /// Fetches a price from a service that is down for its first `outages` calls. Records
    /// when each attempt started, counted from `started`.
    pub struct FetchPrice { outages: usize, started: Instant, attempts: Arc<Mutex<Vec<Duration>>> };
    input = String;
    output = u32;
    |_ctx, symbol| {
        let at = self.started.elapsed();
        let attempt = {
            let mut attempts = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
            attempts.push(at);
            attempts.len()
        };
        if attempt <= self.outages {
            println!("  attempt {attempt} at {at:>9.3?}: service unavailable");
            return Err(FloxideError::Generic(format!("service unavailable (call {attempt})")));
        }
        println!("  attempt {attempt} at {at:>9.3?}: ok");
        Ok(Transition::Next(symbol.len() as u32 * 100))
    }
}

node! {
    /// Formats the price.
    pub struct Quote {};
    input = u32;
    output = String;
    |_ctx, cents| { Ok(Transition::Next(format!("{}.{:02} EUR", cents / 100, cents % 100))) }
}

workflow! {
    /// Fetch the price (retried), then format it.
    pub struct PriceCheck { fetch: RetryNode<FetchPrice>, quote: Quote }
    start = fetch;
    edges { fetch => [quote]; quote => []; }
}

/// Five attempts in all; waits of 100 ms, 200 ms, 400 ms, 800 ms (capped at 1 s), each plus
/// up to 20 ms of random jitter; only `Generic` errors are retried.
fn policy() -> RetryPolicy {
    RetryPolicy::new(
        5,
        Duration::from_millis(100),
        Duration::from_secs(1),
        BackoffStrategy::Exponential,
        RetryError::Generic,
    )
    .with_jitter(Duration::from_millis(20))
}

/// Runs the workflow against a service that is down for `outages` calls; returns the result
/// and when each attempt started.
async fn demo(outages: usize) -> (Result<String, FloxideError>, Vec<Duration>) {
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let fetch = FetchPrice {
        outages,
        started: Instant::now(),
        attempts: attempts.clone(),
    };
    let wf = PriceCheck {
        fetch: with_retry(fetch, policy()),
        quote: Quote {},
    };
    println!("service down for {outages} calls:");
    let result = wf.run(&WorkflowCtx::new(()), "FLOX".to_owned()).await;
    println!("  => {result:?}");
    let attempts = attempts.lock().unwrap_or_else(|e| e.into_inner()).clone();
    (result, attempts)
}

#[tokio::main]
async fn main() {
    let _ = demo(3).await;
    let _ = demo(10).await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use floxide::FloxideError;

    const MS: Duration = Duration::from_millis(1);

    /// Checks that attempt `i + 1` started `base` (the sum of the waits so far) plus at most
    /// 20 ms of jitter per wait after the first attempt.
    fn assert_schedule(attempts: &[Duration], bases_ms: &[u32]) {
        assert_eq!(attempts.len(), bases_ms.len());
        for (i, (at, base)) in attempts.iter().zip(bases_ms).enumerate() {
            let min = *base * MS;
            let max = min + 20 * MS * i as u32;
            assert!(
                *at >= min && *at <= max,
                "attempt {} at {at:?}, expected {min:?}..={max:?}",
                i + 1
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_fourth_attempt_succeeds() {
        let (result, attempts) = super::demo(3).await;
        assert_eq!(result, Ok("4.00 EUR".to_owned()));
        // Waits 100, 200, 400 ms (virtual time), each with up to 20 ms of jitter.
        assert_schedule(&attempts, &[0, 100, 300, 700]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_policy_gives_up_after_five_attempts() {
        let (result, attempts) = super::demo(10).await;
        assert_eq!(
            result,
            Err(FloxideError::Generic(
                "service unavailable (call 5)".to_owned()
            ))
        );
        assert_schedule(&attempts, &[0, 100, 300, 700, 1500]);
    }
}
