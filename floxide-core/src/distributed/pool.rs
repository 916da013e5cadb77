//! [`WorkerPool`]: several workers of one workflow, started and stopped together.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::distributed::{DistributedWorker, WorkerHealth, WorkerId};
use crate::{Context, FloxideError, Merge, Workflow};

/// `n` workers sharing one [`DistributedWorker`] configuration, each a tokio task with an id
/// unique across processes (`{prefix}-{host}-{pid}-{i}`).
pub struct WorkerPool<W, C> {
    worker: DistributedWorker<W, C>,
    size: usize,
    prefix: String,
    grace: Duration,
    stop: CancellationToken,
    ids: Vec<WorkerId>,
    handles: Vec<JoinHandle<Result<(), FloxideError>>>,
}

impl<W, C> WorkerPool<W, C>
where
    C: Context + Merge + 'static,
    W: Workflow<C> + 'static,
{
    /// A pool of `size` workers (not started).
    pub fn new(worker: DistributedWorker<W, C>, size: usize) -> Self {
        WorkerPool {
            worker,
            size,
            prefix: "worker".to_owned(),
            grace: Duration::from_secs(30),
            stop: CancellationToken::new(),
            ids: Vec::new(),
            handles: Vec::new(),
        }
    }

    /// The prefix of the workers' ids (default `worker`).
    pub fn with_id_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long [`stop`](Self::stop) lets in-flight steps finish before releasing them
    /// (default 30 s).
    pub fn with_grace_period(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The ids of the started workers.
    pub fn worker_ids(&self) -> &[WorkerId] {
        &self.ids
    }

    /// Starts the workers (once; later calls do nothing).
    pub fn start(&mut self) {
        if !self.handles.is_empty() {
            return;
        }
        for _ in 0..self.size {
            let id = WorkerId::next(&self.prefix);
            self.ids.push(id.clone());
            let worker = self.worker.clone();
            let stop = self.stop.clone();
            let grace = self.grace;
            self.handles.push(tokio::spawn(async move {
                worker.run_until(id, stop, grace).await
            }));
        }
    }

    /// Stops gracefully: the workers take no more work, finish their in-flight steps within
    /// the grace period (or release them to other workers), and exit. Waits for them; a worker
    /// task that failed is logged (see [`try_join`](Self::try_join)).
    pub async fn stop(&mut self) {
        self.stop.cancel();
        self.join().await;
    }

    /// Like [`stop`](Self::stop), returning the first failure of a worker task.
    ///
    /// # Errors
    /// A worker task that panicked or failed.
    pub async fn try_stop(&mut self) -> Result<(), FloxideError> {
        self.stop.cancel();
        self.try_join().await
    }

    /// Waits for every worker to exit (they exit after [`stop`](Self::stop)); a worker task
    /// that failed is logged.
    pub async fn join(&mut self) {
        if let Err(error) = self.try_join().await {
            tracing::error!(%error, "a worker of the pool failed");
        }
    }

    /// Like [`join`](Self::join), returning the first failure of a worker task.
    ///
    /// # Errors
    /// A worker task that panicked or failed.
    pub async fn try_join(&mut self) -> Result<(), FloxideError> {
        let mut first_error = None;
        for handle in self.handles.drain(..) {
            let result = match handle.await {
                Ok(result) => result,
                Err(join) => Err(FloxideError::Generic(format!("worker task failed: {join}"))),
            };
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The token that stops the pool, for wiring to signals.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// The last health report of each worker of this pool (empty when the backend cannot be
    /// read; see [`try_health`](Self::try_health)).
    pub async fn health(&self) -> Vec<WorkerHealth> {
        self.try_health().await.unwrap_or_else(|error| {
            tracing::warn!(%error, "could not read the workers' health");
            Vec::new()
        })
    }

    /// The last health report of each worker of this pool.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn try_health(&self) -> Result<Vec<WorkerHealth>, FloxideError> {
        let all = self.worker.backend().workers().await?;
        Ok(all
            .into_iter()
            .filter(|h| self.ids.contains(&h.worker_id))
            .collect())
    }
}
