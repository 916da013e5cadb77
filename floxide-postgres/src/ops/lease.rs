//! What a lease holder reports: a failed step (its retry or dead letter), a release, and a
//! renewal of the lease. Each is one transaction that locks the item before its run.

use super::*;

/// Records a failed step: its retry scheduled, or the item dead-lettered (and the run
/// failed); with `history`, in the run's step history too.
pub(crate) async fn fail(
    tx: &Transaction<'_>,
    lease: &Lease,
    failure: &StepFailed,
    effects: &mut Effects,
    history: bool,
) -> Result<CommitOutcome, DistributedError> {
    let id = lease.item_id.to_string();
    let Some(locked) = lock(tx, lease).await? else {
        return Ok(CommitOutcome::LeaseLost);
    };
    if !locked.held {
        if !machine::accepts_results(locked.status) {
            return Ok(CommitOutcome::RunInactive(locked.status));
        }
        if locked.exists && history {
            step_event(tx, lease, &locked, b'Z', None).await?;
        }
        return Ok(CommitOutcome::LeaseLost);
    }
    let effect = machine::after_failure(locked.status, failure.retry_after.is_some());
    if effect != FailureEffect::Inactive && history {
        let retry = match effect {
            FailureEffect::Retry => failure.retry_after,
            _ => None,
        };
        step_event(tx, lease, &locked, b'F', retry).await?;
    }
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
                        finishing!(
                            "UPDATE runs SET status = $2, error = $3, finished_at = now() \
                             WHERE run_id = $1"
                        ),
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
/// failed, dropped once it is over), not counted as a delivery; with `history`, recorded in
/// the run's step history.
pub(crate) async fn release(
    tx: &Transaction<'_>,
    lease: &Lease,
    history: bool,
) -> Result<bool, DistributedError> {
    let Some(locked) = lock(tx, lease).await? else {
        return Ok(false);
    };
    if !locked.held {
        return Ok(false);
    }
    if history {
        step_event(tx, lease, &locked, b'R', None).await?;
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

/// Renews a lease (recorded in the run's step history with `history`); a run that is over
/// answers with its status (its in-flight step stops).
pub(crate) async fn heartbeat(
    client: &impl tokio_postgres::GenericClient,
    lease: &Lease,
    timeout: Duration,
    history: bool,
) -> Result<LeaseState, DistributedError> {
    let row = client
        .query_opt(
            "WITH pending AS ( \
                 SELECT node, worker, token, attempt, deliveries, leased_at, lease_ms FROM items \
                 WHERE run_id = $1 AND item_id = $2::text::uuid AND token = $3 AND state = 'I' \
                     AND ($3 <> 0 OR worker = $6) AND leased_at IS NOT NULL), \
             renewed AS ( \
                 UPDATE items SET due_at = clock_timestamp() + make_interval(secs => $4::float8 / 1000), \
                     leased_at = NULL \
                 WHERE run_id = $1 AND item_id = $2::text::uuid AND token = $3 AND state = 'I' \
                     AND ($3 <> 0 OR worker = $6) \
                 RETURNING run_id, item_id, node, worker, token, attempt, due_at), \
             history AS ( \
                 INSERT INTO step_events (run_id, item_id, node, kind, worker, token, attempt, \
                     delivery, at, until) \
                 SELECT run_id, item_id, node, kind, worker, token, attempt, delivery, at, until \
                 FROM ( \
                     SELECT r.run_id, r.item_id, p.node, 'L'::\"char\" AS kind, p.worker, p.token, \
                         p.attempt, p.deliveries AS delivery, p.leased_at AS at, \
                         p.leased_at + make_interval(secs => p.lease_ms / 1000) AS until, 0 AS o \
                     FROM renewed r, pending p \
                     UNION ALL \
                     SELECT run_id, item_id, node, 'H', worker, token, attempt, NULL, \
                         clock_timestamp(), due_at, 1 FROM renewed) e \
                 WHERE $5::bool ORDER BY o) \
             SELECT r.status, (SELECT count(*) FROM renewed) FROM runs r WHERE r.run_id = $1",
            &[
                &lease.run_id,
                &lease.item_id.to_string(),
                &(lease.token as i64),
                &(timeout.as_millis() as f64),
                &history,
                &lease.worker.as_str(),
            ],
        )
        .await
        .map_err(backend)?;
    let Some(row) = row else {
        return Ok(LeaseState::Lost);
    };
    let run_status = match status(row.get(0))? {
        // A leased item's run is running (see `run_status!`).
        RunStatus::Pending => RunStatus::Running,
        other => other,
    };
    if row.get::<_, i64>(1) > 0 || !machine::accepts_results(run_status) {
        Ok(LeaseState::Active(run_status))
    } else {
        Ok(LeaseState::Lost)
    }
}
