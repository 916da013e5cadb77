//! The take: one statement leases up to N items whose time has come (ready ones, expired
//! leases, due retries) with `FOR UPDATE SKIP LOCKED`, parks the items of paused or failed
//! runs and drops those of finished ones. Poison items (delivered too often) are reported
//! back and dead-lettered by a transaction of their own, off the hot path.

use std::collections::HashMap;

use deadpool_postgres::ClientWrapper;
use floxide_core::distributed::machine;
use floxide_core::distributed::{
    DistributedError, Lease, RunStatus, TakeRequest, Taken, VersionedContext, MAX_BATCH,
};

use crate::ops::{backend, item_id};

/// The statement. `$1` workflow, `$2` limit, `$3` lease in ms, `$4` worker, `$5` the statuses
/// whose items are leased, `$6` those whose results are still accepted (else dropped), `$7`
/// the delivery limit, `$8`/`$9` the contexts the worker holds (run, version): left out of the
/// reply; `$10` whether the step history is recorded. A run's context comes once, with its
/// first item. The take does not write the runs' rows: a run reads as running once one of its
/// items was leased (`ops::run_status!`), and its first commit writes that.
/// Rows not leased come back too (fate `D` poison, `K` parked, `X` dropped), without payload.
const TAKE: &str = "\
WITH cand AS (
    SELECT i.ctid AS line, i.run_id, i.item_id, i.state AS was, i.deliveries, i.node, i.worker AS holder,
        i.token, i.attempt, i.leased_at, i.lease_ms, i.due_at
    FROM items i
    WHERE i.workflow = $1 AND i.state IN ('P', 'I', 'R') AND i.due_at <= now()
    ORDER BY i.due_at, i.seq LIMIT $2
    FOR UPDATE SKIP LOCKED),
classed AS (
    SELECT c.line, c.run_id, c.item_id, c.was, c.deliveries, c.node, c.holder, c.token,
        c.attempt, c.leased_at, c.lease_ms, c.due_at, r.deadline, r.context, r.version,
        CASE WHEN NOT r.status = ANY($6::text[]) THEN 'X'
             WHEN NOT r.status = ANY($5::text[]) THEN 'K'
             WHEN c.deliveries >= $7 THEN 'D'
             ELSE 'I' END::\"char\" AS fate
    -- (Each run looked up by its key: a plan that walks the whole table to join is ruled out.)
    FROM cand c CROSS JOIN LATERAL (
        SELECT status, deadline, context, version FROM runs WHERE run_id = c.run_id LIMIT 1
    ) r),
moved AS (
    UPDATE items i SET state = CASE WHEN c.fate = 'D' THEN i.state ELSE c.fate END,
        worker = CASE WHEN c.fate = 'D' THEN i.worker END, leased_at = NULL
    FROM classed c
    WHERE c.fate <> 'I' AND (c.fate <> 'D' OR c.leased_at IS NOT NULL) AND i.ctid = c.line),
leased AS (
    UPDATE items i SET state = 'I', token = i.token + 1, deliveries = i.deliveries + 1,
        due_at = clock_timestamp() + make_interval(secs => $3::float8 / 1000),
        lease_ms = $3, worker = $4, leased_at = CASE WHEN $10::bool THEN clock_timestamp() END
    FROM classed c
    WHERE c.fate = 'I' AND i.ctid = c.line
    RETURNING i.run_id, i.item_id, i.node, i.payload, i.attempt, i.deliveries, i.token, i.seq,
        i.due_at),
reclaimed AS (
    INSERT INTO reclaims (run_id) SELECT run_id FROM classed WHERE was = 'I'),
history AS (
    -- A reclaimed lease's expiry (at the time its lease ended), after its own lease event
    -- when that was not written yet (rows get their sequence numbers in this order). The new
    -- leases' events are written by what ends them: see `leased_at`.
    INSERT INTO step_events (run_id, item_id, node, kind, worker, token, attempt, delivery, at,
        until)
    SELECT run_id, item_id, node, kind, worker, token, attempt, delivery, at, until FROM (
        SELECT run_id, item_id, node, 'L'::\"char\" AS kind, holder AS worker, token, attempt,
            deliveries AS delivery, leased_at AS at,
            leased_at + make_interval(secs => lease_ms / 1000) AS until, 0 AS o
        FROM classed WHERE was = 'I' AND leased_at IS NOT NULL
        UNION ALL
        SELECT run_id, item_id, node, 'E', holder, token, attempt, NULL, due_at, NULL, 1
        FROM classed WHERE was = 'I'
    ) e WHERE $10::bool ORDER BY o)
