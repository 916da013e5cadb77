//! The worker's path ([`WorkerBackend`]) on PostgreSQL.

use std::time::Duration;

use floxide_core::distributed::machine::ContextChains;
use floxide_core::distributed::CommitOutcome;
use floxide_core::distributed::{
    CommitItem, CommitReply, DistributedError, Lease, LeaseState, StepFailed, TakeRequest, Taken,
    VersionedContext, WorkerBackend,
};

use crate::ops::{self, backend, Effects};
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

    /// One run's steps of a batch in one transaction (retried after a deadlock): its items
    /// and its row are locked, its steps applied in order.
    async fn commit_run(
        &self,
        commits: &[&CommitItem<'_>],
        request: &str,
    ) -> Result<Vec<CommitOutcome>, DistributedError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = async {
                let mut client = self.pooled().await?;
                let tx = client.transaction().await.map_err(backend)?;
                // All the run's items of the batch at once, before its row: while this waits
                // for a busy run, no take can reclaim them (takes skip locked items).
                let run = commits.first().map_or("", |c| c.lease.run_id.as_str());
                let ids: Vec<String> = commits
                    .iter()
                    .map(|c| c.lease.item_id.to_string())
                    .collect();
                tx.execute(
                    "SELECT 1 FROM items WHERE run_id = $1 \
                     AND item_id IN (SELECT unnest($2::text[])::uuid) \
                     ORDER BY item_id FOR UPDATE",
                    &[&run, &ids],
                )
                .await
                .map_err(backend)?;
                let mut effects = Effects::default();
                let mut outcomes = Vec::with_capacity(commits.len());
                let mut chains = ContextChains::default();
                for c in commits {
                    let (run, changes) = (c.lease.run_id.as_str(), c.step.context.is_some());
                    let outcome = if chains.refuses(run, changes) {
                        let current: i64 = tx
                            .query_one(
                                "SELECT version FROM runs WHERE run_id = $1",
                                &[&c.lease.run_id],
                            )
                            .await
                            .map_err(backend)?
                            .get(0);
                        CommitOutcome::ContextConflict {
                            current: current as u64,
                        }
                    } else {
                        ops::commit_one(&tx, c, request, &mut effects).await?
                    };
                    let committed = matches!(outcome, CommitOutcome::Committed { .. });
                    chains.settled(run, changes, committed);
                    outcomes.push(outcome);
                }
                self.notify(&tx, &effects).await?;
                tx.commit().await.map_err(backend)?;
                Ok::<_, DistributedError>(outcomes)
            }
            .await;
            match result {
                Err(e) if attempt < 5 && ops::is_transient(&e) => continue,
                other => return other,
            }
        }
    }

    /// One take without waiting.
    async fn take_once(&self, take: TakeRequest<'_>) -> Result<Vec<Taken>, DistributedError> {
        let mut client = self.pooled().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let (taken, changed) = ops::take(&tx, take).await?;
        let effects = Effects {
            work: false,
            runs: changed,
        };
        self.notify(&tx, &effects).await?;
        tx.commit().await.map_err(backend)?;
        Ok(taken)
    }
}

#[async_trait::async_trait]
impl WorkerBackend for PostgresBackend {
    async fn take_batch(
        &self,
        take: TakeRequest<'_>,
        wait: Duration,
    ) -> Result<Vec<Taken>, DistributedError> {
        let give_up = tokio::time::Instant::now() + wait;
        loop {
            // Registered before the take: a notification sent meanwhile is not missed.
            let notified = self.signals.work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let taken = self.take_once(take).await?;
            if !taken.is_empty() {
                return Ok(taken);
            }
            let now = tokio::time::Instant::now();
            if now >= give_up {
                return Ok(Vec::new());
            }
            let client = self.pooled().await?;
            let due = ops::next_due(&**client, take.workflow).await?;
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
        ops::heartbeat(&**client, lease, lease_timeout).await
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
        let request = request_id();
        // The batch's leases first (one statement): its steps may wait for busy runs' rows.
        if commits.len() > 1 {
            let client = self.pooled().await?;
            ops::renew_batch(&**client, commits).await?;
        }
        // One short transaction per run: a run's row is held for its own steps only.
        let mut runs: Vec<&str> = commits.iter().map(|c| c.lease.run_id.as_str()).collect();
        runs.sort_unstable();
        runs.dedup();
        let mut outcomes = vec![CommitOutcome::LeaseLost; commits.len()];
        for run in runs {
            let (indices, group): (Vec<usize>, Vec<&CommitItem<'_>>) = commits
                .iter()
                .enumerate()
                .filter(|(_, c)| c.lease.run_id == run)
                .unzip();
            let answers = self.commit_run(&group, &request).await?;
            for (i, outcome) in indices.into_iter().zip(answers) {
                outcomes[i] = outcome;
            }
        }
        let taken = match next {
            Some(take) => self.take_once(take).await?,
            None => Vec::new(),
        };
        Ok(CommitReply::new(outcomes, taken))
    }

    async fn fail(
        &self,
        lease: &Lease,
        failure: &StepFailed,
    ) -> Result<CommitOutcome, DistributedError> {
        let mut client = self.pooled().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let mut effects = Effects::default();
        let outcome = ops::fail(&tx, lease, failure, &mut effects).await?;
        self.notify(&tx, &effects).await?;
        tx.commit().await.map_err(backend)?;
        Ok(outcome)
    }

    async fn release(&self, lease: &Lease) -> Result<(), DistributedError> {
        let mut client = self.pooled().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let ready = ops::release(&tx, lease).await?;
        let effects = Effects {
            work: ready,
            runs: Vec::new(),
        };
        self.notify(&tx, &effects).await?;
        tx.commit().await.map_err(backend)
    }

    async fn wait_run_change(&self, _run_id: &str, timeout: Duration) {
        let mut rx = self.signals.runs.subscribe();
        let _ = tokio::time::timeout(timeout, rx.changed()).await;
    }
}
