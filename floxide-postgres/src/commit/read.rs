//! What a batch commit locks and reads: the statement, its rows, its parameters.

use std::collections::{HashMap, HashSet};

use floxide_core::distributed::{CommitItem, DistributedError, Lease, RunStatus};

use crate::ops::status;

/// What the commit reads, in one statement (one row layout, [`Read`]): the batch's items,
/// locked (`i` rows; `$1` runs, `$2` item ids), then their runs, locked after them (`r` rows;
/// `$3` runs), and the successors that exist already (`e` rows; `$4` runs, `$5` item ids: a
/// step executed again after its lease was taken over derives the same ids).
pub(super) const READ: &str = "\
WITH locked_items AS (
    SELECT run_id, replace(item_id::text, '-', '') AS id, token, state, request, node, attempt,
        worker
    FROM items
    WHERE (run_id, item_id) IN (
        SELECT u.r, u.id::uuid FROM unnest($1::text[], $2::text[]) AS u(r, id))
    ORDER BY run_id, item_id FOR UPDATE),
locked_runs AS (
    SELECT run_id, status, version, outstanding, output IS NOT NULL AS has_output, workflow,
        finish_request, node_timings::text AS timings, deadline
    FROM runs WHERE run_id = ANY($3::text[]) ORDER BY run_id FOR NO KEY UPDATE)
SELECT 'i'::\"char\", run_id, id, token, state, request, node, attempt, worker, NULL::int8,
    NULL::int4, NULL::bool, NULL::text, NULL::text, NULL::text, NULL::timestamptz
FROM locked_items
UNION ALL
SELECT 'r', run_id, NULL, NULL, NULL, NULL, NULL, NULL, status, version, outstanding,
    has_output, workflow, finish_request, timings, deadline
FROM locked_runs
UNION ALL
SELECT 'e', run_id, replace(item_id::text, '-', ''), NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL, NULL
FROM items
WHERE (run_id, item_id) IN (
    SELECT u.r, u.id::uuid FROM unnest($4::text[], $5::text[]) AS u(r, id))";

/// The columns of a [`READ`] row.
pub(super) struct Read;

impl Read {
    pub(super) const KIND: usize = 0;
    pub(super) const RUN: usize = 1;
    pub(super) const ITEM: usize = 2;
    pub(super) const TOKEN: usize = 3;
    pub(super) const STATE: usize = 4;
    pub(super) const REQUEST: usize = 5;
    pub(super) const NODE: usize = 6;
    pub(super) const ATTEMPT: usize = 7;
    /// An item's worker (`i` rows), a run's status (`r` rows).
    pub(super) const WORKER: usize = 8;
    pub(super) const STATUS: usize = 8;
    pub(super) const VERSION: usize = 9;
    pub(super) const OUTSTANDING: usize = 10;
    pub(super) const HAS_OUTPUT: usize = 11;
    pub(super) const WORKFLOW: usize = 12;
    pub(super) const FINISH_REQUEST: usize = 13;
    pub(super) const TIMINGS: usize = 14;
    pub(super) const DEADLINE: usize = 15;
}

/// A locked item of the batch (or one kept for its worker by an earlier step of it).
pub(super) struct ItemRow {
    pub(super) token: u64,
    pub(super) state: i8,
    /// The request that committed it.
    pub(super) request: Option<String>,
    pub(super) node: String,
    pub(super) attempt: i32,
    /// Its holder, when leased.
    pub(super) worker: Option<String>,
}

impl ItemRow {
    /// An `i` row of [`READ`].
    pub(super) fn read(row: &tokio_postgres::Row) -> Self {
        ItemRow {
            token: row.get::<_, i64>(Read::TOKEN) as u64,
            state: row.get(Read::STATE),
            request: row.get(Read::REQUEST),
            node: row.get(Read::NODE),
            attempt: row.get(Read::ATTEMPT),
            worker: row.get(Read::WORKER),
        }
    }

    /// Whether `lease` holds this item.
    pub(super) fn held_by(&self, lease: &Lease) -> bool {
        crate::ops::holds(self.token, self.state, self.worker.as_deref(), lease)
    }
}

/// A locked run of the batch, and what the batch's accepted steps make of it.
pub(super) struct RunRow {
    pub(super) status: RunStatus,
    pub(super) version: u64,
    pub(super) outstanding: i64,
    pub(super) has_output: bool,
    pub(super) workflow: String,
    pub(super) finish_request: Option<String>,
    pub(super) timings: serde_json::Map<String, serde_json::Value>,
    pub(super) deadline: Option<std::time::SystemTime>,
    /// Changed by an accepted step (its record is written).
    pub(super) touched: bool,
    /// Its status when locked (a change is announced).
    pub(super) locked_status: RunStatus,
    pub(super) context: Option<Vec<u8>>,
    pub(super) output: Option<String>,
    pub(super) error: Option<String>,
    pub(super) finished: bool,
    pub(super) steps: i64,
    pub(super) made: i64,
}