SELECT l.run_id, replace(l.item_id::text, '-', ''), l.node, l.payload, l.attempt,
    l.deliveries, l.token, c.deadline,
    CASE WHEN row_number() OVER (PARTITION BY l.run_id ORDER BY l.seq) > 1
              OR (l.run_id, c.version) IN (SELECT * FROM unnest($8::text[], $9::int8[]))
         THEN NULL ELSE c.context END,
    c.version, 'I'::\"char\"
FROM leased l JOIN classed c ON c.run_id = l.run_id AND c.item_id = l.item_id
UNION ALL
SELECT c.run_id, replace(c.item_id::text, '-', ''), '', NULL, 0, c.deliveries, 0, NULL, NULL,
    0, c.fate
FROM classed c WHERE c.fate <> 'I'";

/// The contexts a worker holds after its commits, by run: (version, bytes).
pub(crate) type Held<'a> = HashMap<&'a str, (u64, &'a [u8])>;

/// What one take statement found.
#[derive(Default)]
pub(crate) struct TakeRows {
    /// The items leased.
    pub(crate) taken: Vec<Taken>,
    /// Poison items: (run, item) to dead-letter.
    pub(crate) poison: Vec<(String, String)>,
    /// Rows it looked at, leased or not (a full page may hide more).
    pub(crate) seen: usize,
}

/// Statuses as the statement's arrays: those whose items are leased, and those whose
/// results are still accepted (the machine's rules).
pub(crate) fn status_sets() -> (Vec<String>, Vec<String>) {
    let names = |keep: fn(RunStatus) -> bool| {
        RunStatus::ALL
            .iter()
            .filter(|s| keep(**s))
            .map(ToString::to_string)
            .collect()
    };
    (names(machine::takes_items), names(machine::accepts_results))
}

/// Runs the take statement once on `client` (inside a transaction or on its own).
pub(crate) async fn take_once(
    client: &ClientWrapper,
    take: TakeRequest<'_>,
    held: &Held<'_>,
    history: bool,
) -> Result<TakeRows, DistributedError> {
    let statement = client.prepare_cached(TAKE).await.map_err(backend)?;
    let (leasable, accepting) = status_sets();
    let (held_runs, held_versions): (Vec<&str>, Vec<i64>) =
        held.iter().map(|(run, (v, _))| (*run, *v as i64)).unzip();
    let max = take.max.clamp(1, MAX_BATCH) as i64;
    let rows = client
        .query(
            &statement,
            &[
                &take.workflow,
                &max,
                &(take.options.lease_timeout.as_millis() as f64),
                &take.worker.as_str(),
                &leasable,
                &accepting,
                &(take.options.max_deliveries.min(i32::MAX as u32) as i32),
                &held_runs,
                &held_versions,
                &history,
            ],
        )
        .await
        .map_err(backend)?;
    let mut out = TakeRows {
        seen: rows.len(),
        ..TakeRows::default()
    };
    // Contexts sent once per run: the first row's, or the one the worker holds.
    let mut contexts: HashMap<String, VersionedContext> = HashMap::new();
    for row in &rows {
        let run_id: String = row.get(0);
        match row.get::<_, i8>(10) as u8 {
            b'I' => {}
            b'D' => {
                out.poison.push((run_id, row.get(1)));
                continue;
            }
            // Parked or dropped.
            _ => continue,
        }
        let version = row.get::<_, i64>(9) as u64;
        let context = match row.get::<_, Option<Vec<u8>>>(8) {
            Some(bytes) => {
                let context = VersionedContext::new(bytes, version);
                contexts.insert(run_id.clone(), context.clone());
                Some(context)
            }
            None => contexts.get(&run_id).cloned().or_else(|| {
                held.get(run_id.as_str())
                    .filter(|(v, _)| *v == version)
                    .map(|(v, bytes)| VersionedContext::new(bytes.to_vec(), *v))
            }),
        };
        let id = item_id(row.get(1))?;
        let token = row.get::<_, i64>(6) as u64;
        let attempt = row.get::<_, i32>(4) as u32;
        let deliveries = row.get::<_, i32>(5) as u32;
        out.taken.push(
            Taken::new(
                Lease::new(run_id, id, token, take.worker.clone()),
                row.get::<_, String>(2),
                row.get::<_, Vec<u8>>(3),
            )
            .with_attempt(attempt, deliveries)
            .with_deadline(row.get(7))
            .with_context(context),
        );
    }
    Ok(out)
}
