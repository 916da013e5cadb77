//! What operators ask of a PostgreSQL deployment beyond the backend traits: queue counters
//! per workflow ([`PostgresBackend::stats`]) and a run's progress
//! ([`PostgresBackend::progress`]), with its in-flight items' lease deadlines
//! ([`PostgresBackend::lease_deadlines`]). Read-only; the counters come from one snapshot (one
//! statement per table, pipelined in one transaction).

use std::collections::BTreeMap;
use std::time::SystemTime;

use floxide_core::distributed::overview::{RunProgress, Stats, WorkflowCounts};
use floxide_core::distributed::DistributedError;
use floxide_core::ItemId;

use crate::ops::{backend, item_id};
use crate::PostgresBackend;

/// Runs per workflow: all kept, active, steps committed, finished in the last minute. `$1`
/// the active statuses.
const RUNS: &str = "\
SELECT workflow, count(*)::int8, count(*) FILTER (WHERE status = ANY($1::text[]))::int8,
    coalesce(sum(steps_done), 0)::int8,
    count(*) FILTER (WHERE finished_at > now() - interval '1 minute')::int8
FROM runs GROUP BY workflow";

/// Items whose time can come, per workflow (through the partial index): ready, waiting for a
/// retry, leased, leased past their expiry.
const ITEMS: &str = "\
SELECT workflow, count(*) FILTER (WHERE state = 'P')::int8,
    count(*) FILTER (WHERE state = 'R')::int8,
    count(*) FILTER (WHERE state = 'I' AND due_at > now())::int8,
    count(*) FILTER (WHERE state = 'I' AND due_at <= now())::int8
FROM items WHERE state IN ('P', 'I', 'R') GROUP BY workflow";

const LETTERS: &str = "SELECT workflow, count(*)::int8 FROM dead_letters GROUP BY workflow";

impl PostgresBackend {
    /// Counts the ready, delayed, in-flight and dead-lettered items and the runs of every
    /// workflow (runs finished within the retention included).
    ///
    /// # Errors
    /// A backend error.
    pub async fn stats(&self) -> Result<Stats, DistributedError> {
        let mut client = self.pooled().await?;
        // One snapshot for all four reads.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(backend)?;
        // Active runs are those whose items are leased.
        let (active, _) = crate::take::status_sets();
        let (now, runs, items, letters) = futures_util::future::try_join4(
            tx.query_one("SELECT now()", &[]),
            tx.query(RUNS, &[&active]),
            tx.query(ITEMS, &[]),
            tx.query(LETTERS, &[]),
        )
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        let count = |row: &tokio_postgres::Row, i: usize| row.get::<_, i64>(i).max(0) as u64;
        let mut workflows: BTreeMap<String, WorkflowCounts> = BTreeMap::new();
        for row in &runs {
            let counts = workflows.entry(row.get(0)).or_default();
            counts.runs = count(row, 1);
            counts.active_runs = count(row, 2);
            counts.completed_steps = count(row, 3);
            counts.finished_last_minute = count(row, 4);
        }
        for row in &items {
            let counts = workflows.entry(row.get(0)).or_default();
            counts.ready = count(row, 1);
            counts.delayed = count(row, 2);
            counts.in_flight = count(row, 3);
            counts.expired_leases = count(row, 4);
        }
        for row in &letters {
            workflows.entry(row.get(0)).or_default().dead_letters = count(row, 1);
        }
        Ok(Stats {
            server_time: now.get(0),
            workflows,
        })
    }

    /// How far a run is: items created, steps committed, items outstanding.
    ///
    /// # Errors
    /// [`DistributedError::UnknownRun`] or a backend error.
    pub async fn progress(&self, run_id: &str) -> Result<RunProgress, DistributedError> {
        let client = self.pooled().await?;
        let row = client
            .query_opt(
                "SELECT items_created, steps_done, outstanding FROM runs WHERE run_id = $1",
                &[&run_id],
            )
            .await
            .map_err(backend)?
            .ok_or_else(|| DistributedError::UnknownRun(run_id.to_owned()))?;
        Ok(RunProgress {
            total: row.get::<_, i64>(0).max(0) as u64,
            completed: row.get::<_, i64>(1).max(0) as u64,
            outstanding: row.get::<_, i32>(2).max(0) as u64,
        })
    }

    /// When the lease of each in-flight item of `run_id` expires (by the server's clock),
    /// unless its worker renews it first.
    ///
    /// # Errors
    /// [`DistributedError::UnknownRun`] or a backend error.
    pub async fn lease_deadlines(
        &self,
        run_id: &str,
    ) -> Result<BTreeMap<ItemId, SystemTime>, DistributedError> {
        let client = self.pooled().await?;
        self.known(&**client, run_id).await?;
        let rows = client
            .query(
                "SELECT replace(item_id::text, '-', ''), due_at FROM items \
                 WHERE run_id = $1 AND state = 'I'",
                &[&run_id],
            )
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|row| Ok((item_id(row.get(0))?, row.get(1))))
            .collect()
    }
}
