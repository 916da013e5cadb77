//! Retention (G9): finished runs, dead letters and silent workers are deleted once they
//! outlive their retention, in slices of a bounded number of rows per statement, so that a
//! sweep never holds many locks or a long transaction. Each backend value sweeps on its own
//! schedule (`PostgresConfig::with_sweep_interval`); concurrent sweeps skip each other's rows.

use std::sync::Weak;
use std::time::Duration;

use deadpool_postgres::Pool;
use floxide_core::distributed::DistributedError;

use crate::ops::backend;
use crate::PostgresBackend;

/// Rows per delete statement.
const SLICE: i64 = 500;

/// Finished runs past the retention (`$1` seconds), oldest first (as listed in `finished`),
/// with their step history, outputs and errors; their reclaims go with them through their
/// foreign key (`ON DELETE CASCADE`). A run that still has items (a failed run keeps them) is
/// listed in `leftovers` instead, and goes once [`LEFTOVERS`] has deleted them (its line in
/// `finished` stays for the next sweep). A line whose run was resumed since, or is gone, is
/// dropped (a later finish lists the run again). Counts the runs deleted, and the lines
/// dropped (the sweep goes on while a slice drops as many as it may).
const RUNS: &str = "\
WITH due AS (
    SELECT ctid AS line, run_id FROM finished
    WHERE at < now() - make_interval(secs => $1::float8)
    ORDER BY at LIMIT $2 FOR UPDATE SKIP LOCKED),
old AS (
    SELECT run_id FROM runs
    WHERE run_id IN (SELECT run_id FROM due)
        AND finished_at < now() - make_interval(secs => $1::float8)
    FOR UPDATE SKIP LOCKED),
busy AS (
    SELECT o.run_id FROM old o WHERE EXISTS (SELECT 1 FROM items i WHERE i.run_id = o.run_id)),
listed AS (INSERT INTO leftovers (run_id) SELECT run_id FROM busy ON CONFLICT DO NOTHING),
gone AS (
    DELETE FROM runs WHERE run_id IN (SELECT run_id FROM old EXCEPT SELECT run_id FROM busy)
    RETURNING run_id),
unlisted AS (
    DELETE FROM finished WHERE ctid IN (
        SELECT d.line FROM due d
        WHERE d.run_id IN (SELECT run_id FROM gone)
            OR NOT EXISTS (
                SELECT 1 FROM runs r WHERE r.run_id = d.run_id
                    AND r.finished_at < now() - make_interval(secs => $1::float8)))
    RETURNING 1),
history AS (DELETE FROM step_events WHERE run_id IN (SELECT run_id FROM gone)),
outs AS (DELETE FROM outputs WHERE run_id IN (SELECT run_id FROM gone)),
errs AS (DELETE FROM errors WHERE run_id IN (SELECT run_id FROM gone))
SELECT count(*), (SELECT count(*) FROM unlisted) FROM gone";

/// A slice (`$1` rows) of the items of one run listed in `leftovers` (a finished run, or
/// one past its retention); the run leaves the list with its last slice. Answers the runs
/// it found (0 or 1) and the items it deleted.
const LEFTOVERS: &str = "\
WITH run AS (SELECT run_id FROM leftovers LIMIT 1 FOR UPDATE SKIP LOCKED),
gone AS (
    DELETE FROM items WHERE (run_id, item_id) IN (
        SELECT run_id, item_id FROM items WHERE run_id IN (SELECT run_id FROM run)
        LIMIT $1 FOR UPDATE SKIP LOCKED)
    RETURNING 1),
done AS (
    DELETE FROM leftovers WHERE run_id IN (SELECT run_id FROM run)
        AND (SELECT count(*) FROM gone) < $1)
SELECT (SELECT count(*) FROM run), (SELECT count(*) FROM gone)";

/// Dead letters past their retention (`$1` seconds), oldest first. Counts them.
const LETTERS: &str = "\
WITH gone AS (
    DELETE FROM dead_letters WHERE (run_id, item_id) IN (
        SELECT run_id, item_id FROM dead_letters
        WHERE failed_at < now() - make_interval(secs => $1::float8)
        ORDER BY failed_at LIMIT $2 FOR UPDATE SKIP LOCKED)
    RETURNING 1)
SELECT count(*) FROM gone";

/// Workers not heard from for longer than the retention (`$1` seconds). Counts them.
const WORKERS: &str = "\
WITH gone AS (
    DELETE FROM workers WHERE worker_id IN (
        SELECT worker_id FROM workers
        WHERE seen_at < now() - make_interval(secs => $1::float8)
        LIMIT $2 FOR UPDATE SKIP LOCKED)
    RETURNING 1)
