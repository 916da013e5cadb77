//! The transitions in SQL: start a run, take a batch of items under leases, commit a batch of
//! steps (each fenced by its lease token), fail, release, renew.
//!
//! Each operation is one transaction. Rows are locked in one order everywhere, items before
//! their run, so that concurrent takes and commits do not deadlock; a take skips the items
//! other transactions hold (`FOR UPDATE SKIP LOCKED`). The run's status follows the state
//! machine of `floxide_core::distributed::machine`, computed in Rust from the locked row.

use std::time::Duration;

use deadpool_postgres::Transaction;
use floxide_core::distributed::machine::{self, FailureEffect, RunState};
use floxide_core::distributed::{
    CommitItem, CommitOutcome, DistributedError, Lease, LeaseState, RunStatus, StartRun,
    StepFailed, TakeRequest, Taken, VersionedContext, WorkflowError, MAX_BATCH,
};
use floxide_core::ItemId;

use crate::error::describe;

/// A query error as the runtime's error.
pub(crate) fn backend(e: tokio_postgres::Error) -> DistributedError {
    DistributedError::Backend(format!("PostgreSQL: {}", describe(&e)))
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

/// Notifies idle takers (at commit) that work is ready.
pub(crate) async fn notify_work(
    tx: &Transaction<'_>,
    schema: &str,
) -> Result<(), DistributedError> {
    tx.execute("SELECT pg_notify($1, '')", &[&format!("{schema}_work")])
        .await
        .map_err(backend)?;
    Ok(())
}

/// Notifies run waiters (at commit) that `run`'s record changed.
pub(crate) async fn notify_run(
    tx: &Transaction<'_>,
    schema: &str,
    run: &str,
) -> Result<(), DistributedError> {
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&format!("{schema}_runs"), &run],
    )
    .await
    .map_err(backend)?;
    Ok(())
}

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
             deadline, idempotency_key) VALUES ($1, $2, 'pending', $3, 1, $4, $5, $6) \
             ON CONFLICT DO NOTHING",
            &[
                &start.run_id,
                &start.workflow,
                &start.context,
                &request,
                &start.deadline,
                &start.idempotency_key,
            ],
        )
        .await
        .map_err(backend)?;
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
    .map_err(backend)?;
    Ok(())
}

/// Leases up to `take.max` items of `take.workflow` whose time has come: ready ones, expired
/// leases (reclaimed) and due retries. Items of paused or failed runs are parked, those of
/// finished runs dropped; an item delivered too often is a poison item. Returns whether runs
/// changed (for the run waiters).
pub(crate) async fn take(
    tx: &Transaction<'_>,
    take: TakeRequest<'_>,
) -> Result<(Vec<Taken>, Vec<String>), DistributedError> {
    let max = take.max.min(MAX_BATCH);
    let mut out = Vec::with_capacity(max);
    let mut changed = Vec::new();
    // Items that cannot be leased (parked, dropped, poison) do not use up the batch: look
    // further, up to a bounded number of rows per call (G9).
    let mut budget = 256usize;
    while out.len() < max && budget > 0 {
        let want = (max - out.len()).min(budget);
        let rows = tx
            .query(
                "SELECT i.run_id, replace(i.item_id::text, '-', ''), i.node, i.payload, \
                 i.attempt, i.deliveries, r.status, r.deadline, r.context, r.version, \
                 i.state \
                 FROM items i JOIN runs r ON r.run_id = i.run_id \
                 WHERE i.workflow = $1 AND i.state IN ('P', 'I', 'R') AND i.due_at <= now() \
                 ORDER BY i.due_at, i.seq LIMIT $2 \
                 FOR UPDATE OF i SKIP LOCKED",
                &[&take.workflow, &(want as i64)],
            )
            .await
            .map_err(backend)?;
        budget -= rows.len().min(budget);
        let page_full = rows.len() == want;
        for row in rows {
            if let Some(taken) = take_row(tx, take, &row, &mut changed).await? {
                out.push(taken);
            }
        }
        if !page_full {
            break;
        }
    }
    Ok((out, changed))
}

