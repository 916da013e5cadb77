//! The transitions in SQL: start a run, take a batch of items under leases, commit a batch of
//! steps (each fenced by its lease token), fail, release, renew.
//!
//! Each operation is one transaction. Rows are locked in one order everywhere, items before
//! their run, so that concurrent takes and commits do not deadlock; a take skips the items
//! other transactions hold (`FOR UPDATE SKIP LOCKED`). The run's status follows the state
//! machine of `floxide_core::distributed::machine`, computed in Rust from the locked row.

use std::time::Duration;

use deadpool_postgres::Transaction;
use floxide_core::distributed::machine::{self, FailureEffect};
use floxide_core::distributed::{
    poison_error, CommitOutcome, DistributedError, HeardOutputs, Lease, LeaseState, RunStatus,
    StartRun, StepFailed, WorkflowError, KEPT_LEASE_TOKEN,
};
use floxide_core::ItemId;

use crate::error::describe;

mod lease;
mod reopen;

pub(crate) use lease::{fail, heartbeat, release};
pub(crate) use reopen::{reopen, reopen_rest, reopen_rest_or_leave};

/// A query error as the runtime's error.
pub(crate) fn backend(e: tokio_postgres::Error) -> DistributedError {
    DistributedError::Backend(format!("PostgreSQL: {}", describe(&e)))
}

/// The error of a start PostgreSQL refused: a run id or idempotency key beyond an index's
/// size limit is the caller's ([`DistributedError::StartRefused`]), anything else the
/// backend's.
pub(crate) fn start_error(e: tokio_postgres::Error) -> DistributedError {
    if is_over_limit(&e) {
        DistributedError::StartRefused(format!("PostgreSQL: {}", describe(&e)))
    } else {
        backend(e)
    }
}

/// Whether PostgreSQL refused a statement because a value exceeds one of its limits (an
/// index row over its size limit, say).
pub(crate) fn is_over_limit(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::PROGRAM_LIMIT_EXCEEDED)
}

/// Whether `error` is a deadlock or serialization failure: nothing was applied, and the same
/// transaction may simply run again.
pub(crate) fn is_transient(error: &DistributedError) -> bool {
    matches!(error, DistributedError::Backend(m) if m.ends_with("(40P01)") || m.ends_with("(40001)"))
}

/// A stored item id (a uuid's text, dashes removed by the queries) as an [`ItemId`].
pub(crate) fn item_id(text: &str) -> Result<ItemId, DistributedError> {
    text.replace('-', "")
        .parse()
        .map_err(|_| DistributedError::Backend(format!("PostgreSQL: malformed item id `{text}`")))
}

/// A stored run status.
pub(crate) fn status(text: &str) -> Result<RunStatus, DistributedError> {
    text.parse()
        .map_err(|e| DistributedError::Backend(format!("PostgreSQL: {e}")))
}

/// The error of a run that finished without output.
pub(crate) fn no_output(workflow: &str) -> String {
    format!("workflow `{workflow}` finished without output: no terminal node produced a value")
}

/// Notifies idle takers that work is ready: at the commit of `client`'s transaction, or at
/// once outside one.
pub(crate) async fn notify_work(
    client: &impl deadpool_postgres::GenericClient,
    schema: &str,
) -> Result<(), DistributedError> {
    client
        .execute("SELECT pg_notify($1, '')", &[&format!("{schema}_work")])
        .await
        .map_err(backend)?;
    Ok(())
}

/// The longest payload a notification carries here: PostgreSQL refuses 8,000 bytes or more
/// (and the transaction with them).
pub(crate) const PAYLOAD_MAX: usize = 7900;

/// The runs channel's payload for a change of `run`: its id as a notification line names it
/// ([`HeardOutputs::line_id`]: an id with a tab in it would read as an id and an output), or
/// nothing when that is too long to send (the listener wakes waiters on any notification of
/// the channel; the id only tells which).
pub(crate) fn run_payload(run: &str) -> String {
    let id = HeardOutputs::line_id(run);
    if id.len() <= PAYLOAD_MAX {
        id.into_owned()
    } else {
        String::new()
    }
}

/// Notifies run waiters (at commit) that `run`'s record changed.
pub(crate) async fn notify_run(
    tx: &Transaction<'_>,
    schema: &str,
    run: &str,
) -> Result<(), DistributedError> {
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&format!("{schema}_runs"), &run_payload(run)],
    )
    .await
    .map_err(backend)?;
    Ok(())
}

