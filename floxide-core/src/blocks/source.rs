//! [`source`]: a channel that feeds a workflow, one run per item.

use std::fmt;
use std::marker::PhantomData;

use futures_util::stream::{FuturesUnordered, StreamExt};
use std::sync::Arc;

use tokio::sync::{mpsc, Mutex};

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
    (tx, Source::new(items))
}

/// The receiving end of [`source`]: runs a workflow once per received item.
///
/// Clones share the channel: items are received by whichever clone is running (one at a
/// time).
pub struct Source<C, O> {
    items: Arc<Mutex<mpsc::Receiver<O>>>,
    concurrency: usize,
    _context: PhantomData<fn(&C)>,
}

impl<C, O> Clone for Source<C, O> {
    fn clone(&self) -> Self {
        Source {
            items: Arc::clone(&self.items),
            concurrency: self.concurrency,
            _context: PhantomData,
        }
    }
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
    /// A source fed by `items` (what [`source`] builds around a new channel).
    pub fn new(items: mpsc::Receiver<O>) -> Self {
        Source {
            items: Arc::new(Mutex::new(items)),
            concurrency: 1,
            _context: PhantomData,
        }
    }

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
    /// every run has finished, or a run fails (as in Floxide 3.x): then the other runs in
    /// flight are dropped and the failure is returned. [`run_with`](Self::run_with) goes on
    /// after failures instead.
    ///
    /// Each run is a separate [`Workflow::run`] with `ctx`: they share its context, and a
    /// timeout set on `ctx` applies to each run on its own.
    ///
    /// # Errors
    /// The error of the first run that failed; [`FloxideError::Cancelled`] once `ctx` is
    /// cancelled (the runs in flight are dropped and the items still queued stay queued).
    pub async fn run<W>(&self, wf: &W, ctx: &WorkflowCtx<C>) -> Result<SourceSummary, FloxideError>
    where
        W: Workflow<C, Input = O>,
    {
        let mut first_failure = None;
        let summary = self
            .drive(wf, ctx, |result| match result {
                Ok(_) => true,
                Err(error) => {
                    first_failure = Some(error);
                    false
                }
            })
            .await?;
        first_failure.map_or(Ok(summary), Err)
    }

    /// Like [`run`](Self::run), but goes on after failed runs: every finished run's result
    /// goes to `on_result` (called once per run, in the order the runs finish), and the
    /// summary counts completed and failed runs.
    ///
    /// # Errors
    /// [`FloxideError::Cancelled`] once `ctx` is cancelled: the runs in flight are dropped
    /// (`on_result` is not called for them) and the items still queued stay queued.
    pub async fn run_with<W, F>(
        &self,
        wf: &W,
        ctx: &WorkflowCtx<C>,
        mut on_result: F,
    ) -> Result<SourceSummary, FloxideError>
    where
        W: Workflow<C, Input = O>,
        F: FnMut(Result<W::Output, FloxideError>),
    {
        self.drive(wf, ctx, |result| {
            on_result(result);
            true
        })
        .await
    }

    /// Runs `wf` once per received item until the channel closes, or `on_result` returns
    /// `false` for a finished run.
    async fn drive<W, F>(
        &self,
        wf: &W,
        ctx: &WorkflowCtx<C>,
        mut on_result: F,
    ) -> Result<SourceSummary, FloxideError>
    where
        W: Workflow<C, Input = O>,
        F: FnMut(Result<W::Output, FloxideError>) -> bool,
    {
        let mut items = self.items.lock().await;
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
                    if !on_result(result) {
                        return Ok(summary);
                    }
                }
                item = items.recv(), if open && in_flight.len() < self.concurrency => {
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
            .field(
                "queued",
                &self.items.try_lock().map(|items| items.len()).ok(),
            )
            .finish_non_exhaustive()
    }
}
