//! The statement that writes a judged batch, made of the parts the batch needs.

use std::collections::HashMap;

use floxide_core::distributed::{DistributedError, HeardOutputs, RunStatus};

use tokio_postgres::types::Type;

use crate::ops::{run_payload, PAYLOAD_MAX};

use super::judge::{History, Writes};
use super::read::RunRow;

/// The events a routine step history holds: leases (on their first delivery), renewals and
/// commits. A run that completes with only these drops its history (unless configured to
/// keep it, [`PostgresConfig::with_routine_step_history`](crate::PostgresConfig)).
pub(super) const ROUTINE_KINDS: [u8; 3] = [b'L', b'H', b'C'];

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
pub(super) const APPLY_PARTS: [&str; 11] = [
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
pub(super) const APPLY_NOTIFY: &str =
    "SELECT pg_notify(n.ch, n.msg) FROM unnest($29::text[], $30::text[]) AS n(ch, msg)";

/// The types of the write statement's parameters, `$1` to `$43`.
#[rustfmt::skip]
pub(super) const APPLY_TYPES: [Type; 43] = {
    use Type as T;
    pub(super) const TEXTS: Type = T::TEXT_ARRAY;
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
pub(super) fn apply_statement(present: [bool; 11], notify: bool) -> Option<String> {
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

/// The longest output a run's completion notification carries (its waiters then need not
/// read the run).
pub(super) const OUTPUT_HEARD: usize = 1024;

/// The runs channel's payload for a changed run: its id ([`run_payload`]), or
/// `<id>\t<output>` when it completed with a short output and both fit (the id as
/// [`HeardOutputs::line_id`] writes it).
pub(super) fn run_event(id: &str, run: &RunRow) -> String {
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

/// The runs the batch completes whose step history may be routine (see [`ROUTINE_KINDS`]):
/// with no event of another kind in this batch. (The statement keeps the history of any whose
/// stored events say otherwise, or that holds more than it deletes in one go.)
pub(super) fn routine_runs<'a>(
    runs: &'a HashMap<String, RunRow>,
    history: &History<'_>,
) -> Vec<&'a str> {
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

/// The apply statement's arrays besides the steps' own writes: the touched runs' records,
/// the runs whose items go, the notifications, the routine histories to drop, and the items
/// committed, dropped or renewed in runs that stay.
pub(super) struct Apply<'a> {
    pub(super) record: RunRecords<'a>,
    pub(super) gone: Vec<&'a str>,
    pub(super) notify: (Vec<&'a str>, Vec<String>),
    pub(super) routine: Vec<&'a str>,
    pub(super) marked: (Vec<&'a str>, Vec<&'a str>, Vec<i8>),
    pub(super) renewed: (Vec<&'a str>, Vec<&'a str>),
}

impl<'a> Apply<'a> {
    /// `gone` from [`gone_runs`](super::gone_runs); `channels`, the work and run channels; `others`, the fresh
    /// items this worker's own take may lease (more tell the other workers).
    pub(super) fn new(
        runs: &'a HashMap<String, RunRow>,
        writes: &'a Writes<'a>,
        gone: Vec<&'a str>,
        (work_channel, runs_channel): &'a (String, String),
        routine_history: bool,
        others: usize,
    ) -> Result<Self, DistributedError> {
        let mut record = RunRecords::default();
        let mut notify: (Vec<&str>, Vec<String>) = (Vec::new(), Vec::new());
        for (id, run) in runs.iter().filter(|(_, run)| run.touched) {
            // (A pending run read as running once its first item was leased: its first
            // commit writes the status without telling anyone.)
            let started =
                run.locked_status == RunStatus::Pending && run.status == RunStatus::Running;
            if run.finished || (run.status != run.locked_status && !started) {
                notify.0.push(runs_channel);
                notify.1.push(run_event(id, run));
            }
            record.push(id, run)?;
        }
        let routine = if routine_history {
            Vec::new()
        } else {
            routine_runs(runs, &writes.history)
        };
        let mut marked = (Vec::new(), Vec::new(), Vec::new());
        for (run, id, state) in writes.marked.iter().filter(|m| !gone.contains(&m.0)) {
            marked.0.push(*run);
            marked.1.push(id.as_str());
            marked.2.push(*state);
        }
        let renewed = writes
            .renewed
            .iter()
            .filter(|r| !gone.contains(&r.0))
            .map(|(run, id)| (*run, id.as_str()))
            .unzip();
        // Work for others: fresh items beyond what this worker's own take may lease.
        if writes.ready > others {
            notify.0.push(work_channel);
            notify.1.push(String::new());
        }
        Ok(Apply {
            record,
            gone,
            notify,
            routine,
            marked,
            renewed,
        })
    }

    /// The apply statement for the parts this batch has (none when it writes nothing).
    pub(super) fn statement(&self, writes: &Writes<'_>) -> Option<String> {
        apply_statement(
            [
                !self.marked.0.is_empty(),
                !self.renewed.0.is_empty(),
                !writes.created.runs.is_empty(),
                !writes.outputs.0.is_empty(),
                !writes.errors.0.is_empty(),
                !self.gone.is_empty(),
                !self.record.ids.is_empty(),
                !self.routine.is_empty() || !writes.history.runs.is_empty(),
                !self.routine.is_empty(),
                !writes.history.runs.is_empty(),
                writes.history.kinds.contains(&(b'Z' as i8)),
            ],
            !self.notify.0.is_empty(),
        )
    }
}

/// A batch's write: its steps' writes and the rest of the apply statement's arrays, the
/// request, and the worker and lease of the items handed to it.
pub(super) struct Written<'a> {
    pub(super) apply: &'a Apply<'a>,
    pub(super) writes: &'a Writes<'a>,
    pub(super) request: &'a str,
    pub(super) lease_ms: f64,
    pub(super) worker: Option<&'a str>,
}

impl Written<'_> {
    /// The apply statement's parameters, in the order of [`APPLY_TYPES`].
    pub(super) fn params(&self) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
        let (apply, writes) = (self.apply, self.writes);
        let (created, history, record) = (&writes.created, &writes.history, &apply.record);
        vec![
            &apply.marked.0,
            &apply.marked.1,
            &apply.marked.2,
            &self.request,
            &apply.renewed.0,
            &apply.renewed.1,
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
            &apply.gone,
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
            &apply.notify.0,
            &apply.notify.1,
            &history.runs,
            &history.ids,
            &history.nodes,
            &history.kinds,
            &history.workers,
            &history.tokens,
            &history.attempts,
            &self.lease_ms,
            &self.worker,
            &created.tokens,
            &created.workers,
            &created.lease_ms,
            &apply.routine,
        ]
    }
}

/// The runs' new records, as the apply statement's arrays.
#[derive(Default)]
pub(super) struct RunRecords<'a> {
    pub(super) ids: Vec<&'a str>,
    pub(super) statuses: Vec<String>,
    pub(super) outstanding: Vec<i32>,
    pub(super) versions: Vec<i64>,
    pub(super) contexts: Vec<Option<&'a [u8]>>,
    pub(super) outputs: Vec<Option<&'a str>>,
    pub(super) errors: Vec<Option<&'a str>>,
    pub(super) finished: Vec<bool>,
    pub(super) steps: Vec<i64>,
    pub(super) made: Vec<i64>,
    pub(super) timings: Vec<String>,
}

impl<'a> RunRecords<'a> {
    pub(super) fn push(&mut self, id: &'a str, run: &'a RunRow) -> Result<(), DistributedError> {
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
