//! The worker's path ([`WorkerBackend`]) on PostgreSQL.

use std::time::Duration;

use floxide_core::distributed::CommitOutcome;
use floxide_core::distributed::{
    CommitItem, CommitReply, DistributedError, Lease, LeaseState, StepFailed, TakeRequest, Taken,
    VersionedContext, WorkerBackend, MAX_BATCH,
};

use crate::ops::{self, backend, Effects};
use crate::pipeline::Pipelined;
use crate::take::{take_once, Held};
use crate::PostgresBackend;

/// A request id, for answering a retried write as its first attempt.
pub(crate) fn request_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

impl PostgresBackend {
    /// Sends the notifications a transaction's effects call for.
    async fn notify(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        effects: &Effects,
    ) -> Result<(), DistributedError> {
        let schema = self.config().schema();
        if effects.work {
            ops::notify_work(tx, schema).await?;
        }
        for run in &effects.runs {
            ops::notify_run(tx, schema, run).await?;
        }
        Ok(())
    }

    /// Takes without waiting: take statements until the batch is full, a page comes back
    /// short, or a bounded number of rows was looked at (G9); poison items met on the way
    /// are dead-lettered.
    ///
    /// A take's transaction does not wait for its WAL flush (`synchronous_commit = off`, one
    /// round trip still): a lease is not an acknowledged effect. If the server crashes before
    /// the flush, the lease is forgotten and the item is leased again; a commit applies only
    /// to an item still leased under the token it names, so its effects still apply once.
    async fn take_now(&self, take: TakeRequest<'_>) -> Result<Vec<Taken>, DistributedError> {
        let max = take.max.min(MAX_BATCH);
        let mut out = Vec::new();
        let mut budget = 256usize;
        while out.len() < max && budget > 0 {
            let want = (max - out.len()).min(budget);
            let epoch = self.signals.epoch();
            let rows = {
                let tx = Pipelined::new(self.pooled().await?);
                let (_, rows, ()) = futures_util::future::try_join3(
                    tx.begin_unflushed(),
                    take_once(
                        tx.client(),
                        take.with_max(want),
                        &Held::new(),
                        self.config().step_history,
                    ),
                    tx.commit(),
                )
                .await?;
                rows
            };
            budget -= rows.seen.min(budget);
            let page_full = rows.seen == want;
            self.signals.took(take.workflow, epoch, !page_full);
            out.extend(rows.taken);
            if !rows.poison.is_empty() {
                self.dead_letter_poison(take, &rows.poison).await?;
            }
            if !page_full {
                break;
            }
        }
        Ok(out)
    }

    /// Dead-letters items a take found delivered too often (each in a transaction of its
    /// own, checked again under its lock: another take may have handled it meanwhile).
    pub(crate) async fn dead_letter_poison(
        &self,
        take: TakeRequest<'_>,
        items: &[(String, String)],
    ) -> Result<(), DistributedError> {
        for (run, id) in items {
            let mut client = self.pooled().await?;
            let tx = client.transaction().await.map_err(backend)?;
            if let Some(run) = ops::poison(&tx, run, id, take.options.max_deliveries).await? {
                ops::notify_run(&tx, self.config().schema(), &run).await?;
            }
            tx.commit().await.map_err(backend)?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl WorkerBackend for PostgresBackend {
    fn keeps_successors(&self) -> bool {
        true
    }

    async fn take_batch(
        &self,
        take: TakeRequest<'_>,
        wait: Duration,
    ) -> Result<Vec<Taken>, DistributedError> {
        let give_up = tokio::time::Instant::now() + wait;
        let mut first = true;
        loop {
            // Registered before the take: a notification sent meanwhile is not missed.
            let notified = self.signals.work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if std::mem::take(&mut first) {
                // A take found the queue empty moments ago (typically the one the worker's last
                // commit made) and no work was announced since: wait for an announcement, or
                // for that finding to age, before looking (and asking what falls due): a look
                // right after the commit only competes with the next run's statements.
                if let Some(until) = self.signals.empty_until(take.workflow) {
                    let until = tokio::time::Instant::from_std(until).min(give_up);
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep_until(until) => {}
                    }
                    continue;
                }
            }
            let taken = self.take_now(take).await?;
            if !taken.is_empty() {
                if taken.len() >= take.max.min(MAX_BATCH) {
                    // There may be more: pass the wake-up on to another idle taker.
                    self.signals.work.notify_one();
                }
                return Ok(taken);
            }
            let now = tokio::time::Instant::now();
            if now >= give_up {
                return Ok(Vec::new());
            }
            let client = self.pooled().await?;
            let due = ops::next_due(&client, take.workflow).await?;
            drop(client);
            // Something due now is held by another transaction: look again shortly.
            let until = due.map_or(give_up, |ms| {
                (now + Duration::from_millis(ms.max(10))).min(give_up)
            });
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }

    async fn heartbeat(
        &self,
        lease: &Lease,
        lease_timeout: Duration,
    ) -> Result<LeaseState, DistributedError> {
        let client = self.pooled().await?;
        ops::heartbeat(&**client, lease, lease_timeout, self.config().step_history).await
    }

    async fn load_context(&self, run_id: &str) -> Result<VersionedContext, DistributedError> {
        let client = self.pooled().await?;
        let row = client
            .query_opt(
                "SELECT context, version FROM runs WHERE run_id = $1",
                &[&run_id],
            )
            .await
            .map_err(backend)?
            .ok_or_else(|| DistributedError::UnknownRun(run_id.to_owned()))?;
        Ok(VersionedContext::new(
            row.get(0),
            row.get::<_, i64>(1) as u64,
        ))
    }

    async fn commit_batch(
        &self,
        commits: &[CommitItem<'_>],
        next: Option<TakeRequest<'_>>,
    ) -> Result<CommitReply, DistributedError> {
        if commits.is_empty() {
            return match next {
                Some(take) => Ok(CommitReply::new(Vec::new(), self.take_now(take).await?)),
                None => Ok(CommitReply::default()),
            };
        }
        self.commit_pipelined(commits, next, &request_id()).await
    }

    async fn fail(
        &self,
        lease: &Lease,
        failure: &StepFailed,
    ) -> Result<CommitOutcome, DistributedError> {
        let mut client = self.pooled().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let mut effects = Effects::default();
        let outcome = ops::fail(
            &tx,
            lease,
            failure,
            &mut effects,
            self.config().step_history,
        )
        .await?;
        self.notify(&tx, &effects).await?;
        tx.commit().await.map_err(backend)?;
        Ok(outcome)
    }

    async fn release(&self, lease: &Lease) -> Result<(), DistributedError> {
        let mut client = self.pooled().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let ready = ops::release(&tx, lease, self.config().step_history).await?;
        let effects = Effects {
            work: ready,
            runs: Vec::new(),
        };
        self.notify(&tx, &effects).await?;
        tx.commit().await.map_err(backend)
    }

    async fn wait_run_change(&self, run_id: &str, timeout: Duration) {
        let mut rx = self.signals.by_run.subscribe(run_id);
        let _ = tokio::time::timeout(timeout, rx.changed()).await;
    }
}
