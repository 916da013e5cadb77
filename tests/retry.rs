//! Retry policies, `with_retry` and the `#[retry = field]` attribute.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use floxide::*;

const MS: Duration = Duration::from_millis(1);

fn policy(max: usize, strategy: BackoffStrategy, errors: RetryError) -> RetryPolicy {
    RetryPolicy::new(max, 100 * MS, 350 * MS, strategy, errors)
}

#[test]
fn backoff_sequences_are_exact_without_jitter() {
    let linear = policy(10, BackoffStrategy::Linear, RetryError::All);
    let got: Vec<_> = (1..=5).map(|a| linear.backoff_duration(a)).collect();
    assert_eq!(got, [100 * MS, 200 * MS, 300 * MS, 350 * MS, 350 * MS]);

    let exp = policy(10, BackoffStrategy::Exponential, RetryError::All);
    let got: Vec<_> = (1..=5).map(|a| exp.backoff_duration(a)).collect();
    assert_eq!(got, [100 * MS, 200 * MS, 350 * MS, 350 * MS, 350 * MS]);

    // Huge attempt numbers saturate at the cap instead of overflowing.
    assert_eq!(exp.backoff_duration(10_000), 350 * MS);
    assert_eq!(linear.backoff_duration(usize::MAX), 350 * MS);
}

#[test]
fn jitter_stays_within_its_bound_and_varies() {
    let p = policy(10, BackoffStrategy::Exponential, RetryError::All).with_jitter(50 * MS);
    assert_eq!(p.jitter, Some(50 * MS));
    let samples: Vec<_> = (0..500).map(|_| p.backoff_duration(2)).collect();
    for s in &samples {
        assert!(
            *s >= 200 * MS && *s <= 250 * MS,
            "{s:?} outside [200ms, 250ms]"
        );
    }
    let distinct: std::collections::BTreeSet<_> = samples.iter().collect();
    assert!(
        distinct.len() > 10,
        "jitter is not random: {} distinct values",
        distinct.len()
    );
}

#[test]
fn should_retry_follows_the_error_class_and_the_attempt_budget() {
    let generic = FloxideError::Generic("x".into());
    let timeout = FloxideError::Timeout(MS);
    let cancelled = FloxideError::Cancelled;
    let other = FloxideError::NotStarted;
    let cases = [
        (RetryError::All, [true, true, true, true]),
        (RetryError::Generic, [true, false, false, false]),
        (RetryError::Timeout, [false, true, false, false]),
        (RetryError::Cancelled, [false, false, true, false]),
    ];
    for (class, expected) in cases {
        let p = policy(3, BackoffStrategy::Linear, class);
        let got = [&generic, &timeout, &cancelled, &other].map(|e| p.should_retry(e, 1));
        assert_eq!(got, expected, "{class:?}");
        assert!(!p.should_retry(&generic, 3) || class != RetryError::All);
        assert!(!p.should_retry(&generic, 3), "attempt 3 of 3 is the last");
    }
}

#[test]
fn the_default_policy() {
    let p = RetryPolicy::default();
    assert_eq!(p.max_attempts, 3);
    assert_eq!(p.strategy, BackoffStrategy::Exponential);
    assert_eq!(p.retry_error, RetryError::Generic);
    assert_eq!(p.jitter, None);
    assert!(p.initial_backoff <= p.max_backoff);
}

/// Fails its first `failures` executions (with Err or Abort), then succeeds.
#[derive(Debug, Clone)]
pub struct Flaky {
    failures: usize,
    abort: bool,
    calls: Arc<AtomicUsize>,
}

impl Flaky {
    fn new(failures: usize, abort: bool) -> Self {
        Flaky {
            failures,
            abort,
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Node for Flaky {
    type Input = u32;
    type Output = u32;
    async fn process(&self, _ctx: &(), n: u32) -> Result<Transition<u32>, FloxideError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if call <= self.failures {
            let e = FloxideError::Generic(format!("failure {call}"));
            return if self.abort {
                Ok(Transition::Abort(e))
            } else {
                Err(e)
            };
        }
        Ok(Transition::Next(n + 1))
    }
}

#[tokio::test(start_paused = true)]
async fn with_retry_retries_until_success_waiting_each_backoff() {
    let flaky = Flaky::new(2, false);
    let node = with_retry(
        flaky.clone(),
        policy(3, BackoffStrategy::Linear, RetryError::Generic),
    );
    let started = tokio::time::Instant::now();
    let out = node.process(&(), 1).await.unwrap();
    assert_eq!(out, Transition::Next(2));
    assert_eq!(flaky.calls(), 3);
    assert_eq!(
        started.elapsed(),
        300 * MS,
        "waited 100 ms, then 200 ms (virtual clock)"
    );
}

#[tokio::test(start_paused = true)]
async fn with_retry_gives_up_after_max_attempts_with_the_last_error() {
    let flaky = Flaky::new(5, false);
    let node = with_retry(
        flaky.clone(),
        policy(2, BackoffStrategy::Linear, RetryError::Generic),
    );
    let err = node.process(&(), 1).await.unwrap_err();
    assert_eq!(err, FloxideError::Generic("failure 2".into()));
    assert_eq!(flaky.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn abort_is_not_retried_unless_the_policy_retries_all_errors() {
    let flaky = Flaky::new(1, true);
    let node = with_retry(
        flaky.clone(),
        policy(3, BackoffStrategy::Linear, RetryError::Generic),
    );
    assert_eq!(
        node.process(&(), 1).await.unwrap_err(),
        FloxideError::Generic("failure 1".into())
    );
    assert_eq!(flaky.calls(), 1);

    let flaky = Flaky::new(1, true);
    let node = with_retry(
        flaky.clone(),
        policy(3, BackoffStrategy::Linear, RetryError::All),
    );
    assert_eq!(node.process(&(), 1).await.unwrap(), Transition::Next(2));
    assert_eq!(flaky.calls(), 2);
}

workflow! {
    pub struct Retried {
        #[retry = policy]
        flaky: Flaky,
        policy: RetryPolicy,
    }
    start = flaky;
    edges { flaky => []; }
}

#[tokio::test(start_paused = true)]
async fn the_retry_attribute_retries_a_node_of_the_workflow() {
    let flaky = Flaky::new(2, false);
    let wf = Retried {
        flaky: flaky.clone(),
        policy: policy(3, BackoffStrategy::Exponential, RetryError::Generic),
    };
    assert_eq!(wf.run(&WorkflowCtx::new(()), 10).await.unwrap(), 11);
    assert_eq!(flaky.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_and_cancellation_interrupt_a_retry_wait() {
    let slow_policy = RetryPolicy::new(
        5,
        Duration::from_secs(60),
        Duration::from_secs(60),
        BackoffStrategy::Linear,
        RetryError::Generic,
    );
    let flaky = Flaky::new(10, false);
    let wf = Retried {
        flaky: flaky.clone(),
        policy: slow_policy,
    };
    let mut ctx = WorkflowCtx::new(());
    ctx.set_timeout(Duration::from_secs(1));
    let started = tokio::time::Instant::now();
    assert_eq!(
        wf.run(&ctx, 0).await,
        Err(FloxideError::Timeout(Duration::from_secs(1)))
    );
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(1),
        "the 60 s wait was cut short"
    );
    assert_eq!(flaky.calls(), 1);

    let ctx = WorkflowCtx::new(());
    let canceller = ctx.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        canceller.cancel();
    });
    let started = tokio::time::Instant::now();
    assert_eq!(wf.run(&ctx, 0).await, Err(FloxideError::Cancelled));
    assert_eq!(started.elapsed(), Duration::from_secs(2));
}
