//! `on_failure` on a plain node and on a branching node, and `#[retry = policy]`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use floxide::*;
use serde::{Deserialize, Serialize};

node! {
    /// Fails its first `failures` calls, then doubles its input.
    pub struct Flaky { failures: u32, calls: Arc<AtomicU32> };
    input = u32;
    output = u32;
    |_ctx, n| {
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.failures {
            return Err(FloxideError::Generic("flaky".into()));
        }
        Ok(Transition::Next(n * 2))
    }
}

node! {
    pub struct Recover {};
    input = u32;
    output = u32;
    |_ctx, n| { Ok(Transition::Next(n + 1000)) }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Parity {
    Even(u32),
    Odd(u32),
}

node! {
    /// Aborts on zero, otherwise classifies its input.
    pub struct Split {};
    input = u32;
    output = Parity;
    |_ctx, n| {
        if n == 0 {
            return Ok(Transition::Abort(FloxideError::Generic("zero".into())));
        }
        Ok(Transition::Next(if n % 2 == 0 { Parity::Even(n) } else { Parity::Odd(n) }))
    }
}

node! {
    pub struct Tag { tag: &'static str };
    input = u32;
    output = String;
    |_ctx, n| { Ok(Transition::Next(format!("{}:{n}", self.tag))) }
}

workflow! {
    /// A retried node with a fallback on a plain entry.
    pub struct Plain {
        #[retry = policy]
        flaky: Flaky,
        recover: Recover,
        policy: RetryPolicy,
    }
    start = flaky;
    edges {
        flaky => [];
        flaky on_failure => [recover];
        recover => [];
    }
}

workflow! {
    /// A fallback on a branching node, next to its arms.
    pub struct Branching {
        split: Split,
        even: Tag,
        odd: Tag,
        fallback: Tag,
    }
    start = split;
    edges {
        split => {
            Parity::Even(n) => [even];
            Parity::Odd(n) => [odd];
        };
        split on_failure => { [fallback] };
        even => [];
        odd => [];
        fallback => [];
    }
}

fn plain(failures: u32, calls: &Arc<AtomicU32>) -> Plain {
    Plain {
        flaky: Flaky {
            failures,
            calls: Arc::clone(calls),
        },
        recover: Recover {},
        policy: RetryPolicy::new(
            3,
            Duration::from_millis(1),
            Duration::from_millis(5),
            BackoffStrategy::Exponential,
            RetryError::Generic,
        ),
    }
}

#[tokio::main]
async fn main() {
    let ctx = WorkflowCtx::new(());

    // Two failures are retried away (three attempts in all).
    let calls = Arc::new(AtomicU32::new(0));
    assert_eq!(plain(2, &calls).run(&ctx, 7).await.unwrap(), 14);
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // Three failures exhaust the policy: the fallback gets the input.
    let calls = Arc::new(AtomicU32::new(0));
    assert_eq!(plain(3, &calls).run(&ctx, 7).await.unwrap(), 1007);
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    let branching = Branching {
        split: Split {},
        even: Tag { tag: "even" },
        odd: Tag { tag: "odd" },
        fallback: Tag { tag: "fallback" },
    };
    assert_eq!(branching.run(&ctx, 4).await.unwrap(), "even:4");
    assert_eq!(branching.run(&ctx, 5).await.unwrap(), "odd:5");
    assert_eq!(branching.run(&ctx, 0).await.unwrap(), "fallback:0");
}
