//! [`DistributedWorker`] and its [`WorkerBuilder`].

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::distributed::backend::{Backend, NextTake, TakeOptions, Taken};
use crate::distributed::compat::StoreParts;
use crate::distributed::exec::{step_taken, ExecConfig, StepOutput};
use crate::distributed::{RunId, WorkerHealth, WorkerId, WorkerStatus};
use crate::{Context, FloxideError, Merge, RetryPolicy, Workflow};

/// [`WorkerPool`] also lives here, its Floxide 3.x path.
pub use crate::distributed::WorkerPool;

/// Defaults shared by the worker settings.
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// Settings of a worker.
#[derive(Debug, Clone)]
pub(crate) struct WorkerConfig {
    pub(crate) lease_timeout: Duration,
    pub(crate) heartbeat_interval: Option<Duration>,
    pub(crate) max_deliveries: u32,
    pub(crate) idle_wait: Duration,
    pub(crate) idle_jitter: Duration,
    pub(crate) retry_policy: Option<RetryPolicy>,
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
        }
    }

    pub(crate) fn take_options(&self) -> TakeOptions {
        TakeOptions {
            lease_timeout: self.lease_timeout,
            max_deliveries: self.max_deliveries,
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

    /// Deliveries of one attempt without a commit after which an item is poison and goes to
    /// the dead letters (default 5).
    pub fn max_deliveries(mut self, deliveries: u32) -> Self {
        self.config.max_deliveries = deliveries.max(1);
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
        match taken {
            None => Ok(None),
            Some(taken) => Ok(self.step(&worker, taken, None, None).await?.0),
        }
    }

    async fn step(
        &self,
        worker: &WorkerId,
        taken: Taken,
        stop: Option<(&CancellationToken, Duration)>,
        next: Option<NextTake<'_>>,
    ) -> Result<(StepOutput<W::Output>, Option<Taken>), FloxideError> {
        let exec = self.config.exec();
        step_taken(
            &self.workflow,
            &*self.backend,
            &exec,
            worker,
            taken,
            stop,
            next,
        )
        .await
    }

    /// Takes and executes work items until the process ends, waiting on the backend while
    /// idle and reconnecting with backoff after backend errors.
    ///
    /// # Errors
    /// Never returns in normal operation; see [`run_until`](Self::run_until) to stop it.
    pub async fn run_forever(&self, worker_id: impl Into<WorkerId>) -> Result<(), FloxideError> {
        self.run_until(worker_id, CancellationToken::new(), Duration::from_secs(30))
            .await
    }

    /// Like [`run_forever`](Self::run_forever) until `stop` is cancelled; a step in flight then
    /// gets `grace` to finish, after which its lease is released for another worker.
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
        let mut backoff = Duration::from_millis(50);
        let options = self.config.take_options();
        let fused = NextTake {
            workflow: self.workflow.name(),
            worker: &worker,
            options,
        };
        // The item the last commit took for this worker (one round trip per step).
        let mut next: Option<Taken> = None;
        loop {
            if stop.is_cancelled() {
                if let Some(unstarted) = next.take() {
                    if let Err(error) = self.backend.release(&unstarted.lease).await {
                        tracing::warn!(%worker, %error, "could not release an item on shutdown; its lease will expire");
                    }
                }
                break;
            }
            if let Some(taken) = next.take() {
                next = self
                    .run_step(
                        &worker,
                        taken,
                        &stop,
                        grace,
                        fused,
                        &mut reporter,
                        &mut backoff,
                    )
                    .await;
                continue;
            }
            reporter
                .report(&*self.backend, WorkerStatus::Idle, None)
                .await;
            let wait = self.config.idle_wait
                + if self.config.idle_jitter.is_zero() {
                    Duration::ZERO
                } else {
                    Duration::from_nanos(fastrand::u64(
                        0..=self.config.idle_jitter.as_nanos() as u64,
                    ))
                };
            let taken = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                t = self.backend.take(self.workflow.name(), &worker, options, wait) => t,
            };
            let taken = match taken {
                Ok(Some(taken)) => taken,
                Ok(None) => continue,
                Err(error) => {
                    tracing::warn!(%worker, %error, ?backoff, "backend error while taking work; retrying");
                    reporter.errors += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(50);
            next = self
                .run_step(
                    &worker,
                    taken,
                    &stop,
                    grace,
                    fused,
                    &mut reporter,
                    &mut backoff,
                )
                .await;
        }
        reporter.stopped(&*self.backend).await;
        Ok(())
    }

    /// Executes one taken item for [`run_until`](Self::run_until), reporting health while it
    /// runs; returns the next item the commit took, if any.
    #[allow(clippy::too_many_arguments)]
    async fn run_step(
        &self,
        worker: &WorkerId,
        taken: Taken,
        stop: &CancellationToken,
        grace: Duration,
        fused: NextTake<'_>,
        reporter: &mut HealthReporter,
        backoff: &mut Duration,
    ) -> Option<Taken> {
        let item = (taken.lease.item_id, taken.lease.run_id.clone());
        let status = if taken.attempt > 1 {
            WorkerStatus::Retrying(taken.attempt, 0)
        } else {
            WorkerStatus::InProgress
        };
        reporter
            .report(&*self.backend, status.clone(), Some(item.clone()))
            .await;
        // Keep reporting while a long step runs, so the worker does not look dead.
        let step = self.step(worker, taken, Some((stop, grace)), Some(fused));
        tokio::pin!(step);
        let result = loop {
            tokio::select! {
                r = &mut step => break r,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    reporter.report(&*self.backend, status.clone(), Some(item.clone())).await;
                }
            }
        };
        match result {
            Ok((_, next)) => next,
            Err(error) => {
                reporter.errors += 1;
                tracing::warn!(%worker, %error, "step could not be completed; its lease will expire");
                tokio::time::sleep(*backoff).await;
                None
            }
        }
    }
}

/// Sends a worker's health to the backend at most once a second, so that reporting never
/// costs a round trip per step.
struct HealthReporter {
    health: WorkerHealth,
    last: Option<tokio::time::Instant>,
    errors: u64,
}

impl HealthReporter {
    fn new(worker: WorkerId, workflow: &str) -> Self {
        HealthReporter {
            health: WorkerHealth {
                worker_id: worker,
                host: hostname(),
                pid: std::process::id(),
                last_heartbeat: SystemTime::now(),
                error_count: 0,
                status: WorkerStatus::Idle,
                current_work_item: None,
                current_work_item_run_id: None,
                workflow: workflow.to_owned(),
            },
            last: None,
            errors: 0,
        }
    }

    async fn report(
        &mut self,
        backend: &dyn Backend,
        status: WorkerStatus,
        item: Option<(crate::ItemId, RunId)>,
    ) {
        let now = tokio::time::Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.last = Some(now);
        self.health.status = status;
        self.health.error_count = self.errors;
        self.health.last_heartbeat = SystemTime::now();
        let (item, run) = item.map_or((None, None), |(i, r)| (Some(i), Some(r)));
        self.health.current_work_item = item;
        self.health.current_work_item_run_id = run;
        if let Err(error) = backend.report_worker(&self.health).await {
            tracing::debug!(%error, "could not report worker health");
        }
    }

    async fn stopped(&mut self, backend: &dyn Backend) {
        self.health.status = WorkerStatus::Stopped;
        self.health.current_work_item = None;
        self.health.current_work_item_run_id = None;
        self.health.last_heartbeat = SystemTime::now();
        let _ = backend.report_worker(&self.health).await;
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
