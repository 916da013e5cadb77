//! A batch commit in one transaction and two round trips: the batch's items and runs are
//! locked and read by one statement (with `BEGIN`), each step is judged in Rust by the run
//! state machine (its lease token, its run's status, its context's version), and one
//! statement writes every accepted step, followed by the next take and `COMMIT`.
//!
//! New successors go straight to the committing worker while it has free slots and holds their
//! run's context ("direct hand-off", as on Redis): they are written leased, so the take that
//! follows looks only for what is left of the worker's budget, and is skipped when nothing is.
//!
//! Rows are locked in one order (items, then runs by id) so that concurrent commits do not
//! deadlock; a take never waits for them (`SKIP LOCKED`). A run's row is held for one round
//! trip.

use std::collections::{HashMap, HashSet};

use floxide_core::distributed::machine::{self, ContextChains, RunState};
use floxide_core::distributed::{
    CommitItem, CommitOutcome, CommitReply, DistributedError, HeardOutputs, Lease, NewItem,
    RunStatus, TakeRequest, Taken, VersionedContext, KEPT_LEASE_TOKEN,
};
use floxide_core::ItemId;

use tokio_postgres::types::Type;

use crate::ops::{backend, no_output, run_payload, status, PAYLOAD_MAX};
use crate::pipeline::Pipelined;
use crate::take::{take_once, Held, TakeRows};
use crate::PostgresBackend;

/// What the commit reads, in one statement (one row layout, [`Read`]): the batch's items,
/// locked (`i` rows; `$1` runs, `$2` item ids), then their runs, locked after them (`r` rows;
/// `$3` runs), and the successors that exist already (`e` rows; `$4` runs, `$5` item ids: a
/// step executed again after its lease was taken over derives the same ids).
const READ: &str = "\
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
struct Read;

impl Read {
    const KIND: usize = 0;
    const RUN: usize = 1;
    const ITEM: usize = 2;
    const TOKEN: usize = 3;
    const STATE: usize = 4;
    const REQUEST: usize = 5;
    const NODE: usize = 6;
    const ATTEMPT: usize = 7;
    /// An item's worker (`i` rows), a run's status (`r` rows).
    const WORKER: usize = 8;
    const STATUS: usize = 8;
    const VERSION: usize = 9;
    const OUTSTANDING: usize = 10;
    const HAS_OUTPUT: usize = 11;
    const WORKFLOW: usize = 12;
    const FINISH_REQUEST: usize = 13;
    const TIMINGS: usize = 14;
    const DEADLINE: usize = 15;
}

/// The events a routine step history holds: leases (on their first delivery), renewals and
/// commits. A run that completes with only these drops its history (unless configured to
/// keep it, [`PostgresConfig::with_routine_step_history`](crate::PostgresConfig)).
const ROUTINE_KINDS: [u8; 3] = [b'L', b'H', b'C'];

/// The SQL test of a stored step event `x` that makes its run's history worth keeping (the
/// negation of [`ROUTINE_KINDS`], with a delivery beyond the first).
macro_rules! not_routine {
    () => {
        "(x.kind NOT IN ('L', 'H', 'C') OR x.delivery > 1)"
    };
}

