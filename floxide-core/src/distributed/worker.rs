//! [`DistributedWorker`] and its [`WorkerBuilder`].

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::distributed::backend::{Backend, TakeOptions};
use crate::distributed::compat::StoreParts;
use crate::distributed::exec::{step_one, Batcher, ExecConfig, Slots, Speeds, StepEnd};
use crate::distributed::health::HealthReporter;
use crate::distributed::{RunId, WorkerId};
use crate::{Context, FloxideError, Merge, RetryPolicy, Workflow};

/// [`WorkerPool`] also lives here, its Floxide 3.x path.
pub use crate::distributed::WorkerPool;

/// Defaults shared by the worker settings.
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// Steps a worker runs at once unless told otherwise (see [`WorkerBuilder::concurrency`]).
pub const DEFAULT_CONCURRENCY: usize = 16;

/// Settings of a worker.
#[derive(Debug, Clone)]
pub(crate) struct WorkerConfig {
    pub(crate) lease_timeout: Duration,
    pub(crate) heartbeat_interval: Option<Duration>,
    pub(crate) max_deliveries: u32,
    pub(crate) idle_wait: Duration,
    pub(crate) idle_jitter: Duration,
    pub(crate) retry_policy: Option<RetryPolicy>,
    pub(crate) concurrency: usize,
    pub(crate) chain_steps: bool,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            lease_timeout: DEFAULT_LEASE,
            heartbeat_interval: None,
            max_deliveries: 5,
            idle_wait: Duration::from_secs(1),
            idle_jitter: Duration::ZERO,
            retry_policy: None,
            concurrency: DEFAULT_CONCURRENCY,
            chain_steps: true,
        }
    }
}

impl WorkerConfig {
    pub(crate) fn exec(&self) -> ExecConfig {
        ExecConfig {
            lease_timeout: self.lease_timeout,
            heartbeat_interval: self
                .heartbeat_interval
                .unwrap_or(self.lease_timeout / 3)
                .max(Duration::from_millis(1)),
            retry_policy: self.retry_policy.clone(),
            chain_steps: self.chain_steps,
            max_deliveries: self.max_deliveries,
        }
    }

    pub(crate) fn slots(&self) -> Slots {
        Slots {
            capacity: self.concurrency,
            idle_wait: self.idle_wait,
            idle_jitter: self.idle_jitter,
        }
    }

    /// The backend hands out an item once more than the worker's limit: the worker fails that
    /// delivery itself, so that the workflow's `on_failure` edges can route it (see
    /// [`exec::execute`](super::exec::execute)); should that delivery die too, the backend
    /// dead-letters the item at the next take.
    pub(crate) fn take_options(&self) -> TakeOptions {
        TakeOptions {
            lease_timeout: self.lease_timeout,
            max_deliveries: self.max_deliveries.saturating_add(1),
        }
    }
}

/// Generates the per-store setters and `.backend(..)` shared by the two builders.
macro_rules! store_setters {
    () => {
        /// Uses `backend` for every store.
        pub fn backend(mut self, backend: impl $crate::distributed::Backend) -> Self {
            self.backend = Some(std::sync::Arc::new(backend));
            self
        }

        /// Uses a shared backend for every store.
        pub fn backend_arc(
            mut self,
            backend: std::sync::Arc<dyn $crate::distributed::Backend>,
        ) -> Self {
            self.backend = Some(backend);
            self
        }

        /// The work queue (a view of the backend, like every store below).
        pub fn queue(mut self, store: impl $crate::distributed::WorkQueue<C, W::WorkItem>) -> Self {
            self.parts.set("queue", store.binding());
            self
        }

        /// The context store.
        pub fn context_store(mut self, store: impl $crate::distributed::ContextStore<C>) -> Self {
            self.parts.set("context_store", store.binding());
            self
        }

        /// The run-info store.
        pub fn run_info_store(mut self, store: impl $crate::distributed::RunInfoStore) -> Self {
            self.parts.set("run_info_store", store.binding());
            self
        }

        /// The metrics store.
        pub fn metrics_store(mut self, store: impl $crate::distributed::MetricsStore) -> Self {
            self.parts.set("metrics_store", store.binding());
            self
        }

        /// The error store.
        pub fn error_store(mut self, store: impl $crate::distributed::ErrorStore) -> Self {
            self.parts.set("error_store", store.binding());
            self
        }

        /// The liveness store.
        pub fn liveness_store(mut self, store: impl $crate::distributed::LivenessStore) -> Self {
            self.parts.set("liveness_store", store.binding());
            self
        }

        /// The work-item state store.
        pub fn work_item_state_store(
            mut self,
            store: impl $crate::distributed::WorkItemStateStore<W::WorkItem>,
        ) -> Self {
            self.parts.set("work_item_state_store", store.binding());
            self
        }

        /// The workflow.
        pub fn workflow(mut self, workflow: W) -> Self {
            self.workflow = Some(workflow);
            self
        }

        fn take_workflow(&mut self) -> Result<W, $crate::FloxideError> {
            self.workflow.take().ok_or_else(|| {
                $crate::distributed::DistributedError::Build(
                    "no workflow: call `.workflow(wf)`".to_owned(),
                )
                .into()
            })
        }

        fn take_backend(
            &mut self,
        ) -> Result<std::sync::Arc<dyn $crate::distributed::Backend>, $crate::FloxideError> {
            let parts = std::mem::take(&mut self.parts);
            match self.backend.take() {
                Some(backend) if parts.is_empty() => Ok(backend),
                Some(_) => Err($crate::distributed::DistributedError::Build(
                    "both `.backend(..)` and per-store setters were used; use one or the other"
                        .to_owned(),
                )
                .into()),
                None if parts.is_empty() => Err($crate::distributed::DistributedError::Build(
                    "no backend: call `.backend(InMemoryBackend::new())` (or set every store)"
                        .to_owned(),
                )
                .into()),
                None => Ok(parts.assemble()?),
            }
        }
    };
}
pub(crate) use store_setters;