/// The status of run `r` (a row of `runs`): a run stays `pending` in its row until its first
/// commit, and reads as running once one of its items was leased (tokens grow with each lease):
/// a take does not write the run's row.
macro_rules! run_status {
    () => {
        "(CASE WHEN r.status = 'pending' AND EXISTS (
            SELECT 1 FROM items i WHERE i.run_id = r.run_id AND i.token > 0)
         THEN 'running' ELSE r.status END)"
    };
}
pub(crate) use run_status;

/// Stores a run's record, context and first item. A retry of the same request (`request`)
/// answers as the first attempt did.
pub(crate) async fn start(
    tx: &Transaction<'_>,
    start: &StartRun,
    request: &str,
) -> Result<(), DistributedError> {
    let inserted = tx
        .execute(
            "INSERT INTO runs (run_id, workflow, status, context, outstanding, start_request, \
             deadline, idempotency_key, input) VALUES ($1, $2, 'pending', $3, 1, $4, $5, $6, $7) \
             ON CONFLICT DO NOTHING",
            &[
                &start.run_id,
                &start.workflow,
                &start.context,
                &request,
                &start.deadline,
                &start.idempotency_key,
                &start.first.bytes,
            ],
        )
        .await
        .map_err(start_error)?;
    if inserted == 0 {
        let same_id = tx
            .query_opt(
                "SELECT start_request FROM runs WHERE run_id = $1",
                &[&start.run_id],
            )
            .await
            .map_err(backend)?;
        return match same_id {
            Some(row) if row.get::<_, &str>(0) == request => Ok(()),
            Some(_) => Err(DistributedError::RunExists(start.run_id.clone())),
            None => {
                let key = start.idempotency_key.clone().unwrap_or_default();
                let existing = tx
                    .query_opt(
                        "SELECT run_id FROM runs WHERE idempotency_key = $1",
                        &[&key],
                    )
                    .await
                    .map_err(backend)?
                    .map(|row| row.get::<_, String>(0))
                    .unwrap_or_default();
                Err(DistributedError::DuplicateRun { key, existing })
            }
        };
    }
    tx.execute(
        "INSERT INTO items (run_id, item_id, workflow, node, payload, state) \
         VALUES ($1, $2::text::uuid, $3, $4, $5, 'P')",
        &[
            &start.run_id,
            &start.first.id.to_string(),
            &start.workflow,
            &start.first.node,
            &start.first.bytes,
        ],
    )
    .await
    .map_err(start_error)?;
    Ok(())
}

/// Dead-letters a poison item (delivered `max_deliveries` times without a commit) that a
/// take reported, if it still is one under its lock; its run fails. Returns the run when
/// its record changed.
pub(crate) async fn poison(
    tx: &Transaction<'_>,
    run_id: &str,
    id_text: &str,
    max_deliveries: u32,
) -> Result<Option<String>, DistributedError> {
    let row = tx
        .query_opt(
            "SELECT node, attempt, deliveries FROM items \
             WHERE run_id = $1 AND item_id = $2::text::uuid AND state IN ('P', 'I', 'R') \
             AND deliveries >= $3 FOR UPDATE",
            &[
                &run_id,
                &id_text,
                &(max_deliveries.min(i32::MAX as u32) as i32),
            ],
        )
        .await
        .map_err(backend)?;
    let Some(row) = row else {
        return Ok(None);
    };
    let deliveries: i32 = row.get(2);
    let error = poison_error(u32::try_from(deliveries).unwrap_or(0), max_deliveries);
    let id = item_id(id_text)?;
    dead_letter(tx, run_id, id, &error).await?;
    record_error(tx, run_id, id, row.get(0), &error, row.get(1), false).await?;
    let failed = tx
        .execute(
            finishing!(
                "UPDATE runs SET outstanding = outstanding - 1, status = 'failed', \
                 error = $2, finished_at = now() \
                 WHERE run_id = $1 AND status NOT IN ('completed', 'failed', 'cancelled')"
            ),
            &[&run_id, &error],
        )
        .await
        .map_err(backend)?;
    if failed == 0 {
        tx.execute(
            "UPDATE runs SET outstanding = outstanding - 1 WHERE run_id = $1",
            &[&run_id],
        )
        .await
        .map_err(backend)?;
    }
    Ok(Some(run_id.to_owned()))
}

/// Milliseconds until the next item of `workflow` falls due (a lease expires or a retry is
/// due), if any; 0 when something is due already (held by another transaction).
pub(crate) async fn next_due(
    client: &deadpool_postgres::ClientWrapper,
    workflow: &str,
) -> Result<Option<u64>, DistributedError> {
    // Prepared once per connection: every idle taker asks before it waits.
    let statement = client
        .prepare_cached(
            "SELECT (extract(epoch FROM min(due_at) - now()) * 1000)::float8 FROM items \
             WHERE workflow = $1 AND state IN ('P', 'I', 'R')",
        )
        .await
        .map_err(backend)?;
    let row = client
        .query_one(&statement, &[&workflow])
        .await
        .map_err(backend)?;
    Ok(row
        .get::<_, Option<f64>>(0)
        .map(|ms| ms.max(0.0).ceil() as u64))
}

