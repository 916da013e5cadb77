//! [`source`]: a channel that feeds a workflow, one run per item.

use std::fmt;
use std::marker::PhantomData;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;

use crate::{Context, FloxideError, Workflow, WorkflowCtx};

/// A channel-driven source: items sent on the returned [`Sender`](mpsc::Sender) each start
/// one run of a workflow once [`Source::run`] drives it.
///
/// `capacity` bounds the items waiting to be run (senders wait when it is full); 0 is
/// treated as 1.
///
/// Feeding a workflow `wf` (the complete program is `examples/source_timer.rs`):
///
/// ```text
/// let (tx, items) = source::<(), u64>(16);
/// tokio::spawn(async move {
///     for n in 0..10 {
///         tx.send(n).await.ok();
///     }
/// }); // dropping the last sender ends the source
/// let summary = items.with_concurrency(4).run(&wf, &WorkflowCtx::new(())).await?;
/// assert_eq!(summary, SourceSummary { completed: 10, failed: 0 });
/// ```
pub fn source<C, O>(capacity: usize) -> (mpsc::Sender<O>, Source<C, O>) {
    let (tx, items) = mpsc::channel(capacity.max(1));
    let source = Source {
        items,
        concurrency: 1,
        _context: PhantomData,
    };
    (tx, source)
}

/// The receiving end of [`source`]: runs a workflow once per received item.
pub struct Source<C, O> {
    items: mpsc::Receiver<O>,
    concurrency: usize,
    _context: PhantomData<fn(&C)>,
}

/// What a source's runs came to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceSummary {
    /// Runs that returned an output.
    pub completed: usize,
    /// Runs that returned an error.
    pub failed: usize,
}

impl<C, O> Source<C, O> {
    /// Runs up to `n` workflow runs at a time (default 1, one after the other); 0 is treated
    /// as 1. The runs are futures polled by the task driving the source, not spawned tasks.
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// How many runs may be in flight at a time.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }
}

impl<C: Context, O> Source<C, O> {
    /// Runs `wf` under `ctx` once per received item, at most
    /// [`concurrency`](Self::with_concurrency) at a time, until every sender is dropped and
    /// every run has finished. Failed runs are logged (`tracing::warn!`) and counted.
    ///
    /// Each run is a separate [`Workflow::run`] with `ctx`: they share its context, and a
    /// timeout set on `ctx` applies to each run on its own.
    ///
    /// # Errors
    /// [`FloxideError::Cancelled`] once `ctx` is cancelled: the runs in flight are dropped
    /// and the items still queued are discarded.
    pub async fn run<W>(self, wf: &W, ctx: &WorkflowCtx<C>) -> Result<SourceSummary, FloxideError>
    where
        W: Workflow<C, Input = O>,
    {
        self.run_with(wf, ctx, |result| {
            if let Err(error) = result {
                tracing::warn!(workflow = wf.name(), %error, "source: a run failed");
            }
        })
        .await
    }

    /// Like [`run`](Self::run), but hands every finished run's result to `on_result` (called
    /// once per run, in the order the runs finish) instead of logging failures.
    ///
    /// # Errors
    /// [`FloxideError::Cancelled`] once `ctx` is cancelled: the runs in flight are dropped
    /// (`on_result` is not called for them) and the items still queued are discarded.
    pub async fn run_with<W, F>(
        mut self,
        wf: &W,
        ctx: &WorkflowCtx<C>,
        mut on_result: F,
    ) -> Result<SourceSummary, FloxideError>
    where
        W: Workflow<C, Input = O>,
        F: FnMut(Result<W::Output, FloxideError>),
    {
        let mut summary = SourceSummary::default();
        let mut in_flight = FuturesUnordered::new();
        let mut open = true;
        while open || !in_flight.is_empty() {
            tokio::select! {
                biased;
                () = ctx.cancelled() => return Err(FloxideError::Cancelled),
                Some(result) = in_flight.next(), if !in_flight.is_empty() => {
                    match &result {
                        Ok(_) => summary.completed += 1,
                        Err(_) => summary.failed += 1,
                    }
                    on_result(result);
                }
                item = self.items.recv(), if open && in_flight.len() < self.concurrency => {
                    match item {
                        Some(item) => in_flight.push(wf.run(ctx, item)),
                        None => open = false,
                    }
                }
            }
        }
        Ok(summary)
    }
}

impl<C, O> fmt::Debug for Source<C, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source")
            .field("concurrency", &self.concurrency)
            .field("queued", &self.items.len())
            .finish_non_exhaustive()
    }
}