/// Every write of the accepted steps, one statement of the parts a batch needs (a part runs
/// even when its arrays are empty: the nine of them cost 0.13–0.16 ms so). The parameters keep
/// their numbers whichever parts are present (their types are declared, [`APPLY_TYPES`]):
/// `$1`–`$3` items marked (run, id, state: committed or dropped), `$4` the request; `$5`/`$6`
/// leases renewed (steps sent back to re-merge); `$7`–`$12` and `$40`–`$42` new items (state
/// `I`: leased to worker `$41` for `$42` ms under token `$40`, handed over or kept; `C`: kept
/// and committed in the same batch); `$13`/`$14` outputs and `$15`/`$16`
/// handled failures (run, JSON); `$17` runs whose items go; `$18`–`$28` the runs' new records;
/// `$29`/`$30` notifications; `$31`–`$37` step history events (run, item, node, kind, worker,
/// token, attempt), except those of the runs `$43` whose routine history goes (see
/// [`ROUTINE_KINDS`]: the stored history is routine and holds at most 1,000 events, read
/// through a bounded scan). A commit or fenced commit first writes the lease event its item's
/// take left unwritten (`items.leased_at`), and a fenced one marks it written.
const APPLY_PARTS: [&str; 11] = [
    "marked AS (
    UPDATE items i SET state = u.st, worker = NULL, leased_at = NULL,
        payload = CASE WHEN u.st = 'C' THEN ''::bytea ELSE i.payload END,
        request = CASE WHEN u.st = 'C' THEN $4 ELSE i.request END
    FROM unnest($1::text[], $2::text[], $3::\"char\"[]) AS u(r, id, st)
    WHERE i.run_id = u.r AND i.item_id = u.id::uuid)",
    "renewed AS (
    UPDATE items i SET due_at = clock_timestamp() + make_interval(secs => i.lease_ms / 1000)
    FROM unnest($5::text[], $6::text[]) AS u(r, id)
    WHERE i.run_id = u.r AND i.item_id = u.id::uuid AND i.state = 'I')",
    "created AS (
    INSERT INTO items (run_id, item_id, workflow, node, payload, state, token, deliveries, due_at,
        lease_ms, worker, request)
    SELECT s.r, s.id::uuid, s.wf, s.node, CASE WHEN s.st = 'C' THEN ''::bytea ELSE s.payload END,
        s.st, s.token, (s.st IN ('I', 'C'))::int4,
        CASE WHEN s.st = 'I' THEN clock_timestamp() + make_interval(secs => s.ms / 1000)
             ELSE now() END,
        CASE WHEN s.st = 'I' THEN s.ms ELSE 0 END,
        CASE WHEN s.st = 'I' THEN s.w END,
        CASE WHEN s.st = 'C' THEN $4 END
    FROM unnest($7::text[], $8::text[], $9::text[], $10::text[], $11::bytea[], $12::\"char\"[],
                $40::int8[], $41::text[], $42::float8[])
        AS s(r, id, wf, node, payload, st, token, w, ms))",
    "outs AS (
    INSERT INTO outputs (run_id, value)
    SELECT o.r, o.v::jsonb FROM unnest($13::text[], $14::text[]) WITH ORDINALITY AS o(r, v, n)
    ORDER BY o.n)",
    "errs AS (
    INSERT INTO errors (run_id, error)
    SELECT e.r, e.v::jsonb FROM unnest($15::text[], $16::text[]) WITH ORDINALITY AS e(r, v, n)
    ORDER BY e.n)",
    crate::ops::drop_items_parts!("$17"),
    "updated AS (
    UPDATE runs r SET status = u.status, outstanding = u.outstanding, version = u.version,
        context = coalesce(u.context, r.context), output = coalesce(r.output, u.output::jsonb),
        error = coalesce(u.error, r.error),
        finished_at = CASE WHEN u.fin THEN now() ELSE r.finished_at END,
        finish_request = CASE WHEN u.fin THEN $4 ELSE r.finish_request END,
        steps_done = r.steps_done + u.steps, items_created = r.items_created + u.made,
        node_timings = u.timings::jsonb
    FROM unnest($18::text[], $19::text[], $20::int4[], $21::int8[], $22::bytea[], $23::text[],
                $24::text[], $25::bool[], $26::int8[], $27::int8[], $28::text[])
        AS u(run_id, status, outstanding, version, context, output, error, fin, steps, made,
             timings)
    WHERE r.run_id = u.run_id),
listed AS (
    INSERT INTO finished (run_id, at)
    SELECT u.run_id, now() FROM unnest($18::text[], $25::bool[]) AS u(run_id, fin) WHERE u.fin)",
    concat!(
        "routine AS (
    SELECT u.r FROM unnest($43::text[]) AS u(r)
    CROSS JOIN LATERAL (
        SELECT count(*) AS n, count(*) FILTER (WHERE ",
        not_routine!(),
        ") AS odd
        FROM (SELECT kind, delivery FROM step_events x WHERE x.run_id = u.r LIMIT 1001) x) c
    WHERE c.n <= 1000 AND c.odd = 0)"
    ),
    "dropped AS (DELETE FROM step_events WHERE run_id IN (SELECT r FROM routine))",
    "history AS (
    INSERT INTO step_events (run_id, item_id, node, kind, worker, token, attempt, delivery, at,
        until)
    SELECT e.r, e.id, e.node, e.kind, e.w, e.token, e.attempt, e.delivery, e.at, e.until FROM (
        (SELECT DISTINCT ON (i.run_id, i.item_id) i.run_id AS r, i.item_id AS id, i.node,
            'L'::\"char\" AS kind, i.worker AS w, i.token, i.attempt, i.deliveries AS delivery,
            i.leased_at AS at, i.leased_at + make_interval(secs => i.lease_ms / 1000) AS until,
            h.n, 0 AS o
        FROM unnest($31::text[], $32::text[], $34::\"char\"[]) WITH ORDINALITY AS h(r, id, kind, n)
        JOIN items i ON i.run_id = h.r AND i.item_id = h.id::uuid
        WHERE h.kind IN ('C', 'Z') AND h.r NOT IN (SELECT r FROM routine)
            AND i.leased_at IS NOT NULL
        ORDER BY i.run_id, i.item_id, h.n)
        UNION ALL
        SELECT h.r, h.id::uuid, h.node, h.kind, h.w, h.token, h.attempt,
            CASE WHEN h.kind = 'L' THEN 1 END, clock_timestamp(),
            CASE WHEN h.kind = 'L' THEN clock_timestamp() + make_interval(secs => $38::float8 / 1000) END,
            h.n, 1
        FROM unnest($31::text[], $32::text[], $33::text[], $34::\"char\"[], $35::text[], $36::int8[],
                    $37::int4[]) WITH ORDINALITY AS h(r, id, node, kind, w, token, attempt, n)
        WHERE h.r NOT IN (SELECT r FROM routine)) e
    ORDER BY e.n, e.o)",
    "fenced AS (
    UPDATE items i SET leased_at = NULL
    FROM unnest($31::text[], $32::text[], $34::\"char\"[]) AS h(r, id, kind)
    WHERE h.kind = 'Z' AND i.run_id = h.r AND i.item_id = h.id::uuid AND i.leased_at IS NOT NULL
        -- (A row is written once per statement: those the other parts write are left to them.)
        AND (h.r, h.id) NOT IN (SELECT * FROM unnest($1::text[], $2::text[]))
        AND (h.r, h.id) NOT IN (SELECT * FROM unnest($5::text[], $6::text[])))",
];

