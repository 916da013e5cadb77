//! A paused or failed run running again: its parked items made ready a slice per statement
//! (G9), the first with the control's transaction, the rest after it.

use super::*;

/// Parked items made ready by one statement (G9: see [`reopen()`]).
pub(crate) const REOPEN_SLICE: i64 = 1000;

/// Makes ready up to `$2` parked items of run `$1`, while the run takes items; the run leaves
/// `reopening` once none is left (a slice may come back short while another holds some: only
/// an empty one says the work is done). Answers how many were made ready.
pub(crate) const REOPEN: &str = "\
WITH ready AS (
    UPDATE items SET state = 'P', due_at = now()
    WHERE (run_id, item_id) IN (
        SELECT i.run_id, i.item_id FROM items i
        WHERE i.run_id = $1 AND i.state = 'K'
            AND EXISTS (SELECT 1 FROM runs r WHERE r.run_id = $1
                AND r.status IN ('pending', 'running'))
        LIMIT $2 FOR UPDATE OF i SKIP LOCKED)
    RETURNING 1),
done AS (
    DELETE FROM reopening WHERE run_id = $1 AND (SELECT count(*) FROM ready) = 0)
SELECT count(*) FROM ready";

/// A paused or failed run runs again with `status`: its record no longer says it finished,
/// and a first slice of its parked items is ready. Returns whether more may be left (the slice
/// was full): the run is then listed in `reopening`, and the caller readies the rest after its
/// commit, a slice per transaction ([`reopen_rest`]; the retention sweep does it should the
/// caller stop).
pub(crate) async fn reopen(
    tx: &Transaction<'_>,
    run_id: &str,
    status: RunStatus,
) -> Result<bool, DistributedError> {
    tx.execute(
        "UPDATE runs SET status = $2, finished_at = NULL, error = NULL WHERE run_id = $1",
        &[&run_id, &status.to_string()],
    )
    .await
    .map_err(backend)?;
    let more = ready_slice(tx, run_id).await? == REOPEN_SLICE;
    if more {
        tx.execute(
            "INSERT INTO reopening (run_id) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&run_id],
        )
        .await
        .map_err(backend)?;
    }
    Ok(more)
}

/// Readies the rest of run `run_id`'s parked items after [`reopen()`] said more may be left: one
/// statement (its own transaction) per slice, waking the workers after each, until a slice
/// finds none.
pub(crate) async fn reopen_rest(
    client: &deadpool_postgres::Client,
    schema: &str,
    run_id: &str,
) -> Result<(), DistributedError> {
    while ready_slice(client, run_id).await? > 0 {
        notify_work(client, schema).await?;
    }
    Ok(())
}

/// Runs [`REOPEN`] for run `run_id` (in a transaction, or as one of its own): how many of its
/// parked items it made ready.
async fn ready_slice(
    client: &impl deadpool_postgres::GenericClient,
    run_id: &str,
) -> Result<i64, DistributedError> {
    Ok(client
        .query_one(REOPEN, &[&run_id, &REOPEN_SLICE])
        .await
        .map_err(backend)?
        .get(0))
}

/// [`reopen_rest`] after a control committed: a failure is logged, not returned (the control
/// was applied; the run stays listed in `reopening`, and the retention sweep readies the rest).
pub(crate) async fn reopen_rest_or_leave(
    client: &deadpool_postgres::Client,
    schema: &str,
    run_id: &str,
) {
    if let Err(error) = reopen_rest(client, schema, run_id).await {
        tracing::warn!(%error, run_id, "parked items left for the sweep to ready");
    }
}