/// Builds a [`DistributedWorker`]: a workflow plus a backend (or its seven stores).
pub struct WorkerBuilder<W, C> {
    workflow: Option<W>,
    backend: Option<Arc<dyn Backend>>,
    parts: StoreParts,
    config: WorkerConfig,
    _context: PhantomData<fn() -> C>,
}

impl<W, C> Default for WorkerBuilder<W, C> {
    fn default() -> Self {
        WorkerBuilder {
            workflow: None,
            backend: None,
            parts: StoreParts::default(),
            config: WorkerConfig::default(),
            _context: PhantomData,
        }
    }
}

impl<W, C> WorkerBuilder<W, C>
where
    C: Context + Merge + 'static,
    W: Workflow<C> + 'static,
{
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    store_setters!();

    /// A retry policy for nodes without `#[retry = ..]`: their failures are retried (as
    /// delayed items) when the policy says so.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.config.retry_policy = Some(policy);
        self
    }

    /// How long an idle worker waits for work in one call before it re-checks (it wakes at
    /// once when work arrives; there is no polling).
    pub fn idle_sleep_duration(mut self, wait: Duration) -> Self {
        self.config.idle_wait = wait;
        self
    }

    /// A random extra of up to `jitter` added to each idle wait.
    pub fn idle_sleep_jitter(mut self, jitter: Duration) -> Self {
        self.config.idle_jitter = jitter;
        self
    }

    /// How long a lease lasts without renewal (default 30 s): a crashed worker's item becomes
    /// available again after at most this long.
    pub fn lease_timeout(mut self, timeout: Duration) -> Self {
        self.config.lease_timeout = timeout;
        self
    }

    /// How often a running step renews its lease (default: a third of the lease timeout).
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.config.heartbeat_interval = Some(interval);
        self
    }

    /// Deliveries of one attempt without a commit after which an item is poison (default 5):
    /// its next delivery does not run the node but fails the step at once, never retried. The
    /// workflow's `on_failure` edges route that failure like any other; without them the item
    /// goes to the dead letters and its run fails.
    pub fn max_deliveries(mut self, deliveries: u32) -> Self {
        self.config.max_deliveries = deliveries.max(1);
        self
    }

    /// How many steps the worker runs at once (default [`DEFAULT_CONCURRENCY`], at least 1).
    /// Its takes and commits carry up to this many items per call (at most
    /// [`MAX_BATCH`](crate::distributed::MAX_BATCH)): a busy worker takes a batch of ready items in one round trip and
    /// commits the finished ones together, taking the next batch in the same call. Steps of
    /// one worker run on its task; for parallelism across cores run several workers (a
    /// [`WorkerPool`]). `1` executes one step at a time.
    pub fn concurrency(mut self, steps: usize) -> Self {
        self.config.concurrency = steps.max(1);
        self
    }

    /// Whether a step's successors may run on this worker before the step is committed, all
    /// then committed in one call (default on, where the backend supports it: see
    /// [`WorkerBackend::keeps_successors`](crate::distributed::WorkerBackend::keeps_successors)).
    /// A chain of fast steps (or a fan and its fast leaves) then costs one round trip to the
    /// backend instead of one per step;
    /// a step's commit waits at most 2 ms for its chain, and a worker that dies mid-chain has
    /// the chain's first step run again (at-least-once, as any lost step).
    pub fn chain_steps(mut self, on: bool) -> Self {
        self.config.chain_steps = on;
        self
    }

    /// The worker.
    ///
    /// # Errors
    /// [`DistributedError::Build`](crate::distributed::DistributedError::Build) when the
    /// workflow or the backend is missing, or the stores do not form one backend.
    pub fn build(mut self) -> Result<DistributedWorker<W, C>, FloxideError> {
        let backend = self.take_backend()?;
        let workflow = self.take_workflow()?;
        Ok(DistributedWorker {
            workflow,
            backend,
            config: self.config,
            _context: PhantomData,
        })
    }
}