/// The write statement's last part: the notifications.
const APPLY_NOTIFY: &str =
    "SELECT pg_notify(n.ch, n.msg) FROM unnest($29::text[], $30::text[]) AS n(ch, msg)";

/// The types of the write statement's parameters, `$1` to `$43`.
#[rustfmt::skip]
const APPLY_TYPES: [Type; 43] = {
    use Type as T;
    const TEXTS: Type = T::TEXT_ARRAY;
    [
        // marked, the request
        TEXTS, TEXTS, T::CHAR_ARRAY, T::TEXT,
        // renewed
        TEXTS, TEXTS,
        // created
        TEXTS, TEXTS, TEXTS, TEXTS, T::BYTEA_ARRAY, T::CHAR_ARRAY,
        // outputs, handled failures
        TEXTS, TEXTS, TEXTS, TEXTS,
        // gone
        TEXTS,
        // the runs' records
        TEXTS, TEXTS, T::INT4_ARRAY, T::INT8_ARRAY, T::BYTEA_ARRAY, TEXTS, TEXTS, T::BOOL_ARRAY,
        T::INT8_ARRAY, T::INT8_ARRAY, TEXTS,
        // notifications
        TEXTS, TEXTS,
        // the step history
        TEXTS, TEXTS, TEXTS, T::CHAR_ARRAY, TEXTS, T::INT8_ARRAY, T::INT4_ARRAY,
        // the hand-off's lease and worker
        T::FLOAT8, T::TEXT,
        // new items' tokens, workers and leases
        T::INT8_ARRAY, TEXTS, T::FLOAT8_ARRAY,
        // runs whose routine history goes
        TEXTS,
    ]
};

/// The write statement with the parts `present` marks (in the order of [`APPLY_PARTS`]) and,
/// when `notify`, the notifications; `None` when there is nothing to write.
fn apply_statement(present: [bool; 11], notify: bool) -> Option<String> {
    let parts: Vec<&str> = APPLY_PARTS
        .iter()
        .zip(present)
        .filter_map(|(part, on)| on.then_some(*part))
        .collect();
    let last = if notify { APPLY_NOTIFY } else { "SELECT 1" };
    match (parts.is_empty(), notify) {
        (true, false) => None,
        (true, true) => Some(last.to_owned()),
        (false, _) => Some(format!("WITH {}\n{last}", parts.join(",\n"))),
    }
}

/// A locked item of the batch (or one kept for its worker by an earlier step of it).
struct ItemRow {
    token: u64,
    state: i8,
    /// The request that committed it.
    request: Option<String>,
    node: String,
    attempt: i32,
    /// Its holder, when leased.
    worker: Option<String>,
}

