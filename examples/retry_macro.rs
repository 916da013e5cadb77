//! Retry in `workflow!`: the `#[retry = policy]` field attribute, with an `on_failure` fallback
//! for when the retries run out.
//!
//! `send` runs under the policy held in the workflow's field `policy`. A failing attempt
//! (`Err`) is retried after the policy's backoff; when the last attempt fails, the fallback
//! `queue` receives `send`'s input and the run goes on from there. An `Abort` is not retried
//! by a policy that retries only `Generic` errors: it goes to the fallback at once.
//!
//! Run with `cargo run --example retry_macro`.

use std::time::Duration;

use floxide::*;
use serde::{Deserialize, Serialize};

/// The context: what happened, in order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outbox {
    /// One line per attempt and per outcome.
    pub log: EventLog<String>,
}

impl Outbox {
    /// How many times `send` ran.
    fn send_attempts(&self) -> usize {
        self.log
            .fold(0, |n, line| n + usize::from(line.starts_with("send")))
    }
}

node! {
    /// Writes the message for a recipient.
    pub struct Render {};
    context = Outbox;
    input = String;
    output = String;
    |_ctx, to| { Ok(Transition::Next(format!("to {to}: your order has shipped"))) }
}

node! {
    /// Sends an e-mail through a server that is down for its first `outages` calls. A message
    /// without an address cannot be sent at all: that is an `Abort`, not worth retrying.
    pub struct SendEmail { outages: usize };
    context = Outbox;
    input = String;
    output = String;
    |ctx, message| {
        let attempt = ctx.send_attempts() + 1;
        if !message.contains('@') {
            ctx.log.append(format!("send attempt {attempt}: no address, aborting"));
            return Ok(Transition::Abort(FloxideError::generic("no e-mail address")));
        }
        if attempt <= self.outages {
            ctx.log.append(format!("send attempt {attempt}: server down"));
            return Err(FloxideError::generic("mail server down"));
        }
        ctx.log.append(format!("send attempt {attempt}: delivered"));
        Ok(Transition::Next(format!("delivered ({message})")))
    }
}

node! {
    /// Confirms a delivery.
    pub struct Confirm {};
    context = Outbox;
    input = String;
    output = String;
    |_ctx, receipt| { Ok(Transition::Next(receipt)) }
}

node! {
    /// The fallback: receives the message `send` could not deliver and queues it.
    pub struct QueueForLater {};
    context = Outbox;
    input = String;
    output = String;
    |ctx, message| {
        ctx.log.append("queued for later".to_owned());
        Ok(Transition::Next(format!("queued ({message})")))
    }
}

workflow! {
    /// Render, send (retried), confirm; queue the message when sending fails for good.
    pub struct Notify {
        render: Render,
        #[retry = policy]
        send: SendEmail,
        confirm: Confirm,
        queue: QueueForLater,
        policy: RetryPolicy,
    }
    context = Outbox;
    start = render;
    edges {
        render => [send];
        send => [confirm];
        send on_failure => [queue];
        confirm => [];
        queue => [];
    }
}

/// What one run came to.
#[derive(Debug)]
struct Outcome {
    output: String,
    attempts: usize,
    log: Vec<String>,
    took: Duration,
}

/// Notifies `to` through a server that is down for `outages` calls.
async fn demo(to: &str, outages: usize) -> Result<Outcome, FloxideError> {
    let wf = Notify {
        render: Render {},
        send: SendEmail { outages },
        confirm: Confirm {},
        queue: QueueForLater {},
        // Three attempts in all, 50 ms then 100 ms apart; only `Generic` errors are retried.
        policy: RetryPolicy::new(
            3,
            Duration::from_millis(50),
            Duration::from_secs(1),
            BackoffStrategy::Linear,
            RetryError::Generic,
        ),
    };
    let ctx = WorkflowCtx::new(Outbox::default());
    let started = tokio::time::Instant::now();
    let output = wf.run(&ctx, to.to_owned()).await?;
    let outcome = Outcome {
        output,
        attempts: ctx.store.send_attempts(),
        log: ctx.store.log.events().collect(),
        took: started.elapsed(),
    };
    println!(
        "{to:?}, server down for {outages} calls: {} ({} attempt(s) in {:?})",
        outcome.output, outcome.attempts, outcome.took
    );
    for line in &outcome.log {
        println!("  {line}");
    }
    Ok(outcome)
}

#[tokio::main]
async fn main() -> Result<(), FloxideError> {
    demo("ada@example.org", 2).await?;
    demo("ada@example.org", 5).await?;
    demo("ada", 0).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn the_third_attempt_delivers() {
        let out = super::demo("ada@example.org", 2).await.unwrap();
        assert_eq!(
            out.output,
            "delivered (to ada@example.org: your order has shipped)"
        );
        assert_eq!(out.attempts, 3);
        assert_eq!(
            out.log,
            [
                "send attempt 1: server down",
                "send attempt 2: server down",
                "send attempt 3: delivered",
            ]
        );
        assert_eq!(out.took, 150 * MS, "waited 50 ms, then 100 ms");
    }

    #[tokio::test(start_paused = true)]
    async fn the_fallback_runs_when_the_retries_run_out() {
        let out = super::demo("ada@example.org", 5).await.unwrap();
        assert_eq!(
            out.output,
            "queued (to ada@example.org: your order has shipped)"
        );
        assert_eq!(out.attempts, 3);
        assert_eq!(out.log.last().map(String::as_str), Some("queued for later"));
        assert_eq!(out.took, 150 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abort_goes_to_the_fallback_without_retries() {
        let out = super::demo("ada", 0).await.unwrap();
        assert_eq!(out.output, "queued (to ada: your order has shipped)");
        assert_eq!(out.attempts, 1);
        assert_eq!(
            out.log,
            ["send attempt 1: no address, aborting", "queued for later"]
        );
        assert_eq!(out.took, Duration::ZERO);
    }
}