async fn set_state(
    tx: &Transaction<'_>,
    run_id: &str,
    id: &str,
    state: u8,
) -> Result<(), DistributedError> {
    tx.execute(
        "UPDATE items SET state = $3, worker = NULL WHERE run_id = $1 AND item_id = $2::text::uuid",
        &[&run_id, &id, &(state as i8)],
    )
    .await
    .map_err(backend)?;
    Ok(())
}

/// Moves an item to the dead letters (its line stays, as `F`, for a resume).
async fn dead_letter(
    tx: &Transaction<'_>,
    run_id: &str,
    id: ItemId,
    error: &str,
) -> Result<(), DistributedError> {
    let id = id.to_string();
    tx.execute(
        "WITH gone AS (UPDATE items SET state = 'F', worker = NULL \
                       WHERE run_id = $1 AND item_id = $2::text::uuid \
                       RETURNING run_id, item_id, workflow, node, payload, attempt, deliveries) \
         INSERT INTO dead_letters (run_id, item_id, workflow, node, payload, error, attempt, \
                                   deliveries) \
         SELECT run_id, item_id, workflow, node, payload, $3, attempt, deliveries FROM gone \
         ON CONFLICT (run_id, item_id) DO UPDATE SET error = excluded.error, \
             attempt = excluded.attempt, deliveries = excluded.deliveries, failed_at = now()",
        &[&run_id, &id, &error],
    )
    .await
    .map_err(backend)?;
    Ok(())
}

/// Records a failure of a run.
async fn record_error(
    tx: &Transaction<'_>,
    run_id: &str,
    id: ItemId,
    node: &str,
    error: &str,
    attempt: i32,
    handled: bool,
) -> Result<(), DistributedError> {
    let failure = WorkflowError {
        work_item: id,
        node: node.to_owned(),
        error: error.to_owned(),
        attempt: attempt as u32,
        handled,
        timestamp: std::time::SystemTime::now(),
    };
    insert_error(tx, run_id, &failure).await
}

async fn insert_error(
    tx: &Transaction<'_>,
    run_id: &str,
    failure: &WorkflowError,
) -> Result<(), DistributedError> {
    let json =
        serde_json::to_string(failure).map_err(|e| DistributedError::Codec(e.to_string()))?;
    tx.execute(
        "INSERT INTO errors (run_id, error) VALUES ($1, $2::text::jsonb)",
        &[&run_id, &json],
    )
    .await
    .map_err(backend)?;
    Ok(())
}

/// A leased item and its run, locked (item first); `None` when the run is unknown.
struct Locked {
    /// Whether the lease still holds the item.
    held: bool,
    /// Whether the item exists (its run's items are not gone).
    exists: bool,
    node: String,
    attempt: i32,
    status: RunStatus,
}

/// Whether `lease` holds an item leased under `token` in `state` to `worker`: a kept lease
/// (token 0) is its holder's only.
pub(crate) fn holds(token: u64, state: i8, worker: Option<&str>, lease: &Lease) -> bool {
    token == lease.token
        && state == b'I' as i8
        && (lease.token != KEPT_LEASE_TOKEN || worker == Some(lease.worker.as_str()))
}

async fn lock(tx: &Transaction<'_>, lease: &Lease) -> Result<Option<Locked>, DistributedError> {
    let id = lease.item_id.to_string();
    // Both in one round trip (pipelined; the server locks them in this order).
    let (item, run) = futures_util::future::try_join(
        tx.query_opt(
            "SELECT token, state, node, attempt, worker FROM items \
             WHERE run_id = $1 AND item_id = $2::text::uuid FOR UPDATE",
            &[&lease.run_id, &id],
        ),
        tx.query_opt(
            "SELECT status FROM runs WHERE run_id = $1 FOR NO KEY UPDATE",
            &[&lease.run_id],
        ),
    )
    .await
    .map_err(backend)?;
    let Some(run) = run else {
        return Ok(None);
    };
    let held = item
        .as_ref()
        .is_some_and(|row| holds(row.get::<_, i64>(0) as u64, row.get(1), row.get(4), lease));
    Ok(Some(Locked {
        held,
        exists: item.is_some(),
        node: item.as_ref().map(|row| row.get(2)).unwrap_or_default(),
        attempt: item.as_ref().map_or(1, |row| row.get(3)),
        status: status(run.get(0))?,
    }))
}