impl ItemRow {
    /// An `i` row of [`READ`].
    fn read(row: &tokio_postgres::Row) -> Self {
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
    fn held_by(&self, lease: &Lease) -> bool {
        crate::ops::holds(self.token, self.state, self.worker.as_deref(), lease)
    }
}

/// A locked run of the batch, and what the batch's accepted steps make of it.
struct RunRow {
    status: RunStatus,
    version: u64,
    outstanding: i64,
    has_output: bool,
    workflow: String,
    finish_request: Option<String>,
    timings: serde_json::Map<String, serde_json::Value>,
    deadline: Option<std::time::SystemTime>,
    /// Changed by an accepted step (its record is written).
    touched: bool,
    /// Its status when locked (a change is announced).
    locked_status: RunStatus,
    context: Option<Vec<u8>>,
    output: Option<String>,
    error: Option<String>,
    finished: bool,
    steps: i64,
    made: i64,
}

impl RunRow {
    /// An `r` row of [`READ`].
    fn read(row: &tokio_postgres::Row) -> Result<(String, RunRow), DistributedError> {
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
    fn time(&mut self, node: &str, us: i64) {
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

/// The longest output a run's completion notification carries (its waiters then need not
/// read the run).
const OUTPUT_HEARD: usize = 1024;

/// The runs channel's payload for a changed run: its id ([`run_payload`]), or
/// `<id>\t<output>` when it completed with a short output and both fit (the id as
/// [`HeardOutputs::line_id`] writes it).
fn run_event(id: &str, run: &RunRow) -> String {
    match &run.output {
        Some(output) if run.status == RunStatus::Completed && output.len() <= OUTPUT_HEARD => {
            let line_id = HeardOutputs::line_id(id);
            if line_id.len() + 1 + output.len() <= PAYLOAD_MAX {
                format!("{line_id}\t{output}")
            } else {
                run_payload(id)
            }
        }
        _ => run_payload(id),
    }
}

/// The answer to a step whose lease is not held: applied already by this request, the run
/// is over, or the lease was lost.
fn not_held(item: Option<&ItemRow>, run: &RunRow, request: &str) -> CommitOutcome {
    if item.and_then(|i| i.request.as_deref()) == Some(request) {
        return CommitOutcome::Committed { finished: None };
    }
    if run.finish_request.as_deref() == Some(request) {
        return CommitOutcome::Committed {
            finished: Some(run.status),
        };
    }
    if !machine::accepts_results(run.status) {
        return CommitOutcome::RunInactive(run.status);
    }
    CommitOutcome::LeaseLost
}

/// The writes of a batch, as the apply statement's arrays.
#[derive(Default)]
struct Writes<'a> {
    /// Items committed (`C`) or dropped (`X`).
    marked: Vec<(&'a str, String, i8)>,
    /// Leases renewed: steps sent back to re-merge.
    renewed: Vec<(&'a str, String)>,
    created: Created<'a>,
    outputs: (Vec<&'a str>, Vec<String>),
    errors: (Vec<&'a str>, Vec<String>),
    /// Fresh successors a take can lease now.
    ready: usize,
    history: History<'a>,
}

/// Step history events of the batch: commits applied, commits fenced out.
#[derive(Default)]
struct History<'a> {
    runs: Vec<&'a str>,
    ids: Vec<String>,
    nodes: Vec<String>,
    kinds: Vec<i8>,
    workers: Vec<&'a str>,
    tokens: Vec<i64>,
    attempts: Vec<i32>,
}

impl<'a> History<'a> {
    /// An event of `kind` for the item held under `lease` (`item`, its locked row).
    fn push(&mut self, lease: &'a Lease, item: &ItemRow, kind: u8) {
        self.event(
            lease.run_id.as_str(),
            lease.item_id.to_string(),
            item.node.clone(),
            kind,
            (lease.worker.as_str(), lease.token, item.attempt),
        );
    }

    /// An event of `kind` for item `id` of `run` at `node`: (worker, token, attempt).
    fn event(
        &mut self,
        run: &'a str,
        id: String,
        node: String,
        kind: u8,
        (worker, token, attempt): (&'a str, u64, i32),
    ) {
        self.runs.push(run);
        self.ids.push(id);
        self.nodes.push(node);
        self.kinds.push(kind as i8);
        self.workers.push(worker);
        self.tokens.push(token as i64);
        self.attempts.push(attempt);
    }
}

/// The runs the batch completes whose step history may be routine (see [`ROUTINE_KINDS`]):
/// with no event of another kind in this batch. (The statement keeps the history of any whose
/// stored events say otherwise, or that holds more than it deletes in one go.)
fn routine_runs<'a>(runs: &'a HashMap<String, RunRow>, history: &History<'_>) -> Vec<&'a str> {
    runs.iter()
        .filter(|(_, run)| run.finished && run.status == RunStatus::Completed)
        .filter(|(id, _)| {
            history
                .runs
                .iter()
                .zip(&history.kinds)
                .all(|(run, kind)| run != id || ROUTINE_KINDS.contains(&(*kind as u8)))
        })
        .map(|(id, _)| id.as_str())
        .collect()
}

#[derive(Default)]
struct Created<'a> {
    /// The successors themselves, for the hand-off.
    items: Vec<&'a NewItem>,
    runs: Vec<&'a str>,
    ids: Vec<String>,
    workflows: Vec<String>,
    nodes: Vec<&'a str>,
    payloads: Vec<&'a [u8]>,
    states: Vec<i8>,
    /// The lease of those written leased (`I`): token, holder, length in ms.
    tokens: Vec<i64>,
    workers: Vec<Option<&'a str>>,
    lease_ms: Vec<f64>,
}

impl<'a> Created<'a> {
    /// New item `n` as a locked row (it is leased: kept for its worker).
    fn row(&self, n: usize) -> ItemRow {
        ItemRow {
            token: self.tokens[n] as u64,
            state: self.states[n],
            request: None,
            node: self.nodes[n].to_owned(),
            attempt: 1,
            worker: self.workers[n].map(str::to_owned),
        }
    }

    /// Forgets the new items of `runs` (finished: their items go).
    fn drop_runs(&mut self, runs: &[&str]) {
        let keep: Vec<bool> = self.runs.iter().map(|r| !runs.contains(r)).collect();
        fn only<T>(v: &mut Vec<T>, keep: &[bool]) {
            let mut k = keep.iter();
            v.retain(|_| *k.next().unwrap_or(&true));
        }
        only(&mut self.items, &keep);
        only(&mut self.runs, &keep);
        only(&mut self.ids, &keep);
        only(&mut self.workflows, &keep);
        only(&mut self.nodes, &keep);
        only(&mut self.payloads, &keep);
        only(&mut self.states, &keep);
        only(&mut self.tokens, &keep);
        only(&mut self.workers, &keep);
        only(&mut self.lease_ms, &keep);
    }

    /// Leases new item `n` to `worker` for `ms` under `token`.
    fn lease(&mut self, n: usize, token: u64, worker: &'a str, ms: f64) {
        self.states[n] = b'I' as i8;
        self.tokens[n] = token as i64;
        self.workers[n] = Some(worker);
        self.lease_ms[n] = ms;
    }
}

/// Judges each step of the batch against the locked rows, in order, and collects the writes
/// of the accepted ones.
fn judge<'a>(
    commits: &'a [CommitItem<'a>],
    items: &HashMap<(String, String), ItemRow>,
    runs: &mut HashMap<String, RunRow>,
    existing: &mut HashSet<(String, String)>,
    request: &str,
) -> Result<(Vec<CommitOutcome>, Writes<'a>), DistributedError> {
    let mut writes = Writes::default();
    let mut outcomes = Vec::with_capacity(commits.len());
    let mut chains = ContextChains::default();
    // Items an earlier step of the batch kept for its worker (not written yet): their index
    // among the new items.
    let mut kept: HashMap<(&'a str, ItemId), usize> = HashMap::new();
    for c in commits {
        let (lease, step) = (c.lease, c.step);
        let run_id = lease.run_id.as_str();
        let changes = step.context.is_some();
        let id = lease.item_id.to_string();
        let outcome = match runs.get_mut(run_id) {
            None => CommitOutcome::LeaseLost,
            Some(run) => {
                let stored = items.get(&(lease.run_id.clone(), id.clone()));
                let here = match stored {
                    None => kept.get(&(run_id, lease.item_id)).copied(),
                    Some(_) => None,
                };
                let made;
                let item = match here {
                    Some(n) => {
                        made = writes.created.row(n);
                        Some(&made)
                    }
                    None => stored,
                };
                let held = item.is_some_and(|i| i.held_by(lease));
                if !held {
                    let outcome = not_held(item, run, request);
                    if let (CommitOutcome::LeaseLost, Some(item)) = (&outcome, item) {
                        writes.history.push(lease, item, b'Z');
                    }
                    outcome
                } else if chains.refuses(run_id, changes) {
                    writes.renewed.push((run_id, id));
                    CommitOutcome::ContextConflict {
                        current: run.version,
                    }
                } else if !machine::accepts_results(run.status) {
                    writes.marked.push((run_id, id, b'X' as i8));
                    CommitOutcome::RunInactive(run.status)
                } else if step.require_version.is_some_and(|v| v != run.version)
                    || step
                        .context
                        .as_ref()
                        .is_some_and(|(base, _)| *base != run.version)
                {
                    writes.renewed.push((run_id, id));
                    CommitOutcome::ContextConflict {
                        current: run.version,
                    }
                } else {
                    let node = match item {
                        Some(i) if step.node.is_empty() => i.node.as_str(),
                        _ => step.node.as_str(),
                    };
                    if let Some(item) = item {
                        writes.history.push(lease, item, b'C');
                    }
                    let node = node.to_owned();
                    let kept = Kept {
                        here,
                        ids: &mut kept,
                    };
                    accept(c, &node, run, id, existing, &mut writes, kept)?
                }
            }
        };
        chains.settled(
            run_id,
            changes,
            matches!(outcome, CommitOutcome::Committed { .. }),
        );
        outcomes.push(outcome);
    }
    Ok((outcomes, writes))
}

/// The batch's kept items, as a step's acceptance sees them: where its own item is among the
/// new ones (kept for it by an earlier step), and the index of them all.
struct Kept<'k, 'a> {
    here: Option<usize>,
    ids: &'k mut HashMap<(&'a str, ItemId), usize>,
}

/// Applies an accepted step to its run's row (in memory) and collects its writes.
fn accept<'a>(
    c: &'a CommitItem<'a>,
    node: &str,
    run: &mut RunRow,
    id: String,
    existing: &mut HashSet<(String, String)>,
    writes: &mut Writes<'a>,
    kept: Kept<'_, 'a>,
) -> Result<CommitOutcome, DistributedError> {
    let (lease, step) = (c.lease, c.step);
    let run_id = lease.run_id.as_str();
    let ready = machine::takes_items(run.status);
    let state = if ready { b'P' } else { b'K' } as i8;
    let mut fresh = 0i64;
    for s in &step.successors {
        let sid = s.id.to_string();
        // Known ids are not created again.
        if !existing.insert((lease.run_id.clone(), sid.clone())) {
            continue;
        }
        fresh += 1;
        let created = &mut writes.created;
        created.items.push(s);
        created.runs.push(run_id);
        created.ids.push(sid);
        created.workflows.push(run.workflow.clone());
        created.nodes.push(&s.node);
        created.payloads.push(&s.bytes);
        created.states.push(state);
        created.tokens.push(0);
        created.workers.push(None);
        created.lease_ms.push(0.0);
    }
    if ready {
        writes.ready += fresh as usize;
    }
    // A chained successor: leased to this worker, who executed it already.
    if let (Some(timeout), [next], 1, true) =
        (c.keep_successor, step.successors.as_slice(), fresh, ready)
    {
        let created = &mut writes.created;
        let n = created.ids.len() - 1;
        created.lease(
            n,
            KEPT_LEASE_TOKEN,
            lease.worker.as_str(),
            timeout.as_millis() as f64,
        );
        kept.ids.insert((run_id, next.id), n);
        writes.ready -= 1;
        writes.history.event(
            run_id,
            created.ids[n].clone(),
            next.node.clone(),
            b'L',
            (lease.worker.as_str(), KEPT_LEASE_TOKEN, 1),
        );
    }
    // A run's first output is stored in its record only; `outputs` holds the others.
    let first_here = usize::from(!run.has_output);
    for output in step.outputs.iter().skip(first_here) {
        writes.outputs.0.push(run_id);
        writes.outputs.1.push(output.to_string());
    }
    for failure in &step.handled_failures {
        writes.errors.0.push(run_id);
        writes.errors.1.push(
            serde_json::to_string(failure).map_err(|e| DistributedError::Codec(e.to_string()))?,
        );
    }
    match kept.here {
        // Kept by an earlier step of the batch: written committed at once.
        Some(n) => writes.created.states[n] = b'C' as i8,
        None => writes.marked.push((run_id, id, b'C' as i8)),
    }
    run.outstanding += fresh - 1;
    let before = run.status;
    // The run's first output (one stored before stays).
    if !run.has_output {
        run.output = step.outputs.first().map(ToString::to_string);
    }
    run.has_output |= !step.outputs.is_empty();
    let after = machine::after_commit(RunState {
        status: before,
        outstanding: run.outstanding.max(0) as u64,
        has_output: run.has_output,
    });
    let finished = (after != before && after.is_finished()).then_some(after);
    if let Some((_, bytes)) = &step.context {
        run.version += 1;
        run.context = Some(bytes.clone());
    }
    if finished == Some(RunStatus::Failed) {
        run.error = Some(no_output(&run.workflow));
    }
    run.finished |= finished.is_some();
    run.status = after;
    run.steps += 1;
    run.made += fresh;
    run.touched = true;
    run.time(node, step.duration.as_micros() as i64);
    Ok(CommitOutcome::Committed { finished })
}

/// Hands fresh successors straight to the committing worker, up to its `budget` of free
/// slots: those of runs whose context the worker holds at the version the batch leaves (it
/// needs no read). They are written leased to it (token 1, first delivery), with their lease
/// in the step history, and come back as taken items.
fn hand_off<'a>(
    writes: &mut Writes<'a>,
    runs: &HashMap<String, RunRow>,
    held: &Held<'_>,
    worker: &'a floxide_core::distributed::WorkerId,
    (budget, lease_ms): (usize, f64),
) -> Vec<Taken> {
    let created = &mut writes.created;
    let mut taken = Vec::new();
    for n in 0..created.items.len() {
        let item = created.items[n];
        if taken.len() == budget {
            break;
        }
        let run_id = created.runs[n];
        let (Some(run), Some((version, bytes))) = (runs.get(run_id), held.get(run_id)) else {
            continue;
        };
        if created.states[n] != b'P' as i8 || *version != run.version {
            continue;
        }
        created.lease(n, 1, worker.as_str(), lease_ms);
        writes.history.event(
            run_id,
            created.ids[n].clone(),
            item.node.clone(),
            b'L',
            (worker.as_str(), 1, 1),
        );
        taken.push(
            Taken::new(
                Lease::new(run_id, item.id, 1, worker.clone()),
                item.node.clone(),
                item.bytes.clone(),
            )
            .with_deadline(run.deadline)
            .with_context(Some(VersionedContext::new(bytes.to_vec(), *version))),
        );
    }
    writes.ready -= taken.len().min(writes.ready);
    taken
}

impl PostgresBackend {
    /// Commits `commits` in one transaction and, when asked, takes the next batch in it.
    pub(crate) async fn commit_pipelined(
        &self,
        commits: &[CommitItem<'_>],
        next: Option<TakeRequest<'_>>,
        request: &str,
    ) -> Result<CommitReply, DistributedError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.commit_attempt(commits, next, request).await {
                Err(e) if attempt < 5 && crate::ops::is_transient(&e) => continue,
                other => return other,
            }
        }
    }