/// Leases one selected row's item, or parks, drops or dead-letters it.
async fn take_row(
    tx: &Transaction<'_>,
    take: TakeRequest<'_>,
    row: &tokio_postgres::Row,
    changed: &mut Vec<String>,
) -> Result<Option<Taken>, DistributedError> {
    let lease_ms = take.options.lease_timeout.as_millis() as f64;
    let run_id: String = row.get(0);
    let id_text: &str = row.get(1);
    let id = item_id(id_text)?;
    let run_status = status(row.get(6))?;
    // A reclaimed lease is counted in a table of its own: a take never waits for a run's row
    // (commits hold them), which would invite deadlocks with batch commits.
    if row.get::<_, i8>(10) == b'I' as i8 {
        tx.execute("INSERT INTO reclaims (run_id) VALUES ($1)", &[&run_id])
            .await
            .map_err(backend)?;
    }
    if !machine::accepts_results(run_status) {
        set_state(tx, &run_id, id_text, b'X').await?;
        return Ok(None);
    }
    if !machine::takes_items(run_status) {
        set_state(tx, &run_id, id_text, b'K').await?;
        return Ok(None);
    }
    let deliveries: i32 = row.get(5);
    if deliveries as u32 >= take.options.max_deliveries {
        let error = format!(
            "poison item: delivered {deliveries} times without a commit (limit {})",
            take.options.max_deliveries
        );
        dead_letter(tx, &run_id, id, &error).await?;
        record_error(tx, &run_id, id, row.get(2), &error, row.get(4), false).await?;
        let failed = tx
            .execute(
                "UPDATE runs SET outstanding = outstanding - 1, status = 'failed', \
                 error = $2, finished_at = now() \
                 WHERE run_id = $1 AND status NOT IN ('completed', 'failed', 'cancelled')",
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
        changed.push(run_id);
        return Ok(None);
    }
    let leased = tx
        .query_one(
            "UPDATE items SET state = 'I', token = token + 1, deliveries = deliveries + 1, \
             due_at = clock_timestamp() + make_interval(secs => $3::float8 / 1000), \
             lease_ms = $3, worker = $4 \
             WHERE run_id = $1 AND item_id = $2::text::uuid RETURNING token",
            &[&run_id, &id_text, &lease_ms, &take.worker.as_str()],
        )
        .await
        .map_err(backend)?;
    if run_status == RunStatus::Pending {
        // Without waiting: a run whose row another transaction holds becomes running at its
        // first commit instead (machine::after_commit).
        let started = tx
            .execute(
                "UPDATE runs SET status = 'running' WHERE run_id IN ( \
                     SELECT run_id FROM runs WHERE run_id = $1 AND status = 'pending' \
                     FOR NO KEY UPDATE SKIP LOCKED)",
                &[&run_id],
            )
            .await
            .map_err(backend)?;
        if started > 0 {
            changed.push(run_id.clone());
        }
    }
    let token: i64 = leased.get(0);
    let version: i64 = row.get(9);
    let attempt: i32 = row.get(4);
    Ok(Some(
        Taken::new(
            Lease::new(run_id, id, token as u64, take.worker.clone()),
            row.get::<_, String>(2),
            row.get::<_, Vec<u8>>(3),
        )
        .with_attempt(attempt as u32, deliveries as u32 + 1)
        .with_deadline(row.get(7))
        .with_context(Some(VersionedContext::new(row.get(8), version as u64))),
    ))
}

/// Milliseconds until the next item of `workflow` falls due (a lease expires or a retry is
/// due), if any; 0 when something is due already (held by another transaction).
pub(crate) async fn next_due(
    tx: &impl tokio_postgres::GenericClient,
    workflow: &str,
) -> Result<Option<u64>, DistributedError> {
    let row = tx
        .query_one(
            "SELECT (extract(epoch FROM min(due_at) - now()) * 1000)::float8 FROM items \
             WHERE workflow = $1 AND state IN ('P', 'I', 'R')",
            &[&workflow],
        )
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

/// Renews, by their own lease length, the leases of `commits` still held (one statement,
/// committed on its own): steps waiting for a busy run's row keep their items.
pub(crate) async fn renew_batch(
    client: &impl tokio_postgres::GenericClient,
    commits: &[CommitItem<'_>],
) -> Result<(), DistributedError> {
    let runs: Vec<&str> = commits.iter().map(|c| c.lease.run_id.as_str()).collect();
    let ids: Vec<String> = commits
        .iter()
        .map(|c| c.lease.item_id.to_string())
        .collect();
    let tokens: Vec<i64> = commits.iter().map(|c| c.lease.token as i64).collect();
    client
        .execute(
            "UPDATE items i SET due_at = clock_timestamp() + make_interval(secs => i.lease_ms / 1000) \
             FROM unnest($1::text[], $2::text[], $3::int8[]) AS u(r, id, t) \
             WHERE i.run_id = u.r AND i.item_id = u.id::uuid AND i.token = u.t AND i.state = 'I'",
            &[&runs, &ids, &tokens],
        )
        .await
        .map_err(backend)?;
    Ok(())
}

/// A leased item and its run, locked (item first); `None` when the run is unknown.
struct Locked {
    /// Whether the lease still holds the item.
    held: bool,
    /// The request that committed the item, if it was.
    committed_by: Option<String>,
    node: String,
    attempt: i32,
    status: RunStatus,
    version: u64,
    outstanding: i32,
    has_output: bool,
    workflow: String,
    finish_request: Option<String>,
}

async fn lock(tx: &Transaction<'_>, lease: &Lease) -> Result<Option<Locked>, DistributedError> {
    let id = lease.item_id.to_string();
    // Both in one round trip (pipelined; the server locks them in this order).
    let (item, run) = futures_util::future::try_join(
        tx.query_opt(
            "SELECT token, state, request, node, attempt FROM items \
             WHERE run_id = $1 AND item_id = $2::text::uuid FOR UPDATE",
            &[&lease.run_id, &id],
        ),
        tx.query_opt(
            "SELECT status, version, outstanding, output IS NOT NULL, workflow, finish_request \
             FROM runs WHERE run_id = $1 FOR NO KEY UPDATE",
            &[&lease.run_id],
        ),
    )
    .await
    .map_err(backend)?;
    let Some(run) = run else {
        return Ok(None);
    };
    let held = item.as_ref().is_some_and(|row| {
        row.get::<_, i64>(0) as u64 == lease.token && row.get::<_, i8>(1) == b'I' as i8
    });
    Ok(Some(Locked {
        held,
        committed_by: item.as_ref().and_then(|row| row.get(2)),
        node: item.as_ref().map(|row| row.get(3)).unwrap_or_default(),
        attempt: item.as_ref().map_or(1, |row| row.get(4)),
        status: status(run.get(0))?,
        version: run.get::<_, i64>(1) as u64,
        outstanding: run.get(2),
        has_output: run.get(3),
        workflow: run.get(4),
        finish_request: run.get(5),
    }))
}

/// The answer to a step whose lease is not held: applied already by this request, the run
/// is over, or the lease was lost.
fn not_held(locked: &Locked, request: &str) -> CommitOutcome {
    if locked.committed_by.as_deref() == Some(request) {
        return CommitOutcome::Committed { finished: None };
    }
    if locked.finish_request.as_deref() == Some(request) {
        return CommitOutcome::Committed {
            finished: Some(locked.status),
        };
    }
    if !machine::accepts_results(locked.status) {
        return CommitOutcome::RunInactive(locked.status);
    }
    CommitOutcome::LeaseLost
}

/// What a commit changed besides its outcome: work for others, a run's record.
#[derive(Default)]
pub(crate) struct Effects {
    pub(crate) work: bool,
    pub(crate) runs: Vec<String>,
}

/// Applies or refuses one step inside `tx`.
pub(crate) async fn commit_one(
    tx: &Transaction<'_>,
    c: &CommitItem<'_>,
    request: &str,
    effects: &mut Effects,
) -> Result<CommitOutcome, DistributedError> {
    let (lease, step) = (c.lease, c.step);
    let id = lease.item_id.to_string();
    let Some(locked) = lock(tx, lease).await? else {
        return Ok(CommitOutcome::LeaseLost);
    };
    if !locked.held {
        return Ok(not_held(&locked, request));
    }
    let run_status = locked.status;
    if !machine::accepts_results(run_status) {
        set_state(tx, &lease.run_id, &id, b'X').await?;
        return Ok(CommitOutcome::RunInactive(run_status));
    }
    let version = locked.version;
    if step.require_version.is_some_and(|v| v != version)
        || step
            .context
            .as_ref()
            .is_some_and(|(base, _)| *base != version)
    {
        return Ok(CommitOutcome::ContextConflict { current: version });
    }
    let ready = machine::takes_items(run_status);
    let state = if ready { b'P' } else { b'K' } as i8;
    let ids: Vec<String> = step.successors.iter().map(|s| s.id.to_string()).collect();
    let nodes: Vec<&str> = step.successors.iter().map(|s| s.node.as_str()).collect();
    let payloads: Vec<&[u8]> = step.successors.iter().map(|s| s.bytes.as_slice()).collect();
    let outputs: Vec<String> = step.outputs.iter().map(ToString::to_string).collect();
    let failures = step
        .handled_failures
        .iter()
        .map(serde_json::to_string)
        .collect::<Result<Vec<String>, _>>()
        .map_err(|e| DistributedError::Codec(e.to_string()))?;
    // The step's own writes in one round trip (pipelined): the item is done, its successors
    // come in (known ids are not created again), outputs and handled failures are recorded.
    let (_, fresh, _, _) = futures_util::future::try_join4(
        tx.execute(
            "UPDATE items SET state = 'C', payload = '', worker = NULL, request = $3 \
             WHERE run_id = $1 AND item_id = $2::text::uuid",
            &[&lease.run_id, &id, &request],
        ),
        tx.execute(
            "INSERT INTO items (run_id, item_id, workflow, node, payload, state) \
             SELECT $1, s.id::uuid, $2, s.node, s.payload, $6 \
             FROM unnest($3::text[], $4::text[], $5::bytea[]) AS s(id, node, payload) \
             ON CONFLICT DO NOTHING",
            &[
                &lease.run_id,
                &locked.workflow,
                &ids,
                &nodes,
                &payloads,
                &state,
            ],
        ),
        tx.execute(
            "INSERT INTO outputs (run_id, value) \
             SELECT $1, o::jsonb FROM unnest($2::text[]) WITH ORDINALITY AS u(o, n) ORDER BY n",
            &[&lease.run_id, &outputs],
        ),
        tx.execute(
            "INSERT INTO errors (run_id, error) \
             SELECT $1, e::jsonb FROM unnest($2::text[]) WITH ORDINALITY AS u(e, n) ORDER BY n",
            &[&lease.run_id, &failures],
        ),
    )
    .await
    .map_err(backend)?;
    let fresh = fresh as i32;
    effects.work |= fresh > 0 && ready;
    let outstanding = locked.outstanding + fresh - 1;
    let after = machine::after_commit(RunState {
        status: run_status,
        outstanding: outstanding.max(0) as u64,
        has_output: locked.has_output || !step.outputs.is_empty(),
    });
    let finished = (after != run_status && after.is_finished()).then_some(after);
    let (context, new_version) = match &step.context {
        Some((_, bytes)) => (Some(bytes.as_slice()), version as i64 + 1),
        None => (None, version as i64),
    };
    let first_output = step.outputs.first().map(ToString::to_string);
    let error = (finished == Some(RunStatus::Failed)).then(|| no_output(&locked.workflow));
    let node = if step.node.is_empty() {
        locked.node.as_str()
    } else {
        step.node.as_str()
    };
    tx.execute(
        "UPDATE runs SET status = $2, outstanding = $3, version = $4, \
         context = coalesce($5, context), output = coalesce(output, $6::text::jsonb), \
         error = coalesce($7, error), \
         finished_at = CASE WHEN $8 THEN now() ELSE finished_at END, \
         finish_request = CASE WHEN $8 THEN $12 ELSE finish_request END, \
         steps_done = steps_done + 1, items_created = items_created + $9, \
         node_timings = jsonb_set(node_timings, ARRAY[$10::text], jsonb_build_object( \
             'count', coalesce((node_timings -> $10 ->> 'count')::bigint, 0) + 1, \
             'total_us', coalesce((node_timings -> $10 ->> 'total_us')::bigint, 0) + $11, \
             'max_us', greatest(coalesce((node_timings -> $10 ->> 'max_us')::bigint, 0), $11))) \
         WHERE run_id = $1",
        &[
            &lease.run_id,
            &after.to_string(),
            &outstanding,
            &new_version,
            &context,
            &first_output,
            &error,
            &finished.is_some(),
            &i64::from(fresh),
            &node,
            &(step.duration.as_micros() as i64),
            &request,
        ],
    )
    .await
    .map_err(backend)?;
    if let Some(status) = finished {
        finish(tx, &lease.run_id, status).await?;
    }
    if finished.is_some() || after != run_status {
        effects.runs.push(lease.run_id.clone());
    }
    Ok(CommitOutcome::Committed { finished })
}

/// A paused or failed run runs again with `status`: its record no longer says it finished,
/// and its parked items are ready.
pub(crate) async fn reopen(
    tx: &Transaction<'_>,
    run_id: &str,
    status: RunStatus,
) -> Result<(), DistributedError> {
    tx.execute(
        "UPDATE runs SET status = $2, finished_at = NULL, error = NULL WHERE run_id = $1",
        &[&run_id, &status.to_string()],
    )
    .await
    .map_err(backend)?;
    tx.execute(
        "UPDATE items SET state = 'P', due_at = now() WHERE run_id = $1 AND state = 'K'",
        &[&run_id],
    )
    .await
    .map_err(backend)?;
    Ok(())
}

/// A run reached `status`: a completed or cancelled run's items go (a failed run keeps them
/// for a resume).
pub(crate) async fn finish(
    tx: &Transaction<'_>,
    run_id: &str,
    status: RunStatus,
) -> Result<(), DistributedError> {
    if status != RunStatus::Failed {
        tx.execute("DELETE FROM items WHERE run_id = $1", &[&run_id])
            .await
            .map_err(backend)?;
    }
    Ok(())
}

/// Records a failed step: its retry scheduled, or the item dead-lettered (and the run
/// failed).
pub(crate) async fn fail(
    tx: &Transaction<'_>,
    lease: &Lease,
    failure: &StepFailed,
    effects: &mut Effects,
) -> Result<CommitOutcome, DistributedError> {
    let id = lease.item_id.to_string();
    let Some(locked) = lock(tx, lease).await? else {
        return Ok(CommitOutcome::LeaseLost);
    };
    if !locked.held {
        if !machine::accepts_results(locked.status) {
            return Ok(CommitOutcome::RunInactive(locked.status));
        }
        return Ok(CommitOutcome::LeaseLost);
    }
    let effect = machine::after_failure(locked.status, failure.retry_after.is_some());
    if effect == FailureEffect::Inactive {
        set_state(tx, &lease.run_id, &id, b'X').await?;
        return Ok(CommitOutcome::RunInactive(locked.status));
    }
    let node = if failure.node.is_empty() {
        locked.node.clone()
    } else {
        failure.node.clone()
    };
    let mut finished = None;
    match (failure.retry_after, effect) {
        (Some(wait), FailureEffect::Retry) => {
            tx.execute(
                "UPDATE items SET state = 'R', attempt = attempt + 1, deliveries = 0, \
                 worker = NULL, due_at = clock_timestamp() + make_interval(secs => $3::float8 / 1000) \
                 WHERE run_id = $1 AND item_id = $2::text::uuid",
                &[&lease.run_id, &id, &(wait.as_millis() as f64)],
            )
            .await
            .map_err(backend)?;
            effects.work = true;
        }
        _ => {
            dead_letter(tx, &lease.run_id, lease.item_id, &failure.error).await?;
            tx.execute(
                "UPDATE runs SET outstanding = outstanding - 1 WHERE run_id = $1",
                &[&lease.run_id],
            )
            .await
            .map_err(backend)?;
            if let FailureEffect::DeadLetter(status) = effect {
                if status != locked.status {
                    let error = format!("node `{node}` failed: {}", failure.error);
                    tx.execute(
                        "UPDATE runs SET status = $2, error = $3, finished_at = now() \
                         WHERE run_id = $1",
                        &[&lease.run_id, &status.to_string(), &error],
                    )
                    .await
                    .map_err(backend)?;
                    finished = Some(status);
                    effects.runs.push(lease.run_id.clone());
                }
            }
        }
    }
    tx.execute(
        "UPDATE runs SET failures = failures + 1, retries = retries + $2 WHERE run_id = $1",
        &[&lease.run_id, &i64::from(failure.retry_after.is_some())],
    )
    .await
    .map_err(backend)?;
    record_error(
        tx,
        &lease.run_id,
        lease.item_id,
        &node,
        &failure.error,
        locked.attempt,
        false,
    )
    .await?;
    Ok(CommitOutcome::Committed { finished })
}

/// Gives a leased item back untouched: ready again (parked while its run is paused or
/// failed, dropped once it is over), not counted as a delivery.
pub(crate) async fn release(tx: &Transaction<'_>, lease: &Lease) -> Result<bool, DistributedError> {
    let Some(locked) = lock(tx, lease).await? else {
        return Ok(false);
    };
    if !locked.held {
        return Ok(false);
    }
    let id = lease.item_id.to_string();
    let state = if machine::takes_items(locked.status) {
        b'P'
    } else if machine::accepts_results(locked.status) {
        b'K'
    } else {
        b'X'
    };
    tx.execute(
        "UPDATE items SET state = $3, deliveries = greatest(deliveries - 1, 0), worker = NULL, \
         due_at = now() WHERE run_id = $1 AND item_id = $2::text::uuid",
        &[&lease.run_id, &id, &(state as i8)],
    )
    .await
    .map_err(backend)?;
    Ok(state == b'P')
}

/// Renews a lease; a run that is over answers with its status (its in-flight step stops).
pub(crate) async fn heartbeat(
    client: &impl tokio_postgres::GenericClient,
    lease: &Lease,
    timeout: Duration,
) -> Result<LeaseState, DistributedError> {
    let row = client
        .query_opt(
            "WITH renewed AS ( \
                 UPDATE items SET due_at = clock_timestamp() + make_interval(secs => $4::float8 / 1000) \
                 WHERE run_id = $1 AND item_id = $2::text::uuid AND token = $3 AND state = 'I' \
                 RETURNING 1) \
             SELECT r.status, (SELECT count(*) FROM renewed) FROM runs r WHERE r.run_id = $1",
            &[
                &lease.run_id,
                &lease.item_id.to_string(),
                &(lease.token as i64),
                &(timeout.as_millis() as f64),
            ],
        )
        .await
        .map_err(backend)?;
    let Some(row) = row else {
        return Ok(LeaseState::Lost);
    };
    let run_status = status(row.get(0))?;
    if row.get::<_, i64>(1) > 0 || !machine::accepts_results(run_status) {
        Ok(LeaseState::Active(run_status))
    } else {
        Ok(LeaseState::Lost)
    }
}