/// Appends an event about the item of `lease` (by its holder) to its run's step history,
/// after the item's current lease event if its take left that unwritten; `after`: how far
/// from now the time it points to is (a retry's due time).
async fn step_event(
    tx: &Transaction<'_>,
    lease: &Lease,
    locked: &Locked,
    kind: u8,
    after: Option<Duration>,
) -> Result<(), DistributedError> {
    tx.execute(
        // (`pending`: the item's unwritten lease event, written first and marked written.)
        "WITH pending AS (
    SELECT run_id AS r, item_id AS id, node, 'L'::\"char\" AS kind, worker AS w, token, attempt,
        deliveries AS delivery, leased_at AS at,
        leased_at + make_interval(secs => lease_ms / 1000) AS until, 0 AS o
    FROM items WHERE run_id = $1 AND item_id = $2::text::uuid AND leased_at IS NOT NULL),
written AS (
    UPDATE items SET leased_at = NULL
    WHERE run_id = $1 AND item_id = $2::text::uuid AND leased_at IS NOT NULL)
INSERT INTO step_events (run_id, item_id, node, kind, worker, token, attempt, delivery, at, until)
SELECT r, id, node, kind, w, token, attempt, delivery, at, until FROM (
    SELECT * FROM pending
    UNION ALL
    SELECT $1, $2::text::uuid, $3, $4, $5, $6, $7, NULL, clock_timestamp(),
        clock_timestamp() + make_interval(secs => $8::float8 / 1000), 1) e
ORDER BY o",
        &[
            &lease.run_id,
            &lease.item_id.to_string(),
            &locked.node,
            &(kind as i8),
            &lease.worker.as_str(),
            &(lease.token as i64),
            &locked.attempt,
            &after.map(|d| d.as_millis() as f64),
        ],
    )
    .await
    .map_err(backend)?;
    Ok(())
}

/// What a commit changed besides its outcome: work for others, a run's record.
#[derive(Default)]
pub(crate) struct Effects {
    pub(crate) work: bool,
    pub(crate) runs: Vec<String>,
}

/// `UPDATE runs …` (a literal) that finishes runs (sets `finished_at`), followed by the listing
/// of those runs in `finished` for the retention sweep; the statement's count is the runs it
/// finished.
macro_rules! finishing {
    ($update:literal) => {
        concat!(
            "WITH f AS (",
            $update,
            " RETURNING run_id, finished_at) \
             INSERT INTO finished (run_id, at) SELECT run_id, finished_at FROM f"
        )
    };
}
pub(crate) use finishing;

/// A run reached `status`: a completed or cancelled run's items go (a failed run keeps them
/// for a resume).
pub(crate) async fn finish(
    tx: &Transaction<'_>,
    run_id: &str,
    status: RunStatus,
) -> Result<(), DistributedError> {
    if status != RunStatus::Failed {
        tx.execute(DROP_ITEMS, &[&vec![run_id]])
            .await
            .map_err(backend)?;
    }
    Ok(())
}

/// The parts (`gone`, `leftover`) of a statement that deletes the items of the finished
/// runs in parameter `$runs` (text[]), at most 1,000; when that many went, the runs are listed
/// in `leftovers` and the retention sweep deletes the rest (G9: no statement proportional to
/// a run's size). The commit's write statement uses them with its own parameter.
macro_rules! drop_items_parts {
    ($runs:literal) => {
        concat!(
            "gone AS (
    DELETE FROM items WHERE (run_id, item_id) IN (
        SELECT run_id, item_id FROM items WHERE run_id = ANY(",
            $runs,
            "::text[]) LIMIT 1000)
    RETURNING run_id, item_id, node, worker, token, attempt, deliveries, leased_at, lease_ms),
leftover AS (
    INSERT INTO leftovers (run_id)
    SELECT unnest(",
            $runs,
            "::text[]) WHERE (SELECT count(*) FROM gone) >= 1000
    ON CONFLICT DO NOTHING)"
        )
    };
}
pub(crate) use drop_items_parts;

/// Deletes the items of the finished runs `$1` (see [`drop_items_parts`]); the lease events
/// of those in flight that their takes left unwritten are written (a cancelled run's history
/// shows the steps it stopped).
const DROP_ITEMS: &str = concat!(
    "WITH ",
    drop_items_parts!("$1"),
    ",
unended AS (
    INSERT INTO step_events (run_id, item_id, node, kind, worker, token, attempt, delivery, at,
        until)
    SELECT run_id, item_id, node, 'L', worker, token, attempt, deliveries, leased_at,
        leased_at + make_interval(secs => lease_ms / 1000)
    FROM gone WHERE leased_at IS NOT NULL ORDER BY leased_at)
SELECT 1"
);
