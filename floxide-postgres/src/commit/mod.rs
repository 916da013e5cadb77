//! A batch commit in one transaction and two round trips: the batch's items and runs are
//! locked and read by one statement (with `BEGIN`), each step is judged in Rust by the run
//! state machine (its lease token, its run's status, its context's version), and one
//! statement writes every accepted step, followed by the next take and `COMMIT`.
//!
//! New successors go straight to the committing worker while it has free slots and holds their
//! run's context ("direct hand-off", as on Redis): they are written leased, so the take that
//! follows looks only for what is left of the worker's budget, and is skipped when nothing is.
//!
//! Rows are locked in one order (items, then runs by id) so that concurrent commits do not
//! deadlock; a take never waits for them (`SKIP LOCKED`). A run's row is held for one round
//! trip.

mod apply;
mod judge;
mod read;

use std::collections::HashMap;

use floxide_core::distributed::{
    CommitItem, CommitOutcome, CommitReply, DistributedError, RunStatus, TakeRequest,
};

use crate::ops::backend;
use crate::pipeline::Pipelined;
use crate::take::{take_once, Held, TakeRows};
use crate::PostgresBackend;

use apply::{Apply, Written, APPLY_TYPES};
use judge::{hand_off, judge, History};
use read::{Locked, ReadKeys, RunRow, READ};

impl PostgresBackend {
    /// Commits `commits` in one transaction and, when asked, takes the next batch in it.
    pub(crate) async fn commit_pipelined(
        &self,
        commits: &[CommitItem<'_>],
        next: Option<TakeRequest<'_>>,
        request: &str,
    ) -> Result<CommitReply, DistributedError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.commit_attempt(commits, next, request).await {
                Err(e) if attempt < 5 && crate::ops::is_transient(&e) => continue,
                other => return other,
            }
        }
    }

    async fn commit_attempt(
        &self,
        commits: &[CommitItem<'_>],
        next: Option<TakeRequest<'_>>,
        request: &str,
    ) -> Result<CommitReply, DistributedError> {
        let tx = Pipelined::new(self.pooled().await?);
        let client = tx.client();
        let read = client.prepare_cached(READ).await.map_err(backend)?;
        let keys = ReadKeys::of(commits);

        // Round trip 1: begin, lock and read.
        let (_, rows) = futures_util::future::try_join(tx.begin(), async {
            client.query(&read, &keys.params()).await.map_err(backend)
        })
        .await?;
        let Locked {
            items,
            mut runs,
            mut existing,
        } = Locked::from_rows(&rows, commits.len(), keys.run_ids.len())?;

        let (outcomes, mut writes) = judge(commits, &items, &mut runs, &mut existing, request)?;
        let held: Held<'_> = commits
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| matches!(o, CommitOutcome::Committed { .. }))
            .filter_map(|(c, _)| c.held.map(|h| (c.lease.run_id.as_str(), h)))
            .collect();
        let lease_ms = hand_off_lease_ms(commits, next);
        let mut handed = match next {
            Some(take) => hand_off(&mut writes, &runs, &held, take.worker, (take.max, lease_ms)),
            None => Vec::new(),
        };
        // What is left of the worker's free slots, for the take.
        let worker = next.map(|n| n.worker.as_str());
        // No take when the queue is known to be empty and this batch queues nothing.
        let next = next
            .filter(|take| take.max > handed.len())
            .filter(|take| writes.ready > 0 || !self.signals.queue_empty(take.workflow))
            .map(|take| take.with_max(take.max - handed.len()));
        if !self.config().step_history {
            writes.history = History::default();
        }

        // The runs' new records; finished runs (but failed ones, kept for a resume) lose
        // their items, so no other write touches those.
        let config = self.config();
        let channels = crate::listen::channels(config.schema());
        let gone = gone_runs(&runs);
        writes.created.drop_runs(&gone);
        let others = next.map_or(0, |n| n.max);
        let apply = Apply::new(
            &runs,
            &writes,
            gone,
            &channels,
            config.routine_history,
            others,
        )?;

        // Round trip 2: write, take, commit.
        let written = Written {
            apply: &apply,
            writes: &writes,
            request,
            lease_ms,
            worker,
        };
        let taken = self.write_and_take(&tx, written, next, &held).await?;
        drop(tx);
        if !taken.poison.is_empty() {
            if let Some(take) = next {
                self.dead_letter_poison(take, &taken.poison).await?;
            }
        }
        handed.extend(taken.taken);
        Ok(CommitReply::new(outcomes, handed))
    }

    /// Round trip 2: writes the batch (`written`), takes the next batch (`next`) and commits.
    /// The write is prepared before the round trip (a round trip of its own the first time a
    /// connection meets this combination of parts): it must go out before the `COMMIT`.
    async fn write_and_take(
        &self,
        tx: &Pipelined,
        written: Written<'_>,
        next: Option<TakeRequest<'_>>,
        held: &Held<'_>,
    ) -> Result<TakeRows, DistributedError> {
        let client = tx.client();
        let statement = match written.apply.statement(written.writes) {
            Some(statement) => Some(
                client
                    .prepare_typed_cached(&statement, &APPLY_TYPES)
                    .await
                    .map_err(backend)?,
            ),
            None => None,
        };
        let apply_fut = async {
            match &statement {
                Some(statement) => {
                    let params = written.params();
                    client.query(statement, &params).await.map_err(backend)
                }
                None => Ok(Vec::new()),
            }
        };
        let take_fut = async {
            match next {
                Some(take) => {
                    let epoch = self.signals.epoch();
                    let rows = take_once(client, take, held, self.config().step_history).await?;
                    self.signals
                        .took(take.workflow, epoch, rows.seen < take.max);
                    Ok(rows)
                }
                None => Ok(TakeRows::default()),
            }
        };
        let (_, taken, ()) =
            futures_util::future::try_join3(apply_fut, take_fut, tx.commit()).await?;
        Ok(taken)
    }
}

/// The lease, in ms, of the items handed straight to the worker (with a take) or kept for it
/// (without one; it shows in the step history).
fn hand_off_lease_ms(commits: &[CommitItem<'_>], next: Option<TakeRequest<'_>>) -> f64 {
    let lease = next.map_or_else(
        || {
            commits
                .iter()
                .filter_map(|c| c.keep_successor)
                .max()
                .unwrap_or_default()
        },
        |n| n.options.lease_timeout,
    );
    lease.as_millis() as f64
}

/// The touched runs the batch finishes other than as failed: their items go.
fn gone_runs(runs: &HashMap<String, RunRow>) -> Vec<&str> {
    runs.iter()
        .filter(|(_, run)| run.touched && run.finished && run.status != RunStatus::Failed)
        .map(|(id, _)| id.as_str())
        .collect()
}
