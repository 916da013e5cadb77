//! Judging a batch's steps against the locked rows, and the writes of the accepted ones.

use std::collections::{HashMap, HashSet};

use floxide_core::distributed::machine::{self, ContextChains, RunState};
use floxide_core::distributed::{
    CommitItem, CommitOutcome, DistributedError, Lease, NewItem, RunStatus, Taken,
    VersionedContext, KEPT_LEASE_TOKEN,
};
use floxide_core::ItemId;

use crate::ops::no_output;
use crate::take::Held;

use super::read::{ItemRow, RunRow};

/// The answer to a step whose lease is not held: applied already by this request, the run
/// is over, or the lease was lost.
pub(super) fn not_held(item: Option<&ItemRow>, run: &RunRow, request: &str) -> CommitOutcome {
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
pub(super) struct Writes<'a> {
    /// Items committed (`C`) or dropped (`X`).
    pub(super) marked: Vec<(&'a str, String, i8)>,
    /// Leases renewed: steps sent back to re-merge.
    pub(super) renewed: Vec<(&'a str, String)>,
    pub(super) created: Created<'a>,
    pub(super) outputs: (Vec<&'a str>, Vec<String>),
    pub(super) errors: (Vec<&'a str>, Vec<String>),
    /// Fresh successors a take can lease now.
    pub(super) ready: usize,
    pub(super) history: History<'a>,
}

/// Step history events of the batch: commits applied, commits fenced out.
#[derive(Default)]
pub(super) struct History<'a> {
    pub(super) runs: Vec<&'a str>,
    pub(super) ids: Vec<String>,
    pub(super) nodes: Vec<String>,
    pub(super) kinds: Vec<i8>,
    pub(super) workers: Vec<&'a str>,
    pub(super) tokens: Vec<i64>,
    pub(super) attempts: Vec<i32>,
}

impl<'a> History<'a> {
    /// An event of `kind` for the item held under `lease` (`item`, its locked row).
    pub(super) fn push(&mut self, lease: &'a Lease, item: &ItemRow, kind: u8) {
        self.event(
            lease.run_id.as_str(),
            lease.item_id.to_string(),
            item.node.clone(),
            kind,
            (lease.worker.as_str(), lease.token, item.attempt),
        );
    }

    /// An event of `kind` for item `id` of `run` at `node`: (worker, token, attempt).
    pub(super) fn event(
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

#[derive(Default)]
pub(super) struct Created<'a> {
    /// The successors themselves, for the hand-off.
    pub(super) items: Vec<&'a NewItem>,
    pub(super) runs: Vec<&'a str>,
    pub(super) ids: Vec<String>,
    pub(super) workflows: Vec<String>,
    pub(super) nodes: Vec<&'a str>,
    pub(super) payloads: Vec<&'a [u8]>,
    pub(super) states: Vec<i8>,
    /// The lease of those written leased (`I`): token, holder, length in ms.
    pub(super) tokens: Vec<i64>,
    pub(super) workers: Vec<Option<&'a str>>,
    pub(super) lease_ms: Vec<f64>,
}

impl<'a> Created<'a> {
    /// New item `n` as a locked row (it is leased: kept for its worker).
    pub(super) fn row(&self, n: usize) -> ItemRow {
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
    pub(super) fn drop_runs(&mut self, runs: &[&str]) {
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
    pub(super) fn lease(&mut self, n: usize, token: u64, worker: &'a str, ms: f64) {
        self.states[n] = b'I' as i8;
        self.tokens[n] = token as i64;
        self.workers[n] = Some(worker);
        self.lease_ms[n] = ms;
    }
}

/// Judges each step of the batch against the locked rows, in order, and collects the writes
/// of the accepted ones.
pub(super) fn judge<'a>(
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
pub(super) struct Kept<'k, 'a> {
    pub(super) here: Option<usize>,
    pub(super) ids: &'k mut HashMap<(&'a str, ItemId), usize>,
}

/// Applies an accepted step to its run's row (in memory) and collects its writes.
pub(super) fn accept<'a>(
    c: &'a CommitItem<'a>,
    node: &str,
    run: &mut RunRow,
    id: String,
    existing: &mut HashSet<(String, String)>,
    writes: &mut Writes<'a>,
    kept: Kept<'_, 'a>,
) -> Result<CommitOutcome, DistributedError> {
    let lease = c.lease;
    let run_id = lease.run_id.as_str();
    let ready = machine::takes_items(run.status);
    let mut chained = Vec::new();
    let fresh = create_successors(c, run, ready, existing, &mut writes.created, &mut chained);
    if ready {
        writes.ready += fresh as usize;
    }
    // Chained successors: leased to this worker, who executed them already.
    if let Some(timeout) = c.keep_successor {
        for (n, next) in chained {
            keep_chained(c, n, next, timeout, writes, kept.ids);
        }
    }
    add_results(c, run.has_output, writes)?;
    match kept.here {
        // Kept by an earlier step of the batch: written committed at once.
        Some(n) => writes.created.states[n] = b'C' as i8,
        None => writes.marked.push((run_id, id, b'C' as i8)),
    }
    let finished = apply_step(run, c, fresh, node);
    Ok(CommitOutcome::Committed { finished })
}

/// Adds the step's successors not known yet to `created` (ready, or parked when the run
/// does not take items), noting in `chained` where the ones the step keeps for its worker
/// are; returns how many it added.
fn create_successors<'a>(
    c: &'a CommitItem<'a>,
    run: &RunRow,
    ready: bool,
    existing: &mut HashSet<(String, String)>,
    created: &mut Created<'a>,
    chained: &mut Vec<(usize, &'a NewItem)>,
) -> i64 {
    let run_id = c.lease.run_id.as_str();
    let state = if ready { b'P' } else { b'K' } as i8;
    let mut fresh = 0;
    for (index, s) in c.step.successors.iter().enumerate() {
        let sid = s.id.to_string();
        // Known ids are not created again.
        if !existing.insert((c.lease.run_id.clone(), sid.clone())) {
            continue;
        }
        fresh += 1;
        if ready && c.keeps(index) {
            chained.push((created.ids.len(), s));
        }
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
    fresh
}

/// Leases the step's new successor `next` (created at `n`) to the step's worker for
/// `timeout`, with the kept token and a lease event: the worker executed it already.
fn keep_chained<'a>(
    c: &'a CommitItem<'a>,
    n: usize,
    next: &NewItem,
    timeout: std::time::Duration,
    writes: &mut Writes<'a>,
    kept: &mut HashMap<(&'a str, ItemId), usize>,
) {
    let (run_id, worker) = (c.lease.run_id.as_str(), c.lease.worker.as_str());
    let created = &mut writes.created;
    created.lease(n, KEPT_LEASE_TOKEN, worker, timeout.as_millis() as f64);
    kept.insert((run_id, next.id), n);
    writes.ready -= 1;
    writes.history.event(
        run_id,
        created.ids[n].clone(),
        next.node.clone(),
        b'L',
        (worker, KEPT_LEASE_TOKEN, 1),
    );
}

/// Adds the step's outputs (but the run's first, kept in its record: `has_output` tells
/// whether it has one) and its handled failures to the writes.
fn add_results<'a>(
    c: &'a CommitItem<'a>,
    has_output: bool,
    writes: &mut Writes<'a>,
) -> Result<(), DistributedError> {
    let run_id = c.lease.run_id.as_str();
    for output in c.step.outputs.iter().skip(usize::from(!has_output)) {
        writes.outputs.0.push(run_id);
        writes.outputs.1.push(output.to_string());
    }
    for failure in &c.step.handled_failures {
        writes.errors.0.push(run_id);
        writes.errors.1.push(
            serde_json::to_string(failure).map_err(|e| DistributedError::Codec(e.to_string()))?,
        );
    }
    Ok(())
}

/// Applies a committed step of `node` that added `fresh` items to its run's row: outstanding
/// count, first output, context, status (by the run state machine), counters and timings.
/// Returns the status the run finished with, if it did.
fn apply_step(run: &mut RunRow, c: &CommitItem<'_>, fresh: i64, node: &str) -> Option<RunStatus> {
    let step = c.step;
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
    finished
}

/// Hands fresh successors straight to the committing worker, up to its `budget` of free
/// slots: those of runs whose context the worker holds at the version the batch leaves (it
/// needs no read). They are written leased to it (token 1, first delivery), with their lease
/// in the step history, and come back as taken items.
pub(super) fn hand_off<'a>(
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