impl RunRow {
    /// An `r` row of [`READ`].
    pub(super) fn read(row: &tokio_postgres::Row) -> Result<(String, RunRow), DistributedError> {
        let timings: &str = row.get(Read::TIMINGS);
        let timings = serde_json::from_str(timings)
            .map_err(|e| DistributedError::Backend(format!("PostgreSQL: node timings: {e}")))?;
        let status = status(row.get(Read::STATUS))?;
        Ok((
            row.get(Read::RUN),
            RunRow {
                status,
                version: row.get::<_, i64>(Read::VERSION) as u64,
                outstanding: i64::from(row.get::<_, i32>(Read::OUTSTANDING)),
                has_output: row.get(Read::HAS_OUTPUT),
                workflow: row.get(Read::WORKFLOW),
                finish_request: row.get(Read::FINISH_REQUEST),
                timings,
                deadline: row.get(Read::DEADLINE),
                touched: false,
                locked_status: status,
                context: None,
                output: None,
                error: None,
                finished: false,
                steps: 0,
                made: 0,
            },
        ))
    }

    /// Adds one execution of `node` that took `us` microseconds to its timings.
    pub(super) fn time(&mut self, node: &str, us: i64) {
        let entry = self
            .timings
            .entry(node.to_owned())
            .or_insert_with(|| serde_json::json!({}));
        let get = |e: &serde_json::Value, k: &str| e.get(k).and_then(|v| v.as_i64()).unwrap_or(0);
        let (count, total, max) = (
            get(entry, "count"),
            get(entry, "total_us"),
            get(entry, "max_us"),
        );
        *entry = serde_json::json!({
            "count": count + 1,
            "total_us": total + us,
            "max_us": max.max(us),
        });
    }
}

/// The read's parameters (see [`READ`]): the steps' runs and item ids, their runs (sorted,
/// each once), and their successors' runs and item ids.
pub(super) struct ReadKeys<'a> {
    pub(super) item_runs: Vec<&'a str>,
    pub(super) item_ids: Vec<String>,
    pub(super) run_ids: Vec<&'a str>,
    pub(super) succ_runs: Vec<&'a str>,
    pub(super) succ_ids: Vec<String>,
}

impl<'a> ReadKeys<'a> {
    pub(super) fn of(commits: &'a [CommitItem<'_>]) -> Self {
        let item_runs: Vec<&str> = commits.iter().map(|c| c.lease.run_id.as_str()).collect();
        let item_ids = commits
            .iter()
            .map(|c| c.lease.item_id.to_string())
            .collect();
        let mut run_ids = item_runs.clone();
        run_ids.sort_unstable();
        run_ids.dedup();
        let (succ_runs, succ_ids) = commits
            .iter()
            .flat_map(|c| {
                c.step
                    .successors
                    .iter()
                    .map(|s| (c.lease.run_id.as_str(), s.id.to_string()))
            })
            .unzip();
        ReadKeys {
            item_runs,
            item_ids,
            run_ids,
            succ_runs,
            succ_ids,
        }
    }

    pub(super) fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 5] {
        [
            &self.item_runs,
            &self.item_ids,
            &self.run_ids,
            &self.succ_runs,
            &self.succ_ids,
        ]
    }
}

/// What the read found: the steps' items and their runs, locked, and the successors that
/// exist already.
pub(super) struct Locked {
    pub(super) items: HashMap<(String, String), ItemRow>,
    pub(super) runs: HashMap<String, RunRow>,
    pub(super) existing: HashSet<(String, String)>,
}

impl Locked {
    /// Sorts the read's rows by their kind (see [`Read::KIND`]).
    pub(super) fn from_rows(
        rows: &[tokio_postgres::Row],
        commits: usize,
        runs: usize,
    ) -> Result<Self, DistributedError> {
        let mut locked = Locked {
            items: HashMap::with_capacity(commits),
            runs: HashMap::with_capacity(runs),
            existing: HashSet::new(),
        };
        for row in rows {
            let key = || (row.get(Read::RUN), row.get(Read::ITEM));
            match row.get::<_, i8>(Read::KIND) as u8 {
                b'i' => {
                    locked.items.insert(key(), ItemRow::read(row));
                }
                b'r' => {
                    let (id, run) = RunRow::read(row)?;
                    locked.runs.insert(id, run);
                }
                _ => {
                    locked.existing.insert(key());
                }
            }
        }
        Ok(locked)
    }
}