/// Takes work items of one workflow from a backend and executes them. Cloning is cheap and
/// clones share the backend; run several with a [`WorkerPool`].
pub struct DistributedWorker<W, C> {
    workflow: W,
    backend: Arc<dyn Backend>,
    config: WorkerConfig,
    _context: PhantomData<fn() -> C>,
}

impl<W: Clone, C> Clone for DistributedWorker<W, C> {
    fn clone(&self) -> Self {
        DistributedWorker {
            workflow: self.workflow.clone(),
            backend: Arc::clone(&self.backend),
            config: self.config.clone(),
            _context: PhantomData,
        }
    }
}

impl<W: std::fmt::Debug, C> std::fmt::Debug for DistributedWorker<W, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DistributedWorker")
            .field("workflow", &self.workflow)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<W, C> DistributedWorker<W, C>
where
    C: Context + Merge + 'static,
    W: Workflow<C> + 'static,
{
    /// A builder.
    pub fn builder() -> WorkerBuilder<W, C> {
        WorkerBuilder::new()
    }

    /// Sets the retry policy for nodes without `#[retry = ..]`.
    pub fn set_retry_policy(&mut self, policy: RetryPolicy) {
        self.config.retry_policy = Some(policy);
    }

    /// Sets how many steps the worker runs at once (see [`WorkerBuilder::concurrency`]).
    pub fn set_concurrency(&mut self, steps: usize) {
        self.config.concurrency = steps.max(1);
    }

    /// Records that worker `worker_id` is alive now (Floxide 3.x): its last health report
    /// with a fresh heartbeat time (the worker loops report by themselves). Errors are logged.
    pub async fn heartbeat(&self, worker_id: impl Into<WorkerId>) {
        let id = worker_id.into();
        let mut health = match self.backend.workers().await {
            Ok(all) => all.into_iter().find(|h| h.worker_id == id),
            Err(error) => {
                tracing::warn!(%error, "could not read worker health");
                None
            }
        }
        .unwrap_or_else(|| HealthReporter::new(id.clone(), self.workflow.name()).health);
        health.last_heartbeat = SystemTime::now();
        if let Err(error) = self.backend.report_worker(&health).await {
            tracing::warn!(worker = %id, %error, "could not report a heartbeat");
        }
    }

    /// The workflow.
    pub fn workflow(&self) -> &W {
        &self.workflow
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Takes and executes at most one ready work item, without waiting for one.
    ///
    /// Returns `Some((run_id, output))` when the step produced a terminal output.
    ///
    /// # Errors
    /// Backend errors. A failing node is not an error here: its failure is recorded in the
    /// backend (retry scheduled or dead letter).
    pub async fn run_once(
        &self,
        worker_id: impl Into<WorkerId>,
    ) -> Result<Option<(RunId, W::Output)>, FloxideError> {
        let worker = worker_id.into();
        let taken = self
            .backend
            .take(
                self.workflow.name(),
                &worker,
                self.config.take_options(),
                Duration::ZERO,
            )
            .await?;
        let Some(taken) = taken else {
            return Ok(None);
        };
        let run_id = taken.lease.run_id.clone();
        let exec = self.config.exec();
        match step_one(&self.workflow, &*self.backend, &exec, &worker, taken, None).await? {
            StepEnd::Committed { outputs, .. } => {
                Ok(outputs.into_iter().next().map(|o| (run_id, o)))
            }
            _ => Ok(None),
        }
    }

    /// Takes and executes work items until the task is dropped, waiting on the backend while
    /// idle and reconnecting with backoff after backend errors. It never returns (as in 3.x,
    /// its type is [`Infallible`](std::convert::Infallible)); see
    /// [`run_until`](Self::run_until) to stop a worker gracefully.
    pub async fn run_forever(&self, worker_id: impl Into<WorkerId>) -> std::convert::Infallible {
        let worker = worker_id.into();
        loop {
            // (`run_until` returns only once its token is cancelled, which nothing does here.)
            let stop = CancellationToken::new();
            let _ = self
                .run_until(worker.clone(), stop, Duration::from_secs(30))
                .await;
        }
    }

    /// Like [`run_forever`](Self::run_forever) until `stop` is cancelled; steps in flight then
    /// get `grace` to finish (and are committed), after which their leases are released for
    /// another worker.
    ///
    /// # Errors
    /// None in normal operation: backend errors are logged and retried with backoff.
    pub async fn run_until(
        &self,
        worker_id: impl Into<WorkerId>,
        stop: CancellationToken,
        grace: Duration,
    ) -> Result<(), FloxideError> {
        let worker = worker_id.into();
        let mut reporter = HealthReporter::new(worker.clone(), self.workflow.name());
        let exec = self.config.exec();
        let speeds = Speeds::default();
        let batcher = Batcher {
            workflow: &self.workflow,
            backend: &*self.backend,
            config: &exec,
            worker: &worker,
            options: self.config.take_options(),
            slots: self.config.slots(),
            stop: &stop,
            grace,
            speeds: &speeds,
            context: PhantomData,
        };
        batcher.run(&mut reporter).await;
        reporter.stopped(&*self.backend).await;
        Ok(())
    }
}
