//! What the controls of [`AdminBackend`](floxide_core::distributed::AdminBackend) do to a
//! run inside their transaction: lock and read it, revive its dead letters, cancel it, finish
//! a resumed run.

use deadpool_postgres::Transaction;
use floxide_core::distributed::machine::RunState;
use floxide_core::distributed::{DistributedError, RunStatus};

use crate::ops::{self, backend, status};

/// A run's row as a control reads it, locked for the transaction.
pub(super) struct Locked {
    /// Its status, outstanding count and whether it has an output.
    pub(super) state: RunState,
    pub(super) workflow: String,
    /// Whether the retention sweep is deleting its items.
    pub(super) leftovers: bool,
}

impl Locked {
    /// Locks and reads run `run_id`'s row.
    ///
    /// # Errors
    /// [`DistributedError::UnknownRun`], or a backend error.
    pub(super) async fn read(tx: &Transaction<'_>, run_id: &str) -> Result<Self, DistributedError> {
        let row = tx
            .query_opt(
                concat!(
                    "SELECT ",
                    ops::run_status!(),
                    ", r.outstanding, r.output IS NOT NULL, r.workflow, \
                     EXISTS (SELECT 1 FROM leftovers l WHERE l.run_id = r.run_id) \
                     FROM runs r WHERE r.run_id = $1 FOR NO KEY UPDATE OF r"
                ),
                &[&run_id],
            )
            .await
            .map_err(backend)?
            .ok_or_else(|| DistributedError::UnknownRun(run_id.to_owned()))?;
        Ok(Locked {
            state: RunState {
                status: status(row.get(0))?,
                outstanding: row.get::<_, i32>(1).max(0) as u64,
                has_output: row.get(2),
            },
            workflow: row.get(3),
            leftovers: row.get(4),
        })
    }
}

/// How many of a failed run's dead letters a resume revives (at most 1000).
pub(super) async fn revivable_letters(
    tx: &Transaction<'_>,
    run_id: &str,
) -> Result<i64, DistributedError> {
    Ok(tx
        .query_one(
            "SELECT count(*) FROM (SELECT 1 FROM dead_letters WHERE run_id = $1 LIMIT 1000) d",
            &[&run_id],
        )
        .await
        .map_err(backend)?
        .get(0))
}

/// Revives up to 1000 of a run's dead letters: their items are ready again, with no
/// deliveries, and count as outstanding.
pub(super) async fn revive_letters(
    tx: &Transaction<'_>,
    run_id: &str,
) -> Result<(), DistributedError> {
    let revived = tx
        .execute(
            "WITH letters AS ( \
                 DELETE FROM dead_letters WHERE (run_id, item_id) IN ( \
                     SELECT run_id, item_id FROM dead_letters WHERE run_id = $1 \
                     LIMIT 1000) RETURNING item_id) \
             UPDATE items SET state = 'K', deliveries = 0 \
             WHERE run_id = $1 AND state = 'F' \
               AND item_id IN (SELECT item_id FROM letters)",
            &[&run_id],
        )
        .await
        .map_err(backend)?;
    add_outstanding(tx, run_id, revived).await
}

/// Counts `n` more outstanding items for run `run_id` (dead letters made ready again).
pub(super) async fn add_outstanding(
    tx: &Transaction<'_>,
    run_id: &str,
    n: u64,
) -> Result<(), DistributedError> {
    tx.execute(
        "UPDATE runs SET outstanding = outstanding + $2 WHERE run_id = $1",
        &[&run_id, &(n as i32)],
    )
    .await
    .map_err(backend)?;
    Ok(())
}

/// Cancels a run: it finishes as cancelled.
pub(super) async fn cancel_run(tx: &Transaction<'_>, run_id: &str) -> Result<(), DistributedError> {
    tx.execute(
        ops::finishing!(
            "UPDATE runs SET status = 'cancelled', finished_at = now() \
             WHERE run_id = $1"
        ),
        &[&run_id],
    )
    .await
    .map_err(backend)?;
    ops::finish(tx, run_id, RunStatus::Cancelled).await
}

/// Finishes a resumed run that has nothing left to run as `next` (failed with `error` when it
/// has no output).
pub(super) async fn finish_resumed(
    tx: &Transaction<'_>,
    run_id: &str,
    next: RunStatus,
    error: Option<String>,
) -> Result<(), DistributedError> {
    tx.execute(
        ops::finishing!(
            "UPDATE runs SET status = $2, finished_at = now(), \
             error = coalesce($3, error) WHERE run_id = $1"
        ),
        &[&run_id, &next.to_string(), &error],
    )
    .await
    .map_err(backend)?;
    ops::finish(tx, run_id, next).await
}