    async fn commit_attempt(
        &self,
        commits: &[CommitItem<'_>],
        next: Option<TakeRequest<'_>>,
        request: &str,
    ) -> Result<CommitReply, DistributedError> {
        let tx = Pipelined::new(self.pooled().await?);
        let client = tx.client();
        let read = client.prepare_cached(READ).await.map_err(backend)?;

        let item_runs: Vec<&str> = commits.iter().map(|c| c.lease.run_id.as_str()).collect();
        let item_ids: Vec<String> = commits
            .iter()
            .map(|c| c.lease.item_id.to_string())
            .collect();
        let mut run_ids = item_runs.clone();
        run_ids.sort_unstable();
        run_ids.dedup();
        let (succ_runs, succ_ids): (Vec<&str>, Vec<String>) = commits
            .iter()
            .flat_map(|c| {
                c.step
                    .successors
                    .iter()
                    .map(|s| (c.lease.run_id.as_str(), s.id.to_string()))
            })
            .unzip();

        // Round trip 1: begin, lock and read.
        let (_, rows) = futures_util::future::try_join(tx.begin(), async {
            client
                .query(
                    &read,
                    &[&item_runs, &item_ids, &run_ids, &succ_runs, &succ_ids],
                )
                .await
                .map_err(backend)
        })
        .await?;
        let mut items: HashMap<(String, String), ItemRow> = HashMap::with_capacity(commits.len());
        let mut runs = HashMap::with_capacity(run_ids.len());
        let mut existing: HashSet<(String, String)> = HashSet::new();
        for row in &rows {
            let key = || (row.get(Read::RUN), row.get(Read::ITEM));
            match row.get::<_, i8>(Read::KIND) as u8 {
                b'i' => {
                    items.insert(key(), ItemRow::read(row));
                }
                b'r' => {
                    let (id, run) = RunRow::read(row)?;
                    runs.insert(id, run);
                }
                _ => {
                    existing.insert(key());
                }
            }
        }

        let (outcomes, mut writes) = judge(commits, &items, &mut runs, &mut existing, request)?;
        let held: Held<'_> = commits
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| matches!(o, CommitOutcome::Committed { .. }))
            .filter_map(|(c, _)| c.held.map(|h| (c.lease.run_id.as_str(), h)))
            .collect();
        // The hand-offs' lease (or the kept items' one, in the step history).
        let lease_ms = next.map_or_else(
            || {
                commits
                    .iter()
                    .filter_map(|c| c.keep_successor)
                    .max()
                    .unwrap_or_default()
            },
            |n| n.options.lease_timeout,
        );
        let lease_ms = lease_ms.as_millis() as f64;
        let mut handed = match next {
            Some(take) => hand_off(&mut writes, &runs, &held, take.worker, (take.max, lease_ms)),
            None => Vec::new(),
        };
        // What is left of the worker's free slots, for the take.
        let worker = next.map(|n| n.worker.as_str());
        // No take when the queue is known to be empty and this batch queues nothing.
        let next = next
            .filter(|take| take.max > handed.len())
            .filter(|take| writes.ready > 0 || !self.signals.queue_empty(take.workflow))
            .map(|take| take.with_max(take.max - handed.len()));
        if !self.config().step_history {
            writes.history = History::default();
        }

        // The runs' new records; finished runs (but failed ones, kept for a resume) lose
        // their items, so no other write touches those.
        let schema = self.config().schema();
        let (work_channel, runs_channel) = crate::listen::channels(schema);
        let mut record = RunRecords::default();
        let mut gone: Vec<&str> = Vec::new();
        let mut notify: (Vec<&str>, Vec<String>) = (Vec::new(), Vec::new());
        for (id, run) in &runs {
            if !run.touched {
                continue;
            }
            if run.finished && run.status != RunStatus::Failed {
                gone.push(id);
            }
            // (A pending run read as running once its first item was leased: its first
            // commit writes the status without telling anyone.)
            let started =
                run.locked_status == RunStatus::Pending && run.status == RunStatus::Running;
            if run.finished || (run.status != run.locked_status && !started) {
                notify.0.push(&runs_channel);
                notify.1.push(run_event(id, run));
            }
            record.push(id, run)?;
        }
        let routine = if self.config().routine_history {
            Vec::new()
        } else {
            routine_runs(&runs, &writes.history)
        };
        let mut marked = (Vec::new(), Vec::new(), Vec::new());
        for (run, id, state) in writes.marked.iter().filter(|m| !gone.contains(&m.0)) {
            marked.0.push(*run);
            marked.1.push(id.as_str());
            marked.2.push(*state);
        }
        if !gone.is_empty() {
            writes.created.drop_runs(&gone);
        }
        let renewed: (Vec<&str>, Vec<&str>) = writes
            .renewed
            .iter()
            .filter(|r| !gone.contains(&r.0))
            .map(|(run, id)| (*run, id.as_str()))
            .unzip();
        // Work for others: fresh items beyond what this worker's own take may lease.
        if writes.ready > next.map_or(0, |n| n.max) {
            notify.0.push(&work_channel);
            notify.1.push(String::new());
        }
        let created = &writes.created;

        // Round trip 2: write, take, commit.
        let statement = apply_statement(
            [
                !marked.0.is_empty(),
                !renewed.0.is_empty(),
                !created.runs.is_empty(),
                !writes.outputs.0.is_empty(),
                !writes.errors.0.is_empty(),
                !gone.is_empty(),
                !record.ids.is_empty(),
                !routine.is_empty() || !writes.history.runs.is_empty(),
                !routine.is_empty(),
                !writes.history.runs.is_empty(),
                writes.history.kinds.contains(&(b'Z' as i8)),
            ],
            !notify.0.is_empty(),
        );
        // Prepared before the round trip (a round trip of its own the first time a connection
        // meets this combination of parts): the write must go out before the `COMMIT`.
        let apply = match &statement {
            Some(statement) => Some(
                client
                    .prepare_typed_cached(statement, &APPLY_TYPES)
                    .await
                    .map_err(backend)?,
            ),
            None => None,
        };
        let apply_fut = async {
            let Some(apply) = &apply else {
                return Ok(Vec::new());
            };
            client
                .query(
                    apply,
                    &[
                        &marked.0,
                        &marked.1,
                        &marked.2,
                        &request,
                        &renewed.0,
                        &renewed.1,
                        &created.runs,
                        &created.ids,
                        &created.workflows,
                        &created.nodes,
                        &created.payloads,
                        &created.states,
                        &writes.outputs.0,
                        &writes.outputs.1,
                        &writes.errors.0,
                        &writes.errors.1,
                        &gone,
                        &record.ids,
                        &record.statuses,
                        &record.outstanding,
                        &record.versions,
                        &record.contexts,
                        &record.outputs,
                        &record.errors,
                        &record.finished,
                        &record.steps,
                        &record.made,
                        &record.timings,
                        &notify.0,
                        &notify.1,
                        &writes.history.runs,
                        &writes.history.ids,
                        &writes.history.nodes,
                        &writes.history.kinds,
                        &writes.history.workers,
                        &writes.history.tokens,
                        &writes.history.attempts,
                        &lease_ms,
                        &worker,
                        &created.tokens,
                        &created.workers,
                        &created.lease_ms,
                        &routine,
                    ],
                )
                .await
                .map_err(backend)
        };
        let take_fut = async {
            match next {
                Some(take) => {
                    let epoch = self.signals.epoch();
                    let rows = take_once(client, take, &held, self.config().step_history).await?;
                    self.signals
                        .took(take.workflow, epoch, rows.seen < take.max);
                    Ok(rows)
                }
                None => Ok(TakeRows::default()),
            }
        };
        let (_, taken, ()) =
            futures_util::future::try_join3(apply_fut, take_fut, tx.commit()).await?;
        drop(tx);
        if !taken.poison.is_empty() {
            if let Some(take) = next {
                self.dead_letter_poison(take, &taken.poison).await?;
            }
        }
        handed.extend(taken.taken);
        Ok(CommitReply::new(outcomes, handed))
    }
}

/// The runs' new records, as the apply statement's arrays.
#[derive(Default)]
struct RunRecords<'a> {
    ids: Vec<&'a str>,
    statuses: Vec<String>,
    outstanding: Vec<i32>,
    versions: Vec<i64>,
    contexts: Vec<Option<&'a [u8]>>,
    outputs: Vec<Option<&'a str>>,
    errors: Vec<Option<&'a str>>,
    finished: Vec<bool>,
    steps: Vec<i64>,
    made: Vec<i64>,
    timings: Vec<String>,
}

impl<'a> RunRecords<'a> {
    fn push(&mut self, id: &'a str, run: &'a RunRow) -> Result<(), DistributedError> {
        self.ids.push(id);
        self.statuses.push(run.status.to_string());
        self.outstanding
            .push(i32::try_from(run.outstanding.max(0)).unwrap_or(i32::MAX));
        self.versions.push(run.version as i64);
        self.contexts.push(run.context.as_deref());
        self.outputs.push(run.output.as_deref());
        self.errors.push(run.error.as_deref());
        self.finished.push(run.finished);
        self.steps.push(run.steps);
        self.made.push(run.made);
        self.timings.push(
            serde_json::to_string(&run.timings)
                .map_err(|e| DistributedError::Codec(e.to_string()))?,
        );
        Ok(())
    }
}