SELECT count(*) FROM gone";

/// What one sweep deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Swept {
    /// Finished runs (with their outputs and errors).
    pub runs: u64,
    /// Items of finished runs that their finish left for the sweep.
    pub items: u64,
    /// Dead letters.
    pub dead_letters: u64,
    /// Worker records.
    pub workers: u64,
}

impl PostgresBackend {
    /// Deletes what outlived its retention now: finished runs (with their items, outputs,
    /// errors), dead letters, and workers silent for longer than the run retention. Each
    /// statement deletes at most 500 rows; the sweep goes on until nothing is left. It also
    /// readies the parked items a resume left (its caller stopped midway), 1,000 per
    /// statement. The backend also does this on its own every sweep interval.
    ///
    /// # Errors
    /// A backend error (what was deleted before it stays deleted).
    pub async fn sweep(&self) -> Result<Swept, DistributedError> {
        sweep(&self.pool, self.config()).await
    }

    /// Starts the periodic sweep of this backend value (it ends when the last clone of the
    /// value is dropped, `alive` being its listener's signals).
    pub(crate) fn spawn_sweeper<T: Send + Sync + 'static>(&self, alive: Weak<T>) {
        let (pool, config) = (self.pool.clone(), self.config().clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(config.sweep_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if alive.strong_count() == 0 {
                    return;
                }
                if let Err(error) = sweep(&pool, &config).await {
                    tracing::debug!(%error, "the retention sweep failed; trying again later");
                }
            }
        });
    }
}

async fn sweep(pool: &Pool, config: &crate::PostgresConfig) -> Result<Swept, DistributedError> {
    let client = pool
        .get()
        .await
        .map_err(|e| DistributedError::Backend(format!("PostgreSQL: {e}")))?;
    let runs = secs(config.retention);
    let letters = secs(config.letter_retention);
    // A run past its retention that still has items is listed and kept: its items go in
    // slices, then the run (the second pass).
    let first = in_slices(&client, RUNS, runs).await?;
    let items = leftover_items(&client).await?;
    unfinished_resumes(&client, config.schema()).await?;
    Ok(Swept {
        items,
        runs: first + in_slices(&client, RUNS, runs).await?,
        dead_letters: in_slices(&client, LETTERS, letters).await?,
        workers: in_slices(&client, WORKERS, runs).await?,
    })
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Deletes the items listed runs left, a slice per statement, until no listed run is left
/// (or the others are another sweep's). Answers the items deleted.
async fn leftover_items(client: &deadpool_postgres::Object) -> Result<u64, DistributedError> {
    let statement = client.prepare_cached(LEFTOVERS).await.map_err(backend)?;
    let mut total = 0;
    loop {
        let row = client
            .query_one(&statement, &[&SLICE])
            .await
            .map_err(backend)?;
        let (runs, items): (i64, i64) = (row.get(0), row.get(1));
        total += items as u64;
        if runs == 0 {
            return Ok(total);
        }
    }
}

/// Readies the parked items that resumes left (their caller stopped before it had readied
/// them all, see `ops::reopen`), a slice per statement; up to 100 runs per sweep.
async fn unfinished_resumes(
    client: &deadpool_postgres::Object,
    schema: &str,
) -> Result<(), DistributedError> {
    let runs = client
        .query("SELECT run_id FROM reopening LIMIT 100", &[])
        .await
        .map_err(backend)?;
    for row in runs {
        crate::ops::reopen_rest(client, schema, row.get(0)).await?;
    }
    Ok(())
}

/// Runs a slice-limited delete (which answers its count) until a slice comes back short.
async fn in_slices(
    client: &deadpool_postgres::Object,
    statement: &str,
    retention: f64,
) -> Result<u64, DistributedError> {
    let statement = client.prepare_cached(statement).await.map_err(backend)?;
    let mut total = 0;
    loop {
        let row = client
            .query_one(&statement, &[&retention, &SLICE])
            .await
            .map_err(backend)?;
        let deleted = row.get::<_, i64>(0) as u64;
        // A statement that also drops rows without counting them answers those it went
        // through in all as a second column.
        let through = if row.len() > 1 {
            row.get::<_, i64>(1) as u64
        } else {
            deleted
        };
        total += deleted;
        if through < SLICE as u64 {
            return Ok(total);
        }
    }
}
