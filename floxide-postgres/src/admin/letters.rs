//! The dead letters of [`AdminBackend`](floxide_core::distributed::AdminBackend): listed,
//! requeued (which revives a failed run) or dropped.

use floxide_core::distributed::machine;
use floxide_core::distributed::{payload_text, DeadLetter, DistributedError, RunStatus};
use floxide_core::ItemId;

use super::control::add_outstanding;
use crate::ops::{self, backend, item_id, status};
use crate::PostgresBackend;

impl PostgresBackend {
    /// Every dead letter, oldest first.
    pub(super) async fn list_letters(&self) -> Result<Vec<DeadLetter>, DistributedError> {
        let client = self.pooled().await?;
        let rows = client
            .query(
                "SELECT run_id, replace(item_id::text, '-', ''), node, error, deliveries, \
                 attempt, failed_at, payload FROM dead_letters ORDER BY failed_at",
                &[],
            )
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|row| {
                Ok(DeadLetter {
                    run_id: row.get(0),
                    item_id: item_id(row.get(1))?,
                    node: row.get(2),
                    error: row.get(3),
                    deliveries: row.get::<_, i32>(4) as u32,
                    attempt: row.get::<_, i32>(5) as u32,
                    at: row.get(6),
                    payload: payload_text(row.get(7)),
                })
            })
            .collect()
    }

    /// Puts dead letter `item_id` of `run_id` back in the queue (a failed run runs again).
    pub(super) async fn requeue_letter(
        &self,
        run_id: &str,
        item_id: ItemId,
    ) -> Result<(), DistributedError> {
        let schema = self.config().schema().to_owned();
        let id = item_id.to_string();
        let mut client = self.pooled().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let letter = tx
            .query_opt(
                "SELECT 1 FROM dead_letters WHERE run_id = $1 AND item_id = $2::text::uuid \
                 FOR UPDATE",
                &[&run_id, &id],
            )
            .await
            .map_err(backend)?;
        if letter.is_none() {
            return Err(DistributedError::UnknownDeadLetter {
                run_id: run_id.to_owned(),
                item_id,
            });
        }
        // The run may have passed its retention: the letter stays.
        let run = tx
            .query_opt(
                "SELECT status FROM runs WHERE run_id = $1 FOR NO KEY UPDATE",
                &[&run_id],
            )
            .await
            .map_err(backend)?
            .ok_or_else(|| DistributedError::RunExpired(run_id.to_owned()))?;
        let current = status(run.get(0))?;
        if !machine::accepts_results(current) {
            return Err(DistributedError::InvalidRunState {
                run_id: run_id.to_owned(),
                status: current,
                action: "requeue a dead letter",
            });
        }
        tx.execute(
            "DELETE FROM dead_letters WHERE run_id = $1 AND item_id = $2::text::uuid",
            &[&run_id, &id],
        )
        .await
        .map_err(backend)?;
        let requeued = tx
            .execute(
                "UPDATE items SET state = 'P', deliveries = 0, due_at = now() \
                 WHERE run_id = $1 AND item_id = $2::text::uuid AND state = 'F'",
                &[&run_id, &id],
            )
            .await
            .map_err(backend)?;
        add_outstanding(&tx, run_id, requeued).await?;
        let reopening =
            current == RunStatus::Failed && ops::reopen(&tx, run_id, RunStatus::Running).await?;
        ops::notify_work(&tx, &schema).await?;
        ops::notify_run(&tx, &schema, run_id).await?;
        tx.commit().await.map_err(backend)?;
        if reopening {
            ops::reopen_rest_or_leave(&client, &schema, run_id).await;
        }
        Ok(())
    }

    /// Forgets dead letter `item_id` of `run_id`.
    pub(super) async fn drop_letter(
        &self,
        run_id: &str,
        item_id: ItemId,
    ) -> Result<(), DistributedError> {
        let client = self.pooled().await?;
        let dropped = client
            .execute(
                "DELETE FROM dead_letters WHERE run_id = $1 AND item_id = $2::text::uuid",
                &[&run_id, &item_id.to_string()],
            )
            .await
            .map_err(backend)?;
        if dropped == 0 {
            return Err(DistributedError::UnknownDeadLetter {
                run_id: run_id.to_owned(),
                item_id,
            });
        }
        Ok(())
    }
}
